"""The node core without threads or MPI: events in, assertions on the instructions out."""
from __future__ import annotations

from clustervm.core import node as N
from clustervm.core.node import NodeCore


def item(tid: int) -> tuple:
    """A short task as a RUN message carries it (the core reads only the id)."""
    return (tid, 1, "mod:fn", (), {}, None)


def of(out: list, kind: type) -> list:
    return [i for i in out if type(i) is kind]


def started(slots: int = 2, heartbeat_s: float = 1.0, start_timeout_s: float = 30.0,
            now: float = 0.0) -> NodeCore:
    core = NodeCore(slots, heartbeat_s, start_timeout_s)
    core.handle(N.Started(now))
    return core


def test_start_says_hello_and_starts_one_worker_per_slot() -> None:
    core = NodeCore(3, 1.0, 30.0)
    out = core.handle(N.Started(0.0))
    assert out[0] == N.SendHello()
    assert of(out, N.StartWorker) == [N.StartWorker(1), N.StartWorker(2), N.StartWorker(3)]
    assert core.n_workers == 3


def test_slots_and_prefetch_beyond_them() -> None:
    core = started(slots=2)
    out = core.handle(N.TasksArrived([item(t) for t in range(10, 16)]))
    assert out == [N.Notify(main=False, background=True)]     # idle workers wake
    # two workers take one task each; the rest waits here (prefetched), in order
    assert core.handle(N.WorkerReady(1, None, 0.0)) == [N.RunShort(item(10))]
    assert core.handle(N.WorkerReady(2, None, 0.0)) == [N.RunShort(item(11))]
    assert [i[0] for i in core.queue] == [12, 13, 14, 15]
    assert core.load == 4
    # a finished task is held for a batch while the queue is long; the next one starts
    out = core.handle(N.WorkerReady(1, (10, True, "a"), 0.0001))
    assert out == [N.RunShort(item(12))]
    out = core.handle(N.Tick(0.3, 0.3))
    assert out == [N.SendHeartbeat(3)]                        # queued + live


def test_cancel_of_a_queued_task_drops_it_once() -> None:
    core = started(slots=1)
    core.handle(N.CancelReceived(11))
    core.handle(N.TasksArrived([item(10), item(11), item(12)]))
    assert core.handle(N.WorkerReady(1, None, 0.0)) == [N.RunShort(item(10))]
    out = core.handle(N.WorkerReady(1, (10, True, 0), 0.0))
    assert of(out, N.RunShort) == [N.RunShort(item(12))]     # 11 skipped
    assert 11 not in core.cancelled                           # forgotten once dropped


def test_done_results_are_batched_then_sent_when_the_queue_runs_low() -> None:
    core = started(slots=1)
    core.handle(N.TasksArrived([item(t) for t in range(100, 110)]))
    core.handle(N.WorkerReady(1, None, 0.0))
    sent = []
    for k in range(10):
        out = core.handle(N.WorkerReady(1, (100 + k, True, k), 0.0))
        sent += [d.results for d in of(out, N.SendDone)]
    # held while more than one task was queued, then flushed each time it ran low
    assert [len(r) for r in sent] == [9, 1]
    assert [r[0] for r in sent[0]] == list(range(100, 109))
    assert of(out, N.WaitForWork) == [N.WaitForWork(None, True)]


def test_a_batch_goes_out_at_its_size_limit_and_its_time_limit() -> None:
    core = started(slots=1)
    core.handle(N.TasksArrived([item(t) for t in range(2 * N.BATCH_MAX + 5)]))
    core.handle(N.WorkerReady(1, None, 0.0))
    sizes = []
    for k in range(N.BATCH_MAX):
        out = core.handle(N.WorkerReady(1, (k, True, k), 0.0))
        sizes += [len(d.results) for d in of(out, N.SendDone)]
    assert sizes == [N.BATCH_MAX]
    out = core.handle(N.WorkerReady(1, (N.BATCH_MAX, True, 0), 0.0))
    assert not of(out, N.SendDone)                            # a new batch, started at 0.0
    out = core.handle(N.WorkerReady(1, (N.BATCH_MAX + 1, True, 0), 2 * N.BATCH_S))
    assert [len(d.results) for d in of(out, N.SendDone)] == [2]   # too old: sent


def test_a_blocked_worker_frees_its_slot_and_the_surplus_worker_leaves() -> None:
    core = started(slots=1)
    core.handle(N.TasksArrived([item(1), item(2), item(3)]))
    assert core.handle(N.WorkerReady(1, None, 0.0)) == [N.RunShort(item(1))]
    # task 1 waits on its own submissions: a second worker takes its slot
    assert core.handle(N.WorkerBlocked()) == [N.StartWorker(2)]
    assert core.handle(N.WorkerReady(2, None, 0.0)) == [N.RunShort(item(2))]
    assert core.handle(N.WorkerBlocked()) == [N.StartWorker(3)]   # it blocks too
    assert core.n_workers == 3 and core.n_blocked == 2
    core.handle(N.WorkerUnblocked())
    core.handle(N.WorkerUnblocked())
    # both came back: two workers too many; each one that asks for work leaves
    out = core.handle(N.WorkerReady(1, (1, True, 0), 0.0))
    assert out[-1] == N.WorkerExit() and of(out, N.SendDone)[0].results == [(1, True, 0)]
    out = core.handle(N.WorkerReady(2, (2, True, 0), 0.0))
    assert out[-1] == N.WorkerExit()
    assert core.n_workers == 1
    assert core.handle(N.WorkerReady(3, None, 0.0)) == [N.RunShort(item(3))]


