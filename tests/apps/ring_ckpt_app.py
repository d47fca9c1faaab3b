"""Spawned tasks in a ring that exchange messages and checkpoint: the buddy-store drills.

    clustervm run -n 5 tests/apps/ring_ckpt_app.py --tasks 4 --steps 200 --every 10 \
        --step-ms 5 --markers DIR

Each step, task i sends its value to task i+1 and receives task i-1's; its new
value depends only on (i, step, its value, the one received), so the result is
the same however often tasks are killed and restored. Every ``--every`` steps a
task checkpoints ``{"step", "acc"}`` (and ``--state-kb`` KiB of numpy derived from
acc, checked on restore); after its ``k``-th checkpoint call it creates the marker
file ``ckpt-<i>-<k>-r<rank>`` in ``--markers`` (the checkpoint before it is then
acknowledged: a task waits for one before it sends the next). Main prints::

    ring: tasks=N steps=S digest=<hex>

``undisturbed(N, S)`` computes that line in one process, without a VM.
"""
import argparse
import hashlib
import os
import time

import numpy as np


MASK = (1 << 61) - 1


def mix(*parts: int) -> int:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & MASK


def pad(acc: int, kb: int) -> np.ndarray:
    return np.arange(kb * 128, dtype=np.uint64) + np.uint64(acc)


def member(ctx, steps: int, every: int, step_ms: float, state_kb: int, markers: str) -> int:
    tids, i = ctx.siblings, ctx.rank
    n = len(tids)
    right, left = tids[(i + 1) % n], tids[(i - 1) % n]
    state = ctx.restore()
    step, acc = (0, mix(i)) if state is None else (state["step"], state["acc"])
    if state is not None:
        if not np.array_equal(state["pad"], pad(acc, state_kb)):
            raise RuntimeError(f"task {i}: restored state does not match its acc")
        state["pad"][0] += np.uint64(0)      # a restored array is the task's own: writable
    k = step // every
    if markers:         # where each incarnation runs
        open(os.path.join(markers, f"run-{i}-inc{ctx.inc}-r{ctx.node}"), "w").close()
    while step < steps:
        ctx.send(right, step, acc)
        got = ctx.recv(left, step).data
        acc = mix(i, step, acc, got)
        step += 1
        if step_ms:
            time.sleep(step_ms / 1000)
        if step % every == 0:
            ctx.checkpoint({"step": step, "acc": acc, "pad": pad(acc, state_kb)})
            k += 1
            if markers:
                open(os.path.join(markers, f"ckpt-{i}-{k}-r{ctx.node}"), "w").close()
    return acc


def undisturbed(tasks: int, steps: int) -> str:
    """The line main prints, computed in one process (the tests' expected result)."""
    accs = [mix(i) for i in range(tasks)]
    for step in range(steps):
        accs = [mix(i, step, accs[i], accs[i - 1]) for i in range(tasks)]
    return f"ring: tasks={tasks} steps={steps} digest={_digest(accs)}"


def _digest(accs: list) -> str:
    return hashlib.sha256(repr(accs).encode()).hexdigest()[:16]


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--step-ms", type=float, default=0.0)
    p.add_argument("--state-kb", type=int, default=4)
    p.add_argument("--markers", default="")
    p.add_argument("--group", action="store_true", help="spawn(checkpoint='group')")
    a = p.parse_args(vm.argv[1:])
    tids = vm.spawn(member, a.steps, a.every, a.step_ms, a.state_kb, a.markers,
                    count=a.tasks, checkpoint="group" if a.group else "log")
    accs = [vm.join(t) for t in tids]
    print(f"ring: tasks={a.tasks} steps={a.steps} digest={_digest(accs)}", flush=True)
