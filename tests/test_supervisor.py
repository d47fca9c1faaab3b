"""`clustervm run --restarts K`: a job that dies without finishing is resumed from its journal."""
import signal
import time

import pytest

from conftest import run_job

pytestmark = pytest.mark.mpi

PI = ["examples/pi_montecarlo.py", "--tasks", "16", "--samples", "1600000", "--task-ms", "250",
      "--checkpoint-every", "20000"]


@pytest.fixture(scope="module")
def undisturbed():
    r = run_job(PI[:5], n=3, timeout=90)
    assert r.rc == 0, r.err
    return r.line("hits=")


def test_coordinator_killed_job_is_restarted_from_journal(job, tmp_path, undisturbed):
    j = job(PI, n=4, timeout=120,
            run_args=["--restarts", "1", "--checkpoint-dir", str(tmp_path / "ck")])
    j.rank_pids(count=4)
    deadline = time.monotonic() + 30
    while not list((tmp_path / "ck").glob("ckpt/*.ckpt")):   # the job is under way
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    j.kill_rank(0, signal.SIGKILL)
    r = j.wait()
    assert r.rc == 0, r.err
    assert r.line("hits=") == undisturbed
    assert "restart 1 of 1" in r.err
    assert "reused from the journal" in r.err


def test_no_restart_without_the_option(job, tmp_path):
    j = job(PI, n=3, timeout=120, run_args=["--checkpoint-dir", str(tmp_path / "ck")])
    j.rank_pids(count=3)
    time.sleep(1.0)
    j.kill_rank(0, signal.SIGKILL)
    r = j.wait()
    assert r.rc != 0, "a job whose coordinator died must not report success"
    assert "hits=" not in r.out
