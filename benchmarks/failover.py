"""Failover drills: a node SIGKILLed or SIGSTOPped mid-job, and checkpoint overhead.

    .venv/bin/python benchmarks/failover.py [--repeat 3] [--dask-python PATH]

Drills (each job runs under ``clustervm run --timeout``, in its own session,
and is ended by process group if it overruns):

* **kill**: 200 tasks of 50 ms (sleeps) on 3 nodes (``-n 4``); when about
  half the tasks have started, one node (rank 2) is SIGKILLed from outside.
* **stop**: the same, but the node is SIGSTOPped (a hung node: ULFM does not
  report it, the heartbeat timeout does, default 2 s).
* **kill+replace**: the kill drill with ``--replace-failed``: a new node is
  started with MPI_Comm_spawn for the lost one.
* **kill+spare**: the kill drill with ``--spares 1`` (``-n 5``: 3 working
  nodes and a spare that takes over), the analogue of Dask's nanny or Ray's
  raylet restarting a worker.
* **heat2d**: ``examples/heat2d.py`` (256x256, 4 tasks, ``--steps 2000``:
  its default 500 steps last 0.5 s, below the noise of a loaded box) with
  ``--checkpoint-every 50`` (its default interval) against ``0``, with the
  in-memory store and with ``--checkpoint-dir`` (fsync'ed files); runs
  interleaved, medians; the time is the one heat2d prints (no start-up).
* **heat2d kill**: heat2d (4 tasks, ``--checkpoint-dir``) with node rank 2
  SIGKILLed once the first checkpoints are on disk; the checksum must be the
  undisturbed run's, and the restart time is read from the end-of-job report.
* **dask**: the kill drill on a ``distributed.LocalCluster`` (3 worker
  processes, 1 thread each, nanny on), one worker process SIGKILLed when half
  the tasks are done. Needs an interpreter where ``dask.distributed`` imports
  (``--dask-python``; skipped with a message otherwise).

Measures, on one clock (``time.time()`` in the driver, which records the
moment it sends the signal, and in the application, whose NODE_DOWN notify
callback stamps the detection): detection latency (kill -> NODE_DOWN),
restart (the loss detected -> the last of the lost node's tasks re-dispatched,
from the end-of-job report, on the coordinator's clock: no message says when a
task has started on its new node),
recovery (kill -> the last re-run task's result is in), compute time (main's
first submit to its last result) against the median undisturbed run, and
the exactness of the result (digest of every task's value).

This file is also the drill application: ``clustervm run`` loads it and runs
:func:`main` on the coordinator (the driver lives under ``__main__``).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARK = "CLUSTERVM_BENCH_JOB"
#: the end-of-job report's restart time of a lost node (Coordinator.report)
RESTART = re.compile(r"re-dispatch after loss detected: node (\d+) (\d+\.\d+) s")


# -- the drill application (runs inside clustervm) -----------------------------------

def value_of(i: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")


def sleepy(i: int, ms: float, log_path: str) -> tuple:
    """A 50 ms task: logs its start (so re-runs can be counted), sleeps, returns its value."""
    import clustervm
    rank = clustervm.context().node
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{i} {rank} {time.time()!r}\n".encode())
    finally:
        os.close(fd)
    time.sleep(ms / 1000.0)
    return i, rank, value_of(i)


def main(vm) -> None:
    import clustervm
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--task-ms", type=float, default=50.0)
    p.add_argument("--log", required=True, help="task start log (appended by the tasks)")
    p.add_argument("--out", required=True, help="JSON file for the driver")
    a = p.parse_args(vm.argv[1:])
    events: list = []

    def stamp(e: dict) -> None:
        events.append({**e, "wall": time.time()})
    vm.notify([clustervm.NODE_DOWN, clustervm.NODE_ADDED], callback=stamp)
    done = {}
    t0 = time.time()
    for i, rank, v in vm.map(sleepy, range(a.tasks), [a.task_ms] * a.tasks,
                             [a.log] * a.tasks, ordered=False):
        if i in done:
            raise SystemExit(f"task {i}: result delivered twice")
        done[i] = (time.time(), rank, v)
    t1 = time.time()
    digest = hashlib.sha256(repr(sorted((i, v) for i, (_, _, v) in done.items()))
                            .encode()).hexdigest()[:16]
    expect = hashlib.sha256(repr([(i, value_of(i)) for i in range(a.tasks)])
                            .encode()).hexdigest()[:16]
    with open(a.out, "w") as f:
        json.dump({"t0": t0, "t1": t1, "events": events, "report": vm.report(),
                   "done": {str(i): [t, r] for i, (t, r, _) in done.items()},
                   "digest": digest, "exact": digest == expect and len(done) == a.tasks}, f)
    print(f"bench: tasks={len(done)} digest={digest}", flush=True)


# -- the driver ----------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("CLUSTERVM_LOG_LEVEL", "ERROR")
    return env


def _rank_pids(mark: str) -> dict[int, int]:
    """{rank: pid} of the rank processes whose environment holds MARK=mark."""
    from clustervm import procs     # not at the top: the dask drill runs where it may be missing
    return procs.rank_pids(f"{MARK}={mark}")


def _alive(pid: int) -> bool:
    from clustervm import procs
    return procs.alive(pid)


class Job:
    """One ``clustervm run`` job in its own session, ended by process group on overrun."""

    def __init__(self, argv: list[str], n: int, timeout: float, run_args: list[str] = ()) -> None:
        self.mark = f"{os.getpid()}-{time.monotonic_ns()}"
        env = _env()
        env[MARK] = self.mark
        self.cmd = [sys.executable, "-m", "clustervm", "run", "-n", str(n), "--timeout",
                    str(timeout), *run_args, *argv]
        self.timeout = timeout
        self.t_start = time.time()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self) -> tuple[int, str, str, float]:
        try:
            out, err = self.proc.communicate(timeout=self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.end()
            out, err = self.proc.communicate()
            err += "\n[bench] job overran its timeout and was killed"
        self.sweep()
        return self.proc.returncode, out, err, time.time() - self.t_start

    def end(self) -> None:
        """SIGKILL the job's process group (its session) and any marked straggler."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.sweep()

    def sweep(self) -> None:
        for pid in _rank_pids(self.mark).values():
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def drill(tmp: str, name: str, sig: int | None, n: int = 4, run_args: list[str] = (),
          tasks: int = 200, task_ms: float = 50.0, victim: int = 2) -> dict:
    """One run of the 200x50ms job; with ``sig``, rank ``victim`` gets it at half-way."""
    log = os.path.join(tmp, f"{name}.log")
    out = os.path.join(tmp, f"{name}.json")
    for p in (log, out):
        if os.path.exists(p):
            os.unlink(p)
    job = Job([os.path.abspath(__file__), "--tasks", str(tasks), "--task-ms", str(task_ms),
               "--log", log, "--out", out], n=n, timeout=120, run_args=list(run_args))
    t_kill = None
    pid = None
    try:
        if sig is not None:
            deadline = time.monotonic() + 90
            while len(_lines(log)) < tasks // 2:
                if job.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            pid = _rank_pids(job.mark).get(victim)
            if pid is not None and job.proc.poll() is None:
                t_kill = time.time()
                os.kill(pid, sig)
        rc, stdout, stderr, wall = job.wait()
    finally:
        if job.proc.poll() is None:
            job.end()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    r = {"name": name, "rc": rc, "wall": wall, "ok": False, "err": stderr[-2000:]}
    try:
        with open(out) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return r
    r.update(ok=rc == 0 and data["exact"], compute=data["t1"] - data["t0"],
             report=data["report"], digest=data["digest"])
    if t_kill is not None:
        downs = [e for e in data["events"] if e["kind"] == "NODE_DOWN"]
        r["detect"] = downs[0]["wall"] - t_kill if downs else None
        r["how"] = downs[0].get("how") if downs else None
        r["kill_at"] = t_kill - data["t0"]
        starts: dict[str, int] = {}
        for ln in _lines(log):
            starts[ln.split()[0]] = starts.get(ln.split()[0], 0) + 1
        rerun = [i for i, c in starts.items() if c > 1]
        r["rerun"] = len(rerun)
        ends = [data["done"][i][0] for i in rerun if i in data["done"]]
        r["recover"] = (max(ends) - t_kill) if ends else None
        r["pid_gone"] = not _alive(pid) if pid else None
        m = RESTART.search(data["report"])
        r["restart"] = float(m.group(2)) if m else None
    return r


