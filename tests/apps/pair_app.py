"""Two spawned tasks exchange a value every round and checkpoint every few rounds;
task "a" lingers after its last round (tests/test_failover.py kills its node then,
once "b" has ended).

    clustervm run -n 3 tests/apps/pair_app.py --rounds 50 --every 20 --markers DIR

Prints ``pair: a=<int> b=<int>``, which depends only on --rounds.
"""
import argparse
import os
import time

PEER, DATA = 1, 2


def worker(ctx, role: str, rounds: int, every: int, markers: str) -> int:
    st = ctx.restore()
    if st is None:
        st = {"i": 0, "acc": 1 if role == "a" else 2, "peer": ctx.recv(tag=PEER).data}
    while st["i"] < rounds:
        ctx.send(st["peer"], DATA, st["acc"] + st["i"])
        got = ctx.recv(st["peer"], DATA).data
        st["acc"] = (st["acc"] * 31 + got) % 1000003
        st["i"] += 1
        if st["i"] % every == 0:
            ctx.checkpoint(st)
    if role == "a" and markers:
        with open(os.path.join(markers, f"linger-{os.getpid()}"), "w"):
            pass
        time.sleep(1.5)
    return st["acc"]


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--markers", default="")
    a = p.parse_args(vm.argv[1:])
    ta = vm.spawn(worker, "a", a.rounds, a.every, a.markers, where=1)[0]
    tb = vm.spawn(worker, "b", a.rounds, a.every, a.markers, where=2)[0]
    vm.send(ta, PEER, tb)
    vm.send(tb, PEER, ta)
    print(f"pair: a={vm.join(ta)} b={vm.join(tb)}", flush=True)
