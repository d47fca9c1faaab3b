"""Job start and idle CPU alone (parts 2 and 3 of pingpong.py), with more runs.

    python benchmarks/startup.py [--runs 9] [--idle-runs 3] [--idle-seconds 10]

1. Start of a 4-rank job to its first task result (``clustervm run -n 4``, one
   task, the whole command timed), next to a bare ``mpiexec -n 4`` + Barrier
   run right after it, alternating: medians, and the CPU seconds of every
   process of the job (the launcher, mpiexec and the ranks).
2. CPU seconds an idle 4-rank VM burns in 10 s (all ranks together): medians; read by
   tasks on the nodes (a round trip to each node at both ends), then again once the VM
   has settled, from /proc (benchmarks/apps/idle_app.py).

Each rank compiles clustervm's modules again when their bytecode is not cached
(PYTHONDONTWRITEBYTECODE set and no __pycache__, as in an editable install under
that variable): measured here, 0.3 CPU-s of every 4-rank start. The first line
says which case this run is in; ``python -m compileall clustervm`` caches it (as
a pip install does).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys

from _util import PY, ROOT, clustervm, median, mpiexec, parse

BARRIER = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"


def bytecode_state() -> str:
    """Whether the rank processes will find clustervm's bytecode cached."""
    sources = sorted((ROOT / "clustervm").glob("*.py"))
    cached = 0
    for src in sources:
        pyc = importlib.util.cache_from_source(str(src))
        if os.path.exists(pyc) and os.stat(pyc).st_mtime >= os.stat(src).st_mtime:
            cached += 1
    writes = "not written (PYTHONDONTWRITEBYTECODE)" if os.environ.get(
        "PYTHONDONTWRITEBYTECODE") else "written on first use"
    return f"clustervm bytecode: {cached} of {len(sources)} modules cached, {writes}"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def startup(runs: int) -> None:
    ours, bare, ours_cpu, bare_cpu = [], [], [], []
    for _ in range(runs):
        c0 = children_cpu()
        rc, out, err, t = clustervm(4, "benchmarks/apps/first_message.py", timeout=60)
        if rc != 0:
            sys.exit(f"first-message job failed:\n{err}")
        c1 = children_cpu()
        ours.append(t)
        ours_cpu.append(c1 - c0)
        bare.append(mpiexec(4, PY, "-c", BARRIER)[3])
        bare_cpu.append(children_cpu() - c1)
    print(f"1. job start to first result, 4 ranks (median of {runs}; CPU of every process)")
    print(f"   clustervm run -n 4 (one task round trip) {median(ours):.3f} s "
          f"(CPU {median(ours_cpu):.2f} s; runs {min(ours):.3f}-{max(ours):.3f})")
    print(f"   mpiexec -n 4 + Barrier, btl ^ofi         {median(bare):.3f} s "
          f"(CPU {median(bare_cpu):.2f} s; ratio {median(ours) / median(bare):.2f}x)")


def idle(runs: int, seconds: float) -> None:
    totals, steady = [], []
    for _ in range(runs):
        rc, out, err, _ = clustervm(4, "benchmarks/apps/idle_app.py", str(seconds),
                                    timeout=2 * seconds + 60)
        if rc != 0:
            sys.exit(f"idle job failed:\n{err}")
        totals.append(float(parse(out, "idle ")["cpu_total"]))
        steady.append(float(parse(out, "idle-steady ")["cpu_total"]))
    print(f"2. idle 4-rank VM, CPU-s in {seconds:g} s (all ranks; median of {runs}): "
          f"{median(totals):.3f} (runs {' '.join(f'{t:.3f}' for t in totals)})")
    print(f"   settled, read from /proc (no task of the benchmark's in it):  "
          f"{median(steady):.3f} (runs {' '.join(f'{t:.3f}' for t in steady)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--idle-runs", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    a = p.parse_args()
    print(bytecode_state())
    if a.runs:
        startup(a.runs)
    if a.idle_runs:
        idle(a.idle_runs, a.idle_seconds)


if __name__ == "__main__":
    main()