def heat2d_kill(tmp: str, steps: int, expected: str | None) -> dict:
    """heat2d (4 tasks, ``--checkpoint-dir``) with rank 2 SIGKILLed once the first
    checkpoints are on disk: its restart time (report) and whether the checksum is
    ``expected`` (the undisturbed run's; None: the undisturbed run itself, no kill)."""
    ck = tempfile.mkdtemp(dir=tmp)
    job = Job([os.path.join(ROOT, "examples", "heat2d.py"), "--checkpoint-every", "50",
               "--steps", str(steps)], n=4, timeout=180, run_args=["--checkpoint-dir", ck])
    pid = None
    if expected is not None:
        deadline = time.monotonic() + 90
        while len(glob.glob(os.path.join(ck, "ckpt", "*.ckpt"))) < 4:
            if job.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        pid = _rank_pids(job.mark).get(2)
        if pid is not None and job.proc.poll() is None:
            os.kill(pid, signal.SIGKILL)
    rc, out, err, _ = job.wait()
    check = next((ln for ln in out.splitlines() if ln.startswith("checksum=")), None)
    rep = next((ln for ln in err.splitlines() if ln.startswith("clustervm report:")), "")
    m = RESTART.search(rep)
    r = {"ok": rc == 0 and check is not None and (expected is None or check == expected),
         "check": check, "restart": float(m.group(2)) if m else None, "killed": pid is not None}
    if not r["ok"]:
        r["err"] = f"rc={rc} checksum {check!r} (expected {expected!r})\n{err[-1500:]}"
    return r


