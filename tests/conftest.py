"""Test harness: run real clustervm jobs under mpiexec, bounded, and clean up after them.

Every job runs as ``python -m clustervm run --timeout T ...`` in its own session
(clustervm's launcher ends the job's session on timeout); a second, outer
timeout kills that session if even the launcher hangs. ``rank_pids`` finds the
rank processes of a running job (from each process's OMPI_COMM_WORLD_RANK, or
PMI_RANK under MPICH), so
failure tests can kill a given rank with a real signal.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from clustervm import procs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PY = sys.executable
MARK = "CLUSTERVM_TEST_OWNER"
JOB_MARK = "CLUSTERVM_TEST_JOB"
_job_ids = itertools.count(1)


@dataclass
class JobResult:
    rc: int
    out: str
    err: str
    elapsed: float

    def line(self, prefix: str) -> str:
        """The first output line starting with ``prefix`` (fails the test if none)."""
        for line in self.out.splitlines():
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r} in output:\n{self.out}\n"
                             f"--- stderr ---\n{self.err}")


class Checks:
    """The ``CHECK <name> <json>`` lines an app printed, one per check, by name."""

    def __init__(self, result) -> None:
        self.result = result
        self.values = {}
        for line in result.out.splitlines():
            if line.startswith("CHECK "):
                _, name, data = line.split(" ", 2)
                self.values[name] = json.loads(data)

    def __getitem__(self, name: str):
        r = self.result
        assert name in self.values, (f"check {name!r} did not report (rc {r.rc})\n"
                                     f"--- stdout ---\n{r.out}\n--- stderr ---\n{r.err}")
        value = self.values[name]
        if isinstance(value, dict) and set(value) == {"error"}:
            pytest.fail(f"check {name!r} raised in the app:\n{value['error']}")
        return value

    def assert_clean_end(self) -> None:
        """The app ran every check, exited 0, printed no traceback, left no process."""
        r = self.result
        assert r.rc == 0, f"rc {r.rc}\n--- stdout ---\n{r.out}\n--- stderr ---\n{r.err}"
        assert "ALL CHECKS RAN" in r.out
        assert "Traceback" not in r.err, r.err
        assert not _marked(os.getpid()), "the job left processes behind"


def job_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("CLUSTERVM_LOG_LEVEL", "WARNING")
    # a waiting loop yields 0.5 ms after a message, not the default 5 ms: four jobs of 4-5
    # ranks share the 2 cores here, and their yielding spins were a fifth of the suite's
    # CPU time (the code paths are the same; benchmarks and the demo keep the default)
    env.setdefault("CLUSTERVM_SPIN_MS", "0.5")
    # a host that is down holds the supervisor's restart for this long (10 s by default);
    # one that is up answers the probe in under a second here
    env.setdefault("CLUSTERVM_PROBE_TIMEOUT_S", "4")
    env[MARK] = str(os.getpid())          # finds orphans later, even re-parented ones
    env.update(extra or {})
    return env


class Job:
    """A running ``clustervm run`` job; ``own_launcher``: ``mpiexec ... python -m clustervm``
    started directly, as with a launcher of one's own (nothing watches its start or end)."""

    def __init__(self, args: list[str], n: int, timeout: float, env: dict | None = None,
                 run_args: list[str] | None = None, own_launcher: bool = False) -> None:
        self.cmd = [PY, "-m", "clustervm", "run", "-n", str(n), "--timeout", str(timeout),
                    *(run_args or []), *args]
        self.timeout = timeout
        self.t0 = time.monotonic()
        self.mark = f"{os.getpid()}-{next(_job_ids)}"
        # one host: MPI's TCP on loopback only. The suite runs two test files at a time,
        # and a multi-host test's bridge (10.77.x.254) can vanish between a spawned rank's
        # choice of interfaces and its bind (seen: a replacement node failed to start)
        local = {} if "--hostfile" in (run_args or []) else {"OMPI_MCA_btl_tcp_if_include": "lo"}
        full_env = job_env({**local, **(env or {}), JOB_MARK: self.mark})
        if own_launcher:
            assert not run_args, "options of clustervm run do not apply to a job of its own"
            from clustervm import launcher
            self.cmd, full_env = launcher.build_command(n, args[0], args[1:], env=full_env)
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=full_env,
                                     text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def rank_pids(self, wait: float = 20.0, count: int | None = None) -> dict[int, int]:
        """{rank: pid} of this job's rank processes (waits until ``count`` are up)."""
        deadline = time.monotonic() + wait
        while True:
            found = {}
            for pid, env in _procs_with(f"{JOB_MARK}={self.mark}"):
                rank = _rank_of(env)
                if rank is not None:
                    found[rank] = pid
            if found and (count is None or len(found) >= count):
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"ranks of {self.cmd} did not show up: found {found}")
            time.sleep(0.05)

    def kill_rank(self, rank: int, sig: int = signal.SIGKILL) -> int:
        pid = self.rank_pids(count=rank + 1)[rank]
        os.kill(pid, sig)
        return pid

    def wait(self, timeout: float | None = None) -> JobResult:
        limit = (timeout or self.timeout) + 20
        try:
            out, err = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"job hung past {limit:.0f} s and was killed: {self.cmd}\n"
                                 f"--- stdout ---\n{out}\n--- stderr ---\n{err}")
        return JobResult(self.proc.returncode, out, err, time.monotonic() - self.t0)

    def kill(self) -> None:
        """End every process of the job's session (SIGTERM, then SIGKILL)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [pid for pid, _ in _procs_with(f"{JOB_MARK}={self.mark}")]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)


def run_job(args: list[str], n: int = 4, timeout: float = 60.0, env: dict | None = None,
            run_args: list[str] | None = None) -> JobResult:
    """Run a job to its end and return its status and output."""
    return Job(args, n, timeout, env, run_args).wait()


def load_module(path: str | Path):
    """A test app's file as a module of its own (not the VM's app module: nothing in
    ``sys.modules`` changes), for the functions it has besides ``main``."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_app_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: A sitecustomize that makes one rank hang before MPI_Init on its job's first start (a
