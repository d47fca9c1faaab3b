"""A job for the dashboard, trace and log tests (tests/test_dashboard.py).

    clustervm run -n 4 --dashboard 127.0.0.1:0 tests/dashboard_app.py --ms 60 --until FILE

Runs short tasks (each sleeps ``--ms`` ms) in rounds of ``--batch`` until
``--tasks`` have run, or, with ``--until FILE``, until FILE exists (at most
``--max-s`` seconds), so a test decides when the job ends. Every
``--fail-every`` K-th task logs a warning (on its node) and raises ValueError
(counted, not fatal). Prints
``dashboard-app: tasks=N ok=N failed=N``.
"""
import argparse
import logging
import os
import time

log = logging.getLogger("dashboard_app")


def work(i: int, ms: float, fail_every: int) -> int:
    time.sleep(ms / 1000.0)
    if fail_every and i % fail_every == fail_every - 1:
        log.warning("task %d fails on purpose", i)
        raise ValueError(f"task {i} fails on purpose (every {fail_every}th does)")
    return i


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=0, help="stop after this many (0: use --until)")
    p.add_argument("--ms", type=float, default=50.0)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--until", metavar="FILE")
    p.add_argument("--max-s", type=float, default=100.0)
    a = p.parse_args(vm.argv[1:])
    t0 = time.monotonic()
    n = ok = failed = 0
    while True:
        if a.tasks and n >= a.tasks:
            break
        if not a.tasks and (a.until is None or os.path.exists(a.until)
                            or time.monotonic() - t0 > a.max_s):
            break
        size = min(a.batch, a.tasks - n) if a.tasks else a.batch
        futures = [vm.submit(work, n + i, a.ms, a.fail_every) for i in range(size)]
        n += size
        for f in futures:
            try:
                f.result()
                ok += 1
            except ValueError:
                failed += 1
    print(f"dashboard-app: tasks={n} ok={ok} failed={failed}", flush=True)
