"""The buddy store (issue 14) under real mpiexec: checkpoints kept by the nodes, not rank 0.

A spawned task's checkpoint stays on its node and one copy goes to the next
node (its buddy); the coordinator only records who holds which. The drills kill
real node processes with SIGKILL at a moment they wait for (marker files the
ring app writes after its checkpoints) and assert the undisturbed result, or,
when a node and its buddy are lost at once without a checkpoint directory, a
clear error that says so and how to avoid it.

Ring app (tests/apps/ring_ckpt_app.py): task i on node i+1 with ``-n 5`` (four
nodes, one task each); node r's buddy is node r+1, node 4's is node 1.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_job

pytestmark = pytest.mark.mpi

RING = str(ROOT / "tests" / "apps" / "ring_ckpt_app.py")
ARGS = ["--tasks", "4", "--steps", "240", "--every", "10", "--step-ms", "8"]
TIMEOUT = 90.0
_expected: list[str] = []


def expected() -> str:
    if not _expected:
        res = run_job([RING, *ARGS], n=5, timeout=TIMEOUT)
        assert res.rc == 0, f"undisturbed run failed ({res.rc}):\n{res.out}\n{res.err}"
        _expected.append(res.line("ring:"))
    return _expected[0]


def ranks_with_checkpoints(d: Path, k: int) -> dict[int, int]:
    """{task index: rank} of the tasks that made at least ``k`` checkpoint calls."""
    out = {}
    for p in d.iterdir():
        m = re.match(r"^ckpt-(\d+)-(\d+)-r(\d+)$", p.name)
        if m and int(m.group(2)) >= k:
            out[int(m.group(1))] = int(m.group(3))
    return out


def wait_for(pred, what: str, j, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        if j.proc.poll() is not None:
            out, err = j.proc.communicate()
            raise AssertionError(f"job ended ({j.proc.returncode}) before {what}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    return got


def report(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "clustervm report:" in ln]
    assert lines, f"no end-of-job report:\n{err}"
    return lines[-1]


def kill_after_checkpoints(j, d: Path, ranks: list[int] | None = None, k: int = 3,
                           pair: bool = True) -> None:
    """Wait until every task made ``k`` checkpoint calls (so ``k - 1`` are acknowledged),
    then SIGKILL the node processes of ``ranks`` at once; None: the node that runs task 0
    and its buddy, the next node (main may start before every node has said hello, so
    tasks are not always one a node, and a node learns its buddy again with every
    acknowledgment: after a few it is the next node); without ``pair``, that node alone."""
    got = wait_for(lambda: (lambda m: m if len(m) == 4 else None)(ranks_with_checkpoints(d, k)),
                   f"{k} checkpoints of every task", j)
    if ranks is None:
        a = got[0]
        ranks = [a, a % 4 + 1] if pair else [a]
    pids = j.rank_pids(count=5)
    for r in ranks:
        os.kill(pids[r], signal.SIGKILL)


def test_node_killed_restarts_from_its_buddys_copy(job, tmp_path):
    """Memory only: the node of task 0 dies; its task restarts from the copy its buddy
    holds (no checkpoint went to the coordinator), the result is exact, and the report
    says when the task ran again."""
    want = expected()
    j = job([RING, *ARGS, "--markers", str(tmp_path)], n=5, timeout=TIMEOUT)
    got = wait_for(lambda: (lambda m: m if len(m) == 4 else None)(
        ranks_with_checkpoints(tmp_path, 3)), "3 checkpoints of every task", j)
    victim = got[0]
    os.kill(j.rank_pids(count=5)[victim], signal.SIGKILL)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == want
    rep = report(res.err)
    assert f"1 node(s) lost: node {victim}" in rep, rep
    assert re.search(r"[1-9]\d* restored", rep), rep
    m = re.search(rf"running again from checkpoints after loss detected: node {victim} "
                  rf"(\d+\.\d+) s", rep)
    assert m, rep


def test_node_and_its_buddy_killed_together_without_a_directory(job, tmp_path):
    """The node of task 0 and its buddy (the next node) die at once: task 0 had its
    copies on both, so it cannot go on; the job ends with an error that names the loss
    and --checkpoint-dir."""
    j = job([RING, *ARGS, "--markers", str(tmp_path)], n=5, timeout=TIMEOUT)
    kill_after_checkpoints(j, tmp_path, None, k=6)
    res = j.wait()
    assert res.rc != 0, f"the job succeeded though a checkpoint was lost:\n{res.out}"
    assert "every copy of its checkpoint" in res.err, res.err
    assert "--checkpoint-dir" in res.err, res.err


def test_node_and_its_buddy_killed_together_falls_back_to_the_directory(job, tmp_path):
    """The same double loss with --checkpoint-dir: the coordinator's copy on disk
    (written behind the run) restores task 0; the result is exact."""
    want = expected()
    marks = tmp_path / "marks"
    marks.mkdir()
    j = job([RING, *ARGS, "--markers", str(marks)], n=5, timeout=TIMEOUT,
            run_args=["--checkpoint-dir", str(tmp_path / "ck")])
    kill_after_checkpoints(j, marks, None, k=6)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == want
    rep = report(res.err)
    assert "2 node(s) lost" in rep, rep


def resumed_after_the_coordinator_is_killed(job, tmp_path, args: list[str], k: int):
    """Run the ring with --checkpoint-dir, SIGKILL the coordinator once every task made
    ``k`` checkpoint calls, then --resume it: the resumed job's result (checked to have
    restored every task from the disk)."""
    marks, ck = tmp_path / "marks", tmp_path / "ck"
    marks.mkdir()
    j = job([RING, *args, "--markers", str(marks)], n=5, timeout=TIMEOUT,
            run_args=["--checkpoint-dir", str(ck)])
    wait_for(lambda: len(ranks_with_checkpoints(marks, k)) == 4,
             f"{k} checkpoints of every task", j)
    j.kill_rank(0)
    res = j.wait()
    assert res.rc != 0, "the job went on without its coordinator"
    assert len(list((ck / "ckpt").glob("*.ckpt"))) >= 4
    res = job([RING, *args], n=5, timeout=TIMEOUT, run_args=["--resume", str(ck)]).wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    m = re.search(r"(\d+) restored", report(res.err))
    assert m and int(m.group(1)) >= 4, report(res.err)
    return res


def test_coordinator_killed_then_resumed_from_the_copies_on_disk(job, tmp_path):
    """With --checkpoint-dir the coordinator writes every copy behind the run; killed,
    the job is resumed with --resume DIR and the ring's tasks go on from the disk."""
    want = expected()
    res = resumed_after_the_coordinator_is_killed(job, tmp_path, ARGS, 3)
    assert res.line("ring:") == want


