"""A producer that answers a slow consumer's requests and ends first: on --resume the
consumer, restored from its last checkpoint, needs what the (finished, journaled)
producer sent after it (tests/test_buddy.py).

    clustervm run -n 3 tests/apps/producer_app.py --items 58 --every 5 --item-ms 10 --markers DIR

The consumer asks for each item (REQ) and the producer sends it (DATA); the consumer
checkpoints every ``--every`` items; once it has them all it creates the marker
``received-all`` and waits ``--linger`` seconds before it ends, while the producer has
already ended. Prints ``producer: items=N sum=S``.
"""
import argparse
import os
import time

REQ, DATA = 1, 2


def member(ctx, items: int, every: int, item_ms: float, linger: float, markers: str) -> int:
    producer_tid, consumer_tid = ctx.siblings
    if ctx.rank == 0:                    # the producer
        for i in range(items):
            ctx.recv(consumer_tid, REQ)
            ctx.send(consumer_tid, DATA, i * i)
        return items
    st = ctx.restore() or {"i": 0, "sum": 0}
    while st["i"] < items:
        ctx.send(producer_tid, REQ, st["i"])
        st["sum"] += ctx.recv(producer_tid, DATA).data
        st["i"] += 1
        time.sleep(item_ms / 1000)
        if st["i"] % every == 0:
            ctx.checkpoint(st)
    if markers:
        open(os.path.join(markers, "received-all"), "w").close()
    time.sleep(linger)
    return st["sum"]


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=58)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--item-ms", type=float, default=10.0)
    p.add_argument("--linger", type=float, default=3.0)
    p.add_argument("--markers", default="")
    a = p.parse_args(vm.argv[1:])
    tids = vm.spawn(member, a.items, a.every, a.item_ms, a.linger, a.markers, count=2)
    n, total = (vm.join(t) for t in tids)
    print(f"producer: items={n} sum={total}", flush=True)
