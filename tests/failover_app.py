"""A drill application for the failover tests (tests/test_failover.py).

    clustervm run -n 4 tests/failover_app.py --tasks 24 --steps 10 --task-ms 400 --markers DIR

Task i runs ``--steps`` steps, each a short sleep and one update of a running
value ``acc`` that depends only on (seed, i, step). With ``--ckpt-kb K`` it
checkpoints after every step a state holding ``acc`` and a K KiB array derived
from it (checked on restore); with ``--result-kb K`` it returns a K KiB array
derived from its final ``acc`` (checked by main). ``--spawn`` runs the same
work as spawned tasks (one per ``vm.spawn`` call, joined by main) instead of
short tasks.

With ``--markers DIR`` each task creates (at once, flushed to disk) marker
files the test waits for before it kills a node from outside:

    start-<i>-r<rank>-p<pid>   the task began on that rank
    mid-<i>-r<rank>-p<pid>     half of its steps are done
    held-<i>-r<rank>-p<pid>    a checkpoint of it is held (the call after it was taken:
                               a spawned task's call is skipped until the one before
                               is acknowledged)
    end-<i>-r<rank>-p<pid>     about to return (the result is sent next)

Main prints one line that depends only on --tasks, --steps and --seed::

    drill: tasks=N results=N unique=N digest=<hex>

and then ``drill-check: ...`` (blobs verified) and ``drill-events: ...`` (the
VM's NODE_DOWN / NODE_ADDED events, and with ``--notify`` what the notify
callbacks and tagged messages reported).
"""
import argparse
import hashlib
import os
import time

import numpy as np

import clustervm

if os.environ.get("DRILL_SLOW_RANK"):
    # nodes slow to start (DRILL_SLOW_RANK=2 or 1,2): each sleeps (after MPI_Init, before
    # it says hello) and leaves a marker slow-<rank>-<pid> so a test can stop or kill it there
    from mpi4py import MPI
    _rank = MPI.COMM_WORLD.Get_rank()
    if str(_rank) in os.environ["DRILL_SLOW_RANK"].split(","):
        with open(os.path.join(os.environ["DRILL_SLOW_DIR"], f"slow-{_rank}-{os.getpid()}"),
                  "w"):
            pass
        time.sleep(3)

MASK = (1 << 61) - 1
EXIT_TAG, DOWN_TAG = 77, 78


