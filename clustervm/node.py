"""The node loop: one per worker rank. Runs tasks, delivers messages, sends heartbeats.

A node never exits non-zero by itself (with Open MPI that would abort the whole
job): everything a task raises is caught and reported to the coordinator.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from . import protocol as P
from . import remote, wire
from .config import Config
from .errors import WireError
from .futures import ClusterFuture
from .site import Site, snapshot
from .task import TaskAborted, TaskContext, TaskExit
from .endpoint import Endpoint, PeerFailed
from . import current

log = logging.getLogger(__name__)

#: A node leaves (exit status 3) when the coordinator, once heard beating, has been
#: silent for this many heartbeat periods (at least COORDINATOR_SILENCE_MIN_S): without
#: ULFM (MPICH) nothing else tells it that the coordinator died or hangs.
COORDINATOR_SILENCE = 5
COORDINATOR_SILENCE_MIN_S = 10.0
_BATCH_MAX = 64
_BATCH_S = 0.002


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
        })
        self._coordinator_beats = False
        self.queue: deque = deque()
        self.cancelled: set[int] = set()
        self.live: dict[int, TaskContext] = {}         # spawned tasks running here
        self.slots = max(1, config.slots)
        self.n_workers = 0
        self.n_blocked = 0
        self.stopping = False
        self.coordinator_lost = False
        self.failures_seen = False
        transport.on_failure = self._on_failure

    # -- main loop -----------------------------------------------------------

    def serve(self) -> None:
        """Run until the coordinator says shut down (or is lost)."""
        self.transport.send(P.COORDINATOR, P.Hello(self.host, self.pid).encode())
        for _ in range(self.slots):
            self._start_worker()
        interval = max(0.05, self.config.heartbeat_s / 4)
        silence = max(COORDINATOR_SILENCE * self.config.heartbeat_s, COORDINATOR_SILENCE_MIN_S)
        last_hb = last_loop = started = time.monotonic()
        t = self.transport
        while not self.stopping:
            t.service_step(0.05)
            now = time.monotonic()
            if P.COORDINATOR not in t.last_heard and now - started > self.config.start_timeout_s:
                # the coordinator answers a hello at once: it failed before its loop ran
                log.error("node %d: no word from the coordinator %.0f s after start; leaving "
                          "(CLUSTERVM_START_TIMEOUT_S sets how long to wait)",
                          self.rank, now - started)
                self.coordinator_lost = True
                self.stopping = True
            if now - last_hb >= interval:
                last_hb = now
                if not t.post(P.COORDINATOR,
                              P.Heartbeat(len(self.queue) + len(self.live)).encode()):
                    self.coordinator_lost = True
                    self.stopping = True
            if self._coordinator_beats:
                if now - last_loop > silence / 2:   # this process was stalled, not the coordinator
                    t.last_heard[P.COORDINATOR] = now
                elif now - t.last_heard.get(P.COORDINATOR, now) > silence:
                    log.error("node %d: nothing from the coordinator for %.0f s; leaving",
                              self.rank, now - t.last_heard[P.COORDINATOR])
                    self.coordinator_lost = True
                    self.stopping = True
            last_loop = now
        t.notify()
        if not self.coordinator_lost:
            try:
                t.send(P.COORDINATOR, P.Bye().encode())
            except PeerFailed:
                pass
        t.flush(2.0)

    def _on_heartbeat(self, src: int, msg: P.Heartbeat) -> bool:
        self._coordinator_beats = True   # from now on its silence means it is gone
        return False                     # not work: keeps idle loops idle

    def _on_failure(self, ranks: set[int]) -> None:
        if P.COORDINATOR in ranks:
            log.error("node %d: the coordinator died; leaving", self.rank)
            self.coordinator_lost = True
            self.stopping = True
        with self.lock:
            for tid, loc in list(self.locations.items()):
                if loc.rank in ranks:
                    del self.locations[tid]

    def _on_shutdown(self, src: int, msg: P.Shutdown) -> None:
        self.stopping = True
        self.failures_seen = bool(msg.unclean)
        for ctx in self.live.values():
            ctx.aborted = True
        self.transport.notify()
        self.transport.notify_background()

    # -- short tasks -----------------------------------------------------------

    def _start_worker(self) -> None:
        with self.lock:
            self.n_workers += 1
        threading.Thread(target=self._worker, name=f"cvm-worker-{self.n_workers}",
                         daemon=True).start()

    def wait(self, predicate, timeout=None, blocking=False) -> bool:
        if not (blocking and getattr(current._tls, "worker", False)):
            return self.transport.wait(predicate, timeout)
        with self.lock:               # a task blocks: let another worker use its slot
            self.n_blocked += 1
            if self.n_workers - self.n_blocked < self.slots:
                self._start_worker()
        try:
            return self.transport.wait(predicate, timeout)
        finally:
            with self.lock:
                self.n_blocked -= 1

    def _worker(self) -> None:
        current._tls.worker = True
        q = self.queue
        t = self.transport
        batch: list = []
        t0 = 0.0
        ready = lambda: bool(q) or self.stopping  # noqa: E731
        while True:
            if not q and batch:
                self._flush(batch)
            # spin for the next task only while no spawned task computes here
            if not t.wait(ready, None if not batch else _BATCH_S, background=True,
                          spin=not self.live):
                continue
            if self.stopping:
                break
            with self.lock:
                if self.n_workers - self.n_blocked > self.slots:
                    self.n_workers -= 1      # surplus after a blocked task came back
                    break
            try:
                item = q.popleft()
            except IndexError:
                continue
            if item[0] in self.cancelled:
                self.cancelled.discard(item[0])
                continue
            if not batch:
                t0 = time.perf_counter()
            batch.append(self._run_short(item))
            # report early when the queue runs low, so the coordinator refills it in time
            if (len(q) <= 1 or len(batch) >= _BATCH_MAX
                    or time.perf_counter() - t0 > _BATCH_S):
                self._flush(batch)
        if batch:
            self._flush(batch)

    def _flush(self, batch: list) -> None:
        """Report finished short tasks to the coordinator, in one message.

        A result that cannot be sent becomes its task's WireError, naming the path
        as the task's code sees it (``result['lock']``); the others still go."""
        try:
            try:
                self.transport.send(P.COORDINATOR, P.Done(batch).encode())
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
            self.stopping = True
        batch.clear()

    def _on_run(self, src: int, msg: P.Run) -> None:
        self.queue.extend(msg.items)
        self.transport.notify_background()     # an idle worker may be asleep

    def _on_cancel(self, src: int, msg: P.Cancel) -> None:
        self.cancelled.add(msg.tid)

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
        if ctx is not None and not getattr(ctx, "_outlog", None):
            self.contexts.pop(tid, None)
        self.mailboxes.pop(tid, None)
        if ckpt_error is not None:   # a disk error reaches the caller, not only the log
            result = (tid, False, remote.pack_exception(ckpt_error, self.where()))
        return result

    # -- spawned (long-lived) tasks -------------------------------------------

    def _on_spawn(self, src: int, msg: P.Spawn) -> None:
        tid, parent, fn_ref, args, kwargs = msg.tid, msg.parent, msg.fn, msg.args, msg.kwargs
        inc, ckpt, siblings = msg.inc, msg.ckpt, msg.siblings
        old = self.live.get(tid)
        if old is not None:
            if old.inc >= inc:
                return
            old.aborted = True
        ctx = TaskContext(self, tid, parent, inc=inc, siblings=siblings)
        if ckpt is not None:
            self._restore(ctx, ckpt)
        with self.lock:
            self.contexts[tid] = ctx
            self.live[tid] = ctx
        threading.Thread(target=self._run_spawned, args=(ctx, fn_ref, args, kwargs),
                         name=f"cvm-task-{tid}", daemon=True).start()

    def _restore(self, ctx: TaskContext, ckpt: dict) -> None:
        """Bring a checkpoint back: state, counters, the mailbox and the replay log."""
        ctx._state = ckpt["state"]
        ctx._ckpt_seq = ckpt["seqs"]["ckpt"]
        ctx._sent = {int(k): v for k, v in ckpt["seqs"]["sent"].items()}
        ctx._coll = dict(ckpt["seqs"].get("coll", {}))
        ctx._outlog = {int(k): [tuple(e) for e in v] for k, v in ckpt["outlog"].items()}
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
        held = self.holdback.pop(ctx.tid, {})
        for (s, seq), (tag, data, inc) in sorted(held.items()):
            self.deliver(s, ctx.tid, tag, data, inc, seq)

    def _replay_outlog(self, ctx: TaskContext) -> None:
        for dst, entries in list(getattr(ctx, "_outlog", {}).items()):
            for seq, tag, data in entries:
                try:
                    loc = self.locate(dst)
                except Exception:   # noqa: BLE001 - the receiver has ended: nothing to replay
                    continue
                if loc.rank == self.rank:
                    self.deliver(ctx.tid, dst, tag, snapshot(data), ctx.inc, seq)
                else:
                    self.transport.post(loc.rank, P.User.make(ctx.tid, dst, tag, data,
                                                              ctx.inc, seq))

    def _run_spawned(self, ctx: TaskContext, fn_ref: str, args: Any, kwargs: Any) -> None:
        tls = current._tls
        tls.site, tls.tid, tls.ctx = self, ctx.tid, ctx
        ok, value = True, None
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
            if ctx.__dict__.get("_frozen"):      # shadows of its frozen groups, before EXITED
                from .fastgroup import task_ended
                task_ended(ctx)
            if not ctx.aborted:
                ckpt_error = self.settle_checkpoint(ctx, at_end=True)
                if ckpt_error is not None and ok:   # reaches vm.join, not only the log
                    ok, value = False, remote.pack_exception(ckpt_error, self.where())
        if ctx.aborted:
            return
        try:
            try:
                self.transport.send(P.COORDINATOR, P.Exited(ctx.tid, ctx.inc, ok, value).encode())
            except WireError as exc:
                exc = wire.relabel(exc, "[4]", "result")
                err = WireError(f"the return value of task {ctx.tid} cannot be sent: {exc}")
                self.transport.send(P.COORDINATOR, P.Exited(
                    ctx.tid, ctx.inc, False, remote.pack_exception(err, self.where())).encode())
        except PeerFailed:
            self.stopping = True

    def _on_kill(self, src: int, msg: P.Kill) -> None:
        tid, inc = msg.tid, msg.inc
        ctx = self.live.get(tid)
        if ctx is not None and ctx.inc <= inc:
            ctx.aborted = True
            self.transport.notify()
        self.cancelled.add(tid)

    # -- checkpoints -----------------------------------------------------------

    def checkpoint(self, ctx: TaskContext, seq: int, state: Any) -> None:
        """Encode the task's checkpoint and send it; do not wait for the coordinator.

        The coordinator handles it in order with everything else the task sends, so
        a later message or result never overtakes it. One checkpoint is in flight
        at most: this waits for the previous one's answer first, and raises here
        what storing it raised (a full disk, say).
        """
        self.settle_checkpoint(ctx)
        box = ctx.mailbox
        with box.lock:
            delivered = dict(box.delivered)
            mailbox = [list(i) for i in box.items]
        payload = {"state": state, "seqs": ctx._seqs(), "delivered": delivered,
                   "mailbox": mailbox, "outlog": getattr(ctx, "_outlog", {})}
        # encoded once, here, and stored as it is: the coordinator never decodes it
        try:
            head, bufs = wire.dumps(payload, allow_pickle=False)
        except WireError as exc:   # checkpoints never pickle: name the state's path
            text = str(exc).replace("cannot send", "cannot checkpoint", 1)
            text = text.replace(" at ['state']", " at state", 1).split("; or opt in to pickle")[0]
            raise WireError(text + ". Checkpoints are msgpack and numpy only, never pickle") \
                from None
        ctx.__dict__["_ckpt_call"] = self.call_start(
            "checkpoint", ctx.tid, ctx.inc, seq, delivered, wire.pack_frames([head, *bufs]),
            post=True)

    def settle_checkpoint(self, ctx: TaskContext | None,
                          at_end: bool = False) -> BaseException | None:
        """Wait for the answer to the task's checkpoint in flight, if any.

        Raises what storing it raised; at the task's end (``at_end``) returns it
        instead, and the task's outcome becomes that error."""
        reqid = ctx.__dict__.pop("_ckpt_call", None) if ctx is not None else None
        if reqid is None:
            return None
        try:
            self.call_result(reqid, "checkpoint")
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
