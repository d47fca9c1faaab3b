"""Group collectives next to raw mpi4py collectives, in the same job.

    python benchmarks/collectives.py [-n 4] [--rounds 3]

Groups of main + one spawned task per worker node; the same ranks run
comm.Barrier, comm.bcast / comm.Bcast and comm.Allreduce / comm.allreduce on
COMM_WORLD. Times are per call at main (rank 0), medians of ``--rounds``
rounds; ratios are ours / raw (lower is better; the target is 2x).

Two kinds of group: a frozen one (``freeze_group``: one member per rank, its
collectives on an MPI communicator of those ranks, non-blocking collectives
polled from Python, one slot exchange first to check the calls match), and a
hub one (every member sends its contribution to the coordinator, which
combines them and answers each member: the general case, which survives
failover). A hub group of one member per rank goes on MPI by itself after 16
calls (``CLUSTERVM_AUTO_FREEZE``, the default): the "hub group" column is that;
``--no-auto`` runs the job a second time with ``CLUSTERVM_AUTO_FREEZE=0`` and adds
a column of the hub group kept on the coordinator.
"""
from __future__ import annotations

import argparse
import sys

from _util import clustervm

LABELS = {
    "barrier": ("barrier", "comm.Barrier"),
    "bcast_8B": ("bcast 8 B", "comm.bcast (pickle)"),
    "bcast_8MiB": ("bcast 8 MiB numpy", "comm.Bcast"),
    "allreduce_8B": ("allreduce 8 B numpy", "comm.Allreduce"),
    "allreduce_8B_pickled": ("allreduce 8 B float", "comm.allreduce (pickle)"),
    "allreduce_8MiB": ("allreduce 8 MiB numpy", "comm.Allreduce"),
}


def fmt(t: float) -> str:
    return f"{t * 1e6:9.1f} us" if t < 0.01 else f"{t * 1e3:9.2f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=4, help="ranks, coordinator included")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-auto", action="store_true",
                   help="also the hub group kept on the coordinator (CLUSTERVM_AUTO_FREEZE=0)")
    a = p.parse_args()
    res = measure(a.n, a.rounds)
    kept = measure(a.n, a.rounds, {"CLUSTERVM_AUTO_FREEZE": "0"}) if a.no_auto else {}
    print(f"{'':24}{'raw mpi4py':>13}{'frozen group':>14}{'ratio':>7}{'hub group':>13}"
          f"{'ratio':>8}" + (f"{'hub, kept':>13}{'ratio':>8}" if kept else "") + "   raw call")
    for name, (label, raw_call) in LABELS.items():
        if (name, "raw") not in res:
            continue                      # left out by BENCH_OPS
        raw, frozen, hub = res[(name, "raw")], res[(name, "frozen")], res[(name, "group")]
        line = (f"{label:24}{fmt(raw):>13}{fmt(frozen):>14}{frozen / raw:>6.1f}x{fmt(hub):>13}"
                f"{hub / raw:>7.1f}x")
        if kept:      # its own job: against the raw call of that job
            k, kraw = kept[(name, "group")], kept[(name, "raw")]
            line += f"{fmt(k):>13}{k / kraw:>7.1f}x"
        print(line + f"   {raw_call}")


def measure(n: int, rounds: int, env: dict | None = None) -> dict:
    """{(op, raw|group|frozen): seconds per call} of one job."""
    rc, out, err, _ = clustervm(n, "benchmarks/apps/collectives_app.py", str(rounds),
                                timeout=600, env=env)
    if rc != 0:
        sys.exit(f"collectives job failed ({rc}):\n{out}\n{err}")
    res: dict = {}
    for line in out.splitlines():
        if line.startswith("result "):
            _, name, kind, value = line.split()
            res[(name, kind)] = float(value)
        elif line.startswith("members ") and env is None:
            print(line)
    return res


if __name__ == "__main__":
    main()
