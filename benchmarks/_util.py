"""Shared helpers of the benchmarks: run bounded jobs, take medians."""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from clustervm import procs

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent


def mpi_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_btl", "^ofi")
    env.update(extra or {})
    return env


def run(cmd: list[str], timeout: float = 120.0, env: dict | None = None) -> tuple[int, str, str, float]:
    """Run a command in its own session; kill the session if it outlives ``timeout``."""
    t0 = time.perf_counter()
    env = mpi_env(env)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        procs.remove_stale_session_dirs([proc.pid], procs.session_base(env))  # a killed mpiexec's
        raise SystemExit(f"benchmark job hung past {timeout} s: {' '.join(cmd)}\n{out}\n{err}")
    try:
        os.killpg(proc.pid, signal.SIGKILL)     # whatever the job left in its session
    except (ProcessLookupError, PermissionError):
        pass
    procs.remove_stale_session_dirs([proc.pid], procs.session_base(env))  # a killed mpiexec's
    return proc.returncode, out, err, time.perf_counter() - t0


def clustervm(n: int, app: str, *args: str, timeout: float = 120.0, run_args: tuple = (),
              env: dict | None = None) -> tuple[int, str, str, float]:
    return run([PY, "-m", "clustervm", "run", "-n", str(n), "--timeout", str(timeout),
                *run_args, app, *args], timeout + 30, env)


def mpiexec(n: int, *args: str, timeout: float = 60.0) -> tuple[int, str, str, float]:
    return run([str(BIN / "mpiexec"), "--oversubscribe", "--bind-to", "none", "-n", str(n),
                *args], timeout)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def parse(out: str, prefix: str) -> dict[str, str]:
    """key=value pairs of the first line starting with ``prefix``."""
    for line in out.splitlines():
        if line.startswith(prefix):
            return dict(kv.split("=", 1) for kv in line[len(prefix):].split() if "=" in kv)
    raise SystemExit(f"no line {prefix!r} in output:\n{out}")
