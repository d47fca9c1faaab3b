"""heat2d end to end: the same halo-exchange algorithm against clustervm and raw mpi4py.

    python benchmarks/heat2d_compare.py [--tasks 2] [--size 256] [--steps 2000] [--repeat 5]
                                        [--checkpoint-mode log|group]

clustervm: ``clustervm run -n K+1 examples/heat2d.py --tasks K --checkpoint-every 0``
(K spawned tasks, one per node, plus the coordinator); mpi4py: K ranks running
benchmarks/apps/heat2d_mpi4py.py (Sendrecv of the halo rows). Both time the
solve from its start to the gathered grid (clustervm: spawn to the last join);
MPI_Init and interpreter start are outside both. Runs are interleaved; medians.
Checks that both give the same checksum, then prints
``heat2d clustervm_s=<float> mpi4py_s=<float> ratio=<float>``.

``--checkpoint-mode`` is heat2d's (``spawn(..., checkpoint=...)``): ``log``, the
default, keeps every halo row a task sends in its replay log (never trimmed without
checkpoints), so that a lost task can be replayed from the start; ``group`` logs
nothing (a lost task's whole group starts again together).
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys

from _util import BIN, PY, run


def clustervm_run(a: argparse.Namespace) -> tuple[float, str]:
    rc, out, err, _ = run([PY, "-m", "clustervm", "run", "-n", str(a.tasks + 1), "--timeout",
                           "300", "examples/heat2d.py", "--tasks", str(a.tasks), "--size",
                           str(a.size), "--steps", str(a.steps), "--checkpoint-every", "0",
                           "--checkpoint-mode", a.checkpoint_mode],
                          timeout=330)
    m = re.search(r"^heat2d: .* ([0-9.]+) s$", out, re.MULTILINE)
    if rc != 0 or not m:
        raise SystemExit(f"clustervm heat2d failed ({rc}):\n{out}\n{err}")
    return float(m.group(1)), re.search(r"^checksum=\S+", out, re.MULTILINE).group(0)


def mpi4py_run(a: argparse.Namespace) -> tuple[float, str]:
    rc, out, err, _ = run([str(BIN / "mpiexec"), "--oversubscribe", "--bind-to", "none", "-n",
                           str(a.tasks), PY, "benchmarks/apps/heat2d_mpi4py.py", "--size",
                           str(a.size), "--steps", str(a.steps)], timeout=330)
    m = re.search(r"^heat2d_mpi4py_s=([0-9.]+)$", out, re.MULTILINE)
    if rc != 0 or not m:
        raise SystemExit(f"mpi4py heat2d failed ({rc}):\n{out}\n{err}")
    return float(m.group(1)), re.search(r"^checksum=\S+", out, re.MULTILINE).group(0)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--checkpoint-mode", choices=("log", "group"), default="log",
                   help="heat2d's: log (replay log kept, the default) or group (no log)")
    a = p.parse_args(argv)
    ours, theirs = [], []
    for i in range(a.repeat):
        t_ours, sum_ours = clustervm_run(a)
        t_theirs, sum_theirs = mpi4py_run(a)
        if sum_ours != sum_theirs:
            raise SystemExit(f"different results: clustervm {sum_ours}, mpi4py {sum_theirs}")
        ours.append(t_ours)
        theirs.append(t_theirs)
        print(f"run {i + 1}: clustervm {t_ours:.3f} s, mpi4py {t_theirs:.3f} s ({sum_ours})",
              flush=True)
    c, m = statistics.median(ours), statistics.median(theirs)
    print(f"heat2d clustervm_s={c:.4f} mpi4py_s={m:.4f} ratio={c / m:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