def heat2d(tmp: str, every: int, ckdir: bool, steps: int) -> float | None:
    run_args = ["--checkpoint-dir", tempfile.mkdtemp(dir=tmp)] if ckdir else []
    job = Job([os.path.join(ROOT, "examples", "heat2d.py"), "--checkpoint-every", str(every),
               "--steps", str(steps)], n=4, timeout=180, run_args=run_args)
    rc, out, err, _ = job.wait()
    for ln in out.splitlines():
        if ln.startswith("heat2d:") and rc == 0:
            return float(ln.rsplit(",", 1)[1].split()[0])
    print(f"  heat2d run failed ({rc}): {err[-500:]}", file=sys.stderr)
    return None


# -- dask ----------------------------------------------------------------------------

def _dask_task(i: int, ms: float) -> tuple:
    time.sleep(ms / 1000.0)
    return i, value_of(i)


def dask_drill(kill: bool, tasks: int = 200, task_ms: float = 50.0) -> dict:
    """Runs inside an interpreter that has dask.distributed (``--dask-drill``)."""
    import logging
    from distributed import Client, LocalCluster, as_completed
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        client.submit(_dask_task, -1, 0).result()          # warm up every code path
        pids = client.run(os.getpid)
        t0 = time.time()
        futs = client.map(_dask_task, range(tasks), [task_ms] * tasks, pure=False)
        done, t_kill = {}, None
        for f in as_completed(futs):
            i, v = f.result()
            done[i] = v
            if kill and t_kill is None and len(done) >= tasks // 2:
                victim = sorted(pids.values())[1]
                t_kill = time.time()
                os.kill(victim, signal.SIGKILL)
        t1 = time.time()
    exact = done == {i: value_of(i) for i in range(tasks)}
    return {"compute": t1 - t0, "exact": exact, "kill_at": (t_kill - t0) if t_kill else None}


def run_dask(python: str, kill: bool) -> dict | None:
    cmd = [python, os.path.abspath(__file__), "--dask-drill"] + (["--kill"] if kill else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                           start_new_session=True)
    except subprocess.TimeoutExpired:
        return None
    for ln in p.stdout.splitlines():
        if ln.startswith("{"):
            return json.loads(ln)
    print(f"  dask drill failed ({p.returncode}): {p.stderr[-800:]}", file=sys.stderr)
    return None


def _has_dask(python: str) -> bool:
    return subprocess.run([python, "-c", "import dask.distributed"], capture_output=True,
                          timeout=60).returncode == 0


# -- report --------------------------------------------------------------------------

