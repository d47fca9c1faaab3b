"""Replay of big messages whose arrays the sender changes right after ``send``.

    clustervm run -n 4 tests/apps/replay_mutate_app.py MARKER_DIR

The sender (node 1) sends K arrays of 8 MiB to the receiver (node 2, replay on),
overwriting its array with -1 as soon as each ``send`` returns. The receiver's
first incarnation takes them all, writes ``MARKER_DIR/got-<rank>-<pid>`` and waits
to be killed; its restart (no checkpoint) gets every message again from the
sender's replay log and must see the values sent, never the -1 written after.
Prints ``replay-mutate: <(min, max) of each message> inc=<incarnation>``.
"""
import os
import time
from pathlib import Path

import numpy as np

K = 4
N = 1 << 20     # float64: 8 MiB, out of band


def sender(ctx, dst: int) -> None:
    arr = np.zeros(N)
    for i in range(K):
        arr[:] = i
        ctx.send(dst, 1, arr)
        arr[:] = -1          # the replay log must not see this
    ctx.recv(dst, 9)        # stay until the receiver is done (the log lives on anyway)


def receiver(ctx, markers: str) -> tuple:
    got = []
    src = -1
    for _ in range(K):
        m = ctx.recv(tag=1)
        src = m.source
        got.append((float(m.data.min()), float(m.data.max())))
    if ctx.inc == 0:
        from mpi4py import MPI
        Path(markers, f"got-{MPI.COMM_WORLD.Get_rank()}-{os.getpid()}").touch()
        while True:          # killed here with its node
            time.sleep(0.1)
    ctx.send(src, 9, None)
    return got, ctx.inc


def main(vm) -> None:
    a, b = [n.rank for n in vm.nodes if n.rank > 0][:2]
    [rtid] = vm.spawn(receiver, vm.argv[1], where=b, replay=True)
    [stid] = vm.spawn(sender, rtid, where=a, replay=True)
    got, inc = vm.join(rtid)
    vm.join(stid)
    print(f"replay-mutate: {got} inc={inc}")
