"""Coordinated group checkpoints (``spawn(..., checkpoint="group")``, issue 14) under real
mpiexec: the ring's members checkpoint together (a cut exchanged member to member), log
no message, and are rolled back together when one is lost; the drills kill or stop real
node processes and assert the undisturbed result (tests/ring_drills.py has the moves).
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import run_job
from ring_drills import (ARGS, RING, TIMEOUT, expected, kill_after_checkpoints,
                         ranks_with_checkpoints, report, resumed_after_the_coordinator_is_killed,
                         wait_for)

pytestmark = pytest.mark.mpi


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


def test_a_member_and_its_buddy_lost_together_send_the_group_back_to_its_disk_epoch(
        job, tmp_path):
    """With --checkpoint-dir a group's epochs go to disk at most every
    CLUSTERVM_CHECKPOINT_GROUP_DISK_S (here a minute: only the first; every one is held
    in memory on two nodes). The node of task 0 and its buddy are SIGKILLed at once: no
    copy in memory of task 0's epoch is left, so the whole group goes back to the newest
    epoch every member has on disk, says so, and the result is exact."""
    want = expected()
    marks = tmp_path / "marks"
    marks.mkdir()
    j = job([RING, *ARGS, "--group", "--markers", str(marks)], n=5, timeout=TIMEOUT,
            env={"CLUSTERVM_CHECKPOINT_GROUP_DISK_S": "60"},
            run_args=["--checkpoint-dir", str(tmp_path / "ck")])
    kill_after_checkpoints(j, marks, None, k=6)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == want
    assert re.search(r"checkpoint group \d+: every copy in memory of checkpoint \d+ of "
                     r"task\(s\) [\d, ]+ was on nodes lost at once; the group goes back to "
                     r"its checkpoint 1, the newest on disk for every member",
                     res.err), res.err
    assert "2 node(s) lost" in report(res.err), report(res.err)


def test_a_node_lost_during_a_group_checkpoint(job, tmp_path):
    """Members checkpoint every step, so the kill lands inside a checkpoint (its cut or
    the copy) almost surely: the group still goes back to one it completed, exactly."""
    args = ["--tasks", "4", "--steps", "150", "--every", "1", "--step-ms", "2"]
    j = job([RING, *args, "--group", "--markers", str(tmp_path)], n=5, timeout=TIMEOUT)
    kill_after_checkpoints(j, tmp_path, None, k=30, pair=False)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == expected(args)
    assert "rolled back to its checkpoint" in res.err, res.err


def test_a_checkpoint_group_resumed_goes_back_to_a_checkpoint_every_member_has(job, tmp_path):
    """Members checkpoint every step with --checkpoint-dir, and the coordinator is
    SIGKILLed among them: the members' newest files on disk may be one checkpoint apart
    (the files are written behind the run). --resume puts every member back at the
    newest checkpoint all have, and the result is the undisturbed one."""
    args = ["--tasks", "4", "--steps", "150", "--every", "1", "--step-ms", "2", "--group"]
    res = resumed_after_the_coordinator_is_killed(job, tmp_path, args, 30)
    assert res.line("ring:") == expected(args)


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
    j = job([RING, *args, "--markers", str(tmp_path)], n=5, timeout=TIMEOUT)
    runs = wait_for(lambda: (lambda m: m if len(m) == 4 else None)({
        int(m.group(1)): int(m.group(2)) for m in (
            re.match(r"^run-(\d+)-inc0-r(\d+)$", p.name) for p in tmp_path.iterdir()) if m}),
        "every task running", j)
    time.sleep(0.5)
    os.kill(j.rank_pids(count=5)[runs[0]], signal.SIGKILL)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == expected(args)
    assert re.search(r"checkpoint group \d+ \(4 task\(s\)\) rolled back to its checkpoint 0",
                     res.err), res.err


PAIR = str(Path(__file__).parent / "apps" / "pair_app.py")


@pytest.mark.parametrize("final", [False, True])
def test_a_checkpoint_group_resumed_after_one_member_finished(job, tmp_path, final):
    """A group of two: b finishes, a lingers, and the coordinator is SIGKILLed then. On
    --resume b's result is reused and a goes back to its newest checkpoint on disk. If b
    sent a messages after it (no checkpoint after the last round), nobody can send them
    again: the resumed job ends with an error that says so, instead of waiting forever.
    With one (--final; every epoch on disk), a resumes from it and the result is exact."""
    args = [PAIR, "--group", *(["--final"] if final else [])]
    env = {"CLUSTERVM_CHECKPOINT_GROUP_DISK_S": "0"}
    base = run_job(args, n=3, timeout=TIMEOUT, env=env)
    assert base.rc == 0, base.err
    marks, ck = tmp_path / "marks", tmp_path / "ck"
    marks.mkdir()
    j = job([*args, "--markers", str(marks)], n=3, timeout=TIMEOUT, env=env,
            run_args=["--checkpoint-dir", str(ck)])
    wait_for(lambda: list(marks.glob("linger-*")), "task a lingering", j)
    time.sleep(0.4)                     # b returns at once: it has finished by now
    j.kill_rank(0)
    assert j.wait().rc != 0, "the job went on without its coordinator"
    res = job([*args, "--markers", str(marks)], n=3, timeout=TIMEOUT, env=env,
              run_args=["--resume", str(ck)]).wait()
    if final:
        assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
        assert res.line("pair:") == base.line("pair:")
        assert re.search(r"resumed: 1 finished task\(s\) reused", report(res.err)), \
            report(res.err)
    else:
        assert res.rc not in (0, 124), f"{res.rc}\n{res.out}\n{res.err}"
        assert re.search(r"checkpoint group \d+ cannot be resumed: task\(s\) \d+ of it had "
                         r"finished after its checkpoint \d+ on disk", res.err), res.err
