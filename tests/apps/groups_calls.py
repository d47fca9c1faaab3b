"""Every group call and the VM-wide mailbox, from spawned tasks and from main.

    clustervm run -n 3 tests/apps/groups_calls.py --tasks 3

Main and ``--tasks`` spawned tasks join group "g" (main last, so it is
instance ``tasks``). Each member records what every call returned; main
prints ``groups-result=<json>`` with main's record and the tasks' records.
The test (tests/test_groups.py) recomputes what each should be.
"""
import argparse
import json
import math
import time

import numpy as np

G = "g"


def gcd(a, b):                        # a user reduce op, by reference
    return math.gcd(a, b)


def record(ctx, me: int, n: int) -> dict:
    """The collective calls every member makes, in the same order."""
    r = {"inst": me}
    ctx.barrier(G)
    r["size"] = ctx.group_size(G)
    r["tids"] = ctx.group_tids(G)
    r["tid_of_0"] = ctx.group_tid(G, 0)
    r["my_inst"] = ctx.group_inst(G)
    r["bcast"] = ctx.bcast(G, {"from": me} if me == 1 else None, root=1)
    r["reduce"] = ctx.reduce(G, me + 1, op="prod", root=0)
    r["allreduce_sum"] = ctx.allreduce(G, me)
    r["allreduce_max"] = ctx.allreduce(G, me * 7 % 5, op=max)
    r["allreduce_min"] = ctx.allreduce(G, me * 7 % 5, op="min")
    r["allreduce_gcd"] = ctx.allreduce(G, 6 * (me + 2), op=gcd)
    a = ctx.allreduce(G, np.arange(4, dtype=np.int32) + me)
    b = ctx.allreduce(G, np.full(3, me + 1, dtype=np.float32), op="prod")
    r["np"] = [a.tolist(), str(a.dtype), b.tolist(), str(b.dtype)]
    r["gather"] = ctx.gather(G, me * 10, root=n - 1)
    r["allgather"] = ctx.allgather(G, f"m{me}")
    r["scatter"] = ctx.scatter(G, [i * i for i in range(n)] if me == 0 else None, root=0)
    big = ctx.bcast(G, np.arange(1 << 20, dtype=np.float64) if me == 0 else None, root=0)
    r["big"] = [float(big.sum()), str(big.dtype)]
    ctx.barrier(G, count=n)
    return r


def errors(ctx, me: int) -> dict:
    """Calls that must fail with a clear error (only instance 0 makes them)."""
    e = {}
    for key, fn in [("not_member", lambda: ctx.barrier("nobody-joined-this")),
                    ("bad_op", lambda: ctx.allreduce(G, 1, op="add"))]:
        try:
            fn()
            e[key] = "no error"
        except Exception as exc:   # noqa: BLE001
            e[key] = f"{type(exc).__name__}: {exc}"
    return e


def member(ctx, n: int) -> dict:
    me = ctx.join_group(G)
    ctx.barrier(G, count=n)                   # everyone (main included) has joined
    r = record(ctx, me, n)
    if me == 0:
        r["errors"] = errors(ctx, me)
    # leave and join again: the lowest free instance, and rounds go on
    if me == 1:
        ctx.leave_group(G)
        ctx.put_info("left", True)
        ctx.get_info("rejoin", wait=True, timeout=60)
        r["rejoined_inst"] = ctx.join_group(G)
    r["after_rejoin"] = ctx.allreduce(G, 1, timeout=60)
    # the mailbox: a task puts an entry main waits for
    if me == 0:
        ctx.put_info("from-task", {"tid": ctx.tid, "arr": np.arange(3)})
    return r


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=3)
    a = p.parse_args(vm.argv[1:])
    n = a.tasks + 1
    tids = vm.spawn(member, n, count=a.tasks)
    while vm.group_size(G) < a.tasks:          # main joins last: instance n-1
        time.sleep(0.01)
    me = vm.join_group(G)
    vm.barrier(G, count=n)
    mine = record(vm.context, me, n)
    # instance 1 leaves; a round without it; then it joins again
    vm.get_info("left", wait=True, timeout=60)
    mine["size_after_leave"] = vm.group_size(G)
    vm.put_info("rejoin", 1)
    while vm.group_size(G) < n:
        time.sleep(0.01)
    mine["after_rejoin"] = vm.allreduce(G, 1, timeout=60)
    box = {}
    got = vm.get_info("from-task", wait=True, timeout=60)
    box["got"] = [got["tid"], got["arr"].tolist()]
    vm.put_info("none", None)
    box["none"] = vm.get_info("none")
    vm.del_info("none")
    vm.del_info("from-task")
    for key, fn in [("get_missing", lambda: vm.get_info("from-task")),
                    ("del_missing", lambda: vm.del_info("never-put")),
                    ("wait_timeout", lambda: vm.get_info("never-put", wait=True, timeout=0.5))]:
        try:
            fn()
            box[key] = "no error"
        except Exception as exc:   # noqa: BLE001
            box[key] = f"{type(exc).__name__}: {exc}"
    mine["mailbox"] = box
    tasks = [vm.join(t, timeout=60) for t in tids]
    print("groups-result=" + json.dumps({"main": mine, "tasks": tasks, "tids": tids,
                                         "main_tid": vm.tid}), flush=True)
