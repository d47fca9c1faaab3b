"""Big arrays and bytes through every path, and result paths in errors (issue 11).

    CLUSTERVM_MAX_CHUNK_BYTES=1048576 clustervm run -n 3 tests/apps/bigdata_app.py [--add-node]

With 1 MiB chunks, 5 MiB numpy arrays and bytes go through the chunked path:
a task's argument, a short task's result, a spawned task's messages (task to
task, task to main) and return value; with ``--add-node`` also to and from a
node started with MPI_Comm_spawn (routed frames through rank 0). Prints
``CHECK <name> <json>`` per part (tests/test_bigdata.py), then ``ALL CHECKS RAN``.
"""
from __future__ import annotations

import hashlib
import json
import threading
import traceback

import numpy as np

import clustervm
from clustervm import current

SIZE = 5 << 20          # 5 MiB: five chunks of 1 MiB
BIG, BACK, PEER = 1, 2, 3


def check(name: str, fn, *args) -> None:
    try:
        value = fn(*args)
    except Exception:   # noqa: BLE001 - reported as the check's value
        value = {"error": traceback.format_exc()}
    print("CHECK", name, json.dumps(value), flush=True)


def payload(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"arr": rng.integers(0, 2**31, SIZE // 8, dtype=np.int64),
            "bytes": rng.bytes(SIZE + 3),
            "f": np.asfortranarray(rng.random((512, 640 + seed % 3)))}


def digest(d: dict) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(d["arr"]).tobytes())
    h.update(d["bytes"])
    h.update(np.ascontiguousarray(d["f"]).tobytes())
    h.update(str(d["f"].flags.f_contiguous).encode())
    return h.hexdigest()


def counters() -> dict:
    site = current._tls.site
    c = site.transport.counters
    return {"rank": site.rank, "chunked_in": c.chunked_in, "chunked_out": c.chunked_out,
            "max_chunk": site.transport.max_chunk}


# -- tasks -------------------------------------------------------------------

def digest_of(d: dict) -> list:
    """A short task: gets a big argument, returns its digest and a big result."""
    return [digest(d), payload(7), counters()]


def returns_lock() -> dict:
    return {"ok": 1, "lock": threading.Lock()}


def spawned_returns_lock(ctx) -> dict:
    return {"nested": [1, {"lock": threading.Lock()}]}


def relay(ctx, seed: int) -> dict:
    """A spawned task: receives its peer, sends it a big message, receives one back,
    sends main the digest of what it got, and returns a big value."""
    peer = ctx.recv(tag=PEER).data
    ctx.send(peer, BIG, payload(seed))
    got = ctx.recv(peer, BIG).data
    ctx.send(ctx.parent, BACK, got)                # a big message to main
    return {"got": digest(got), "value": payload(seed + 100), "counters": counters()}


def send_garbage() -> int:
    """A short task on a node: sends rank 0 malformed frames with raw MPI, on the
    transport's own communicator and tag, as a broken or hostile node could."""
    import struct

    from mpi4py import MPI

    from clustervm import frames as F
    from clustervm import protocol as P
    from clustervm import transport as T
    from clustervm import wire

    comm = current._tls.site.transport.comm
    tag = F.TAG_BUF0 + 12345
    frames = [
        b"",                                                            # empty
        b"\x07junk",                                                    # unknown kind
        F.PREFIX.pack(F.KIND_BUFFERS, 1, tag) + struct.pack("<BQ", 0, 10**15),
        F.LONG.pack(F.KIND_LONG, 10**15, tag),
        F.ROUTE.pack(F.KIND_ROUTED, 1, 0, 2) + struct.pack("<3Q", 5, 10**9, 1) + b"abc",
        b"\x00\xc1\xc1",                                                  # not msgpack
        b"\x00" + wire.dumps((P.DONE, 5))[0],                            # wrong-typed fields
        b"\x00" + wire.dumps((P.EXITED, "x"))[0],
        b"\x00" + wire.dumps((P.REQ, [1], {"a": 1}, 5))[0],
        b"\x00" + wire.dumps((P.HELLO,))[0],
        b"\x00" + wire.dumps("no tuple")[0],
    ]
    for frame in frames:
        comm.Send([frame, MPI.BYTE], 0, T.TAG_MSG)
    return len(frames)


# -- checks ------------------------------------------------------------------

def check_short_task(vm) -> dict:
    d = payload(1)
    got, big, c = vm.submit(digest_of, d, where=1).result(120)
    return {"arg": got == digest(d), "result": digest(big) == digest(payload(7)),
            "node": c}


def pair_on(vm, ranks: list[int]) -> dict:
    a = vm.spawn(relay, 11, where=ranks[0])[0]
    b = vm.spawn(relay, 12, where=ranks[1])[0]
    vm.send(a, PEER, b)
    vm.send(b, PEER, a)
    to_main = {}
    for _ in range(2):
        m = vm.recv(tag=BACK, timeout=120)
        to_main[m.source] = digest(m.data)
    ra, rb = vm.join(a, timeout=120), vm.join(b, timeout=120)
    return {
        "task to task": [ra["got"] == digest(payload(12)), rb["got"] == digest(payload(11))],
        "to main": [to_main.get(a) == digest(payload(12)), to_main.get(b) == digest(payload(11))],
        "returned": [digest(ra["value"]) == digest(payload(111)),
                     digest(rb["value"]) == digest(payload(112))],
        "counters": [ra["counters"], rb["counters"]],
    }


def check_spawned(vm) -> dict:
    return pair_on(vm, [1, 2])


def check_routed(vm) -> dict:
    added = vm.add_nodes(1)
    ranks = sorted(n.rank for n in vm.nodes if n.rank > 0 and n.state == "alive")
    new = max(ranks)
    out = pair_on(vm, [1, new])                    # a world node and a spawned node
    out["added"] = added
    out["new_rank"] = new
    return out


def check_result_paths(vm) -> dict:
    exc = vm.submit(returns_lock, where=2).exception(60)
    out = {"short": [type(exc).__name__, str(exc)]}
    [t] = vm.spawn(spawned_returns_lock, where=1)
    try:
        vm.join(t, timeout=60)
        out["spawned"] = [None, ""]
    except Exception as exc:   # noqa: BLE001
        out["spawned"] = [type(exc).__name__, str(exc)]
    out["after"] = vm.submit(len, "four").result(60)
    return out


def check_garbage(vm) -> dict:
    sent = vm.submit(send_garbage, where=1).result(60)
    # rank 0 logged each and went on: tasks, messages and big data still work
    later = [f.result(60) for f in [vm.submit(len, "x" * i, where=1 + i % 2) for i in range(6)]]
    d = payload(3)
    got, _, _ = vm.submit(digest_of, d, where=1).result(120)
    return {"sent": sent, "later": later, "big after": got == digest(d)}


def main(vm) -> None:
    check("short_task", check_short_task, vm)
    check("spawned", check_spawned, vm)
    check("result_paths", check_result_paths, vm)
    check("garbage", check_garbage, vm)
    if "--add-node" in vm.argv[1:]:
        check("routed", check_routed, vm)
    print("ALL CHECKS RAN", flush=True)


if __name__ == "__main__":
    clustervm.run(main)
