"""What the ring drills share (tests/test_buddy.py, tests/test_group_checkpoints.py):
the ring app, its undisturbed result, the marker files its tasks write after their
checkpoints, and the moves of a drill (wait for checkpoints, kill nodes, resume)."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from conftest import ROOT, load_module

RING = str(ROOT / "tests" / "apps" / "ring_ckpt_app.py")
ARGS = ["--tasks", "4", "--steps", "240", "--every", "10", "--step-ms", "8"]
TIMEOUT = 90.0
_ring = load_module(RING)


def expected(args: list[str] = ARGS) -> str:
    """The ring's undisturbed result line for ``args``, computed in this process
    (test_undisturbed_ring_jobs_give_the_computed_result checks real jobs give it)."""
    def arg(name: str) -> int:         # the last one counts, as for argparse
        return int(args[len(args) - 1 - args[::-1].index(name) + 1])
    return _ring.undisturbed(arg("--tasks"), arg("--steps"))


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
    # the coordinator's files, and those the nodes wrote themselves (clustervm.nodefiles)
    assert len([*(ck / "ckpt").glob("*.ckpt"), *(ck / "nodes").glob("*/ckpt/*.ckpt")]) >= 4
    res = job([RING, *args], n=5, timeout=TIMEOUT, run_args=["--resume", str(ck)]).wait()
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    m = re.search(r"(\d+) restored \((\d+) by the coordinator, (\d+) of them read back from "
                  r"the checkpoint directory\)", report(res.err))
    assert m and min(int(g) for g in m.groups()) >= 4, report(res.err)
    return res
