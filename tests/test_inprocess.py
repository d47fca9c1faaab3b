"""Scheduling, failover, groups, the mailbox and replay on an in-process VM.

The real coordinator and nodes run as threads of this process on
:mod:`clustervm.inprocess` (clustervm.testing.inprocess assembles them), with
faults injected from the test: ``kill`` (SIGKILL as ULFM reports it), ``stop``
(SIGSTOP: only heartbeats find it), ``delay``. Each test takes milliseconds to
about a second; the drills are those of tests/test_failover.py (same app, same
exact results), with the kill at the same moments.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import clustervm
from clustervm.coordinator import Coordinator
from clustervm.endpoint import PeerFailed
from clustervm.errors import CheckpointError
from clustervm.errors import DeadTaskError, NoNodesError, WireError
from clustervm.inprocess import InProcessWorld
from clustervm.testing.inprocess import InProcessVM, VMTimeout, run_vm, test_config

ROOT = Path(__file__).resolve().parents[1]
DRILL_APP = str(ROOT / "tests" / "failover_app.py")
PAIR_APP = str(ROOT / "tests" / "apps" / "pair_app.py")
GROUPS_APP = str(ROOT / "tests" / "apps" / "groups_calls.py")
DRILL = ["--tasks", "12", "--steps", "10"]
#: heartbeats for the hang tests: short, but not so short that a loaded box trips them
HANG = {"heartbeat_s": 0.5}


# -- helpers -----------------------------------------------------------------------

def when(pred, action, what: str, timeout: float = 20.0) -> threading.Thread:
    """Run ``action(got)`` in a thread once ``pred()`` gives something truthy (a fault
    at a chosen moment); the thread ends with the VM (``pred`` failing is an error)."""
    err: list = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                action(got)
                return
            time.sleep(0.002)
        err.append(f"timed out waiting for {what}")
    t = threading.Thread(target=watch, name=f"fault:{what}", daemon=True)
    t.errors = err  # type: ignore[attr-defined]
    t.start()
    return t


_MARK = re.compile(r"^(start|mid|end)-(\d+)-r(\d+)-p(\d+)$")


def markers(d: Path, kind: str) -> list[tuple[int, int]]:
    """(task index, rank) of the failover app's marker files of ``kind``, oldest first."""
    out = []
    for p in d.iterdir():
        m = _MARK.match(p.name)
        if m and m.group(1) == kind:
            try:
                out.append((p.stat().st_mtime_ns, int(m.group(2)), int(m.group(3))))
            except FileNotFoundError:
                continue
    return [x[1:] for x in sorted(out)]


def run_app(path: str, args: list[str], nodes: int = 3, fault=None, **config):
    """Run an app file on an in-process VM; (its stdout, the InProcessVM). ``fault(ivm)``
    runs before main starts (to arm a :func:`when`)."""
    ivm = InProcessVM(nodes, test_config(**config), timeout=60)
    watchers = [fault(ivm)] if fault is not None else []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ivm.run_app(path, args)
    for w in watchers:
        w.join(1.0)
        assert not w.errors, w.errors
    return out.getvalue(), ivm


def line(out: str, prefix: str) -> str:
    for ln in out.splitlines():
        if ln.startswith(prefix):
            return ln
    raise AssertionError(f"no line starting with {prefix!r} in:\n{out}")


_baselines: dict[tuple, str] = {}


def baseline(path: str, args: list[str], prefix: str, nodes: int = 3) -> str:
    key = (path, tuple(args), prefix, nodes)
    if key not in _baselines:
        out, _ = run_app(path, args, nodes)
        _baselines[key] = line(out, prefix)
    return _baselines[key]


def drill_check(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=") for kv in
                                   line(out, "drill-check:").split()[1:])}


def lost(coord) -> dict[int, str]:
    return {n.rank: n.how_lost for n in coord.nodes.values() if n.state == "dead"}


# -- task functions (by reference, as everywhere) ----------------------------------------

def square(x):
    return x * x


def fail(x):
    raise ValueError(f"bad {x}")


def slow_square(x, s=0.05):
    time.sleep(s)
    return x * x


def echo(ctx, n):
    """Receives n messages from any task and sends each back, doubled, to its source."""
    got = []
    for _ in range(n):
        m = ctx.recv()
        got.append((m.tag, m.data))
        ctx.send(m.source, m.tag, m.data * 2)
    return got


def ring(ctx, rounds, every):
    """A ring of spawned siblings passing a counter; checkpoints every ``every`` rounds.
    The first sibling says (mailbox) when it is half way, once."""
    st = ctx.restore() or {"i": 0, "acc": ctx.rank}
    right = ctx.siblings[(ctx.rank + 1) % ctx.size]
    left = ctx.siblings[(ctx.rank - 1) % ctx.size]
    while st["i"] < rounds:
        ctx.send(right, 5, st["acc"])
        st["acc"] = (st["acc"] * 7 + ctx.recv(left, 5).data + st["i"]) % 1000003
        st["i"] += 1
        if st["i"] % every == 0:
            ctx.checkpoint(st)
        if st["i"] == rounds // 2 and ctx.rank == 0 and ctx.inc == 0:
            ctx.put_info("ring-half", True)
    return st["acc"]


def group_member(ctx, rounds, size):
    """``rounds`` allreduce rounds of group "g" of ``size`` members, a checkpoint after
    each; the member on rank 3 says (mailbox) when it has done 5, once."""
    st = ctx.restore()
    if st is None:
        ctx.join_group("g")
        ctx.barrier("g", count=size)
        st = (0, 0)
    step, acc = st
    while step < rounds:
        acc += ctx.allreduce("g", step * ctx.tid, timeout=30)
        step += 1
        ctx.checkpoint((step, acc))
        if step == 5 and ctx.node == 3 and ctx.inc == 0:
            ctx.put_info("group-5", True)
    return acc


def checkpoint_until_taken(ctx, a) -> tuple[dict, list]:
    """Checkpoint {"a": a, "calls": k} until one is taken: (the state taken, each call's
    answer)."""
    calls = [ctx.checkpoint({"a": a, "calls": 0})]
    while not calls[-1]:
        assert len(calls) < 2000, "no checkpoint was ever taken"
        time.sleep(0.01)
        calls.append(ctx.checkpoint({"a": a, "calls": len(calls)}))
    return {"a": a, "calls": len(calls) - 1}, calls


