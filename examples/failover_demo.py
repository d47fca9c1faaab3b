"""What clustervm is for, in one run: a job loses a node half-way and still gets the exact answer.

    clustervm run -n 5 examples/failover_demo.py      # 1 coordinator + 4 worker nodes

Part 1 computes pi_montecarlo's estimate (32 seeded tasks, 20,000,000 samples)
on the 4 nodes, undisturbed. Part 2 computes it again with tasks that
checkpoint as they go; when half of them are done, main itself kills a worker
node's process with SIGKILL (the pid comes from ``vm.nodes``). MPI (ULFM)
reports the loss, the lost node's tasks run again on the 3 survivors from their
last checkpoints, and the job ends normally. Main prints both results, the
line ``hits=15707350 samples=20000000 pi=3.14147`` twice with the defaults,
and exits 1 if they differ; clustervm then prints its end-of-job report
(``clustervm report: 1 node(s) lost: ...; N task(s) re-run ...``) on stderr.

Options: --tasks, --samples, --seed (as pi_montecarlo.py), --task-ms (how long
each task of part 2 lasts at least, default 250), --no-kill (part 2 undisturbed).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from pi_montecarlo import count_hits   # the same task function: the same hits, by design

CHECKPOINT_EVERY = 100_000      # samples between a part-2 task's checkpoints


def pi_line(hits: int, samples: int) -> str:
    """pi_montecarlo's result line."""
    return f"hits={hits} samples={samples} pi={4.0 * hits / samples!r}"


def victim(vm) -> "tuple[int, int, int]":
    """(rank, pid, running) of the worker node to kill: one that is running a task."""
    me = vm.nodes[0]
    alive = [n for n in vm.nodes if n.state == "alive"]
    if len(alive) < 2:
        raise SystemExit(f"demo: needs at least 2 worker nodes alive, has {len(alive)}; "
                         f"run it with clustervm run -n 5")
    busy = [n for n in alive if n.running] or alive
    node = max(busy, key=lambda n: n.rank)
    if node.host != me.host:
        raise SystemExit(f"demo: node {node.rank} runs on host {node.host}, not here "
                         f"({me.host}); run the demo on one machine (no hostfile)")
    return node.rank, node.pid, node.running


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--samples", type=int, default=20_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--task-ms", type=float, default=250.0)
    p.add_argument("--no-kill", action="store_true", help="part 2 undisturbed too")
    a = p.parse_args(vm.argv[1:])
    if a.tasks < 2 or a.samples < a.tasks:
        p.error("need --tasks >= 2 and --samples >= --tasks")
    per, extra = divmod(a.samples, a.tasks)
    sizes = [per + (i < extra) for i in range(a.tasks)]
    n = a.tasks
    print(f"demo: a job on {vm.workers} worker nodes; part 1 of 2: {n} tasks, undisturbed",
          flush=True)
    first = sum(vm.map(count_hits, range(n), sizes, [a.seed] * n, [0.0] * n, [0] * n))
    print(pi_line(first, a.samples), flush=True)

    print(f"demo: part 2 of 2: the same {n} tasks, each checkpointing every "
          f"{CHECKPOINT_EVERY:,} samples; a node is killed when half are done", flush=True)
    second, done, killed = 0, 0, None
    for hits in vm.map(count_hits, range(n), sizes, [a.seed] * n, [a.task_ms] * n,
                       [CHECKPOINT_EVERY] * n, ordered=False):
        second += hits
        done += 1
        if done == n // 2 and not a.no_kill:
            rank, pid, running = victim(vm)
            print(f"demo: {done} of {n} tasks done: killing node {rank} (pid {pid}, "
                  f"{running} task(s) assigned to it) with SIGKILL", flush=True)
            os.kill(pid, signal.SIGKILL)
            killed = rank
    print(pi_line(second, a.samples), flush=True)
    lost = [v.rank for v in vm.nodes if v.state == "dead"]
    if second != first:
        print(f"demo: FAILED: {second} hits with node {killed} lost, {first} undisturbed",
              file=sys.stderr, flush=True)
        raise SystemExit(1)
    print(f"demo: identical to the undisturbed result (hits={first} both times) with "
          f"node(s) {lost or 'none'} lost and {vm.workers} nodes left", flush=True)
    print("demo: what was lost and re-run: the 'clustervm report:' line below (stderr)\n"
          "demo: next: watch a job live with `clustervm run --dashboard 0 ...` (prints its URL);\n"
          "demo:       record one with `--trace run.json`, then "
          "`clustervm timeline run.json -o run.png`;\n"
          "demo:       read the docs: `make docs`, open site/index.html "
          "(or docs/tutorial.md)", flush=True)
