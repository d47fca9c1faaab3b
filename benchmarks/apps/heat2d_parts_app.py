"""Where a heat2d task's time goes: examples/heat2d.py's own solver, its send, recv and
checkpoint calls timed from outside (issue 14's checkpoint overhead, taken apart).

    clustervm run -n 3 benchmarks/apps/heat2d_parts_app.py [--size 256] [--steps 3000]
        [--tasks 2] [--checkpoint-every 50] [--checkpoint-mode log|group]

Each task runs ``heat2d.solver`` with a context that times the calls it passes on.
Prints one line per task, in milliseconds (compute: the rest of the task's time; the
median wait of one ``recv``; the task thread's CPU time; what a checkpoint costs the
task's steps, below), then rank 0's CPU time::

    parts task=<i> send_ms=<f> recv_ms=<f> checkpoint_ms=<f> checkpoints=<n> compute_ms=<f>
          recv_median_us=<f> thread_cpu_ms=<f> excess_per_checkpoint_us=<f>
    parts coordinator_cpu_ms=<f>

and per task a line on its steps (medians of a step's sends, of its receives with their
waits, of the rest, and the whole step's median, mean and 90th percentile; raw mpi4py's
counterpart: ``benchmarks/apps/heat2d_mpi4py.py --phases``, both side by side:
``benchmarks/heat2d_phases.py``)::

    steps task=<i> send_us=<f> recv_us=<f> compute_us=<f> step_us=<f> step_mean_us=<f> step_p90_us=<f>

``excess_per_checkpoint_us``: every step's time (from one step's first ``send`` to the
next's) past the median step, summed over the run (its first and last 5 % left out)
and divided by the checkpoints taken: what a checkpoint costs the task, its call and
whatever it sets off afterwards (a coordinator busy with it, say), several times less
noisy than comparing whole runs on a shared box (thirteenth session). Without
checkpoints it is the same sum divided by the run's steps / 50: the noise floor.

Run it with ``--checkpoint-every 0`` beside the same with checkpoints, and with
``clustervm run --checkpoint-dir DIR``, to see what checkpoints add where. (A rise of
the median ``recv`` at every step, with rank 0 busier, is how the coordinator's eager
polls after each checkpoint message were found: benchmarks/RESULTS.md, 2026-12-03.)
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heat2d  # noqa: E402
import phases  # noqa: E402

TIMED = ("send", "recv", "checkpoint")


class Timed:
    """A task context whose send, recv and checkpoint calls add up their time and count."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx
        self.spent = dict.fromkeys(TIMED, 0.0)
        self.calls = dict.fromkeys(TIMED, 0)
        self.recv_waits: list[float] = []
        self.sends: list[float] = []        # when each send started
        self.send_times: list[float] = []   # how long each took
        for name in TIMED:
            setattr(self, name, self._timed(name, getattr(ctx, name)))

    def _timed(self, name, call):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            if name == "send":
                self.sends.append(t0)
            try:
                return call(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                self.spent[name] += spent
                self.calls[name] += 1
                if name == "recv":
                    self.recv_waits.append(spent)
                elif name == "send":
                    self.send_times.append(spent)
        return timed

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def excess_per_checkpoint(sends: list[float], steps: int, checkpoints: int) -> float:
    """Seconds of step time past the median step, per checkpoint (see the module doc)."""
    per_step = max(1, round(len(sends) / max(1, steps)))       # a task's neighbours
    starts = sends[::per_step]
    lengths = [b - a for a, b in zip(starts, starts[1:])]
    cut = len(lengths) // 20
    lengths = lengths[cut:len(lengths) - cut] or lengths
    if not lengths:
        return 0.0
    median = statistics.median(lengths)
    share = checkpoints * len(lengths) / max(1, len(starts) - 1)
    return (sum(lengths) - median * len(lengths)) / max(share, len(lengths) / 50)


def per_step(timed: Timed, steps: int) -> list[tuple[float, float, float]]:
    """Per step: its sends' seconds, its receives', and the whole step (from its first
    send to the next step's)."""
    k = max(1, round(len(timed.sends) / max(1, steps)))       # a task's neighbours
    starts = timed.sends[::k]
    out = []
    for i in range(len(starts) - 1):
        out.append((sum(timed.send_times[i * k:(i + 1) * k]),
                    sum(timed.recv_waits[i * k:(i + 1) * k]), starts[i + 1] - starts[i]))
    return out


def solver(ctx, *args) -> dict:
    timed = Timed(ctx)
    t0 = time.perf_counter()
    out = heat2d.solver(timed, *args)
    total = time.perf_counter() - t0
    excess = excess_per_checkpoint(timed.sends, args[2], timed.calls["checkpoint"])
    s = timed.spent
    print(f"parts task={out['me']} send_ms={s['send'] * 1e3:.1f} recv_ms={s['recv'] * 1e3:.1f} "
          f"checkpoint_ms={s['checkpoint'] * 1e3:.1f} checkpoints={timed.calls['checkpoint']} "
          f"compute_ms={(total - sum(s.values())) * 1e3:.1f} "
          f"recv_median_us={statistics.median(timed.recv_waits or [0.0]) * 1e6:.1f} "
          f"thread_cpu_ms={time.thread_time() * 1e3:.1f} "
          f"excess_per_checkpoint_us={excess * 1e6:.0f}", flush=True)
    print(f"steps task={out['me']} "
          f"{phases.summary(per_step(timed, args[2]), ('send', 'recv'))}", flush=True)
    return out


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--checkpoint-mode", choices=("log", "group"), default="log")
    a = p.parse_args(vm.argv[1:])
    t0, c0 = time.perf_counter(), os.times()
    tids = vm.spawn(solver, a.tasks, a.size, a.steps, a.checkpoint_every, 0.0,
                    a.checkpoint_mode == "group", count=a.tasks,
                    checkpoint=a.checkpoint_mode)
    for t in tids:
        vm.join(t)
    c1 = os.times()
    print(f"parts coordinator_cpu_ms="
          f"{((c1.user - c0.user) + (c1.system - c0.system)) * 1e3:.0f}", flush=True)
    print(f"heat2d parts: {a.size}x{a.size}, {a.tasks} tasks, {time.perf_counter() - t0:.2f} s",
          flush=True)
