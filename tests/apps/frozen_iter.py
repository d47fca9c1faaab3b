"""An iteration on a frozen group (MPI collectives) whose members checkpoint.

    clustervm run -n 4 --checkpoint-dir DIR tests/apps/frozen_iter.py [--steps S --step-ms MS]
        [--idle K] [--checkpoint-every C] [--floats N]

Main and one spawned task per worker node (alive, not a spare; with ``--idle K``
the K highest ranks get none) join group "it" and freeze it; each step every
member contributes a small int64 vector derived from the last result, and the
members checkpoint every C steps (default 2; 0: never). With ``--floats N`` the
vectors are N float64s of mixed magnitudes (N >= 32: summed by MPI's own
Iallreduce, whose order is not the coordinator's left to right: a replay must
give MPI's result bit for bit). Main prints
``frozen-iter: digest=<hex> steps=<int>`` (the same with and without a node killed
mid-run), ``frozen-iter-where: on_mpi=<bool>`` (at the end) and
``frozen-iter-recovery: hub_steps=<int> mpi_after_hub=<int> nodes=<list>
members_on_mpi=<list>``: the steps main began through the coordinator (the group
thawed after a loss), the steps on MPI after those, and the spawned members' nodes
and group_on_mpi at the end.
"""
import argparse
import hashlib
import time

import numpy as np

G = "it"


def step_value(x: np.ndarray, me: int, step: int) -> np.ndarray:
    if x.dtype.kind == "f":
        scale = 10.0 ** ((np.arange(x.size) + me) % 12 - 3)
        return np.sin(x * (me + 3) + step) * scale
    return (x * (me + 3) + step * 7 + me) % 1000003


def start_value(floats: int) -> np.ndarray:
    return np.linspace(0.1, 1.0, floats) if floats else np.arange(4, dtype=np.int64)


def iterate(ctx, n: int, steps: int, step_ms: float, is_main: bool = False,
            seen: dict | None = None, every: int = 2, floats: int = 0):
    state = None if is_main else ctx.restore()
    if state is None:
        me = ctx.join_group(G)
        ctx.barrier(G, count=n)
        ctx.freeze_group(G, timeout=60)
        x, step = start_value(floats), 0
    else:
        me, x, step = state["me"], state["x"], state["step"]
    while step < steps:
        if seen is not None:
            if not ctx.group_on_mpi(G):
                seen["hub"] += 1
            elif seen["hub"]:
                seen["mpi_after_hub"] += 1
        x = ctx.allreduce(G, step_value(x, me, step), timeout=120)
        step += 1
        if step_ms:
            time.sleep(step_ms / 1000.0)
        if not is_main and every and step % every == 0 and step < steps:
            ctx.checkpoint({"me": me, "x": x, "step": step})
    return x


def member(ctx, n, steps, step_ms, every, floats):
    x = iterate(ctx, n, steps, step_ms, every=every, floats=floats).tolist()
    return {"x": x, "node": ctx.node, "on_mpi": ctx.group_on_mpi(G)}


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--step-ms", type=float, default=0.0)
    p.add_argument("--idle", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--floats", type=int, default=0)
    a = p.parse_args(vm.argv[1:])
    ranks = sorted(nd.rank for nd in vm.nodes if nd.rank > 0 and nd.state == "alive")
    ranks = ranks[:len(ranks) - a.idle]
    n = len(ranks) + 1
    tids = [vm.spawn(member, n, a.steps, a.step_ms, a.checkpoint_every, a.floats,
                     where=r)[0] for r in ranks]
    while vm.group_size(G) < len(ranks):
        alive = {row["tid"] for row in vm.tasks()}
        for t in tids:
            if t not in alive:
                vm.join(t)        # a member that ended before joining: its error, here
        time.sleep(0.01)
    seen = {"hub": 0, "mpi_after_hub": 0}
    x = iterate(vm.context, n, a.steps, a.step_ms, is_main=True, seen=seen,
                floats=a.floats)
    others = [vm.join(t, timeout=120) for t in tids]
    assert all(o["x"] == x.tolist() for o in others), (others, x)
    nodes = sorted(o["node"] for o in others)
    members_on_mpi = [o["on_mpi"] for o in others]
    print(f"frozen-iter: digest={hashlib.sha256(x.tobytes()).hexdigest()[:16]} "
          f"steps={a.steps}", flush=True)
    print(f"frozen-iter-where: on_mpi={vm.group_on_mpi(G)}", flush=True)
    print(f"frozen-iter-recovery: hub_steps={seen['hub']} "
          f"mpi_after_hub={seen['mpi_after_hub']} nodes={nodes} "
          f"members_on_mpi={members_on_mpi}", flush=True)
