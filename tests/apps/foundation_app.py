"""Test app for issue 2: PVM-style tasks and messages, wire payloads, errors, nodes.

    clustervm run -n 4 tests/apps/foundation_app.py

Written as a user would write one. Each check prints one line
``CHECK <name> <json>`` (or ``CHECK <name> {"error": <traceback>}`` if the
check itself blew up); tests/test_foundation.py asserts on those lines.
"""
import json
import os
import socket
import threading
import time
import traceback

import numpy as np

import clustervm
from clustervm import ANY

A, B = 1, 2                    # two tags on one pair
SETUP, MC, MC2, STOP, ECHO, PING, READY = 10, 11, 12, 13, 14, 15, 16
WAIT_S = 60.0                  # longest wait for a message that must come (a lost one: an error)
N_MSGS = 120


def report(name, value):
    print("CHECK", name, json.dumps(value), flush=True)


def run_check(name, fn, vm):
    try:
        value = fn(vm)
    except BaseException:       # noqa: BLE001 - a broken check is reported, others go on
        value = {"error": traceback.format_exc()}
    report(name, value)


class AppError(Exception):
    """An exception class of the application: it must come back as itself."""


# -- functions run on the nodes --------------------------------------------

def whoami():
    ctx = clustervm.context()
    return [ctx.node, ctx.host, os.getpid(), ctx.tid]


def echo(x):
    return x


def sender(ctx, dst, n):
    for i in range(n):
        ctx.send(dst, A if i % 2 == 0 else B, [ctx.tid, i])
    return n


