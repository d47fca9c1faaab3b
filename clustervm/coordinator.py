"""The coordinator (rank 0): the shell around the scheduling core.

Scheduling and failover decisions (queue, prefetch, placement, node states,
heartbeat deadlines, re-queue and restart after a loss, spares, replacement
requests, journal records) are :class:`clustervm.core.Core`'s, which does no
I/O. This shell turns messages and calls into the core's events, and carries
out the instructions it returns (:meth:`Coordinator._execute`): send, kill,
resolve a future, write the journal, tell observers.

Handlers run in whichever thread is polling MPI (the application's main while
it waits, the service thread otherwise) under ``self.lock``; they never block:
everything they send goes out with ``transport.post``.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
import zlib
from concurrent.futures import Future
from typing import Any, Callable

from . import procs
from . import protocol as P
from . import nodefiles, remote, replaylog, shmcopies, syncs, wire
from .api import CoordinatorAPI
from .checkpoint import CheckpointStore, WriteBehind
from .config import Config
from .core import Core, LossCause, Traffic, VMView, cannot_go_back, ended_after
from .core import events as E
from .core import instructions as I
from .core.view import Observer
from .doorbell import job_key
from .endpoint import QUIET, Endpoint
from .errors import CheckpointError, InternalError, NoNodesError
from .events import EventLog
from .futures import ClusterFuture
from .journal import Journal
from .records import SHORT, SPAWNED, NodeInfo, Reply, TaskRecord
from .replacement import SPAWN_HELLO_S, NodeSpawning  # noqa: F401 - SPAWN_HELLO_S re-exported
from .site import Site
from .task import TaskContext

log = logging.getLogger(__name__)

#: Once one node has said hello, how long main waits for the others before it starts.
START_GRACE_S = 5.0
#: Main polls in a submission when the service loop has not come round for this long.
#: Submitting in a loop, main holds the GIL, and the service loop (which takes the
#: nodes' results and sends them more tasks) waits up to the interpreter's switch
#: interval (5 ms) for each turn: the nodes' queues ran dry for 10-15 ms at the start
#: of a map of 2000 tasks of 1 ms. (Letting go of the GIL every 16 submissions instead
#: cost maps of no-op tasks 6-10 % of their rate.)
MAIN_POLL_S = 0.001


def _can_rebuild() -> bool:
    """Can a frozen group get a new communicator after a failure (asked of MPI once, by
    the groups in the core, when one first could)."""
    from .fastgroup import can_rebuild
    return can_rebuild()


class _Observers(list):
    """``Coordinator.observers``: appending the first one tells the core to emit
    Observe instructions (none are made while nobody listens)."""

    def __init__(self, core: Core) -> None:
        super().__init__()
        self._core = core

    def append(self, obs: Any) -> None:
        super().append(obs)
        self._core.handle(E.ObserversChanged(True))


class FinishedSender:
    """A spawned task that finished before the coordinator died, as a sender: its replay
    log from the journal (what Site._trim_and_replay sends again to restored tasks)."""
    __slots__ = ("tid", "inc", "_outlog", "_outbytes")

    def __init__(self, tid: int, inc: int, outlog: dict) -> None:
        self.tid, self.inc = tid, inc
        self._outlog = replaylog.unpack(outlog)
        self._outbytes = None


class _Restart:
    """One lost node's tasks on their way back: when the loss was detected, which of its
    tasks are not yet sent to a node again, and when the last one was; and, of its
    spawned tasks restarted from a checkpoint, which do not run again yet (their node
    says RESTORED once the checkpoint is back) and when the last one did."""
    __slots__ = ("rank", "t_detect", "count", "waiting", "t_sent", "restoring", "t_running")

    def __init__(self, rank: int, t_detect: float, tids: tuple[int, ...]) -> None:
        self.rank = rank
        self.t_detect = t_detect
        self.count = len(tids)
        self.waiting = set(tids)
        self.t_sent: float | None = None
        self.restoring: set[int] = set()
        self.t_running: float | None = None

    @property
    def seconds(self) -> float | None:
        """Detection -> the last task sent again, once none waits (None before, or if
        none was sent again: they ended otherwise)."""
        return None if self.waiting or self.t_sent is None else self.t_sent - self.t_detect

    @property
    def running_s(self) -> float | None:
        """Detection -> the last restored task running again (None: none restored, or
        not all yet)."""
        return None if self.restoring or self.t_running is None \
            else self.t_running - self.t_detect

    def text(self) -> str:
        if self.waiting:
            return (f"node {self.rank} not done ({len(self.waiting)} of {self.count} "
                    f"task(s) waiting)")
        if self.t_sent is None:
            return f"node {self.rank} none ({self.count} task(s) ended otherwise)"
        return f"node {self.rank} {self.seconds:.3f} s ({self.count} task(s))"

    def running_text(self) -> str | None:
        if self.running_s is None:
            return None
        return f"node {self.rank} {self.running_s:.3f} s"


#: the journal's record of a spawned task going on from a checkpoint as a new incarnation
#: (its key the tid, its frame [inc, seq]): NodeFiles.restarted
RESTART = "restart"


class Coordinator(CoordinatorAPI, NodeSpawning, Site):
    """Rank 0: schedules tasks onto nodes and recovers them when nodes fail."""

    def __init__(self, transport: Endpoint, config: Config) -> None:
        super().__init__(transport, config)
        self.handlers.update({
            P.Hello: self._on_hello,
            P.Done: self._on_done,
            P.Exited: self._on_exited,
            P.Req: self._on_req,
            P.Heartbeat: self._on_heartbeat,
            P.Bye: self._on_bye,
            P.Held: self._on_held,
            P.Restored: self._on_restored,
            P.Holding: self._on_holding,
        })
        self.t0 = time.monotonic()
        ckdir = config.checkpoint_dir or None
        # nodes that see the directory write their tasks' checkpoints there themselves
        job = job_key() if config.node_files else None
        #: the checkpoint files the nodes write (read after a loss, and on --resume)
        self.node_files = nodefiles.NodeFiles(ckdir) if ckdir else None
        self.core = Core(range(1, transport.size), slots=config.slots, prefetch=config.prefetch,
                         heartbeat_s=config.heartbeat_s, replace_failed=config.replace_failed,
                         journal=bool(ckdir), resume=config.resume, t0=self.t0,
                         disk_every_s=config.checkpoint_disk_s, node_files=bool(ckdir and job),
                         resolve=self.resolve, rebuild=_can_rebuild,
                         auto_freeze=config.auto_freeze if transport.mpi_world else 0)
        self.nodes: dict[int, NodeInfo] = self.core.nodes      # the core's, read only here
        self.stats = self.core.stats
        self.tasks: dict[int, TaskRecord] = {}      # live tasks: what to run, whom to tell
        self.exits: dict[int, tuple[bool, Any]] = {}
        self._tids = itertools.count(P.MAIN_TID + 1)
        self._served_at = 0.0          # the service loop's last round (perf_counter)
        self.events = EventLog(self.t0)
        #: with a directory, written files are synced every checkpoint_sync_s (clustervm.syncs)
        strict = config.checkpoint_sync_s <= 0
        self.store = CheckpointStore(ckdir, fsync=strict)
        self.journal: Journal | None = Journal(ckdir, fsync=False) if ckdir else None
        if ckdir and job:
            try:
                nodefiles.announce(ckdir, job)
            except OSError as exc:      # the nodes then send every checkpoint here
                log.warning("cannot name the job in %s (%s): every checkpoint goes to the "
                            "coordinator", ckdir, exc)
        self.main_ctx = TaskContext(self, P.MAIN_TID, None)
        self.contexts[P.MAIN_TID] = self.main_ctx
        self.stopping = False
        self.fatal: BaseException | None = None
        #: how to start this program on a new node (arguments after the interpreter)
        self.spawn_command: list[str] = []
        self._next_rank = max(transport.size, 1)
        self._spawn_lock = threading.Lock()     # one MPI_Comm_spawn at a time
        self._blob: bytes = b""                 # the checkpoint being stored
        self._deferred: list[E.Event] = []      # handled once the instructions are carried out
        #: tasks over whose files the nodes wrote are deleted once their results in the
        #: journal are synced (a power cut must not find neither: _sync_journal)
        self._ended_files: list[int] = []
        self._ended_files_lock = threading.Lock()
        #: checkpoints on their way to being acknowledged: tid -> (seq, reply, delivered)
        self._ckpt_calls: dict[int, tuple[int, Any, dict]] = {}
        #: what each task had received at its newest checkpoints: tid -> {seq: delivered}
        self._delivered: dict[int, dict[int, dict]] = {}
        #: failed writes to the checkpoint directory, told at the task's next acknowledgment
        self._ckpt_errors: dict[int, CheckpointError] = {}
        #: a spawned task's replay log as it ended (tid -> (inc, outlog)), journaled with
        #: its result: a task restored on --resume may still need those messages
        self._exit_outlogs: dict[int, tuple[int, Any]] = {}    # outlog: packed
        self._finished_senders: dict[int, FinishedSender] = {}   # from the journal
        #: finished tasks in the journal: tid -> its cut (a checkpoint group member's last
        #: checkpoint after which it sent the others nothing, else -1; E.SpawnedExited)
        self._ended_cuts: dict[int, int] = {}
        #: with --checkpoint-dir, checkpoints are written by this thread, behind the run
        self._writer = WriteBehind(
            self.store, self._written, config.checkpoint_sync_s, self._synced,
            lambda: self.journal is not None and self.journal.dirty) if ckdir else None
        #: what a resume after a power cut gave up (clustervm.syncs), for the report
        self._went_back: str | None = None
        self._src = 0                           # the rank whose request is being served
        self._unjournaled: dict[int, CheckpointError] = {}   # tid -> why it was not
        #: restart time per lost node (the report): detection -> the last of its tasks
        #: sent to run again (a SPAWN with its checkpoint, or a RUN), by that node's loss
        self.restarts: list[_Restart] = []
        self._awaited: dict[int, _Restart] = {}    # tid lost with a node -> its _Restart
        self._awaited_running: dict[int, _Restart] = {}   # restored, not running yet
        #: Observers (trace, dashboard), attached with :meth:`observe`: ``obs(kind, task, rank,
        #: ok)`` with a TaskView; called under ``self.lock``: record and return, never block.
        self.observers: list[Observer] = _Observers(self.core)
        transport.on_failure = self._on_mpi_failure
        self.api: dict[str, Callable[..., None]] = self._api_table()
        self._do: dict[type, Callable[[Any], None]] = {
            I.Dispatch: self._do_dispatch, I.CancelQueued: self._do_cancel_queued,
            I.Cancelled: self._do_cancelled, I.PlaceSpawned: self._do_place_spawned,
            I.BroadcastLocation: self._do_broadcast_location, I.KillTask: self._do_kill_task,
            I.TellLocations: self._do_tell_locations,
            I.NodeDown: self._do_node_down, I.Kill: self._do_kill, I.NodeUp: self._do_node_up,
            I.ResolveTask: self._do_resolve, I.JournalDone: self._do_journal_done,
            I.StoreCheckpoint: self._do_store_checkpoint,
            I.CommitCheckpoint: self._do_commit_checkpoint,
            I.ForgetReceived: self._do_forget_received,
            I.CopyCheckpoint: self._do_copy_checkpoint,
            I.GroupRolledBack: self._do_group_rolled_back,
            I.DropCheckpoints: self._do_drop_checkpoints, I.Observe: self._do_observe,
            I.DropCheckpointsAfter: self._do_drop_checkpoints_after,
            I.RequestReplacement: self._do_request_replacement, I.Warn: self._do_warn,
            I.Fatal: self._do_fatal, I.Answer: self._do_answer, I.ThawGroup: self._do_thaw_group,
            I.AskHeld: self._do_ask_held, I.TellBuddy: self._do_tell_buddy,
        }
        if self.journal is not None:
            if config.resume:
                self._went_back = syncs.back_to_last_sync(self.journal, self.store)
                self._load_journal()
            # what a resume found may not be on the disk yet (the job was killed before
            # it synced): a power cut from here on goes back to this, or to a later sync
            self.store.sync(lambda kept, gone: syncs.record_sync(
                self.journal, kept, gone, full=True, strict=strict), full=True)

    # -- the core and its instructions ---------------------------------------------

    def _run(self, *events: E.Event) -> list[I.Instruction]:
        """Hand ``events`` to the core and carry out its instructions (under self.lock)."""
        out = self.core.handle(*events)
        if out:
            self._execute(out)
        return out

    def _execute(self, out: list[I.Instruction]) -> None:
        do = self._do
        first = [ins for ins in out if type(ins) is I.PlaceSpawned and not ins.restart]
        if first:
            self._announce(first)
        for ins in out:
            do[type(ins)](ins)
        while self._deferred:       # events that instructions carried out made
            more = self.core.handle(self._deferred.pop(0))
            if more:
                self._execute(more)

    def _announce(self, placed: list[I.PlaceSpawned]) -> None:
        """The LOCs of first placements, one per rank, before any of their SPAWNs: a task
        of a spawn call knows where its siblings are (MPI keeps a pair's messages in
        order), and a node where every task of the VM is, before their first messages."""
        by_rank: dict[int, list] = {}
        for ins in placed:
            item = (ins.tid, ins.rank, ins.inc, ins.replay, None)
            for r in ins.tell:
                by_rank.setdefault(r, []).append(item)
        for r, items in by_rank.items():
            self.transport.post(r, P.Loc(items).encode())
        self._on_loc(0, P.Loc([(i.tid, i.rank, i.inc, i.replay, None) for i in placed]))

    def _do_dispatch(self, ins: I.Dispatch) -> None:
        tasks = self.tasks
        resume = self.config.resume
        items = []
        for tid, attempts in ins.items:
            rec = tasks[tid]
            ckpt = self._load_ckpt(tid) if attempts or resume else None
            items.append((tid, rec.parent, rec.fn, rec.args, rec.kwargs, ckpt))
        # arguments were checked at submit (wire.check_sendable), so this encodes
        if not self.transport.post(ins.rank, P.Run(items).encode()):
            self._run(E.NodeLost(ins.rank, LossCause.ULFM, time.monotonic()))
        elif self._awaited:
            self._sent_again(tid for tid, _ in ins.items)

    def _do_cancel_queued(self, ins: I.CancelQueued) -> None:
        self.transport.post(ins.rank, P.Cancel(ins.tid).encode())

    def _do_cancelled(self, ins: I.Cancelled) -> None:
        rec = self.tasks.pop(ins.tid, None)
        if rec is not None and rec.future is not None:
            Future.cancel(rec.future)
        if self._awaited:
            self._sent_again((ins.tid,), timed=False)

    def _do_place_spawned(self, ins: I.PlaceSpawned) -> None:
        rec = self.tasks[ins.tid]
        ckpt = at = None
        if not ins.restart:
            delivered = {}
        elif ins.source:          # a node's copy: this one's own, or another node sends it
            at = (ins.source, ins.seq)
            delivered = self._delivered.get(ins.tid, {}).get(ins.seq, {})
            self.stats["ckpt_restored"] += 1
            self.events.add("RESTORE", tid=ins.tid, seq=ins.seq, node=ins.source)
            log.info("task %d (incarnation %d) restored on node %d from node %d's copy of "
                     "its checkpoint %d", ins.tid, ins.inc, ins.rank, ins.source, ins.seq)
            if ins.source != ins.rank:
                self.transport.post(ins.source, P.Fetch(ins.tid, ins.seq, ins.rank).encode())
        else:
            try:
                ckpt = self._load_ckpt(ins.tid, ins.seq)
            except CheckpointError as exc:       # _group_epoch: it cannot be resumed
                log.error("task %d: %s", ins.tid, exc)
                self._run(E.TaskKilled(ins.tid, remote.pack_exception(exc, "the coordinator")))
                return
            delivered = ckpt["delivered"] if ckpt is not None else {}
        if ins.restart and self.node_files is not None:
            # files its lost incarnations' nodes wrote after the checkpoint it starts from
            # again are of a course it no longer takes: never a copy to restore it from
            base = ins.seq if ins.source else ckpt["seqs"]["ckpt"] if ckpt is not None else 0
            self.node_files.restarted(ins.tid, ins.inc, base)
            if self.journal is not None:    # for --resume: a hung node may write them later
                self.journal.append(RESTART, str(ins.tid), [wire.dumps([ins.inc, base])[0]])
            self.node_files.drop(ins.tid, self.core.alive_ranks(), newer_than=base,
                                 below_inc=ins.inc)
        if ins.restart:          # a first placement's LOC went out already (_announce)
            if self.journal is not None or ins.group:
                # its senders forget only what a checkpoint of it on disk had received: an
                # older copy may restore it yet (this node lost too, or --resume), so they
                # send again all they still hold, and it drops what it has had (a
                # checkpoint group's member the same: its group may go back further yet)
                delivered = {}
            loc = P.Loc([(ins.tid, ins.rank, ins.inc, ins.replay, delivered)])
            self.transport.broadcast(list(ins.tell), loc.encode())
            self._on_loc(0, loc)
        self.transport.post(ins.rank, P.Spawn(ins.tid, rec.parent, rec.fn, rec.args, rec.kwargs,
                                              ins.inc, ckpt, ins.replay, rec.siblings,
                                              at, (ins.buddy, ins.to_store),
                                              ins.group).encode())
        if ins.restart and self._awaited:
            self._sent_again((ins.tid,), restoring=ckpt is not None or at is not None)

    def _do_broadcast_location(self, ins: I.BroadcastLocation) -> None:
        loc = P.Loc([(ins.tid, ins.rank, ins.inc, ins.replay, {} if ins.resend else None)])
        self.transport.broadcast(list(ins.tell), loc.encode())
        self._on_loc(0, loc)

    def _do_tell_locations(self, ins: I.TellLocations) -> None:
        loc = P.Loc([(tid, rank, inc, replay, None) for tid, rank, inc, replay in ins.items])
        self.transport.post(ins.rank, loc.encode())

    def _do_kill_task(self, ins: I.KillTask) -> None:
        self.transport.post(ins.rank, P.Kill(ins.tid, ins.inc).encode())

    def _do_node_down(self, ins: I.NodeDown) -> None:
        n = self.nodes[ins.rank]
        if ins.cause.hung:
            self.transport.declare_dead(ins.rank)    # whatever it still sends is dropped
        else:
            self.transport.failed.add(ins.rank)
        how = n.how_lost
        log.warning("node %d (host %s, pid %d) lost: %s", n.rank, n.host, n.pid, how)
        self.events.add("NODE_DOWN", rank=n.rank, host=n.host, how=how)
        if n.lost_tids:
            r = _Restart(n.rank, n.lost_at, n.lost_tids)
            self.restarts.append(r)
            for tid in n.lost_tids:
                self._awaited[tid] = r

    def _sent_again(self, tids: Any, timed: bool = True, restoring: bool = False) -> None:
        """Tasks lost with a node are sent to a node again (or, not ``timed``, are over
        without it): the node's restart is done when its last one is. ``restoring``: they
        restart from a checkpoint, and say RESTORED when they run again."""
        now = time.monotonic()
        for tid in tids:
            r = self._awaited.pop(tid, None)
            if r is not None:
                r.waiting.discard(tid)
                if timed:
                    r.t_sent = now
                if restoring:
                    r.restoring.add(tid)
                    self._awaited_running[tid] = r

    def _running_again(self, tid: int) -> None:
        r = self._awaited_running.pop(tid, None)
        if r is not None:
            r.restoring.discard(tid)
            r.t_running = time.monotonic()

    def _do_kill(self, ins: I.Kill) -> None:
        self._kill_process(self.nodes[ins.rank])    # a hung node is never trusted again

    def _do_node_up(self, ins: I.NodeUp) -> None:
        n = self.nodes[ins.rank]
        if ins.how == "spare":
            log.warning("spare node %d takes over", n.rank)
        else:
            log.warning("node %d (host %s, pid %d) started with MPI_Comm_spawn joins the VM",
                        n.rank, n.host, n.pid)
        self.events.add("NODE_ADDED", rank=n.rank, host=n.host, how=ins.how)

    def _do_resolve(self, ins: I.ResolveTask) -> None:
        """A task is over: deliver its outcome once."""
        rec = self.tasks.pop(ins.tid, None)
        if self._awaited:
            self._sent_again((ins.tid,), timed=False)
        if rec is None:
            return
        ok, value, packed = ins.ok, ins.value, ins.packed
        if self._unjournaled:
            err = self._unjournaled.pop(ins.tid, None)
            if err is not None:
                ok, value, packed = False, err, False
        outcome = value if ok or not packed else remote.unpack_exception(value)
        if rec.kind == SPAWNED:
            self.exits[rec.tid] = (ok, outcome)
            if ins.reused:
                self._replay_finished(rec.tid)
                return
            self._run(E.MemberEnded(rec.tid, None if ok else outcome))   # leaves its groups
            for j in rec.joiners:
                j(ok, outcome)
            rec.joiners.clear()
            self.events.add("TASK_EXIT", tid=rec.tid, ok=ok)
            return
        fut = rec.future
        if fut is not None and not fut.done():
            if ok:
                fut.set_result(outcome)
            else:
                fut.set_exception(outcome)
        if rec.reply is not None:
            rec.reply(ok, value if ok or ins.reused else outcome)

    def _replay_finished(self, tid: int) -> None:
        """Resume: task ``tid`` finished before the coordinator died; what it had sent that
        a restored task may not have received is sent again from the journal, now and
        whenever a receiver is placed again (as its node would have: Site._trim_and_replay;
        duplicates are dropped by their sequence numbers)."""
        sender = self._finished_senders.pop(tid, None)
        if sender is None:
            return
        self.contexts[tid] = sender
        for dst, entries in sender._outlog.items():
            loc = self.locations.get(dst)
            if loc is not None and loc.rank >= 0:
                self._trim_and_replay(dst, loc.rank, loc.inc, {}, replay_all=True)

    def _do_journal_done(self, ins: I.JournalDone) -> None:
        if self.journal is None:
            return
        try:
            sent = self._exit_outlogs.pop(ins.tid, None)
            payload, bufs = wire.dumps((ins.digest, ins.ok, ins.value, sent, ins.cut))
            self.journal.append("done", str(ins.tid), [payload, *bufs])
            if self._writer is not None:
                self._writer.poke()         # synced with the next checkpoints
        except CheckpointError as exc:
            # the caller learns it now, from the task's future or join (the ResolveTask
            # that follows): a result that is not journaled would be lost to --resume
            # without anybody being told
            log.error("task %d: %s", ins.tid, exc)
            self._unjournaled[ins.tid] = CheckpointError(
                f"task {ins.tid} finished, but its result could not be written to the job "
                f"journal: {exc}. The job cannot be resumed past this task; fix the "
                f"checkpoint directory and run the job again")

    def _do_store_checkpoint(self, ins: I.StoreCheckpoint) -> None:
        # bytes, or a uint8 array (wire.as_blob_frame) over the message's own receive
        # buffer: kept without a copy (a copy into new memory took ~0.16 ms of rank 0's
        # time for each of heat2d's 370 KB checkpoints, most of it page faults)
        blob = self._blob
        if self._writer is None:
            self.store.save(str(ins.tid), ins.seq, [blob], copy=False)
        else:       # kept now (a restart may need it at once), on disk behind the run
            t = self.core.tasks.get(ins.tid)
            group = t is not None and bool(t.group)
            self.store.save(str(ins.tid), ins.seq, [blob], write=False, keep_previous=group,
                            copy=False)
            self._writer.write(ins.tid, ins.inc, ins.seq, blob, skippable=not group)

    def _synced(self, kept: dict[str, list[int]], gone: list[str]) -> None:
        """The writer synced the store: journal what is durable now (its thread)."""
        assert self.journal is not None
        self._sync_journal(lambda: syncs.record_sync(self.journal, kept, gone))

    def _sync_journal(self, sync: Callable[[], None]) -> None:
        """Run ``sync`` (it syncs the journal), then delete the files the nodes wrote of
        the tasks over whose results it made durable (those of _ended_files before it:
        their results were journaled before they were added)."""
        with self._ended_files_lock:
            count = len(self._ended_files)
        sync()
        if not count or self.node_files is None:
            return
        with self._ended_files_lock:
            tids, self._ended_files[:count] = self._ended_files[:count], []
        for tid in tids:
            self.node_files.drop(tid, ())

    def _written(self, tid: int, inc: int, seq: int, error: CheckpointError | None) -> None:
        """The write-behind thread wrote checkpoint ``seq`` of task ``tid`` (or failed)."""
        with self.lock:
            if error is not None:
                log.error("task %d: %s", tid, error)
                self._ckpt_errors.setdefault(tid, error)
            self._run(E.CheckpointWritten(tid, inc, seq, error is None, time.monotonic()))
            if error is None:
                # its nodes hold it in memory, and a restart that needs this copy reads
                # the file: the coordinator's memory does not grow with the VM's states
                self.store.release(str(tid), seq)

    def _do_commit_checkpoint(self, ins: I.CommitCheckpoint) -> None:
        """Every copy is held: answer the node, and (unless the disk is waited for) let
        senders forget what it received."""
        tid = ins.tid
        call = self._ckpt_calls.pop(tid, None)
        if call is not None and call[0] == ins.seq:
            error = self._ckpt_errors.pop(tid, None)
            _, reply, delivered = call
            if error is not None:
                reply(False, error)
            else:
                reply(True, (ins.buddy, ins.to_store))
        else:
            delivered = self._delivered.get(tid, {}).get(ins.seq, {})
        if 0 not in ins.holders and self._writer is None:
            self.store.drop(str(tid))        # the nodes hold it: rank 0 keeps no bytes
        if ins.forget:
            self._forget_received(tid, delivered)

    def _do_forget_received(self, ins: I.ForgetReceived) -> None:
        delivered = self._delivered.get(ins.tid, {}).get(ins.seq)
        if delivered:       # None: long superseded; a newer one forgets as much and more
            self._forget_received(ins.tid, delivered)

    def _forget_received(self, tid: int, delivered: dict) -> None:
        """Tell the senders of the messages task ``tid`` has received (``delivered``: per
        sender, how many) that they may forget them."""
        rec = self.tasks.get(tid)
        if rec is None or not delivered:
            return

        def rank_of(src: int) -> int | None:
            loc, srec = self.locations.get(int(src)), self.tasks.get(int(src))
            return loc.rank if loc is not None else (srec.node if srec else None)

        self._tell_senders(tid, rec.node, rec.inc, rec.replay, delivered, rank_of)

    def _do_group_rolled_back(self, ins: I.GroupRolledBack) -> None:
        log.warning("checkpoint group %d (%d task(s)) rolled back to its checkpoint %d",
                    ins.group, len(self.core.ckgroups.get(ins.group, ())), ins.seq)
        self.events.add("ROLLBACK", group=ins.group, seq=ins.seq)

    def _do_ask_held(self, ins: I.AskHeld) -> None:
        msg = P.AskHeld(ins.qid, list(ins.tids)).encode()
        for r in ins.ranks:
            if r == 0:      # the files the nodes wrote: the coordinator answers for them
                assert self.node_files is not None
                items = self.node_files.held(ins.tids)
                self._deferred.append(E.HeldReported(0, ins.qid, items, time.monotonic()))
            else:
                self.transport.post(r, msg)  # a rank lost meanwhile: NodeLost ends the wait

    def _on_holding(self, src: int, msg: P.Holding) -> None:
        with self.lock:
            self._run(E.HeldReported(src, msg.qid, msg.items, time.monotonic()))

    def _do_tell_buddy(self, ins: I.TellBuddy) -> None:
        self.transport.post(ins.rank, P.Buddy(ins.buddy).encode())

    def _do_copy_checkpoint(self, ins: I.CopyCheckpoint) -> None:
        self.transport.post(ins.source, P.Fetch(ins.tid, ins.seq, ins.to).encode())

    def _on_held(self, src: int, msg: P.Held) -> str:
        with self.lock:
            self._run(E.CheckpointHeld(src, msg.tid, msg.inc, msg.seq, time.monotonic()))
        # nobody waits for its answer now: the task reads it at its next checkpoint
        return QUIET

    def _on_restored(self, src: int, msg: P.Restored) -> None:
        with self.lock:
            if msg.ok and self._awaited_running:
                self._running_again(msg.tid)
            if not msg.ok:
                log.warning("task %d: node %d could not get its checkpoint %d; restarting it "
                            "from another copy", msg.tid, src, msg.seq)
            self._run(E.TaskRestored(src, msg.tid, msg.inc, msg.seq, bool(msg.ok),
                                     time.monotonic()))

    def _do_drop_checkpoints(self, ins: I.DropCheckpoints) -> None:
        self._delivered.pop(ins.tid, None)
        self._ckpt_errors.pop(ins.tid, None)
        self._ckpt_calls.pop(ins.tid, None)
        if self._writer is not None:
            self._writer.drop(ins.tid)      # after the writes queued before it
        else:
            self.store.drop(str(ins.tid))
        if self.node_files is not None:     # once its result is synced (_synced)
            with self._ended_files_lock:
                self._ended_files.append(ins.tid)
            if self._writer is not None:
                self._writer.poke()
        forget = P.Forget(ins.tid).encode()
        for r in ins.holders:
            self.transport.post(r, forget)

    def _do_drop_checkpoints_after(self, ins: I.DropCheckpointsAfter) -> None:
        if self._writer is not None:
            self._writer.drop_after(ins.tid, ins.seq)   # after the writes queued before it
        else:
            self.store.drop_after(str(ins.tid), ins.seq)

    def _do_observe(self, ins: I.Observe) -> None:
        self._observe(ins.kind, self.tasks.get(ins.tid), ins.rank, ins.ok)

    def _do_request_replacement(self, ins: I.RequestReplacement) -> None:
        self._replace_async(ins.lost)

    def _do_warn(self, ins: I.Warn) -> None:
        log.warning("%s", ins.text)

    def _do_answer(self, ins: I.Answer) -> None:
        ins.reply(ins.ok, ins.value)

    def _do_thaw_group(self, ins: I.ThawGroup) -> None:
        by_rank: dict[int, list[int]] = {}
        for tid, rank in zip(ins.tids, ins.ranks):
            by_rank.setdefault(rank, []).append(tid)
        for rank, tids in by_rank.items():
            if rank == self.rank:                               # main, here
                from .fastgroup import thaw
                thaw(self, ins.name, tids)
            else:
                self.transport.post(rank, P.Thaw(ins.name, tids).encode())

    def _do_fatal(self, ins: I.Fatal) -> None:
        self.fatal = ins.error
        self.transport.notify()

    def _observe(self, kind: str, rec: TaskRecord | None, rank: int | None,
                 ok: bool | None = None) -> None:
        if rec is None or not self.observers:
            return
        task = rec.view()
        for obs in self.observers:
            try:
                obs(kind, task, rank, ok)
            except Exception:   # noqa: BLE001 - an observer must never stop the scheduler
                log.exception("observer %r failed on %s of task %d", obs, kind, rec.tid)

    # -- what observers see (clustervm.core.view) ------------------------------

    def view(self, events_from: int = 0, max_events: int | None = 500) -> VMView:
        """The VM now, as immutable values (see :class:`clustervm.core.VMView`)."""
        now = time.monotonic()
        with self.lock:
            nodes = self.core.node_views()
            events = self.events.events
            total = len(events)
            start = events_from if max_events is None else max(events_from, total - max_events)
            copied = tuple(dict(e) for e in events[start:total])
            stats = dict(self.stats)
            pending, live = len(self.core.pending), len(self.tasks)
            stopping = self.stopping
            fatal = None if self.fatal is None else str(self.fatal)
        store = self.store.stats
        return VMView(t0=self.t0, now=now, host=self.host, pid=os.getpid(),
                      slots=self.config.slots, cap=self.core.cap,
                      heartbeat_s=self.config.heartbeat_s, nodes=nodes, pending=pending,
                      live=live, stats=stats, events=copied, events_total=total,
                      traffic=self.traffic(), heard=dict(self.transport.last_heard),
                      ckpt_corrupt=store.corrupt, ckpt_bytes=store.bytes_written,
                      stopping=stopping, fatal=fatal)

    def traffic(self) -> Traffic:
        """Message counters of this rank's transport now."""
        c = self.transport.counters
        return Traffic(c.msgs_in, c.msgs_out, c.bytes_in, c.bytes_out)

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` of every task run from now on (see :data:`clustervm.core.view.Observer`)."""
        with self.lock:
            self.observers.append(observer)

    def observers_of(self, kind: type) -> list[Any]:
        """The attached observers that are instances of ``kind``."""
        with self.lock:
            return [o for o in self.observers if isinstance(o, kind)]

    # -- start and stop ------------------------------------------------------

    @property
    def _alive(self) -> list[NodeInfo]:
        """The nodes that take work (a view for observers: status, vm.alive)."""
        return self.core.alive_nodes()

    def _alive_nodes(self) -> list[NodeInfo]:
        return self._alive

    @property
    def pending(self) -> Any:
        return self.core.pending

    @property
    def cap(self) -> int:
        return self.core.cap

    @property
    def _spawning(self) -> int:
        return self.core.spawning

    def wait_for_nodes(self, timeout: float = 60.0) -> None:
        """Wait until every node has said hello, but once one has, the others get only
        START_GRACE_S more: main starts, and a late node joins when its hello comes
        (check_heartbeats declares it dead ``timeout`` s after the start)."""
        with self.lock:
            self._run(E.StartBegun(timeout))
        t = self.transport
        t.wait(lambda: any(n.state != "starting" for n in self.nodes.values()), timeout)
        t.wait(lambda: all(n.state != "starting" for n in self.nodes.values()),
               max(START_GRACE_S, 2 * self.config.heartbeat_s))
        with self.lock:
            self._run(E.StartGraceOver(time.monotonic(), timeout, self.config.spares))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Tell every node to leave and wait for their goodbyes."""
        with self.lock:
            self.stopping = True
            self._run(E.ShutdownBegun(time.monotonic()))
            for n in self.nodes.values():
                if n.state in ("alive", "spare", "starting"):
                    self.transport.post(n.rank, P.Shutdown(self._unclean()).encode())
        # a node that never said hello holds no work: it is not waited for (it may be
        # stopped, or stuck in its start), and is killed below like one that will not leave
        self.transport.wait(lambda: all(n.state in ("dead", "left", "starting")
                                        for n in self.nodes.values()), timeout)
        for n in self.nodes.values():
            if n.state == "starting":
                log.warning("node %d never said hello; ending it", n.rank)
                self._kill_process(n)
                self.transport.failed.add(n.rank)
            elif n.state not in ("dead", "left"):
                log.warning("node %d (pid %d) did not leave in %.0f s; killing it",
                            n.rank, n.pid, timeout)
                self._kill_process(n)
                self.transport.failed.add(n.rank)   # no MPI_Finalize with a killed peer
        self.end_hung_spawns()
        self.transport.flush(2.0)
        key = shmcopies.enabled_key(job_key())
        if key:     # checkpoint copies in /dev/shm the nodes left (a lost node's, say)
            shmcopies.sweep(key)
        if self._writer is not None:
            self._writer.close(5.0)         # its last sync deletes the files of tasks over
        if self.journal is not None:
            if self.store.fsync:            # (no such sync: the journal is synced here)
                self._sync_journal(self.journal.sync)
            self.journal.close()

    def _unclean(self) -> bool:
        """Has any rank failed or never joined? Then no rank may risk MPI_Finalize."""
        return bool(self.transport.failed or self.transport.links) or any(
            n.state == "starting" for n in self.nodes.values())

    # -- node messages ---------------------------------------------------------

    def _handler_failed(self, src: int, raw: Any, exc: Exception) -> None:
        """The message dropped may be one a caller waits on (a task's end, a
        checkpoint's acknowledgment): the job ends with an :class:`InternalError`
        naming it rather than waiting forever."""
        log.error("the coordinator failed on %s from rank %d", P.kind_of(raw), src,
                  exc_info=exc)
        self.internal_error(f"clustervm's coordinator {self._failed_on(src, raw, exc)}", exc)

    def internal_error(self, what: str, exc: BaseException | None = None) -> None:
        """clustervm failed (``what`` happened; a bug of ours): the job ends with an
        InternalError told to every waiter, rather than going on inexactly or waiting
        forever for what was dropped."""
        err = InternalError(
            f"{what}. The job cannot go on exactly and ends here. This is a bug in "
            f"clustervm: please report it with the traceback in the log; a job run with "
            f"--checkpoint-dir may be finished with --resume DIR")
        err.__cause__ = exc
        log.error("%s", err)
        with self.lock:
            try:
                self._run(E.JobFailed(err))
            except Exception:   # noqa: BLE001 - the core itself is broken: end the waits
                log.exception("the core failed while ending the job")
                self.fatal = err
                self.transport.notify()

    def _on_hello(self, src: int, msg: P.Hello) -> None:
        with self.lock:
            if src in self.nodes:   # the node's start deadline is met
                self.transport.post(src, P.Heartbeat(0).encode())
                bell = self.transport.bell()
                if bell is not None:    # it knocks there: each rings the other across hosts
                    self.transport.post(src, P.Bell(*bell).encode())
            self._run(E.NodeHello(src, msg.host, msg.pid, time.monotonic()))

    def _on_heartbeat(self, src: int, msg: P.Heartbeat) -> bool:
        """Not work (keeps idle loops idle); the core hears of it only for a new count of
        checkpoints it was not told of."""
        n = self.nodes.get(src)
        if n is not None and msg.ckpts > n.untold:     # (the core's, read only here)
            with self.lock:
                self._run(E.CheckpointsUntold(src, msg.ckpts))
        return False

    def _on_bye(self, src: int, msg: P.Bye) -> None:
        with self.lock:
            self._run(E.NodeBye(src, time.monotonic()))

    def _on_done(self, src: int, msg: P.Done) -> None:
        with self.lock:
            self._run(E.TasksDone(src, msg.items, time.monotonic()))

    def _on_exited(self, src: int, msg: P.Exited) -> None:
        with self.lock:
            if msg.outlog is not None and self.journal is not None:   # journaled with it
                self._exit_outlogs[msg.tid] = (msg.inc, msg.outlog)
            self._run(E.SpawnedExited(src, msg.tid, msg.inc, msg.ok, msg.value,
                                      time.monotonic(), msg.cut, msg.ckpts))

    def check_heartbeats(self) -> None:
        """Declare dead the nodes silent for longer than the heartbeat timeout."""
        now = time.monotonic()
        with self.lock:
            # the last-heard times (one atomic copy: the MPI thread writes them) only when
            # a deadline may have passed: O(nodes), about one check in seven
            heard = dict(self.transport.last_heard) if now >= self.core.next_check else None
            self._run(E.Tick(now, heard))

    def _on_mpi_failure(self, ranks: set[int]) -> None:
        now = time.monotonic()
        with self.lock:
            self._run(*(E.NodeLost(r, LossCause.ULFM, now) for r in sorted(ranks)))

    def _kill_process(self, n: NodeInfo) -> None:
        if self.transport.terminate(n.rank):   # in process: the transport ends the rank
            return
        from .site import hostname
        pid = n.pid if n.host == hostname() else 0
        if not pid and n.state in ("starting", "dead") and not n.pid:
            pid = _local_rank_pid(n.rank)     # it never said hello: find it, if on this host
        if pid and (n.pid or self.in_world(n.rank)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _joining(self) -> bool:
        return self.core.joining()

    # -- short tasks ---------------------------------------------------------

    def submit(self, parent: int, fn: Callable | str, args: tuple, kwargs: dict,
               where: Any = None, reply: Reply | None = None) -> ClusterFuture:
        """Queue ``fn(*args, **kwargs)``; a future (or ``reply``) gets the outcome."""
        fn_ref = fn if isinstance(fn, str) else self.ref(fn)
        wire.check_sendable(args, "args", allow_pickle=self.config.pickle)
        wire.check_sendable(kwargs, "kwargs", allow_pickle=self.config.pickle)
        fut = ClusterFuture(self)
        with self.lock:
            if self.fatal is not None:
                raise self.fatal
            wset = self.core.resolve_where(where) if where is not None else None
            tid = next(self._tids)
            rec = TaskRecord(tid, SHORT, parent, fn_ref, args, kwargs)
            fut.tid = tid
            rec.future, rec.reply = fut, reply
            if self.journal is not None:
                rec.digest = _digest(fn_ref, args, kwargs)
            self.tasks[tid] = rec
            out = self.core.handle(E.TaskSubmitted(tid, parent, time.monotonic(), wset,
                                                   rec.digest))
            rec.sched = self.core.tasks.get(tid)
            if out:
                self._execute(out)
        if parent == P.MAIN_TID and time.perf_counter() - self._served_at > MAIN_POLL_S:
            self._served_at = time.perf_counter()
            self.transport.try_poll()   # see MAIN_POLL_S
        return fut

    def cancel_task(self, tid: int, running: bool = False) -> bool:
        """Cancel a short task not yet handed to a node; with ``running`` (vm.kill) any."""
        with self.lock:
            rec = self.tasks.get(tid)
            if rec is None or rec.kind != SHORT:
                return False
            out = self._run(E.TaskCancelled(tid, running))
            if not any(isinstance(i, I.Cancelled) for i in out):
                return False   # a node may be running it: False, as concurrent.futures
            return rec.future.cancelled() if rec.future is not None else True

    # -- spawned tasks ---------------------------------------------------------

    def spawn(self, parent: int, fn_ref: str, args: tuple, kwargs: dict, count: int,
              where: Any = None, replay: bool = True, per: list | None = None,
              checkpoint: str = "log") -> list[int]:
        """Start ``count`` spawned tasks; ``per`` (one argument list per instance, appended
        to ``args``) gives each its own. The tids are consecutive: (first, count) are the
        siblings every instance learns (ctx.siblings, ctx.rank). ``checkpoint="group"``:
        they checkpoint together and are rolled back together, and log no message to
        each other (others log theirs to them, to send again after a rollback)."""
        if checkpoint not in ("log", "group"):
            raise ValueError(f"checkpoint must be 'log' (each task on its own, messages "
                             f"logged) or 'group' (coordinated), not {checkpoint!r}")
        group = checkpoint == "group"
        if per is not None:
            count = len(per)
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        wire.check_sendable(args, "args", allow_pickle=self.config.pickle)
        if per is not None:
            wire.check_sendable(per, "args", allow_pickle=self.config.pickle)
        wire.check_sendable(kwargs, "kwargs", allow_pickle=self.config.pickle)
        with self.lock:
            if self.fatal is not None:
                raise self.fatal
            if not self.core.has_nodes():
                raise NoNodesError("no worker node is alive to spawn on")
            wset = self.core.resolve_where(where) if where is not None else None
            tids: list[int] = []
            out: list[I.Instruction] = []
            for i in range(count):
                tid = next(self._tids)
                own = args if per is None else (*args, *per[i])
                rec = TaskRecord(tid, SPAWNED, parent, fn_ref, own, kwargs)
                rec.siblings = (tids[0] if tids else tid, count)
                if self.journal is not None:
                    rec.digest = _digest(fn_ref, own, kwargs)
                self.tasks[tid] = rec
                out += self.core.handle(E.TaskSpawned(tid, parent, time.monotonic(), wset,
                                                      replay, rec.digest,
                                                      rec.siblings[0] if group else 0))
                rec.sched = self.core.tasks.get(tid)
                tids.append(tid)
            # carried out together: every node hears where all of them are before any starts
            self._execute(out)
            return tids

    # -- checkpoints -----------------------------------------------------------

    def _load_ckpt(self, tid: int, seq: int = 0) -> Any:
        """The newest checkpoint of task ``tid`` the coordinator holds, decoded; for a
        member of a checkpoint group the one at the group's epoch ``seq`` (0: none, the
        member starts again from the start) or, on ``--resume``, the one all members
        have on disk."""
        upto = self._group_epoch(tid, seq)
        if upto == 0:
            return None
        read = self.store.stats.read
        try:
            got = self.store.load(str(tid), upto)
        except CheckpointError as exc:
            log.warning("checkpoint of task %d unusable: %s", tid, exc)
            return None
        from_file = self.store.stats.read > read
        if self.node_files is not None:     # a newer one (or the epoch) in a node's files?
            theirs = self.node_files.load(tid, upto=(seq if upto is None else upto) or None)
            if theirs is not None and (got is None or theirs[0] > got[0]):
                got, from_file = theirs, True
        if got is None:
            if seq:     # the core counted on one (a node's loss took the other copies)
                log.warning("task %d: the coordinator holds no checkpoint of it (its "
                            "checkpoint %d was expected); it starts again from the start",
                            tid, seq)
            return None
        seq, (blob,) = got
        self.stats["ckpt_restored"] += 1
        self.stats["ckpt_from_store"] += 1
        self.stats["ckpt_read_back"] += from_file
        self.events.add("RESTORE", tid=tid, seq=seq)
        log.info("task %d restored from the coordinator's copy of its checkpoint %d%s", tid,
                 seq, " (read back from the checkpoint directory)" if from_file else "")
        frames = wire.unpack_frames(blob)
        return wire.loads(frames[0], frames[1:])


    def save_checkpoint(self, tid: int, inc: int, seq: int, delivered: dict, blob: bytes | None,
                        rank: int | None = None, buddy: int = 0,
                        reply: Reply | None = None) -> None:
        """Checkpoint ``seq`` of task ``tid`` (sent by node ``rank``): ``blob`` is its
        payload as the node encoded it (wire.pack_frames), kept as it is (one frame, never
        decoded here), or None when only the nodes keep it: the node itself and node
        ``buddy``, which says HELD. ``reply`` is answered once every copy is held."""
        rec = self.tasks.get(tid)
        if rec is None:
            if tid == P.MAIN_TID:
                raise ValueError("main cannot checkpoint; use --checkpoint-dir and --resume, "
                                 "which journal main's finished tasks")
            if reply is not None:
                reply(True, (0, True))
            return                       # task already over: a late duplicate
        kept = self._delivered.setdefault(tid, {})
        kept[seq] = delivered
        for old in sorted(kept)[:-16]:
            del kept[old]
        if reply is not None:
            self._ckpt_calls[tid] = (seq, reply, delivered)
        self._blob = blob if blob is not None else b""
        try:
            self._run(E.CheckpointStored(rec.node if rank is None else rank, tid, inc, seq,
                                         time.monotonic(), buddy, blob is not None,
                                         bool(delivered)))
        finally:
            self._blob = b""
        call = self._ckpt_calls.get(tid)
        t = self.core.tasks.get(tid)
        if call is not None and call[0] == seq and (t is None or t.pend is None
                                                    or t.pend.seq != seq):
            # not waited for: an old incarnation, from a lost node, or a late duplicate
            del self._ckpt_calls[tid]
            call[1](True, (0, True))

    def _group_epoch(self, tid: int, seq: int) -> int | None:
        """Which checkpoint restores task ``tid``: None (the newest) for a task outside
        checkpoint groups; for a member, its group's epoch ``seq``, or, on ``--resume``
        before the group has a checkpoint in this run, the newest every member has on
        disk (the whole job may have died between two members' writes; 0: none, every
        member starts again from the start). Raises CheckpointError if a member that had
        finished sent the others something after that one (see core.ended_after)."""
        t = self.core.tasks.get(tid)
        rec = self.tasks.get(tid)
        if t is None or not t.group or rec is None or rec.siblings is None:
            return None
        if not (self.config.resume and t.ckpt is None):
            return seq
        first, count = rec.siblings
        members = range(first, first + count)
        # members the journal answered (they had finished): they do not run again (the
        # whole spawn is in the core by now: api_spawn hands it over before placing it)
        reused = [m for m in members if m not in self.core.tasks]
        files = self.node_files.versions(members) if self.node_files is not None else {}
        common = set.intersection(*(self.store.seqs(str(m)) | {v[0] for v in files.get(m, ())}
                                    for m in members if m not in reused))  # tid's own too
        epoch = max(common, default=0)
        gone = ended_after({m: self._ended_cuts.get(m, -1) for m in reused}, epoch)
        if gone:      # the others would wait for what those sent them after it, forever
            raise cannot_go_back(first, epoch, gone, resumed=True)
        return epoch

    # -- resume ----------------------------------------------------------------

    def _load_journal(self) -> None:
        assert self.journal is not None
        entries = []
        for rec in self.journal.replay():
            if rec.kind == RESTART:
                if self.node_files is not None:
                    inc, base = wire.loads(rec.frames[0], [])
                    self.node_files.restarted(int(rec.key), inc, base)
                continue
            if rec.kind == "done":
                digest, ok, value, *rest = wire.loads(rec.frames[0], rec.frames[1:])
                entries.append((int(rec.key), digest, ok, value))
                if rest and rest[0]:
                    inc, outlog = rest[0]
                    if not isinstance(outlog, dict):        # packed (Node._do_send_exited)
                        frames = wire.unpack_frames(outlog)
                        outlog = wire.loads(frames[0], frames[1:])
                    self._finished_senders[int(rec.key)] = FinishedSender(int(rec.key), inc,
                                                                          outlog)
                self._ended_cuts[int(rec.key)] = rest[1] if len(rest) > 1 else -1
        self.core.handle(E.JournalLoaded(entries))
        log.info("resume: %d finished tasks in the journal", len(self.core.journal_done))

    # -- what main needs that a node does not ----------------------------------

    def submit_from_main(self, fn: Callable, args: tuple, kwargs: dict, where: Any = None):
        return self.submit(P.MAIN_TID, fn, args, kwargs, where)

    def make_context(self, tid: int, parent: int | None, ckpt: Any) -> TaskContext:
        return self.main_ctx

    def checkpoint(self, ctx: TaskContext, seq: int, state: Any) -> bool:
        raise ValueError("main cannot checkpoint; run with --checkpoint-dir and resume with "
                         "--resume DIR: finished tasks are journaled and not run again")

    def nodes_info(self) -> list[dict]:
        return [{"rank": 0, "host": self.host, "pid": self.pid, "state": "coordinator",
                 "running": 0, "done": 0}] + [n.as_dict() for n in self.nodes.values()]

    def report(self) -> str:
        """One short end-of-job report: nodes lost, tasks re-run, work redone, checkpoints."""
        lost = [n for n in self.nodes.values() if n.state == "dead"]
        parts = []
        if lost:
            parts.append(f"{len(lost)} node(s) lost: " + "; ".join(
                f"node {n.rank} (host {n.host}, pid {n.pid}) at {n.lost_at - self.t0:.2f} s "
                f"by {n.how_lost}" for n in lost))
        else:
            parts.append("no node lost")
        s = self.stats
        if s["spawned"]:
            parts.append(f"{s['spawned']} node(s) started with MPI_Comm_spawn")
        parts.append(f"{s['rerun']} task(s) re-run, {s['redone_s']:.2f} s of work redone")
        # the coordinator's own copies (its memory, or read back from the directory), the
        # others the nodes' (buddy store)
        ours, read = s["ckpt_from_store"], s["ckpt_read_back"]
        parts.append(f"{s['ckpt_written']} checkpoint(s) written, {s['ckpt_restored']} restored"
                     + (f" ({ours} by the coordinator, {read} of them read back from the "
                        f"checkpoint directory)" if ours else "")
                     + (f", {self.store.stats.corrupt} corrupt skipped"
                        if self.store.stats.corrupt else ""))
        if self.restarts:
            # measured at the coordinator: from the loss's detection to the last of the
            # node's tasks posted to a node again; and to the last of its spawned tasks
            # running again from its checkpoint (its node's RESTORED)
            parts.append("re-dispatch after loss detected: "
                         + ", ".join(r.text() for r in self.restarts))
            running = [t for t in (r.running_text() for r in self.restarts) if t]
            if running:
                parts.append("running again from checkpoints after loss detected: "
                             + ", ".join(running))
        if self.config.resume:
            parts.append(f"resumed: {s['reused']} finished task(s) reused from the journal"
                         + (f" ({self._went_back})" if self._went_back else ""))
        return "clustervm report: " + "; ".join(parts)

    def service_loop(self) -> None:
        """The coordinator's background thread: poll while main is busy, check heartbeats."""
        t = self.transport
        next_check = time.monotonic() + 0.1
        last_loop = time.monotonic()
        beat_every = max(0.05, self.config.heartbeat_s / 4)
        beat = P.Heartbeat(0).encode()
        next_beat = time.monotonic()
        while not self.stopping:
            try:
                t.service_step(0.25, spin=True)   # sleeps are capped by the transport
                self._served_at = time.perf_counter()
                now = time.monotonic()
                if now >= next_beat:
                    # nodes without ULFM (MPICH) learn that the coordinator is gone only
                    # from its silence (node.COORDINATOR_SILENCE)
                    next_beat = now + beat_every
                    for n in list(self.nodes.values()):
                        if n.state in ("alive", "spare"):
                            t.post(n.rank, beat, wake=False)
                if now >= next_check:
                    if now - last_loop > self.config.heartbeat_s / 2:
                        # this process itself was stalled: do not blame the nodes
                        for r in list(t.last_heard):
                            t.last_heard[r] = now
                    else:
                        self.check_heartbeats()
                    if self.journal is not None and self.store.fsync:
                        # (else the writer's syncs: clustervm.syncs)
                        self._sync_journal(self.journal.sync)
                    next_check = now + 0.1
                last_loop = now
            except Exception:   # noqa: BLE001 - never lose the service loop silently
                log.exception("coordinator service loop")
                time.sleep(0.05)


def _local_rank_pid(rank: int) -> int:
    """The pid of rank ``rank`` of this Open MPI job if it runs on this host (0 if not found).

    A node that never said hello never told its pid; its MPI environment names it.
    """
    ns = os.environ.get("PMIX_NAMESPACE")
    return procs.rank_pids(f"PMIX_NAMESPACE={ns}").get(rank, 0) if ns else 0


def _digest(fn_ref: str, args: Any, kwargs: Any) -> int:
    payload, bufs = wire.dumps((fn_ref, args, kwargs))
    crc = zlib.crc32(payload)
    for b in bufs:
        crc = zlib.crc32(b, crc)
    return crc
