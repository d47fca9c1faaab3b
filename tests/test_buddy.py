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
from ring_drills import (ARGS, RING, TIMEOUT, expected, kill_after_checkpoints,
                         ranks_with_checkpoints, report, resumed_after_the_coordinator_is_killed,
                         wait_for)

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("mode", ["log", "group"])
def test_undisturbed_ring_jobs_give_the_computed_result(mode):
    """The drills compare with the ring's result computed in one process
    (ring_drills.expected): real jobs without a fault, in both checkpoint modes, give it."""
    res = run_job([RING, *ARGS, *(["--group"] if mode == "group" else [])], n=5,
                  timeout=TIMEOUT)
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == expected() == "ring: tasks=4 steps=240 digest=3e54494a3fa577c8"


def _shm_copies(pid: int) -> set[str]:
    """The checkpoint files of /dev/shm (clustervm.shmcopies) process ``pid`` maps."""
    with open(f"/proc/{pid}/maps") as f:
        return {ln.split()[-1] for ln in f if "/dev/shm/cvm-ck-" in ln}


@pytest.mark.parametrize("shm", ["1", "0"])
def test_node_killed_restarts_from_its_buddys_copy(job, tmp_path, shm):
    """Memory only: the node of task 0 dies; its task restarts from the copy its buddy
    holds (no checkpoint went to the coordinator), the result is exact, and the report
    says when the task ran again. The buddies are on this host, so the copies are files
    in /dev/shm their nodes wrote (CLUSTERVM_SHM_COPIES=1, the default: the killed node
    had them mapped, and none is left after the job), or went over MPI (0)."""
    want = expected()
    j = job([RING, *ARGS, "--markers", str(tmp_path)], n=5, timeout=TIMEOUT,
            env={"CLUSTERVM_SHM_COPIES": shm})
    got = wait_for(lambda: (lambda m: m if len(m) == 4 else None)(
        ranks_with_checkpoints(tmp_path, 3)), "3 checkpoints of every task", j)
    victim = got[0]
    pid = j.rank_pids(count=5)[victim]
    files = _shm_copies(pid)
    assert bool(files) == (shm == "1"), files
    os.kill(pid, signal.SIGKILL)
    res = j.wait()
    assert not [f for f in files if os.path.exists(f)], files
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


@pytest.mark.parametrize("node_files", ["1", "0"])
def test_node_and_its_buddy_killed_together_falls_back_to_the_directory(job, tmp_path,
                                                                       node_files):
    """The same double loss with --checkpoint-dir: the coordinator restores task 0 from
    the disk (the file its node wrote, clustervm.nodefiles, or its own copy of one of
    the first checkpoints, which it is told of); the result is exact. With
    CLUSTERVM_NODE_FILES=0 (as nodes that do not see the directory: another host, not
    shared) every checkpoint goes to the coordinator, which writes it."""
    want = expected()
    marks = tmp_path / "marks"
    marks.mkdir()
    # (INFO: the coordinator says where each restore came from, in the stderr a failure
    # shows)
    j = job([RING, *ARGS, "--markers", str(marks)], n=5, timeout=TIMEOUT,
            env={"CLUSTERVM_NODE_FILES": node_files, "CLUSTERVM_LOG_LEVEL": "INFO"},
            run_args=["--checkpoint-dir", str(tmp_path / "ck")])
    kill_after_checkpoints(j, marks, None, k=6)
    res = j.wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == want
    rep = report(res.err)
    assert "2 node(s) lost" in rep, res.err
    # (as a rule read back from the file its node wrote: tests/test_nodefiles.py; its
    # whole stderr if not: seen once, "3 restored" and none by the coordinator)
    assert re.search(r"restored \([1-9]\d* by the coordinator, \d+ of them read back from the "
                     r"checkpoint directory\)", rep), res.err
    # the coordinator names the job where nodes may write only if they are to
    assert (tmp_path / "ck" / "nodes" / "JOB").exists() == (node_files == "1")


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
    """Spawned tasks that exchange no messages (the failover drill), a node and its buddy
    (the next node) killed at once, no directory: the node's tasks start again from the
    start on the third node, with a warning that says so; the result is the undisturbed
    one."""
    app = str(ROOT / "tests" / "failover_app.py")
    drill = ["--tasks", "9", "--steps", "10", "--task-ms", "400", "--spawn", "--ckpt-kb", "4"]
    base = run_job([app, *drill], n=4, timeout=TIMEOUT)
    assert base.rc == 0, base.err
    j = job([app, *drill, "--markers", str(tmp_path)], n=4, timeout=TIMEOUT)
    # a checkpoint held (not only taken: under load its copies may still be on their
    # way, and a task with none held simply starts again, without the warning), on
    # whichever node (under load main may start before node 1 said hello: no task there)
    held = wait_for(lambda: [p.name for p in tmp_path.iterdir() if p.name.startswith("held-")],
                    "a checkpoint held", j)
    victim = int(held[0].split("-r")[1].split("-")[0])
    pids = j.rank_pids(count=4)
    os.kill(pids[victim], signal.SIGKILL)
    os.kill(pids[victim % 3 + 1], signal.SIGKILL)    # its buddy
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


def _as_if_written_on_another_boot(ck: Path) -> int:
    """Rewrite the journal of ``ck`` as if an earlier boot of this machine had written
    it (its ``synced`` records name another boot id); returns how many there are."""
    from clustervm import wire
    from clustervm.journal import JOURNAL_NAME, Journal
    from clustervm.syncs import SYNCED
    with Journal(ck, fsync=False) as old:
        records = list(old.replay())
    fresh = ck / "rewritten"
    synced = 0
    with Journal(fresh) as new:
        for rec in records:
            frames = rec.frames
            if rec.kind == SYNCED:
                info = wire.loads(frames[0], frames[1:])
                info["boot"] = "an-earlier-boot"
                payload, bufs = wire.dumps(info)
                frames = [payload, *bufs]
                synced += 1
            new.append(rec.kind, rec.key, frames)
    os.replace(fresh / JOURNAL_NAME, ck / JOURNAL_NAME)
    return synced


def test_resumed_after_a_power_cut_goes_back_to_the_last_sync(job, tmp_path):
    """The coordinator is killed; its journal then reads as written on an earlier boot
    (a power cut: what the OS had not put on the disk may be lost, in any order). The
    resume goes back to the last sync (journal cut there, only the checkpoints it named
    kept), says so, and the result is still exact."""
    want = expected()
    marks, ck = tmp_path / "marks", tmp_path / "ck"
    marks.mkdir()
    env = {"CLUSTERVM_CHECKPOINT_SYNC_S": "0.2"}
    j = job([RING, *ARGS, "--markers", str(marks)], n=5, timeout=TIMEOUT, env=env,
            run_args=["--checkpoint-dir", str(ck)])
    wait_for(lambda: len(ranks_with_checkpoints(marks, 12)) == 4, "12 checkpoints of every task",
             j)
    j.kill_rank(0)
    assert j.wait().rc != 0, "the job went on without its coordinator"
    assert _as_if_written_on_another_boot(ck) >= 2     # the one at the start, and later ones
    res = job([RING, *ARGS], n=5, timeout=TIMEOUT, env=env,
              run_args=["--resume", str(ck)]).wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert res.line("ring:") == want
    assert "the job directory was last synced on another boot" in res.err, res.err
    m = re.search(r"(\d+) restored", report(res.err))
    assert m and int(m.group(1)) >= 4, report(res.err)
