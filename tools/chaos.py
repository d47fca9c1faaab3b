"""Chaos drill: kill or stop a random node of a running job at a random moment.

    python tools/chaos.py --trials 20 [--app pi|heat|heat-group|kmeans] [--seed 1] [-- extra clustervm run args]

Each trial starts ``clustervm run -n 4`` on pi_montecarlo.py (``--task-ms``),
heat2d.py or kmeans.py (3 tasks, one a node: its hub group's allreduce goes on MPI by
itself after 16 rounds), waits a random time between 0 and the undisturbed run's wall time,
sends SIGKILL or SIGSTOP to a random worker rank (found by its
OMPI_COMM_WORLD_RANK, the way an outside checker would; ``--victims 2``: two
workers, each at its own moment), and checks that the job prints the
undisturbed result and exits 0. A stopped process is killed
after the job ends. Every job runs under a timeout; its session is killed
afterwards. Prints one line per trial and a summary; exit status 1 if any
trial failed.

Two victims may be a node and its *buddy* (the node that holds the other copy of
its tasks' checkpoints) lost together before either loss is handled (two
SIGSTOPs less than a heartbeat apart, say). Without ``--checkpoint-dir`` heat2d
then cannot go on exactly and the job ends with a CheckpointError that says so:
such a trial is counted as *refused* (the job rightly fails, clearly), not as a
failure. ``--dir`` gives every job a fresh ``--checkpoint-dir`` (deleted after
it), with which such a trial must give the undisturbed result too.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from clustervm import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = {
    "pi": (["examples/pi_montecarlo.py", "--tasks", "24", "--task-ms", "200"], "hits="),
    "heat": (["examples/heat2d.py", "--steps", "1500", "--step-ms", "1"], "checksum="),
    # coordinated checkpoints: the strips are rolled back together
    "heat-group": (["examples/heat2d.py", "--steps", "1500", "--step-ms", "1",
                    "--checkpoint-mode", "group"], "checksum="),
    # a hub group's allreduce a round, one task per node: on MPI after 16 rounds by
    # itself (CLUSTERVM_AUTO_FREEZE), thawed onto the hub by the loss
    "kmeans": (["examples/kmeans.py", "--points", "300000", "--tasks", "3"], "kmeans: clusters="),
}


SIGNALS = {"kill": [signal.SIGKILL], "stop": [signal.SIGSTOP],
           "both": [signal.SIGKILL, signal.SIGSTOP]}


def ranks_of(mark: str) -> dict[int, int]:
    """{COMM_WORLD rank: pid} of the rank processes whose environment holds CHAOS_MARK=mark
    (not nodes started later with MPI_Comm_spawn)."""
    return procs.rank_pids(f"CHAOS_MARK={mark}")


def run(cmd: list[str], timeout: float, chaos=None) -> tuple[int, str, str, float, str]:
    t0 = time.monotonic()
    mark = f"{os.getpid()}-{t0}"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "CHAOS_MARK": mark})
    events: list[str] = []
    stopped: list[int] = []
    hit: set[int] = set()
    for delay, sig, rng in sorted(chaos or [], key=lambda c: c[0]):
        time.sleep(max(0.0, delay - (time.monotonic() - t0)))
        ranks = {r: p for r, p in ranks_of(mark).items() if r > 0 and r not in hit}
        if not ranks or proc.poll() is not None:
            events.append(f"no worker to signal at {delay:.2f} s")
            continue
        rank = rng.choice(sorted(ranks))
        hit.add(rank)
        try:
            os.kill(ranks[rank], sig)
            events.append(f"{signal.Signals(sig).name} rank {rank} at {delay:.2f} s")
            if sig == signal.SIGSTOP:
                stopped.append(ranks[rank])
        except ProcessLookupError:
            events.append(f"rank {rank} gone before the signal at {delay:.2f} s")
    what = "; ".join(events)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = -999
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in ranks_of(mark).values():     # mpiexec's own session, if anything is left
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return rc, out, err, time.monotonic() - t0, what


def line(out: str, prefix: str) -> str:
    return next((ln for ln in out.splitlines() if ln.startswith(prefix)), "")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--app", choices=sorted(APPS), default="pi")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--signal", choices=sorted(SIGNALS), default="both")
    p.add_argument("--victims", type=int, default=1,
                   help="workers signalled per trial, each at its own moment (at most 2 of "
                        "the 3 workers, or the job rightly fails)")
    p.add_argument("--dir", action="store_true",
                   help="give every job a fresh --checkpoint-dir (deleted afterwards)")
    p.add_argument("run_args", nargs="*", help="extra `clustervm run` arguments (after --)")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    app, prefix = APPS[a.app]

    def command() -> tuple[list[str], str | None]:
        ckdir = tempfile.mkdtemp(prefix="cvm-chaos-") if a.dir else None
        extra = ["--checkpoint-dir", ckdir] if ckdir else []
        return [sys.executable, "-m", "clustervm", "run", "-n", "4", "--timeout",
                str(a.timeout), *extra, *a.run_args, *app], ckdir

    cmd, ckdir = command()
    try:
        rc, out, err, wall, _ = run(cmd, a.timeout + 30)
    finally:
        if ckdir:
            shutil.rmtree(ckdir, ignore_errors=True)
    expected = line(out, prefix)
    if rc != 0 or not expected:
        print(f"undisturbed run failed ({rc}):\n{out}\n{err}")
        return 1
    print(f"undisturbed: {expected} ({wall:.1f} s)", flush=True)
    fails = refused = 0
    for i in range(a.trials):
        chaos = [(rng.uniform(0, wall), rng.choice(SIGNALS[a.signal]), rng)
                 for _ in range(a.victims)]
        cmd, ckdir = command()
        try:
            rc, out, err, took, what = run(cmd, a.timeout + 30, chaos)
        finally:
            if ckdir:
                shutil.rmtree(ckdir, ignore_errors=True)
        ok = rc == 0 and line(out, prefix) == expected
        said = rc != 0 and not a.dir and a.victims > 1 and _BOTH_COPIES in err
        fails += not ok and not said
        refused += said
        verdict = "ok  " if ok else "refused (a node and its buddy lost at once)" if said \
            else "FAIL"
        print(f"trial {i}: {verdict} {what}; rc={rc} {took:.1f} s", flush=True)
        if (not ok and not said) or took > 3 * wall + 5:
            print(f"--- stdout ---\n{out}\n--- stderr (tail) ---\n{err[-3000:]}", flush=True)
    print(f"{a.trials - fails - refused}/{a.trials} trials gave the undisturbed result with "
          f"exit 0" + (f"; {refused} ended with the clear error for a node and its buddy "
                       f"lost at once (no --checkpoint-dir)" if refused else ""))
    return 1 if fails else 0


#: what a job without --checkpoint-dir says when a node and its buddy were lost at once
_BOTH_COPIES = "was on nodes that are lost at once (the node that ran it and its buddy)"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
