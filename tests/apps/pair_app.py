"""Two spawned tasks exchange a value every round and checkpoint every few rounds;
task "a" lingers after its last round (tests/test_inprocess.py kills its node then,
once "b" has ended).

    clustervm run -n 3 tests/apps/pair_app.py --rounds 50 --every 20 --markers DIR
        [--group [--final]]

``--group``: one spawn of both, ``checkpoint="group"`` (coordinated checkpoints, no
message logged); ``--final``: each also checkpoints after its last round, before it
returns. Prints ``pair: a=<int> b=<int>``, which depends only on --rounds.
"""
import argparse
import os
import time

import clustervm

PEER, DATA = 1, 2


def worker(ctx, role: str, rounds: int, every: int, markers: str, final: bool = False) -> int:
    st = ctx.restore()
    if st is None:
        got = ctx.recv(tag=PEER).data       # the peer's tid, or [tid, role] (--group)
        peer, role = got if isinstance(got, list) else (got, role)
        st = {"i": 0, "acc": 1 if role == "a" else 2, "peer": peer, "role": role}
    role = st.get("role", role)
    while st["i"] < rounds:
        ctx.send(st["peer"], DATA, st["acc"] + st["i"])
        got = ctx.recv(st["peer"], DATA).data
        st["acc"] = (st["acc"] * 31 + got) % 1000003
        st["i"] += 1
        if st["i"] % every == 0 or final and st["i"] == rounds:
            ctx.checkpoint(st)
    if role == "a" and markers:
        with open(os.path.join(markers, f"linger-{os.getpid()}-{ctx.tid}"), "w"):
            pass
        time.sleep(1.5)
    return st["acc"]


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--markers", default="")
    p.add_argument("--group", action="store_true")
    p.add_argument("--final", action="store_true")
    a = p.parse_args(vm.argv[1:])
    if a.group:
        ta, tb = vm.spawn(worker, "", a.rounds, a.every, a.markers, a.final, count=2,
                          checkpoint="group")
        for t, peer in ((ta, [tb, "a"]), (tb, [ta, "b"])):
            try:
                vm.send(t, PEER, peer)
            except clustervm.DeadTaskError:
                pass        # --resume: it had finished (its result is in the journal)
    else:
        ta = vm.spawn(worker, "a", a.rounds, a.every, a.markers, where=1)[0]
        tb = vm.spawn(worker, "b", a.rounds, a.every, a.markers, where=2)[0]
        vm.send(ta, PEER, tb)
        vm.send(tb, PEER, ta)
    print(f"pair: a={vm.join(ta)} b={vm.join(tb)}", flush=True)