def step_value(seed: int, i: int, step: int, acc: int) -> int:
    h = hashlib.blake2b(f"{seed}/{i}/{step}/{acc}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & MASK


def blob(acc: int, kb: int) -> np.ndarray:
    """K KiB of bytes that depend only on ``acc`` (cheap to make, cheap to check)."""
    n = kb * 1024 // 8
    return np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(acc)


def _mark(markers: str, what: str, i: int, rank: int) -> None:
    if markers:
        path = os.path.join(markers, f"{what}-{i}-r{rank}-p{os.getpid()}")
        with open(path, "w") as f:
            f.write(f"{time.time()!r}\n")


def run_steps(ctx, i: int, seed: int, steps: int, task_ms: float, ckpt_kb: int,
              result_kb: int, markers: str):
    rank = ctx.node
    _mark(markers, "start", i, rank)
    state = ctx.restore() if ckpt_kb else None
    step, acc, restored, taken, held = 0, 0, False, False, False
    if state is not None:
        step, acc = state["step"], state["acc"]
        if not np.array_equal(state["blob"], blob(acc, ckpt_kb)):
            raise RuntimeError(f"task {i}: restored checkpoint blob does not match its acc")
        restored = True
    pause = task_ms / 1000.0 / max(1, steps)
    while step < steps:
        time.sleep(pause)
        acc = step_value(seed, i, step, acc)
        step += 1
        if step == steps // 2:
            _mark(markers, "mid", i, rank)
        if ckpt_kb and step < steps:
            now = ctx.checkpoint({"step": step, "acc": acc, "blob": blob(acc, ckpt_kb)})
            if now and taken and not held:
                _mark(markers, "held", i, rank)
                held = True
            taken = taken or now
    out = blob(acc, result_kb) if result_kb else None
    _mark(markers, "end", i, rank)
    return {"i": i, "acc": acc, "blob": out, "restored": restored}


def work(i: int, seed: int, steps: int, task_ms: float, ckpt_kb: int, result_kb: int,
         markers: str) -> dict:
    """A short task."""
    return run_steps(clustervm.context(), i, seed, steps, task_ms, ckpt_kb, result_kb, markers)


def spawned(ctx, i: int, seed: int, steps: int, task_ms: float, ckpt_kb: int, result_kb: int,
            markers: str) -> dict:
    """The same work as a spawned (PVM-style) task."""
    return run_steps(ctx, i, seed, steps, task_ms, ckpt_kb, result_kb, markers)


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=24)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--task-ms", type=float, default=200.0)
    p.add_argument("--ckpt-kb", type=int, default=0)
    p.add_argument("--result-kb", type=int, default=0)
    p.add_argument("--markers", default="")
    p.add_argument("--spawn", action="store_true")
    p.add_argument("--notify", action="store_true")
    a = p.parse_args(vm.argv[1:])
    args = (a.seed, a.steps, a.task_ms, a.ckpt_kb, a.result_kb, a.markers)

    downs_cb: list = []
    if a.notify:
        vm.notify(clustervm.NODE_DOWN, callback=lambda e: downs_cb.append(e["rank"]))
        vm.notify(clustervm.NODE_DOWN, tag=DOWN_TAG)

    seen: dict[int, int] = {}
    accs: dict[int, int] = {}
    blobs_ok = restored = 0

    def take(r: dict) -> None:
        nonlocal blobs_ok, restored
        i = r["i"]
        seen[i] = seen.get(i, 0) + 1
        accs[i] = r["acc"]
        if a.result_kb and r["blob"] is not None and np.array_equal(r["blob"],
                                                                     blob(r["acc"], a.result_kb)):
            blobs_ok += 1
        restored += bool(r["restored"])

    if a.spawn:
        tids = [vm.spawn(spawned, i, *args)[0] for i in range(a.tasks)]
        if a.notify:
            vm.notify(clustervm.TASK_EXIT, tids, tag=EXIT_TAG)
        for t in tids:
            take(vm.join(t))
    else:
        for r in vm.map(work, range(a.tasks), *[[x] * a.tasks for x in args], ordered=False):
            take(r)
            del r

    digest = hashlib.sha256(repr(sorted(accs.items())).encode()).hexdigest()[:16]
    dups = sum(c - 1 for c in seen.values())
    print(f"drill: tasks={a.tasks} results={sum(seen.values())} unique={len(seen)} "
          f"digest={digest}", flush=True)
    print(f"drill-check: dups={dups} blobs_ok={blobs_ok} restored={restored}", flush=True)
    events = [f"{e['kind']}:{e.get('rank')}:{e.get('how', '')}" for e in vm.events()
              if e["kind"] in ("NODE_DOWN", "NODE_ADDED")]
    print(f"drill-events: {' | '.join(events) or '-'}", flush=True)
    if a.notify:
        msg_down, msg_exit = [], []
        while True:
            m = vm.nrecv(clustervm.SYSTEM, DOWN_TAG)
            if m is None:
                break
            msg_down.append(m.data["rank"])
        while True:
            m = vm.nrecv(clustervm.SYSTEM, EXIT_TAG)
            if m is None:
                break
            msg_exit.append(m.data["tid"])
        print(f"drill-notify: callback_down={sorted(downs_cb)} message_down={sorted(msg_down)} "
              f"task_exit={len(msg_exit)} task_exit_unique={len(set(msg_exit))}", flush=True)
