"""The core path on MPICH (PyPI ``mpich`` wheel): no ULFM, failures found by heartbeats.

Runs only under ``tests/run_mpich.sh`` (a separate venv with ``mpi4py mpich``, and
``CLUSTERVM_TEST_MPI=mpich``; conftest stops the session if that Python loads another
MPI). Elsewhere every test here is skipped with that reason.

What MPICH 5.0.2's mpiexec (Hydra) does differently, measured here (docs/mpis.md):

* ``-disable-auto-cleanup`` (the launcher passes it) does not stop Hydra's *proxy* (one
  per host) from SIGKILLing every rank of its host as soon as it reaps a rank that died
  of a signal. So a killed rank takes its whole host down with it: on one host that is
  the whole job (the supervisor, ``--restarts``, resumes it from the journal); across
  hosts the other hosts' ranks live on and our heartbeats declare the lost ones dead.
* Hydra sends SIGUSR1 to a host's ranks whenever one ends; the runtime ignores it
  under MPICH (it used to end them, or dump every stack).
* mpi4py's ``ERR_PROC_FAILED`` is ``ERR_UNKNOWN`` there; ``Ack_failed``/``Get_failed``
  return nothing failed, ``Revoke`` raises NotImplementedError: the transport's
  failure query must cope, and only heartbeats find dead nodes.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from conftest import EXAMPLES, MARK, PY, ROOT, TEST_MPI, run_job

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(TEST_MPI != "mpich",
                       reason="MPICH tests: run tests/run_mpich.sh (a venv with the mpich "
                              "wheel; CLUSTERVM_TEST_MPI=mpich)"),
]

PI = str(EXAMPLES / "pi_montecarlo.py")
HEAT = str(EXAMPLES / "heat2d.py")
PI_ARGS = ["--tasks", "12", "--samples", "1200000", "--seed", "7"]
DRILL_ARGS = PI_ARGS + ["--task-ms", "1500", "--checkpoint-every", "20000"]
HEAT_ARGS = ["--size", "64", "--steps", "200", "--tasks", "3", "--checkpoint-every", "20"]

_baselines: dict[tuple, str] = {}


def baseline(app: str, args: list[str], prefix: str) -> str:
    key = (app, tuple(args))
    if key not in _baselines:
        res = run_job([app, *args], n=2, timeout=120)
        assert res.rc == 0, f"{res.out}\n{res.err}"
        _baselines[key] = res.line(prefix)
    return _baselines[key]


def test_info_reports_mpich_without_ulfm():
    out = subprocess.run([PY, "-m", "clustervm", "info"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert info["library"].startswith("MPICH"), info
    assert info["flavor"] == "mpich", info
    assert info["ulfm"].startswith("no (mpich mpiexec; failures found by heartbeat only)"), info
    assert info["thread_level"].startswith("MPI_THREAD_MULTIPLE"), info
    assert info["mpiexec"] == os.path.join(os.path.dirname(PY), "mpiexec"), info


def test_command_line_is_hydras():
    out = subprocess.run([PY, "-m", "clustervm", "run", "-n", "3", "--dry-run", "--heartbeat",
                          "3", "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout
    assert "-disable-auto-cleanup" in line and "--with-ft" not in line, line
    assert "-genv CLUSTERVM_HEARTBEAT_S 3" in line, line     # reaches every rank, also remote
    assert "oob_tcp_keepalive" not in line, line               # Open MPI only
    assert line.rstrip().endswith("-n 3 " + shlex.quote(PY) + " -m clustervm app.py"), line


def test_hello():
    res = run_job([str(EXAMPLES / "hello.py")], n=4, timeout=60)
    assert res.rc == 0, res.err
    assert len(re.findall(r"^hello from node rank \d", res.out, re.MULTILINE)) == 3, res.out
    assert "SIGUSR" not in res.err and "Thread 0x" not in res.err, res.err   # no stack dumps


def test_examples_give_the_same_result_on_any_number_of_nodes():
    for app, args, prefix in ((PI, PI_ARGS, "hits="), (HEAT, HEAT_ARGS, "checksum=")):
        res = run_job([app, *args], n=4, timeout=120)
        assert res.rc == 0, res.err
        assert res.line(prefix) == baseline(app, args, prefix)


def test_add_nodes_without_spawn_carries_on():
    """Hydra's MPI_Comm_spawn failed the whole job here, so on MPICH add_nodes starts no
    node: it says why and the job goes on with the nodes it has."""
    res = run_job([str(ROOT / "tests" / "apps" / "add_nodes_app.py")], n=2, timeout=60)
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("added:") == "added: 0 nodes=2"
    assert res.line("ring:") == "ring: 0 1 2 3 4 5"
    assert "MPI_Comm_spawn is used with Open MPI only" in res.err, res.err


def test_transport_failure_query_without_ulfm():
    """MPICH has no ULFM: the ULFM calls the transport makes must not break it."""
    code = r"""
