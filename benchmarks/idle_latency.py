"""The first task after a quiet spell: submit-and-result time after the pool was idle.

    python benchmarks/idle_latency.py [--workers 3] [--reps 5]

One no-op task submitted and waited for after a pause of 0, 0.01, 0.1, 0.3 and 1 s
(median of ``--reps``), for clustervm (a ``clustervm run`` job of workers + 1 ranks),
the same with ``CLUSTERVM_DOORBELL=0`` (idle ranks find a message only at their next
poll, every ``CLUSTERVM_DEEP_IDLE_SLEEP_MS`` once idle: how clustervm was before the
seventeenth session), MPIPoolExecutor (``mpiexec -m mpi4py.futures``, same ranks) and
multiprocessing.Pool. Prints one line per pause, and the ratios to the peers.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps"))
from _util import BIN, PY, clustervm, run  # noqa: E402
from idle_latency_app import PAUSES  # noqa: E402
from tasks import noop  # noqa: E402

APP = "benchmarks/apps/idle_latency_app.py"


def parse(out: str) -> dict[float, float]:
    got = {}
    for line in out.splitlines():
        if line.startswith("result "):
            _, pause, ms = line.split()
            got[float(pause)] = float(ms)
    return got


def pool(workers: int, reps: int) -> dict[float, float]:
    got = {}
    with mp.Pool(workers) as p:
        for _ in range(50):
            p.apply_async(noop, (0,)).get()
        for pause in PAUSES:
            took = []
            for i in range(reps):
                time.sleep(pause)
                t0 = time.perf_counter()
                assert p.apply_async(noop, (i,)).get() == i
                took.append(time.perf_counter() - t0)
            got[pause] = statistics.median(took) * 1e3
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    res = {}
    for name, env in (("clustervm", {}), ("no doorbell", {"CLUSTERVM_DOORBELL": "0"})):
        rc, out, err, _ = clustervm(a.workers + 1, APP, str(a.reps), timeout=300, env=env)
        if rc != 0:
            sys.exit(f"clustervm job ({name}) failed ({rc}):\n{err}")
        res[name] = parse(out)
    rc, out, err, _ = run([str(BIN / "mpiexec"), "--oversubscribe", "--bind-to", "none", "-n",
                           str(a.workers + 1), PY, "-m", "mpi4py.futures", APP, str(a.reps)], 300)
    if rc != 0:
        print(f"MPIPoolExecutor run failed ({rc}): {err[-500:]}", file=sys.stderr)
    res["MPIPoolExecutor"] = parse(out)
    res["multiprocessing.Pool"] = pool(a.workers, a.reps)
    names = list(res)
    print(f"one no-op task, submit to result, after a pause (median of {a.reps}; "
          f"{a.workers} workers), ms")
    print(f"{'pause':>8}" + "".join(f"{n:>22}" for n in names))
    for pause in PAUSES:
        print(f"{pause:>7g}s" + "".join(f"{res[n].get(pause, float('nan')):>22.3f}" for n in names))
    last = PAUSES[-1]
    ours = res["clustervm"].get(last, float("nan"))
    print(f"after {last:g} s idle: clustervm {ours:.3f} ms; " + ", ".join(
        f"{n} {res[n].get(last, float('nan')):.3f} ms ({res[n].get(last, float('nan')) / ours:.1f}x ours)"
        for n in names[1:]))


if __name__ == "__main__":
    main()