def collector(ctx, n):
    senders = ctx.recv(ctx.parent, SETUP).data
    # only tag B of the first sender, although tag A messages arrive in between
    first_b = [ctx.recv(senders[0], B).data[1] for _ in range(n // 2)]
    rest = [ctx.recv(ANY, ANY) for _ in range(len(senders) * n - n // 2)]
    streams = {}
    for m in rest:
        streams.setdefault(f"{m.source}/{m.tag}", []).append(m.data[1])
    return {"first_b": first_b, "streams": streams,
            "sources_match": all(m.source == m.data[0] for m in rest),
            "left": ctx.nrecv() is not None}


def wildcard_target(ctx, pokers):
    # Only main's three messages can be here: main spawns the pokers once told READY.
    # Messages of two senders have no order between them, so a poke sent after main's
    # messages may still come first, and recv(-1, -1) would take it (then this task
    # waited for ever for the poke it took).
    m1 = ctx.recv(ANY, 7, timeout=WAIT_S)    # skips the tag-5 message that came first
    m2 = ctx.recv(ctx.parent, ANY, timeout=WAIT_S)
    m3 = ctx.recv(-1, -1, timeout=WAIT_S)
    ctx.send(ctx.parent, READY, None)
    from_pokers = sorted(ctx.recv(-1, PING, timeout=WAIT_S).source for _ in range(pokers))
    return [[m.source, m.tag, m.data] for m in (m1, m2, m3)] + [from_pokers]


def poke(ctx, dst):
    ctx.send(dst, PING, "poke")


def waits_in_vain(ctx):
    t0 = time.monotonic()
    try:
        ctx.recv(tag=4242, timeout=0.3)
    except TimeoutError as exc:
        return {"type": "TimeoutError", "waited": time.monotonic() - t0, "text": str(exc)}
    return {"type": None}


def tell_parent(ctx, data, tag):
    ctx.send(ctx.parent, tag, data)


def mc_member(ctx):
    m = ctx.recv(tag=MC)
    tids = m.data["tids"]
    if ctx.tid == tids[0]:
        ctx.mcast(tids, MC2, "relayed")       # not to itself (pvm_mcast)
        return [m.source, m.data["x"], None, ctx.probe(tag=MC2)]
    r = ctx.recv(tids[0], MC2)
    return [m.source, m.data["x"], r.data, False]


def np_echo(ctx):
    while True:
        m = ctx.recv(ctx.parent)
        if m.tag == STOP:
            return None
        ctx.send(m.source, m.tag, m.data)


def deep_fail(x):
    return _inner_fail(x)


def _inner_fail(x):
    raise ValueError(f"bad value {x}")


def fail_app_error(ctx, x):
    raise AppError("custom", x)


def failing_child(ctx, key):
    {}[key]


def parent_of_failing(ctx, where):
    [child] = ctx.spawn(failing_child, "missing-key", where=where)
    try:
        ctx.join(child)
    except KeyError as exc:
        return {"type": type(exc).__name__, "text": str(exc), "child": child,
                "cause_type": type(exc.__cause__).__name__, "tb": str(exc.__cause__)}
    return {"type": None}


def returns_lock():
    return {"lock": threading.Lock()}


def quick(ctx):
    return "done"


def send_to(ctx, dead, unknown):
    out = {}
    for name, tid in (("dead", dead), ("unknown", unknown)):
        try:
            ctx.send(tid, 1, "x")
            out[name] = None
        except Exception as exc:   # noqa: BLE001
            out[name] = type(exc).__name__
    return out


def sleeper(ctx):
    n = 0
    while True:
        n += 1
        ctx.put_info(f"sleeper/{ctx.tid}", n)
        try:
            ctx.recv(tag=STOP, timeout=0.05)
            return n
        except TimeoutError:
            pass


def receive_one(ctx):
    return ctx.recv(ctx.parent, 1, timeout=10).data


# -- checks, run by main ------------------------------------------------------

def check_nodes(vm):
    rows = [[n.rank, n.host, n.pid, n.state] for n in vm.nodes]
    ranks = [n.rank for n in vm.nodes if n.rank > 0]
    seen = {r: vm.submit(whoami, where=r).result(60) for r in ranks}
    return {"rows": rows, "main_pid": os.getpid(), "host": socket.gethostname(),
            "seen": {str(r): v for r, v in seen.items()}, "main_tid": vm.tid,
            "workers": vm.workers}


def check_nrecv_probe(vm):
    out = {"empty": [vm.nrecv() is None, vm.probe(), vm.probe(tag=21)]}
    [t] = vm.spawn(tell_parent, {"k": [1, 2]}, 21, where=1)
    deadline = time.monotonic() + 60
    while not vm.probe(tag=21) and time.monotonic() < deadline:
        time.sleep(0.01)
    out["probed"] = vm.probe(tag=21)
    out["still"] = vm.probe(tag=21)          # probing does not take the message
    out["wrong_tag"] = vm.probe(tag=22)
    out["wrong_source"] = vm.probe(source=t + 1000)
    out["source_probe"] = vm.probe(source=t)
    m = vm.nrecv(source=t, tag=21)
    out["msg"] = None if m is None else [m.source, m.tag, m.data]
    out["after"] = [vm.nrecv(tag=21) is None, vm.probe(tag=21)]
    out["tid"] = t
    vm.join(t)
    return out


def check_ordering(vm):
    [col] = vm.spawn(collector, N_MSGS, where=1)
    remote = vm.spawn(sender, col, N_MSGS, where=2)          # another node
    local = vm.spawn(sender, col, N_MSGS, where=1)           # the collector's node
    senders = remote + local + [vm.tid]
    vm.send(col, SETUP, senders)
    for i in range(N_MSGS):
        vm.send(col, A if i % 2 == 0 else B, [vm.tid, i])
    for t in remote + local:
        vm.join(t)
    return {"result": vm.join(col), "senders": senders}


def check_wildcards(vm):
    [t] = vm.spawn(wildcard_target, 2, where=3)
    vm.send(t, 5, "first")
    vm.send(t, 7, "second")
    vm.send(t, 9, "third")
    vm.recv(t, READY, timeout=WAIT_S)      # t took all three: the pokes cannot race them
    pokers = vm.spawn(poke, t, count=2)
    got = vm.join(t)
    for p in pokers:
        vm.join(p)
    return {"got": got, "main": vm.tid, "pokers": sorted(pokers), "any": clustervm.ANY}


def check_timeouts(vm):
    t0 = time.monotonic()
    try:
        vm.recv(tag=4243, timeout=0.3)
        main = {"type": None}
    except TimeoutError as exc:
        main = {"type": type(exc).__name__, "waited": time.monotonic() - t0}
    [t] = vm.spawn(waits_in_vain, where=2)
    return {"main": main, "task": vm.join(t)}


def check_mcast(vm):
    tids = vm.spawn(mc_member, count=3)
    vm.mcast(tids + [vm.tid], MC, {"tids": tids, "x": [1, 2.5, "z"]})
    got = [vm.join(t) for t in tids]
    return {"got": got, "main": vm.tid, "tids": tids, "main_got_own": vm.probe(tag=MC)}


def np_cases():
    rng = np.random.default_rng(0)
    return {
        "int8": np.arange(-5, 5, dtype=np.int8),
        "uint16": np.arange(10, dtype=np.uint16) * 6000,
        "int32-3d": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        "int64": np.array([-(2 ** 62), 0, 2 ** 62], dtype=np.int64),
        "float16": np.linspace(-1, 1, 7, dtype=np.float16),
        "float32": rng.random(33, dtype=np.float32),
        "float64-F": np.asfortranarray(rng.random((5, 7))),
        "int-F-3d": np.asfortranarray(np.arange(60, dtype=np.int16).reshape(3, 4, 5)),
        "complex64": (np.arange(4) + 1j * np.arange(4)).astype(np.complex64),
        "complex128-F": np.asfortranarray((rng.random((3, 2)) + 1j).astype(np.complex128)),
        "bool": np.array([True, False, True]),
        "big-endian": np.arange(6, dtype=">i4"),
        "unicode": np.array(["a", "bcd", "\u00e9\u00fc\u4e2d"]),
        "bytes": np.array([b"ab", b"c", b""]),
        "datetime64": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        "structured": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "0-d float": np.array(3.25),
        "0-d int16": np.array(7, dtype=np.int16),
        "empty": np.zeros((0, 3)),
        "strided": np.arange(30.0)[::3],
        "transposed": np.arange(12).reshape(3, 4).T,
        "8MiB": rng.random(1 << 20),
    }


def describe(a, b):
    """How far ``b`` (what came back) matches ``a`` (what was sent)."""
    if not isinstance(b, np.ndarray):
        return {"type": type(b).__name__}
    return {"type": "ndarray", "dtype": [a.dtype.str, b.dtype.str], "dtype_eq": a.dtype == b.dtype,
            "shape": [list(a.shape), list(b.shape)], "ndim": b.ndim,
            "equal": a.tobytes(order="C") == b.tobytes(order="C"),
            "fortran": [bool(a.flags.f_contiguous and not a.flags.c_contiguous),
                        bool(b.flags.f_contiguous and not b.flags.c_contiguous)]}


def check_numpy(vm):
    cases = np_cases()
    out = {}
    futs = {name: vm.submit(echo, arr, where=2) for name, arr in cases.items()}
    for name, f in futs.items():
        out[f"submit {name}"] = describe(cases[name], f.result(60))
    [t] = vm.spawn(np_echo, where=3)
    for name, arr in cases.items():
        vm.send(t, ECHO, arr)
        out[f"message {name}"] = describe(arr, vm.recv(t, ECHO, timeout=60).data)
    nested = {"a": [cases["float64-F"], (cases["0-d int16"], cases["unicode"])], "n": 1}
    vm.send(t, ECHO, nested)
    back = vm.recv(t, ECHO, timeout=60).data
    out["message nested"] = {
        "outer": [type(back).__name__, type(back["a"]).__name__, type(back["a"][1]).__name__],
        "parts": [describe(nested["a"][0], back["a"][0]),
                  describe(nested["a"][1][0], back["a"][1][0]),
                  describe(nested["a"][1][1], back["a"][1][1])]}
    scalar = vm.submit(echo, np.float32(1.5), where=1).result(60)
    out["scalar"] = [type(scalar).__name__, float(scalar)]
    vm.send(t, STOP, None)
    vm.join(t)
    return out


def check_task_errors(vm):
    out = {}
    pid2 = next(n.pid for n in vm.nodes if n.rank == 2)
    exc = vm.submit(deep_fail, 42, where=2).exception(60)
    out["submit"] = {"type": type(exc).__name__, "text": str(exc),
                     "cause_type": type(exc.__cause__).__name__, "tb": str(exc.__cause__),
                     "pid": pid2}
    [t] = vm.spawn(fail_app_error, 7, where=1)
    try:
        vm.join(t)
        out["spawn"] = {"type": None}
    except AppError as exc:
        out["spawn"] = {"type": type(exc).__name__, "args": list(exc.args),
                        "tb": str(exc.__cause__)}
    [p] = vm.spawn(parent_of_failing, 3, where=1)
    out["task parent"] = vm.join(p)
    return out


def check_wire_errors(vm):
    out = {}
    try:
        exc = vm.submit(echo, {"model": threading.Lock()}).exception(60)
    except Exception as e:   # noqa: BLE001 - raising at submit is fine too
        exc = e
    out["submit"] = [type(exc).__name__, str(exc)]
    try:
        exc = vm.submit(echo, x={"model": threading.Lock()}).exception(60)
    except Exception as e:   # noqa: BLE001
        exc = e
    out["submit kw"] = [type(exc).__name__, str(exc)]
    exc = vm.submit(returns_lock).exception(60)
    out["result"] = [type(exc).__name__, str(exc)]
    [t] = vm.spawn(receive_one, where=2)
    try:
        vm.send(t, 1, [1, {"model": threading.Lock()}])
        out["send"] = [None, ""]
    except Exception as exc:   # noqa: BLE001
        out["send"] = [type(exc).__name__, str(exc)]
    vm.send(t, 1, "after the bad one")
    try:
        out["next message"] = vm.join(t, timeout=60)
    except Exception as exc:   # noqa: BLE001
        out["next message"] = f"{type(exc).__name__}: {exc}"
    n_tasks = len(vm.tasks())
    try:
        vm.spawn(receive_one, {"model": threading.Lock()}, count=2)
        out["spawn"] = [None, ""]
    except Exception as exc:   # noqa: BLE001
        out["spawn"] = [type(exc).__name__, str(exc)]
    out["tasks after bad spawn"] = len(vm.tasks()) - n_tasks
    # the VM still works after unsendable submissions (more than all the slots of all nodes)
    bad = []
    for _ in range(12):
        try:
            bad.append(type(vm.submit(echo, [threading.Lock()]).exception(30)).__name__)
        except Exception as exc:   # noqa: BLE001
            bad.append(type(exc).__name__)
    out["bad submits"] = bad
    futs = [vm.submit(echo, i) for i in range(8)]
    try:
        out["later tasks"] = [f.result(15) for f in futs]
    except Exception as exc:   # noqa: BLE001
        out["later tasks"] = f"{type(exc).__name__}: {exc}"
    return out


def check_dead_unknown(vm):
    [t] = vm.spawn(quick)
    out = {"join": vm.join(t)}
    for name, tid in (("dead", t), ("unknown", 987654)):
        try:
            vm.send(tid, 1, "x")
            out[name] = [None, ""]
        except Exception as exc:   # noqa: BLE001
            out[name] = [type(exc).__name__, str(exc)]
    [t2] = vm.spawn(quick, where=2)
    vm.join(t2)
    [s] = vm.spawn(send_to, t2, 987655, where=3)
    out["from task"] = vm.join(s)
    return out


def check_tasks_kill(vm):
    [t] = vm.spawn(sleeper, where=3)
    key = f"sleeper/{t}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            vm.get_info(key)
            break
        except KeyError:
            time.sleep(0.01)
    before = vm.tasks()
    vm.kill(t)
    try:
        vm.join(t, timeout=60)
        joined = None
    except Exception as exc:   # noqa: BLE001
        joined = type(exc).__name__
    after = vm.tasks()
    # a live sleeper bumps its counter every ~50 ms: stopped = unchanged for a whole second
    last, since, stopped = vm.get_info(key), time.monotonic(), False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now, cur = time.monotonic(), vm.get_info(key)
        if cur != last:
            last, since = cur, now
        elif now - since >= 1.0:
            stopped = True
            break
    try:
        vm.kill(987656)
        unknown = None
    except Exception as exc:   # noqa: BLE001
        unknown = type(exc).__name__
    return {"tid": t, "before": before, "after": after, "joined": joined,
            "stopped": stopped, "kill_unknown": unknown}


CHECKS = [
    ("nrecv_probe", check_nrecv_probe),     # first: main's mailbox is still empty
    ("nodes", check_nodes),
    ("ordering", check_ordering),
    ("wildcards", check_wildcards),
    ("timeouts", check_timeouts),
    ("mcast", check_mcast),
    ("numpy", check_numpy),
    ("task_errors", check_task_errors),
    ("wire_errors", check_wire_errors),
    ("dead_unknown", check_dead_unknown),
    ("tasks_kill", check_tasks_kill),
]


def main(vm):
    for name, fn in CHECKS:
        run_check(name, fn, vm)
    print("ALL CHECKS RAN", flush=True)
