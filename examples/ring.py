"""A token passed around a ring of k spawned tasks for r rounds (PVM's classic).

    clustervm run -n 3 examples/ring.py --tasks 4 --rounds 100
    mpiexec -n 3 python -m clustervm examples/ring.py

Each hop adds one to the token, so the final token is tasks x rounds.
"""
import argparse
import time

RING, TOKEN = 1, 2


def member(ctx, rounds: int) -> dict | None:
    ring = ctx.recv(tag=RING).data            # the tids of the ring, in order
    me = ring.index(ctx.tid)
    nxt = ring[(me + 1) % len(ring)]
    if me == 0:
        t0 = time.perf_counter()
        ctx.send(nxt, TOKEN, 0)
        for r in range(rounds):
            token = ctx.recv(tag=TOKEN).data + 1
            if r < rounds - 1:
                ctx.send(nxt, TOKEN, token)
        return {"token": token, "seconds": time.perf_counter() - t0}
    for _ in range(rounds):
        ctx.send(nxt, TOKEN, ctx.recv(tag=TOKEN).data + 1)
    return None


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--rounds", type=int, default=100)
    a = p.parse_args(vm.argv[1:])
    tids = vm.spawn(member, a.rounds, count=a.tasks)
    vm.mcast(tids, RING, tids)
    out = vm.join(tids[0])
    for t in tids[1:]:
        vm.join(t)
    hops = a.tasks * a.rounds
    print(f"ring: {a.tasks} tasks, {a.rounds} rounds, final token={out['token']} "
          f"(expected {hops}), {out['seconds'] / hops * 1e6:.1f} us per hop")
