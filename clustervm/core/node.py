"""A worker rank's decisions as an I/O-free state machine: ``NodeCore.handle(*events)``.

The node process (``clustervm/node.py``) is the shell: it receives and decodes
messages, turns them and its own doings (a worker is ready for work, a task
blocks on its own submissions, a spawned task ended, the main loop ticked) into
the events below, and carries out the instructions that come back (start a
worker thread, run a task function, send DONE/EXITED/HELLO/BYE/heartbeat, mark a
task's context aborted). The core decides: the queue of short tasks and the
worker slots, cancellations, when DONE results go out (batches), which spawned
incarnation is live, heartbeats and the coordinator-silence rule, shutdown.

Time comes in with the events (``now``, seconds on a clock of the shell's
choice: monotonic for ticks, ``perf_counter`` for batches). Nothing here calls
MPI, threads, sockets, the clock or the disk. Task items, results and spawn
messages pass through unopened. The shell calls :meth:`NodeCore.handle` under
one lock (workers call it from their own threads).
"""
from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Any
from .record import record

#: A node leaves (exit status 3) when the coordinator, once heard beating, has been
#: silent for this many heartbeat periods (at least COORDINATOR_SILENCE_MIN_S): without
#: ULFM (MPICH) nothing else tells it that the coordinator died or hangs.
COORDINATOR_SILENCE = 5
COORDINATOR_SILENCE_MIN_S = 10.0
#: Finished short tasks go back in one DONE message of at most this many results...
BATCH_MAX = 64
#: ...held at most this many seconds (and sent at once when the queue runs low).
BATCH_S = 0.002
#: The coordinator's rank (as protocol.COORDINATOR; the core imports no protocol).
COORDINATOR = 0


class LeaveCause(str, Enum):
    """Why a node leaves without the coordinator's word (the shell logs it)."""
    NO_START = "no_start"          # never heard from the coordinator after start
    SILENT = "silent"              # it beat, then fell silent too long
    DIED = "died"                  # the transport says it failed
    UNREACHABLE = "unreachable"    # a heartbeat could not be posted to it


# -- events ---------------------------------------------------------------------------

@record
class Event:
    """Base class of the node core's events."""


@record
class Started(Event):
    """The shell starts serving (its main loop is about to run)."""
    now: float


@record
class Tick(Event):
    """The main loop ran once. ``heard``: when the coordinator was last heard from
    (None: never)."""
    now: float
    heard: float | None


@record
class LoopEnded(Event):
    """The main loop is over (the node is stopping)."""


@record
class CoordinatorBeat(Event):
    """A heartbeat came from the coordinator: from now on its silence means it is gone."""


@record
class RanksFailed(Event):
    """The transport reports ``ranks`` failed."""
    ranks: frozenset


@record
class HeartbeatUnsent(Event):
    """A heartbeat could not be posted: the coordinator cannot be reached."""


@record
class SendFailed(Event):
    """A result could not be sent (the coordinator failed): stop."""


@record
class ShutdownReceived(Event):
    """The coordinator says shut down; ``unclean``: it saw failures."""
    unclean: bool


@record
class TasksArrived(Event):
    """Short tasks to queue (a RUN message): opaque items, ``item[0]`` the task id."""
    items: Any


@record
class CancelReceived(Event):
    """Drop short task ``tid`` if it has not started."""
    tid: int


@record
class KillReceived(Event):
    """Kill spawned task ``tid`` up to incarnation ``inc`` (and drop it if queued)."""
    tid: int
    inc: int


@record
class SpawnReceived(Event):
    """Start incarnation ``inc`` of spawned task ``tid``; ``task``: the message, opaque."""
    tid: int
    inc: int
    task: Any


@record
class SpawnedEnded(Event):
    """Incarnation ``inc`` of spawned task ``tid`` stopped running (its thread is
    finishing: no longer live here)."""
    tid: int
    inc: int


@record
class SpawnedResult(Event):
    """Its outcome, once its last checkpoint settled; ``aborted``: killed or
    superseded (nothing is reported)."""
    tid: int
    inc: int
    aborted: bool
    ok: bool
    value: Any


@record
class WorkerReady(Event):
    """Worker ``worker`` wants work; ``result``: the short task it just ran (or None).
    ``now``: a clock read after that task (batches are timed with it)."""
    worker: int
    result: Any
    now: float


@record
class WorkerBlocked(Event):
    """A task on a worker waits (on its own submissions, a message): its slot is free."""


@record
class WorkerUnblocked(Event):
    """That task goes on."""


# -- instructions ---------------------------------------------------------------------

@record
class Instruction:
    """Base class of the node core's instructions."""


@record
class SendHello(Instruction):
    """Say hello to the coordinator (HELLO)."""


@record
class SendBye(Instruction):
    """Say goodbye to the coordinator (BYE)."""


@record
class SendHeartbeat(Instruction):
    """Post a heartbeat carrying ``load`` (tasks queued or live here); if it cannot be
    posted, tell the core (HeartbeatUnsent)."""
    load: int