def test_coordinator_killed_without_a_directory_ends_the_job_clearly(job, tmp_path):
    """Without --checkpoint-dir nothing outlives the coordinator: the nodes see it gone
    and leave, and the job ends (non-zero) instead of hanging."""
    j = job([RING, *ARGS, "--markers", str(tmp_path)], n=5, timeout=TIMEOUT)
    wait_for(lambda: len(ranks_with_checkpoints(tmp_path, 2)) == 4, "2 checkpoints of every task",
             j)
    t0 = time.monotonic()
    j.kill_rank(0)
    res = j.wait()
    assert res.rc != 0
    assert time.monotonic() - t0 < 30, "the job took long to end without its coordinator"
    assert "ring:" not in res.out



def test_tasks_that_received_no_message_start_again_when_both_copies_are_lost(job, tmp_path):
    """Spawned tasks that exchange no messages (the failover drill), node 1 and its buddy
    node 2 killed at once, no directory: node 1's tasks start again from the start on
    node 3, with a warning that says so; the result is the undisturbed one."""
    app = str(ROOT / "tests" / "failover_app.py")
    drill = ["--tasks", "9", "--steps", "10", "--task-ms", "400", "--spawn", "--ckpt-kb", "4"]
    base = run_job([app, *drill], n=4, timeout=TIMEOUT)
    assert base.rc == 0, base.err
    j = job([app, *drill, "--markers", str(tmp_path)], n=4, timeout=TIMEOUT)
    wait_for(lambda: [p for p in tmp_path.iterdir() if p.name.startswith("mid-")
                      and p.name.split("-r")[1].startswith("1-")], "a task half done on node 1", j)
    pids = j.rank_pids(count=4)
    os.kill(pids[1], signal.SIGKILL)
    os.kill(pids[2], signal.SIGKILL)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("drill:") == base.line("drill:")
    assert "starts again from the start (it had received no message)" in res.err, res.err


