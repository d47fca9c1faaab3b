"""Test app for issue 3: futures, map, cancellation, nested tasks, where=, Executor, scatter.

    clustervm run -n 3 --slots 1 tests/apps/scheduling_app.py

Written as a user would write one. Each check prints one line
``CHECK <name> <json>`` (or ``CHECK <name> {"error": <traceback>}``);
tests/test_scheduling.py asserts on those lines.
"""
import concurrent.futures as cf
import json
import socket
import time
import traceback

import numpy as np

import clustervm


def report(name, value):
    print("CHECK", name, json.dumps(value), flush=True)


# -- task functions ---------------------------------------------------------

def square(x):
    return x * x


def add(a, b):
    return a + b


def where_am_i(_=None):
    ctx = clustervm.context()
    return [ctx.node, ctx.host]


def square_and_tid(x):
    return [x * x, clustervm.context().tid]


def wait_for(key, value):
    """Returns ``value`` once main (or another task) has put ``key``."""
    clustervm.context().get_info(key, wait=True)
    return value


def release_after(key, value):
    clustervm.context().put_info(key, True)
    return value


def held(i, key):
    """Marks that it ran, then waits for ``key``."""
    ctx = clustervm.context()
    ctx.put_info(f"ran/{i}", True)
    ctx.get_info(key, wait=True)
    return i


def divide(a, b):
    return a / b


def fan_out(n):
    """Submits n children from inside a task and waits on all of them."""
    ctx = clustervm.context()
    futs = [ctx.submit(square, i) for i in range(n)]
    return sum(f.result() for f in futs)


def tree(depth):
    """2**depth leaves, each level waiting on tasks it submitted itself."""
    if depth == 0:
        return 1
    ctx = clustervm.context()
    left, right = ctx.submit(tree, depth - 1), ctx.submit(tree, depth - 1)
    return left.result() + right.result()


def nested_fail():
    return clustervm.context().submit(divide, 1, 0).result()


def spawned_submitter(ctx, n):
    return sum(f.result() for f in [ctx.submit(square, i) for i in range(n)])


def in_spawned(ctx):
    return [ctx.node, ctx.host]


def part_sum(handle, lo, hi):
    return float(handle.get()[lo:hi].sum())


def table_size(handle):
    return len(handle.get()["names"])


# -- code written for any concurrent.futures.Executor -----------------------

def executor_client(executor):
    """Plain concurrent.futures code: runs on ThreadPoolExecutor and on vm.executor()."""
    futs = [executor.submit(square, i) for i in range(10)]
    done, not_done = cf.wait(futs, timeout=60)
    out = {"wait": [sorted(f.result() for f in done), len(not_done)]}
    first = cf.wait([executor.submit(add, i, 1) for i in range(4)], timeout=60,
                    return_when=cf.FIRST_COMPLETED)
    out["first_completed"] = len(first.done) >= 1
    cf.wait(first.not_done, timeout=60)
    out["as_completed"] = sorted(f.result() for f in cf.as_completed(
        [executor.submit(add, i, 100) for i in range(5)], timeout=60))
    out["map"] = list(executor.map(square, range(7)))
    out["map2"] = list(executor.map(add, range(5), range(10, 15), chunksize=2))
    bad = executor.submit(divide, 1, 0)
    out["exception"] = type(bad.exception(timeout=60)).__name__
    try:
        bad.result()
    except ZeroDivisionError as exc:
        out["cause"] = type(exc.__cause__).__name__ if exc.__cause__ else None
    out["callback"] = []
    f = executor.submit(square, 9)
    f.add_done_callback(lambda fut: out["callback"].append(fut.result()))
    f.result(timeout=60)
    cf.wait([f], timeout=60)
    out["isinstance"] = [isinstance(executor, cf.Executor), isinstance(f, cf.Future)]
    return out


# -- checks, run by main ------------------------------------------------------

def check_results(vm):
    out = {"submit": [f.result(60) for f in [vm.submit(square, i) for i in range(20)]],
           "map": list(vm.map(square, range(30))),
           "map2": list(vm.map(add, range(10), range(100, 110))),
           "kwargs": vm.submit(add, 1, b=2).result(60),
           "empty": list(vm.map(square, []))}
    # item 0 finishes only after the last item: an ordered map still yields in order
    n, key = 6, "ordered/last-done"
    names = ["wait_for"] + ["release_after"] * (n - 1)
    keys = [key] + [f"ordered/x{i}" for i in range(1, n - 1)] + [key]
    out["ordered"] = list(vm.map(_dispatch, names, keys, range(n)))
    return out


def _dispatch(fn_name, key, value):
    """One function for map: item 0 waits for ``key``; the others return at once (the last puts it)."""
    if fn_name == "wait_for":
        return wait_for(key, value)
    return release_after(key, value)


def check_unordered(vm):
    # item 0 waits for a key main puts only after the first result came out of the
    # iterator: an ordered map would wait forever, an unordered one yields others first
    key = "unordered/first-seen"
    n = 6
    names = ["wait_for"] + ["release_after"] * (n - 1)
    keys = [key] + [f"{key}/x{i}" for i in range(1, n)]
    got = []
    for value in vm.map(_dispatch, names, keys, range(n), ordered=False, timeout=60):
        got.append(value)
        if len(got) == 1:
            vm.put_info(key, True)
    return {"got": got, "n": n}


def check_chunks(vm):
    pairs = list(vm.map(square_and_tid, range(23), chunksize=5))
    ordered_false = sorted(vm.map(square, range(23), chunksize=4, ordered=False))
    return {"values": [p[0] for p in pairs], "tasks": len({p[1] for p in pairs}),
            "unordered": ordered_false}


