"""Monte Carlo estimate of pi: a farm of seeded tasks.

    clustervm run -n 4 examples/pi_montecarlo.py --tasks 32 --samples 10000000 --seed 1

Prints one line ``hits=<int> samples=<int> pi=<float>``. Task i draws its
points in blocks of 10,000 from a generator seeded by (seed, i, block), so
``hits`` depends only on the arguments: the same on any number of nodes, and
after any failover. ``--task-ms M`` makes each task last at least M ms;
``--checkpoint-every N`` checkpoints each task every N samples, so a task
re-run after its node is lost resumes from its last checkpoint.
"""
import argparse
import time

import numpy as np

import clustervm

BLOCK = 10_000


def count_hits(index: int, samples: int, seed: int, task_ms: float, every: int) -> int:
    """Hits inside the unit quarter circle among ``samples`` points of task ``index``."""
    ctx = clustervm.context() if every else None
    state = ctx.restore() if ctx is not None else None
    block, hits = (state["block"], state["hits"]) if state else (0, 0)
    nblocks = -(-samples // BLOCK)
    pause = task_ms / 1000.0 / max(1, nblocks)
    since = 0
    while block < nblocks:
        n = min(BLOCK, samples - block * BLOCK)
        rng = np.random.default_rng([seed, index, block])
        xy = rng.random((n, 2))
        hits += int(np.count_nonzero((xy * xy).sum(axis=1) <= 1.0))
        block += 1
        since += n
        if pause:
            time.sleep(pause)
        if ctx is not None and since >= every and block < nblocks:
            ctx.checkpoint({"block": block, "hits": hits})
            since = 0
    return hits


def task_sizes(samples: int, tasks: int) -> list[int]:
    """The samples of each task: ``samples`` split as evenly as can be."""
    per, extra = divmod(samples, tasks)
    return [per + (i < extra) for i in range(tasks)]


def result_line(hits: int, samples: int) -> str:
    return f"hits={hits} samples={samples} pi={4.0 * hits / samples!r}"


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--samples", type=int, default=10_000_000, help="total over all tasks")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--task-ms", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="checkpoint each task every N samples (0: never)")
    a = p.parse_args(vm.argv[1:])
    if a.tasks < 1 or a.samples < a.tasks:
        p.error("need --tasks >= 1 and --samples >= --tasks")
    sizes = task_sizes(a.samples, a.tasks)
    hits = sum(vm.map(count_hits, range(a.tasks), sizes, [a.seed] * a.tasks,
                      [a.task_ms] * a.tasks, [a.checkpoint_every] * a.tasks))
    print(result_line(hits, a.samples))