#: rank stuck in a stalled file system, say): rank HANG_RANK, while HANG_FLAG does not exist.
_HANG_SITE = """\
import os, time
if (os.environ.get("OMPI_COMM_WORLD_RANK") == os.environ.get("HANG_RANK")
        and not os.path.exists(os.environ["HANG_FLAG"])):
    open(os.environ["HANG_FLAG"], "w").close()
    while True:
        time.sleep(1)
"""


def hang_before_mpi_init(tmp_path: Path, rank: int) -> dict:
    """The environment that makes rank ``rank`` of a job hang before MPI_Init on the job's
    first start (its HANG_FLAG file is made then; every later start goes on)."""
    site = tmp_path / "hang-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_HANG_SITE)
    return {"PYTHONPATH": str(site), "HANG_FLAG": str(tmp_path / "hung"),
            "HANG_RANK": str(rank)}


#: Options that only pace an app (sleeps, so that a drill strikes mid-run): an
#: undisturbed run without them gives the same result, sooner.
PACING = ("--task-ms", "--step-ms")


def without_options(args: list[str], options: tuple[str, ...] = PACING) -> list[str]:
    """``args`` without each of ``options`` and the value after it."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in options:
            skip = True
        else:
            out.append(a)
    return out


def pi_line(tasks: int, samples: int, seed: int) -> str:
    """The result line of examples/pi_montecarlo.py with these arguments, computed here
    by its own task function (0.1 s for 1.5 million samples), not by a job."""
    pi = load_module(EXAMPLES / "pi_montecarlo.py")
    sizes = pi.task_sizes(samples, tasks)
    return pi.result_line(sum(pi.count_hits(i, n, seed, 0.0, 0)
                              for i, n in enumerate(sizes)), samples)


_procs_with = procs.with_env
_rank_of = procs.world_rank


#: CLUSTERVM_TEST_MPI=mpich (tests/run_mpich.sh) says which MPI this run is meant for;
#: the session stops at once if mpi4py loads another one (a wrong venv).
TEST_MPI = os.environ.get("CLUSTERVM_TEST_MPI", "").lower()
_LIBRARY_NAMES = {"openmpi": "Open MPI", "mpich": "MPICH"}


def pytest_configure(config):
    if not TEST_MPI:
        return
    if TEST_MPI not in _LIBRARY_NAMES:
        raise pytest.UsageError(f"CLUSTERVM_TEST_MPI={TEST_MPI!r}: give one of "
                                f"{', '.join(_LIBRARY_NAMES)}")
    out = subprocess.run([PY, "-c", "from clustervm.launcher import _library; "
                          "print(_library()[0])"], capture_output=True, text=True, timeout=60)
    library = out.stdout.strip()
    if _LIBRARY_NAMES[TEST_MPI] not in library:
        raise pytest.UsageError(f"CLUSTERVM_TEST_MPI={TEST_MPI} but {PY} loads "
                                f"{library or out.stderr.strip()!r}; run the tests with the "
                                f"Python of an environment that has that MPI")


#: The test files that take longest, longest first (seconds summed over their tests,
#: ``--durations=0`` under ``make test``'s -n 4 on 2026-12-02: 161, 133, 90, 82, 61, 59,
#: 53, 52, 39, 38, 35, 32). ``make test`` hands out whole files in collection order
#: (--dist loadfile --no-loadscope-reorder): these start first, and the many short files
#: fill the gaps, instead of a drill file starting last and running alone at the end.
SLOW_FILES_FIRST = (
    "test_failover.py", "test_multihost.py", "test_groups.py", "test_replacement.py",
    "test_slurm.py", "test_netns.py", "test_buddy.py", "test_group_checkpoints.py",
    "test_wire_fuzz.py", "test_lifecycle.py", "test_dashboard.py", "test_docs.py",
)


def pytest_collection_modifyitems(config, items):
    order = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))   # stable


@pytest.fixture
def job():
    """Start jobs with ``job(args, n=...)``; they are all ended after the test."""
    jobs: list[Job] = []

    def start(args: list[str], n: int = 4, timeout: float = 60.0, env: dict | None = None,
              run_args: list[str] | None = None, own_launcher: bool = False) -> Job:
        j = Job(args, n, timeout, env, run_args, own_launcher)
        jobs.append(j)
        return j

    yield start
    for j in jobs:
        if j.proc.poll() is None:
            j.kill()
            j.proc.communicate()


@pytest.fixture(autouse=True)
def no_leftovers(request):
    """Jobs must leave no process behind; shared-memory files they left are removed."""
    before = procs.shm_files()
    sessions = set(procs.session_dirs())
    own = os.getpid()
    yield
    if "mpi" not in request.keywords and "netns" not in request.keywords:
        return
    time.sleep(0.2)
    procs.remove_stale_shm(before)   # left by this test's jobs, and no live process maps them
    # a killed mpiexec's: a later one with its pid would not start
    procs.remove_stale_session_dirs(set(procs.session_dirs()) - sessions)
    orphans = _marked(own)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not orphans, f"processes left behind by the test (now killed): {orphans}"


def _marked(owner: int) -> list[int]:
    """Processes started by this pytest's jobs that are still running."""
    return [pid for pid, _ in _procs_with(f"{MARK}={owner}")]
