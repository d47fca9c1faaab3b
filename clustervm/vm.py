"""The user's handle on the virtual machine: what ``main(vm)`` gets on the coordinator."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from . import protocol as P
from .futures import ClusterFuture, Executor, chunks, run_chunk
from .progress import Progress
from .shared import Shared   # noqa: F401 - vm.Shared, as documented
from .task import Message, spawn_args

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger(__name__)


class NodeView(NamedTuple):
    """One rank of the VM (rank 0 is the coordinator)."""
    rank: int
    host: str
    pid: int
    state: str
    running: int
    done: int




class VM:
    """The virtual machine, as seen from ``main(vm)`` (which is task ``vm.tid``).

    PVM-style calls (spawn, send, recv, groups, notify) and futures-style calls
    (submit, map, executor) on the same nodes.
    """

    def __init__(self, coordinator: "Coordinator", argv: list[str]) -> None:
        self._c = coordinator
        self._ctx = coordinator.main_ctx
        self.argv = argv
        self._shared = 0
        self._spawned: set[int] = set()       # tids main spawned (for warn_unwaited)
        self._joined: set[int] = set()
        self._futures: set[ClusterFuture] = set()   # main's futures not settled yet
        self._warned = False

    # -- identity and state --------------------------------------------------

    @property
    def tid(self) -> int:
        """The tid of main (PVM's pvm_mytid)."""
        return P.MAIN_TID

    @property
    def nodes(self) -> list[NodeView]:
        """Every rank: rank, host, pid, state (coordinator, alive, spare, dead, left)."""
        with self._c.lock:
            return [NodeView(**d) for d in self._c.nodes_info()]

    @property
    def context(self):
        """Main's task context (for group calls such as ``vm.context.scatter(group, ...)``)."""
        return self._ctx

    @property
    def workers(self) -> int:
        """Number of worker nodes alive now."""
        return len(self._c._alive_nodes())

    @property
    def config(self):
        """The job's settings (a ``clustervm.config.Config``, read from CLUSTERVM_* variables)."""
        return self._c.config

    def tasks(self) -> list[dict]:
        """Live tasks: tid, parent, node, state, fn (as pvm_tasks)."""
        return self._ctx.tasks()

    def events(self) -> list[dict]:
        """What happened so far: NODE_DOWN, NODE_ADDED, TASK_EXIT, RESTORE events."""
        return list(self._c.events.events)

    def report(self) -> str:
        """The end-of-job report line (nodes lost, tasks re-run, checkpoints)."""
        return self._c.report()

    # -- futures -------------------------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, where: Any = None, **kwargs: Any) -> ClusterFuture:
        """Run ``fn(*args, **kwargs)`` on a node; returns a concurrent.futures.Future.

        ``where`` (reserved keyword) pins the task to a node rank, a host name or a list.
        """
        return self._track(self._c.submit(P.MAIN_TID, fn, args, kwargs, where))

    def map(self, fn: Callable, *iterables: Iterable, chunksize: int = 1, ordered: bool = True,
            timeout: float | None = None, progress: bool | None = None,
            where: Any = None) -> Iterator:
        """Like ``Executor.map``: results in order (or as completed with ``ordered=False``).

        ``chunksize`` items go to a node as one task; ``progress`` shows a live bar
        (default: on when the job runs with ``--progress``).
        """
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        end = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futs = [self._track(self._c.submit(P.MAIN_TID, fn, args, {}, where))
                    for args in zip(*iterables)]
            sizes = None
        else:
            ref = self._c.ref(fn)
            blocks = list(chunks(iterables, chunksize))
            futs = [self._track(self._c.submit(P.MAIN_TID, run_chunk, (ref, b), {}, where))
                    for b in blocks]
            sizes = [len(b) for b in blocks]
        show = self._c.config.progress if progress is None else progress
        bar = Progress(sum(sizes) if sizes else len(futs), self._c) if show else None
        return self._results(futs, sizes, ordered, end, bar)

    def _results(self, futs: list, sizes: list | None, ordered: bool, end: float | None,
                 bar: "Progress | None") -> Iterator:
        try:
            source = futs if ordered else self._completed(futs, end)
            for i, f in enumerate(source):
                remaining = None if end is None else max(0.0, end - time.monotonic())
                try:
                    value = f.result(remaining)
                except cf.TimeoutError:
                    for g in futs:
                        g.cancel()
                    raise
                except BaseException:
                    if bar:
                        bar.update(1, failed=1)
                    raise
                n = len(value) if sizes else 1
                if bar:
                    bar.update(n)
                if sizes:
                    yield from value
                else:
                    yield value
        finally:
            if bar:
                bar.close()

    def _completed(self, futs: list, end: float | None) -> Iterator:
        done: deque = deque()
        for f in futs:
            f.add_done_callback(done.append)
        for _ in range(len(futs)):
            remaining = None if end is None else max(0.0, end - time.monotonic())
            if not self._c.wait(lambda: bool(done), remaining, blocking=True):
                raise cf.TimeoutError("map: results not ready within the timeout")
            yield done.popleft()

    def _track(self, fut: ClusterFuture) -> ClusterFuture:
        """Remember ``fut`` until it succeeds, or until its error is looked at."""
        self._futures.add(fut)
        fut.add_done_callback(self._settled)
        return fut

    def _settled(self, fut: cf.Future) -> None:
        if fut.cancelled() or cf.Future.exception(fut, 0) is None:   # not .looked
            self._futures.discard(fut)

    def warn_unwaited(self) -> str | None:
        """Warn once (a log warning, with counts) about what main leaves behind unwaited:
        futures not done yet, futures whose error nobody looked at, spawned tasks still
        running and spawned tasks that failed without being joined. Called by the runtime
        right after ``main`` returns; returns the warning, or None when all was waited for."""
        if self._warned:
            return None
        self._warned = True
        futs = list(self._futures)
        pending = sum(1 for f in futs if not f.done())
        failed = sum(1 for f in futs if f.done() and not f.cancelled() and not f.looked
                     and cf.Future.exception(f, 0) is not None)
        with self._c.lock:
            running = sorted(t for t in self._spawned if t in self._c.tasks)
            crashed = sorted(t for t in self._spawned - self._joined
                             if not self._c.exits.get(t, (True,))[0])
        parts = []
        if pending:
            parts.append(f"{pending} future(s) not done (their tasks are dropped)")
        if failed:
            parts.append(f"{failed} future(s) failed and nobody looked at the error")
        if running:
            parts.append(f"{len(running)} spawned task(s) still running (killed now): "
                         f"tids {_few(running)}")
        if crashed:
            parts.append(f"{len(crashed)} spawned task(s) ended with an error nobody joined: "
                         f"tids {_few(crashed)}")
        if not parts:
            return None
        text = ("main returned with work never waited for: " + "; ".join(parts) +
                ". Wait for futures (result(), vm.map, executor.shutdown()) and join spawned "
                "tasks (vm.join) before main returns")
        log.warning("%s", text)
        return text

    def executor(self) -> Executor:
        """A ``concurrent.futures.Executor`` running on this VM."""
        return Executor(self)

    def scatter(self, obj: Any) -> Shared:
        """Store ``obj`` once on the coordinator; tasks get it with ``handle.get()``."""
        self._shared += 1
        key = f"__shared__/{self._shared}"
        self._ctx.put_info(key, obj)
        return Shared(key)

    # -- PVM-style tasks and messages ----------------------------------------

    def spawn(self, fn: Callable, /, *common: Any, count: int | None = None, where: Any = None,
              replay: bool = True, args: Sequence | None = None, checkpoint: str = "log",
              **kwargs: Any) -> list[int]:
        """Start long-lived tasks ``fn(ctx, *common, **kwargs)``; returns their tids.

        ``count`` instances (default 1), or one per item of ``args``: instance ``i``
        runs ``fn(ctx, *common, *args[i], **kwargs)`` (an item that is not a tuple is
        one argument). Each instance has ``ctx.siblings`` (these tids, in order),
        ``ctx.rank`` (its index) and ``ctx.size``, the same after a failover.
        ``replay=False`` switches off message logging for these tasks (faster for
        large messages; messages in flight to them may be lost on a failover).
        ``checkpoint="group"``: the instances checkpoint together (every one calls
        ``ctx.checkpoint`` at the same points, as an MPI collective; the messages in
        flight between them are part of it) and, when one is lost, all go back to their
        last such checkpoint; they log no message to each other and carry no log of
        theirs in checkpoints (messages from outside the group are logged by their
        senders, as in log mode, and sent again after a rollback).
        """
        count, per = spawn_args(count, args)
        tids = self._c.spawn(P.MAIN_TID, self._c.ref(fn), common, kwargs, count, where, replay,
                             per, checkpoint)
        self._spawned.update(tids)
        return tids

    def send(self, tid: int, tag: int, obj: Any) -> None:
        """Send ``obj`` to task ``tid`` with ``tag`` (as main, tid 1); see TaskContext.send."""
        self._ctx.send(tid, tag, obj)

    def mcast(self, tids: Iterable[int], tag: int, obj: Any) -> None:
        """Send ``obj`` to each of ``tids`` (as pvm_mcast)."""
        self._ctx.mcast(tids, tag, obj)

    def recv(self, source: int = P.ANY, tag: int = P.ANY, timeout: float | None = None) -> Message:
        """Wait for a message to main matching ``source`` and ``tag`` (-1: any); see TaskContext.recv."""
        return self._ctx.recv(source, tag, timeout)

    def nrecv(self, source: int = P.ANY, tag: int = P.ANY) -> Message | None:
        """A matching message if one is waiting, else None (never blocks)."""
        return self._ctx.nrecv(source, tag)

    def probe(self, source: int = P.ANY, tag: int = P.ANY) -> bool:
        """True if a matching message is waiting for main (it stays there)."""
        return self._ctx.probe(source, tag)

    def join(self, tid: int, timeout: float | None = None) -> Any:
        """Wait for spawned task ``tid``; its return value (or its exception, raised here)."""
        self._joined.add(tid)
        return self._ctx.join(tid, timeout)

    def kill(self, tid: int) -> None:
        """End task ``tid`` (stopped at its next clustervm call, as threads cannot be killed)."""
        self._ctx.kill(tid)

    def notify(self, kinds: str | Iterable[str], tids: Iterable[int] | None = None, *,
               callback: Callable[[dict], None] | None = None, tag: int | None = None) -> None:
        """Be told of TASK_EXIT / NODE_DOWN / NODE_ADDED events (as pvm_notify).

        With ``callback`` it is called with the event dict (in the VM's progress
        thread: keep it short); with ``tag`` each event arrives in main's mailbox as
        a message with that tag and source ``clustervm.SYSTEM``: receive it with
        ``recv(clustervm.SYSTEM, tag)`` (``recv(ANY, ...)`` never returns one); its
        ``kind`` is the event's kind and ``data`` the event dict.
        """
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        tids = None if tids is None else list(tids)
        if callback is not None:
            with self._c.lock:
                self._c.events.subscribe(kinds, tids, callback)
        if tag is not None:
            self._c.call("notify", P.MAIN_TID, kinds, tids, tag)
        if callback is None and tag is None:
            raise ValueError("notify needs a callback or a tag")

    def add_nodes(self, count: int) -> int:
        """Bring in ``count`` more nodes; returns how many joined.

        Spare nodes (``--spares``) come first; the rest are new node processes
        started with ``MPI_Comm_spawn``. A node that cannot be had is logged and
        the job carries on with the others."""
        return self._c.add_nodes(count)

    def __getattr__(self, name: str) -> Any:
        # groups and the VM-wide mailbox: the same calls as a task's context
        if name in _CTX_CALLS:
            return getattr(self._ctx, name)
        raise AttributeError(f"'VM' object has no attribute {name!r}")


def _few(tids: list[int], n: int = 8) -> str:
    return ", ".join(map(str, tids[:n])) + (", ..." if len(tids) > n else "")


_CTX_CALLS = {"isend", "irecv", "sendrecv", "join_group", "leave_group", "group_size", "group_tids", "group_tid", "group_inst",
              "barrier", "bcast", "reduce", "allreduce", "gather", "allgather",
              "alltoall", "reduce_scatter", "scan", "exscan",
              "freeze_group", "group_on_mpi", "put_info", "get_info", "del_info"}
