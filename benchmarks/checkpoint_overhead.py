"""Checkpoint overhead of heat2d (issue 14, item 3), and its restart time after a kill.

    .venv/bin/python benchmarks/checkpoint_overhead.py [--runs 9] [--size 256] [--steps 3000]
                                                      [--kill-runs 3]

``examples/heat2d.py`` with 2 tasks on ``clustervm run -n 3`` (a coordinator and
2 nodes: ranks do not outnumber the 2 cores by much), checkpointing every 50
steps against ``--checkpoint-every 0``, for two stores:

* ``store=memory``: the default (the buddy store: each checkpoint kept in memory by its
  node and copied to the next node; nothing at the coordinator);
* ``store=dir``: ``--checkpoint-dir`` on a fresh temporary directory per job
  (deleted afterwards); the run without checkpoints gets one as well, so the
  pair differs only in ``--checkpoint-every``. With ``--sync-every-checkpoint``
  a third store, ``dir-sync0``: the same with ``CLUSTERVM_CHECKPOINT_SYNC_S=0``
  (every checkpoint synced to the disk before it counts, as before the twelfth
  session; a detail line only). That run journals, at its end, what
  a task finished with: in log mode its replay log, never trimmed without
  checkpoints (13 MB here, ~0.05 s; 0.12 s before it went as one packed blob), so
  it is slower than the in-memory run without checkpoints; a detail line also
  compares both dir runs with that one. With ``--coordinator-writes`` another,
  ``dir-coordinator``: a directory and ``CLUSTERVM_NODE_FILES=0`` (every checkpoint
  sent to the coordinator, which writes it: how a node that does not see the directory
  works, and how every node did before the nineteenth session; a detail line only).
  With ``--mpi-copies`` another, ``memory-mpi``: in memory with
  ``CLUSTERVM_SHM_COPIES=0`` (each checkpoint's copy sent to the buddy over MPI, as a
  buddy on another host gets it, and as every buddy did before the twentieth session;
  a detail line only).

Runs are interleaved (each round runs every variant, the order of the pair
alternating from round to round, so drifts of a shared box's load hit both
alike), and the time compared is the one heat2d prints itself (``heat2d: ...
<seconds> s``: from its first spawn to its result, so start-up is excluded).
Every job runs under ``clustervm run --timeout`` in its own session, which is
ended afterwards (benchmarks/_util.py). Every run's result line
(``checksum=...``) must equal the first run's, with and without checkpoints;
the benchmark fails loudly if one does not.

Modes (``--modes log,group``, both by default): ``log``, each task checkpoints on
its own and every message is logged for replay (each checkpoint carries the
task's log); ``group``, heat2d ``--checkpoint-mode group`` (``spawn(...,
checkpoint="group")``: coordinated checkpoints, no log, the group rolled back
together). Each mode's runs without checkpoints are its own baseline (a group
logs no messages, so it runs faster without checkpoints too).

Output: detail lines (every time, medians, spread), then exactly one line per mode and
store::

    checkpoint mode=<log|group> store=<memory|dir> overhead_pct=<float> runs=<int>

where ``overhead_pct = 100 * (median with / median without - 1)``.

With ``--kill-runs N`` (default 0), N more heat2d jobs each have node rank 2
SIGKILLed once the first checkpoints are stored (``--checkpoint-dir``, whose files
say so); the checksum must still be the undisturbed one, and the restart time of
the end-of-job report (loss detected -> the last of the node's tasks running again
from its checkpoint, as its new node says) is printed as
``heat2d restart store=dir seconds=<median> runs=<int>``.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _util  # noqa: E402

HEAT2D = str(_util.ROOT / "examples" / "heat2d.py")
TIME = re.compile(r"^heat2d: .*, (\d+(?:\.\d+)?) s$", re.M)
RESTART = re.compile(r"re-dispatch after loss detected: node (\d+) (\d+\.\d+) s")
RUNNING = re.compile(r"running again from checkpoints after loss detected: node (\d+) "
                     r"(\d+\.\d+) s")
STORES = ("memory", "dir")
SYNC0 = "dir-sync0"     # --sync-every-checkpoint: CLUSTERVM_CHECKPOINT_SYNC_S=0
COORD = "dir-coordinator"   # --coordinator-writes: CLUSTERVM_NODE_FILES=0
MPI_COPIES = "memory-mpi"   # --mpi-copies: CLUSTERVM_SHM_COPIES=0
#: the detail stores: what each sets
DETAIL = {SYNC0: ("CLUSTERVM_CHECKPOINT_SYNC_S", "0"), COORD: ("CLUSTERVM_NODE_FILES", "0"),
          MPI_COPIES: ("CLUSTERVM_SHM_COPIES", "0")}


class Failed(SystemExit):
    """A run that did not give a time, or gave another result: the benchmark stops."""


def heat2d(a: argparse.Namespace, mode: str, store: str, every: int) -> tuple[float, str]:
    """One job: (the seconds heat2d prints, its checksum line). ``store`` ``memory``,
    ``dir``, ``dir-sync0`` (a directory, every checkpoint synced before it counts) or
    ``dir-coordinator`` (a directory, every checkpoint written by the coordinator)."""
    ckdir = tempfile.mkdtemp(prefix="cvm-ckbench-") if not store.startswith("memory") \
        else None
    env = dict([DETAIL[store]]) if store in DETAIL else None
    try:
        run_args = ("--checkpoint-dir", ckdir) if ckdir else ()
        rc, out, err, _ = _util.clustervm(
            3, HEAT2D, "--size", str(a.size), "--steps", str(a.steps), "--tasks", "2",
            "--checkpoint-every", str(every), "--checkpoint-mode", mode, timeout=a.timeout,
            run_args=run_args, env=env)
    finally:
        if ckdir:
            shutil.rmtree(ckdir, ignore_errors=True)
    m = TIME.search(out)
    check = next((ln for ln in out.splitlines() if ln.startswith("checksum=")), None)
    if rc != 0 or m is None or check is None:
        raise Failed(f"heat2d (mode={mode}, store={store}, --checkpoint-every {every}) failed with "
                     f"status {rc}\n--- stdout ---\n{out}\n--- stderr ---\n{err[-3000:]}")
    return float(m.group(1)), check


def spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return (f"median {statistics.median(xs):.3f} s, min {min(xs):.3f}, max {max(xs):.3f}, "
            f"IQR {q[0]:.3f}-{q[2]:.3f}")


def killed_run(a: argparse.Namespace, expected: str) -> tuple[float, float]:
    """heat2d with rank 2 SIGKILLed after the first checkpoints: its restart seconds
    (detection -> re-dispatched, and -> running again from its checkpoint)."""
    ckdir = tempfile.mkdtemp(prefix="cvm-ckbench-kill-")
    mark = f"CVM_CKBENCH={os.getpid()}-{time.monotonic_ns()}"
    cmd = [_util.PY, "-m", "clustervm", "run", "-n", "3", "--timeout", str(a.timeout),
           "--checkpoint-dir", ckdir, HEAT2D, "--size", str(a.size), "--steps", str(a.steps),
           "--tasks", "2", "--checkpoint-every", "50"]
    env = _util.mpi_env({"CVM_CKBENCH": mark.split("=", 1)[1]})
    proc = subprocess.Popen(cmd, cwd=_util.ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    from clustervm import procs
    try:
        deadline = time.monotonic() + a.timeout
        while len(glob.glob(os.path.join(ckdir, "ckpt", "*.ckpt"))) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        pid = procs.rank_pids(mark).get(2)
        if pid is None or proc.poll() is not None:
            raise Failed(f"killed-node run: no checkpoint stored or no rank 2 to kill "
                         f"(job status {proc.poll()})")
        os.kill(pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=a.timeout + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise Failed(f"killed-node run hung past its timeout\n{err[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # stragglers of the job's session
        except ProcessLookupError:
            pass
        for p in procs.rank_pids(mark).values():
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ckdir, ignore_errors=True)
    check = next((ln for ln in out.splitlines() if ln.startswith("checksum=")), None)
    if proc.returncode != 0 or check is None:
        raise Failed(f"killed-node heat2d failed with status {proc.returncode}\n"
                     f"--- stdout ---\n{out}\n--- stderr ---\n{err[-3000:]}")
    if check != expected:
        raise Failed(f"killed-node heat2d gave another result:\n  {check}\n"
                     f"against the undisturbed\n  {expected}")
    rep = next((ln for ln in err.splitlines() if ln.startswith("clustervm report:")), "")
    m, r = RESTART.search(rep), RUNNING.search(rep)
    if m is None or r is None:
        raise Failed(f"killed-node heat2d: no restart time in the report:\n{rep or err[-3000:]}")
    return float(m.group(2)), float(r.group(2))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=9, help="runs of each variant (medians)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3000,
                   help="heat2d steps (its default 500 runs 0.1-0.5 s: below the noise; "
                        "3000 run over 1 s with 2 tasks)")
    p.add_argument("--timeout", type=float, default=180.0, help="per job (clustervm --timeout)")
    p.add_argument("--kill-runs", type=int, default=0,
                   help="heat2d runs with a node SIGKILLed, for the restart time")
    p.add_argument("--sync-every-checkpoint", action="store_true",
                   help="also runs with a directory and CLUSTERVM_CHECKPOINT_SYNC_S=0 (each "
                        "checkpoint synced before it counts; a detail line, store=dir-sync0)")
    p.add_argument("--coordinator-writes", action="store_true",
                   help="also runs with a directory and CLUSTERVM_NODE_FILES=0 (every "
                        "checkpoint sent to the coordinator, which writes it, as before the "
                        "nineteenth session; a detail line, store=dir-coordinator)")
    p.add_argument("--mpi-copies", action="store_true",
                   help="also runs in memory with CLUSTERVM_SHM_COPIES=0 (each checkpoint's "
                        "copy sent to the buddy over MPI, not through /dev/shm, as before the "
                        "twentieth session; a detail line, store=memory-mpi)")
    p.add_argument("--modes", default="log,group",
                   help="checkpoint modes, comma-separated: log (each task on its own, "
                        "messages logged) and/or group (spawn(checkpoint='group'))")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    if not modes or set(modes) - {"log", "group"}:
        p.error("--modes takes log and/or group")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    print(f"heat2d {a.size}x{a.size}, {a.steps} steps, 2 tasks, clustervm run -n 3, "
          f"--checkpoint-every 50 against 0, {a.runs} interleaved run(s); load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    stores = STORES + ((SYNC0,) if a.sync_every_checkpoint else ()) \
        + ((COORD,) if a.coordinator_writes else ()) + ((MPI_COPIES,) if a.mpi_copies else ())
    variants = [(m, s) for m in modes for s in stores]
    times = {(m, s, e): [] for m, s in variants for e in (0, 50)}
    expected: str | None = None
    for k in range(a.runs):
        for mode, store in variants:
            for every in ((0, 50) if k % 2 == 0 else (50, 0)):
                t, check = heat2d(a, mode, store, every)
                if expected is None:
                    expected = check
                elif check != expected:
                    raise Failed(f"run {k}, mode={mode}, store={store}, --checkpoint-every "
                                 f"{every}: the result differs:\n  {check}\nagainst the first "
                                 f"run's\n  {expected}")
                times[(mode, store, every)].append(t)
        print(f"  run {k}: " + ", ".join(f"{m}/{s}/{e} {times[(m, s, e)][-1]:.3f} s"
                                         for m, s in variants for e in (0, 50)), flush=True)
    print(f"every run's result: {expected}")
    lines = []
    for mode, store in variants:
        off, on = times[(mode, store, 0)], times[(mode, store, 50)]
        pct = 100.0 * (statistics.median(on) / statistics.median(off) - 1.0)
        pairs = sorted(100.0 * (b / a_ - 1.0) for a_, b in zip(off, on))
        name = f"mode={mode} store={store}"
        print(f"{name}: without checkpoints {spread(off)}")
        print(f"{name}: every 50 steps    {spread(on)}")
        print(f"{name}: per-round overhead % min {pairs[0]:+.1f}, median "
              f"{statistics.median(pairs):+.1f}, max {pairs[-1]:+.1f}")
        if store not in ("memory", MPI_COPIES) and (mode, "memory", 0) in times:
            # the run without checkpoints pays, with a directory, for what it journals at its
            # end: in log mode its whole replay log, never trimmed (13 MB for heat2d's
            # defaults), which makes it the slower baseline; this says what checkpoints to
            # the directory cost against no checkpoints and no directory
            bare = statistics.median(times[(mode, "memory", 0)])
            print(f"{name}: without checkpoints {statistics.median(off) / bare - 1:+.1%} "
                  f"against store=memory's; every 50 steps "
                  f"{statistics.median(on) / bare - 1:+.1%} against it")
        if store in DETAIL:
            where = "in memory" if store == MPI_COPIES else "a directory"
            print(f"{name}: overhead_pct={pct:.1f} runs={len(on)} ({where}, "
                  f"{'='.join(DETAIL[store])})")
            continue
        lines.append(f"checkpoint mode={mode} store={store} overhead_pct={pct:.1f} "
                     f"runs={len(on)}")
    if a.kill_runs > 0:
        both = [killed_run(a, expected) for _ in range(a.kill_runs)]
        sent, secs = [b[0] for b in both], [b[1] for b in both]
        print(f"killed node (rank 2 of -n 3, --checkpoint-dir): detection -> last task "
              f"re-dispatched {', '.join(f'{s:.3f}' for s in sent)} s, -> running again from "
              f"its checkpoint {', '.join(f'{s:.3f}' for s in secs)} s; checksum undisturbed "
              f"in every run")
        lines.append(f"heat2d restart store=dir seconds={statistics.median(secs):.3f} "
                     f"runs={len(secs)}")
    for ln in lines:
        print(ln, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
