"""The node process: one per worker rank, the shell around :class:`~clustervm.core.node.NodeCore`.

It receives and decodes messages, hands what happened to the node core
(``NodeCore.handle(*events) -> instructions``) and carries the instructions out:
start a worker thread, run a task function, send DONE/EXITED/HELLO/BYE and
heartbeats, mark a spawned task's context aborted, wake waiters. The core holds
every decision (the queue and the slots, cancellations, batching, live
incarnations, the coordinator-silence rule, shutdown); task-to-task messaging
(mailboxes, replay logs, locations) stays in :class:`~clustervm.site.Site`.

A node never exits non-zero by itself (with Open MPI that would abort the whole
job): everything a task raises is caught and reported to the coordinator.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from . import protocol as P
from . import nodefiles, remote, replaylog, shmcopies, wire
from .config import Config
from .copies import Copies
from .core import node as N
from .core.node import COORDINATOR_SILENCE, COORDINATOR_SILENCE_MIN_S  # noqa: F401 - the rule
from .doorbell import job_key
from .errors import CheckpointError, WireError
from .futures import ClusterFuture
from .site import ENDED, Location, Site, snapshot
from .values import ARRAY_COPIES, approx_size
from .mailbox import Mailbox
from .task import TaskAborted, TaskContext, TaskExit
from .endpoint import Endpoint, PeerFailed
from . import current

log = logging.getLogger(__name__)

#: a spawned task's first checkpoint with this much array data is skipped while memory
#: for it is made ready (Copies.prepare); a checkpoint group's members skip it together
FIRST_BIG_CHECKPOINT = 32 << 20


def _quiet_since_cut(ctx: TaskContext) -> int:
    """A checkpoint group member's last checkpoint (its seq) if it has sent the other
    members nothing since (0: it took none and sent them nothing), else -1: whether the
    group can go back to a checkpoint after it ended (core: Core._roll_back)."""
    first, count = ctx._sib

    def to_peers(sent: dict) -> dict:
        return {p: n for p, n in sent.items() if n and first <= p < first + count}
    seq, at = ctx.__dict__.get("_cut_sent", (0, {}))
    return seq if to_peers(ctx._sent) == to_peers(at) else -1


class Node(Site):
    """A worker rank."""

    def __init__(self, transport: Endpoint, config: Config) -> None:
        super().__init__(transport, config)
        self.handlers.update({
            P.Run: self._on_run,
            P.Spawn: self._on_spawn,
            P.Kill: self._on_kill,
            P.Cancel: self._on_cancel,
            P.Shutdown: self._on_shutdown,
            P.Heartbeat: self._on_heartbeat,
            P.Keep: self._on_keep,
            P.KeepRef: self._on_keep_ref,
            P.Unshared: self._on_unshared,
            P.Fetch: self._on_fetch,
            P.Copy: self._on_copy,
            P.Forget: self._on_forget,
            P.Mark: self._on_mark, P.Thaw: self._on_thaw,
            P.Held: self._on_held,
            P.AskHeld: self._on_ask_held,
            P.Buddy: self._on_buddy,
            P.Bell: self._on_bell,
        })
        # main never moves (it is the coordinator's): a task's first message to it asks nothing
        self.locations[P.MAIN_TID] = Location(P.COORDINATOR, 0, False)
        self.core = N.NodeCore(config.slots, config.heartbeat_s, config.start_timeout_s)
        self._core_lock = threading.Lock()               # handle() is called from workers too
        self.live: dict[int, TaskContext] = {}            # spawned tasks running here
        #: checkpoint copies held here: of this node's spawned tasks, and its buddies'
        self.copies = Copies()
        self._missing: set[tuple[int, int]] = set()       # copies asked for, not held there
        #: checkpoint groups' MARKs: (member tid, seq) -> peer tid -> (its inc, sent to it)
        #: (their inc, sent to it, ready vote, disk vote)
        self._marks: dict[tuple[int, int], dict[int, tuple[int, int, int, int]]] = {}
        #: the node that keeps copies of this node's spawned tasks' checkpoints (0: none),
        #: as the coordinator said last; whether a task's next one goes to the coordinator
        #: too is the task's own (``_to_store``, from its SPAWN and its last answer)
        self.buddy = 0
        #: checkpoints not told to the coordinator (a group's epochs; a log-mode task's
        #: after its first without a journal: it asks the nodes what they hold after a
        #: loss, Core._ask): the buddy's HELD of each comes here, tid -> (inc, seq), and
        #: a task takes its next one only once the one before is held there too
        self._acked: dict[int, tuple[int, int]] = {}
        #: this node's writer of its tasks' checkpoint files (a log-mode task's, a group's
        #: epochs for the disk), if it sees the job's checkpoint directory
        #: (clustervm.nodefiles; looked for at the first checkpoint that would use it)
        self._own_files: nodefiles.OwnFiles | None = None
        self._own_looked = False
        #: checkpoint copies for a buddy on this host go through files in /dev/shm
        #: (clustervm.shmcopies; None: not used); the buddies that cannot read them
        key = shmcopies.enabled_key(job_key()) if config.shm_copies else None
        self._shm = shmcopies.ShmCopies(key, self.rank) if key else None
        self._host = shmcopies.host_id() if key else ""
        self._unshared: set[int] = set()
        #: when each checkpoint group last sent an epoch to the coordinator's disk
        self._group_disk_t: dict[int, float] = {}
        #: checkpoints taken here that the coordinator was not told of (its count of
        #: checkpoints written adds them up: HEARTBEAT, EXITED)
        self.untold = 0
        self._do: dict[type, Callable[[Any], None]] = {
            N.SendHello: self._do_hello, N.SendBye: self._do_bye,
            N.SendHeartbeat: self._do_heartbeat, N.MarkHeard: self._do_mark_heard,
            N.Leave: self._do_leave, N.Notify: self._do_notify,
            N.StartWorker: self._do_start_worker, N.StartSpawned: self._do_start_spawned,
            N.AbortTask: self._do_abort, N.SendExited: self._do_send_exited,
            N.SendDone: self._do_send_done,
        }
        transport.on_failure = self._on_failure
        transport.keepalive = self._keepalive
        transport.find_bells(self._ask_bell)

    # -- the core and its instructions ---------------------------------------------

    def _run(self, *events: N.Event) -> None:
        """Hand ``events`` to the core; carry out its instructions (outside the lock)."""
        with self._core_lock:
            out = self.core.handle(*events)
        do = self._do
        for ins in out:
            do[type(ins)](ins)

    # the core's state, read by the runtime, tests and the in-process VM
    @property
    def queue(self) -> deque:
        return self.core.queue

    @property
    def cancelled(self) -> set[int]:
        return self.core.cancelled

    @property
    def stopping(self) -> bool:
        return self.core.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:   # the in-process VM stops frozen nodes so
        self.core.stopping = value

    @property
    def coordinator_lost(self) -> bool:
        return self.core.coordinator_lost

    @property
    def failures_seen(self) -> bool:
        return self.core.failures_seen

    def _do_hello(self, ins: N.SendHello) -> None:
        self.transport.send(P.COORDINATOR, P.Hello(self.host, self.pid).encode())

    def _do_bye(self, ins: N.SendBye) -> None:
        try:
            self.transport.send(P.COORDINATOR, P.Bye().encode())
        except PeerFailed:
            pass

    def _do_heartbeat(self, ins: N.SendHeartbeat) -> None:
        ARRAY_COPIES.let_go_idle()        # memory for copies of big arrays, unused a while
        if not self.transport.post(P.COORDINATOR, P.Heartbeat(ins.load, self.untold).encode(),
                                   wake=False):
            self._run(N.HeartbeatUnsent())

    def _keepalive(self) -> None:
        """The poller is held up by one long frame: beat meanwhile (not through the core,
        whose lock a worker may hold)."""
        self.transport.post(P.COORDINATOR, P.Heartbeat(self.core.load, self.untold).encode(),
                            wake=False)

    def _do_mark_heard(self, ins: N.MarkHeard) -> None:
        self.transport.last_heard[P.COORDINATOR] = ins.now

    def _do_leave(self, ins: N.Leave) -> None:
        if ins.cause is N.LeaveCause.NO_START:
            log.error("node %d: no word from the coordinator %.0f s after start; leaving "
                      "(CLUSTERVM_START_TIMEOUT_S sets how long to wait)", self.rank, ins.seconds)
        elif ins.cause is N.LeaveCause.SILENT:
            log.error("node %d: nothing from the coordinator for %.0f s; leaving",
                      self.rank, ins.seconds)
        elif ins.cause is N.LeaveCause.DIED:
            log.error("node %d: the coordinator died; leaving", self.rank)
        else:
            log.debug("node %d: a heartbeat cannot reach the coordinator; leaving", self.rank)

    def _do_notify(self, ins: N.Notify) -> None:
        if ins.main:
            self.transport.notify()
        if ins.background:
            self.transport.notify_background()

    def _do_start_worker(self, ins: N.StartWorker) -> None:
        threading.Thread(target=self._worker, args=(ins.worker,),
                         name=f"cvm-worker-{ins.worker}", daemon=True).start()

    def _do_abort(self, ins: N.AbortTask) -> None:
        ctx = self.live.get(ins.tid)
        if ctx is not None and ctx.inc == ins.inc:
            ctx.aborted = True

    def _do_send_done(self, ins: N.SendDone) -> None:
        if not self._flush(ins.results):
            self._run(N.SendFailed())

    # -- main loop -----------------------------------------------------------

    def serve(self) -> None:
        """Run until the coordinator says shut down (or is lost)."""
        t = self.transport
        core = self.core
        heard = t.last_heard
        self._run(N.Started(time.monotonic()))
        while not core.stopping:
            t.service_step(0.05)
            self._run(N.Tick(time.monotonic(), heard.get(P.COORDINATOR)))
        self._run(N.LoopEnded())
        t.flush(2.0)
        if self._own_files is not None:
            self._own_files.close(2.0)      # what is queued: the last writes, and deletes
        if self._shm is not None:
            self._shm.close()

    def _handler_failed(self, src: int, raw: Any, exc: Exception) -> None:
        """The message dropped (a SPAWN, a COPY) may be one the job waits on: the
        coordinator is told, and ends the job with an InternalError naming it."""
        log.error("node %d failed on %s from rank %d", self.rank, P.kind_of(raw), src,
                  exc_info=exc)
        try:
            self.call_start("node_failed", self._failed_on(src, raw, exc), post=True)
        except PeerFailed:
            pass        # the coordinator is gone: the node leaves anyway

    def _on_heartbeat(self, src: int, msg: P.Heartbeat) -> bool:
        first = not self.core.coordinator_beats
        self._run(N.CoordinatorBeat())   # from now on its silence means it is gone
        # not work: keeps idle loops idle. But the first one answers our hello: the VM
        # is up and the first task is on its way, so the workers poll eagerly for it
        return first

    def _on_failure(self, ranks: set[int]) -> None:
        self._run(N.RanksFailed(frozenset(ranks)))
        with self.lock:
            for tid, loc in list(self.locations.items()):
                if loc.rank in ranks:
                    del self.locations[tid]

    def _on_shutdown(self, src: int, msg: P.Shutdown) -> None:
        self._run(N.ShutdownReceived(bool(msg.unclean)))

    # -- short tasks -----------------------------------------------------------

    def wait(self, predicate, timeout=None, blocking=False, claim=None) -> bool:
        if not (blocking and current._tls.worker):
            return self.transport.wait(predicate, timeout, claim=claim)
        self._run(N.WorkerBlocked())      # a task blocks: another worker may use its slot
        try:
            return self.transport.wait(predicate, timeout, claim=claim)
        finally:
            self._run(N.WorkerUnblocked())

    def _worker(self, worker: int) -> None:
        """A worker thread: ask the core for work, run it, repeat until told to exit."""
        current._tls.worker = True
        core = self.core
        lock = self._core_lock
        t = self.transport
        clock = time.perf_counter
        ready = lambda: bool(core.queue) or core.stopping  # noqa: E731
        RunShort, WaitForWork, SendDone = N.RunShort, N.WaitForWork, N.SendDone
        result = None
        while True:
            with lock:
                out = core.handle(N.WorkerReady(worker, result, clock()))
            result = None
            for ins in out:
                kind = type(ins)
                if kind is RunShort:
                    result = self._run_short(ins.item)
                elif kind is WaitForWork:
                    t.wait(ready, ins.timeout, background=True, spin=ins.spin)
                elif kind is SendDone:
                    if not self._flush(ins.results):
                        self._run(N.SendFailed())
                        break             # stopping: what was handed out is dropped
                else:                     # WorkerExit
                    return

    def _flush(self, batch: list) -> bool:
        """Report finished short tasks to the coordinator, in one message; False if
        the coordinator failed.

        A result that cannot be sent becomes its task's WireError, naming the path
        as the task's code sees it (``result['lock']``); the others still go."""
        try:
            try:
                # not waiting for the poller to Isend it when it holds the token: between
                # tasks of 1 ms a worker's DONE took 27 us (median; 142 us at the 90th
                # percentile) that way, 18 us (26 us) this way
                self.transport.send(P.COORDINATOR, P.Done(batch).encode(), settle=False)
            except WireError:
                for item in batch:   # find the unsendable results
                    try:
                        self.transport.send(P.COORDINATOR, P.Done([item]).encode())
                    except WireError as exc:
                        tid = item[0]
                        exc = wire.relabel(exc, "[1][0][2]", "result")
                        err = WireError(f"the result of task {tid} cannot be sent back: {exc}")
                        packed = remote.pack_exception(err, self.where())
                        self.transport.send(P.COORDINATOR,
                                            P.Done([(tid, False, packed)]).encode())
        except PeerFailed:
            return False
        return True

    def _on_run(self, src: int, msg: P.Run) -> None:
        self._run(N.TasksArrived(msg.items))

    def _on_cancel(self, src: int, msg: P.Cancel) -> None:
        self._run(N.CancelReceived(msg.tid))

    def _run_short(self, item: tuple) -> tuple:
        tid, parent, fn_ref, args, kwargs, state = item
        tls = current._tls
        tls.site, tls.tid, tls.parent, tls.state, tls.ctx = self, tid, parent, state, None
        try:
            fn = self.resolve(fn_ref)
            result = (tid, True, fn(*args, **kwargs) if kwargs else fn(*args))
        except TaskExit as exc:
            result = (tid, True, exc.value)
        except BaseException as exc:   # noqa: BLE001 - a node reports everything
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                log.warning("task %d raised %s; reported as its error", tid, type(exc).__name__)
            result = (tid, False, remote.pack_exception(exc, self.where()))
        ctx = tls.ctx
        tls.tid = tls.ctx = tls.state = None
        ckpt_error = self.settle_checkpoint(ctx, at_end=True)
        if ctx is not None:
            ctx.__dict__.pop("_frames", None)   # (its frames keep what of it they need)
            if not getattr(ctx, "_outlog", None):
                self.contexts.pop(tid, None)
        self.mailboxes.pop(tid, None)
        if ckpt_error is not None:   # a disk error reaches the caller, not only the log
            result = (tid, False, remote.pack_exception(ckpt_error, self.where()))
        return result

    # -- spawned (long-lived) tasks -------------------------------------------

    def _on_spawn(self, src: int, msg: P.Spawn) -> None:
        self._run(N.SpawnReceived(msg.tid, msg.inc, msg))

    def _do_start_spawned(self, ins: N.StartSpawned) -> None:
        msg: P.Spawn = ins.task
        tid = msg.tid
        if msg.buddy is not None:
            self.buddy = int(msg.buddy[0])
        earlier = None
        with self.lock:
            self.rolling.pop(tid, None)     # what was held back comes after the restore
        if msg.group and msg.inc > 0:
            # its group rolled back: a new mailbox (the old incarnation, aborted, keeps
            # the old one); what peers' new incarnations sent is in the holdback
            with self.lock:
                earlier = self.mailboxes.get(tid)
                self.mailboxes[tid] = Mailbox()
        ctx = TaskContext(self, tid, msg.parent, inc=msg.inc, siblings=msg.siblings)
        if msg.buddy is not None:
            ctx.__dict__["_to_store"] = bool(msg.buddy[1])
        if msg.group:
            ctx.__dict__["_group"] = msg.group
            first, count = ctx._sib
            ctx.__dict__["_peers"] = range(first, first + count)    # Site.send_user
            box = ctx.mailbox
            box.group = True
            # the incarnations of its peers it runs with (their locations came before
            # this SPAWN): a message from a newer one, sent after another rollback, is
            # then held back for the incarnation that replaces this one, not put into
            # this mailbox, which that one does not take over
            first, count = ctx._sib
            with self.lock, box.lock:
                for peer in range(first, first + count):
                    loc = self.locations.get(peer)
                    if loc is not None and loc.inc > box.incs.get(peer, -1):
                        box.incs[peer] = loc.inc
            if earlier is not None:
                self._hold_back(tid, earlier)
        if msg.ckpt is not None:
            self._restore(ctx, msg.ckpt)
            self.transport.post(P.COORDINATOR, P.Restored(tid, msg.inc, -1, True).encode())
        elif msg.group and msg.inc > 0 and msg.ckpt_at is None:
            self._release_holdback(ctx)     # its group went back to the start
        with self.lock:
            self.contexts[tid] = ctx
            self.live[tid] = ctx
        at = tuple(msg.ckpt_at) if msg.ckpt_at is not None else None
        threading.Thread(target=self._spawned_thread,
                         args=(ctx, msg.fn, msg.args, msg.kwargs, at),
                         name=f"cvm-task-{tid}", daemon=True).start()

    def _restore_copy(self, ctx: TaskContext, source: int, seq: int) -> bool:
        """Restore ``ctx`` from checkpoint copy ``seq``: this node's own, or the one node
        ``source`` sends (waits for it; the coordinator kills this incarnation if that node
        is lost meanwhile). Tells the coordinator RESTORED either way; False if the copy
        was not there (the coordinator places the task again) or the wait was ended."""
        tid, copies = ctx.tid, self.copies
        blob = copies.get(tid, seq)
        if blob is None and source != self.rank:
            key = (tid, seq)
            self.transport.wait(lambda: copies.get(tid, seq) is not None or key in self._missing
                                or ctx.aborted or self.core.stopping)
            self._missing.discard(key)
            blob = copies.get(tid, seq)
        if ctx.aborted or self.core.stopping:
            return False
        if blob is not None:        # a copy: a task may change its arrays
            blob = blob.read() if getattr(blob, "shared", False) else bytearray(blob)
        if blob is None:
            log.warning("task %d: node %d holds no copy of its checkpoint %d", tid, source, seq)
            self.transport.post(P.COORDINATOR, P.Restored(tid, ctx.inc, seq, False).encode())
            return False
        frames = wire.unpack_frames(blob)
        self._restore(ctx, wire.loads(frames[0], frames[1:]))
        self.transport.post(P.COORDINATOR, P.Restored(tid, ctx.inc, seq, True).encode())
        return True

    # checkpoint copies (clustervm.copies): kept for a buddy, fetched for a restart
    def _on_keep(self, src: int, msg: P.Keep) -> None:
        self.copies.put(msg.tid, msg.inc, msg.seq, msg.blob)
        # a checkpoint not told to the coordinator: its node is (msg.ack)
        self.transport.post(msg.ack or P.COORDINATOR,
                            P.Held(msg.tid, msg.inc, msg.seq).encode())

    def _on_keep_ref(self, src: int, msg: P.KeepRef) -> None:
        """A copy in a file of /dev/shm (clustervm.shmcopies): held as that file, if this
        node sees the same /dev/shm; else the sender is told to send the bytes."""
        if not self._host or msg.host != self._host:
            self.transport.post(src, P.Unshared(msg.tid, msg.inc, msg.seq).encode())
            return
        self.copies.put(msg.tid, msg.inc, msg.seq, shmcopies.ShmRef(
            msg.path, msg.tid, msg.inc, msg.seq, msg.size, msg.gen))
        self.transport.post(msg.ack or P.COORDINATOR,
                            P.Held(msg.tid, msg.inc, msg.seq).encode())

    def _on_unshared(self, src: int, msg: P.Unshared) -> None:
        """Buddy ``src`` cannot read this node's /dev/shm: it gets bytes from now on,
        first those of the copy it could not hold."""
        self._unshared.add(src)
        ctx = self.live.get(msg.tid)
        sent = ctx.__dict__.get("_keep_wait") if ctx is not None else None
        if ctx is not None and ctx.inc == msg.inc and sent == (msg.seq, src):
            self._keep(ctx, msg.seq, src)

    def _on_held(self, src: int, msg: P.Held) -> None:
        """The buddy holds a checkpoint of a task here that the coordinator is not told
        of; for a log-mode task, the senders of what it had received may forget it."""
        with self.lock:
            if (msg.inc, msg.seq) > self._acked.get(msg.tid, (-1, -1)):
                self._acked[msg.tid] = (msg.inc, msg.seq)
        ctx = self.live.get(msg.tid)
        if ctx is not None and ctx.inc == msg.inc:
            self._forget_if_kept(ctx)
        self.transport.notify()

    def _forget_if_kept(self, ctx: TaskContext) -> None:
        """The checkpoint of log-mode task ``ctx`` the coordinator is not told of counts
        once its buddy holds it and, if this node writes its file, that file is written
        (synced): then its senders may forget what it had received."""
        with self.lock:
            got = ctx.__dict__.get("_keep_delivered")
            if got is None or self._acked.get(ctx.tid, (-1, -1)) < (ctx.inc, got[0]):
                return
            if ctx.__dict__.get("_own") and ctx.__dict__.get("_written", -1) < got[0]:
                return
            del ctx.__dict__["_keep_delivered"]
        self._forget_received(ctx, got[1])

    def _own_writer(self) -> nodefiles.OwnFiles | None:
        """This node's writer of its tasks' checkpoint files, or None: no checkpoint
        directory, or not the coordinator's (another host's that is not shared)."""
        with self.lock:
            if not self._own_looked:
                self._own_looked = True
                folder = self.config.checkpoint_dir
                if folder and nodefiles.shared(folder, job_key()):
                    try:
                        self._own_files = nodefiles.OwnFiles(folder, self.rank,
                                                             self._disk_written,
                                                             self._file_written)
                    except CheckpointError as exc:
                        log.warning("node %d: cannot write checkpoint files itself (%s); "
                                    "they go to the coordinator", self.rank, exc)
            return self._own_files

    def _file_written(self, data: Any) -> None:
        """The writer of checkpoint files is done with ``data`` (its thread): a view of a
        file in /dev/shm (ShmCopies.hold) or a blob pinned here."""
        if self._shm is None or not self._shm.release(data):
            self.copies.unpin(data)

    def _disk_written(self, tid: int, inc: int, seq: int,
                      error: CheckpointError | None) -> None:
        """The writer's word on checkpoint ``seq`` of task ``tid`` (its thread)."""
        ctx = self.live.get(tid)
        if ctx is None or ctx.inc != inc:
            return
        if error is not None:
            log.error("task %d: %s", tid, error)
            ctx.__dict__["_own_error"] = error     # raised by its next checkpoint
            return
        with self.lock:
            if seq > ctx.__dict__.get("_written", -1):
                ctx.__dict__["_written"] = seq
        self._forget_if_kept(ctx)

    def _forget_received(self, ctx: TaskContext, delivered: dict) -> None:
        """A checkpoint of log-mode task ``ctx`` that counts ``delivered`` (per sender) is
        held here and by the buddy: its senders' nodes may forget those messages (the
        coordinator's Coordinator._forget_received, without it)."""
        loc = self.locations.get(ctx.tid)
        if not delivered or loc is None or not loc.replay:
            return

        def rank_of(src: int) -> int | None:
            at = self.locations.get(int(src))
            return None if at is None else at.rank

        self._tell_senders(ctx.tid, self.rank, ctx.inc, True, delivered, rank_of)

    def _on_bell(self, src: int, msg: P.Bell) -> None:
        self.transport.knock(msg.port, [str(a) for a in msg.addrs])

    def _ask_bell(self, rank: int) -> None:
        """A ring found node ``rank``'s doorbell neither on this host nor across hosts:
        ask the coordinator where the nodes' are (it knows from their knocks); the rings
        after this go there (clustervm.doorbell)."""
        if rank == P.COORDINATOR:
            return                           # its BELL says where it is
        reqid = next(self._reqids)
        fut: Future = Future()
        fut.add_done_callback(lambda f: self._learn_bells(rank, f))
        self._futures[reqid] = fut
        self.transport.post(P.COORDINATOR, P.Req(reqid, "bells", ()).encode(), wake=False)

    def _learn_bells(self, wanted: int, answer: Future) -> None:
        """The coordinator's answer to :meth:`_ask_bell` (``wanted``: the rank asked for)."""
        bells = answer.result() if answer.exception() is None else {}
        for rank, addr in bells.items():
            if int(rank) != self.rank:
                self.transport.learn_bell(int(rank), addr)
        if wanted not in bells:
            self.transport.learn_bell(wanted, None)

    def _on_buddy(self, src: int, msg: P.Buddy) -> None:
        """The nodes alive changed: copies go to node ``msg.rank`` from now on. The
        newest untold checkpoint of each task here is copied there at once: the buddy
        that held it may be the node lost (the task's next one waits for that copy:
        _held)."""
        if msg.rank:
            for ctx in list(self.live.values()):
                sent = ctx.__dict__.get("_keep_wait")
                if sent is not None and sent[1] != msg.rank and not ctx.aborted:
                    self._keep(ctx, sent[0], msg.rank)
        self.buddy = msg.rank
        self.transport.notify()

    def _keep(self, ctx: TaskContext, seq: int, buddy: int, frame: Any = None) -> None:
        """Send node ``buddy`` a copy of this node's checkpoint ``seq`` of task ``ctx``
        (``frame``, or the copy held here), answered by a HELD to this node; the task's
        next checkpoint waits for it."""
        if frame is None:
            frame = self.copies.get(ctx.tid, seq)
        if getattr(frame, "shared", False) and buddy not in self._unshared:
            msg: P.Message = P.KeepRef(ctx.tid, ctx.inc, seq, *frame.fields(), self._host,
                                       self.rank)
        else:
            frame = shmcopies.contents(frame)
            if frame is None:
                return
            msg = P.Keep(ctx.tid, ctx.inc, seq, wire.as_blob_frame(frame), self.rank)
        ctx.__dict__["_keep_wait"] = (seq, buddy)
        self.transport.post(buddy, msg.encode())

    def _held(self, ctx: TaskContext) -> bool:
        """Is the copy this node last sent the buddy of ``ctx``'s checkpoints held there
        (or is there no such buddy any more)?"""
        sent = ctx.__dict__.get("_keep_wait")
        if sent is None:
            return True
        seq, buddy = sent
        return (self._acked.get(ctx.tid, (-1, -1)) >= (ctx.inc, seq) or self.buddy != buddy
                or not buddy or buddy in self.transport.failed)

    def _wait_held(self, ctx: TaskContext) -> None:
        """A checkpoint group member's previous epoch is held by the buddy too (or there
        is no buddy left): the next may be taken. Every epoch a member can be sent back
        to is then on two nodes (Core._roll_back asks them)."""
        if ctx.__dict__.get("_keep_wait") is not None:
            self._wait_alive(ctx, lambda: self._held(ctx))

    def _on_ask_held(self, src: int, msg: P.AskHeld) -> None:
        """A checkpoint group goes back: say which copies of its members this node holds.
        Its members here take no checkpoint from now on (their new incarnations will),
        so none of these copies is dropped before the coordinator has chosen one."""
        with self.lock:
            for tid in msg.tids:
                ctx = self.live.get(tid)
                if ctx is not None:
                    self.rolling[tid] = ctx.inc
            items = self.copies.holding(msg.tids)
        self.transport.post(P.COORDINATOR, P.Holding(items, msg.qid).encode())

    def _frozen(self, ctx: TaskContext) -> bool:
        """Its group goes back (see _on_ask_held): it takes no checkpoint more."""
        return self.rolling.get(ctx.tid, -1) >= ctx.inc

    def _on_fetch(self, src: int, msg: P.Fetch) -> None:
        got = self.copies.entry(msg.tid, msg.seq)
        blob = None if got is None else shmcopies.contents(got[1])
        self.transport.post(msg.to, P.Copy(msg.tid, msg.seq, None if blob is None
                                           else wire.as_blob_frame(blob),
                                           -1 if blob is None else got[0]).encode())

    def _on_copy(self, src: int, msg: P.Copy) -> None:
        """A copy for a restart here, or made again after a loss: held from now on."""
        if msg.blob is None:
            self._missing.add((msg.tid, msg.seq))
        else:
            self.copies.put(msg.tid, msg.inc, msg.seq, msg.blob)
            self.transport.post(P.COORDINATOR, P.Held(msg.tid, -1, msg.seq).encode())
        self.transport.notify()

    def _on_forget(self, src: int, msg: P.Forget) -> None:
        self.copies.drop(msg.tid)
        if self._shm is not None:
            self._shm.drop(msg.tid)
        if self._own_files is not None:
            self._own_files.forget(msg.tid)   # its files: the coordinator's to delete
        with self.lock:
            self._acked.pop(msg.tid, None)
            self.rolling.pop(msg.tid, None)

    def _restore(self, ctx: TaskContext, ckpt: dict) -> None:
        """Bring a checkpoint back: state, counters, the mailbox and the replay log."""
        ctx._state = ckpt["state"]
        ctx._ckpt_seq = ckpt["seqs"]["ckpt"]
        ctx._sent = {int(k): v for k, v in ckpt["seqs"]["sent"].items()}
        ctx.__dict__["_cut_sent"] = (ctx._ckpt_seq, dict(ctx._sent))   # _quiet_since_cut
        ctx._coll = dict(ckpt["seqs"].get("coll", {}))
        ctx._outlog = replaylog.unpack(ckpt["outlog"])
        if self._own_files is not None:     # what its older incarnations wrote after it
            self._own_files.forget_after(ctx.tid, ctx.inc, ctx._ckpt_seq)
        box = ctx.mailbox
        with self.lock, box.lock:
            saved = {int(k): v for k, v in ckpt["delivered"].items()}
            items = [tuple(i) for i in ckpt["mailbox"]]
            items += [i for i in box.items if i[4] > saved.get(i[0], 0)]
            box.items.clear()
            box.items.extend(items)
            for s, seq in saved.items():
                if seq > box.delivered.get(s, 0):
                    box.delivered[s] = seq
        self._release_holdback(ctx)

    def _hold_back(self, tid: int, box: Mailbox) -> None:
        """What came into ``box`` (an older incarnation's mailbox, or one made for
        messages that came before the task's SPAWN) is held back for the incarnation
        that replaces it, and delivered against its counters (a stale incarnation's
        messages are dropped then)."""
        with self.lock, box.lock:
            held = self.holdback.setdefault(tid, {})
            for src, tag, data, inc, seq in box.items:
                cur = held.get((src, seq))
                if src >= 0 and (cur is None or cur[2] < inc):
                    held[(src, seq)] = (tag, data, inc)

    def _release_holdback(self, ctx: TaskContext) -> None:
        """Deliver what was held back for ``ctx`` (its group peers' new incarnations sent
        it before it was restored), against its counters as they are now."""
        held = self.holdback.pop(ctx.tid, {})
        for (s, seq), (tag, data, inc) in sorted(held.items()):
            self.deliver(s, ctx.tid, tag, data, inc, seq)

    def _replay_outlog(self, ctx: TaskContext) -> None:
        for dst, entries in list(getattr(ctx, "_outlog", {}).items()):
            for entry in list(entries):    # (trimmed in place meanwhile, maybe)
                seq, tag = entry[0], entry[1]
                try:
                    loc = self.locate(dst)
                except Exception:   # noqa: BLE001 - the receiver has ended: nothing to replay
                    continue
                data = replaylog.data_of(entry, self.transport.allow_pickle)
                if loc.rank == self.rank:
                    self.deliver(ctx.tid, dst, tag, snapshot(data), ctx.inc, seq)
                else:
                    self.transport.post(loc.rank, P.User.make(ctx.tid, dst, tag, data,
                                                              ctx.inc, seq))

    def _spawned_thread(self, *args: Any) -> None:
        """A spawned task's thread: the task (:meth:`_run_spawned`), however it ends; then
        its node's idle workers, parked while it polled, poll again at once."""
        try:
            self._run_spawned(*args)
        finally:
            self.transport.foreground_done()

    def _run_spawned(self, ctx: TaskContext, fn_ref: str, args: Any, kwargs: Any,
                     at: tuple[int, int] | None = None) -> None:
        tls = current._tls
        tls.site, tls.tid, tls.ctx = self, ctx.tid, ctx
        ok, value = True, None
        if at is not None and not self._restore_copy(ctx, *at):
            with self.lock:
                if self.live.get(ctx.tid) is ctx:
                    del self.live[ctx.tid]
            self._run(N.SpawnedEnded(ctx.tid, ctx.inc))
            return          # no EXITED: the coordinator places it again, or killed it
        try:
            if getattr(ctx, "_outlog", None):
                self._replay_outlog(ctx)
            fn = self.resolve(fn_ref)
            value = fn(ctx, *args, **kwargs)
        except TaskExit as exc:
            value = exc.value
        except TaskAborted:
            return
        except BaseException as exc:   # noqa: BLE001
            ok, value = False, remote.pack_exception(exc, self.where())
        finally:
            with self.lock:
                if self.live.get(ctx.tid) is ctx:
                    del self.live[ctx.tid]
                    for key in [k for k in self._marks if k[0] == ctx.tid]:
                        del self._marks[key]
            if ctx.__dict__.get("_frozen"):      # shadows of its frozen groups, before EXITED
                from .fastgroup import task_ended
                task_ended(ctx)
            self._run(N.SpawnedEnded(ctx.tid, ctx.inc))
            if not ctx.aborted:
                ckpt_error = self.settle_checkpoint(ctx, at_end=True)
                if ckpt_error is not None and ok:   # reaches vm.join, not only the log
                    ok, value = False, remote.pack_exception(ckpt_error, self.where())
            ctx.__dict__.pop("_frames", None)   # (its frames keep what of it they need)
        self._run(N.SpawnedResult(ctx.tid, ctx.inc, ctx.aborted, ok, value))

    def _do_send_exited(self, ins: N.SendExited) -> None:
        tid, inc = ins.tid, ins.inc
        ctx = self.contexts.get(tid)
        # its replay log goes along only for the job journal (--resume after the whole job
        # died); while the job runs, this node replays it itself. Without a journal the
        # coordinator dropped it: heat2d's 2000 halo rows took 150 ms from the last step
        # to vm.join (2000 buffers)
        outlog = ({d: list(e) for d, e in getattr(ctx, "_outlog", {}).items() if e} or None
                  if self.config.checkpoint_dir else None)
        if outlog is not None:
            # one blob, kept by the coordinator as it is and decoded only on --resume:
            # decoding and encoding again heat2d's 3000 rows there (one buffer each) took
            # 45 ms of rank 0's time per task (wire.pack_frames/unpack_frames)
            try:
                payload, bufs = wire.dumps(replaylog.pack(outlog, ARRAY_COPIES))
                outlog = wire.as_blob_frame(wire.pack_frames([payload, *bufs]))
            except Exception as exc:     # noqa: BLE001 - the task's end must still be told
                log.error("task %d: its replay log cannot go to the job journal (%s: %s); "
                          "a --resume after the whole job died may not give the messages "
                          "it sent again", tid, type(exc).__name__, exc)
                outlog = None
        cut = _quiet_since_cut(ctx) if ctx is not None and ctx.__dict__.get("_group") else -1
        untold = self.untold
        try:
            try:
                self.transport.send(P.COORDINATOR, P.Exited(tid, inc, ins.ok, ins.value,
                                                             outlog, cut, untold).encode())
            except WireError as exc:
                exc = wire.relabel(exc, "[4]", "result")
                err = WireError(f"the return value of task {tid} cannot be sent: {exc}")
                self.transport.send(P.COORDINATOR, P.Exited(
                    tid, inc, False, remote.pack_exception(err, self.where()), None,
                    cut, untold).encode())
        except PeerFailed:
            self._run(N.SendFailed())

    def _on_kill(self, src: int, msg: P.Kill) -> None:
        self._run(N.KillReceived(msg.tid, msg.inc))

    # -- checkpoints -----------------------------------------------------------

    def checkpoint(self, ctx: TaskContext, seq: int, state: Any) -> bool:
        """Encode the task's checkpoint and send it; do not wait for the coordinator.

        The coordinator handles it in order with everything else the task sends, so
        a later message or result never overtakes it. One checkpoint is in flight
        at most: while the previous one is still on its way (a big state to its
        buddy), this one is skipped (False) rather than waited for; a restart from
        the previous one is as exact (the messages since are replayed). A checkpoint
        group's members always wait: their checkpoints are cuts they take together
        (for its buddy's copy of the one before, not for the coordinator).
        Raises here what storing the previous one raised (a full disk, say).
        """
        group = ctx.__dict__.get("_group")
        error = ctx.__dict__.pop("_own_error", None)
        if error is not None:
            raise error
        reqid = ctx.__dict__.get("_ckpt_call")
        if reqid is not None:
            self.progress()             # its answer may have come: handle what has
            if reqid in self._replies:
                self.settle_checkpoint(ctx)
            elif not group:
                log.debug("task %d: checkpoint %d skipped: the one before is still on "
                          "its way", ctx.tid, seq)
                return False
        if not group and not self._held(ctx):
            self.progress()
            if not self._held(ctx):
                log.debug("task %d: checkpoint %d skipped: its buddy does not hold the one "
                          "before yet", ctx.tid, seq)
                return False
        disk = False
        if group:
            self._wait_held(ctx)
            if ctx.aborted or self._frozen(ctx):          # (a wait costs 9 us here)
                self._wait_alive(ctx, lambda: not self._frozen(ctx))     # until aborted
            ready = not self._first_big_pending(ctx, approx_size(state) + (1 << 20))
            delivered, mailbox, ready, disk = self._cut(ctx, group, seq, ready,
                                                        self._disk_vote(group))
            if not ready:
                # a member's memory for its first big state is being made ready (see
                # below): every member skips this one, and its number (the next cut's
                # marks are the next number's, never mixed up with these)
                log.debug("task %d: group checkpoint %d skipped: a member's memory for it "
                          "is made ready", ctx.tid, seq)
                return False
            ctx.__dict__["_cut_sent"] = (seq, dict(ctx._sent))     # see _quiet_since_cut
        else:
            box = ctx.mailbox
            with box.lock:
                delivered = dict(box.delivered)
                mailbox = [list(i) for i in box.items]
        outlog = replaylog.pack(getattr(ctx, "_outlog", {}), ARRAY_COPIES)
        payload = {"state": state, "seqs": ctx._seqs(), "delivered": delivered,
                   "mailbox": mailbox, "outlog": outlog}
        # encoded once, here, and stored as it is: the coordinator never decodes it
        try:
            head, bufs = wire.dumps(payload, allow_pickle=False)
        except WireError as exc:   # checkpoints never pickle: name the state's path
            text = str(exc).replace("cannot send", "cannot checkpoint", 1)
            text = text.replace(" at ['state']", " at state", 1).split("; or opt in to pickle")[0]
            raise WireError(text + ". Checkpoints are msgpack and numpy only, never pickle") \
                from None
        # a spawned task's checkpoint stays here, and a copy goes to the buddy node (the
        # buddy store, clustervm.copies); a short task's goes to the coordinator
        buddy, to_store = (self.buddy, ctx.__dict__.get("_to_store", True)) \
            if self.live.get(ctx.tid) is ctx else (0, True)
        if group:
            to_store = disk         # the group's vote (every member's the same)
        size = wire.packed_size([head, *bufs])
        if not group and self._first_big_pending(ctx, size):
            log.debug("task %d: checkpoint %d skipped: memory for it is made ready",
                      ctx.tid, seq)
            return False
        told = ctx.__dict__.get("_told", 0)
        # with a checkpoint directory it sees, this node writes the file itself
        # (a checkpoint group's epochs that go to disk, too)
        own = self._own_writer() if buddy and self.config.checkpoint_dir \
            and (disk or not group) else None
        untold = buddy and (group or (own is not None or not to_store
                                      and not self.config.checkpoint_dir)
                            and told and (not delivered or told > 1))
        now = time.monotonic()      # a log-mode task's file at most every checkpoint_disk_s
        to_file = own is not None and (group or now - ctx.__dict__.get(
            "_own_t", float("-inf")) >= self.config.checkpoint_disk_s)
        blob = None
        if untold and (not disk or own is not None) and self._shm is not None \
                and buddy not in self._unshared and size < shmcopies.MAX_SIZE:
            # the buddy on this host reads it from /dev/shm (None: the file cannot be had);
            # so does this node's writer of its file (to_file): a group epoch for the
            # disk took 1.1-1.7 ms in the call when its 266 KB went to the buddy over MPI
            blob = self._shm.write(ctx.tid, ctx.inc, seq, [head, *bufs])
        if blob is None:
            big = size >= wire.BLOB_OUT_OF_BAND
            blob = wire.pack_frames([head, *bufs], mutable=bool(buddy) and big,
                                    into=self.copies.take_spare(ctx.tid) if buddy and big
                                    else None)
            frame = wire.as_blob_frame(blob)
        else:
            frame = blob
        if untold:
            # the coordinator is not told (a group's epoch; in log mode without a journal,
            # or with one this node writes the files of itself, a checkpoint after the
            # first and after the first that counts received messages, which it must
            # know of: _copies_gone). The buddy says HELD to this
            # node, and the next one waits for it (_held); in log mode this node then
            # tells the senders to forget what the task had received (_on_held). After a
            # loss the coordinator asks the nodes what they hold (ASKHELD).
            with self.lock:
                rolling = self._frozen(ctx)
                if not rolling:
                    self.copies.put_own(ctx.tid, ctx.inc, seq, blob)
            if rolling:     # its group goes back: the copies said to be held stay as they are
                self._wait_alive(ctx, lambda: False)
            if not group:
                ctx.__dict__["_keep_delivered"] = (seq, delivered)
            data = None
            if own is not None:
                ctx.__dict__["_own"] = True     # its senders forget what a file counts
                if to_file:
                    ctx.__dict__["_own_t"] = now
                    data = self._shm.hold(blob) if getattr(blob, "shared", False) else None
                    if data is None:
                        data = shmcopies.contents(blob)
                        self.copies.pin(data)       # not a spare until written
            self._keep(ctx, seq, buddy, frame)
            if data is not None:    # (after the KEEP: the writer, woken, takes the GIL)
                own.write(ctx.tid, ctx.inc, seq, data)
            if not disk or own is not None:
                self.untold += 1        # counted by the coordinator (HEARTBEAT, EXITED)
                if disk:
                    self._group_disk_t[group] = time.monotonic()
                return True
            # an epoch for the disk also goes to the coordinator, which answers at once
            # (its buddy's copy is this node's affair): the member does not wait for that
            # answer, which a coordinator idle since the last one gives late (5-10 ms)
            buddy = 0
        if group:
            self.settle_checkpoint(ctx)       # the one before (answered long ago, as a rule)
            self._group_disk_t[group] = time.monotonic()
        if buddy:
            self.copies.put_own(ctx.tid, ctx.inc, seq, blob)
            if not self.transport.post(buddy, P.Keep(ctx.tid, ctx.inc, seq, frame).encode()):
                buddy, to_store = 0, True
        ctx.__dict__["_ckpt_call"] = self.call_start(
            "checkpoint", ctx.tid, ctx.inc, seq, delivered, frame if to_store or not buddy
            else None, buddy, post=True)
        ctx.__dict__["_call_received"] = bool(delivered)
        return True

    def _first_big_pending(self, ctx: TaskContext, size: int) -> bool:
        """Whether the task's checkpoint of ``size`` bytes is skipped (a group member: its
        vote in the cut): nothing of it is held here yet, and a copy into new memory would
        stop the task for the page faults (200 MB: 180-250 ms here), so a thread makes the
        memory ready (Copies.prepare) and a later checkpoint copies into it; meanwhile the
        task restarts from the start, or its group from the epoch before."""
        return (self.live.get(ctx.tid) is ctx and bool(self.buddy)
                and size >= FIRST_BIG_CHECKPOINT and self.copies.prepare(ctx.tid, size))

    def _disk_vote(self, group: int) -> bool:
        """Whether this node asks that the group's next epoch go to the coordinator's
        disk: with a checkpoint directory, at most every checkpoint_group_disk_s (the
        epochs between are held in memory on two nodes only)."""
        return bool(self.config.checkpoint_dir) and (
            time.monotonic() - self._group_disk_t.get(group, float("-inf"))
            >= self.config.checkpoint_group_disk_s)

    def _cut(self, ctx: TaskContext, group: int, seq: int,
             ready: bool, disk: bool = False) -> tuple[dict, list, bool, bool]:
        """A coordinated checkpoint of checkpoint group ``group``: every member sends each
        other member a MARK with how many messages it has sent it; once a member has every
        other's MARK (from its current incarnation), it waits until it has received that
        much from each (the messages in flight at the cut), and keeps in its checkpoint
        what it had received up to the cut, nothing after it (a peer sends that again
        after a rollback). The coordinator takes no part: a member waits for its peers,
        not for a round trip to rank 0. Each MARK carries the member's votes: the cut is
        taken if every member voted ``ready`` (the third value returned), and goes to
        disk if any voted ``disk`` (the fourth): every member decides the same."""
        first, count = ctx._sib
        incs: dict[int, int] = {}
        for peer in range(first, first + count):
            if peer == ctx.tid:
                continue
            loc = self.locate(peer, ended_ok=True)
            if loc.rank == ENDED:
                continue        # it left the group (ended): nothing more comes from it
            incs[peer] = loc.inc
            mark = P.Mark(peer, seq, ctx.tid, ctx.inc, ctx._sent.get(peer, 0), int(ready),
                          int(disk))
            if loc.rank == self.rank:
                self._on_mark(self.rank, mark)
            else:
                self.transport.post(loc.rank, mark.encode())
        key = (ctx.tid, seq)
        marks = self._marks
        self._wait_alive(ctx, lambda: all(marks.get(key, {}).get(p, (-1, 0, 1, 0))[0] >= inc
                                          for p, inc in incs.items()))
        with self.lock:
            got = marks.pop(key, {})
            for old in [k for k in marks if k[0] == ctx.tid and k[1] < seq]:
                del marks[old]
        upto = {p: got[p][1] for p in incs}
        ready = ready and all(got[p][2] for p in incs)
        disk = disk or any(got[p][3] for p in incs)
        box = ctx.mailbox
        self._wait_alive(ctx, lambda: all(box.delivered.get(s, 0) >= n
                                          for s, n in upto.items()))
        with box.lock:
            delivered = {s: min(n, upto[s]) if s in upto else n
                         for s, n in box.delivered.items()}
            mailbox = [list(i) for i in box.items if i[0] not in upto or i[4] <= upto[i[0]]]
        return delivered, mailbox, ready, disk

    def _wait_alive(self, ctx: TaskContext, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate`` holds; raise TaskAborted if ``ctx`` is aborted first."""
        self.wait(lambda: ctx.aborted or predicate(), blocking=True)
        if ctx.aborted:
            raise TaskAborted(ctx.tid)

    def _on_thaw(self, src: int, msg: P.Thaw) -> None:
        """The coordinator asks this node's members of an auto-frozen group off MPI."""
        from .fastgroup import thaw     # (imports MPI: only frozen groups need it)
        thaw(self, msg.name, list(msg.tids))

    def _on_mark(self, src: int, msg: P.Mark) -> None:
        """A peer's MARK for a checkpoint of one of this node's group members (kept until
        that member takes it; a newer incarnation's replaces an older one's)."""
        with self.lock:
            got = self._marks.setdefault((msg.dst, msg.seq), {})
            if got.get(msg.src, (-1, 0, 1, 0))[0] <= msg.inc:
                got[msg.src] = (msg.inc, msg.sent, msg.ready, msg.disk)

    def settle_checkpoint(self, ctx: TaskContext | None,
                          at_end: bool = False) -> BaseException | None:
        """Wait for the answer to the task's checkpoint in flight, if any.

        Raises what storing it raised; at the task's end (``at_end``) returns it
        instead, and the task's outcome becomes that error."""
        reqid = ctx.__dict__.pop("_ckpt_call", None) if ctx is not None else None
        if reqid is None:
            return None
        try:
            answer = self.call_result(reqid, "checkpoint")
            if answer is not None:           # where the next one goes
                self.buddy = int(answer[0])
                ctx.__dict__["_to_store"] = bool(answer[1])
            # see checkpoint(): 1, told of a checkpoint; 2, of one with received messages
            told = 2 if ctx.__dict__.pop("_call_received", False) else 1
            ctx.__dict__["_told"] = max(told, ctx.__dict__.get("_told", 0))
        except SystemExit:
            raise
        except Exception as exc:   # noqa: BLE001
            if not at_end:
                raise
            log.error("task %d: its last checkpoint was not stored: %s", ctx.tid, exc)
            return exc
        return None

    def make_context(self, tid: int, parent: int | None, ckpt: Any) -> TaskContext:
        """The context of a short task, made when the task first asks for it."""
        ctx = TaskContext(self, tid, parent)
        if ckpt is not None:
            self._restore(ctx, ckpt)
        self.contexts[tid] = ctx
        return ctx

    def submit(self, parent: int, fn, args, kwargs) -> ClusterFuture:
        """A nested submission: the coordinator answers when the task has finished."""
        reqid = next(self._reqids)
        fut = ClusterFuture(self)
        self._futures[reqid] = fut
        self.transport.send(P.COORDINATOR, P.Req(reqid, "submit",
                                                 (parent, self.ref(fn), args, kwargs)).encode())
        return fut
