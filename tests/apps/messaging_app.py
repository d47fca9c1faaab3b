"""Issue 15's calls in one job: siblings and ranks of a spawn, per-instance arguments,
notifications with source SYSTEM, what the executor carries, non-blocking requests,
sendrecv and the new collectives (hub and frozen groups).

    clustervm run -n 4 tests/apps/messaging_app.py

Each check prints ``CHECK <name> <json>`` (``{"error": <traceback>}`` if it raised);
tests/test_messaging_api.py asserts on them. At the end main leaves one future and
one spawned task unwaited, on purpose: the runtime must warn about them once.
"""
import functools
import json
import time
import traceback

import numpy as np

import clustervm
from clustervm import ANY, SYSTEM

NOTE, PING, HALO, STOP = 50, 51, 52, 53


def report(name, value):
    print("CHECK", name, json.dumps(value), flush=True)


def run_check(name, fn, vm):
    try:
        value = fn(vm)
    except BaseException:       # noqa: BLE001 - a broken check is reported, others go on
        value = {"error": traceback.format_exc()}
    report(name, value)


# -- 1. siblings, rank, size, per-instance arguments ------------------------------------

def who(ctx, a, b=None, *, k=0):
    return {"tid": ctx.tid, "rank": ctx.rank, "size": ctx.size, "siblings": ctx.siblings,
            "a": a, "b": b, "k": k}


def check_siblings(vm):
    same = vm.spawn(who, 7, count=3, k=1)
    own = vm.spawn(who, args=[(1, "x"), (2, "y"), 3], k=2)
    nested = vm.spawn(spawner)
    return {"same_tids": same, "same": [vm.join(t) for t in same],
            "own_tids": own, "own": [vm.join(t) for t in own],
            "nested": vm.join(nested[0]),
            "main": [vm.context.rank, vm.context.size, vm.context.siblings],
            "errors": _spawn_errors(vm)}


def spawner(ctx):
    tids = ctx.spawn(who, args=[("p",), ("q",)])
    return {"tids": tids, "got": [ctx.join(t) for t in tids]}


def _spawn_errors(vm):
    out = {}
    for key, kw in [("mismatch", {"count": 2, "args": [(1,)]}), ("empty", {"args": []}),
                    ("not_list", {"args": "abc"})]:
        try:
            vm.spawn(who, **kw)
            out[key] = "no error"
        except Exception as exc:   # noqa: BLE001
            out[key] = f"{type(exc).__name__}: {exc}"
    return out


# -- 5. notifications ------------------------------------------------------------------

def quick(ctx):
    return ctx.tid


def check_notify(vm):
    [t] = vm.spawn(quick)
    vm.notify(clustervm.TASK_EXIT, [t], tag=NOTE)
    vm.join(t)
    vm.send(vm.tid, NOTE, "user")          # a user message with the same tag
    first = vm.recv(ANY, ANY, timeout=10)  # never the notification
    note = vm.recv(SYSTEM, NOTE, timeout=10)
    none_left = vm.nrecv(ANY, ANY)
    return {"first": [first.source, first.tag, first.data, first.kind],
            "note": [note.source, note.tag, note.kind, note.data["tid"] == t],
            "none_left": none_left is None, "SYSTEM": SYSTEM, "ANY": ANY}


# -- 6. what the executor carries -----------------------------------------------------

def scaled(x, factor=1, offset=0):
    return x * factor + offset


class Scaler:
    def __init__(self, factor):
        self.factor = factor
        self.calls = 0

    def apply(self, x):
        self.calls += 1          # a fresh instance per task: never more than 1
        return x * self.factor + self.calls - 1

    @staticmethod
    def double(x):
        return 2 * x

    @classmethod
    def named(cls, x):
        return f"{cls.__name__}:{x}"

    def __call__(self, x):
        return -x * self.factor


def check_executor(vm):
    ex = vm.executor()
    out = {
        "partial": list(ex.map(functools.partial(scaled, factor=3, offset=1), range(4))),
        "bound": list(ex.map(Scaler(5).apply, range(4))),
        "static": list(ex.map(Scaler.double, range(3))),
        "classmethod": list(ex.map(Scaler.named, range(2))),
        "callable": ex.submit(Scaler(4), 2).result(timeout=30),
        "list_method": ex.submit([3, 1, 3].count, 3).result(timeout=30),
        "chunked": list(vm.map(functools.partial(scaled, offset=10), range(5), chunksize=2)),
    }
    try:
        vm.submit(lambda x: x, 1)
        out["lambda"] = "no error"
    except clustervm.WireError as exc:
        out["lambda"] = f"WireError: {exc}"
    return out


# -- 2. non-blocking point to point ----------------------------------------------------

def ring(ctx, big):
    n, me = ctx.size, ctx.rank
    right, left = ctx.siblings[(me + 1) % n], ctx.siblings[(me - 1) % n]
    shifted = ctx.sendrecv(right, PING, me * 10, source=left, recvtag=PING).data
    arr = np.full(big, me, dtype=np.float64)
    rs = [ctx.irecv(left, HALO), ctx.irecv(right, HALO)]
    ss = [ctx.isend(right, HALO, arr), ctx.isend(left, HALO, arr)]
    arr[:] = -1                    # at once: the logged copy is what leaves
    got = clustervm.waitall(rs, timeout=30)
    clustervm.waitall(ss, timeout=30)
    return {"rank": me, "shifted": shifted, "from_left": float(got[0].data.mean()),
            "from_right": float(got[1].data.mean()), "sources": [got[0].source, got[1].source],
            "send_done": [s.done for s in ss]}


