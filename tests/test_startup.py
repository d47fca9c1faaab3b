"""Issue 11: a job whose start fails ends at once, with one clear line, under
``clustervm run`` and under plain mpiexec; disk errors reach the caller.

Each test below is a row of the issue's table (all hung, or failed cryptically,
on 7b478a7). A hang shows as the outer timeout of the harness firing.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from clustervm.journal import Journal

from conftest import EXAMPLES, PY, ROOT, job_env, run_job

pytestmark = pytest.mark.mpi

HELLO = str(EXAMPLES / "hello.py")
PI = str(EXAMPLES / "pi_montecarlo.py")
MPIEXEC = Path(PY).parent / "mpiexec"


def plain_mpiexec(args: list[str], n: int = 3, env: dict | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess:
    """``mpiexec -n N python -m clustervm ...`` without our launcher (bounded, then killed)."""
    full = job_env({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                    "OMPI_MCA_btl": "^ofi", **(env or {})})
    cmd = [str(MPIEXEC), "--oversubscribe", "--with-ft", "ulfm", "-n", str(n), PY, "-m",
           "clustervm", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"plain mpiexec job hung and was killed: {cmd}\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("clustervm: error: ")]
    assert lines, f"no 'clustervm: error:' line in:\n{err}"
    return lines[0]


def corrupt_journal(directory: Path) -> None:
    """A journal whose first record is damaged while a valid one follows."""
    with Journal(directory) as j:
        j.append("done", "2", [b"x" * 64])
        j.append("done", "3", [b"y" * 64])
    path = directory / "journal.log"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))


# -- checked by the launcher before mpiexec starts ----------------------------------------

def test_checkpoint_dir_under_a_file(tmp_path):
    (tmp_path / "f").touch()
    r = run_job(["--checkpoint-dir", str(tmp_path / "f" / "ck"), HELLO], n=3, timeout=30)
    assert r.rc == 2, r.err
    line = error_line(r.err)
    assert "checkpoint directory" in line and "writable" in line or "write" in line, line
    assert "Traceback" not in r.err


def test_checkpoint_dir_that_cannot_be_written(tmp_path):
    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("needs root and chattr to make a directory immutable")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode:
        pytest.skip("this file system does not take chattr +i")
    try:
        r = run_job(["--checkpoint-dir", str(ro), HELLO], n=3, timeout=30)
    finally:
        subprocess.run(["chattr", "-i", str(ro)])
    assert r.rc == 2, r.err
    assert "cannot write in the checkpoint directory" in error_line(r.err)


def test_resume_with_a_corrupt_journal(tmp_path):
    corrupt_journal(tmp_path)
    r = run_job(["--resume", str(tmp_path), HELLO], n=3, timeout=30)
    assert r.rc == 2, r.err
    line = error_line(r.err)
    assert "journal.log" in line and "damaged" in line and "Delete the directory" in line


def test_app_without_main(tmp_path):
    app = tmp_path / "n.py"
    app.write_text("x = 1\n")
    r = run_job([str(app)], n=4, timeout=30)
    assert r.rc == 2, r.err
    assert "defines no main(vm)" in error_line(r.err)
    assert "lost host" not in r.err


def test_app_with_a_syntax_error(tmp_path):
    app = tmp_path / "s.py"
    app.write_text("def main(vm):\n    return (\n")
    r = run_job([str(app)], n=3, timeout=30)
    assert r.rc == 2, r.err
    assert f"{app}, line" in error_line(r.err)


def test_resume_needs_a_journal_or_resume_or_start(tmp_path):
    r = run_job(["--resume", str(tmp_path), HELLO], n=3, timeout=30)
    assert r.rc == 2
    assert "no journal there" in error_line(r.err) and "--resume-or-start" in r.err
    fresh = tmp_path / "fresh"
    r = run_job(["--resume-or-start", str(fresh), PI, "--tasks", "4", "--samples", "20000",
                 "--seed", "1"], n=3, timeout=60)
    assert r.rc == 0, r.err
    assert "starting the job fresh" in r.err
    assert (fresh / "journal.log").exists()
    # and the second time it resumes: every task comes from the journal
    r = run_job(["--resume-or-start", str(fresh), PI, "--tasks", "4", "--samples", "20000",
                 "--seed", "1"], n=3, timeout=60)
    assert r.rc == 0, r.err
    assert "resumed: 4 finished task(s) reused" in r.err


# -- the same failures under plain mpiexec: rank 0 ends the job -------------------------

def test_plain_mpiexec_app_without_main(tmp_path):
    app = tmp_path / "n.py"
    app.write_text("x = 1\n")
    r = plain_mpiexec([str(app)], n=4)
    assert r.returncode != 0
    assert "defines no main(vm)" in error_line(r.stderr)


def test_plain_mpiexec_unwritable_checkpoint_dir(tmp_path):
    (tmp_path / "f").touch()
    r = plain_mpiexec([HELLO], env={"CLUSTERVM_CHECKPOINT_DIR": str(tmp_path / "f" / "ck")})
    assert r.returncode != 0
    assert "checkpoint directory" in error_line(r.stderr)


def test_plain_mpiexec_corrupt_journal(tmp_path):
    corrupt_journal(tmp_path)
    r = plain_mpiexec([HELLO], env={"CLUSTERVM_CHECKPOINT_DIR": str(tmp_path),
                                    "CLUSTERVM_RESUME": "1"})
    assert r.returncode != 0
    assert "damaged" in error_line(r.stderr)


def test_nodes_leave_when_the_coordinator_never_starts(tmp_path):
    """Rank 0 stuck before its loop (here: in the app's import): the nodes leave after
    the start deadline, and the job ends instead of waiting forever."""
    app = tmp_path / "stuck.py"
    app.write_text(textwrap.dedent("""\
        import os, time
        if os.environ.get("OMPI_COMM_WORLD_RANK") == "0":
            time.sleep(300)
        def main(vm):
            print("never")
    """))
    r = plain_mpiexec([str(app)], n=3, env={"CLUSTERVM_START_TIMEOUT_S": "3"}, timeout=60)
    assert r.returncode != 0
    assert "no word from the coordinator" in r.stderr
    assert "never" not in r.stdout


# -- disk errors during the job reach the caller ----------------------------------------

def test_journal_write_failure_reaches_join(tmp_path):
    """The journal becomes unwritable while a spawned task runs: vm.join raises
    CheckpointError naming the journal, instead of waiting forever."""
    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("needs root and chattr to make the journal immutable")
    probe = tmp_path / "probe"
    probe.touch()
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
        pytest.skip("this file system does not take chattr +i")
    subprocess.run(["chattr", "-i", str(probe)])
    ck = tmp_path / "ck"
    app = tmp_path / "ro_app.py"
    app.write_text(textwrap.dedent("""\
        import subprocess, sys
        import clustervm

        def worker(ctx):
            ctx.recv(tag=1)
            return 42

        def main(vm):
            ckdir = vm.argv[1]
            [t] = vm.spawn(worker)
            subprocess.run(["chattr", "+i", ckdir + "/journal.log"], check=True)
            try:
                vm.send(t, 1, "go")
                try:
                    print("JOINED", vm.join(t, timeout=30))
                except clustervm.CheckpointError as exc:
                    print("CHECKPOINT ERROR", exc)
            finally:
                subprocess.run(["chattr", "-i", ckdir + "/journal.log"])
    """))
    r = run_job(["--checkpoint-dir", str(ck), str(app), str(ck)], n=3, timeout=60)
    subprocess.run(["chattr", "-i", str(ck / "journal.log")])
    assert r.rc == 0, r.err
    assert "CHECKPOINT ERROR" in r.out, r.out + r.err
    assert "journal" in r.out and "could not be written" in r.out