def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def driver(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="clustervm failover drills")
    p.add_argument("--repeat", type=int, default=3, help="runs of each drill (medians)")
    p.add_argument("--dask-python", default=sys.executable,
                   help="an interpreter where dask.distributed imports (for the dask drill)")
    p.add_argument("--heat-repeat", type=int, default=5, help="runs of each heat2d variant")
    p.add_argument("--heat-steps", type=int, default=2000,
                   help="heat2d steps (its default is 500: a 0.5 s run, too short to "
                        "resolve a few per cent on a loaded box; the interval stays 50)")
    p.add_argument("--skip-heat", action="store_true")
    p.add_argument("--only-heat", action="store_true", help="only the heat2d overhead runs")
    a = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"{a.repeat} run(s) per drill, medians", flush=True)
    rows: list[tuple] = []
    fails = 0
    with tempfile.TemporaryDirectory(prefix="cvm-failover-") as tmp:
        runs: dict[str, list[dict]] = {}
        plan = [("undisturbed", None, 4, []), ("kill", signal.SIGKILL, 4, []),
                ("stop", signal.SIGSTOP, 4, []),
                ("kill+spare", signal.SIGKILL, 5, ["--spares", "1"]),
                ("kill+replace", signal.SIGKILL, 4, ["--replace-failed"])]
        if a.only_heat:
            plan = []
        for k in range(a.repeat):
            for name, sig, n, extra in plan:
                r = drill(tmp, f"{name}-{k}", sig, n, extra)
                runs.setdefault(name, []).append(r)
                if not r["ok"]:
                    fails += 1
                    print(f"  {name} run {k}: FAILED rc={r['rc']}\n{r['err']}", flush=True)
                else:
                    print(f"  {name} run {k}: compute {r['compute']:.3f} s"
                          + (f", kill at {r['kill_at']:.2f} s, detect {_f(r['detect'])} s "
                             f"({r['how']}), restart {_f(r['restart'])} s, "
                             f"recover {_f(r['recover'])} s, {r['rerun']} re-run"
                             if "detect" in r else ""), flush=True)
        base = _med(r.get("compute") for r in runs.get("undisturbed", []))
        for name, _, n, extra in plan:
            rs = runs[name]
            comp = _med(r.get("compute") for r in rs)
            # the best a VM can do: full speed until the kill, then the rest of the
            # undisturbed run's work on 2 nodes instead of 3 (a spare keeps 3)
            kill_at = _med(r.get("kill_at") for r in rs)
            bound = None
            if base and kill_at is not None:
                keeps3 = n > 4 or "--replace-failed" in extra   # a spare or a new node
                bound = (kill_at + (base - kill_at) * (1.0 if keeps3 else 1.5)) / base
            rows.append((f"clustervm {name}", f"{sum(r['ok'] for r in rs)}/{len(rs)}",
                         _f(comp), _f(comp / base if comp and base else None, "{:.2f}x"),
                         _f(bound, "{:.2f}x"),
                         _f(_med(r.get("detect") for r in rs)),
                         _f(_med(r.get("restart") for r in rs)),
                         _f(_med(r.get("recover") for r in rs)),
                         _f(_med(r.get("rerun") for r in rs), "{:.0f}")))
        heat = []
        heat_kills: list[dict] = []
        if not a.skip_heat:
            variants = (("heat2d ckpt 0 (memory)", 0, False),
                        ("heat2d ckpt 50 (memory)", 50, False),
                        ("heat2d ckpt 0 (--checkpoint-dir)", 0, True),
                        ("heat2d ckpt 50 (--checkpoint-dir)", 50, True))
            times: dict[str, list] = {v[0]: [] for v in variants}
            for _ in range(a.heat_repeat):          # interleaved: load drifts hit all alike
                for label, every, ck in variants:
                    times[label].append(heat2d(tmp, every, ck, a.heat_steps))
            for label, _, _ in variants:
                ts = times[label]
                heat.append((label, _med(ts), ts))
                print(f"  {label}: {', '.join(_f(t, '{:.2f}') for t in ts)} s", flush=True)
            # a node SIGKILLed under heat2d: restart from checkpoints, the same checksum
            base_run = heat2d_kill(tmp, a.heat_steps, None)
            if not base_run["ok"]:
                fails += 1
                print(f"  heat2d undisturbed (for the kill drill): FAILED {base_run['err']}")
            else:
                for k in range(a.repeat):
                    r = heat2d_kill(tmp, a.heat_steps, base_run["check"])
                    heat_kills.append(r)
                    if not r["ok"] or not r["killed"] or r["restart"] is None:
                        fails += 1
                        print(f"  heat2d kill run {k}: FAILED (killed {r['killed']}, restart "
                              f"{r['restart']}) {r.get('err', '')}", flush=True)
                    else:
                        print(f"  heat2d kill run {k}: restart {r['restart']:.3f} s, "
                              f"checksum undisturbed", flush=True)
        dask_rows = []
        if _has_dask(a.dask_python):
            ds: dict[str, list] = {"undisturbed": [], "kill": []}
            for _ in range(a.repeat):
                for name in ds:
                    ds[name].append(run_dask(a.dask_python, name == "kill"))
            dbase = _med(d["compute"] for d in ds["undisturbed"] if d)
            for name, rs in ds.items():
                comp = _med(d["compute"] for d in rs if d)
                ok = sum(bool(d and d["exact"]) for d in rs)
                dask_rows.append((f"dask LocalCluster {name}", f"{ok}/{len(rs)}", _f(comp),
                                  _f(comp / dbase if comp and dbase else None, "{:.2f}x"),
                                  "-", "-", "-", "-", "-"))
            rows += dask_rows
            dask_note = f"dask drill run by {a.dask_python}"
        else:
            dask_note = (f"dask drill skipped: dask.distributed does not import in "
                         f"{a.dask_python} (give --dask-python PATH)")

    head = ("drill (200 x 50 ms, 3 nodes)", "exact", "compute s", "vs undisturbed",
            "best possible", "detect s", "restart s", "recover s", "re-run")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print()
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))))
    print(f"({dask_note})")
    kill, stop = runs.get("kill", []), runs.get("stop", [])
    if base:
        print(f"\nundisturbed compute {base:.3f} s (ideal {200 * 0.05 / 3:.3f} s). 'best "
              f"possible': full speed until the kill, the rest on 2 nodes (a spare keeps 3); "
              f"detect: kill -> NODE_DOWN callback; restart: the loss detected -> the last "
              f"of the node's tasks re-dispatched (end-of-job report, coordinator's clock); "
              f"recover: kill -> last re-run task done")
    if stop:
        print(f"hung node: detection {_f(_med(r.get('detect') for r in stop))} s against a "
              f"heartbeat timeout of 2.0 s (target < 2.5 s); stopped node killed afterwards: "
              f"{all(r.get('pid_gone') for r in stop if r['ok'])}")
    if kill:
        print(f"killed node: detection {_f(_med(r.get('detect') for r in kill))} s "
              f"(target < 0.1 s) by {sorted({r.get('how') for r in kill if r.get('how')})}")
    if heat_kills:
        ok = [r for r in heat_kills if r["ok"] and r["restart"] is not None]
        print(f"heat2d 256x256, 4 tasks, node rank 2 SIGKILLed after the first checkpoints "
              f"(--checkpoint-dir): restart (loss detected -> last task re-dispatched with its "
              f"checkpoint) median {_f(_med(r['restart'] for r in ok))} s over {len(ok)}/"
              f"{len(heat_kills)} exact run(s) (target <= 0.15 s)")
    if heat:
        h = dict((lbl, t) for lbl, t, _ in heat)
        for store in ("memory", "--checkpoint-dir"):
            t0, t50 = h.get(f"heat2d ckpt 0 ({store})"), h.get(f"heat2d ckpt 50 ({store})")
            if t0 and t50:
                print(f"heat2d 256x256, {a.heat_steps} steps, 4 tasks: checkpoint overhead "
                      f"every 50 steps ({store}): {t0:.2f} s -> "
                      f"{t50:.2f} s = {100 * (t50 / t0 - 1):+.1f}% (target < 5%)")
    return 1 if fails else 0


if __name__ == "__main__":
    if "--dask-drill" in sys.argv:
        print(json.dumps(dask_drill("--kill" in sys.argv)))
        sys.exit(0)
    sys.exit(driver(sys.argv[1:]))
