"""Messages: clustervm next to raw mpi4py, in the same job; job start; idle CPU.

    python benchmarks/pingpong.py [--rounds 3]

1. Round trip of 8 B and 1 KiB messages and 8 MiB numpy bandwidth between
   two tasks on two nodes, next to raw mpi4py (``comm.send/recv`` and
   ``Send/Recv``) between the same two ranks in the same job. Medians of
   ``--rounds`` rounds, each a round's median block of 200 round trips (the two
   tasks of a round may start on one core for its first ~20 ms); ratios are ours / raw for times, ours / raw for bandwidth.
   The 8 MiB figures come from blocks of raw and clustervm round trips taken in
   turn by the same two tasks (this machine's memory bandwidth drifts by 2x between
   seconds; see benchmarks/apps/pingpong_app.py). A row runs raw ``Send/Recv``
   where each side also copies the array it sends while its ``Isend`` is under way
   (into 4 buffers in turn: a log's copies are not in cache), as a replay log must
   keep a copy: the most a logged send of a big array can reach here (the memory
   bandwidth is shared). The blocks follow 40 clustervm round trips timed apart
   (the last row): a replay log's first copies go into new memory.
2. Start of a 4-rank job to its first task result (``clustervm run -n 4``) next
   to a bare ``mpiexec -n 4`` + Barrier (with and without btl/ofi): medians of 5.
3. CPU seconds an idle 4-rank VM burns in 10 s (all ranks together).
"""
from __future__ import annotations

import argparse
import sys

from _util import BIN, PY, clustervm, median, mpiexec, run

BARRIER = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"


def messages(rounds: int) -> None:
    rc, out, err, _ = clustervm(3, "benchmarks/apps/pingpong_app.py", str(rounds), timeout=300)
    if rc != 0:
        sys.exit(f"pingpong job failed ({rc}):\n{err}")
    res = {}
    for line in out.splitlines():
        if line.startswith("result "):
            _, key, value = line.split()
            res[key] = float(value)
    print("1. round trip between two nodes (median of rounds; 3 ranks on 2 cores)")
    print(f"{'':24}{'clustervm':>14}{'raw mpi4py':>14}{'ratio':>8}")
    for size, raw_key in ((8, "send:8"), (1024, "send:1024")):
        ours, raw = res[f"cvm:{size}"], res[raw_key]
        print(f"{f'{size} B send/recv':24}{ours * 1e6:>11.1f} us{raw * 1e6:>11.1f} us"
              f"{ours / raw:>7.2f}x")
        logged = res[f"cvm:{size}:replay"]
        print(f"{'  with replay log':24}{logged * 1e6:>11.1f} us{'':>14}{logged / raw:>7.2f}x")
    size = 8 << 20
    # each clustervm figure against the raw Send/Recv blocks taken in turn with it (the
    # memory bandwidth here drifts by 2x between seconds: see pingpong_app.py)
    for label, tail in (("8 MiB numpy", ""), ("  with replay log", ":replay")):
        ours = 2 * size / res[f"cvm:{size}{tail}"] / 1e9
        raw_up = 2 * size / res[f"Send:{size}{tail}"] / 1e9
        print(f"{label:24}{ours:>9.2f} GB/s{raw_up:>9.2f} GB/s{ours / raw_up:>7.2f}x  "
              f"(vs Send/Recv in turn with it; pickled send/recv: "
              f"{2 * size / res[f'send:{size}'] / 1e9:.2f} GB/s)")
    # the ceiling of a logged send: raw Send/Recv that also copies each array it sends
    # (into memory used before) while its Isend is under way, in turn with the above
    copying = 2 * size / res[f"SendCopy:{size}:replay"] / 1e9
    raw_up = 2 * size / res[f"Send:{size}:replay"] / 1e9
    logged = 2 * size / res[f"cvm:{size}:replay"] / 1e9
    print(f"{'  raw, copy during Isend':24}{'':>14}{copying:>9.2f} GB/s"
          f"{copying / raw_up:>7.2f}x  (what a replay log can reach: "
          f"{logged / copying:.2f}x of it)")
    # the untimed start of those two (not in the figures above): a log's first copies
    # go into new memory (see BIG_WARM in pingpong_app.py)
    first, first_log = res[f"first:{size}"], res[f"first:{size}:replay"]
    print(f"{'  first 40 round trips':24}{first * 1e3:>11.2f} ms, with the replay log "
          f"{first_log * 1e3:.2f} ms each (slowest round: new memory for the log's copies)")


def startup() -> None:
    ours, bare, bare_ofi = [], [], []
    for _ in range(5):
        rc, out, err, t = clustervm(4, "benchmarks/apps/first_message.py", timeout=60)
        if rc != 0:
            sys.exit(f"first-message job failed:\n{err}")
        ours.append(t)
        bare.append(mpiexec(4, PY, "-c", BARRIER)[3])
        bare_ofi.append(run([str(BIN / "mpiexec"), "--oversubscribe", "-n", "4", PY, "-c", BARRIER],
                            60, {"OMPI_MCA_btl": ""})[3])
    print("2. job start to first result, 4 ranks (median of 5)")
    print(f"   clustervm run -n 4 (one task round trip) {median(ours):.3f} s")
    print(f"   mpiexec -n 4 + Barrier, btl ^ofi         {median(bare):.3f} s "
          f"(ratio {median(ours) / median(bare):.2f}x)")
    print(f"   mpiexec -n 4 + Barrier, default btl      {median(bare_ofi):.3f} s")


def idle(seconds: float) -> None:
    rc, out, err, _ = clustervm(4, "benchmarks/apps/idle_app.py", str(seconds), timeout=120)
    if rc != 0:
        sys.exit(f"idle job failed:\n{err}")
    line = next(l for l in out.splitlines() if l.startswith("idle "))
    steady = next(l for l in out.splitlines() if l.startswith("idle-steady "))
    print(f"3. idle 4-rank VM: {line}")
    print(f"   settled, from /proc: {steady}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    a = p.parse_args()
    messages(a.rounds)
    startup()
    idle(a.idle_seconds)


if __name__ == "__main__":
    main()
