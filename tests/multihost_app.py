"""Test app for tests/test_multihost.py: where the nodes are, where=host, traffic between hosts.

Prints one line ``multihost=<json>`` with:

* ``nodes``: [rank, host] of every rank (vm.nodes), the coordinator included;
* ``placed``: {host: [host each task placed with where=host ran on, ...]};
* ``moved``: bytes of the arrays sent between tasks on two different hosts, and the
  hosts of the sender and receiver (long-lived tasks talking with send/recv);
* ``sum``: a checksum of the array as the receiver got it.
"""
import json
import sys

import numpy as np

import clustervm

MB = 1 << 20
TAG = 7


def where_am_i(i: int) -> tuple:
    ctx = clustervm.context()
    return (i, ctx.node, ctx.host)


def sender(ctx, peer_host: str, nbytes: int, rounds: int) -> dict:
    peer = ctx.recv(tag=TAG).data          # the receiver's tid, from main
    data = np.arange(nbytes // 8, dtype=np.int64)
    for r in range(rounds):
        ctx.send(peer, TAG, data + r)
    return {"host": ctx.host}


def receiver(ctx, rounds: int) -> dict:
    total = 0
    for _ in range(rounds):
        arr = ctx.recv(tag=TAG).data
        total += int(arr.sum() % 1_000_003)
    return {"host": ctx.host, "sum": total}


def main(vm) -> None:
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rounds = 4
    nodes = [[n.rank, n.host] for n in vm.nodes]
    hosts = sorted({h for r, h in nodes if r > 0})
    placed = {}
    for h in hosts:
        futs = [vm.submit(where_am_i, i, where=h) for i in range(4)]
        placed[h] = [f.result()[2] for f in futs]
    # a sender on the second host, a receiver on the last one
    src_host, dst_host = hosts[1], hosts[-1]
    [rx] = vm.spawn(receiver, rounds, where=dst_host)
    [tx] = vm.spawn(sender, dst_host, mb * MB, rounds, where=src_host)
    vm.send(tx, TAG, rx)
    got_tx, got_rx = vm.join(tx), vm.join(rx)
    expect = sum(int((np.arange(mb * MB // 8, dtype=np.int64) + r).sum() % 1_000_003)
                 for r in range(rounds))
    print("multihost=" + json.dumps({
        "nodes": nodes, "placed": placed,
        "moved": {"bytes": rounds * mb * MB, "from": got_tx["host"], "to": got_rx["host"]},
        "sum": got_rx["sum"], "expect": expect}), flush=True)
