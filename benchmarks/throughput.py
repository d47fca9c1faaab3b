"""Task throughput: clustervm next to mpi4py.futures and multiprocessing.Pool, same run.

    python benchmarks/throughput.py [--workers 3] [--noop 20000] [--ms 2000]

No-op tasks and 1 ms tasks on the same number of workers (clustervm: workers+1
ranks, the coordinator being rank 0, as MPIPoolExecutor's manager), with
``map`` one task a message (``chunksize=1``), ``map`` in the chunks
multiprocessing.Pool.map picks itself (four per worker; the same ``chunksize``
for all three), and a ``submit`` loop; and the latency of one
submit-then-result round trip (median). Prints tasks/s and our ratio to each peer. The
clustervm lines also give the coordinator's CPU microseconds per task, which
bound how many nodes one coordinator can feed. Extra clustervm options (e.g.
``--dashboard 0``) can be passed with --run-arg.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time

sys.path.insert(0, "benchmarks/apps")
from _util import BIN, PY, clustervm, run  # noqa: E402
from tasks import noop, pool_chunksize, sleep_ms  # noqa: E402


def collect(out: str, into: dict) -> None:
    for line in out.splitlines():
        if line.startswith("result "):
            _, who, name, how, value, cpu = line.split()
            into[(who, name, how)] = (float(value), float(cpu))


def pool(workers: int, n_noop: int, n_ms: int, into: dict) -> None:
    with mp.Pool(workers) as p:
        p.map(noop, range(500), chunksize=1)
        p.map(noop, range(n_noop))
        for name, fn, n in (("noop", noop, n_noop), ("1ms", sleep_ms, n_ms)):
            t0 = time.perf_counter()
            p.map(fn, range(n), chunksize=1)
            into[("pool", name, "map")] = (n / (time.perf_counter() - t0), 0.0)
            t0 = time.perf_counter()
            p.map(fn, range(n))                    # its own chunks: pool_chunksize(n, workers)
            into[("pool", name, "chunked")] = (n / (time.perf_counter() - t0), 0.0)
            t0 = time.perf_counter()
            rs = [p.apply_async(fn, (i,)) for i in range(n)]
            [r.get() for r in rs]
            into[("pool", name, "submit")] = (n / (time.perf_counter() - t0), 0.0)
        lat = []
        for i in range(1000):
            t0 = time.perf_counter()
            p.apply_async(noop, (i,)).get()
            lat.append(time.perf_counter() - t0)
        into[("pool", "latency", "-")] = (statistics.median(lat) * 1e3, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--noop", type=int, default=20000)
    ap.add_argument("--ms", type=int, default=2000)
    ap.add_argument("--run-arg", action="append", default=[], help="extra clustervm run option")
    a = ap.parse_args()
    res: dict = {}
    rc, out, err, _ = clustervm(a.workers + 1, "benchmarks/apps/throughput_app.py", str(a.noop),
                                str(a.ms), timeout=600, run_args=tuple(a.run_arg))
    if rc != 0:
        sys.exit(f"clustervm job failed ({rc}):\n{err}")
    collect(out, res)
    rc, out, err, _ = run([str(BIN / "mpiexec"), "--oversubscribe", "--bind-to", "none", "-n",
                           str(a.workers + 1), PY, "-m", "mpi4py.futures",
                           "benchmarks/apps/mpipool_app.py", str(a.noop), str(a.ms)], 600)
    if rc != 0:
        print(f"MPIPoolExecutor run failed ({rc}): {err[-500:]}", file=sys.stderr)
    collect(out, res)
    pool(a.workers, a.noop, a.ms, res)
    print(f"tasks/s with {a.workers} workers ({a.workers + 1} ranks on this machine's cores)")
    print(f"{'':16}{'clustervm':>11}{'us/task*':>9}{'MPIPool':>10}{'mp.Pool':>10}"
          f"{'vs MPIPool':>12}{'vs Pool':>9}")
    for name in ("noop", "1ms"):
        for how in ("map", "chunked", "submit"):
            ours, cpu = res.get(("clustervm", name, how), (float("nan"), 0))
            peer = res.get(("mpipool", name, how), (float("nan"), 0))[0]
            mpp = res.get(("pool", name, how), (float("nan"), 0))[0]
            print(f"{name + ' ' + how:16}{ours:>11.0f}{cpu:>9.1f}{peer:>10.0f}{mpp:>10.0f}"
                  f"{ours / peer:>11.2f}x{ours / mpp:>8.2f}x")
    ideal = a.workers * 1000
    for how in ("map", "chunked", "submit"):
        ours = res.get(("clustervm", "1ms", how), (float("nan"), 0))[0]
        print(f"1 ms tasks with {how}: {ours / ideal * 100:.0f}% of the ideal {ideal} tasks/s")
    lat = {who: res.get((who, "latency", "-"), (float("nan"), 0))[0]
           for who in ("clustervm", "mpipool", "pool")}
    print(f"one submit+result round trip (median): clustervm {lat['clustervm']:.3f} ms, "
          f"MPIPoolExecutor {lat['mpipool']:.3f} ms, multiprocessing.Pool {lat['pool']:.3f} ms")
    print("* coordinator CPU microseconds per task (its whole process), clustervm only")
    print(f"  map: one task a message for all three (Pool.map with chunksize=1); chunked: map "
          f"with multiprocessing.Pool's own chunks for all three (chunksize "
          f"{pool_chunksize(a.ms, a.workers)} for the 1 ms tasks, {pool_chunksize(a.noop, a.workers)} "
          f"for the no-ops)")


if __name__ == "__main__":
    main()
