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
]


def main(vm):
    for name, fn in CHECKS:
        run_check(name, fn, vm)
    print("ALL CHECKS RAN", flush=True)
    vm.submit(slow, 30)            # never waited for: the runtime warns
    vm.spawn(sleeper, 30)