def big_state(ctx, mb):
    """A spawned task with ``mb`` MB of state: checkpoints until one is taken (the first is
    skipped while memory for it is made ready), says so (mailbox), waits to be told to
    finish, and returns what it restored or kept."""
    st = ctx.restore()
    if st is None:
        st, calls = checkpoint_until_taken(ctx, np.arange(mb * (1 << 20) // 8, dtype=np.float64))
        ctx.put_info("big-taken", calls)
    ctx.recv(tag=7)
    return [ctx.inc, st["calls"], float(st["a"].sum())]


def group_big(ctx, mb):
    """big_state for a checkpoint group's members: they skip their first checkpoint
    together (the cut's vote), take a later one together, and wait to be told."""
    st = ctx.restore()
    if st is None:
        st, calls = checkpoint_until_taken(ctx, np.full(mb * (1 << 20) // 8, float(ctx.rank)))
        ctx.put_info(f"group-big-{ctx.rank}", calls)
    # told by the VM mailbox (a message from main would do as well: it is logged by
    # main and sent again after a rollback, test_a_message_from_outside_...)
    ctx.get_info("group-big-go", wait=True, timeout=30)
    return [ctx.inc, st["calls"], float(st["a"][-1])]


def held_forever(ctx):
    ctx.recv(tag=999)          # never comes: a kill or the end stops it


# -- the transport itself ------------------------------------------------------------------

def test_both_transports_offer_the_whole_endpoint():
    """What the shells use (clustervm.endpoint.Endpoint) is there on MPI and in process."""
    import inspect

    import mpi4py
    mpi4py.rc.initialize = False     # no singleton MPI_Init in the test process
    mpi4py.rc.finalize = False
    from clustervm.endpoint import Endpoint
    from clustervm.inprocess import InProcessTransport
    from clustervm.transport import Transport
    methods = [n for n, v in vars(Endpoint).items() if callable(v) and not n.startswith("_")]
    attrs = list(Endpoint.__annotations__)
    assert "send" in methods and "failed" in attrs
    mpi_init = inspect.getsource(Transport.__init__)
    w = InProcessWorld(2)
    for name in methods:
        want = list(inspect.signature(getattr(Endpoint, name)).parameters)
        for cls in (Transport, InProcessTransport):
            assert list(inspect.signature(getattr(cls, name)).parameters) == want, (cls, name)
    for name in attrs:
        assert hasattr(w.transport(0), name), name
        assert hasattr(Transport, name) or re.search(rf"self\.{name}\b[^=\n]*=", mpi_init), name
    w.close()


def test_the_shells_and_the_harness_import_no_mpi():
    import subprocess
    import sys
    code = ("import sys, clustervm.coordinator, clustervm.node, clustervm.runtime, "
            "clustervm.testing.inprocess; "
            "assert not [m for m in sys.modules if m.startswith('mpi4py')], 'mpi4py imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_messages_are_encoded_copies_in_order():
    w = InProcessWorld(3)
    got: list = []
    b = w.transport(1)
    b.handler = lambda src, msg: got.append((src, msg))
    arr = np.arange(5)
    a = w.transport(0)
    for i in range(50):
        a.post(1, ("op", i, arr))
    arr[:] = -1                               # after the send: the receiver must not see it
    assert b.wait(lambda: len(got) == 50, timeout=5)
    assert [m[1] for _, m in got] == list(range(50))
    assert all(src == 0 for src, _ in got)
    assert got[0][1][2].tolist() == [0, 1, 2, 3, 4] and got[0][1][2].flags.writeable
    assert got[0][1] is not got[1][1] and got[0][1][2] is not got[1][1][2]
    assert a.counters.msgs_out == 50 and b.counters.msgs_in == 50
    assert 0 in b.last_heard
    with pytest.raises(WireError, match="lock"):
        a.send(1, ("op", threading.Lock()))
    w.close()


def test_kill_drops_traffic_both_ways_and_survivors_hear_of_it():
    w = InProcessWorld(3)
    failures: dict[int, list] = {0: [], 2: []}
    for r in (0, 2):
        w.transport(r).on_failure = failures[r].append
    w.transport(1).handler = lambda src, msg: pytest.fail("a dead rank handled a message")
    w.transport(2).post(1, ("late",))        # queued, never handled: lost with the rank
    w.kill(1)
    with pytest.raises(PeerFailed):
        w.transport(0).send(1, ("x",))
    assert failures[0] == [{1}]               # a send to the dead rank reports it at once
    assert w.transport(2).wait(lambda: bool(failures[2]), timeout=5)   # the next poll does
    assert failures[2] == [{1}]
    assert not w.transport(2).post(1, ("x",))
    w.close()


def test_stopped_rank_handles_nothing_until_resumed():
    w = InProcessWorld(2)
    got: list = []
    t1 = w.transport(1)
    t1.handler = lambda src, msg: got.append(msg)
    w.stop(1)
    w.transport(0).post(1, ("a",))
    done = threading.Event()

    def waiter() -> None:      # a thread of the stopped rank: frozen in its wait
        t1.wait(lambda: bool(got), timeout=10)
        done.set()
    threading.Thread(target=waiter, daemon=True).start()
    assert not done.wait(0.2) and not got
    w.resume(1)
    assert done.wait(5) and got == [("a",)]
    w.close()


def test_delay_keeps_the_order_of_a_pair():
    w = InProcessWorld(2)
    got: list = []
    t1 = w.transport(1)
    t1.handler = lambda src, msg: got.append(msg[0])
    w.delay(1, 0.2)
    w.transport(0).post(1, (0,))
    w.delay(1, 0)
    w.transport(0).post(1, (1,))             # not delayed, yet never before the first
    t0 = time.monotonic()
    assert t1.wait(lambda: len(got) == 2, timeout=5)
    assert got == [0, 1] and time.monotonic() - t0 >= 0.15
    w.close()


def test_idle_waiters_sleep():
    """A thread waiting with nothing coming uses next to no CPU (conditions, no spin)."""
    w = InProcessWorld(2)
    t1 = w.transport(1)
    cpu: list = []

    def idle() -> None:
        c0 = time.thread_time()
        t1.wait(lambda: False, timeout=0.5)
        cpu.append(time.thread_time() - c0)
    th = threading.Thread(target=idle)
    th.start()
    th.join()
    assert cpu[0] < 0.05, cpu
    w.close()


def test_close_releases_frozen_threads():
    w = InProcessWorld(2)
    w.kill(1)
    out: list = []
    th = threading.Thread(target=lambda: out.append(w.transport(1).post(0, ("x",))))
    th.start()
    th.join(0.2)
    assert th.is_alive()                      # a killed rank never runs again...
    w.close()
    th.join(2)
    assert out == [False]                     # ...until the world ends


# -- scheduling ---------------------------------------------------------------------

def test_submit_map_as_completed_exact():
    def main(vm):
        futs = [vm.submit(square, i) for i in range(30)]
        done = sorted(f.result() for f in clustervm_as_completed(futs))
        return [f.result() for f in futs], list(vm.map(square, range(40))), done
    (res, mapped, done), coord = run_vm(main, nodes=3)
    assert res == [i * i for i in range(30)] and done == sorted(res)
    assert mapped == [i * i for i in range(40)]
    assert coord.stats["rerun"] == 0 and not lost(coord)


def clustervm_as_completed(futs):
    import concurrent.futures as cf
    return cf.as_completed(futs, timeout=10)


def test_prefetch_queues_at_most_slots_plus_prefetch_per_node():
    def main(vm):
        futs = [vm.submit(slow_square, i, 0.01) for i in range(30)]
        coord, most = vm._c, 0
        while not all(f.done() for f in futs):
            with coord.lock:
                most = max([most] + [len(n.inflight) for n in coord.core.nodes.values()])
            time.sleep(0.002)
        return [f.result() for f in futs], most
    (res, most), _ = run_vm(main, nodes=2, prefetch=2, slots=1)
    assert res == [i * i for i in range(30)]
    assert 2 <= most <= 3, most           # 1 slot + 2 prefetched, never more


def test_task_exception_has_remote_traceback():
    def main(vm):
        with pytest.raises(ValueError, match="bad 3") as info:
            vm.submit(fail, 3).result()
        return str(info.value.__cause__)
    tb, _ = run_vm(main)
    assert "Traceback on node" in tb and "in fail" in tb


def test_main_error_is_raised_after_the_vm_is_down():
    def main(vm):
        raise KeyError("from main")
    before = set(threading.enumerate())
    with pytest.raises(KeyError, match="from main"):
        run_vm(main)
    assert set(threading.enumerate()) <= before


def test_timeout_ends_the_vm_and_says_what_it_held():
    def main(vm):
        tid = vm.spawn(held_forever)[0]
        vm.join(tid)
    with pytest.raises(VMTimeout, match="tasks not over"):
        run_vm(main, timeout=1.0)


# -- spawned tasks and messages --------------------------------------------------------

def test_spawned_tasks_messages_tags_and_any():
    def main(vm):
        tid = vm.spawn(echo, 3)[0]
        vm.send(tid, 1, 10)
        vm.send(tid, 2, "ab")
        vm.send(tid, 1, [1])
        back = [vm.recv(tid, 2).data, vm.recv(clustervm.ANY, 1).data, vm.recv(tid).data]
        return back, vm.join(tid)
    (back, got), _ = run_vm(main)
    assert back == ["abab", 20, [1, 1]]
    assert got == [(1, 10), (2, "ab"), (1, [1])]


def pong_side(ctx):
    m = ctx.recv()
    ctx.send(m.source, 2, m.data + 1)         # to a task it learned of from the message
    ctx.send(ctx.parent, 3, "hi")             # to main
    return m.data


def ping_side(ctx, peer):
    ctx.send(peer, 1, 41)                     # to a task of an earlier spawn, elsewhere
    return ctx.recv(peer, 2).data


def ring_once(ctx):
    ctx.send(ctx.siblings[(ctx.rank + 1) % ctx.size], 4, ctx.rank)   # first: a sibling
    return ctx.recv(tag=4).data


def parent_of_one(ctx):
    [child] = ctx.spawn(echo, 1, where=ctx.node % 3 + 1)
    ctx.send(child, 1, 5)                     # to the task it just spawned
    return ctx.recv(child).data


def test_a_first_message_does_not_ask_where_its_receiver_is(monkeypatch):
    asked = []
    locate = Coordinator.api_locate

    def counting(self, reply, tid, *args):
        asked.append(tid)
        return locate(self, reply, tid, *args)
    monkeypatch.setattr(Coordinator, "api_locate", counting)

    def main(vm):
        [pong] = vm.spawn(pong_side, where=2)
        [ping] = vm.spawn(ping_side, pong, where=1)
        ring = vm.spawn(ring_once, count=3)
        [parent] = vm.spawn(parent_of_one, where=3)
        return ([vm.join(t) for t in (pong, ping, *ring, parent)], vm.recv(pong, 3).data)
    got, _ = run_vm(main, nodes=3)
    assert got == ([41, 42, 2, 0, 1, 10], "hi")
    assert asked == []


def test_message_to_a_task_that_ended_fails_clearly():
    def main(vm):
        tid = vm.spawn(echo, 0)[0]
        vm.join(tid)
        with pytest.raises(DeadTaskError, match="has ended"):
            vm.send(tid, 1, "late")
        return True
    assert run_vm(main)[0]


# -- failover ------------------------------------------------------------------------

def test_node_killed_mid_task_short_tasks_rerun_exact(tmp_path):
    expected = baseline(DRILL_APP, DRILL, "drill:")

    def fault(ivm):
        return when(lambda: markers(tmp_path, "mid"), lambda m: ivm.kill(m[0][1]),
                    "a task half done")
    out, ivm = run_app(DRILL_APP, [*DRILL, "--task-ms", "100", "--markers", str(tmp_path)],
                       fault=fault)
    assert line(out, "drill:") == expected
    assert drill_check(out)["dups"] == 0
    (rank, how), = lost(ivm.coordinator).items()
    assert "ULFM" in how and ivm.coordinator.stats["rerun"] >= 1
    assert f"NODE_DOWN:{rank}:" in line(out, "drill-events:")


def test_two_nodes_killed_at_once(tmp_path):
    expected = baseline(DRILL_APP, DRILL, "drill:", nodes=4)

    def two_ranks():
        ranks = {r for _, r in markers(tmp_path, "mid")}
        return sorted(ranks)[:2] if len(ranks) >= 2 else None

    def kill(ranks):
        for r in ranks:
            ivm_box[0].kill(r)
    ivm_box: list = []

    def fault(ivm):
        ivm_box.append(ivm)
        return when(two_ranks, kill, "tasks half done on two nodes")
    out, ivm = run_app(DRILL_APP, [*DRILL, "--task-ms", "100", "--markers", str(tmp_path)],
                       nodes=4, fault=fault)
    assert line(out, "drill:") == expected and drill_check(out)["dups"] == 0
    assert len(lost(ivm.coordinator)) == 2


def ring_killed_half_way() -> tuple[list, list, InProcessVM]:
    """A ring of 4 spawned tasks on 3 nodes, run undisturbed and then with node 2 killed
    half way: (the undisturbed results, the results with the kill, that run's VM)."""
    def main(vm, kill=None):
        tids = vm.spawn(ring, 60, 7, count=4)
        if kill is not None:
            vm.get_info("ring-half", wait=True, timeout=20)
            kill(2)
        return [vm.join(t) for t in tids]
    expected, _ = run_vm(main, nodes=3)
    ivm = InProcessVM(3, test_config())
    return expected, ivm.run(lambda vm: main(vm, ivm.kill)), ivm


def test_spawned_task_restarts_from_checkpoint_with_replayed_messages():
    """A ring of spawned tasks checkpointing every few rounds; a node dies mid-ring: its
    task restarts from its checkpoint, the senders replay what it had not received,
    and every value is the undisturbed one."""
    expected, got, ivm = ring_killed_half_way()
    assert got == expected
    coord = ivm.coordinator
    assert list(lost(coord)) == [2] and coord.stats["rerun"] >= 1


def test_restarted_task_replays_to_a_task_that_has_ended(tmp_path):
    expected = baseline(PAIR_APP, [], "pair:", nodes=2)

    def fault(ivm):
        def kill(_):
            time.sleep(0.3)                   # b returns at once: it has ended by now
            coord = ivm.coordinator
            a = next(r for r in coord.tasks.values() if r.args and r.args[0] == "a")
            ivm.kill(a.node)
        return when(lambda: list(tmp_path.glob("linger-*")), kill, "task a lingering")
    out, ivm = run_app(PAIR_APP, ["--markers", str(tmp_path)], nodes=2, fault=fault)
    assert line(out, "pair:") == expected
    assert ivm.coordinator.stats["rerun"] == 1


@pytest.mark.parametrize("final", [False, True])
def test_a_group_member_lost_after_its_peer_ended(tmp_path, final):
    """A checkpoint group of two: b returns, a lingers, and a's node is lost. Without a
    checkpoint after the last round, a would go back to a checkpoint before b's last
    messages, which nobody can send again (a group logs none): the job ends with an
    error that says so, instead of waiting forever. With one (--final), a goes back to it
    and the result is exact."""
    args = ["--group", *(["--final"] if final else [])]
    expected = baseline(PAIR_APP, args, "pair:", nodes=2)

    def fault(ivm):
        def kill(found):
            time.sleep(0.3)                   # b returns at once: it has ended by now
            tid = int(found[0].name.rsplit("-", 1)[1])
            ivm.kill(ivm.coordinator.tasks[tid].node)
        return when(lambda: list(tmp_path.glob("linger-*")), kill, "task a lingering")
    if final:
        out, ivm = run_app(PAIR_APP, [*args, "--markers", str(tmp_path)], nodes=2,
                           fault=fault)
        assert line(out, "pair:") == expected
        assert ivm.coordinator.stats["rerun"] == 1
    else:
        with pytest.raises(CheckpointError, match=r"checkpoint group \d+ cannot go back to its "
                           r"checkpoint 2: task\(s\) \d+ of it ended after that checkpoint"):
            run_app(PAIR_APP, [*args, "--markers", str(tmp_path)], nodes=2, fault=fault)


def test_a_first_big_checkpoint_is_skipped_then_taken_and_restores():
    """A 40 MB state: the first checkpoint returns False (memory for it is made ready
    behind the task: a copy into new memory would stop it for the page faults), a later
    one is taken; the task's node is lost and it comes back from that one, whole."""
    def main(vm, kill):
        (tid,) = vm.spawn(big_state, 40)
        calls = vm.get_info("big-taken", wait=True, timeout=30)
        deadline = time.monotonic() + 30
        # held by the node and its buddy (a task's first checkpoint is told to the
        # coordinator: Node.checkpoint)
        while vm._c.core.tasks[tid].ckpt is None:
            assert time.monotonic() < deadline, "the checkpoint was never acknowledged"
            time.sleep(0.01)
        kill(vm._c.tasks[tid].node)
        vm.send(tid, 7, None)
        return calls, vm.join(tid)
    ivm = InProcessVM(3, test_config(), timeout=60)
    calls, (inc, kept_calls, total) = ivm.run(lambda vm: main(vm, ivm.kill))
    assert calls[0] is False and calls[-1] is True and kept_calls == len(calls) - 1
    n = 40 * (1 << 20) // 8
    assert inc == 1 and total == float(n * (n - 1) // 2)


def test_a_checkpoint_groups_first_big_checkpoint_is_skipped_by_every_member():
    """Two members with 40 MB each: their first checkpoint is skipped by both (a member's
    vote in the cut), a later one is taken by both; a member's node is lost and the
    group goes back to that one, whole (the coordinator, told of no epoch, asks the
    nodes what they hold). In one full test run on a loaded box the surviving node's
    answer took longer than ASK_WAIT_S (0.25 s) and the group went back to its start;
    since, a node whose answer may spare that is waited for (ASK_LONGEST_S)."""
    def main(vm, kill):
        tids = vm.spawn(group_big, 40, count=2, checkpoint="group")
        calls = [vm.get_info(f"group-big-{i}", wait=True, timeout=30) for i in range(2)]
        deadline = time.monotonic() + 30
        while any(t not in ivm.nodes[vm._c.tasks[t].node]._acked for t in tids):
            assert time.monotonic() < deadline, "no buddy said it holds the checkpoints"
            time.sleep(0.01)
        assert all(vm._c.core.tasks[t].ckpt is None for t in tids)   # not told of them
        kill(vm._c.tasks[tids[1]].node)
        while any(vm._c.core.tasks[t].inc == 0 for t in tids):   # after the nodes' answers
            assert time.monotonic() < deadline, "the group never went back"
            time.sleep(0.01)
        vm.put_info("group-big-go", True)
        return calls, [vm.join(t) for t in tids]
    ivm = InProcessVM(3, test_config(), timeout=60)
    calls, results = ivm.run(lambda vm: main(vm, ivm.kill))
    assert calls[0] == calls[1] and calls[0][0] is False and calls[0][-1] is True
    assert results == [[1, len(calls[0]) - 1, 0.0], [1, len(calls[0]) - 1, 1.0]]


def outside_member(ctx):
    """A checkpoint group member that takes one checkpoint, then (rank 1) a message from
    main: after a rollback to that checkpoint it must get that message again."""
    st = ctx.restore()
    if st is None:
        st = {"n": ctx.rank}
        assert ctx.checkpoint(st)
    got = ctx.recv(tag=5).data if ctx.rank == 1 else None
    ctx.put_info(f"outside-{ctx.rank}-{ctx.inc}", True)
    ctx.get_info("outside-go", wait=True, timeout=30)
    return [ctx.inc, got]


def test_a_message_from_outside_a_checkpoint_group_is_sent_again_after_a_rollback():
    """Main's message to a member, taken after the member's checkpoint, is logged by main
    (members log nothing to each other), so the member's incarnation after the rollback
    gets it again (it was lost before: only the members' own messages are in the cut)."""
    def main(vm, kill):
        tids = vm.spawn(outside_member, count=2, checkpoint="group")
        deadline = time.monotonic() + 30
        while any(t not in ivm.nodes[vm._c.tasks[t].node]._acked for t in tids):
            assert time.monotonic() < deadline, "no buddy said it holds the checkpoints"
            time.sleep(0.01)
        vm.send(tids[1], 5, 42)
        vm.get_info("outside-1-0", wait=True, timeout=30)      # taken by incarnation 0
        kill(vm._c.tasks[tids[1]].node)
        while any(vm._c.core.tasks[t].inc == 0 for t in tids):
            assert time.monotonic() < deadline, "the group never went back"
            time.sleep(0.01)
        vm.put_info("outside-go", True)
        return [vm.join(t) for t in tids]
    ivm = InProcessVM(3, test_config(), timeout=60)
    assert ivm.run(lambda vm: main(vm, ivm.kill)) == [[1, None], [1, 42]]


def test_a_replay_log_that_cannot_be_packed_at_the_end_does_not_stop_the_job(
        tmp_path, monkeypatch, caplog):
    """With a journal a task's replay log goes along with its end; if packing it fails
    (no memory, say), the end is still told (the job does not wait forever), and the
    error says what a --resume may lack."""
    import sys

    from clustervm import wire
    pack = wire.pack_frames

    def failing(frames, *args, **kwargs):
        if sys._getframe(1).f_code.co_name == "_do_send_exited":
            raise MemoryError("no memory for it")
        return pack(frames, *args, **kwargs)
    expected = baseline(PAIR_APP, [], "pair:", nodes=2)
    monkeypatch.setattr(wire, "pack_frames", failing)
    with caplog.at_level(logging.ERROR, logger="clustervm.node"):
        out, _ = run_app(PAIR_APP, [], nodes=2, checkpoint_dir=str(tmp_path / "ck"))
    assert line(out, "pair:") == expected
    assert any("its replay log cannot go to the job journal (MemoryError" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_coordinator_bug_on_a_tasks_end_ends_the_job_clearly(monkeypatch, caplog):
    """A coordinator handler that raises (a bug of ours) used to drop the message and
    leave ``vm.join`` waiting forever; now the job ends with an InternalError naming the
    message and where it failed."""
    def broken(self, src, msg):
        raise KeyError("injected")
    monkeypatch.setattr(Coordinator, "_on_exited", broken)

    def main(vm):
        tid = vm.spawn(slow_square, 3, 0.0)[0]
        t0 = time.monotonic()
        with pytest.raises(clustervm.InternalError) as info:
            vm.join(tid)
        return str(info.value), time.monotonic() - t0
    with caplog.at_level(logging.ERROR, logger="clustervm.coordinator"):
        text, waited = InProcessVM(2, test_config(), timeout=30).run(main)
    assert "failed on message EXITED from rank 1" in text and "KeyError: 'injected'" in text, text
    assert "in broken" in text and "bug in clustervm" in text, text
    assert waited < 10
    assert any("Traceback" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_a_node_bug_on_a_spawn_ends_the_job_clearly(monkeypatch):
    """A node's handler that raises (a bug of ours) dropped the message: a SPAWN lost so
    left vm.join waiting forever. Now the node tells the coordinator, and the job ends
    with an InternalError naming the node, the message and where it failed."""
    from clustervm.node import Node

    def broken(self, src, msg):
        raise KeyError("injected")
    monkeypatch.setattr(Node, "_on_spawn", broken)

    def main(vm):
        tid = vm.spawn(slow_square, 3, 0.0)[0]
        with pytest.raises(clustervm.InternalError) as info:
            vm.join(tid)
        return str(info.value)
    text = InProcessVM(2, test_config(), timeout=30).run(main)
    assert re.search(r"clustervm's node \d failed on message SPAWN from rank 0: KeyError: "
                     r"'injected' \(at test_inprocess.py:\d+ in broken\)", text), text


def test_notify_callbacks_and_messages_on_a_lost_node(tmp_path):
    args = [*DRILL, "--spawn", "--notify", "--ckpt-kb", "16"]
    expected = baseline(DRILL_APP, args, "drill:")

    def fault(ivm):
        return when(lambda: markers(tmp_path, "mid"), lambda m: ivm.kill(m[0][1]),
                    "a task half done")
    out, ivm = run_app(DRILL_APP, [*args, "--task-ms", "300", "--markers", str(tmp_path)],
                       fault=fault)
    assert line(out, "drill:") == expected
    assert drill_check(out)["restored"] >= 1
    (rank, _), = lost(ivm.coordinator).items()
    note = line(out, "drill-notify:")
    assert f"callback_down=[{rank}]" in note and f"message_down=[{rank}]" in note, note
    assert "task_exit=12 task_exit_unique=12" in note, note


def test_stopped_node_found_by_heartbeat_and_killed(tmp_path):
    expected = baseline(DRILL_APP, DRILL, "drill:")

    def fault(ivm):
        return when(lambda: markers(tmp_path, "mid"), lambda m: ivm.stop(m[0][1]),
                    "a task half done")
    out, ivm = run_app(DRILL_APP, [*DRILL, "--task-ms", "100", "--markers", str(tmp_path)],
                       fault=fault, **HANG)
    assert line(out, "drill:") == expected and drill_check(out)["dups"] == 0
    (rank, how), = lost(ivm.coordinator).items()
    assert how.startswith("heartbeat"), how
    assert ivm.world.terminated == [rank] and rank in ivm.world.dead   # never trusted again


def test_stopped_node_that_comes_back_is_never_trusted_again():
    """The kill does not reach the hung node (as on a host the coordinator cannot
    signal): when it goes on, its results and heartbeats are dropped, it gets no work."""
    def main(vm):
        futs = [vm.submit(slow_square, i, 0.05) for i in range(12)]
        time.sleep(0.08)
        ivm.stop(2)
        first = [f.result() for f in futs]
        coord = vm._c
        assert coord.nodes[2].state == "dead"
        ivm.resume(2)                          # it wakes up and sends what it had
        time.sleep(0.3)
        second = list(vm.map(slow_square, range(12), [0.01] * 12))
        return first, second, {n.rank: n.state for n in coord.nodes.values()}
    ivm = InProcessVM(2, test_config(**HANG))
    ivm.world.unkillable(2)
    first, second, states = ivm.run(main)
    assert first == [i * i for i in range(12)] and second == first
    assert states[2] == "dead" and 2 in ivm.coordinator.transport.ignored
    assert ivm.world.terminated == [2] and 2 not in ivm.world.dead


def test_spare_takes_over_a_dead_node(tmp_path):
    expected = baseline(DRILL_APP, DRILL, "drill:", nodes=3)

    spare_early: list = []

    def kill(m):
        spare_early.extend(x for x in markers(tmp_path, "start") if x[1] == 3)
        ivm_box[0].kill(m[0][1])
    ivm_box: list = []

    def fault(ivm):
        ivm_box.append(ivm)
        return when(lambda: markers(tmp_path, "mid"), kill, "a task half done")
    out, ivm = run_app(DRILL_APP, [*DRILL, "--task-ms", "100", "--markers", str(tmp_path)],
                       nodes=3, fault=fault, spares=1)
    assert line(out, "drill:") == expected
    ev = line(out, "drill-events:")
    (rank, _), = lost(ivm.coordinator).items()
    assert rank in (1, 2) and f"NODE_DOWN:{rank}:" in ev and "NODE_ADDED:3:spare" in ev, ev
    assert [m for m in markers(tmp_path, "end") if m[1] == 3], "the spare ran no task"
    assert not spare_early, "the spare (rank 3) ran work before any node was lost"


def test_every_worker_lost_fails_clearly():
    def main(vm):
        futs = [vm.submit(slow_square, i, 0.05) for i in range(6)]
        time.sleep(0.05)
        ivm.kill(1)
        with pytest.raises(NoNodesError, match="every worker node is lost") as info:
            [f.result(timeout=10) for f in futs]
        return str(info.value)
    ivm = InProcessVM(1, test_config())
    assert "node 1 " in ivm.run(main)


# -- groups and the mailbox -------------------------------------------------------------

def test_every_group_call_and_the_mailbox():
    import json

    import test_groups
    out, _ = run_app(GROUPS_APP, ["--tasks", "3"], nodes=2)
    # the same checks as the mpiexec test
    test_groups.check_groups_calls(json.loads(line(out, "groups-result=").split("=", 1)[1]))


def test_freeze_group_stays_on_the_hub_in_process():
    def main(vm):
        vm.join_group("fz")
        size = vm.freeze_group("fz")
        return size, vm.group_on_mpi("fz"), vm.allreduce("fz", 5)
    assert run_vm(main)[0] == (1, False, 5)


def test_collective_completes_after_a_member_node_is_killed():
    def main(vm, kill=None):
        tids = [vm.spawn(group_member, 20, 3, where=r)[0] for r in (1, 2, 3)]
        if kill is not None:
            vm.get_info("group-5", wait=True, timeout=20)
            kill(3)
        return [vm.join(t) for t in tids], vm.get_info("group-5")
    expected, _ = run_vm(main, nodes=3)
    ivm = InProcessVM(3, test_config())
    got = ivm.run(lambda vm: main(vm, ivm.kill))
    assert got == expected and list(lost(ivm.coordinator)) == [3]
    assert got[1] is True                   # the lost node's mailbox entry is kept


def group_member_plain(ctx, rounds, size):
    """As group_member without checkpoints: a restarted member starts over, joins again
    and calls its rounds again (answered from the coordinator's kept results)."""
    ctx.join_group("g")
    ctx.barrier("g", count=size)
    acc = 0
    for step in range(rounds):
        acc += ctx.allreduce("g", step * ctx.tid, timeout=30)
        if step == 5 and ctx.node == 3 and ctx.inc == 0:
            ctx.put_info("group-5", True)
    return acc


def test_collective_completes_after_a_member_restarts_from_scratch():
    def main(vm, kill=None):
        tids = [vm.spawn(group_member_plain, 20, 3, where=r)[0] for r in (1, 2, 3)]
        if kill is not None:
            vm.get_info("group-5", wait=True, timeout=20)
            kill(3)
        return [vm.join(t) for t in tids]
    expected, _ = run_vm(main, nodes=3)
    ivm = InProcessVM(3, test_config())
    got = ivm.run(lambda vm: main(vm, ivm.kill))
    assert got == expected and ivm.coordinator.stats["rerun"] >= 1


def test_collective_fails_clearly_when_a_member_cannot_come_back():
    """The only node dies: its member cannot be restarted, main's round fails, naming it."""
    def main(vm):
        vm.join_group("g")
        vm.spawn(group_member_plain, 20, 2)
        vm.barrier("g", count=2)
        vm.allreduce("g", 0)
        ivm.kill(1)
        with pytest.raises(clustervm.GroupError) as info:
            for _ in range(19):
                vm.allreduce("g", 0, timeout=20)
        return str(info.value)
    ivm = InProcessVM(1, test_config())
    text = ivm.run(main)
    # which comes first is a race: the group sees its member lost with the node, or the
    # member's restart fails (no node left) before the group does; both name it
    assert (re.search(r"member task\(s\) \[\d+\] (were )?lost with node 1", text) or
            re.search(r"member task \d+ \(instance 1\) ended with an error before taking "
                      r"part: NoNodesError: every worker node is lost \(node 1", text)), text


def test_checkpoints_streaming_when_the_node_dies(tmp_path):
    """As test_failover's: 1 MiB checkpoints after every step, on disk; a node dies."""
    args = ["--tasks", "9", "--steps", "12"]
    expected = baseline(DRILL_APP, args, "drill:")
    ck, mk = tmp_path / "ck", tmp_path / "mk"
    mk.mkdir()

    def ckpts():
        d = ck / "ckpt"
        return d.is_dir() and len({p.name.split(".")[0] for p in d.iterdir()
                                   if p.name.endswith(".ckpt")}) >= 2

    def fault(ivm):
        return when(lambda: markers(mk, "mid") and ckpts() and markers(mk, "mid"),
                    lambda m: ivm.kill(m[0][1]), "a task half done, checkpoints on disk")
    out, ivm = run_app(DRILL_APP, [*args, "--task-ms", "240", "--ckpt-kb", "1024",
                                   "--markers", str(mk)], fault=fault, checkpoint_dir=str(ck))
    assert line(out, "drill:") == expected
    assert drill_check(out)["restored"] >= 1
    rep = ivm.coordinator.report()
    m = re.search(r"(\d+) checkpoint\(s\) written, (\d+) restored", rep)
    assert m and int(m.group(2)) >= 1, rep
    left = [p.name for p in (ck / "ckpt").iterdir()]
    assert not [n for n in left if n.endswith(".ckpt") or n.startswith(".tmp.")], left


def test_node_dies_while_sending_large_results(tmp_path):
    """8 MiB results; the node dies right after one returned: every blob arrives once."""
    expected = baseline(DRILL_APP, DRILL, "drill:")

    def third_end():
        ends: dict[int, int] = {}
        for _, r in markers(tmp_path, "end"):
            ends[r] = ends.get(r, 0) + 1
            if ends[r] >= 3:
                return r
        return None

    def fault(ivm):
        return when(third_end, ivm.kill, "a node's third result on its way")
    out, ivm = run_app(DRILL_APP, [*DRILL, "--task-ms", "30", "--result-kb", "8192",
                                   "--markers", str(tmp_path)], fault=fault)
    assert line(out, "drill:") == expected
    check = drill_check(out)
    assert check["blobs_ok"] == 12 and check["dups"] == 0, check
    assert len(lost(ivm.coordinator)) == 1


def test_resume_reuses_journaled_results(tmp_path):
    """A job that ends early (here main stops) resumes from its journal: finished tasks
    are not run again, the others restart from their checkpoints; results exact."""
    def main(vm, stop_after=None):
        out = {}
        for i, r in enumerate(vm.map(slow_square, range(12), [0.03] * 12, ordered=False)):
            out[i] = r
            if stop_after is not None and i + 1 >= stop_after:
                raise SystemExit(3)
        return sorted(out.values())
    ck = str(tmp_path / "ck")
    ivm = InProcessVM(2, test_config(checkpoint_dir=ck))
    with pytest.raises(SystemExit):
        ivm.run(lambda vm: main(vm, stop_after=4))
    ivm2 = InProcessVM(2, test_config(checkpoint_dir=ck, resume=True))
    assert ivm2.run(main) == [i * i for i in range(12)]
    reused = ivm2.coordinator.stats["reused"]
    assert 4 <= reused < 12, reused


def test_resume_never_takes_a_file_a_hung_node_wrote_after_its_task_went_on(
        tmp_path, monkeypatch):
    """A node is lost and its ring task goes on elsewhere from a checkpoint (the
    coordinator journals where from); the job then stops. A late file of the lost
    incarnation, newer than that checkpoint, appears in the lost node's directory (a
    node found dead that was only hung, and wrote when it woke): ``--resume`` leaves it
    out and gives the undisturbed result (before, it took the newest file)."""
    from clustervm import journal as J
    from clustervm import nodefiles
    from clustervm.coordinator import RESTART
    from clustervm.wire import loads
    monkeypatch.setenv("CLUSTERVM_JOB_KEY", "test-late-file")      # nodes write files

    def main(vm, kill=None):
        tids = vm.spawn(ring, 3000, 7, count=4)
        if kill is not None:
            vm.get_info("ring-half", wait=True, timeout=20)
            kill(2)
            deadline = time.monotonic() + 20
            while not ivm.coordinator.stats["ckpt_restored"] and time.monotonic() < deadline:
                time.sleep(0.005)
            raise SystemExit(3)
        return [vm.join(t) for t in tids]
    expected, _ = run_vm(main, nodes=3)
    ck = str(tmp_path / "ck")
    ivm = InProcessVM(3, test_config(checkpoint_dir=ck))
    with pytest.raises(SystemExit):
        ivm.run(lambda vm: main(vm, ivm.kill))
    restarts = [(int(r.key), *loads(r.frames[0], [])) for r in J.Journal(ck).replay()
                if r.kind == RESTART]
    assert restarts, "no restart journaled"
    late = nodefiles.OwnFiles(ck, 2, lambda *a: None, lambda b: None)
    for tid, inc, base in restarts:
        late.write(tid, inc - 1, base + 1000, b"not a checkpoint of this course")
    assert late.flush(10)
    late.close(5)
    ivm2 = InProcessVM(3, test_config(checkpoint_dir=ck, resume=True))
    assert ivm2.run(main) == expected
    files = ivm2.coordinator.node_files
    assert all(not files.on_course(tid, base + 1000, inc - 1) for tid, inc, base in restarts)


def test_add_nodes_takes_spares_first_and_spawns_nothing_in_process():
    def main(vm):
        before = vm.workers
        got = vm.add_nodes(1)
        more = vm.add_nodes(1)            # no spare left, and no MPI_Comm_spawn here
        states = sorted(n.state for n in vm.nodes)
        return before, got, more, vm.workers, states, list(vm.map(square, range(10)))
    (before, got, more, after, states, res), _ = run_vm(main, nodes=3, spares=1)
    assert (before, got, more, after) == (2, 1, 0, 3), (before, got, more, after)
    assert states == ["alive", "alive", "alive", "coordinator"], states
    assert res == [i * i for i in range(10)]


def test_a_node_slower_than_the_heartbeat_timeout_is_taken_for_hung():
    """Messages from and to node 2 take longer than the heartbeat timeout: it is
    declared dead by heartbeat, ended, and its tasks rerun elsewhere, exact."""
    def main(vm):
        futs = [vm.submit(slow_square, i, 0.02) for i in range(20)]
        time.sleep(0.05)
        ivm.delay(2, 2.0)
        return [f.result(timeout=20) for f in futs]
    ivm = InProcessVM(2, test_config(**HANG))
    assert ivm.run(main) == [i * i for i in range(20)]
    assert lost(ivm.coordinator)[2].startswith("heartbeat")
    assert ivm.world.terminated == [2]


def leaky(s):
    time.sleep(s)              # never calls into clustervm: cannot be stopped


def test_a_thread_left_running_is_reported():
    def main(vm):
        vm.submit(leaky, 0.6)
        time.sleep(0.1)        # it runs now; main leaves it behind
    ivm = InProcessVM(1, test_config(), linger=0.2)
    with pytest.raises(clustervm.ClusterVMError, match="left threads running"):
        ivm.run(main)
    time.sleep(0.6)            # let it end before the next test counts threads


def test_pickle_carries_what_msgpack_cannot():
    out, _ = run_app(str(ROOT / "tests" / "apps" / "pickle_callables.py"), [], nodes=1,
                     pickle=True)
    assert line(out, "pickled=") == 'pickled={"bound": "2/3", "partial": "3/2"}'


def test_corrupt_newest_checkpoint_falls_back_on_resume(tmp_path, caplog):
    """As test_failover's: the job ends while tasks hold two checkpoint versions; the
    newest of one is corrupted; the resumed job restores the previous one, exact."""
    import failover_app
    args = (1, 20, 600.0, 16, 0, "")              # seed, steps, task ms, ckpt KiB, result, markers
    ck = tmp_path / "ck"

    def versions() -> dict[str, list[Path]]:
        from test_failover import ckpt_files    # checkpoint versions by task, oldest first
        return ckpt_files(ck)

    def first(vm):
        [vm.submit(failover_app.work, i, *args) for i in range(4)]
        deadline = time.monotonic() + 60
        while sum(len(v) >= 2 for v in versions().values()) < 3:
            assert time.monotonic() < deadline, "no two checkpoint versions of three tasks"
            time.sleep(0.01)
        raise SystemExit(9)                        # the job ends here, futs never done

    def again(vm):
        return sorted((r["i"], r["acc"], r["restored"]) for r in
                      vm.map(failover_app.work, range(4), *[[x] * 4 for x in args]))
    with pytest.raises(SystemExit):     # (on a loaded box a task may take a while to stop)
        InProcessVM(3, test_config(checkpoint_dir=str(ck)), timeout=90, linger=30).run(first)
    stem, files = next((s, f) for s, f in sorted(versions().items()) if len(f) >= 2)
    newest = files[-1]
    data = bytearray(newest.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    newest.write_bytes(bytes(data))
    ivm = InProcessVM(3, test_config(checkpoint_dir=str(ck), resume=True))
    got = ivm.run(again)
    expected, _ = run_vm(again, nodes=2)
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert sum(g[2] for g in got) >= 3, got
    assert "1 corrupt skipped" in ivm.coordinator.report()
    assert re.search(r"corrupt checkpoint .* skipped, trying the previous version", caplog.text)
    assert newest.name in caplog.text


HEAT2D = str(ROOT / "examples" / "heat2d.py")


def test_report_says_how_soon_a_killed_nodes_tasks_run_again():
    """heat2d, a node killed once checkpoints are stored: the checksum is the
    undisturbed one, and the report gives, for that node, the time from the loss's
    detection to the last of its tasks sent to run again (issue 14, item 4)."""
    args = ["--size", "48", "--tasks", "4", "--steps", "240", "--checkpoint-every", "20",
            "--step-ms", "2"]
    expected = baseline(HEAT2D, args, "checksum=")

    def fault(ivm):
        def stored():
            c = ivm.coordinator          # None until the VM is up
            # each task's first checkpoint with received messages is told to the
            # coordinator; later ones are held by the nodes, which say so to each other
            return c is not None and c.stats["ckpt_written"] >= 4 and \
                sum(len(n._acked) for n in list(ivm.nodes.values())) >= 4
        return when(stored, lambda _: ivm.kill(2), "checkpoints of every task")
    out, ivm = run_app(HEAT2D, args, fault=fault)
    assert line(out, "checksum=") == expected
    assert list(lost(ivm.coordinator)) == [2]
    rep = ivm.coordinator.report()
    m = re.search(r"re-dispatch after loss detected: node 2 (\d+\.\d+) s \((\d+) task\(s\)\)",
                  rep)
    assert m and int(m.group(2)) >= 1, rep
    (r,) = ivm.coordinator.restarts
    assert r.seconds is not None and r.seconds >= 0 and f"{r.seconds:.3f}" == m.group(1)
    assert ivm.coordinator.stats["ckpt_restored"] >= 1, rep


def test_mains_output_is_out_before_the_job_is_marked_finished(tmp_path, monkeypatch):
    """done.json tells the supervisor the result is out, and a lost host's PRRTE may end
    the job right after (seen in CI: status 0, the result line lost in rank 0's buffer):
    main's output and the report are flushed before it is written."""
    import sys

    import clustervm.supervisor as supervisor

    out = io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8")      # block-buffered, as a pipe
    seen: list[bytes] = []

    def write_done(directory: str, status: int) -> None:
        seen.append(out.getvalue())
        real_write_done(directory, status)

    real_write_done = supervisor.write_done
    monkeypatch.setattr(supervisor, "write_done", write_done)
    monkeypatch.setattr(sys, "stdout", stdout)
    run_vm(lambda vm: print("result=42"), checkpoint_dir=str(tmp_path / "ck"))
    assert seen == [b"result=42\n"]
    assert supervisor.read_done(str(tmp_path / "ck")) == 0
