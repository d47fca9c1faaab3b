"""The coordinator core without MPI: events in, assertions on the instructions out."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clustervm.core import Core, LossCause, NodeState, TaskKind, TaskState, replay_journal
from clustervm.core import events as E
from clustervm.core import instructions as I
from clustervm.errors import NoNodesError

CORE_DIR = Path(__file__).resolve().parents[1] / "clustervm" / "core"


def of(out: list, kind: type) -> list:
    return [i for i in out if isinstance(i, kind)]


def up(n: int = 3, **kw) -> Core:
    """A core whose nodes 1..n have all said hello at t=0."""
    core = Core(range(1, n + 1), **kw)
    core.handle(*(E.NodeHello(r, f"h{r}", 100 + r, 0.0) for r in range(1, n + 1)))
    return core


def lose(core: Core, *events: E.Event, holding: dict | None = None) -> list:
    """Handle ``events`` (losses) and answer the nodes' query they start (I.AskHeld: a
    log-mode task's checkpoints are not told to the coordinator) as the nodes would:
    every alive holder of a checkpoint the coordinator knows of holds it, or as
    ``holding`` says (node -> ``[(tid, seq, inc, age), ...]``)."""
    out = core.handle(*events)
    for ask in of(out, I.AskHeld):
        if holding is None:
            have: dict = {}
            for t in core.tasks.values():
                for c in (t.ckpt, t.prev):
                    for r in (c[1] if c is not None else ()):
                        have.setdefault(r, []).append((t.tid, c[0], t.inc, 0.0))
        else:
            have = holding
        for r in ask.ranks:
            out += core.handle(E.HeldReported(r, ask.qid, have.get(r, []), 9.0))
    return out


def submit(core: Core, *tids: int, parent: int = 1, now: float = 0.0, where=None) -> list:
    return core.handle(*(E.TaskSubmitted(t, parent, now, where) for t in tids))


def test_core_imports_no_io() -> None:
    allowed = {"__future__", "bisect", "dataclasses", "enum", "heapq", "collections", "typing",
               "clustervm.errors", "clustervm.protocol",
               # the groups' reductions and the copies of values they keep (pure)
               "clustervm.reduce", "clustervm.values"}
    files = sorted(CORE_DIR.glob("*.py"))
    assert {"state.py", "node.py"} <= {p.name for p in files}   # the coordinator's and the node's
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    continue                         # clustervm.core itself
                base = "clustervm" if node.level == 2 else ""
                if node.module is None:             # from .. import protocol
                    names = [f"{base}.{a.name}" for a in node.names]
                else:
                    names = [f"{base}.{node.module}" if base else node.module]
            else:
                continue
            for name in names:
                assert name in allowed, f"{path.name} imports {name}: the core does no I/O"


def test_dispatch_fills_least_loaded_nodes_up_to_the_cap() -> None:
    core = up(3, slots=1, prefetch=1)
    out = submit(core, *range(10, 18))
    sent = {d.rank: [tid for tid, _ in d.items] for d in of(out, I.Dispatch)}
    assert sorted(sent) == [1, 2, 3]
    assert all(len(v) == 2 for v in sent.values())          # cap = slots + prefetch
    assert sorted(sum(sent.values(), [])) == list(range(10, 16))
    assert [t.tid for t in core.pending] == [16, 17]
    # one result frees one slot: exactly one more task goes to that node
    out = core.handle(E.TasksDone(2, [(sent[2][0], True, "v")], 0.5))
    assert of(out, I.ResolveTask) == [I.ResolveTask(sent[2][0], TaskKind.SHORT, True, "v")]
    assert of(out, I.Dispatch) == [I.Dispatch(2, ((16, 0),))]


def test_where_limits_placement_and_waits_for_its_node() -> None:
    core = up(3, slots=1, prefetch=0)
    out = submit(core, 10, 11, where=frozenset({3}))
    assert of(out, I.Dispatch) == [I.Dispatch(3, ((10, 0),))]
    assert [t.tid for t in core.pending] == [11]            # node 3 full: 11 waits
    out = submit(core, 12)                                  # others still get work
    assert of(out, I.Dispatch) == [I.Dispatch(1, ((12, 0),))]
    out = core.handle(E.TasksDone(3, [(10, True, 0)], 1.0))
    assert of(out, I.Dispatch) == [I.Dispatch(3, ((11, 0),))]


def test_where_names_hosts_and_errors_say_what_exists() -> None:
    core = up(3)
    assert core.resolve_where("h2") == {2}
    assert core.resolve_where([1, "h3"]) == {1, 3}
    with pytest.raises(ValueError, match="no node has rank 9; nodes are ranks 1..3"):
        core.resolve_where(9)
    with pytest.raises(ValueError, match="no node runs on host 'x'"):
        core.resolve_where("x")


def test_lost_node_names_the_tasks_that_are_to_run_again() -> None:
    """``Node.lost_tids`` (the shell times the restart with it): the short tasks in
    flight on the node, then its running spawned tasks; empty for the others."""
    core = up(2, slots=1, prefetch=1)
    out = submit(core, 10, 11, 12, 13, 14, now=1.0)
    on1 = [tid for d in of(out, I.Dispatch) if d.rank == 1 for tid, _ in d.items]
    out = core.handle(E.TaskSpawned(20, 1, 1.0, frozenset({1})))
    assert [p.rank for p in of(out, I.PlaceSpawned)] == [1]
    out = lose(core, E.NodeLost(1, LossCause.ULFM, 2.0))
    assert core.nodes[1].lost_tids == (*on1, 20) and len(on1) == 2
    assert core.nodes[2].lost_tids == ()
    assert [(p.tid, p.rank, p.restart) for p in of(out, I.PlaceSpawned)] == [(20, 2, True)]


def test_lost_node_requeues_its_tasks_first_and_counts_the_rerun() -> None:
    core = up(2, slots=1, prefetch=1)
    out = submit(core, 10, 11, 12, 13, 14, now=1.0)
    on1 = [tid for d in of(out, I.Dispatch) if d.rank == 1 for tid, _ in d.items]
    out = lose(core, E.NodeLost(1, LossCause.ULFM, 3.0))
    assert of(out, I.NodeDown) == [I.NodeDown(1, LossCause.ULFM, "", False)]
    assert not of(out, I.Kill)                       # an MPI failure: the process is gone
    assert core.stats["rerun"] == 2
    assert core.stats["redone_s"] == pytest.approx(2.0)   # only the running one (1 slot)
    # re-queued at the front, ahead of 14; node 2 is full until it reports
    assert [t.tid for t in core.pending][:2] == sorted(on1, reverse=True)
    on2 = [tid for d in of(submit(core), I.Dispatch) for tid, _ in d.items]
    assert on2 == []
    out = core.handle(E.TasksDone(2, [(11, True, 1), (13, True, 3)], 4.0))
    again = [item for d in of(out, I.Dispatch) for item in d.items]
    assert again == [(on1[1], 1), (on1[0], 1)]       # attempts=1: may load a checkpoint


def test_late_results_of_a_lost_node_are_ignored() -> None:
    core = up(2, slots=1, prefetch=0)
    submit(core, 10, 11)
    core.handle(E.NodeLost(1, LossCause.ULFM, 1.0))
    out = core.handle(E.TasksDone(1, [(10, True, "stale")], 1.1))
    assert out == []
    out = core.handle(E.TasksDone(2, [(11, True, "b")], 1.2))
    assert of(out, I.Dispatch) == [I.Dispatch(2, ((10, 1),))]
    out = core.handle(E.TasksDone(2, [(10, True, "a")], 1.3))
    assert of(out, I.ResolveTask) == [I.ResolveTask(10, TaskKind.SHORT, True, "a")]


def test_heartbeat_loss_kills_the_node_and_never_trusts_it_again() -> None:
    core = up(2, heartbeat_s=2.0)
    submit(core, 10, 11)
    core.handle(E.HeartbeatHeard(2, 2.5), E.HeartbeatHeard(1, 1.0))
    assert core.handle(E.Tick(2.9)) == []
    out = core.handle(E.Tick(3.1))
    down = of(out, I.NodeDown)
    assert [(d.rank, d.cause) for d in down] == [(1, LossCause.HEARTBEAT)]
    assert down[0].detail == "2.1 s silent"
    assert of(out, I.Kill) == [I.Kill(1)]                  # decided by the cause, not text
    assert core.nodes[1].how_lost == "heartbeat (2.1 s silent)"
    # whatever it still sends is ignored; it never gets work again
    assert core.handle(E.TasksDone(1, [(10, True, 0)], 3.2)) == []
    assert core.handle(E.NodeHello(1, "h1", 101, 3.3)) == []
    out = submit(core, *range(20, 40), now=3.4)
    assert {d.rank for d in of(out, I.Dispatch)} == {2}


def test_tick_merges_heard_times_and_a_stalled_coordinator_blames_nobody() -> None:
    core = up(2, heartbeat_s=1.0)
    assert core.handle(E.Tick(1.5, heard={1: 1.2, 2: 1.2})) == []
    assert core.handle(E.Tick(10.0, stalled=True)) == []
    assert core.handle(E.Tick(10.5)) == []
    assert {d.rank for d in of(core.handle(E.Tick(11.5)), I.NodeDown)} == {1, 2}


def test_no_hello_at_start_and_after_spawn() -> None:
    core = Core(range(1, 4), heartbeat_s=2.0)
    core.handle(E.StartBegun(10.0), E.NodeHello(1, "h1", 1, 0.5), E.NodeHello(2, "h2", 2, 0.5))
    out = core.handle(E.StartGraceOver(5.0, 10.0))
    assert of(out, I.Warn) and not of(out, I.NodeDown)      # node 3 may still come
    assert core.joining()
    out = core.handle(E.Tick(10.5, heard={1: 10.4, 2: 10.4}))
    assert [(d.rank, d.cause, d.was_spare) for d in of(out, I.NodeDown)] == \
        [(3, LossCause.NO_HELLO, False)]
    assert of(out, I.Kill) == [I.Kill(3)]
    core.handle(E.ReplacementStarted(4, "h1", 11.0))
    out = core.handle(E.Tick(41.5, heard={1: 41.4, 2: 41.4}))
    assert [(d.rank, d.cause) for d in of(out, I.NodeDown)] == [(4, LossCause.NO_HELLO_SPAWN)]


def test_spares_take_over_and_replacements_are_asked_for() -> None:
    core = Core(range(1, 5), replace_failed=True)
    core.handle(*(E.NodeHello(r, "h", r, 0.0) for r in range(1, 5)))
    core.handle(E.StartGraceOver(0.1, 60.0, spares=1))
    assert core.nodes[4].state is NodeState.SPARE
    out = submit(core, *range(10, 30))
    assert 4 not in {d.rank for d in of(out, I.Dispatch)}
    out = core.handle(E.NodeLost(1, LossCause.ULFM, 1.0))
    assert of(out, I.NodeUp) == [I.NodeUp(4, "spare")]
    assert not of(out, I.RequestReplacement)
    assert 4 in {d.rank for d in of(out, I.Dispatch)}
    out = core.handle(E.NodeLost(2, LossCause.ULFM, 2.0))
    assert of(out, I.RequestReplacement) == [I.RequestReplacement(2)]
    assert core.joining()


def test_every_node_learns_where_spawned_tasks_run_before_they_start() -> None:
    """A first message to a task never has to ask the coordinator where it is: every alive
    node is told each placement, and a node that joins later the placements so far."""
    core = Core(range(1, 5))
    core.handle(*(E.NodeHello(r, "h", r, 0.0) for r in range(1, 5)))
    core.handle(E.StartGraceOver(0.1, 60.0, spares=1))
    placed = {}
    for tid in (50, 51, 52):
        (p,) = of(core.handle(E.TaskSpawned(tid, 1, 0.0, where=frozenset({tid - 49}))),
                  I.PlaceSpawned)
        assert set(p.tell) == {1, 2, 3}       # the alive nodes, not the spare
        placed[tid] = p.rank
    assert placed == {50: 1, 51: 2, 52: 3}
    out = lose(core, E.NodeLost(1, LossCause.ULFM, 1.0))
    (told,) = of(out, I.TellLocations)
    assert told.rank == 4 and {i[0]: i[1:] for i in told.items} == \
        {51: (2, 0, True), 52: (3, 0, True)}      # task 50 is placed again, after
    assert of(out, I.NodeUp) == [I.NodeUp(4, "spare")]
    (again,) = of(out, I.PlaceSpawned)
    assert again.tid == 50 and set(again.tell) == {2, 3, 4}


def test_spares_never_take_the_last_node() -> None:
    core = up(2)
    core.handle(E.StartGraceOver(0.1, 60.0, spares=5))
    assert [n.state for n in core.nodes.values()] == [NodeState.ALIVE, NodeState.SPARE]


def test_every_node_lost_fails_every_task_once() -> None:
    core = up(1)
    submit(core, 10, 11)
    out = lose(core, E.NodeLost(1, LossCause.ULFM, 1.0))
    fatal = of(out, I.Fatal)
    assert len(fatal) == 1 and isinstance(fatal[0].error, NoNodesError)
    assert "node 1 (h1: MPI (ULFM))" in str(fatal[0].error)
    assert sorted(r.tid for r in of(out, I.ResolveTask)) == [10, 11]
    assert all(not r.ok and not r.packed for r in of(out, I.ResolveTask))
    out = submit(core, 12)                     # later submissions fail at once
    assert [(r.tid, r.ok) for r in of(out, I.ResolveTask)] == [(12, False)]


def test_a_replacement_on_its_way_keeps_the_work_waiting() -> None:
    core = up(1, replace_failed=True)
    submit(core, 10)
    out = lose(core, E.NodeLost(1, LossCause.ULFM, 1.0))
    assert of(out, I.RequestReplacement) and not of(out, I.Fatal)
    core.handle(E.ReplacementStarted(2, "h", 2.0))
    out = core.handle(E.ReplacementEnded(2.0), E.NodeHello(2, "h", 7, 3.0))
    assert of(out, I.NodeUp) == [I.NodeUp(2, "spawn")]
    assert of(out, I.Dispatch) == [I.Dispatch(2, ((10, 1),))]


def test_nested_submission_frees_the_waiting_parents_slot() -> None:
    core = up(1, slots=1, prefetch=0)
    out = submit(core, 10)
    assert of(out, I.Dispatch) == [I.Dispatch(1, ((10, 0),))]
    out = submit(core, 11, parent=10)          # 10 waits on 11: its slot is free
    assert of(out, I.Dispatch) == [I.Dispatch(1, ((11, 0),))]
    out = core.handle(E.TasksDone(1, [(11, True, 1)], 1.0))
    out = submit(core, 12)                     # 10 no longer waits: node 1 is full
    assert not of(out, I.Dispatch)
    out = core.handle(E.TasksDone(1, [(10, True, 0)], 2.0))
    assert of(out, I.Dispatch) == [I.Dispatch(1, ((12, 0),))]


def test_cancel_queued_and_running() -> None:
    core = up(1, slots=1, prefetch=0)
    submit(core, 10, 11)
    assert of(core.handle(E.TaskCancelled(10)), I.Cancelled) == []     # running: refused
    assert of(core.handle(E.TaskCancelled(11)), I.Cancelled) == [I.Cancelled(11)]
    out = core.handle(E.TaskCancelled(10, running=True))
    assert of(out, I.CancelQueued) == [I.CancelQueued(1, 10)]
    assert not core.tasks and not of(submit(core), I.Dispatch)


def test_spawned_task_restarts_elsewhere_with_a_new_incarnation() -> None:
    core = up(3)
    out = core.handle(E.TaskSpawned(50, 1, 0.0))
    (place,) = of(out, I.PlaceSpawned)
    assert (place.inc, place.restart) == (0, False)
    assert set(place.tell) == set(core.alive_ranks())   # every node knows where it is
    core.handle(E.CheckpointStored(place.rank, 50, 0, 1, 1.0))
    out = lose(core, E.NodeLost(place.rank, LossCause.ULFM, 2.0))
    (again,) = of(out, I.PlaceSpawned)
    assert again.rank != place.rank and again.inc == 1 and again.restart
    assert set(again.tell) == set(core.alive_ranks())
    assert core.stats["redone_s"] == pytest.approx(1.0)   # since its checkpoint
    assert core.location(50) == (again.rank, 1, True)
    # the old incarnation's exit is ignored; the new one's ends it, once
    assert core.handle(E.SpawnedExited(place.rank, 50, 0, True, "old", 2.5)) == []
    out = core.handle(E.SpawnedExited(again.rank, 50, 1, True, "new", 3.0))
    assert of(out, I.ResolveTask) == [I.ResolveTask(50, TaskKind.SPAWNED, True, "new")]
    (gone,) = of(out, I.BroadcastLocation)
    assert gone.rank == -1 and gone.inc == 1
    # its node and that node's buddy may hold copies it was not told of
    (drop,) = of(out, I.DropCheckpoints)
    assert drop.tid == 50 and again.rank in drop.holders and len(drop.holders) == 2
    assert core.ended == {50: True}


def test_kill_a_spawned_task() -> None:
    core = up(2)
    (place,) = of(core.handle(E.TaskSpawned(50, 1, 0.0)), I.PlaceSpawned)
    out = core.handle(E.TaskKilled(50, "packed-error"))
    assert of(out, I.KillTask) == [I.KillTask(place.rank, 50, 0)]
    assert of(out, I.ResolveTask) == [I.ResolveTask(50, TaskKind.SPAWNED, False,
                                                    "packed-error")]
    assert core.nodes[place.rank].spawned == set()


def test_spawned_tasks_wait_for_a_starting_node() -> None:
    core = Core(range(1, 3))
    out = core.handle(E.TaskSpawned(50, 1, 0.0))
    assert out == [] and core.homeless
    out = core.handle(E.NodeHello(2, "h", 2, 0.5))
    assert [(p.rank, p.tid) for p in of(out, I.PlaceSpawned)] == [(2, 50)]


def test_checkpoints_of_old_incarnations_and_ended_tasks_are_refused() -> None:
    core = up(2)
    (place,) = of(core.handle(E.TaskSpawned(50, 1, 0.0)), I.PlaceSpawned)
    r = place.rank
    assert of(core.handle(E.CheckpointStored(r, 50, 0, 1, 1.0)), I.StoreCheckpoint) == \
        [I.StoreCheckpoint(50, 0, 1)]
    assert core.handle(E.CheckpointStored(r, 50, 3, 2, 1.0)) == []      # other incarnation
    assert core.handle(E.CheckpointStored(3 - r, 50, 0, 2, 1.0)) == []  # other node
    assert core.handle(E.CheckpointStored(r, 99, 0, 1, 1.0)) == []      # no such task
    assert core.stats["ckpt_written"] == 1


def test_journal_records_replay_into_reused_results() -> None:
    core = up(2, journal=True)
    out = core.handle(E.TaskSubmitted(10, 1, 0.0, digest=7),
                      E.TaskSubmitted(11, 1, 0.0, digest=8))
    out = core.handle(E.TasksDone(1, [(10, True, "a")], 1.0),
                      E.TasksDone(2, [(11, False, "err")], 1.0))
    records = replay_journal(out)
    assert records == {10: (7, True, "a"), 11: (8, False, "err")}
    again = up(2, journal=True, resume=True)
    again.handle(E.JournalLoaded([(t, *v) for t, v in records.items()]))
    out = again.handle(E.TaskSubmitted(10, 1, 0.0, digest=7),
                       E.TaskSubmitted(11, 1, 0.0, digest=9),   # changed: run again
                       E.TaskSubmitted(12, 1, 0.0, digest=1))
    assert of(out, I.ResolveTask) == [I.ResolveTask(10, TaskKind.SHORT, True, "a",
                                                    reused=True)]
    assert of(out, I.Warn)
    assert sorted(tid for d in of(out, I.Dispatch) for tid, _ in d.items) == [11, 12]
    assert again.stats["reused"] == 1


def test_observers_hear_start_end_and_rerun_only_when_attached() -> None:
    core = up(1, slots=1, prefetch=0)
    assert not of(submit(core, 10), I.Observe)
    core.handle(E.ObserversChanged(True))
    submit(core, 11)
    out = core.handle(E.TasksDone(1, [(10, True, 0)], 1.0))
    assert of(out, I.Observe) == [I.Observe("end", 10, 1, True), I.Observe("start", 11, 1)]
    out = core.handle(E.NodeLost(1, LossCause.ULFM, 2.0))
    assert I.Observe("rerun", 11, 1) in of(out, I.Observe)


def test_shutdown_stops_placement_and_requeue() -> None:
    core = up(2, replace_failed=True)
    submit(core, 10)
    core.handle(E.ShutdownBegun(1.0))
    out = core.handle(E.NodeLost(1, LossCause.ULFM, 1.1))
    assert of(out, I.NodeDown) and not of(out, I.RequestReplacement)
    assert not of(submit(core, 11), I.Dispatch)
    core.handle(E.NodeBye(2, 1.2))
    assert core.nodes[2].state is NodeState.LEFT


def test_a_node_gone_at_shutdown_with_nothing_to_do_left() -> None:
    """After failures no rank calls MPI_Finalize, so ULFM may report a node that exits at
    the job's end before its goodbye is handled: with nothing left to do it counts as
    having left, not as lost (seen once: a report of "3 node(s) lost" for 2 killed). A
    node with work, or one found hung, is still lost."""
    core = up(3)
    submit(core, 10)
    busy = core.tasks[10].node
    idle = next(r for r in (1, 2, 3) if r != busy)
    core.handle(E.ShutdownBegun(1.0))
    assert not of(core.handle(E.NodeLost(idle, LossCause.ULFM, 1.1)), I.NodeDown)
    assert core.nodes[idle].state is NodeState.LEFT
    assert of(core.handle(E.NodeLost(busy, LossCause.ULFM, 1.2)), I.NodeDown)
    assert core.nodes[busy].state is NodeState.DEAD


def test_a_task_state_is_an_enum() -> None:
    core = up(1)
    submit(core, 10)
    assert core.tasks[10].state is TaskState.RUNNING
    assert core.nodes[1].as_dict()["state"] == "alive"


def test_every_api_handler_is_in_the_request_table() -> None:
    """Handlers are an explicit table: a new ``api_*`` method must be listed in it."""
    from clustervm.api import CoordinatorAPI

    table = CoordinatorAPI._api_table(CoordinatorAPI())
    methods = {name[4:] for name in dir(CoordinatorAPI) if name.startswith("api_")}
    assert set(table) == methods
    assert all(fn.__name__ == f"api_{name}" for name, fn in table.items())


def test_vm_mailbox_put_get_wait_and_delete() -> None:
    core = up(1)
    out = core.handle(E.InfoGet("x", False, "r1"))
    (a,) = of(out, I.Answer)
    assert a.reply == "r1" and not a.ok and isinstance(a.value, KeyError)
    assert "put_info it first" in str(a.value)
    assert core.handle(E.InfoGet("x", True, "r2")) == []           # waits for a put
    out = core.handle(E.InfoPut("x", 42, "r3"))
    assert [(a.reply, a.ok, a.value) for a in of(out, I.Answer)] == \
        [("r2", True, 42), ("r3", True, None)]                     # the waiter, then the put
    (a,) = of(core.handle(E.InfoGet("x", True, "r4")), I.Answer)
    assert (a.ok, a.value) == (True, 42)
    (a,) = of(core.handle(E.InfoDeleted("x", "r5")), I.Answer)
    assert (a.reply, a.ok) == ("r5", True) and "x" not in core.info
    (a,) = of(core.handle(E.InfoDeleted("x", "r6")), I.Answer)
    assert not a.ok and "nothing to delete" in str(a.value)


# -- the buddy store (issue 14): who holds which checkpoint ---------------------------

def spawned_on(core: Core, tid: int, now: float = 0.0) -> int:
    (place,) = of(core.handle(E.TaskSpawned(tid, 1, now)), I.PlaceSpawned)
    return place.rank


def held(core: Core, r: int, buddy: int, tid: int = 50, seq: int = 1) -> list:
    """Task ``tid`` on node ``r`` checkpoints ``seq`` with a copy on ``buddy``, which holds it."""
    return core.handle(E.CheckpointStored(r, tid, 0, seq, 1.0, buddy, False),
                       E.CheckpointHeld(buddy, tid, 0, seq, 1.0))


def test_a_buddy_copy_is_acknowledged_once_the_buddy_holds_it() -> None:
    core = up(3)
    (place,) = of(core.handle(E.TaskSpawned(50, 1, 0.0)), I.PlaceSpawned)
    r, buddy = place.rank, place.buddy         # the node learns its buddy with the task
    assert buddy != r and buddy in core.alive_ranks() and not place.to_store
    # a checkpoint sent to the coordinator (no buddy) is held there at once
    (commit,) = of(core.handle(E.CheckpointStored(r, 50, 0, 1, 1.0)), I.CommitCheckpoint)
    assert (commit.holders, commit.buddy, commit.to_store) == ((0,), buddy, False)
    # the next: the node keeps it and sends a copy to the buddy; no bytes to rank 0
    out = core.handle(E.CheckpointStored(r, 50, 0, 2, 2.0, buddy, False))
    assert of(out, I.CommitCheckpoint) == [] and of(out, I.StoreCheckpoint) == []
    (commit,) = of(core.handle(E.CheckpointHeld(buddy, 50, 0, 2, 2.1)), I.CommitCheckpoint)
    assert (commit.rank, commit.seq, commit.holders) == (r, 2, tuple(sorted((r, buddy))))
    # HELD may come first: then the node's call completes it
    assert of(core.handle(E.CheckpointHeld(buddy, 50, 0, 3, 3.0)), I.CommitCheckpoint) == []
    (commit,) = of(core.handle(E.CheckpointStored(r, 50, 0, 3, 3.1, buddy, False)),
                   I.CommitCheckpoint)
    assert commit.seq == 3
    # late or stale words are ignored
    assert core.handle(E.CheckpointHeld(buddy, 50, 0, 2, 4.0)) == []
    assert core.handle(E.CheckpointStored(r, 50, 0, 3, 4.0, buddy, False)) == []
    assert core.stats["ckpt_written"] == 3


def test_copies_go_to_nodes_on_another_host_spread_over_them() -> None:
    """A node's buddy is on another host when there is one (a lost host then takes no
    task's both copies), each host's nodes spread over the other's; with one host left,
    the next node alive; the nodes are told when theirs changes."""
    core = Core(range(1, 5))

    def told(out: list) -> dict:
        return {i.rank: i.buddy for i in of(out, I.TellBuddy)}
    core.handle(*(E.NodeHello(r, h, 100 + r, 0.0)
                  for r, h in ((1, "a"), (2, "a"), (3, "b"), (4, "b"))))
    assert {r: core._buddy_of(r) for r in range(1, 5)} == {1: 3, 2: 4, 3: 1, 4: 2}
    assert told(lose(core, E.NodeLost(3, LossCause.ULFM, 1.0))) == {1: 4, 4: 1}
    assert told(lose(core, E.NodeLost(4, LossCause.ULFM, 2.0))) == {1: 2, 2: 1}
    one = up(4)                     # every node on a host of its own: the next one
    assert [one._buddy_of(r) for r in range(1, 5)] == [2, 3, 4, 1]
    same = Core(range(1, 4))
    same.handle(*(E.NodeHello(r, "h", 100 + r, 0.0) for r in range(1, 4)))
    assert [same._buddy_of(r) for r in range(1, 4)] == [2, 3, 1]


def test_nodes_lost_together_or_by_heartbeat_tell_the_others_their_new_buddy() -> None:
    """Nodes found lost together (one call of handle, as ULFM reports them), and a node
    found silent, leave the alive ones before they are failed over: the nodes whose
    buddy they were are told their new one. (Before, those nodes kept their dead buddy:
    a checkpoint group's epochs, which no answer carries a buddy in, were then held on
    their own node only.)"""
    core = up(4)
    out = lose(core, E.NodeLost(2, LossCause.ULFM, 1.0), E.NodeLost(3, LossCause.ULFM, 1.0))
    assert {i.rank: i.buddy for i in of(out, I.TellBuddy)} == {1: 4}
    core = up(4, heartbeat_s=2.0)
    core.handle(*(E.HeartbeatHeard(r, 1.0 if r == 2 else 2.5) for r in range(1, 5)))
    out = lose(core, E.Tick(3.1))
    assert [d.rank for d in of(out, I.NodeDown)] == [2]
    assert {i.rank: i.buddy for i in of(out, I.TellBuddy)} == {1: 3}


def test_a_buddy_lost_before_it_holds_the_copy_is_not_waited_for() -> None:
    core = up(3)
    r = spawned_on(core, 50)
    buddy = 3 if r != 3 else 1
    core.handle(E.CheckpointStored(r, 50, 0, 1, 1.0, buddy, False))
    (commit,) = of(core.handle(E.NodeLost(buddy, LossCause.ULFM, 2.0)), I.CommitCheckpoint)
    assert commit.holders == (r,) and commit.buddy not in (0, r, buddy)


def test_a_lost_nodes_task_restarts_where_its_copy_is() -> None:
    core = up(4)
    r = spawned_on(core, 50)
    buddy = r % 4 + 1
    held(core, r, buddy)
    out = lose(core, E.NodeLost(r, LossCause.ULFM, 2.0))
    (again,) = of(out, I.PlaceSpawned)
    assert (again.rank, again.source, again.seq, again.inc) == (buddy, buddy, 1, 1)
    # it runs again there: the buddy is its new node and holds the only copy, which it
    # copies to the next node (two copies again, as before the loss)
    (copy,) = core.handle(E.TaskRestored(buddy, 50, 1, 1, True, 2.1))
    nxt = buddy % 4 + 1 if buddy % 4 + 1 != r else (buddy + 1) % 4 + 1
    assert copy == I.CopyCheckpoint(buddy, 50, 1, nxt)
    assert core.tasks[50].ckpt == (1, frozenset({buddy}))
    assert core.handle(E.CheckpointHeld(nxt, 50, -1, 1, 2.2)) == []
    assert core.tasks[50].ckpt == (1, frozenset({buddy, nxt}))
    # it ends: the holders still alive drop their copies
    out = core.handle(E.SpawnedExited(buddy, 50, 1, True, "v", 3.0))
    assert of(out, I.DropCheckpoints) == [I.DropCheckpoints(50, tuple(sorted((buddy, nxt))))]


def test_a_copy_lost_with_its_node_is_made_again() -> None:
    core = up(4)
    r = spawned_on(core, 50)
    buddy = r % 4 + 1
    held(core, r, buddy)
    out = lose(core, E.NodeLost(buddy, LossCause.ULFM, 2.0))      # the buddy dies
    (copy,) = of(out, I.CopyCheckpoint)
    assert copy.source == r and copy.to not in (r, buddy) and (copy.tid, copy.seq) == (50, 1)
    # asked once until it holds it (or is lost: then the next node is asked)
    assert of(core.handle(E.NodeHello(buddy, "h", 1, 2.1)), I.CopyCheckpoint) == []
    out = lose(core, E.NodeLost(copy.to, LossCause.ULFM, 2.5))
    (again,) = of(out, I.CopyCheckpoint)
    assert again.source == r and again.to not in (r, buddy, copy.to)
    core.handle(E.CheckpointHeld(again.to, 50, -1, 1, 2.6))
    assert core.tasks[50].ckpt == (1, frozenset({r, again.to}))
    # the node that ran it dies: it restarts where the copy made again is
    (place,) = of(lose(core, E.NodeLost(r, LossCause.ULFM, 3.0)), I.PlaceSpawned)
    assert (place.rank, place.source) == (again.to, again.to)


def test_a_task_placed_away_from_its_copy_gets_it_and_a_lost_source_places_it_again() -> None:
    core = up(4)
    r = spawned_on(core, 50, 0.0)
    buddy = r % 4 + 1
    held(core, r, buddy)
    for tid in (51, 52):          # the buddy gets busier than the other nodes
        core.handle(E.TaskSpawned(tid, 1, 0.0, frozenset({buddy})))
    (again,) = of(lose(core, E.NodeLost(r, LossCause.ULFM, 2.0)), I.PlaceSpawned)
    assert again.rank not in (r, buddy) and (again.source, again.seq) == (buddy, 1)
    # the buddy dies before the copy came: that incarnation is ended, and with no copy
    # left (and messages received) the job cannot go on exactly: a clear error
    out = lose(core, E.NodeLost(buddy, LossCause.ULFM, 2.5))
    assert I.KillTask(again.rank, 50, 1) in out
    (fatal,) = of(out, I.Fatal)
    assert "every copy of its checkpoint 1" in str(fatal.error)
    assert "--checkpoint-dir" in str(fatal.error)
    assert 50 not in core.tasks


def test_a_lost_log_mode_task_restarts_from_the_newest_copy_its_nodes_hold() -> None:
    """Without a journal a log-mode task's checkpoints after its first are held by its
    node and its buddy only, untold: lost with its node, it restarts once the nodes
    alive have said what they hold, from the newest copy of its incarnation there."""
    core = up(3)
    r = spawned_on(core, 50)
    buddy = r % 3 + 1
    held(core, r, buddy, seq=1)                  # told: it counted received messages
    out = core.handle(E.NodeLost(r, LossCause.ULFM, 2.0))
    (ask,) = of(out, I.AskHeld)
    assert ask.tids == (50,) and r not in ask.ranks and not of(out, I.PlaceSpawned)
    out = lose(core, E.NodeLost(r, LossCause.ULFM, 2.0))     # a duplicate: nothing new
    assert not of(out, I.PlaceSpawned)
    other = ({1, 2, 3} - {r, buddy}).pop()
    out = core.handle(E.HeldReported(buddy, ask.qid, [(50, 4, 0, 0.0), (50, 5, 0, 0.0)], 2.1))
    assert not of(out, I.PlaceSpawned)
    (again,) = of(core.handle(E.HeldReported(other, ask.qid, [], 2.1)), I.PlaceSpawned)
    assert (again.seq, again.source, again.inc) == (5, buddy, 1)


def test_work_redone_counts_from_the_copy_the_task_restarts_from() -> None:
    """The coordinator was told of checkpoint 1 only (t=1.0); the node lost at t=10 had
    taken more: the work redone is counted from when the copy it restarts from came,
    as its holder says (its age), not from checkpoint 1."""
    core = up(3)
    r = spawned_on(core, 50)
    buddy = r % 3 + 1
    held(core, r, buddy, seq=1)
    out = core.handle(E.NodeLost(r, LossCause.ULFM, 10.0))
    assert core.stats["redone_s"] == pytest.approx(9.0)          # from checkpoint 1
    (ask,) = of(out, I.AskHeld)
    for n in ask.ranks:
        items = [(50, 4, 0, 1.5), (50, 5, 0, 0.5)] if n == buddy else []
        core.handle(E.HeldReported(n, ask.qid, items, 10.1))
    assert core.stats["redone_s"] == pytest.approx(0.4)          # 10.0 - (10.1 - 0.5)


def test_checkpoints_the_coordinator_was_not_told_of_are_counted_once() -> None:
    """Nodes say how many checkpoints they held untold, all so far (HEARTBEAT, EXITED):
    the count of checkpoints written grows by what is new, never twice."""
    core = up(2)
    r = spawned_on(core, 50)
    core.handle(E.CheckpointsUntold(r, 3))
    core.handle(E.CheckpointsUntold(r, 3), E.CheckpointsUntold(r, 2))   # old news
    assert core.stats["ckpt_written"] == 3
    core.handle(E.SpawnedExited(r, 50, 0, True, "v", 1.0, -1, 5))
    assert core.stats["ckpt_written"] == 5


def test_copies_lost_with_no_message_received_restart_from_the_start() -> None:
    core = up(3)
    r = spawned_on(core, 50)
    buddy = r % 3 + 1
    core.handle(E.CheckpointStored(r, 50, 0, 1, 1.0, buddy, False, received=False),
                E.CheckpointHeld(buddy, 50, 0, 1, 1.0))
    out = lose(core, E.NodeLost(r, LossCause.ULFM, 2.0), E.NodeLost(buddy, LossCause.ULFM, 2.0))
    again = of(out, I.PlaceSpawned)[-1]     # at the buddy first, then (lost too) anywhere
    assert (again.source, again.restart) == (0, True) and not of(out, I.Fatal)
    assert any("starts again from the start" in w.text for w in of(out, I.Warn))


def test_with_a_journal_a_checkpoint_is_acknowledged_in_memory_and_forgotten_once_written(
        ) -> None:
    """The task does not wait for the disk: its checkpoint is acknowledged once the
    copies in memory are held (the coordinator's among them); its senders forget what
    it received only once it is on disk too, so --resume still finds those messages."""
    core = up(3, journal=True)
    r = spawned_on(core, 50)
    buddy = r % 3 + 1
    out = core.handle(E.CheckpointStored(r, 50, 0, 1, 1.0, buddy, True),
                      E.CheckpointHeld(buddy, 50, 0, 1, 1.0))
    assert of(out, I.StoreCheckpoint) == [I.StoreCheckpoint(50, 0, 1)]
    (commit,) = of(out, I.CommitCheckpoint)
    assert commit.holders == tuple(sorted((0, r, buddy))) and commit.to_store
    assert not commit.forget and of(out, I.ForgetReceived) == []
    assert of(core.handle(E.CheckpointWritten(50, 0, 1, False, 1.1)), I.ForgetReceived) == []
    assert of(core.handle(E.CheckpointWritten(50, 0, 1, True, 1.2)),
              I.ForgetReceived) == [I.ForgetReceived(50, 1)]
    # a newer one on disk before it is acknowledged: forgotten up to the acknowledged one
    core.handle(E.CheckpointStored(r, 50, 0, 2, 1.3, buddy, True))
    assert of(core.handle(E.CheckpointWritten(50, 0, 2, True, 1.4)), I.ForgetReceived) == []
    out = core.handle(E.CheckpointHeld(buddy, 50, 0, 2, 1.5))
    assert of(out, I.ForgetReceived) == [I.ForgetReceived(50, 2)]
    assert not of(out, I.CommitCheckpoint)[0].forget
    # a node and its buddy lost at once: the coordinator's copy restarts it (source 0)
    out = lose(core, E.NodeLost(r, LossCause.ULFM, 2.0), E.NodeLost(buddy, LossCause.ULFM, 2.0))
    again = of(out, I.PlaceSpawned)[-1]
    assert again.source == 0 and not of(out, I.Fatal)
    # the old incarnation's late write says nothing of the new one
    assert of(core.handle(E.CheckpointWritten(50, 0, 3, True, 2.1)), I.ForgetReceived) == []


def test_without_a_journal_senders_forget_at_the_acknowledgment() -> None:
    core = up(3)
    r = spawned_on(core, 50)
    buddy = r % 3 + 1
    out = core.handle(E.CheckpointStored(r, 50, 0, 1, 1.0, buddy, False),
                      E.CheckpointHeld(buddy, 50, 0, 1, 1.0))
    (commit,) = of(out, I.CommitCheckpoint)
    assert commit.forget and of(out, I.ForgetReceived) == []


def test_a_copy_that_is_not_there_sends_the_restart_to_the_next_holder() -> None:
    core = up(4)
    r = spawned_on(core, 50)
    buddy = r % 4 + 1
    held(core, r, buddy)
    (again,) = of(lose(core, E.NodeLost(r, LossCause.ULFM, 2.0)), I.PlaceSpawned)
    assert again.source == buddy
    out = core.handle(E.TaskRestored(again.rank, 50, again.inc, 1, False, 2.2))
    # no holder left: the job cannot go on (messages were received)
    assert of(out, I.Fatal)


def _group_of_three(core) -> dict[int, int]:
    """Tasks 50-52 spawned as checkpoint group 50, one per node: tid -> its node."""
    places = {}
    for tid in (50, 51, 52):            # one spawn: group 50
        (p,) = of(core.handle(E.TaskSpawned(tid, 1, 0.0, None, False, 0, 50)), I.PlaceSpawned)
        assert p.group == 50
        places[tid] = p.rank
    return places


def answer(core, out: list, holding: dict, now: float = 2.0) -> list:
    """Answer the query of ``out`` (I.AskHeld) as the nodes would: ``holding`` is node ->
    its copies ``[(tid, seq, inc, age), ...]``. The instructions of the last answer."""
    (ask,) = of(out, I.AskHeld)
    got = []
    for r in ask.ranks:
        got = core.handle(E.HeldReported(r, ask.qid, holding.get(r, []), now))
    return got


def test_a_checkpoint_group_goes_back_to_the_newest_epoch_its_nodes_hold_for_every_member(
        ) -> None:
    """The coordinator is told of no epoch in memory: when a member is lost it asks every
    node alive what it holds, and once all have answered the group goes back to the
    newest epoch held for every member."""
    core = up(3)
    places = _group_of_three(core)
    assert core.ckgroups == {50: [50, 51, 52]}
    lost = places[51]
    out = core.handle(E.NodeLost(lost, LossCause.ULFM, 2.0))
    (ask,) = of(out, I.AskHeld)
    alive = sorted(set(places.values()) - {lost})
    assert ask.ranks == tuple(alive) and ask.tids == (50, 51, 52)
    assert not of(out, I.PlaceSpawned)           # nothing moves before the answers
    # each node holds its member's newest two epochs, and its buddy's copies: 51's
    # node was lost, its buddy holds 51's epochs 1 and 2, but 50 is only at 1
    holding = {places[50]: [(50, 1, 0, 0.0)], places[52]: [(52, 1, 0, 0.0), (52, 2, 0, 0.0)]}
    holding[lost % 3 + 1] = holding.get(lost % 3 + 1, []) + [(51, 1, 0, 0.0), (51, 2, 0, 0.0)]
    first = core.handle(E.HeldReported(alive[0], ask.qid, holding.get(alive[0], []), 2.1))
    assert not of(first, I.PlaceSpawned)         # one node has not answered yet
    out = core.handle(E.HeldReported(alive[1], ask.qid, holding.get(alive[1], []), 2.1))
    assert I.GroupRolledBack(50, 1) in out
    # every node learns all the new places before any member starts again
    first_place = min(i for i, x in enumerate(out) if isinstance(x, I.PlaceSpawned))
    told = [x.tid for x in out[:first_place] if isinstance(x, I.BroadcastLocation)]
    assert sorted(told) == [50, 51, 52]
    again = {p.tid: p for p in of(out, I.PlaceSpawned)}
    assert set(again) == {50, 51, 52} and all(p.restart and p.inc == 1 for p in again.values())
    assert all(p.seq == 1 for p in again.values())
    for tid in (50, 52):                 # survivors: where they run, from their own copy
        assert again[tid].rank == places[tid] == again[tid].source
    assert again[51].rank != lost and again[51].source in (again[51].rank, lost % 3 + 1)
    # a late answer to that query changes nothing
    assert not core.handle(E.HeldReported(alive[0], ask.qid, [(51, 2, 0, 0.0)], 2.2))


def test_a_node_lost_while_its_answer_is_awaited_is_not_waited_for() -> None:
    """A second node lost during the query: its answer (and its copies) no longer count,
    and the group goes back with what the nodes left hold."""
    core = up(4)
    places = _group_of_three(core)
    spare = ({1, 2, 3, 4} - set(places.values())).pop()
    out = core.handle(E.NodeLost(places[51], LossCause.ULFM, 2.0))
    (ask,) = of(out, I.AskHeld)
    assert set(ask.ranks) == {places[50], places[52], spare}
    core.handle(E.HeldReported(places[50], ask.qid, [(50, 3, 0, 0.0), (51, 3, 0, 0.0)], 2.1),
                E.HeldReported(places[52], ask.qid, [(52, 3, 0, 0.0), (50, 3, 0, 0.0)], 2.1))
    out = core.handle(E.NodeLost(spare, LossCause.ULFM, 2.2))
    assert I.GroupRolledBack(50, 3) in out
    assert {p.tid: p.seq for p in of(out, I.PlaceSpawned)} == {50: 3, 51: 3, 52: 3}


def test_a_node_silent_to_the_query_is_not_waited_for_long() -> None:
    """A node that does not answer (hung, not yet found so by its heartbeat) holds the
    group back ASK_WAIT_S at most when the others hold a copy of every member: the next
    Tick after it decides with them."""
    from clustervm.core.state import ASK_WAIT_S
    core = up(4)
    places = _group_of_three(core)
    spare = ({1, 2, 3, 4} - set(places.values())).pop()
    out = core.handle(E.NodeLost(places[51], LossCause.ULFM, 2.0))
    (ask,) = of(out, I.AskHeld)
    core.handle(E.HeldReported(places[50], ask.qid, [(50, 2, 0, 0.0), (51, 2, 0, 0.0)], 2.01),
                E.HeldReported(spare, ask.qid, [(52, 2, 0, 0.0)], 2.01))
    heard = {r: 2.0 for r in range(1, 5)}
    assert not of(core.handle(E.Tick(2.0 + ASK_WAIT_S / 2, heard)), I.PlaceSpawned)
    out = core.handle(E.Tick(2.0 + ASK_WAIT_S, heard))
    assert "did not say within" in " ".join(w.text for w in of(out, I.Warn))
    assert I.GroupRolledBack(50, 2) in out and len(of(out, I.PlaceSpawned)) == 3


def test_a_silent_node_that_may_hold_what_spares_an_error_is_waited_for() -> None:
    """Log-mode task 50 received messages its senders have forgotten, and no node that
    answered holds a copy of its checkpoints: going on would end the job, so the silent
    node (its buddy) is waited for until it answers."""
    from clustervm.core.state import ASK_WAIT_S
    core = up(3)
    r = spawned_on(core, 50)
    buddy = r % 3 + 1
    held(core, r, buddy, seq=1)
    out = core.handle(E.NodeLost(r, LossCause.ULFM, 2.0))
    (ask,) = of(out, I.AskHeld)
    other = ({1, 2, 3} - {r, buddy}).pop()
    core.handle(E.HeldReported(other, ask.qid, [], 2.01))
    heard = {n: 2.0 for n in range(1, 4)}
    out = core.handle(E.Tick(2.0 + 2 * ASK_WAIT_S, heard))
    assert not of(out, I.PlaceSpawned) and not of(out, I.Fatal)
    (again,) = of(core.handle(E.HeldReported(buddy, ask.qid, [(50, 3, 0, 0.0)], 2.6)),
                  I.PlaceSpawned)
    assert (again.seq, again.source) == (3, buddy)


def test_copies_of_an_abandoned_course_are_not_gone_back_to() -> None:
    """After a rollback to epoch 2 a node may still hold epoch 3 of the incarnation
    before (the course left): a later rollback counts it only up to epoch 2."""
    core = up(3)
    places = _group_of_three(core)
    out = core.handle(E.NodeLost(places[51], LossCause.ULFM, 2.0))
    alive = [r for r in places.values() if r != places[51]]
    out = answer(core, out, {alive[0]: [(t, s, 0, 0.0) for t in (50, 51, 52) for s in (2, 3)]})
    assert I.GroupRolledBack(50, 3) in out
    again = {p.tid: p.rank for p in of(out, I.PlaceSpawned)}
    victim = again[50]
    out = core.handle(E.NodeLost(victim, LossCause.ULFM, 3.0))
    rest = [r for r in core.alive_ranks()]
    # incarnation 1 took epoch 4 of 52 only; 3 and 2 of incarnation 0 are still of it
    stale = [(t, 4, 0, 0.0) for t in (50, 51, 52)]
    out = answer(core, out, {rest[0]: stale + [(t, s, 0, 0.0) for t in (50, 51, 52) for s in (2, 3)]
                                      + [(52, 4, 1, 0.0)]})
    assert I.GroupRolledBack(50, 3) in out


@pytest.mark.parametrize("cut, exact", [(-1, False), (2, False), (1, True), (0, True)])
def test_a_group_member_that_ended_after_the_epoch_makes_a_rollback_an_error(
        cut: int, exact: bool) -> None:
    """A member that ended sends nothing again: the group goes back to an epoch only if
    that member sent the others nothing after it (cut <= epoch: its last checkpoint, after
    which it was quiet); else the job ends with an error that says why (not a hang)."""
    core = up(3)
    places = _group_of_three(core)
    out = core.handle(E.SpawnedExited(places[52], 52, 0, True, "done", 1.5, cut))
    assert core.ckgroups == {50: [50, 51]}
    out = core.handle(E.NodeLost(places[51], LossCause.ULFM, 2.0))
    out = answer(core, out, {places[50]: [(50, 1, 0, 0.0), (51, 1, 0, 0.0)]})
    if exact:
        assert I.GroupRolledBack(50, 1) in out and not of(out, I.Fatal)
        assert {p.tid for p in of(out, I.PlaceSpawned)} == {50, 51}
    else:
        (fatal,) = of(out, I.Fatal)
        assert "checkpoint group 50 cannot go back to its checkpoint 1: task(s) 52" in \
            str(fatal.error) and "checkpoint='log'" in str(fatal.error)
        assert not of(out, I.PlaceSpawned) and not core.tasks
        assert {r.tid for r in of(out, I.ResolveTask)} == {50, 51}


def test_with_a_journal_a_tasks_checkpoints_go_to_disk_at_most_every_disk_every_s() -> None:
    """Every checkpoint is held by the node and its buddy; the coordinator asks for the
    bytes (to write them) at most every disk_every_s, and the senders of what the task
    received forget those messages only up to the newest one on disk."""
    core = up(3, journal=True, disk_every_s=1.0)
    r = spawned_on(core, 50)
    buddy = r % 3 + 1

    def commit(seq: int, now: float, stored: bool) -> list:
        return core.handle(E.CheckpointStored(r, 50, 0, seq, now, buddy, stored),
                           E.CheckpointHeld(buddy, 50, 0, seq, now))

    (c1,) = of(commit(1, 1.0, True), I.CommitCheckpoint)
    assert not c1.to_store and not c1.forget    # 0.0 s since the last disk copy
    assert of(core.handle(E.CheckpointWritten(50, 0, 1, True, 1.05)),
              I.ForgetReceived) == [I.ForgetReceived(50, 1)]
    (c2,) = of(commit(2, 1.5, False), I.CommitCheckpoint)
    assert not c2.to_store and c2.holders == tuple(sorted((r, buddy)))
    (c3,) = of(commit(3, 2.1, False), I.CommitCheckpoint)
    assert c3.to_store                          # 1.1 s: the next one goes to disk
    out = commit(4, 2.2, True)
    assert of(out, I.StoreCheckpoint) == [I.StoreCheckpoint(50, 0, 4)]
    assert of(out, I.ForgetReceived) == []      # 2 and 3 are not on disk: kept for replay
    assert of(core.handle(E.CheckpointWritten(50, 0, 4, True, 2.3)),
              I.ForgetReceived) == [I.ForgetReceived(50, 4)]


def test_a_group_whose_epoch_is_lost_in_memory_goes_back_to_its_newest_epoch_on_disk() -> None:
    """A member's node and its buddy lost together (a Tick finds both silent): no copy in
    memory of the group's epochs is left for that member, so the whole group goes back
    to the newest epoch every member has at the coordinator (on disk: the epochs its
    nodes sent there, as they decided together); the store keeps nothing of the course
    it leaves."""
    core = up(4, journal=True)
    places = {}
    for tid in (50, 51):
        (p,) = of(core.handle(E.TaskSpawned(tid, 1, 0.0, None, False, 0, 50)), I.PlaceSpawned)
        places[tid] = p.rank

    def to_disk(tid: int, seq: int, now: float) -> None:
        r = places[tid]
        core.handle(E.CheckpointStored(r, tid, 0, seq, now, r % 4 + 1, True),
                    E.CheckpointHeld(r % 4 + 1, tid, 0, seq, now))
    for tid in (50, 51):
        to_disk(tid, 1, 1.0)             # epoch 1 on disk; 2 and 3 in memory only
    to_disk(50, 4, 2.1)                  # member 50 is one ahead, on disk too
    r = places[51]
    gone = (r, r % 4 + 1)                # member 51's node and its buddy
    out = core.handle(E.Tick(9.0, {n: (0.0 if n in gone else 9.0) for n in range(1, 5)}))
    rest = [n for n in range(1, 5) if n not in gone]
    out = answer(core, out, {n: [(50, 3, 0, 0.0), (50, 4, 0, 0.0)] for n in rest}, now=9.1)
    warn = " ".join(w.text for w in of(out, I.Warn))
    assert "checkpoint group 50" in warn and "goes back to its checkpoint 1" in warn, warn
    assert I.GroupRolledBack(50, 1) in out
    assert of(out, I.DropCheckpointsAfter) == [I.DropCheckpointsAfter(50, 1)]
    again = {p.tid: p for p in of(out, I.PlaceSpawned)}
    assert {t: (p.seq, p.source) for t, p in again.items()} == {50: (1, 0), 51: (1, 0)}
    assert all(p.rank not in gone for p in again.values())


def test_a_node_is_told_its_buddy_when_the_nodes_alive_change() -> None:
    """A checkpoint group's epochs are not answered, so the nodes learn their buddies
    from the coordinator whenever the nodes alive change."""
    core = Core(range(1, 4))
    out = core.handle(*(E.NodeHello(r, f"h{r}", 100 + r, 0.0) for r in range(1, 4)))
    assert sorted((b.rank, b.buddy) for b in of(out, I.TellBuddy)) == [(1, 2), (2, 3), (3, 1)]
    out = core.handle(E.NodeLost(2, LossCause.ULFM, 1.0))
    assert of(out, I.TellBuddy) == [I.TellBuddy(1, 3)]


def test_nodes_lost_together_are_all_out_before_any_is_failed_over() -> None:
    """A task's buddy and the node after it found lost at once (a host cut off): the
    copy of its checkpoint is made again on a node that is alive, not on the second one
    (its node would be told to send to a rank it may not reach, and MPI can block)."""
    for events in (lambda a, b: [E.NodeLost(a, LossCause.HEARTBEAT, 9.0),
                                 E.NodeLost(b, LossCause.HEARTBEAT, 9.0)],
                   lambda a, b: [E.Tick(9.0, {r: (9.0 if r not in (a, b) else 0.0)
                                              for r in range(1, 5)})]):
        core = up(4)
        r = spawned_on(core, 50)
        buddy = r % 4 + 1
        held(core, r, buddy)
        after = buddy % 4 + 1            # where the copy would go if it were alive
        (copy,) = of(core.handle(*events(buddy, after)), I.CopyCheckpoint)
        assert (copy.source, copy.to) == (r, after % 4 + 1), copy


def test_join_group_says_whether_the_task_is_a_new_member() -> None:
    """[instance, first round, new]: a task that restored a checkpoint after the
    coordinator itself was restarted (--resume: groups are not journaled) joins a new
    group, and must take the group's rounds, not the count its checkpoint had."""
    core = up(2)
    answers = [a.value for a in of(core.handle(E.GroupJoined("g", 50, "r1"),
                                               E.GroupJoined("g", 51, "r2"),
                                               E.GroupJoined("g", 50, "r3")), I.Answer)]
    assert answers == [[0, 0, True], [1, 0, True], [0, 0, False]]


def _silent_about_the_only_full_epoch() -> tuple:
    """Group 50-52 on 3 of 4 nodes; 51's node is lost; 50's node and the spare answer
    (50 at epoch 2; nothing of 51), 52's node is silent: (core, places, the query)."""
    core = up(4)
    places = _group_of_three(core)
    spare = ({1, 2, 3, 4} - set(places.values())).pop()
    out = core.handle(E.NodeLost(places[51], LossCause.ULFM, 2.0))
    (ask,) = of(out, I.AskHeld)
    core.handle(E.HeldReported(places[50], ask.qid, [(50, 2, 0, 0.0)], 2.01),
                E.HeldReported(spare, ask.qid, [], 2.01))
    return core, places, ask


def test_a_silent_node_is_waited_for_rather_than_a_group_going_back_to_its_start() -> None:
    """The nodes that answered hold no epoch of every member: going on without the
    silent node would send the group back to its start. It is waited for past
    ASK_WAIT_S, and its late answer (the newest epoch of every member) is used; had it
    been lost instead, the group would go back without it."""
    from clustervm.core.state import ASK_WAIT_S
    core, places, ask = _silent_about_the_only_full_epoch()
    heard = {r: 2.0 for r in range(1, 5)}
    out = core.handle(E.Tick(2.0 + 2 * ASK_WAIT_S, heard))
    assert not of(out, I.PlaceSpawned) and not of(out, I.GroupRolledBack)
    out = core.handle(E.HeldReported(places[52], ask.qid,
                                     [(52, 2, 0, 0.0), (51, 2, 0, 0.0)], 2.0 + 3 * ASK_WAIT_S))
    assert I.GroupRolledBack(50, 2) in out
    assert {p.tid: p.seq for p in of(out, I.PlaceSpawned)} == {50: 2, 51: 2, 52: 2}


def test_a_silent_node_is_waited_for_ask_longest_s_at_most() -> None:
    """The same without an answer: after ASK_LONGEST_S the group goes back to its start
    without it, and says so (a node that answers no query must not hang the job)."""
    from clustervm.core.state import ASK_LONGEST_S
    core, places, ask = _silent_about_the_only_full_epoch()
    heard = {r: 2.0 + ASK_LONGEST_S for r in range(1, 5)}
    assert not of(core.handle(E.Tick(2.0 + ASK_LONGEST_S / 2, heard)), I.GroupRolledBack)
    out = core.handle(E.Tick(2.0 + ASK_LONGEST_S, heard))
    assert "did not say within" in " ".join(w.text for w in of(out, I.Warn))
    assert I.GroupRolledBack(50, 0) in out and len(of(out, I.PlaceSpawned)) == 3
