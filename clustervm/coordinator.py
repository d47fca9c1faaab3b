"""The coordinator (rank 0): task table, placement, failure handling, journal.

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
from collections import deque
from typing import Any, Callable

from . import procs
from . import protocol as P
from . import remote, wire
from .checkpoint import CheckpointStore
from .config import Config
from .errors import CheckpointError, NoNodesError
from .events import EventLog
from .futures import ClusterFuture
from .groups import Groups
from .journal import Journal
from .api import CoordinatorAPI
from .replacement import SPAWN_HELLO_S, NodeSpawning
from .records import SHORT, SPAWNED, NodeInfo, Reply, TaskRecord
from .site import Site
from .task import TaskContext
from .transport import Transport

log = logging.getLogger(__name__)

#: Once one node has said hello, how long main waits for the others before it starts.
START_GRACE_S = 5.0


class Coordinator(CoordinatorAPI, NodeSpawning, Site):
    """Rank 0: schedules tasks onto nodes and recovers them when nodes fail."""

    def __init__(self, transport: Transport, config: Config) -> None:
        super().__init__(transport, config)
        self.handlers.update({
            P.HELLO: self._on_hello,
            P.DONE: self._on_done,
            P.EXITED: self._on_exited,
            P.REQ: self._on_req,
            P.HEARTBEAT: lambda src, msg: False,      # not work: keeps idle loops idle
            P.BYE: self._on_bye,
        })
        self.t0 = time.monotonic()
        self.nodes: dict[int, NodeInfo] = {r: NodeInfo(r) for r in range(1, transport.size)}
        self.tasks: dict[int, TaskRecord] = {}
        self.exits: dict[int, tuple[bool, Any]] = {}
        self.pending: deque[TaskRecord] = deque()
        self.cap = max(1, config.slots) + max(0, config.prefetch)
        self.waiting: dict[int, int] = {}   # task -> tasks it submitted that are not done
        self._tids = itertools.count(P.MAIN_TID + 1)
        self.events = EventLog(self.t0)
        self.groups = Groups(self)
        self.info: dict[str, Any] = {}
        self.info_waiters: dict[str, list[Reply]] = {}
        self.stats = {"rerun": 0, "redone_s": 0.0, "ckpt_written": 0, "ckpt_restored": 0,
                      "reused": 0, "corrupt": 0, "spawned": 0}
        ckdir = config.checkpoint_dir or None
        self.store = CheckpointStore(ckdir)
        self.journal: Journal | None = Journal(ckdir, fsync=False) if ckdir else None
        self.journal_done: dict[int, tuple[int, bool, Any]] = {}
        if self.journal is not None and config.resume:
            self._load_journal()
        self.main_ctx = TaskContext(self, P.MAIN_TID, None)
        self.contexts[P.MAIN_TID] = self.main_ctx
        self.stopping = False
        self.fatal: BaseException | None = None
        self._alive: list[NodeInfo] = []
        self.start_limit = 60.0
        #: how to start this program on a new node (arguments after the interpreter)
        self.spawn_command: list[str] = []
        self._next_rank = max(transport.size, 1)
        self._spawn_lock = threading.Lock()     # one MPI_Comm_spawn at a time
        self._spawning = 0                      # replacements asked for, not yet started
        self.homeless: list[TaskRecord] = []    # spawned tasks waiting for a node to join
        #: Observers (trace, dashboard): ``obs(kind, rec, rank, ok)`` with kind "start" (a task
        #: dispatched to node ``rank``), "end" (ok or not) or "rerun" (its node ``rank`` was lost).
        #: Called under ``self.lock`` in the MPI thread: record and return, never block.
        self.observers: list[Callable[[str, TaskRecord, int | None, bool | None], None]] = []
        transport.on_failure = self._on_mpi_failure
        self.api: dict[str, Callable[..., None]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("api_")}

    # -- start and stop ------------------------------------------------------

    def wait_for_nodes(self, timeout: float = 60.0) -> None:
        """Wait until every node has said hello, but once one has, the others get only
        START_GRACE_S more: main starts, and a late node joins when its hello comes
        (check_heartbeats declares it dead ``timeout`` s after the start)."""
        self.start_limit = timeout
        t = self.transport
        t.wait(lambda: any(n.state != "starting" for n in self.nodes.values()), timeout)
        t.wait(lambda: all(n.state != "starting" for n in self.nodes.values()),
               max(START_GRACE_S, 2 * self.config.heartbeat_s))
        with self.lock:
            for n in self.nodes.values():
                if n.state == "starting":
                    if not self._alive_nodes() or time.monotonic() - self.t0 > timeout:
                        self._node_lost(n.rank, "no hello at start")
                    else:
                        log.warning("node %d has not said hello yet; starting without it",
                                    n.rank)
            spares = self.config.spares
            for n in sorted(self._alive_nodes(), key=lambda n: -n.rank)[:spares]:
                if spares and len(self._alive_nodes()) > 1:
                    n.state = "spare"
            self._refresh_alive()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Tell every node to leave and wait for their goodbyes."""
        with self.lock:
            self.stopping = True
            for n in self.nodes.values():
                if n.state in ("alive", "spare", "starting"):
                    self.transport.post(n.rank, (P.SHUTDOWN, self._unclean()))
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
        self.transport.flush(2.0)
        if self.journal is not None:
            self.journal.close()

    def _unclean(self) -> bool:
        """Has any rank failed or never joined? Then no rank may risk MPI_Finalize."""
        return bool(self.transport.failed or self.transport.links) or any(
            n.state == "starting" for n in self.nodes.values())

    def _on_hello(self, src: int, msg: Any) -> None:
        n = self.nodes.get(src)
        if n is None:
            return
        _, n.host, n.pid = msg
        self.transport.post(src, (P.HEARTBEAT, 0))   # the node's start deadline is met
        if n.state == "starting":
            n.state = "alive"
            n.joined_at = time.monotonic()
            self._refresh_alive()
            if not self.in_world(n.rank):
                log.warning("node %d (host %s, pid %d) started with MPI_Comm_spawn joins the VM",
                            n.rank, n.host, n.pid)
                self.events.add("NODE_ADDED", rank=n.rank, host=n.host, how="spawn")
            homeless, self.homeless = self.homeless, []
            for rec in homeless:     # "running": lost with its node; "pending": never placed
                if rec.state in ("running", "pending") and rec.node is None:
                    self._place_spawned(rec, restart=rec.state == "running")
            self._dispatch()

    def _on_bye(self, src: int, msg: Any) -> None:
        n = self.nodes.get(src)
        if n is not None and n.state != "dead":
            n.state = "left"
            self._refresh_alive()

    # -- node state ----------------------------------------------------------

    def _refresh_alive(self) -> None:
        self._alive = [n for n in self.nodes.values() if n.state == "alive"]

    def _alive_nodes(self) -> list[NodeInfo]:
        return self._alive

    def check_heartbeats(self) -> None:
        """Declare dead the nodes silent for longer than the heartbeat timeout."""
        now = time.monotonic()
        limit = self.config.heartbeat_s
        heard = self.transport.last_heard
        with self.lock:
            for n in list(self.nodes.values()):
                if n.state in ("alive", "spare"):
                    last = max(heard.get(n.rank, 0.0), n.joined_at)
                    if now - last > limit:
                        self._node_lost(n.rank, f"heartbeat ({now - last:.1f} s silent)")
                elif n.state == "starting" and n.joined_at and now - n.joined_at > SPAWN_HELLO_S:
                    self._node_lost(n.rank, f"no hello {SPAWN_HELLO_S:.0f} s after MPI_Comm_spawn")
                elif n.state == "starting" and now - self.t0 > self.start_limit:
                    self._node_lost(n.rank, "no hello at start")

    def _on_mpi_failure(self, ranks: set[int]) -> None:
        with self.lock:
            for r in sorted(ranks):
                self._node_lost(r, "MPI (ULFM)")

    def _kill_process(self, n: NodeInfo) -> None:
        from .site import hostname
        pid = n.pid if n.host == hostname() else 0
        if not pid and n.state in ("starting", "dead") and not n.pid:
            pid = _local_rank_pid(n.rank)     # it never said hello: find it, if on this host
        if pid and (n.pid or self.in_world(n.rank)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _node_lost(self, rank: int, how: str) -> None:
        n = self.nodes.get(rank)
        if n is None or n.state in ("dead", "left"):
            return
        was_spare = n.state == "spare"
        n.state, n.how_lost, n.lost_at = "dead", how, time.monotonic()
        self.transport.declare_dead(rank) if how.startswith(("heartbeat", "no hello")) else \
            self.transport.failed.add(rank)
        if how.startswith(("heartbeat", "no hello")):
            self._kill_process(n)   # a hung node is never trusted again
        self._refresh_alive()
        log.warning("node %d (host %s, pid %d) lost: %s", rank, n.host, n.pid, how)
        self.events.add("NODE_DOWN", rank=rank, host=n.host, how=how)
        self.groups.node_lost(rank)
        if self.stopping:
            return
        if not was_spare and not self._promote_spare() and self.config.replace_failed:
            self._replace_async(rank)
        now = time.monotonic()
        # tasks queued behind the running ones (prefetch) lose no work
        running = sorted(n.inflight.values(), key=lambda r: r.t_start)[:max(1, self.config.slots)]
        for rec in running:
            self.stats["redone_s"] += now - max(rec.t_start, rec.t_ckpt, n.last_done)
        if self.observers:
            for rec in sorted(n.inflight.values(), key=lambda r: r.t_start):
                self._observe("rerun", rec, rank)
        for rec in list(n.inflight.values()):
            self.stats["rerun"] += 1
            rec.node, rec.state = None, "pending"
            rec.attempts += 1
            if rec.where is not None:
                rec.where.discard(rank)
                if not rec.where:
                    rec.where = None
            self.pending.appendleft(rec)
        n.inflight.clear()
        spawned, n.spawned = n.spawned, set()
        if not self._alive and not self._joining():
            self._no_nodes_left()
            return
        for tid in sorted(spawned):
            rec = self.tasks.get(tid)
            if rec is not None and rec.state == "running":
                self.stats["rerun"] += 1
                self.stats["redone_s"] += now - max(rec.t_start, rec.t_ckpt)
                if self.observers:
                    self._observe("rerun", rec, rank)
                self._place_spawned(rec, restart=True)
        self._dispatch()

    def _promote_spare(self) -> bool:
        for n in self.nodes.values():
            if n.state == "spare":
                n.state = "alive"
                log.warning("spare node %d takes over", n.rank)
                self.events.add("NODE_ADDED", rank=n.rank, host=n.host, how="spare")
                self._refresh_alive()
                return True
        return False

    def _joining(self) -> bool:
        """Is a node on its way: being spawned, or started and not yet said hello?

        Work waits for it rather than fail: a node lost while the others are still
        starting is no reason to give up (a starting node that never says hello is
        declared lost by check_heartbeats)."""
        return bool(self._spawning) or any(n.state == "starting" for n in self.nodes.values())

    def _no_nodes_left(self) -> None:
        if self._joining():
            return    # a replacement is on its way: the work waits for it
        self.homeless.clear()
        lost = ", ".join(f"node {n.rank} ({n.host}: {n.how_lost})"
                         for n in self.nodes.values() if n.state == "dead")
        err = NoNodesError(f"every worker node is lost ({lost}); the job cannot go on. "
                           "Start it with more nodes, with --spares K, or resume it with "
                           "--resume DIR if it ran with --checkpoint-dir")
        self.fatal = err
        for rec in list(self.tasks.values()):
            self._finish(rec, False, err, packed=False)
        self.pending.clear()
        self.transport.notify()

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
            tid = next(self._tids)
            rec = TaskRecord(tid, SHORT, parent, fn_ref, args, kwargs)
            fut.tid = tid
            rec.future, rec.reply = fut, reply
            if where is not None:
                rec.where = self._resolve_where(where)
            if self.journal is not None:
                rec.digest = _digest(fn_ref, args, kwargs)
                if self._reuse(rec):
                    return fut
            self.tasks[tid] = rec
            if parent in self.tasks:   # nested: a parent waiting on it gives up its slot
                self.waiting[parent] = self.waiting.get(parent, 0) + 1
            self.pending.append(rec)
            self._dispatch()
        return fut

    def _dispatch(self) -> None:
        """Hand pending short tasks to the least loaded nodes, in batches."""
        pending = self.pending
        if not pending or self.stopping:
            return
        alive = self._alive
        if not alive:
            return
        cap = self.cap
        batches: dict[int, list] = {}
        order = sorted(alive, key=lambda n: len(n.inflight) + len(n.spawned))
        skipped: list[TaskRecord] = []
        while pending:
            progressed = False
            for n in order:
                if not pending:
                    break
                if len(n.inflight) >= cap and self._busy(n) >= cap:
                    continue
                rec = pending.popleft()
                if rec.where is not None and n.rank not in rec.where:
                    target = self._pick(rec.where)
                    if target is None or (len(target.inflight) >= cap
                                          and self._busy(target) >= cap):
                        skipped.append(rec)
                        progressed = True
                        continue
                    n = target
                if rec.state == "cancelled":
                    progressed = True
                    continue
                rec.node, rec.state, rec.t_start = n.rank, "running", time.monotonic()
                n.inflight[rec.tid] = rec
                batches.setdefault(n.rank, []).append(self._run_item(rec))
                progressed = True
            if not progressed:
                break
        if skipped:
            pending.extendleft(reversed(skipped))
        if self.observers:
            tasks = self.tasks
            for rank, items in batches.items():
                for item in items:
                    self._observe("start", tasks.get(item[0]), rank)
        for rank, items in batches.items():
            # arguments were checked at submit (wire.check_sendable), so this encodes
            if not self.transport.post(rank, (P.RUN, items)):
                self._node_lost(rank, "MPI (ULFM)")

    def _observe(self, kind: str, rec: TaskRecord | None, rank: int | None,
                 ok: bool | None = None) -> None:
        if rec is None:
            return
        for obs in self.observers:
            try:
                obs(kind, rec, rank, ok)
            except Exception:   # noqa: BLE001 - an observer must never stop the scheduler
                log.exception("observer %r failed on %s of task %d", obs, kind, rec.tid)

    def _busy(self, n: NodeInfo) -> int:
        """Slots of ``n`` in use: its tasks in flight, less those waiting on tasks they
        submitted (so nested submission cannot fill every slot with waiting parents)."""
        waiting = self.waiting
        return len(n.inflight) - sum(1 for t in n.inflight if t in waiting)

    def _run_item(self, rec: TaskRecord) -> tuple:
        ckpt = self._load_ckpt(rec.tid) if rec.attempts or self.config.resume else None
        return (rec.tid, rec.parent, rec.fn, rec.args, rec.kwargs, ckpt)

    def _pick(self, where: set[int] | None) -> NodeInfo | None:
        cands = [n for n in self._alive if where is None or n.rank in where]
        if not cands:
            return None
        return min(cands, key=lambda n: len(n.inflight) + len(n.spawned))

    def _resolve_where(self, where: Any) -> set[int]:
        items = where if isinstance(where, (list, tuple, set, frozenset)) else [where]
        ranks: set[int] = set()
        for w in items:
            if isinstance(w, int) and not isinstance(w, bool):
                if w not in self.nodes:
                    raise ValueError(f"where={w!r}: no node has rank {w}; nodes are ranks "
                                     f"1..{len(self.nodes)}")
                ranks.add(w)
            elif isinstance(w, str):
                found = {n.rank for n in self.nodes.values() if n.host == w}
                if not found:
                    hosts = sorted({n.host for n in self.nodes.values()})
                    raise ValueError(f"where={w!r}: no node runs on host {w!r}; hosts: {hosts}")
                ranks |= found
            else:
                raise TypeError(f"where must be a node rank, a host name or a list of them, "
                                f"not {type(w).__name__}")
        return ranks

    def _on_done(self, src: int, msg: Any) -> None:
        n = self.nodes.get(src)
        if n is None or n.state == "dead":
            return
        with self.lock:
            inflight = n.inflight
            for tid, ok, value in msg[1]:
                rec = inflight.pop(tid, None)
                if rec is None:
                    continue          # cancelled, or already re-run elsewhere
                n.done += 1
                self._finish(rec, ok, value)
            n.last_done = time.monotonic()
            self._dispatch()

    def _finish(self, rec: TaskRecord, ok: bool, value: Any, packed: bool = True) -> None:
        """A task is over: deliver its outcome once, journal it, drop its checkpoints."""
        if rec.state in ("done", "error", "cancelled"):
            return
        rec.state = "done" if ok else "error"
        self.tasks.pop(rec.tid, None)
        self.waiting.pop(rec.tid, None)
        left = self.waiting.get(rec.parent)
        if left is not None:
            if left > 1:
                self.waiting[rec.parent] = left - 1
            else:
                del self.waiting[rec.parent]
        if self.observers:
            self._observe("end", rec, rec.node, ok)
        if self.journal is not None and packed:
            try:
                payload, bufs = wire.dumps((rec.digest, ok, value))
                self.journal.append("done", str(rec.tid), [payload, *bufs])
            except CheckpointError as exc:
                # the caller learns it now, from the task's future or join: a result that
                # is not journaled would be lost to --resume without anybody being told
                log.error("task %d: %s", rec.tid, exc)
                ok, packed = False, False
                value = CheckpointError(
                    f"task {rec.tid} finished, but its result could not be written to the job "
                    f"journal: {exc}. The job cannot be resumed past this task; fix the "
                    f"checkpoint directory and run the job again")
        if rec.t_ckpt or rec.attempts or self.config.resume:   # it may have checkpoints
            self.store.drop(str(rec.tid))
        outcome = value if ok or not packed else remote.unpack_exception(value)
        if rec.kind == SPAWNED:
            self.exits[rec.tid] = (ok, outcome)
            self.groups.task_exit(rec.tid, None if ok else outcome)
            for j in rec.joiners:
                j(ok, outcome)
            rec.joiners.clear()
            self.events.add("TASK_EXIT", tid=rec.tid, ok=ok)
            self.transport.broadcast([n.rank for n in self._alive],
                                     (P.LOC, [(rec.tid, -1, rec.inc, False, None)]))
            self._on_loc(0, (P.LOC, [(rec.tid, -1, rec.inc, False, None)]))
            return
        fut = rec.future
        if fut is not None and not fut.done():
            if ok:
                fut.set_result(outcome)
            else:
                fut.set_exception(outcome)
        if rec.reply is not None:
            rec.reply(ok, value if ok else outcome)

    def cancel_task(self, tid: int, running: bool = False) -> bool:
        """Cancel a short task not yet handed to a node; with ``running`` (vm.kill) any."""
        with self.lock:
            rec = self.tasks.get(tid)
            if rec is None or rec.kind != SHORT:
                return False
            if rec.state == "running":
                if not running:
                    return False   # a node may be running it: False, as concurrent.futures
                n = self.nodes.get(rec.node)
                if n is not None:
                    n.inflight.pop(tid, None)
                    self.transport.post(n.rank, (P.CANCEL, tid))
            rec.state = "cancelled"
            self.tasks.pop(tid, None)
            if rec.future is not None:
                return super(ClusterFuture, rec.future).cancel()
            return True

    # -- spawned tasks ---------------------------------------------------------

    def spawn(self, parent: int, fn_ref: str, args: tuple, kwargs: dict, count: int,
              where: Any = None, replay: bool = True, per: list | None = None) -> list[int]:
        """Start ``count`` spawned tasks; ``per`` (one argument list per instance, appended
        to ``args``) gives each its own. The tids are consecutive: (first, count) are the
        siblings every instance learns (ctx.siblings, ctx.rank)."""
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
            if not self._alive and not self._joining():
                raise NoNodesError("no worker node is alive to spawn on")
            wset = self._resolve_where(where) if where is not None else None
            tids: list[int] = []
            for i in range(count):
                tid = next(self._tids)
                own = args if per is None else (*args, *per[i])
                rec = TaskRecord(tid, SPAWNED, parent, fn_ref, own, kwargs)
                rec.where, rec.replay = (set(wset) if wset else None), replay
                rec.siblings = (tids[0] if tids else tid, count)
                if self.journal is not None:
                    rec.digest = _digest(fn_ref, own, kwargs)
                    if self._reuse(rec):
                        tids.append(tid)
                        continue
                self.tasks[tid] = rec
                self._place_spawned(rec, restart=self.config.resume)
                tids.append(tid)
            return tids

    def _place_spawned(self, rec: TaskRecord, restart: bool) -> None:
        n = self._pick(rec.where) or self._pick(None)
        if n is None:
            if self._joining():
                rec.node = None
                self.homeless.append(rec)
            self._no_nodes_left()
            return
        ckpt = self._load_ckpt(rec.tid) if restart else None
        if restart:
            rec.inc += 1
        rec.node, rec.state, rec.t_start = n.rank, "running", time.monotonic()
        n.spawned.add(rec.tid)
        if self.observers:
            self._observe("start", rec, n.rank)
        delivered = ckpt["delivered"] if ckpt is not None else {}
        loc = (P.LOC, [(rec.tid, n.rank, rec.inc, rec.replay, delivered if restart else None)])
        if restart:
            self.transport.broadcast([m.rank for m in self._alive], loc)
        else:
            self.transport.broadcast([m.rank for m in self._alive if m is n], loc)
        self._on_loc(0, loc)
        self.transport.post(n.rank, (P.SPAWN, rec.tid, rec.parent, rec.fn, rec.args, rec.kwargs,
                                     rec.inc, ckpt, rec.replay, rec.siblings))

    def _on_exited(self, src: int, msg: Any) -> None:
        _, tid, inc, ok, value = msg
        with self.lock:
            rec = self.tasks.get(tid)
            if rec is None or rec.inc != inc or rec.node != src:
                return
            n = self.nodes.get(src)
            if n is not None:
                n.spawned.discard(tid)
            self._finish(rec, ok, value)
            self._dispatch()

    # -- checkpoints -----------------------------------------------------------

    def _load_ckpt(self, tid: int) -> Any:
        try:
            got = self.store.load(str(tid))
        except CheckpointError as exc:
            log.warning("checkpoint of task %d unusable: %s", tid, exc)
            return None
        if got is None:
            return None
        seq, (blob,) = got
        self.stats["ckpt_restored"] += 1
        self.events.add("RESTORE", tid=tid, seq=seq)
        frames = wire.unpack_frames(blob)
        return wire.loads(frames[0], frames[1:])

    def save_checkpoint(self, tid: int, inc: int, seq: int, delivered: dict,
                        blob: bytes) -> None:
        """Store checkpoint ``seq`` of task ``tid``: ``blob`` is its payload as the node
        encoded it (wire.pack_frames), kept as it is: one frame, never decoded here."""
        rec = self.tasks.get(tid)
        if rec is None:
            if tid == P.MAIN_TID:
                raise ValueError("main cannot checkpoint; use --checkpoint-dir and --resume, "
                                 "which journal main's finished tasks")
            return                       # task already over: a late duplicate
        if rec.inc != inc:
            return
        self.store.save(str(tid), seq, [blob])
        self.stats["ckpt_written"] += 1
        rec.t_ckpt = time.monotonic()
        # the senders of the messages it has received may forget them now
        by_rank: dict[int, list] = {}
        for src in delivered:
            loc = self.locations.get(int(src))
            srec = self.tasks.get(int(src))
            rank = loc.rank if loc is not None else (srec.node if srec else None)
            if rank is not None:
                by_rank.setdefault(rank, []).append(src)
        item = (P.LOC, [(tid, rec.node, rec.inc, rec.replay, delivered)])
        for rank in by_rank:
            if rank == self.rank:
                self._on_loc(0, item)
            else:
                self.transport.post(rank, item)

    # -- resume ----------------------------------------------------------------

    def _load_journal(self) -> None:
        assert self.journal is not None
        for rec in self.journal.replay():
            if rec.kind == "done":
                digest, ok, value = wire.loads(rec.frames[0], rec.frames[1:])
                self.journal_done[int(rec.key)] = (digest, ok, value)
        log.info("resume: %d finished tasks in the journal", len(self.journal_done))

    def _reuse(self, rec: TaskRecord) -> bool:
        got = self.journal_done.get(rec.tid)
        if got is None:
            return False
        digest, ok, value = got
        if digest != rec.digest:
            log.warning("resume: task %d differs from the journaled one (other function or "
                        "arguments); running it again", rec.tid)
            return False
        self.stats["reused"] += 1
        rec.state = "done" if ok else "error"
        outcome = value if ok else remote.unpack_exception(value)
        if rec.kind == SPAWNED:
            self.exits[rec.tid] = (ok, outcome)
        else:
            if ok:
                rec.future.set_result(outcome)
            else:
                rec.future.set_exception(outcome)
            if rec.reply is not None:
                rec.reply(ok, value)
        return True

    # -- what main needs that a node does not ----------------------------------

    def submit_from_main(self, fn: Callable, args: tuple, kwargs: dict, where: Any = None):
        return self.submit(P.MAIN_TID, fn, args, kwargs, where)

    def make_context(self, tid: int, parent: int | None, ckpt: Any) -> TaskContext:
        return self.main_ctx

    def checkpoint(self, ctx: TaskContext, seq: int, state: Any) -> None:
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
        parts.append(f"{s['ckpt_written']} checkpoint(s) written, {s['ckpt_restored']} restored"
                     + (f", {self.store.stats.corrupt} corrupt skipped"
                        if self.store.stats.corrupt else ""))
        if self.config.resume:
            parts.append(f"resumed: {s['reused']} finished task(s) reused from the journal")
        return "clustervm report: " + "; ".join(parts)

    def service_loop(self) -> None:
        """The coordinator's background thread: poll while main is busy, check heartbeats."""
        t = self.transport
        next_check = time.monotonic() + 0.1
        last_loop = time.monotonic()
        beat_every = max(0.05, self.config.heartbeat_s / 4)
        next_beat = time.monotonic()
        while not self.stopping:
            try:
                t.service_step(0.05, spin=True)
                now = time.monotonic()
                if now >= next_beat:
                    # nodes without ULFM (MPICH) learn that the coordinator is gone only
                    # from its silence (node.COORDINATOR_SILENCE)
                    next_beat = now + beat_every
                    for n in list(self.nodes.values()):
                        if n.state in ("alive", "spare"):
                            t.post(n.rank, (P.HEARTBEAT, 0))
                if now >= next_check:
                    if now - last_loop > self.config.heartbeat_s / 2:
                        # this process itself was stalled: do not blame the nodes
                        for r in list(t.last_heard):
                            t.last_heard[r] = now
                    else:
                        self.check_heartbeats()
                    if self.journal is not None:
                        self.journal.sync()
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