def test_spawn_kill_and_exit_of_a_spawned_task() -> None:
    core = started()
    out = core.handle(N.SpawnReceived(7, 0, "msg0"))
    assert out == [N.StartSpawned(7, 0, "msg0")] and core.live == {7: 0}
    assert core.handle(N.SpawnReceived(7, 0, "again")) == []       # already runs
    # a newer incarnation replaces it: the old one is aborted first
    out = core.handle(N.SpawnReceived(7, 1, "msg1"))
    assert out == [N.AbortTask(7, 0), N.StartSpawned(7, 1, "msg1")]
    # the old thread ends after: the live one stays
    core.handle(N.SpawnedEnded(7, 0))
    assert core.handle(N.SpawnedResult(7, 0, True, True, None)) == []
    assert core.live == {7: 1}
    # a kill of an older incarnation leaves it alone; one of this one aborts it
    assert of(core.handle(N.KillReceived(7, 0)), N.AbortTask) == []
    out = core.handle(N.KillReceived(7, 1))
    assert out == [N.AbortTask(7, 1), N.Notify(main=True, background=False)]
    assert 7 in core.cancelled
    # a task that ends by itself reports its value
    core.handle(N.SpawnReceived(8, 0, "m"))
    core.handle(N.SpawnedEnded(8, 0))
    assert core.handle(N.SpawnedResult(8, 0, False, True, 42)) == [N.SendExited(8, 0, True, 42)]
    assert 8 not in core.live


def test_idle_workers_spin_only_while_no_spawned_task_computes() -> None:
    core = started(slots=1)
    assert core.handle(N.WorkerReady(1, None, 0.0)) == [N.WaitForWork(None, True)]
    core.handle(N.SpawnReceived(5, 0, "m"))
    assert core.handle(N.WorkerReady(1, None, 0.0)) == [N.WaitForWork(None, False)]


def test_heartbeats_go_every_quarter_period() -> None:
    core = started(heartbeat_s=1.0)
    assert core.handle(N.Tick(0.1, 0.1)) == []
    assert core.handle(N.Tick(0.26, 0.2)) == [N.SendHeartbeat(0)]
    assert core.handle(N.Tick(0.3, 0.3)) == []
    out = core.handle(N.HeartbeatUnsent())                     # cannot reach it
    assert out == [N.Leave(N.LeaveCause.UNREACHABLE)] and core.coordinator_lost


def test_coordinator_silence_makes_the_node_leave_once_it_has_beaten() -> None:
    core = started(heartbeat_s=1.0)      # silence: max(5 * 1 s, 10 s) = 10 s
    t = 0.0
    while t < 30.0:                       # never beat: its silence means nothing yet
        t += 1.0
        assert not of(core.handle(N.Tick(t, 0.5)), N.Leave)
    core.handle(N.CoordinatorBeat())
    for t in range(31, 41):              # the loop runs every second; nothing comes
        assert not of(core.handle(N.Tick(float(t), 30.5)), N.Leave)
    out = core.handle(N.Tick(41.0, 30.5))
    assert of(out, N.Leave) == [N.Leave(N.LeaveCause.SILENT, 10.5)]
    assert core.stopping and core.coordinator_lost
    assert core.handle(N.LoopEnded()) == [N.Notify(main=True, background=False)]   # no BYE


def test_a_stalled_node_does_not_blame_the_coordinator() -> None:
    core = started(heartbeat_s=1.0)
    core.handle(N.CoordinatorBeat())
    core.handle(N.Tick(1.0, 1.0))
    out = core.handle(N.Tick(20.0, 1.0))      # this loop did not run for 19 s
    assert of(out, N.MarkHeard) == [N.MarkHeard(20.0)] and not of(out, N.Leave)
    assert not core.stopping


def test_no_word_from_the_coordinator_after_start() -> None:
    core = started(start_timeout_s=5.0, now=100.0)
    assert not of(core.handle(N.Tick(104.0, None)), N.Leave)
    out = core.handle(N.Tick(106.0, None))
    assert of(out, N.Leave) == [N.Leave(N.LeaveCause.NO_START, 6.0)]


def test_the_coordinator_failing_makes_the_node_leave() -> None:
    core = started()
    assert core.handle(N.RanksFailed(frozenset({2}))) == []
    assert core.handle(N.RanksFailed(frozenset({0, 2}))) == [N.Leave(N.LeaveCause.DIED)]
    assert core.stopping and core.coordinator_lost


def test_shutdown_aborts_spawned_tasks_stops_workers_and_says_bye() -> None:
    core = started(slots=1)
    core.handle(N.SpawnReceived(7, 2, "m"), N.TasksArrived([item(1), item(2)]))
    core.handle(N.WorkerReady(1, None, 0.0))
    out = core.handle(N.ShutdownReceived(unclean=True))
    assert out == [N.AbortTask(7, 2), N.Notify(main=True, background=True)]
    assert core.stopping and core.failures_seen and not core.coordinator_lost
    # the worker reports what it ran, then leaves; the queued task is not started
    out = core.handle(N.WorkerReady(1, (1, True, 0), 0.0))
    assert of(out, N.SendDone)[0].results == [(1, True, 0)] and out[-1] == N.WorkerExit()
    assert not of(out, N.RunShort)
    assert core.handle(N.LoopEnded()) == [N.Notify(main=True, background=False), N.SendBye()]


def test_a_failed_send_stops_the_node() -> None:
    core = started(slots=1)
    core.handle(N.TasksArrived([item(1), item(2)]))
    core.handle(N.SendFailed())
    assert core.handle(N.WorkerReady(1, None, 0.0)) == [N.WorkerExit()]
    assert core.stopping and not core.coordinator_lost
