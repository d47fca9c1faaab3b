"""One big numpy array from one task to another (benchmarks/bigsend.py).

    clustervm run -n 3 benchmarks/apps/bigsend_app.py [GIB] [--no-replay]

Task "a" on node 1 fills an array of GIB GiB (default 2.1: above MPI's 32-bit
count), task "b" on node 2 says it is ready; "a" notes the time and sends the
array; "b" notes the time it has it all, checks it, and answers. The sender is
spawned with the replay log on (the default: ``ctx.send`` keeps a copy for
failover), or off with ``--no-replay``. Then the same bytes go once more with
raw mpi4py (``Send``/``Recv`` of 64 MiB pieces on COMM_WORLD, into a fresh
buffer as clustervm's receiver gets), for reference. (Pieces of 1 GiB would
hold Open MPI's progress lock for seconds in the task's thread and starve the
node's own loop: it would stop hearing the coordinator.)
Prints ``result bytes=<n> seconds=<s> gbps=<GB/s> ok=<bool> chunk=<max chunk>
raw_seconds=<s> raw_gbps=<GB/s>``.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from clustervm import current

READY, DATA, DONE, PEER, RAW_DONE = 1, 2, 3, 4, 5
RAW_TAG = 77                     # raw mpi4py on COMM_WORLD: not a tag of clustervm's
PIECE = 64 << 20


def rank() -> int:
    return current._tls.site.rank


def sender(ctx, nbytes: int) -> dict:
    peer = ctx.recv(tag=PEER).data
    arr = np.arange(nbytes // 8, dtype=np.float64)
    ctx.recv(peer, READY)
    t0 = time.perf_counter()          # CLOCK_MONOTONIC: one clock for the whole host
    ctx.send(peer, DATA, arr)
    t1, ok, peer_rank = ctx.recv(peer, DONE).data
    from mpi4py import MPI
    raw = memoryview(arr).cast("B")
    t2 = time.perf_counter()
    for off in range(0, raw.nbytes, PIECE):
        MPI.COMM_WORLD.Send([raw[off:off + PIECE], MPI.BYTE], peer_rank, RAW_TAG)
    t3 = ctx.recv(peer, RAW_DONE).data
    return {"seconds": t1 - t0, "ok": ok, "bytes": int(arr.nbytes),
            "chunk": current._tls.site.transport.max_chunk, "raw_seconds": t3 - t2}


def receiver(ctx) -> None:
    peer = ctx.recv(tag=PEER).data
    ctx.send(peer, READY, None)
    arr = ctx.recv(peer, DATA).data
    t1 = time.perf_counter()
    n = arr.size
    ok = bool(arr.dtype == np.float64 and arr[0] == 0 and arr[-1] == n - 1
              and arr[n // 2] == n // 2 and float(arr[::4096].sum()) == float(
                  np.arange(0, n, 4096, dtype=np.float64).sum()))
    nbytes = arr.nbytes
    del arr
    ctx.send(peer, DONE, (t1, ok, rank()))
    from mpi4py import MPI
    buf = np.empty(nbytes, dtype=np.uint8)
    sender_rank = ctx.recv(tag=PEER + 100).data
    for off in range(0, nbytes, PIECE):
        MPI.COMM_WORLD.Recv([buf[off:off + PIECE], MPI.BYTE], sender_rank, RAW_TAG)
    ctx.send(peer, RAW_DONE, time.perf_counter())


def main(vm) -> None:
    args = [a for a in vm.argv[1:] if not a.startswith("--")]
    gib = float(args[0]) if args else 2.1
    replay = "--no-replay" not in vm.argv[1:]
    nbytes = int(gib * (1 << 30)) // 8 * 8
    [a] = vm.spawn(sender, nbytes, where=1, replay=replay)   # world rank 1: see RAW_TAG
    [b] = vm.spawn(receiver, where=2)
    vm.send(a, PEER, b)
    vm.send(b, PEER, a)
    vm.send(b, PEER + 100, 1)       # the sender's world rank, for the raw reference
    r = vm.join(a, timeout=600)
    vm.join(b, timeout=60)
    print(f"result bytes={r['bytes']} seconds={r['seconds']:.3f} "
          f"gbps={r['bytes'] / r['seconds'] / 1e9:.3f} ok={r['ok']} chunk={r['chunk']} "
          f"raw_seconds={r['raw_seconds']:.3f} raw_gbps={r['bytes'] / r['raw_seconds'] / 1e9:.3f} "
          f"replay={replay}",
          flush=True)
    if not r["ok"]:
        sys.exit("the array arrived changed")
