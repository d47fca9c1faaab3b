"""A hub group that moves onto MPI by itself (``CLUSTERVM_AUTO_FREEZE``), a task that
joins it there, and a member that leaves it (tests/test_groups.py).

Run with ``-n 5``: main and a task on each of nodes 1-3 make ``ROUNDS`` allreduces
(phase A: on MPI after the first 16); a fourth task, on node 4, joins while they wait
for main's word (phase B: every member asked off MPI first, then five members, and on
MPI again); then that task leaves (phase C: four members, on MPI again). Prints
``auto-result: {...}`` with what every member saw.

With ``--busy`` the fourth task joins while the others keep calling allreduce on MPI
(they are asked off in the middle of a call): every member counts 4 until the round
the new one takes part in, then 5, and makes ``AFTER`` rounds more.

With ``--kill-at K --markers DIR`` (``-n 4``) main and a task a node make
``K + KILL_MORE`` allreduces of their step; the group is on MPI by itself after 16; the
member on the last rank creates ``DIR/ready`` before step K and sleeps (the test kills
its node). It restarts from the start elsewhere and gets every answer the others got.
Prints ``auto-kill: sums_ok=<bool> task_errors=[...]``.
"""
import json
import os
import time

G = "auto"
ROUNDS = 24
GO, JOINED, LEFT, GO2 = 1, 2, 3, 4
AFTER = 20
KILL_MORE = 40


def steps(ctx, kill_at, markers, last_rank):
    """allreduce(step) for kill_at + KILL_MORE steps (--kill-at); the member on the last
    rank stops before step kill_at until its node is killed."""
    out = []
    for step in range(kill_at + KILL_MORE):
        if step == kill_at and ctx.node == last_rank and markers and \
                not os.path.exists(os.path.join(markers, "ready")):
            open(os.path.join(markers, "ready"), "w").close()
            time.sleep(60)
        out.append(ctx.allreduce(G, step))
    return out


def kill_member(ctx, n, kill_at, markers, last_rank):
    ctx.join_group(G)
    ctx.barrier(G, count=n)
    return steps(ctx, kill_at, markers, last_rank)


def kill_drill(vm, kill_at, markers):
    ranks = sorted(nd.rank for nd in vm.nodes if nd.rank > 0)
    n = len(ranks) + 1
    ctx = vm.context
    ctx.join_group(G)
    tids = [vm.spawn(kill_member, n, kill_at, markers, ranks[-1], where=r)[0] for r in ranks]
    ctx.barrier(G, count=n)
    sums = steps(ctx, kill_at, "", ranks[-1])
    errors, theirs = [], []
    for t in tids:
        try:
            theirs.append(vm.join(t, timeout=60))
        except Exception as exc:   # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
    want = [n * s for s in range(kill_at + KILL_MORE)]
    ok = sums == want and all(x == want for x in theirs)
    print(f"auto-kill: sums_ok={ok} task_errors={errors}", flush=True)


def until_five(ctx) -> list:
    """allreduce(1) until a round counts 5 members, then AFTER more (--busy)."""
    got = []
    while not got or got[-1] != 5:
        got.append(ctx.allreduce(G, 1))
    return got + [ctx.allreduce(G, 1) for _ in range(AFTER)]


def busy_member(ctx, n):
    me = ctx.join_group(G)
    ctx.barrier(G, count=n)
    return {"inst": me, "a": [ctx.allreduce(G, 1) for _ in range(ROUNDS)],
            "on_mpi_a": ctx.group_on_mpi(G), "b": until_five(ctx)}


def busy_joiner(ctx):
    me = ctx.join_group(G)
    return {"inst": me, "b": until_five(ctx), "on_mpi_b": ctx.group_on_mpi(G)}


def busy(vm, ranks):
    ctx = vm.context
    ctx.join_group(G)
    tids = [vm.spawn(busy_member, 4, where=r)[0] for r in ranks[:3]]
    ctx.barrier(G, count=4)
    mine = {"a": [ctx.allreduce(G, 1) for _ in range(ROUNDS)], "on_mpi_a": ctx.group_on_mpi(G)}
    j = vm.spawn(busy_joiner, where=ranks[3])[0]
    mine["b"] = until_five(ctx)
    result = {"main": mine, "tasks": [vm.join(t) for t in tids], "joiner": vm.join(j)}
    print("auto-result: " + json.dumps(result), flush=True)


def phases(ctx, me, joiner=False, main_tid=0):
    """The member's side of phases B and C (phase A is done)."""
    out = {}
    if not joiner:
        ctx.recv(tag=GO) if me else None
    out["b"] = [ctx.allreduce(G, 1) for _ in range(ROUNDS)]
    out["on_mpi_b"] = ctx.group_on_mpi(G)
    ctx.barrier(G)
    if joiner:
        ctx.leave_group(G)
        ctx.send(main_tid, LEFT, "left")
        return out
    if me:
        ctx.recv(tag=GO2)
    out["c"] = [ctx.allreduce(G, 1) for _ in range(ROUNDS)]
    out["on_mpi_c"] = ctx.group_on_mpi(G)
    return out


def member(ctx, n):
    me = ctx.join_group(G)
    ctx.barrier(G, count=n)
    out = {"inst": me, "a": [ctx.allreduce(G, i) for i in range(ROUNDS)],
           "on_mpi_a": ctx.group_on_mpi(G)}
    ctx.barrier(G)
    out.update(phases(ctx, me))
    return out


def joiner(ctx, main_tid):
    me = ctx.join_group(G)              # waits until the members are off MPI
    ctx.send(main_tid, JOINED, me)
    out = {"inst": me}
    out.update(phases(ctx, me, joiner=True, main_tid=main_tid))
    return out


def main(vm):
    ctx = vm.context
    if "--kill-at" in vm.argv:
        args = vm.argv[1:]
        kill_drill(vm, int(args[args.index("--kill-at") + 1]),
                   args[args.index("--markers") + 1])
        return
    ranks = sorted(n.rank for n in vm.nodes if n.rank > 0)
    assert len(ranks) == 4, "run with -n 5"
    if "--busy" in vm.argv[1:]:
        busy(vm, ranks)
        return
    me = ctx.join_group(G)
    tids = [vm.spawn(member, 4, where=r)[0] for r in ranks[:3]]
    ctx.barrier(G, count=4)
    mine = {"inst": me, "a": [ctx.allreduce(G, i) for i in range(ROUNDS)],
            "on_mpi_a": ctx.group_on_mpi(G)}
    ctx.barrier(G)
    j = vm.spawn(joiner, ctx.tid, where=ranks[3])[0]
    got = ctx.recv(source=j, tag=JOINED)
    mine["joined_inst"] = got.data
    for t in tids:
        ctx.send(t, GO, "go")
    mine["b"] = [ctx.allreduce(G, 1) for _ in range(ROUNDS)]
    mine["on_mpi_b"] = ctx.group_on_mpi(G)
    ctx.barrier(G)
    ctx.recv(source=j, tag=LEFT)
    for t in tids:
        ctx.send(t, GO2, "go")
    mine["c"] = [ctx.allreduce(G, 1) for _ in range(ROUNDS)]
    mine["on_mpi_c"] = ctx.group_on_mpi(G)
    result = {"main": mine, "tasks": [vm.join(t) for t in tids], "joiner": vm.join(j)}
    print("auto-result: " + json.dumps(result), flush=True)
