"""clustervm jobs across 3 simulated hosts (network namespaces), and whole hosts lost.

Each test makes 3 hosts with :class:`clustervm.testing.netns.TestHosts` (2 slots each,
so ranks 0-1 on host 0 with the coordinator, 2-3 on host 1, 4-5 on host 2) and runs
``clustervm run --hostfile F --mpi-arg '<the hosts' rsh agent and interfaces>' app``
exactly as a user would; mpiexec runs outside the hosts and starts one prted per host
through the agent, so MPI traffic between hosts crosses the veth links.

Host failure is always injected on host 2 (never the coordinator's):

* ``kill_host``: every process of the host SIGKILLed, its prted included.  PRRTE then
  ends the whole job at once; ``clustervm run`` (its supervisor) probes the hosts, which
  all answer again (the namespace lives on, like a rebooted machine), and resumes the job
  from its journal: finished tasks are reused and running ones restart from their
  checkpoints.
* ``cut_link``: the host's veth set down (packets dropped, no error anywhere).  Our
  heartbeats declare its nodes dead after ``heartbeat_s`` (2 s) and the job goes on
  without them; PRRTE's keepalive (5 + 3 x 2 s, set by the launcher) declares its daemon
  lost ~10 s after the cut and ends the whole job, unless main has finished by then.
  Either the job finished in place (done.json written: exit 0 whatever mpiexec says) or
  the supervisor restarts it on the 2 hosts that still answer.
* ``kill_ranks`` on two hosts in sequence (daemons alive): ULFM reports each loss in
  milliseconds and the job goes on in place with the coordinator's host alone; the exit
  path (no MPI_Finalize after failures, no Comm_dup) must still end the job with 0.

Every test checks the exact result line against an undisturbed single-host run, exit
status 0, and that nothing of the job is left in the hosts (``JobResult.leftovers``).
Timings are printed and recorded (``record_property``), never asserted: the box is shared.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest

from clustervm import launcher
from clustervm.testing import netns
from clustervm.testing.netns import TestHosts
from conftest import (EXAMPLES, MARK, ROOT, hang_before_mpi_init, pi_line, run_job,
                      without_options)
from ring_drills import RING, ranks_with_checkpoints
from ring_drills import expected as ring_expected

_OK, _WHY = netns.available()
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
PY = sys.executable

pytestmark = [
    pytest.mark.netns,
    pytest.mark.mpi,
    pytest.mark.skipif(not _OK, reason=_WHY or "network namespaces unavailable"),
    pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK), reason=f"no mpiexec at {MPIEXEC}"),
]

APP = str(ROOT / "tests" / "multihost_app.py")
PI = str(EXAMPLES / "pi_montecarlo.py")
HEAT = str(EXAMPLES / "heat2d.py")
PI_ARGS = ["--tasks", "15", "--samples", "1500000", "--seed", "7", "--task-ms", "1500",
           "--checkpoint-every", "20000"]
# 5 strips: one per worker node, so host 2 always holds some (ranks 4 and 5)
HEAT_ARGS = ["--size", "64", "--steps", "400", "--tasks", "5", "--checkpoint-every", "20",
             "--step-ms", "20"]
APPS = {"pi": (PI, PI_ARGS, "hits="), "heat2d": (HEAT, HEAT_ARGS, "checksum=")}
JOB_TIMEOUT = 150.0
VICTIM = 2                      # host index of the failures: ranks 4 and 5

_baselines: dict[str, str] = {}


def baseline(name: str) -> str:
    """The result line of the app on one host (4 ranks, no hostfile), once per module."""
    if name not in _baselines:
        app, args, prefix = APPS[name]
        res = run_job([app, *without_options(args)], n=4, timeout=120)
        assert res.rc == 0, f"single-host run failed ({res.rc}):\n{res.out}\n{res.err}"
        _baselines[name] = res.line(prefix)
    return _baselines[name]


def result_line(out: str, prefix: str) -> str:
    """The last line starting with ``prefix`` (a job restarted after main printed its
    result but before done.json was written prints it twice, both exact)."""
    lines = [ln for ln in out.splitlines() if ln.startswith(prefix)]
    assert lines, f"no {prefix!r} line in:\n{out}"
    assert len(set(lines)) == 1, lines
    return lines[-1]


@pytest.fixture
def hosts(record_property):
    with TestHosts(3) as h:
        yield h
    assert not h.leftovers(), h.leftovers()
    assert not h.down_problems, h.down_problems


def start(hosts: TestHosts, tmp_path: Path, app: list[str], *run_args: str,
          timeout: float = JOB_TIMEOUT, env: dict | None = None) -> netns.Job:
    """``clustervm run --hostfile ... app`` over the test hosts (bounded; see netns.Job).
    ``env``: more variables, exported to every rank."""
    hostfile = hosts.hostfile(2, tmp_path / "hostfile")
    exported = [a for name in (env or {}) for a in ("-x", name)]
    cmd = [PY, "-m", "clustervm", "run", "--hostfile", hostfile,
           "--mpi-arg", shlex.join(hosts.mpiexec_args() + exported), "--timeout", str(timeout),
           *run_args, *app]
    return hosts.start_job(cmd, timeout=timeout + 30, cwd=str(ROOT),
                           env={MARK: str(os.getpid()), "CLUSTERVM_LOG_LEVEL": "WARNING",
                                **(env or {})})


def veth_bytes(hosts: TestHosts) -> list[tuple[int, int]]:
    """(bytes out of host i, bytes into host i), from the root-side end of its veth."""
    out = []
    for v in hosts.veths:
        stats = Path("/sys/class/net") / v / "statistics"
        out.append((int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())))
    return out


def wait_for(pred, what: str, job: netns.Job, timeout: float = 60.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if not job.running():
            raise AssertionError(f"the job ended while waiting for {what}:\n{job.wait()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{job.wait(timeout=0)}")
        time.sleep(step)


class Watch:
    """Follows a running job's stderr and notes when each pattern first shows up."""

    PATTERNS = {
        "heartbeat": r"lost: heartbeat",
        "ulfm": r"lost: MPI \(ULFM\)",
        "prrte_lost": r"lost communication with a remote daemon",
        "restart": r"the job ended without finishing",
        "finished_then": r"the job finished; mpiexec then ended",
        "stopped_mpiexec": r"the job finished but mpiexec has not ended",
    }

    def __init__(self, job: netns.Job) -> None:
        self.job = job
        self.t0 = time.monotonic()
        self.seen: dict[str, float] = {}

    def poll(self) -> str:
        err = self.job.output()[1]
        for key, pat in self.PATTERNS.items():
            if key not in self.seen and re.search(pat, err):
                self.seen[key] = round(time.monotonic() - self.t0, 2)
        return err

    def until_end(self) -> netns.JobResult:
        while self.job.running() and time.monotonic() < self.job.deadline:
            self.poll()
            time.sleep(0.05)
        end = round(time.monotonic() - self.t0, 2)
        res = self.job.wait()
        self.poll_text(res.stderr)
        self.seen["end"] = end
        return res

    def poll_text(self, err: str) -> None:
        for key, pat in self.PATTERNS.items():
            if key not in self.seen and re.search(pat, err):
                self.seen[key] = round(time.monotonic() - self.t0, 2)