def check_map_timeout(vm):
    out = {}
    for ordered in (True, False):
        key = f"never/{ordered}"
        t0 = time.monotonic()
        it = vm.map(wait_for, [key] * 3, range(3), timeout=0.5, ordered=ordered)
        try:
            out[str(ordered)] = ["no error", list(it)]
        except cf.TimeoutError as exc:
            out[str(ordered)] = [type(exc).__name__, time.monotonic() - t0]
        vm.put_info(key, True)               # let the tasks that started end
    return out


def check_exceptions(vm):
    out = {}
    f = vm.submit(divide, 1, 0)
    try:
        f.result(60)
    except ZeroDivisionError as exc:
        out["submit"] = {"type": type(exc).__name__, "cause": type(exc.__cause__).__name__,
                         "tb": str(exc.__cause__),
                         "formatted": "".join(traceback.format_exception(exc))}
    try:
        list(vm.map(divide, [1, 2, 3, 4], [1, 1, 0, 1]))
    except ZeroDivisionError as exc:
        out["map"] = {"type": type(exc).__name__, "tb": str(exc.__cause__)}
    try:
        vm.submit(nested_fail).result(60)
    except ZeroDivisionError as exc:
        out["nested"] = {"type": type(exc).__name__, "tb": str(exc.__cause__)}
    return out


def check_cancel(vm):
    key = "cancel/release"
    futs = [vm.submit(held, i, key) for i in range(14)]
    # the first tasks are running (they put ran/i); the last ones wait in the coordinator
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            vm.get_info("ran/0")
            vm.get_info("ran/1")
            break
        except KeyError:
            time.sleep(0.01)
    running_cancel = futs[0].cancel()        # it runs: cannot be cancelled
    cancelled = [f.cancel() for f in futs[10:]]
    vm.put_info(key, True)
    results = []
    for f in futs[:10]:
        try:
            results.append(f.result(60))
        except cf.CancelledError:
            results.append("cancelled")
    ran = []
    for i in range(14):
        try:
            vm.get_info(f"ran/{i}")
            ran.append(i)
        except KeyError:
            pass
    live = [row["tid"] for row in vm.tasks() if row["tid"] != vm.tid]
    states = [[f.cancelled(), f.done()] for f in futs[10:]]
    try:
        futs[-1].result(1)
        late = "no error"
    except cf.CancelledError:
        late = "CancelledError"
    return {"running_cancel": running_cancel, "running_result": results[0],
            "cancelled": cancelled, "results": results, "ran": ran, "live": live,
            "states": states, "late": late}


def check_nested(vm):
    return {"fan_out": list(vm.map(fan_out, [5] * 4)),
            "tree": vm.submit(tree, 3).result(120),
            "spawned": vm.join(vm.spawn(spawned_submitter, 6)[0], timeout=120)}


def check_where(vm):
    host = socket.gethostname()
    ranks = [n.rank for n in vm.nodes if n.rank > 0]
    out = {"ranks": ranks, "host": host,
           "rank": {str(r): [vm.submit(where_am_i, where=r).result(60) for _ in range(4)]
                    for r in ranks},
           "list": [vm.submit(where_am_i, where=[ranks[-1]]).result(60) for _ in range(3)],
           "host_runs": vm.submit(where_am_i, where=host).result(60),
           "map": list(vm.map(where_am_i, range(6), where=ranks[0])),
           "spawn": vm.join(vm.spawn(in_spawned, where=ranks[-1])[0], timeout=60)}
    for name, bad in (("bad_rank", 99), ("bad_host", "no-such-host.invalid")):
        try:
            vm.submit(where_am_i, where=bad)
            out[name] = [None, ""]
        except Exception as exc:   # noqa: BLE001
            out[name] = [type(exc).__name__, str(exc)]
    return out


def check_executor(vm):
    with cf.ThreadPoolExecutor(2) as pool:
        local = executor_client(pool)
    with vm.executor() as ex:
        remote = executor_client(ex)
        pending = ex.submit(square, 12)
    after = pending.done()
    try:
        ex.submit(square, 1)
        closed = None
    except RuntimeError as exc:
        closed = type(exc).__name__
    return {"local": local, "remote": remote, "after_with": [after, pending.result()],
            "closed": closed}


def check_scatter(vm):
    big = np.arange(1_000_000, dtype=np.float64)           # 8 MB
    handle = vm.scatter(big)
    counters = vm._c.transport.counters
    before = counters.bytes_out
    bounds = [(i * 50_000, (i + 1) * 50_000) for i in range(20)]
    parts = list(vm.map(part_sum, [handle] * 20, [b[0] for b in bounds], [b[1] for b in bounds]))
    sent = counters.bytes_out - before
    table = vm.scatter({"names": ["a", "b", "c"]})
    return {"sum_ok": sum(parts) == float(big.sum()), "parts": len(parts),
            "sent_per_array": sent / big.nbytes, "workers": vm.workers,
            "table": list(vm.map(table_size, [table] * 5)),
            "main_get": float(handle.get()[:10].sum())}


CHECKS = [
    ("results", check_results),
    ("unordered", check_unordered),
    ("chunks", check_chunks),
    ("exceptions", check_exceptions),
    ("nested", check_nested),
    ("where", check_where),
    ("executor", check_executor),
    ("scatter", check_scatter),
    ("cancel", check_cancel),
    ("map_timeout", check_map_timeout),
]


def main(vm):
    for name, fn in CHECKS:
        try:
            value = fn(vm)
        except BaseException:   # noqa: BLE001 - a broken check is reported, others go on
            value = {"error": traceback.format_exc()}
        report(name, value)
    print("ALL CHECKS RAN", flush=True)