def check_requests(vm):
    tids = vm.spawn(ring, 1 << 18, count=3)
    rings = [vm.join(t) for t in tids]
    out = {"tids": tids, "ring": rings}
    me = vm.tid
    # posting order: the first posted receive takes the first message
    r1, r2 = vm.irecv(ANY, 60), vm.irecv(ANY, 60)
    vm.send(me, 60, "a")
    vm.send(me, 60, "b")
    out["order"] = [r2.wait(timeout=10).data, r1.wait(timeout=10).data]
    r3 = vm.irecv(me, 61)
    vm.send(me, 61, "x")
    vm.send(me, 61, "y")
    out["recv_after_irecv"] = [vm.recv(me, 61, timeout=10).data, r3.wait(timeout=10).data]
    # test, timeout, cancel
    r4 = vm.irecv(me, 62)
    out["test_before"] = list(r4.test())
    try:
        r4.wait(timeout=0.2)
        out["timeout"] = "no error"
    except TimeoutError as exc:
        out["timeout"] = f"TimeoutError: {exc}"
    out["cancel"] = [r4.cancel(), r4.cancelled, r4.wait(timeout=1), r4.cancel()]
    vm.send(me, 62, "late")
    out["late_stays"] = vm.recv(me, 62, timeout=10).data
    # waitany / waitsome hand each request out once
    reqs = [vm.irecv(me, 70 + i) for i in range(3)]
    for i in (2, 0, 1):
        vm.isend(me, 70 + i, i).wait(timeout=10)
    order = []
    while True:
        i, m = clustervm.waitany(reqs, timeout=10)
        if i is None:
            break
        order.append([i, m.data])
    out["waitany"] = sorted(order)
    reqs = [vm.irecv(me, 80 + i) for i in range(2)]
    vm.send(me, 81, "s")
    idx, vals = clustervm.waitsome(reqs, timeout=10)
    out["waitsome"] = [idx, [v.data for v in vals], list(clustervm.testany(reqs)[:2])]
    vm.send(me, 80, "t")
    out["testall"] = [clustervm.testall(reqs)[0] or clustervm.waitall(reqs, 10) is not None,
                      clustervm.waitsome(reqs) == ([], []), reqs[0].wait().data]
    return out


# -- 3. the new collectives, on a hub group and on a frozen one -------------------------

def collectives(ctx, group, n, freeze):
    me = ctx.join_group(group)
    ctx.barrier(group, count=n)
    on_mpi = None
    if freeze:
        ctx.freeze_group(group, timeout=60)
        on_mpi = ctx.group_on_mpi(group)
    r = {"inst": me, "on_mpi": on_mpi}
    r["alltoall"] = ctx.alltoall(group, [f"{me}->{j}" for j in range(n)], timeout=60)
    v = ctx.alltoall(group, [np.arange(me + j, dtype=np.int64) for j in range(n)])
    r["alltoallv"] = [len(a) for a in v]
    r["reduce_scatter"] = ctx.reduce_scatter(group, [me * 10 + j for j in range(n)], timeout=60)
    a = ctx.reduce_scatter(group, np.arange(n * 2, dtype=np.float64).reshape(n, 2) * (me + 1),
                           op="max")
    r["reduce_scatter_np"] = a.tolist()
    r["scan"] = ctx.scan(group, me + 1, timeout=60)
    r["exscan"] = ctx.exscan(group, me + 1)
    r["scan_prod"] = ctx.scan(group, me + 2, op="prod")
    r["scan_np"] = ctx.scan(group, np.full(3, me, dtype=np.int32)).tolist()
    try:
        ctx.alltoall(group, [1])
        r["short"] = "no error"
    except Exception as exc:   # noqa: BLE001
        r["short"] = f"{type(exc).__name__}: {exc}"
    ctx.barrier(group)
    return r


def lonely(ctx):
    ctx.join_group("solo")
    ctx.recv(ctx.parent, STOP)
    ctx.leave_group("solo")


def check_collectives(vm):
    n = 4
    out = {}
    for group, freeze in (("hub", False), ("fz", True)):
        # one member per node (main is rank 0), so the frozen group runs on MPI
        tids = [vm.spawn(collectives, group, n, freeze, where=r)[0] for r in (1, 2, 3)]
        mine = collectives(vm.context, group, n, freeze)
        out[group] = [mine] + [vm.join(t) for t in tids]
        vm.leave_group(group)
    [t] = vm.spawn(lonely)
    vm.join_group("solo")
    while vm.group_size("solo") < 2:
        time.sleep(0.01)
    try:
        vm.scan("solo", 1, timeout=0.3)
        out["timeout"] = "no error"
    except TimeoutError as exc:
        out["timeout"] = f"TimeoutError: {exc}"
    vm.send(t, STOP, None)
    vm.join(t)
    return out


# -- 7. left unwaited on purpose -------------------------------------------------------

def sleeper(ctx, s):
    time.sleep(s)


def slow(s):
    time.sleep(s)
    return s


CHECKS = [
    ("siblings", check_siblings),
    ("notify", check_notify),
    ("executor", check_executor),
    ("requests", check_requests),
    ("collectives", check_collectives),
]


def main(vm):
    for name, fn in CHECKS:
        run_check(name, fn, vm)
    print("ALL CHECKS RAN", flush=True)
    vm.submit(slow, 30)            # never waited for: the runtime warns
    vm.spawn(sleeper, 30)