@record
class MarkHeard(Instruction):
    """Count the coordinator as heard at ``now``: this process was stalled, not it."""
    now: float


@record
class Leave(Instruction):
    """The coordinator is lost (``cause``; ``seconds``: how long it was silent): the
    node stops and leaves without a goodbye."""
    cause: LeaveCause
    seconds: float = 0.0


@record
class Notify(Instruction):
    """Wake waiters: ``main`` the threads waiting on the transport (tasks, the loop),
    ``background`` idle workers."""
    main: bool
    background: bool


@record
class StartWorker(Instruction):
    """Start a worker thread, known to the core as ``worker``."""
    worker: int


@record
class RunShort(Instruction):
    """Run this short task on the worker that asked (then it reports WorkerReady)."""
    item: Any


@record
class WaitForWork(Instruction):
    """Nothing to run: wait until tasks arrive or the node stops, at most ``timeout``
    seconds (None: no limit); ``spin``: busy-poll (no spawned task computes here)."""
    timeout: float | None
    spin: bool


@record
class WorkerExit(Instruction):
    """The worker that asked ends its thread."""


@record
class SendDone(Instruction):
    """Report finished short tasks in one DONE message (``results``, a list the core
    no longer holds); if that fails, tell the core (SendFailed)."""
    results: list


@record
class StartSpawned(Instruction):
    """Start incarnation ``inc`` of spawned task ``tid`` (``task``: its SPAWN message)
    on a thread of its own."""
    tid: int
    inc: int
    task: Any


@record
class AbortTask(Instruction):
    """Mark incarnation ``inc`` of spawned task ``tid`` aborted (its waits raise)."""
    tid: int
    inc: int


@record
class SendExited(Instruction):
    """Report the spawned task's outcome (EXITED)."""
    tid: int
    inc: int
    ok: bool
    value: Any


_WAKE_WORKERS = Notify(main=False, background=True)
_WAKE_MAIN = Notify(main=True, background=False)
_WAKE_ALL = Notify(main=True, background=True)
_EXIT = WorkerExit()


