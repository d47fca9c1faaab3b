"""The first big chunked map after a job's start against the next ones (left open in the
seventh session: the first took 120-330 ms, the next 35-50 ms).

    clustervm run -n 4 benchmarks/apps/first_map_app.py [--items 20000] [--chunksize 1667]
        [--reps 4] [--pause 0]

After a one-by-one warm-up, ``--reps`` maps of ``--items`` no-op tasks in chunks,
``--pause`` seconds apart. Each task returns its node's pid and the time it ran
(perf_counter: one clock for every process of a host), so a line also says, per node,
the longest wait between two of its tasks (where a node sat without work), and when
the first and the last task ran. Prints::

    first-map rep=<i> submit_ms=<f> first_task_ms=<f> last_task_ms=<f> total_ms=<f>
        longest_node_gap_ms=<f>
"""
import argparse
import os
import time


def stamp(x):
    return os.getpid(), time.perf_counter()


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--chunksize", type=int, default=1667)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--pause", type=float, default=0.0)
    a = p.parse_args(vm.argv[1:])
    list(vm.map(stamp, range(500)))
    for rep in range(a.reps):
        time.sleep(a.pause)
        t0 = time.perf_counter()
        results = vm.map(stamp, range(a.items), chunksize=a.chunksize)
        t1 = time.perf_counter()
        runs: dict[int, list[float]] = {}
        for pid, t in results:
            runs.setdefault(pid, []).append(t)
        t2 = time.perf_counter()
        ordered = [sorted(ts) for ts in runs.values()]
        gap = max(b - a_ for ts in ordered for a_, b in zip(ts, ts[1:]))
        first, last = min(ts[0] for ts in ordered), max(ts[-1] for ts in ordered)
        print(f"first-map rep={rep} submit_ms={(t1 - t0) * 1e3:.1f} "
              f"first_task_ms={(first - t0) * 1e3:.1f} last_task_ms={(last - t0) * 1e3:.1f} "
              f"total_ms={(t2 - t0) * 1e3:.1f} longest_node_gap_ms={gap * 1e3:.1f}", flush=True)
