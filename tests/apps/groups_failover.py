"""A collective whose member's node is killed from outside (tests/test_groups.py).

    clustervm run -n 3 tests/apps/groups_failover.py --markers DIR [--checkpoint]

Main and one spawned member per worker node (``where=rank``) form group "f"
and run ``--steps`` allreduce rounds. The member on the highest rank puts a
mailbox entry, then creates ``DIR/ready`` once it has done ``--kill-at``
rounds and slows down, so that the test can kill its node while main and the
others wait in a round. With ``--checkpoint`` each member checkpoints after
every round; without, a restarted member starts over and calls its rounds
again (answered from the coordinator's kept results).

Main prints ``failover-result: acc=<int> expected=<int>`` (or
``failover-error: <type>: <message>`` if a collective failed), then
``failover-mailbox: <value>`` read after the loss.
"""
import argparse
import os
import time

G = "f"


def member(ctx, steps: int, kill_at: int, markers: str, checkpoint: bool, last_rank: int):
    state = ctx.restore() if checkpoint else None
    if state is None:
        ctx.join_group(G)
        step, acc = 0, 0
    else:
        step, acc = state
    victim = ctx.node == last_rank and ctx.inc == 0
    if victim and step == 0:
        ctx.put_info("put-by-victim", {"node": ctx.node, "tid": ctx.tid})
    while step < steps:
        if victim and step == kill_at:
            open(os.path.join(markers, "ready"), "w").close()
            time.sleep(60)                    # killed here
        acc += ctx.allreduce(G, step * (ctx.tid + 1), timeout=120)
        step += 1
        if checkpoint:
            ctx.checkpoint((step, acc))
    return acc


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--kill-at", type=int, default=4)
    p.add_argument("--markers", required=True)
    p.add_argument("--checkpoint", action="store_true")
    a = p.parse_args(vm.argv[1:])
    ranks = [n.rank for n in vm.nodes if n.rank > 0]
    tids = [vm.spawn(member, a.steps, a.kill_at, a.markers, a.checkpoint, max(ranks),
                     where=r)[0] for r in ranks]
    vm.join_group(G)
    while vm.group_size(G) < len(tids) + 1:
        time.sleep(0.01)
    per_round = sum(t + 1 for t in tids) + vm.tid + 1
    expected = sum(s * per_round for s in range(a.steps))
    acc = 0
    try:
        for s in range(a.steps):
            acc += vm.allreduce(G, s * (vm.tid + 1), timeout=120)
        print(f"failover-result: acc={acc} expected={expected}", flush=True)
    except Exception as exc:   # noqa: BLE001 - the test reads the error
        print(f"failover-error: {type(exc).__name__}: {exc}", flush=True)
    print(f"failover-mailbox: {vm.get_info('put-by-victim')}", flush=True)
    for t in tids:
        try:
            vm.join(t, timeout=60)
        except Exception:   # noqa: BLE001
            pass
