"""A loop of one collective on a frozen group, timed at every member.

    .venv/bin/clustervm run -n 4 benchmarks/apps/frozen_loop_app.py [--op barrier|allreduce]
        [--seconds 2] [--hub]

Main and one task per worker node join a group and freeze it (``--hub``: they do
not, and the group goes on MPI by itself after 16 calls, ``CLUSTERVM_AUTO_FREEZE``;
with ``CLUSTERVM_AUTO_FREEZE=0`` it stays on the coordinator). Then every member
makes the same call (a barrier, or an allreduce of a 1-element float64 array) for
about ``--seconds``, main deciding when to stop (a bcast every 100 calls). Prints
``loop op=<op> on_mpi=<bool> us=<per call at main> members=<n>``. Run it from
another checkout (its ``clustervm`` is imported from the working directory) to
compare two versions; raw mpi4py's calls are in benchmarks/collectives.py.
"""
import argparse
import time

import numpy as np

G = "loop"


def loop(ctx, op: str, seconds: float, main: bool) -> float:
    one = np.ones(1)
    call = (lambda: ctx.barrier(G)) if op == "barrier" else (lambda: ctx.allreduce(G, one))
    ctx.barrier(G)
    t0 = time.perf_counter()
    done = 0
    while True:
        for _ in range(100):
            call()
        done += 100
        if ctx.bcast(G, time.perf_counter() - t0 > seconds if main else None):
            return (time.perf_counter() - t0) / done


def member(ctx, n: int, op: str, seconds: float, hub: bool) -> float:
    ctx.join_group(G)
    ctx.barrier(G, count=n)
    if not hub:
        ctx.freeze_group(G)
    return loop(ctx, op, seconds, False)


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--op", choices=("barrier", "allreduce"), default="barrier")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--hub", action="store_true")
    a = p.parse_args(vm.argv[1:])
    ranks = [nd.rank for nd in vm.nodes if nd.rank > 0]
    n = len(ranks) + 1
    vm.join_group(G)
    tids = [vm.spawn(member, n, a.op, a.seconds, a.hub, where=r)[0] for r in ranks]
    vm.barrier(G, count=n)
    if not a.hub:
        vm.freeze_group(G)
    per_call = loop(vm.context, a.op, a.seconds, True)
    on_mpi = vm.group_on_mpi(G)
    for t in tids:
        vm.join(t)
    print(f"loop op={a.op} on_mpi={on_mpi} us={per_call * 1e6:.1f} members={n}")