def started(job: netns.Job, ckdir: Path) -> None:
    """Wait until the job is under way: its first task checkpoint is on disk."""
    wait_for(lambda: glob.glob(str(ckdir / "ckpt" / "*")), "a first checkpoint", job,
             timeout=90)
    time.sleep(0.5)


# ------------------------------------------------------------------ undisturbed jobs


def test_nodes_placement_and_traffic_across_three_hosts(hosts, tmp_path, record_property):
    before = veth_bytes(hosts)
    job = start(hosts, tmp_path, [APP, "8"])
    res = job.wait()
    after = veth_bytes(hosts)
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("multihost="))
    got = json.loads(line.split("=", 1)[1])

    # vm.nodes: 6 ranks, 2 per host, on the 3 hosts' own names (CLUSTERVM_HOSTNAME)
    nodes = dict((r, h) for r, h in got["nodes"])
    assert sorted(nodes) == list(range(6)), got
    assert {nodes[r] for r in nodes} == set(hosts.hostnames), got
    for r, h in nodes.items():
        assert h == hosts.hostnames[r // 2], got      # by slot: 0,1 on host 0 ...
    # where=<host name> runs every task on that host
    assert sorted(got["placed"]) == sorted(hosts.hostnames), got
    for h, ran_on in got["placed"].items():
        assert ran_on == [h] * 4, got
    # long-lived tasks on two different hosts exchanged the arrays intact ...
    assert got["moved"]["from"] == hosts.hostnames[1] and got["moved"]["to"] == hosts.hostnames[2]
    assert got["sum"] == got["expect"], got
    # ... and the bytes went over the veths: out of host 1, into host 2
    moved = got["moved"]["bytes"]
    out1 = after[1][0] - before[1][0]
    in2 = after[2][1] - before[2][1]
    print(f"\njob {res.elapsed:.2f} s; {moved / 1e6:.1f} MB sent host 1 -> host 2; veth "
          f"counters: {out1 / 1e6:.1f} MB out of host 1, {in2 / 1e6:.1f} MB into host 2")
    record_property("job_s", round(res.elapsed, 2))
    assert out1 >= moved and in2 >= moved, (before, after)


@pytest.mark.parametrize("name", ["pi", "heat2d"])
def test_examples_across_three_hosts_match_one_host(hosts, tmp_path, name, record_property):
    app, args, prefix = APPS[name]
    job = start(hosts, tmp_path, [app, *args])
    res = job.wait()
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    assert "restart" not in res.stderr, f"the job was restarted:\n{res.stderr[-6000:]}"
    assert result_line(res.stdout, prefix) == baseline(name)
    print(f"\n{name} on 3 hosts: {res.elapsed:.2f} s")
    record_property("job_s", round(res.elapsed, 2))


# ------------------------------------------------------------------ a host lost


def _drill(hosts, tmp_path, name: str, fault: str, record_property) -> tuple[dict, str]:
    app, args, prefix = APPS[name]
    ck = tmp_path / "ck"
    job = start(hosts, tmp_path, [app, *args], "--checkpoint-dir", str(ck))
    started(job, ck)
    watch = Watch(job)
    if fault == "kill_host":
        killed = hosts.kill_host(VICTIM)
        assert killed, "nothing to kill in the host"
    else:
        hosts.cut_link(VICTIM)
    res = watch.until_end()
    assert not res.timed_out, res
    assert res.returncode == 0, (f"status {res.returncode} after {res.elapsed:.0f} s, leftovers "
                                 f"{res.leftovers}\n--- stdout\n{res.stdout}\n--- stderr (end)\n"
                                 f"{res.stderr[-8000:]}")
    if fault == "cut_link":
        # nothing can reach the cut-off host to end its prted and ranks: they end by
        # themselves when that prted gives up on its link (netns.Job ends them here)
        assert set(res.leftovers) <= {VICTIM}, res
    else:
        assert res.leftovers == {}, res
    assert prefix in res.stdout, (f"no {prefix!r} line; status {res.returncode}\n--- stdout\n"
                                  f"{res.stdout}\n--- stderr (end)\n{res.stderr[-8000:]}")
    assert result_line(res.stdout, prefix) == baseline(name), res
    probed = re.search(r"probed in ([0-9.]+) s", res.stderr)
    times = dict(watch.seen, probe_s=float(probed.group(1)) if probed else None)
    print(f"\n{name} {fault}: seconds after the fault: {times}; job {res.elapsed:.2f} s")
    for k, v in times.items():
        record_property(k, v)
    return times, res.stderr


def test_a_rank_hung_before_mpi_init_on_another_host_is_started_again(hosts, tmp_path,
                                                                     record_property):
    """Rank 4 (host 2) hangs before MPI_Init on the first start (a stalled file system,
    say): every rank waits in MPI_Init, nothing of the app runs, and the launcher cannot
    look into the hosts. Rank 0 says in the job's directory (which the hosts share) when
    it is past MPI_Init; it is not within CLUSTERVM_INIT_TIMEOUT_S, so the job is
    stopped, and the supervisor starts it again on the hosts that answer: the
    undisturbed result. Before, the job waited in MPI_Init for ever."""
    env = hang_before_mpi_init(tmp_path, rank=4)
    t0 = time.monotonic()
    job = start(hosts, tmp_path, [PI, "--tasks", "15", "--samples", "1500000", "--seed", "7"],
                env={**env, "CLUSTERVM_INIT_TIMEOUT_S": "3"})
    res = job.wait()
    record_property("seconds", round(time.monotonic() - t0, 2))
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    assert os.path.exists(env["HANG_FLAG"]), "rank 4 never ran the sitecustomize"
    assert "error: rank 0 was not past MPI_Init 3 s after the start" in res.stderr, res
    # every host answers the supervisor's probe as a rule; on a loaded box one may not in
    # time, and is left out (a full run here once failed a check that wanted "none"), as
    # in test_job_survives_a_host_killed
    assert re.search(r"lost host\(s\): (none \(every host answers\)|[0-9.]+) .*; restart 1 "
                     r"of 2 from the journal", res.stderr), res
    assert result_line(res.stdout, "hits=") == pi_line(15, 1500000, 7)


def test_a_start_hung_on_another_host_ends_without_a_shared_directory(hosts, tmp_path,
                                                                     record_property):
    """The same hang with ``--restarts 0`` (no supervisor, so no job directory the hosts
    share): rank 0 says on its stderr when it is past MPI_Init, which it never is, so the
    job ends CLUSTERVM_INIT_TIMEOUT_S after its start with the reason and status 2, and
    nothing of it is left on the hosts. Before, it waited in MPI_Init for ever. The next
    start goes on: the exact result, and rank 0's line is not in the job's output."""
    env = {**hang_before_mpi_init(tmp_path, rank=4), "CLUSTERVM_INIT_TIMEOUT_S": "3"}
    app = [PI, "--tasks", "15", "--samples", "1500000", "--seed", "7"]
    t0 = time.monotonic()
    res = start(hosts, tmp_path, app, "--restarts", "0", env=env).wait()
    record_property("seconds", round(time.monotonic() - t0, 2))
    assert res.returncode == launcher.START_FAILED_STATUS and not res.timed_out, res
    assert res.leftovers == {}, res
    assert os.path.exists(env["HANG_FLAG"]), "rank 4 never ran the sitecustomize"
    assert "error: rank 0 was not past MPI_Init 3 s after the start" in res.stderr, res
    assert "hits=" not in res.stdout, res
    res = start(hosts, tmp_path, app, "--restarts", "0", env=env).wait()
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    assert result_line(res.stdout, "hits=") == pi_line(15, 1500000, 7)
    assert "past MPI_Init" not in res.stdout + res.stderr, res


def test_a_node_on_another_host_is_rung_after_a_quiet_spell(hosts, tmp_path):
    """Doorbells across hosts: the coordinator's BELL tells the last node (host 2) where
    to knock; after a second of quiet, the task the coordinator sends it rings its bell
    over UDP, and its answer rings the coordinator's."""
    res = start(hosts, tmp_path, [str(ROOT / "tests" / "apps" / "doorbell_app.py"),
                                  "last"]).wait()
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    assert "rung=yes coordinator=yes" in res.stdout, res


def test_nodes_on_two_other_hosts_ring_each_other_after_a_quiet_spell(hosts, tmp_path):
    """Doorbells between two nodes, neither on the coordinator's host: the first ring
    finds no bell, so the node asks the coordinator where the other's is; after a
    second of quiet, a task's message to a task on the other host rings its bell."""
    res = start(hosts, tmp_path, [str(ROOT / "tests" / "apps" / "doorbell_app.py"),
                                  "pair"]).wait()
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    assert "pair rung=yes" in res.stdout, res


def test_a_hosts_nodes_killed_at_once_restart_from_copies_on_other_hosts(hosts, tmp_path):
    """A node's checkpoint copies go to a node on another host (Core._next_alive): both
    nodes of host 2 (ranks 4 and 5, each running a ring task) SIGKILLed at once, without
    a checkpoint directory (``--restarts 0``: no supervisor, so no job directory either),
    take no task's both copies, and the ring goes on from the copies in memory on the
    other hosts: the undisturbed result. Before, node 4's buddy was node 5, on the same
    host, and such a job ended with a CheckpointError (checked by hand: status 1). Killing
    the host's daemon too ends the whole job under PRRTE (test_job_survives_a_host_killed:
    the supervisor starts it again from its directory)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    args = ["--tasks", "5", "--steps", "240", "--every", "10", "--step-ms", "8"]
    job = start(hosts, tmp_path, [RING, *args, "--markers", str(marks)], "--restarts", "0")
    wait_for(lambda: len(ranks_with_checkpoints(marks, 3)) == 5, "3 checkpoints of every task",
             job, timeout=90)
    killed = hosts.kill_ranks(VICTIM)
    assert len(killed) == 2, killed
    res = job.wait()
    assert res.returncode == 0 and not res.timed_out, res
    assert res.leftovers == {}, res
    assert result_line(res.stdout, "ring:") == ring_expected(args)
    rep = [ln for ln in res.stderr.splitlines() if "clustervm report:" in ln]
    # (once a third node, whose work was done, was also reported lost at the job's end:
    # ranks that skip MPI_Finalize after failures look failed to ULFM, and its goodbye
    # was not handled yet; such a node now counts as having left: docs/status.md item 10)
    assert rep and re.search(r"[1-9]\d* restored", rep[-1]), res.stderr[-6000:]
    for rank in (4, 5):
        assert re.search(rf"node {rank} \(host [^)]*\) at [0-9.]+ s by MPI", rep[-1]), rep[-1]


@pytest.mark.parametrize("name", ["pi", "heat2d"])
def test_job_survives_a_host_killed(hosts, tmp_path, name, record_property):
    times, err = _drill(hosts, tmp_path, name, "kill_host", record_property)
    # PRRTE ends the job when it loses the daemon: the supervisor restarts it; the
    # killed host answers again (its namespace lives on), so all 3 hosts are kept --
    # unless the probe comes too soon after the kill on a loaded box (seen once in CI):
    # then that host is left out, and the job finishes on the other two
    assert "restart" in times, err
    assert re.search(r"lost host\(s\): (none \(every host answers\)|[0-9.]+) .*; restart 1 "
                     r"of 2 from the journal", err), err
    assert "finished task(s) reused from the journal" in err, err


@pytest.mark.parametrize("name", ["pi", "heat2d"])
def test_job_survives_a_host_cut_off(hosts, tmp_path, name, record_property):
    times, err = _drill(hosts, tmp_path, name, "cut_link", record_property)
    victim = hosts.hostnames[VICTIM]
    # our heartbeats find the cut-off nodes (ranks 4 and 5) first ...
    assert "heartbeat" in times, err
    # ("node 4 (host" left out: PRRTE's own message, written to the same stderr, once
    # landed inside that line)
    assert re.search(rf"{victim}, pid \d+\) lost: heartbeat", err), err
    if "restart" in times:
        # ... then PRRTE ends the job and the supervisor leaves the silent host out
        assert re.search(rf"lost host\(s\): {re.escape(hosts.names[VICTIM])} \(probed in "
                         rf"[0-9.]+ s\); restart 1 of 2 from the journal in \S+ on "
                         rf"{re.escape(hosts.names[0])}, {re.escape(hosts.names[1])}$",
                         err, re.MULTILINE), err
    else:
        # ... or main finished in place before PRRTE gave up on the daemon
        assert "heartbeat" in times and "restart" not in err, err


def test_exit_after_two_hosts_lose_their_ranks(hosts, tmp_path, record_property):
    """Ranks of host 2, then of host 1, SIGKILLed (their prteds alive): the job goes on
    with the coordinator's host alone and still exits 0 with the exact result.  The exit
    path (DESIGN.md saw a hang and a segfault in Comm_dup here) skips MPI_Finalize after
    failures and never duplicates a communicator."""
    args = ["--tasks", "15", "--samples", "1500000", "--seed", "7", "--task-ms", "1500",
            "--checkpoint-every", "20000"]
    ck = tmp_path / "ck"
    job = start(hosts, tmp_path, [PI, *args], "--checkpoint-dir", str(ck))
    started(job, ck)
    watch = Watch(job)
    lost = lambda: len(re.findall(r"lost: MPI \(ULFM\)", watch.poll()))  # noqa: E731
    assert len(hosts.kill_ranks(2)) == 2
    wait_for(lambda: lost() >= 2, "the loss of host 2's ranks", job)
    t_first = watch.seen["ulfm"]
    time.sleep(0.3)
    t_second = time.monotonic() - watch.t0
    assert len(hosts.kill_ranks(1)) == 2
    wait_for(lambda: lost() >= 4, "the loss of host 1's ranks", job)
    detect2 = time.monotonic() - watch.t0 - t_second
    res = watch.until_end()
    assert not res.timed_out, res
    assert res.returncode == 0, res
    assert res.leftovers == {}, res
    assert result_line(res.stdout, "hits=") == baseline("pi"), res
    assert "restart" not in watch.seen, res          # survived in place, no restart
    assert re.search(r"4 node\(s\) lost", res.stderr), res
    print(f"\nrank loss seen by the coordinator {t_first:.2f} s / {detect2:.2f} s after each "
          f"kill; job ended {watch.seen['end'] - t_second:.2f} s after the second")
    record_property("ulfm_detect_s", [t_first, round(detect2, 3)])