def test_resume_gives_a_restored_task_what_a_finished_task_had_sent(job, tmp_path):
    """A producer answers a slow consumer and ends first (journaled as done); the
    coordinator dies while the consumer lingers after its last item. --resume answers the
    producer from the journal and restores the consumer from its last checkpoint: what
    the producer had sent after that checkpoint comes from the journal too (before, the
    resumed job ran to its timeout: found by a soak with heat2d)."""
    app = str(ROOT / "tests" / "apps" / "producer_app.py")
    args = ["--items", "58", "--every", "5", "--item-ms", "10", "--linger", "1.5"]
    marks, ck = tmp_path / "marks", tmp_path / "ck"
    marks.mkdir()
    args += ["--markers", str(marks)]      # the same arguments both times: reused results
    j = job([app, *args], n=3, timeout=TIMEOUT, run_args=["--checkpoint-dir", str(ck)])
    wait_for(lambda: (marks / "received-all").exists() and journal_has_done(ck),
             "the consumer to have every item and the producer to be journaled", j)
    j.kill_rank(0)
    res = j.wait()
    assert res.rc != 0 and "producer:" not in res.out, res.out
    res = job([app, *args], n=3, timeout=30, run_args=["--resume", str(ck)]).wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("producer:") == f"producer: items=58 sum={sum(i * i for i in range(58))}"
    assert "1 finished task(s) reused" in report(res.err), report(res.err)


def journal_has_done(ck: Path) -> bool:
    """Does the job journal in ``ck`` hold a ``done`` record yet?"""
    try:
        return b"done" in (ck / "journal.log").read_bytes()
    except FileNotFoundError:
        return False


# -- coordinated group checkpoints: spawn(checkpoint="group") -----------------------------

def test_a_checkpoint_group_rolls_back_together_when_a_member_is_lost(job, tmp_path):
    """The ring spawned with checkpoint="group": no message is logged; the node of task
    0 is SIGKILLed, every member (the survivors too) goes back to the group's last
    checkpoint, and the result is the undisturbed one."""
    want = expected()
    j = job([RING, *ARGS, "--group", "--markers", str(tmp_path)], n=5, timeout=TIMEOUT)
    kill_after_checkpoints(j, tmp_path, None, pair=False)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == want
    assert re.search(r"checkpoint group \d+ \(4 task\(s\)\) rolled back to its checkpoint "
                     r"[1-9]", res.err), res.err
    assert re.search(r"4 task\(s\) re-run", report(res.err)), report(res.err)


def test_a_node_lost_during_a_group_checkpoint(job, tmp_path):
    """Members checkpoint every step, so the kill lands inside a checkpoint (its cut or
    the copy) almost surely: the group still goes back to one it completed, exactly."""
    args = ["--tasks", "4", "--steps", "150", "--every", "1", "--step-ms", "2"]
    base = run_job([RING, *args, "--group"], n=5, timeout=TIMEOUT)
    assert base.rc == 0, base.err
    j = job([RING, *args, "--group", "--markers", str(tmp_path)], n=5, timeout=TIMEOUT)
    kill_after_checkpoints(j, tmp_path, None, k=30, pair=False)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == base.line("ring:")
    assert "rolled back to its checkpoint" in res.err, res.err


