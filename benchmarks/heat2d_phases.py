"""heat2d's steps taken apart: clustervm and raw mpi4py side by side, in the same run.

    python benchmarks/heat2d_phases.py [--tasks 2] [--steps 3000] [--repeat 3]
                                       [--checkpoint-mode group|log]

Where ``heat2d_compare.py``'s ratio comes from. clustervm: ``clustervm run -n K+1
benchmarks/apps/heat2d_parts_app.py --checkpoint-every 0`` (examples/heat2d.py's own
solver, its calls timed from outside); mpi4py: ``mpiexec -n K
benchmarks/apps/heat2d_mpi4py.py --phases``. Runs are interleaved; each figure is the
median over the runs of the tasks' (ranks') per-step medians, in microseconds::

    heat2d_phases side=clustervm send_us=<f> recv_us=<f> compute_us=<f> step_us=<f> step_mean_us=<f> step_p90_us=<f>
    heat2d_phases side=mpi4py msg_us=<f> compute_us=<f> step_us=<f> step_mean_us=<f> step_p90_us=<f>
    heat2d_phases mode=<m> ratio_median=<f> ratio_mean=<f>

``recv_us`` includes the wait for the neighbour's row; ``msg_us`` is raw's two
``Sendrecv`` calls, their waits included. ``ratio_median``: the steps' medians (what the
message path costs); ``ratio_mean``: their means (that, plus the steps' spread, which
is what a whole run's time shows).
"""
from __future__ import annotations

import argparse
import statistics
import sys

from _util import BIN, PY, run


def _lines(out: str, prefix: str) -> list[dict[str, float]]:
    rows = []
    for line in out.splitlines():
        if line.startswith(prefix):
            rows.append({k: float(v) for k, v in (kv.split("=", 1) for kv in line.split()[2:])})
    return rows


def clustervm_run(a: argparse.Namespace) -> list[dict[str, float]]:
    rc, out, err, _ = run([PY, "-m", "clustervm", "run", "-n", str(a.tasks + 1), "--timeout",
                           "300", "benchmarks/apps/heat2d_parts_app.py", "--tasks", str(a.tasks),
                           "--steps", str(a.steps), "--checkpoint-every", "0",
                           "--checkpoint-mode", a.checkpoint_mode], timeout=330)
    rows = _lines(out, "steps task=")
    if rc != 0 or len(rows) != a.tasks:
        raise SystemExit(f"clustervm heat2d failed ({rc}):\n{out}\n{err}")
    return rows


def mpi4py_run(a: argparse.Namespace) -> list[dict[str, float]]:
    rc, out, err, _ = run([str(BIN / "mpiexec"), "--oversubscribe", "--bind-to", "none", "-n",
                           str(a.tasks), PY, "benchmarks/apps/heat2d_mpi4py.py", "--steps",
                           str(a.steps), "--phases"], timeout=330)
    rows = _lines(out, "steps rank=")
    if rc != 0 or len(rows) != a.tasks:
        raise SystemExit(f"mpi4py heat2d failed ({rc}):\n{out}\n{err}")
    return rows


def _medians(runs: list[list[dict[str, float]]]) -> dict[str, float]:
    """Per key: the median over runs of the median over a run's tasks."""
    keys = runs[0][0].keys()
    return {k: statistics.median(statistics.median(r[k] for r in rows) for rows in runs)
            for k in keys}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--checkpoint-mode", choices=("group", "log"), default="group",
                   help="heat2d's: group (no replay log) or log (each row logged)")
    a = p.parse_args(argv)
    ours, theirs = [], []
    for i in range(a.repeat):
        first, second = (clustervm_run, mpi4py_run) if i % 2 == 0 else (mpi4py_run,
                                                                        clustervm_run)
        got = {first: first(a), second: second(a)}
        ours.append(got[clustervm_run])
        theirs.append(got[mpi4py_run])
    o, t = _medians(ours), _medians(theirs)
    print("heat2d_phases side=clustervm " + " ".join(f"{k}={v:.1f}" for k, v in o.items()))
    print("heat2d_phases side=mpi4py " + " ".join(f"{k}={v:.1f}" for k, v in t.items()))
    print(f"heat2d_phases mode={a.checkpoint_mode} "
          f"ratio_median={o['step_us'] / t['step_us']:.3f} "
          f"ratio_mean={o['step_mean_us'] / t['step_mean_us']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
