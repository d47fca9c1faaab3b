"""Soak: every example, again and again, with random faults, for as long as you say.

    python tools/soak.py --minutes 30 [--seed 1] [--apps pi,heat2d,...] [--timeout 120]

Each run picks a random example (pi, heat2d, samplesort, kmeans, wordcount)
and the next fault in turn: SIGKILL or SIGSTOP of a random worker rank, SIGKILL of rank 0 (the
coordinator; the job is then resumed with ``--resume-or-start DIR``), or none. Every
job runs with ``--checkpoint-dir`` under a timeout, in its own session, and
everything it leaves is killed afterwards (by process group and by the mark in
its environment, never by name). A run is *exact* when it (or its resume)
prints the undisturbed result line with exit status 0; *failed* when it ends
otherwise; *hung* when its timeout fired. The resident memory of every rank is
sampled every 0.5 s; the largest growth of one rank within a run (from its
first sample past a quarter of the run to its last) is reported.

Prints one line per run, then
``soak runs=<int> faults=<int> exact=<int> failed=<int> hung=<int> max_rank_rss_growth_mb=<float>
long_job_rss_growth_mb=<float>`` (the last: a rank's growth over the second half of one
long undisturbed job of small tasks, ``--memory-s``);
exit status 1 if any run failed or hung.
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
import threading
import time

from clustervm import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: example -> (arguments, prefix of its result line)
APPS = {
    "pi": (["examples/pi_montecarlo.py", "--tasks", "24", "--task-ms", "150"], "hits="),
    "heat2d": (["examples/heat2d.py", "--steps", "1500", "--step-ms", "1"], "checksum="),
    "samplesort": (["examples/samplesort.py", "--n", "2000000", "--tasks", "4"], "sorted="),
    "kmeans": (["examples/kmeans.py", "--points", "200000", "--tasks", "4"],
               "kmeans: clusters="),
    "wordcount": (["examples/wordcount.py"], "wordcount: words="),
}
FAULTS = ["kill-node", "stop-node", "kill-rank0", "none"]
RANKS = 4
RSS_PERIOD_S = 0.5


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return None


class Job:
    """One ``clustervm run``, bounded; its ranks found by a mark in their environment."""

    def __init__(self, args: list[str], timeout: float) -> None:
        self.mark = f"{os.getpid()}-{time.monotonic()}"
        self.timeout = timeout
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clustervm", "run", "-n", str(RANKS), "--timeout",
             str(timeout), *args], cwd=ROOT, text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env={**os.environ, "SOAK_MARK": self.mark, "CLUSTERVM_LOG_LEVEL": "ERROR"})
        self.samples: dict[int, list[tuple[float, float]]] = {}
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def ranks(self) -> dict[int, int]:
        return procs.rank_pids(f"SOAK_MARK={self.mark}")

    def _sample(self) -> None:
        while self._sampling and self.proc.poll() is None:
            now = time.monotonic() - self.t0
            for rank, pid in self.ranks().items():
                rss = _rss_mb(pid)
                if rss is not None:
                    self.samples.setdefault(rank, []).append((now, rss))
            time.sleep(RSS_PERIOD_S)

    def rss_growth_mb(self) -> float:
        """The largest growth of one rank's memory past the first quarter of the run."""
        worst = 0.0
        for series in self.samples.values():
            if len(series) < 4:
                continue
            end = series[-1][0]
            later = [rss for t, rss in series if t >= end / 4]
            if len(later) >= 2:
                worst = max(worst, later[-1] - later[0])
        return worst

    def wait(self) -> tuple[int | None, str, str]:
        """(exit status or None if hung, stdout, stderr); nothing of the job is left after."""
        try:
            out, err = self.proc.communicate(timeout=self.timeout + 30)
            rc: int | None = self.proc.returncode
        except subprocess.TimeoutExpired:
            out, err, rc = "", "", None
        finally:
            self._sampling = False
            self.end()
        if rc is None:
            out, err = self.proc.communicate()
        return rc, out, err

    def end(self) -> None:
        for pid in self.ranks().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def result_line(out: str, prefix: str) -> str:
    return next((ln for ln in out.splitlines() if ln.startswith(prefix)), "")