from mpi4py import MPI
from clustervm.transport import Transport, is_failure
t = Transport(MPI.COMM_WORLD)
t._note_failures()                       # Ack_failed + Get_failed
try:
    MPI.COMM_WORLD.Revoke()
    revoke = "ok"
except NotImplementedError:
    revoke = "NotImplementedError"
except MPI.Exception as e:
    revoke = "MPI.Exception %d" % e.Get_error_class()
print(sorted(t.failed), revoke, MPI.ERR_PROC_FAILED == MPI.ERR_UNKNOWN)
"""
    mpiexec = os.path.join(os.path.dirname(PY), "mpiexec")
    out = subprocess.run([mpiexec, "-n", "1", PY, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    failed, revoke, unknown = out.stdout.split()
    assert failed == "[]", out.stdout
    print(f"\nRevoke: {revoke}; ERR_PROC_FAILED is ERR_UNKNOWN: {unknown}")


def test_exit_is_not_held_by_a_peer_that_left_without_finalizing():
    """MPICH's MPI_Finalize waits in a PMI barrier for every rank; one that ended without
    finalizing left the others there for good, and mpi4py's Finalize keeps the GIL, so
    the exit watchdog could not run (a CI job hung this way after heat2d's result).
    runtime._exit finalizes with the GIL released: its watchdog ends the rank in time,
    with the status it was given."""
    code = r"""
import os
from mpi4py import MPI
from clustervm import runtime
rank = MPI.COMM_WORLD.Get_rank()
MPI.COMM_WORLD.Barrier()
if rank == 1:
    os._exit(0)                  # gone without MPI_Finalize
runtime._exit(7 if rank == 0 else 0)
"""
    mpiexec = os.path.join(os.path.dirname(PY), "mpiexec")
    t0 = time.monotonic()
    out = subprocess.run([mpiexec, "-disable-auto-cleanup", "-n", "3", PY, "-c", code],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert out.returncode == 7, (out.returncode, out.stdout, out.stderr)
    assert elapsed < 30, f"{elapsed:.1f} s: the watchdog did not end the ranks"


def _wait_for_checkpoint(j, ckdir, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not glob.glob(str(ckdir / "ckpt" / "*")):
        assert j.proc.poll() is None, j.wait()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_killed_node_on_one_host_restarts_from_the_journal(job, tmp_path):
    """Hydra's proxy SIGKILLs the host's other ranks (the coordinator too) once it reaps
    the killed one: the job dies, and --restarts resumes it from the journal."""
    ck = tmp_path / "ck"
    j = job([PI, *DRILL_ARGS], n=4, timeout=120,
            run_args=["--restarts", "1", "--checkpoint-dir", str(ck)])
    j.rank_pids(count=4)
    _wait_for_checkpoint(j, ck)
    t_kill = time.monotonic()
    j.kill_rank(2, signal.SIGKILL)
    r = j.wait()
    assert r.rc == 0, r.err
    assert r.line("hits=") == baseline(PI, PI_ARGS, "hits=")
    assert "restart 1 of 1 from the journal" in r.err, r.err
    print(f"\nkilled node, one host: result {time.monotonic() - t_kill:.2f} s after the kill")


# ------------------------------------------------------------------ several hosts


def _netns_ok():
    from clustervm.testing import netns
    return netns.available()


def _hydra_args(hosts) -> list[str]:
    """Hydra over the test hosts: its ssh launcher through their rsh agent; the proxies
    in the hosts connect back to mpiexec at the bridge's address."""
    return ["-launcher", "ssh", "-launcher-exec", hosts.rsh_agent, "-localhost", hosts.gateway]


@pytest.fixture
def two_hosts():
    ok, why = _netns_ok()
    if not ok:
        pytest.skip(why)
    from clustervm.testing.netns import TestHosts
    with TestHosts(2) as h:
        yield h
    assert not h.leftovers()


def _start(hosts, tmp_path, app: list[str], *run_args: str, timeout: float = 120):
    hostfile = hosts.hostfile(2, tmp_path / "hostfile")   # rewritten as host:2 for Hydra
    cmd = [PY, "-m", "clustervm", "run", "--hostfile", hostfile,
           "--mpi-arg", shlex.join(_hydra_args(hosts)), "--timeout", str(timeout),
           *run_args, *app]
    return hosts.start_job(cmd, timeout=timeout + 30, cwd=str(ROOT),
                           env={MARK: str(os.getpid()), "CLUSTERVM_LOG_LEVEL": "WARNING"})


def test_two_hosts_nodes_and_placement(two_hosts, tmp_path):
    res = _start(two_hosts, tmp_path, [str(ROOT / "tests" / "multihost_app.py"), "2"]).wait()
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    got = json.loads(next(ln for ln in res.stdout.splitlines()
                          if ln.startswith("multihost=")).split("=", 1)[1])
    assert {h for _, h in got["nodes"]} == set(two_hosts.hostnames), got
    for h, ran_on in got["placed"].items():
        assert ran_on == [h] * 4, got
    assert got["sum"] == got["expect"], got


def test_killed_host_is_survived_in_place_by_heartbeat(two_hosts, tmp_path, record_property):
    """The rank processes of host 1 (not the coordinator's) SIGKILLed: nothing tells
    the survivors; heartbeats declare the two nodes dead and their tasks run elsewhere.
    mpiexec then ends with the killed rank's status; done.json says the job finished."""
    from clustervm.testing.netns import _comm, _signal_all
    ck = tmp_path / "ck"
    job = _start(two_hosts, tmp_path, [PI, *DRILL_ARGS], "--checkpoint-dir", str(ck))
    deadline = time.monotonic() + 60
    while not glob.glob(str(ck / "ckpt" / "*")):
        assert job.running(), str(job.wait())
        assert time.monotonic() < deadline, job.wait(timeout=0)
        time.sleep(0.05)
    ranks = [p for p in two_hosts.pids(1) if _comm(p).startswith("python")]
    assert len(ranks) == 2, [(p, _comm(p)) for p in two_hosts.pids(1)]
    t_kill = time.monotonic()
    _signal_all(ranks, signal.SIGKILL)
    detected = None
    while job.running():
        if detected is None and "lost: heartbeat" in job.output()[1]:
            detected = time.monotonic() - t_kill
        time.sleep(0.05)
    res = job.wait()
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    assert [ln for ln in res.stdout.splitlines() if ln.startswith("hits=")] == \
        [baseline(PI, PI_ARGS, "hits=")], res
    assert len(re.findall(rf"host {two_hosts.hostnames[1]}, pid \d+\) lost: heartbeat",
                          res.stderr)) == 2, res
    assert "restart" not in res.stderr.replace("clustervm report", ""), res
    print(f"\nMPICH, host's ranks killed: heartbeat loss logged {detected} s after the kill; "
          f"job ended {time.monotonic() - t_kill:.2f} s after it")
    record_property("heartbeat_detect_s", detected)


# ------------------------------------------------------------------ frozen groups

FROZEN = str(ROOT / "tests" / "apps" / "frozen_iter.py")
FROZEN_ARGS = ["--steps", "30", "--step-ms", "150"]


@pytest.mark.parametrize("case", ["restarts", "restarts-member-checkpoints", "no-restarts"])
def test_frozen_group_with_a_killed_member(job, tmp_path, case):
    """Issue 15, MPICH (no ULFM, no revoke): a member of a frozen group SIGKILLed. Hydra
    then kills every rank of its host, so on one host the job is lost whatever the group
    does: with --restarts it runs again from the journal and gives the undisturbed
    result, if the members checkpoint outside the group's rounds (here: never); members
    restored from checkpoints taken inside the group end with a GroupError that says so
    (groups are not in the journal); without --restarts the job ends at once, not
    zero. Never a hang."""
    from test_failover import ckpt_files
    ck = tmp_path / "ck"
    every = "2" if case == "restarts-member-checkpoints" else "0"
    args = [FROZEN, *FROZEN_ARGS, "--checkpoint-every", every]
    run_args = ["--checkpoint-dir", str(ck)]
    if case != "no-restarts":
        run_args += ["--restarts", "1"]
    j = job(args, n=4, timeout=90, run_args=run_args)
    j.rank_pids(count=4)
    deadline = time.monotonic() + (30 if every != "0" else 2.0)
    while every == "0" or len(ckpt_files(ck)) < 3:
        assert j.proc.poll() is None, j.wait()
        if time.monotonic() > deadline:
            assert every == "0", "no checkpoints"
            break                         # mid-loop (30 steps of 150 ms)
        time.sleep(0.05)
    t_kill = time.monotonic()
    j.kill_rank(2, signal.SIGKILL)
    r = j.wait()
    took = time.monotonic() - t_kill
    if case == "restarts":
        assert r.rc == 0, r.err
        base = run_job([FROZEN, *FROZEN_ARGS], n=4, timeout=90)
        assert base.rc == 0, base.err
        assert r.line("frozen-iter:") == base.line("frozen-iter:")
        assert "restart 1 of 1 from the journal" in r.err, r.err
    elif case == "restarts-member-checkpoints":
        assert r.rc != 0 and "frozen-iter:" not in r.out, r.out
        assert "GroupError" in r.err and "not in the groups it had joined" in r.err, r.err
    else:
        assert r.rc != 0 and "frozen-iter:" not in r.out, r.out
    assert took < 60, f"{case}: the job took {took:.1f} s after the kill"
    print(f"\nMPICH frozen group, {case}: rc {r.rc}, {took:.1f} s after the kill")
