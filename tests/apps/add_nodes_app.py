"""vm.add_nodes on a running job (tests/test_replacement.py).

    clustervm run -n 2 tests/apps/add_nodes_app.py

Adds two nodes (started with MPI_Comm_spawn), then runs short tasks on every
worker and a ring of spawned tasks placed on world and spawned nodes alike,
each passing a token with a numpy array on to the next. Prints::

    added: <k> nodes=<workers + 1>
    ring: 0 1 2 3 4 5        (the token's path, in ring order)
    pids: <worker processes that ran short tasks>
"""
import os
import time

import numpy as np

RING, TOKEN = 1, 2


def pid_of(i: int) -> int:
    time.sleep(0.02)
    return os.getpid()


def member(ctx) -> list | None:
    ring = ctx.recv(tag=RING).data
    me = ring.index(ctx.tid)
    nxt = ring[(me + 1) % len(ring)]
    if me == 0:
        ctx.send(nxt, TOKEN, ([0], np.arange(1000)))
        path, arr = ctx.recv(tag=TOKEN).data
        assert int(arr.sum()) == 499500 * len(ring)
        return path
    path, arr = ctx.recv(tag=TOKEN).data
    ctx.send(nxt, TOKEN, (path + [me], arr + np.arange(1000)))
    return None


def main(vm) -> None:
    added = vm.add_nodes(2)
    print(f"added: {added} nodes={len(vm.nodes)}", flush=True)
    workers = [n.rank for n in vm.nodes if n.state == "alive"]
    tids = []
    for i in range(6):
        tids += vm.spawn(member, where=workers[i % len(workers)])
    vm.mcast(tids, RING, tids)
    path = vm.join(tids[0])
    for t in tids[1:]:
        vm.join(t)
    print("ring: " + " ".join(map(str, path)), flush=True)
    pids = set(vm.map(pid_of, range(60)))
    print(f"pids: {len(pids)}", flush=True)
