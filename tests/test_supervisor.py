"""`clustervm run --restarts K`: a job that dies without finishing is resumed from its journal."""
import signal
import time

import pytest

from conftest import run_job

pytestmark = pytest.mark.mpi

PI = ["examples/pi_montecarlo.py", "--tasks", "16", "--samples", "1600000", "--task-ms", "250",
      "--checkpoint-every", "20000"]


def wait_under_way(j, ckdir, timeout: float = 60.0) -> None:
    """Until the job's first checkpoint is on disk (its ranks are past MPI_Init)."""
    deadline = time.monotonic() + timeout
    while not list(ckdir.glob("ckpt/*.ckpt")):
        assert j.proc.poll() is None, "the job ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint in {ckdir} within {timeout:.0f} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def undisturbed():
    r = run_job(PI[:5], n=3, timeout=90)
    assert r.rc == 0, r.err
    return r.line("hits=")


def test_coordinator_killed_job_is_restarted_from_journal(job, tmp_path, undisturbed):
    j = job(PI, n=4, timeout=120,
            run_args=["--restarts", "1", "--checkpoint-dir", str(tmp_path / "ck")])
    j.rank_pids(count=4)
    wait_under_way(j, tmp_path / "ck")
    j.kill_rank(0, signal.SIGKILL)
    r = j.wait()
    assert r.rc == 0, r.err
    assert r.line("hits=") == undisturbed
    assert "restart 1 of 1" in r.err
    assert "reused from the journal" in r.err


def test_no_restart_without_the_option(job, tmp_path):
    j = job(PI, n=3, timeout=120, run_args=["--checkpoint-dir", str(tmp_path / "ck")])
    j.rank_pids(count=3)
    wait_under_way(j, tmp_path / "ck")     # past MPI_Init: a kill there is restarted anyway
    j.kill_rank(0, signal.SIGKILL)
    r = j.wait()
    assert r.rc != 0, "a job whose coordinator died must not report success"
    assert "hits=" not in r.out
