"""What a copy into new memory costs here, beside the same copy into memory touched before.

    python benchmarks/copycost.py [--mb 8] [--count 40] [--offsets | --pauses [--kb 266]]

The replay log keeps a copy of every array a task sends until a checkpoint trims it,
and a first checkpoint copies the whole state: both copy into memory the process has
never touched. numpy asks for transparent huge pages for arrays of 4 MiB and more
(where THP is ``madvise``); each case runs in a fresh process, with and without
them. Prints one line a case::

    copycost mb=<n> hugepages=<0|1> new_ms=<median> reused_ms=<median> ratio=<new/reused> anon_huge_kb=<n>

With ``--offsets``: copies into memory touched before whose target lies 0, 8, 64, 512
and 2048 bytes further into its page than the source (what ``wire.pack_frames``
avoids for a checkpoint's largest buffer)::

    copycost mb=<n> offset=<bytes> ms=<median>

With ``--pauses``: how much a touch of memory used before costs after the thread paused
(slept, or spun without touching memory) for 0-50 ms: one byte read and one written in
each 4 KiB page of a 266 KB buffer (heat2d's checkpoint; ``--kb`` to change), and a
copy of it into memory used before, as a checkpoint makes::

    copycost kb=<n> pause=<sleep|spin>:<ms> read_page_us=<f> write_page_us=<f> copy_us=<f>

On this machine (a VM on AMD EPYC) a page not touched for a millisecond costs about a
microsecond to touch again, with no page fault counted (fifteenth session): the
translations and the data are gone from the TLB and caches meanwhile. So any wait
makes the Python that follows it slower, the more memory it touches.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time


def median_ms(count: int, copy) -> float:
    """The median time of ``count`` calls of ``copy()``, in milliseconds."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        copy()
        times.append(time.perf_counter() - t0)
    return sorted(times)[count // 2] * 1e3


def measure(mb: int, count: int, hugepages: bool) -> str:
    import numpy as np
    try:
        from numpy._core import multiarray as ma
    except ImportError:           # numpy < 2
        from numpy.core import multiarray as ma
    ma._set_madvise_hugepage(hugepages)
    src = np.ones(mb << 20, dtype=np.uint8)
    kept: list = []
    # every copy kept: always new memory, as a growing log
    a = median_ms(count, lambda: kept.append(src.copy()))
    # into the same buffer again: memory touched before
    b = median_ms(count, lambda: np.copyto(kept[0], src))
    try:
        with open("/proc/self/smaps_rollup") as f:
            huge = next(ln.split()[1] for ln in f if ln.startswith("AnonHugePages"))
    except (OSError, StopIteration):
        huge = "?"
    return (f"copycost mb={mb} hugepages={int(hugepages)} new_ms={a:.2f} reused_ms={b:.2f} "
            f"ratio={a / b:.1f} anon_huge_kb={huge}")


def offsets(mb: int, count: int) -> None:
    import numpy as np
    n = mb << 20
    src = np.ones(n, dtype=np.uint8)
    base = np.zeros(n + 8192, dtype=np.uint8)
    gap = (src.ctypes.data - base.ctypes.data) % 4096     # dst at base + gap: same offset
    for extra in (0, 8, 64, 512, 2048):
        dst = base[gap + extra:gap + extra + n]
        ms = median_ms(count, lambda: np.copyto(dst, src))  # noqa: B023 - called right here
        print(f"copycost mb={mb} offset={extra} ms={ms:.2f}", flush=True)


def pauses(kb: int, count: int) -> None:
    import numpy as np
    n = kb << 10
    pages = n // 4096
    src = np.ones(n, dtype=np.uint8)
    dst = np.zeros(n, dtype=np.uint8)
    np.copyto(dst, src)

    def after(pause: float, spin: bool, work) -> float:
        times = []
        for _ in range(count):
            if spin:
                end = time.perf_counter() + pause
                while time.perf_counter() < end:
                    pass
            elif pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            work()
            times.append(time.perf_counter() - t0)
        return sorted(times)[count // 2] * 1e6

    for kind, ms in (("sleep", 0), ("sleep", 1), ("sleep", 10), ("sleep", 50), ("spin", 1)):
        spin, s = kind == "spin", ms / 1e3
        read = after(s, spin, lambda: int(src[::4096].sum())) / pages
        write = after(s, spin, lambda: dst.__setitem__(slice(None, None, 4096), 7)) / pages
        copy = after(s, spin, lambda: np.copyto(dst, src))
        print(f"copycost kb={kb} pause={kind}:{ms} read_page_us={read:.2f} "
              f"write_page_us={write:.2f} copy_us={copy:.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=8)
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--offsets", action="store_true",
                   help="copies at five offsets in a page from their source instead")
    p.add_argument("--pauses", action="store_true",
                   help="the cost of touching memory used before after a pause instead")
    p.add_argument("--kb", type=int, default=266, help="the buffer of --pauses, in KiB")
    p.add_argument("--inner", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.pauses:
        pauses(a.kb, a.count)
        return
    if a.offsets:
        offsets(a.mb, a.count)
        return
    if a.inner is not None:
        print(measure(a.mb, a.count, bool(a.inner)), flush=True)
        return
    for _ in range(2):
        for hp in (1, 0):
            out = subprocess.run([sys.executable, __file__, "--mb", str(a.mb), "--count",
                                  str(a.count), "--inner", str(hp)],
                                 capture_output=True, text=True, timeout=300, check=True)
            sys.stdout.write(out.stdout)


if __name__ == "__main__":
    main()