def test_a_checkpoint_group_resumed_goes_back_to_a_checkpoint_every_member_has(job, tmp_path):
    """Members checkpoint every step with --checkpoint-dir, and the coordinator is
    SIGKILLed among them: the members' newest files on disk may be one checkpoint apart
    (the files are written behind the run). --resume puts every member back at the
    newest checkpoint all have, and the result is the undisturbed one."""
    args = ["--tasks", "4", "--steps", "150", "--every", "1", "--step-ms", "2", "--group"]
    base = run_job([RING, *args], n=5, timeout=TIMEOUT)
    assert base.rc == 0, base.err
    res = resumed_after_the_coordinator_is_killed(job, tmp_path, args, 30)
    assert res.line("ring:") == base.line("ring:")


def test_a_checkpoint_group_rolled_back_twice_in_quick_succession(job, tmp_path):
    """One node hangs (SIGSTOP) and, before its heartbeat runs out, another dies: the
    group rolls back with members placed on the hung node, then again once that node is
    found dead, all members now on the one node left (-n 4: three nodes). The result is
    the undisturbed one. (Messages of the second rollback's incarnations used to go into
    the mailbox of a survivor's first-rollback incarnation, which its next incarnation
    does not take over: lost, and the job hung, 3 times in 3 with heat2d.)"""
    want = expected()
    marks, ck = tmp_path / "marks", tmp_path / "ck"
    marks.mkdir()
    j = job([RING, *ARGS, "--group", "--markers", str(marks)], n=4, timeout=TIMEOUT,
            run_args=["--checkpoint-dir", str(ck)])
    got = wait_for(lambda: (lambda m: m if len(m) == 4 else None)(
        ranks_with_checkpoints(marks, 3)), "3 checkpoints of every task", j)
    pids = j.rank_pids(count=4)
    hung, dead = got[0] % 3 + 1, got[0]
    os.kill(pids[hung], signal.SIGSTOP)
    try:
        time.sleep(0.3)
        os.kill(pids[dead], signal.SIGKILL)
        res = j.wait()
    finally:
        try:
            os.kill(pids[hung], signal.SIGKILL)
        except ProcessLookupError:
            pass        # ended with the job
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == want
    assert len(re.findall(r"checkpoint group \d+ \(4 task\(s\)\) rolled back", res.err)) == 2, \
        res.err


def test_a_checkpoint_group_lost_before_its_first_checkpoint_starts_again(job, tmp_path):
    """A member is lost before the group took any checkpoint: every member goes back
    to the start, the survivors too. What a peer's new incarnation sends a member before
    that member's own new incarnation is placed is held back, and must be delivered when
    it starts from the start (it used to be kept for a restore that never came: a hang).
    """
    args = [*ARGS, "--steps", "400", "--every", "100000", "--group"]
    base = run_job([RING, *args], n=5, timeout=TIMEOUT)
    assert base.rc == 0, base.err
    j = job([RING, *args, "--markers", str(tmp_path)], n=5, timeout=TIMEOUT)
    runs = wait_for(lambda: (lambda m: m if len(m) == 4 else None)({
        int(m.group(1)): int(m.group(2)) for m in (
            re.match(r"^run-(\d+)-inc0-r(\d+)$", p.name) for p in tmp_path.iterdir()) if m}),
        "every task running", j)
    time.sleep(0.5)
    os.kill(j.rank_pids(count=5)[runs[0]], signal.SIGKILL)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == base.line("ring:")
    assert re.search(r"checkpoint group \d+ \(4 task\(s\)\) rolled back to its checkpoint 0",
                     res.err), res.err
