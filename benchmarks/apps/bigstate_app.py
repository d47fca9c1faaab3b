"""A spawned task with a big numpy state that checkpoints every few seconds (issue 14,
item 5): how long its steps stall at a checkpoint, and what the coordinator's memory does.

    clustervm run -n 3 benchmarks/apps/bigstate_app.py --mb 200 --seconds 12 --every 3

Each task owns ``--mb`` MB of float64 and, step after step, adds 1 to one slice of
it (about ``--step-ms`` of work) and times the step; every ``--every`` seconds it
checkpoints the whole array. Main (on the coordinator, rank 0) samples its own
resident memory every 0.1 s meanwhile. Prints one line per task and::

    big-state mb=<int> tasks=<int> checkpoints=<int> max_stall_ms=<float>
        later_stall_ms=<float> median_step_ms=<float> checkpoint_call_ms=<max>
        coordinator_rss_mb=<start>-><max> skipped=<int>

``max_stall_ms``: the longest step after the task's first pass over its array (whose
steps fault the array's new pages in, before any checkpoint: the task's own cost).
``later_stall_ms``: the longest checkpoint call after each task's first two (the
first is skipped while memory for it is made ready behind the task; the others copy
into memory touched before: made ready, or a copy no longer held). ``skipped``: calls
that took no checkpoint, that first one, or because the one before was still on its
way to the buddy (``ctx.checkpoint`` never waits for it).
"""
import argparse
import statistics
import threading
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(ctx, mb: int, seconds: float, every: float, step_ms: float) -> dict:
    st = ctx.restore()
    a = np.zeros(mb * 1024 * 1024 // 8) if st is None else st["a"]
    n = len(a)
    chunk = max(1, int(n * step_ms / 40.0))      # ~40 ms to touch the whole array
    steps, calls, gaps, skipped = 0, [], [], 0
    t_end = time.perf_counter() + seconds
    next_ckpt = time.perf_counter() + every
    last = time.perf_counter()
    while True:
        i = (steps * chunk) % n
        a[i:i + chunk] += 1.0
        steps += 1
        now = time.perf_counter()
        if now >= next_ckpt:
            c0 = time.perf_counter()
            if not ctx.checkpoint({"a": a}):
                skipped += 1        # the one before was still on its way: not waited for
            calls.append(time.perf_counter() - c0)
            next_ckpt = time.perf_counter() + every
            now = time.perf_counter()
        gaps.append(now - last)
        last = now
        if now >= t_end:
            break
    # the steps of the array's first pass fault its new pages in (the task's own cost,
    # 10-60 ms a step here, before any checkpoint): stalls are counted after it
    first_pass = -(-n // chunk)
    return {"steps": steps, "checkpoints": len(calls), "max_gap": max(gaps[first_pass:]),
            "first_pass_ms": sum(gaps[:first_pass]) * 1e3,
            "median_gap": statistics.median(gaps), "max_call": max(calls, default=0.0),
            "calls": calls, "skipped": skipped, "sum": float(a.sum())}


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--tasks", type=int, default=1)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--every", type=float, default=3.0)
    p.add_argument("--step-ms", type=float, default=5.0)
    a = p.parse_args(vm.argv[1:])
    samples = [rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            samples.append(rss_mb())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    tids = vm.spawn(worker, a.mb, a.seconds, a.every, a.step_ms, count=a.tasks)
    outs = [vm.join(tid) for tid in tids]
    stop.set()
    t.join()
    for k, o in enumerate(outs):
        print(f"task {k}: {o['steps']} steps, {o['checkpoints']} checkpoint calls "
              f"({o['skipped']} skipped), longest step "
              f"{o['max_gap'] * 1e3:.1f} ms after the array's first pass ({o['first_pass_ms']:.0f} "
              f"ms), median {o['median_gap'] * 1e3:.2f} ms; checkpoint "
              f"calls (ms): {' '.join(f'{c * 1e3:.0f}' for c in o['calls'])}")
    print(f"big-state mb={a.mb} tasks={a.tasks} "
          f"checkpoints={sum(o['checkpoints'] for o in outs)} "
          f"max_stall_ms={max(o['max_gap'] for o in outs) * 1e3:.1f} "
          f"later_stall_ms={max((max(o['calls'][2:], default=0.0) for o in outs)) * 1e3:.1f} "
          f"median_step_ms={statistics.median(o['median_gap'] for o in outs) * 1e3:.2f} "
          f"checkpoint_call_ms={max(o['max_call'] for o in outs) * 1e3:.1f} "
          f"coordinator_rss_mb={samples[0]:.0f}->{max(samples):.0f} "
          f"skipped={sum(o['skipped'] for o in outs)}", flush=True)
