"""Group collectives next to raw mpi4py collectives, in the same job (benchmarks/collectives.py).

Main (rank 0) and one spawned task per worker node (``where=rank``) form two
groups: "bench" on the coordinator hub, and "benchf", frozen with
``freeze_group`` (one member per rank: its collectives run on an MPI
communicator of those ranks). The same processes run raw mpi4py collectives
on COMM_WORLD (every
rank takes part: main on rank 0, the task on each node). Raw collectives use
their own communication context, so they do not meet clustervm's
point-to-point traffic (tag 1 and tags >= 65536) on the same communicator.

For each operation, a round runs ``reps`` raw calls, then ``reps`` hub group
calls, then ``reps`` frozen group calls; main times each loop (a barrier of
the same kind first lines everyone up). Prints
``result <op> <raw|group|frozen> <seconds per call>`` (median of rounds).
"""
import os
import time

import numpy as np
from mpi4py import MPI

G = "bench"
F = "benchf"
BIG = 8 << 20
#: BENCH_FROZEN_SURVIVE=0: the frozen group without the copies that let it survive a
#: lost member (freeze_group(survive=False)); the default, as for users, survives
SURVIVE = os.environ.get("BENCH_FROZEN_SURVIVE", "1") != "0"
#: BENCH_OPS=barrier,bcast_8B: only these operations (default: all)
ONLY = [o for o in os.environ.get("BENCH_OPS", "").split(",") if o]


def ops():
    """(name, reps, raw(comm, me), group(ctx, me)): each call's result is checked."""
    small = np.ones(1)
    big = np.ones(BIG // 8)
    out = np.empty_like(big)
    out1 = np.empty(1)
    size = MPI.COMM_WORLD.Get_size()

    def raw_bcast_big(comm, me):
        buf = big if me == 0 else out
        comm.Bcast(buf, root=0)
        return buf[0] == 1.0

    every = [
        ("barrier", 300, lambda c, me: c.Barrier() or True,
         lambda x, g, me: x.barrier(g) or True),
        ("bcast_8B", 300, lambda c, me: c.bcast(b"8 bytes!" if me == 0 else None, root=0) == b"8 bytes!",
         lambda x, g, me: x.bcast(g, b"8 bytes!" if me == 0 else None, root=0) == b"8 bytes!"),
        ("bcast_8MiB", 10, raw_bcast_big,
         lambda x, g, me: x.bcast(g, big if me == 0 else None, root=0)[0] == 1.0),
        ("allreduce_8B", 300,
         lambda c, me: c.Allreduce(small, out1, op=MPI.SUM) or out1[0] == size,
         lambda x, g, me: x.allreduce(g, small)[0] == size),
        ("allreduce_8B_pickled", 300,
         lambda c, me: c.allreduce(1.0, op=MPI.SUM) == size,
         lambda x, g, me: x.allreduce(g, 1.0) == size),
        ("allreduce_8MiB", 10,
         lambda c, me: c.Allreduce(big, out, op=MPI.SUM) or out[-1] == size,
         lambda x, g, me: x.allreduce(g, big)[-1] == size),
    ]
    return [op for op in every if not ONLY or op[0] in ONLY]


def run_all(ctx, me: int, rounds: int, timed: bool) -> dict:
    comm = MPI.COMM_WORLD
    times: dict = {}
    for _ in range(rounds):
        for name, reps, raw, grp in ops():
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                assert raw(comm, me), name
            t1 = time.perf_counter()
            times.setdefault((name, "raw"), []).append((t1 - t0) / reps)
            for kind, g in (("group", G), ("frozen", F)):
                ctx.barrier(g)
                t2 = time.perf_counter()
                for _ in range(reps):
                    assert grp(ctx, g, me), name
                t3 = time.perf_counter()
                times.setdefault((name, kind), []).append((t3 - t2) / reps)
    return times


def member(ctx, n: int, rounds: int) -> None:
    me = ctx.join_group(G)
    ctx.join_group(F)
    ctx.barrier(G, count=n)
    ctx.barrier(F, count=n)
    ctx.freeze_group(F, survive=SURVIVE)
    assert ctx.group_on_mpi(F)
    run_all(ctx, me, rounds, False)


def main(vm) -> None:
    rounds = int(vm.argv[1]) if len(vm.argv) > 1 else 3
    ranks = [n.rank for n in vm.nodes if n.rank > 0]
    n = len(ranks) + 1
    me = vm.join_group(G)                      # main first: instance 0, the root
    assert me == 0 and vm.join_group(F) == 0
    tids = [vm.spawn(member, n, rounds, where=r)[0] for r in ranks]
    vm.barrier(G, count=n)
    vm.barrier(F, count=n)
    vm.freeze_group(F, survive=SURVIVE)
    assert vm.group_on_mpi(F)
    where = {row["tid"]: row["node"] for row in vm.tasks() if row["tid"] in tids}
    assert sorted(where.values()) == ranks, f"one task per node expected: {where}"
    times = run_all(vm.context, me, rounds, True)
    for t in tids:
        vm.join(t)
    print(f"members {n} (main + {len(ranks)} tasks, one per node); rounds {rounds}")
    for (name, kind), v in times.items():
        print(f"result {name} {kind} {sorted(v)[len(v) // 2]!r}")
