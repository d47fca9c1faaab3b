"""Who takes the CPU while heat2d checkpoints: each task's median wait in ``recv`` and
its thread's CPU time, and the coordinator's CPU time (issue 14's overhead, taken apart).

    clustervm run -n 3 [--checkpoint-dir D] benchmarks/apps/heat2d_cpu_app.py
        [--size 256] [--steps 3000] [--checkpoint-every 50] [--checkpoint-mode log|group]

Runs ``heat2d.solver`` with 2 tasks, every ``recv`` timed. Prints one line per task and
one for rank 0 (milliseconds; CPU from ``time.thread_time`` and ``os.times``)::

    cpu task=<i> recv_median_us=<f> recv_ms=<f> thread_cpu_ms=<f>
    cpu coordinator_ms=<f> wall_ms=<f>

Run it with ``--checkpoint-every 0`` beside the same with checkpoints. This is how the
coordinator's eager polls after every checkpoint message were found: each task's median
``recv`` rose at every step, not only near checkpoints, and rank 0 used 0.08-0.11 CPU-s
against 0.01-0.02 s without checkpoints (benchmarks/RESULTS.md, 2026-12-03).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "examples"))
import heat2d  # noqa: E402


class TimedRecv:
    """A task context whose ``recv`` calls are timed one by one."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx
        self.waits: list[float] = []

    def recv(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._ctx.recv(*args, **kwargs)
        finally:
            self.waits.append(time.perf_counter() - t0)

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def solver(ctx, *args) -> dict:
    timed = TimedRecv(ctx)
    out = heat2d.solver(timed, *args)
    w = timed.waits
    print(f"cpu task={out['me']} recv_median_us={statistics.median(w) * 1e6:.1f} "
          f"recv_ms={sum(w) * 1e3:.1f} thread_cpu_ms={time.thread_time() * 1e3:.1f}",
          flush=True)
    return out


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--checkpoint-mode", choices=("log", "group"), default="log")
    a = p.parse_args(vm.argv[1:])
    t0, c0 = time.perf_counter(), os.times()
    tids = vm.spawn(solver, 2, a.size, a.steps, a.checkpoint_every, 0.0, count=2,
                    checkpoint=a.checkpoint_mode)
    for t in tids:
        vm.join(t)
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    print(f"cpu coordinator_ms={cpu * 1e3:.0f} wall_ms={(time.perf_counter() - t0) * 1e3:.0f}",
          flush=True)