class NodeCore:
    """What a worker rank decides, changed only through :meth:`handle`.

    ``slots``: short tasks run at once (worker threads not blocked); ``heartbeat_s``:
    the heartbeat period; ``start_timeout_s``: how long to wait for a first word from
    the coordinator. The shell may read the state (``queue``, ``live``, ``stopping``...)
    but changes it only through events.
    """

    def __init__(self, slots: int, heartbeat_s: float, start_timeout_s: float) -> None:
        self.slots = max(1, slots)
        self.interval = max(0.05, heartbeat_s / 4)
        self.silence = max(COORDINATOR_SILENCE * heartbeat_s, COORDINATOR_SILENCE_MIN_S)
        self.start_timeout_s = start_timeout_s
        self.queue: deque = deque()              # short tasks not started, in order
        self.cancelled: set[int] = set()         # dropped when they come up
        self.live: dict[int, int] = {}           # spawned task -> its incarnation here
        self.n_workers = 0                       # worker threads
        self.n_blocked = 0                       # of them, running a task that waits
        self.stopping = False
        self.coordinator_lost = False
        self.failures_seen = False
        self.coordinator_beats = False
        self.started = self.last_hb = self.last_loop = 0.0
        self._next_worker = 0
        self._batch: dict[int, list] = {}        # worker -> results not yet sent
        self._batch_t0: dict[int, float] = {}    # worker -> when its batch began
        self._table = {
            Started: self._started, Tick: self._tick, LoopEnded: self._loop_ended,
            CoordinatorBeat: self._beat, RanksFailed: self._ranks_failed,
            HeartbeatUnsent: self._heartbeat_unsent, SendFailed: self._send_failed,
            ShutdownReceived: self._shutdown, TasksArrived: self._tasks,
            CancelReceived: self._cancel, KillReceived: self._kill,
            SpawnReceived: self._spawn, SpawnedEnded: self._spawned_ended,
            SpawnedResult: self._spawned_result, WorkerReady: self._worker_ready,
            WorkerBlocked: self._blocked, WorkerUnblocked: self._unblocked,
        }

    def handle(self, *events: Event) -> list[Instruction]:
        """Apply ``events`` in order; the instructions that carry them out, in order."""
        out: list[Instruction] = []
        table = self._table
        for ev in events:
            table[type(ev)](ev, out)
        return out

    @property
    def load(self) -> int:
        """Tasks queued or live here (what a heartbeat carries)."""
        return len(self.queue) + len(self.live)

    # -- the main loop: hello, heartbeats, silence, goodbye -------------------------

    def _started(self, ev: Started, out: list) -> None:
        self.started = self.last_hb = self.last_loop = ev.now
        out.append(SendHello())
        for _ in range(self.slots):
            out.append(self._new_worker())

    def _leave(self, cause: LeaveCause, out: list, seconds: float = 0.0) -> None:
        self.coordinator_lost = True
        self.stopping = True
        out.append(Leave(cause, seconds))

    def _tick(self, ev: Tick, out: list) -> None:
        now, heard = ev.now, ev.heard
        if heard is None and now - self.started > self.start_timeout_s:
            # the coordinator answers a hello at once: it failed before its loop ran
            self._leave(LeaveCause.NO_START, out, now - self.started)
        if now - self.last_hb >= self.interval:
            self.last_hb = now
            out.append(SendHeartbeat(self.load))
        if self.coordinator_beats:
            if now - self.last_loop > self.silence / 2:   # this process was stalled
                out.append(MarkHeard(now))
            elif heard is not None and now - heard > self.silence:
                self._leave(LeaveCause.SILENT, out, now - heard)
        self.last_loop = now

    def _loop_ended(self, ev: LoopEnded, out: list) -> None:
        out.append(_WAKE_MAIN)
        if not self.coordinator_lost:
            out.append(SendBye())

    def _beat(self, ev: CoordinatorBeat, out: list) -> None:
        self.coordinator_beats = True

    def _ranks_failed(self, ev: RanksFailed, out: list) -> None:
        if COORDINATOR in ev.ranks:
            self._leave(LeaveCause.DIED, out)

    def _heartbeat_unsent(self, ev: HeartbeatUnsent, out: list) -> None:
        self._leave(LeaveCause.UNREACHABLE, out)

    def _send_failed(self, ev: SendFailed, out: list) -> None:
        self.stopping = True

    def _shutdown(self, ev: ShutdownReceived, out: list) -> None:
        self.stopping = True
        self.failures_seen = bool(ev.unclean)
        for tid, inc in self.live.items():
            out.append(AbortTask(tid, inc))
        out.append(_WAKE_ALL)

    # -- short tasks ------------------------------------------------------------------

    def _new_worker(self) -> StartWorker:
        self.n_workers += 1
        self._next_worker += 1
        return StartWorker(self._next_worker)

    def _tasks(self, ev: TasksArrived, out: list) -> None:
        self.queue.extend(ev.items)
        out.append(_WAKE_WORKERS)            # an idle worker may be asleep

    def _cancel(self, ev: CancelReceived, out: list) -> None:
        self.cancelled.add(ev.tid)

    def _worker_ready(self, ev: WorkerReady, out: list) -> None:
        w = ev.worker
        q = self.queue
        batch = self._batch.get(w)
        if batch is None:
            batch = self._batch[w] = []
        if ev.result is not None:
            batch.append(ev.result)
            # report early when the queue runs low, so the coordinator refills it in time
            if (len(q) <= 1 or len(batch) >= BATCH_MAX
                    or ev.now - self._batch_t0[w] > BATCH_S):
                out.append(SendDone(batch))
                batch = self._batch[w] = []
        while True:
            if not q and batch:
                out.append(SendDone(batch))
                batch = self._batch[w] = []
            if self.stopping or self.n_workers - self.n_blocked > self.slots:
                if not self.stopping:
                    self.n_workers -= 1      # surplus after a blocked task came back
                if batch:
                    out.append(SendDone(batch))
                del self._batch[w]
                self._batch_t0.pop(w, None)
                out.append(_EXIT)
                return
            if not q:
                # spin for the next task only while no spawned task computes here
                out.append(WaitForWork(None, not self.live))
                return
            item = q.popleft()
            if item[0] in self.cancelled:
                self.cancelled.discard(item[0])
                continue
            if not batch:
                self._batch_t0[w] = ev.now
            out.append(RunShort(item))
            return

    def _blocked(self, ev: WorkerBlocked, out: list) -> None:
        self.n_blocked += 1                  # let another worker use its slot
        if self.n_workers - self.n_blocked < self.slots:
            out.append(self._new_worker())

    def _unblocked(self, ev: WorkerUnblocked, out: list) -> None:
        self.n_blocked -= 1

    # -- spawned (long-lived) tasks ---------------------------------------------------

    def _spawn(self, ev: SpawnReceived, out: list) -> None:
        old = self.live.get(ev.tid)
        if old is not None:
            if old >= ev.inc:
                return                       # that one or a newer one runs already
            out.append(AbortTask(ev.tid, old))
        self.live[ev.tid] = ev.inc
        out.append(StartSpawned(ev.tid, ev.inc, ev.task))

    def _kill(self, ev: KillReceived, out: list) -> None:
        inc = self.live.get(ev.tid)
        if inc is not None and inc <= ev.inc:
            out.append(AbortTask(ev.tid, inc))
            out.append(_WAKE_MAIN)
        self.cancelled.add(ev.tid)

    def _spawned_ended(self, ev: SpawnedEnded, out: list) -> None:
        if self.live.get(ev.tid) == ev.inc:
            del self.live[ev.tid]

    def _spawned_result(self, ev: SpawnedResult, out: list) -> None:
        if not ev.aborted:
            out.append(SendExited(ev.tid, ev.inc, ev.ok, ev.value))