def one_run(app: str, fault: str, expected: str, wall: float, rng: random.Random,
            timeout: float) -> tuple[str, str, float]:
    """(outcome, what happened, rss growth): outcome is exact, failed or hung."""
    args, prefix = APPS[app]
    ck = tempfile.mkdtemp(prefix="clustervm-soak-")
    try:
        job = Job(["--checkpoint-dir", ck, *args], timeout)
        what = fault
        stopped: list[int] = []
        if fault != "none":
            # in the first half of the undisturbed run's time: a run can be much faster
            # than the undisturbed one on a loaded box, and a fault after the end tests nothing
            delay = rng.uniform(0.1, max(0.2, wall * 0.5))
            ranks: dict[int, int] = {}
            while job.proc.poll() is None and (time.monotonic() - job.t0 < delay
                                               or len(ranks) < RANKS):
                ranks = job.ranks()
                time.sleep(0.02)
            delay = time.monotonic() - job.t0
            workers = sorted(r for r in ranks if r > 0)
            if fault == "kill-rank0" and 0 in ranks:
                try:
                    os.kill(ranks[0], signal.SIGKILL)
                    what = f"SIGKILL rank 0 at {delay:.2f} s"
                except ProcessLookupError:
                    what = "rank 0 gone before the signal"
            elif fault in ("kill-node", "stop-node") and workers:
                rank = rng.choice(workers)
                sig = signal.SIGKILL if fault == "kill-node" else signal.SIGSTOP
                try:
                    os.kill(ranks[rank], sig)
                    if sig == signal.SIGSTOP:
                        stopped.append(ranks[rank])
                    what = f"{signal.Signals(sig).name} rank {rank} at {delay:.2f} s"
                except ProcessLookupError:
                    what = f"rank {rank} gone before the signal"
            else:
                what = f"{fault}: the job had ended at {delay:.2f} s"
        rc, out, err = job.wait()
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        growth = job.rss_growth_mb()
        if rc is None:
            return "hung", what, growth
        got = result_line(out, prefix)
        if fault == "kill-rank0" and (rc != 0 or got != expected):
            # the coordinator died: the job ends (status 3 on the nodes); resume it
            what += f"; rc={rc}, resumed"
            # (--resume-or-start: rank 0 may have died before it made the journal)
            job = Job(["--resume-or-start", ck, *args], timeout)
            rc, out, err = job.wait()
            growth = max(growth, job.rss_growth_mb())
            if rc is None:
                return "hung", what, growth
            got = result_line(out, prefix)
        if rc == 0 and got == expected:
            return "exact", what, growth
        return "failed", f"{what}; rc={rc}; got {got!r}\n{err[-2000:]}", growth
    finally:
        shutil.rmtree(ck, ignore_errors=True)


def memory_run(seconds: float, timeout: float) -> float:
    """One long undisturbed job of many small tasks: the largest growth of a rank's memory
    over the second half of it (a leak per task or per message shows there)."""
    tasks = max(100, int(seconds * 1000 / 4 * (RANKS - 1)))   # 4 ms tasks on 3 workers
    job = Job(["examples/pi_montecarlo.py", "--tasks", str(tasks), "--samples", str(tasks),
               "--task-ms", "4"], max(timeout, seconds * 3))
    rc, out, _ = job.wait()
    worst = 0.0
    for rank, series in sorted(job.samples.items()):
        end = series[-1][0]
        half = [rss for t, rss in series if t >= end / 2]
        growth = half[-1] - half[0] if len(half) >= 2 else 0.0
        worst = max(worst, growth)
        print(f"memory: rank {rank} {series[0][1]:.0f} -> {series[-1][1]:.0f} MB over "
              f"{end:.0f} s, second half {growth:+.1f} MB ({tasks} tasks, rc {rc})", flush=True)
    return worst


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long to keep going")
    p.add_argument("--runs", type=int, default=0, help="stop after this many runs (0: no cap)")
    p.add_argument("--apps", default=",".join(APPS), help="comma-separated examples")
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated faults")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per job")
    p.add_argument("--memory-s", type=float, default=60.0,
                   help="then one undisturbed job this long, its ranks' memory watched")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    apps = [x for x in a.apps.split(",") if x]
    faults = [x for x in a.faults.split(",") if x]
    unknown = [x for x in apps if x not in APPS] + [x for x in faults if x not in FAULTS]
    if unknown:
        p.error(f"unknown app or fault {unknown}; apps: {list(APPS)}, faults: {FAULTS}")
    baseline: dict[str, tuple[str, float]] = {}
    for app in apps:
        t0 = time.monotonic()
        job = Job(APPS[app][0], a.timeout)
        rc, out, err = job.wait()
        expected = result_line(out, APPS[app][1])
        if rc != 0 or not expected:
            print(f"undisturbed {app} failed (rc {rc}):\n{out}\n{err[-2000:]}", flush=True)
            return 1
        baseline[app] = (expected, time.monotonic() - t0)
        print(f"undisturbed {app}: {expected} ({baseline[app][1]:.1f} s)", flush=True)
    end = time.monotonic() + a.minutes * 60
    counts = {"exact": 0, "failed": 0, "hung": 0}
    runs = faults_done = 0
    worst = 0.0
    while time.monotonic() < end and (not a.runs or runs < a.runs):
        app, fault = rng.choice(apps), faults[runs % len(faults)]   # each fault in turn
        expected, wall = baseline[app]
        t0 = time.monotonic()
        outcome, what, growth = one_run(app, fault, expected, wall, rng, a.timeout)
        runs += 1
        faults_done += what.startswith("SIG")    # a fault that was delivered
        counts[outcome] += 1
        worst = max(worst, growth)
        print(f"run {runs}: {outcome:6s} {app:10s} {what} ({time.monotonic() - t0:.1f} s, "
              f"rss +{growth:.1f} MB)", flush=True)
    flat = memory_run(a.memory_s, a.timeout) if a.memory_s > 0 else 0.0
    print(f"soak runs={runs} faults={faults_done} exact={counts['exact']} "
          f"failed={counts['failed']} hung={counts['hung']} "
          f"max_rank_rss_growth_mb={worst:.1f} long_job_rss_growth_mb={flat:.1f}", flush=True)
    return 1 if counts["failed"] or counts["hung"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
