"""Ranks as threads of one Python process: a transport without MPI, with fault injection.

:class:`InProcessWorld` holds ``size`` endpoints (:class:`InProcessTransport`,
an :class:`clustervm.endpoint.Endpoint`), one per rank. A message is encoded
with :mod:`clustervm.wire` when it is sent and decoded when the receiver
handles it, exactly as on MPI: what cannot be sent fails the same way, and the
receiver never shares an object with the sender. Delivery goes through a queue
per rank; whichever thread of the rank waits handles what came
(leader/follower, as on MPI), and waiting threads sleep on a condition, woken
by arrivals and notifications (no polling loop).

Faults, as a test injects them:

- :meth:`InProcessWorld.kill` (SIGKILL): the rank's threads stop at their next
  call into the transport, for good; what it had not handled is lost, nothing
  more comes from it or reaches it, and every survivor's ``on_failure`` is told
  at its next poll, as ULFM would report the dead rank;
- :meth:`InProcessWorld.stop` (SIGSTOP): the rank's threads stop at their next
  call into the transport and its messages wait, unhandled, until
  :meth:`InProcessWorld.resume`; it sends nothing (no heartbeats), so only the
  heartbeat timeout finds it. The coordinator then ends it through
  :meth:`InProcessTransport.terminate` (a kill), unless the test made it
  :meth:`unkillable <InProcessWorld.unkillable>` (a rank whose host the
  coordinator cannot reach): then it may be resumed, and what it sends is dropped;
- :meth:`InProcessWorld.delay`: messages from and to a rank arrive that many
  seconds late (order between two ranks kept).

A thread of a rank computing outside the transport is not stopped (Python
cannot); it stops at its next send or wait. :meth:`InProcessWorld.close` ends
the world: every frozen thread goes on, sends fail and waits return False.
Frozen groups need MPI: here ``freeze_group`` keeps the group on the hub
(``group_on_mpi`` is False), as ``freeze_group(..., mpi=False)`` does.
Waits never spin (``spin`` is taken and ignored): a waiting thread sleeps on its
rank's condition, at most :data:`NAP_S` at a time.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from . import wire
from .endpoint import Counters, Handler, PeerFailed, dispatch
from .errors import ClusterVMError
from .frames import one_frame

log = logging.getLogger(__name__)

#: Longest sleep of a waiting thread between looks at its predicate: state that a
#: thread changes without notify() is seen this late at worst (never a poll loop:
#: arrivals and notifications wake the waiters at once).
NAP_S = 0.05


class _Item:
    """A message in a rank's queue: its sender, encoded form and when it may be handled."""

    __slots__ = ("src", "payload", "bufs", "nbytes", "due")

    def __init__(self, src: int, payload: bytearray, bufs: list[bytearray], due: float) -> None:
        self.src, self.payload, self.bufs, self.due = src, payload, bufs, due
        self.nbytes = len(payload) + sum(len(b) for b in bufs)


class InProcessWorld:
    """``size`` ranks in this process: rank 0 the coordinator, the others nodes."""

    def __init__(self, size: int, *, allow_pickle: bool = False) -> None:
        if size < 2:
            raise ValueError(f"a VM needs at least 2 ranks (a coordinator and a node), got {size}")
        self.size = size
        self._lock = threading.Lock()
        self._gate = threading.Condition(self._lock)   # threads of frozen ranks wait here
        self.dead: set[int] = set()
        self.stopped: set[int] = set()
        self._frozen: frozenset[int] = frozenset()     # dead | stopped, read without the lock
        self._delays: dict[int, float] = {}
        self._unkillable: set[int] = set()
        self.terminated: list[int] = []   # ranks the coordinator ended (terminate), in order
        self.closed = False
        self.endpoints = [InProcessTransport(self, r, allow_pickle) for r in range(size)]

    def transport(self, rank: int) -> "InProcessTransport":
        """The endpoint of ``rank``."""
        return self.endpoints[rank]

    # -- faults ----------------------------------------------------------------

    def kill(self, rank: int) -> None:
        """End ``rank`` as SIGKILL would (see the module docstring)."""
        self._check_rank(rank)
        with self._lock:
            if rank in self.dead:
                return
            self.dead.add(rank)
            self._frozen = frozenset(self.dead | self.stopped)
            for ep in self.endpoints:
                ep._peer_died(rank)
            self._gate.notify_all()
        log.info("in process: rank %d killed", rank)

    def stop(self, rank: int) -> None:
        """Freeze ``rank`` as SIGSTOP would, until :meth:`resume` (or a kill)."""
        self._check_rank(rank)
        with self._lock:
            self.stopped.add(rank)
            self._frozen = frozenset(self.dead | self.stopped)
        self.endpoints[rank].notify()     # its sleeping threads freeze at once
        log.info("in process: rank %d stopped", rank)

    def resume(self, rank: int) -> None:
        """Let a stopped rank go on (SIGCONT); a dead rank stays dead."""
        self._check_rank(rank)
        with self._lock:
            self.stopped.discard(rank)
            self._frozen = frozenset(self.dead | self.stopped)
            self._gate.notify_all()
        self.endpoints[rank].notify()

    def delay(self, rank: int, seconds: float) -> None:
        """Messages from and to ``rank`` arrive ``seconds`` late from now on (0: on time)."""
        self._check_rank(rank)
        if seconds < 0:
            raise ValueError(f"a delay is >= 0 seconds, got {seconds}")
        with self._lock:
            if seconds:
                self._delays[rank] = seconds
            else:
                self._delays.pop(rank, None)

    def unkillable(self, rank: int) -> None:
        """The coordinator's kill does not reach ``rank`` (as a process on a host it
        cannot signal): after being declared dead it stays as it was."""
        self._check_rank(rank)
        self._unkillable.add(rank)

    def close(self) -> None:
        """End the world: frozen threads go on, every send fails, every wait returns."""
        with self._lock:
            self.closed = True
            self._gate.notify_all()
        for ep in self.endpoints:
            ep.closed = True
            ep.notify()

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} is not in this world of {self.size} ranks "
                             f"(0 to {self.size - 1})")

    # -- moving messages -------------------------------------------------------

    def _route(self, src: int, dest: int, payload: bytearray, bufs: list[bytearray]) -> bool:
        """Queue a message for ``dest``; False if ``dest`` is dead. A sender killed on
        the way stops here (its message is lost)."""
        with self._lock:
            while src in self._frozen and not self.closed:
                self._gate.wait()          # stopped (or killed) between its call and here
            if self.closed or src in self.dead:
                return dest not in self.dead
            if dest in self.dead:
                return False
            d = self._delays
            delay = max(d.get(src, 0.0), d.get(dest, 0.0)) if d else 0.0
            self.endpoints[dest]._put(_Item(src, payload, bufs, 0.0), delay)
        return True

    def _wait_gate(self, rank: int) -> None:
        """Hold a thread of a stopped or dead rank until it may go on."""
        with self._lock:
            while rank in self._frozen and not self.closed:
                self._gate.wait()


class InProcessTransport:
    """One rank's endpoint in an :class:`InProcessWorld` (see the module docstring)."""

    #: no MPI here: frozen groups stay on the hub
    mpi_world = False

    def __init__(self, world: InProcessWorld, rank: int, allow_pickle: bool = False) -> None:
        self.world = world
        self.rank = rank
        self.size = world.size
        self.world_size = world.size
        self.spawned = False
        self.allow_pickle = allow_pickle
        self.closed = False
        self.failed: set[int] = set()
        self.ignored: set[int] = set()
        self.links: dict[int, Any] = {}
        self.last_heard: dict[int, float] = {}
        self.handler: Handler = lambda src, msg: None
        self.on_failure: Callable[[set[int]], None] = lambda ranks: None
        self.counters = Counters()
        self._cond = threading.Condition()
        self._inbox: deque[_Item] = deque()
        self._delayed = 0                 # items in the inbox that are not due at once
        self._last_due: dict[int, float] = {}
        self._notices: set[int] = set()   # ranks found dead, for on_failure at the next poll
        self._changes = 0                 # bumped on every change a waiter may care about
        self._token = threading.Lock()
        self._user_waiters = 0
        self._bg_waiters = 0
        self._busy = False

    def __repr__(self) -> str:
        return f"<InProcessTransport rank {self.rank} of {self.size}>"

    # -- sending -----------------------------------------------------------------

    def _gate(self) -> None:
        if self.rank in self.world._frozen and not self.world.closed:
            self.world._wait_gate(self.rank)

    def _encode(self, msg: Any) -> tuple[bytearray, list[bytearray]]:
        payload, bufs = wire.dumps(msg, allow_pickle=self.allow_pickle)
        # copies, as MPI makes: the receiver shares nothing with the sender
        return bytearray(payload), [bytearray(memoryview(b).cast("B")) for b in bufs]

    def _transmit(self, dest: int, msg: Any) -> None:
        """Encode and queue ``msg`` for ``dest``; PeerFailed if it is dead or unknown."""
        if dest in self.failed or self.closed or not 0 <= dest < self.size:
            raise PeerFailed(dest)
        payload, bufs = self._encode(msg)
        if not self.world._route(self.rank, dest, payload, bufs):
            self._report_failed({dest})      # as a send to a dead rank fails under ULFM
            raise PeerFailed(dest)
        c = self.counters
        c.msgs_out += 1
        c.bytes_out += len(payload) + sum(len(b) for b in bufs)

    def frame_of(self, msg: Any, flat_at: int | None = None) -> bytes | None:
        return one_frame(msg, flat_at, self.allow_pickle, 1 << 31)

    def send(self, dest: int, msg: Any, meanwhile: Callable[[], Any] | None = None,
             settle: bool = True, flat_at: int | None = None,
             frame: bytes | memoryview | None = None) -> None:
        # (``frame`` is ``msg`` encoded: here the message goes as the wire encodes it)
        self._gate()
        self._transmit(dest, msg)
        if meanwhile is not None:
            meanwhile()

    def post(self, dest: int, msg: Any, wake: bool = True) -> bool:
        self._gate()
        try:
            self._transmit(dest, msg)
        except PeerFailed:
            return False
        return True

    def isend(self, dest: int, msg: Any) -> Any:
        self._gate()
        self._transmit(dest, msg)
        return None                      # queued: it has left already

    def sent(self, handle: Any) -> bool:
        return True

    def broadcast(self, dests: Iterable[int], msg: Any) -> None:
        for d in dests:
            self.post(d, msg)

    def flush(self, timeout: float = 5.0) -> bool:
        self._gate()
        return True                      # nothing is ever left half sent

    # -- receiving ---------------------------------------------------------------

    def _put(self, item: _Item, delay: float) -> None:
        """Queue ``item`` (the world's lock is held), ``delay`` seconds late; never
        before an earlier message of the same sender."""
        with self._cond:
            last = self._last_due.get(item.src, 0.0)
            if delay or last:
                now = time.monotonic()
                due = now + delay if delay else 0.0
                if last > now:
                    due = max(due, last)
                else:
                    self._last_due.pop(item.src, None)
                if due:
                    item.due = due
                    self._last_due[item.src] = due
                    self._delayed += 1
            self._inbox.append(item)
            self._changes += 1
            self._cond.notify_all()

    def _peer_died(self, rank: int) -> None:
        """The world killed ``rank`` (its lock is held): forget its messages; the others
        are told at their next poll."""
        with self._cond:
            if rank == self.rank:
                self._inbox.clear()
                self._delayed = 0
            else:
                kept = deque(i for i in self._inbox if i.src != rank)
                if len(kept) != len(self._inbox):
                    self._inbox = kept
                    self._delayed = sum(1 for i in kept if i.due)
                self._notices.add(rank)
            self._changes += 1
            self._cond.notify_all()

    def _take(self, limit: int) -> tuple[list[_Item], set[int]]:
        """The messages that are due (at most ``limit``, in order) and the failures to report."""
        with self._cond:
            notices, self._notices = self._notices, set()
            box = self._inbox
            if not self._delayed:
                n = min(limit, len(box))
                return [box.popleft() for _ in range(n)], notices
            now = time.monotonic()
            taken: list[_Item] = []
            kept: deque[_Item] = deque()
            for item in box:
                if len(taken) < limit and item.due <= now:
                    taken.append(item)
                    if item.due:
                        self._delayed -= 1
                else:
                    kept.append(item)
            self._inbox = kept
            return taken, notices

    def poll(self, limit: int = 256) -> int:
        self._gate()
        items, notices = self._take(limit)
        if notices:
            self._report_failed(notices)
        self._busy = False
        c = self.counters
        for item in items:
            self.last_heard[item.src] = time.monotonic()
            c.msgs_in += 1
            c.bytes_in += item.nbytes
            self._deliver(item)
        if items:
            self.notify()
        return len(items)

    def _deliver(self, item: _Item) -> None:
        """Decode and handle a message, as on MPI (see :func:`endpoint.dispatch`)."""
        if item.src not in self.ignored and dispatch(self.handler, item.src, item.payload,
                                                     item.bufs, self.allow_pickle):
            self._busy = True

    def _report_failed(self, ranks: set[int]) -> None:
        new = ranks - self.failed
        if new:
            self.failed |= new
            log.info("rank %d: ranks %s are dead", self.rank, sorted(new))
            try:
                self.on_failure(new)
            except Exception:   # noqa: BLE001
                log.exception("failure handler raised")

    def _ready(self) -> bool:
        """Is there something to handle now (called with the condition held)?"""
        if self._notices:
            return True
        if not self._delayed:
            return bool(self._inbox)
        now = time.monotonic()
        return any(i.due <= now for i in self._inbox)

    def _next_due(self) -> float | None:
        """Seconds until the next delayed message is due (condition held), or None."""
        if not self._delayed:
            return None
        return max(0.0, min(i.due for i in self._inbox if i.due) - time.monotonic())

    # -- waiting -----------------------------------------------------------------

    def try_poll(self, timeout: float = 0.0) -> int | None:
        self._gate()
        token = self._token
        if not (token.acquire(timeout=timeout) if timeout > 0 else token.acquire(False)):
            return None
        try:
            return self.poll()
        finally:
            token.release()
            with self._cond:
                if self._ready():    # it came while this thread polled: wake another
                    self._changes += 1
                    self._cond.notify_all()

    @contextmanager
    def foreground(self) -> Iterator[None]:
        with self._cond:
            self._user_waiters += 1
        try:
            yield
        finally:
            self._left_foreground()

    def _left_foreground(self) -> None:
        with self._cond:
            self._user_waiters -= 1
            if not self._user_waiters:     # background waiters may poll again
                self._changes += 1
                self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float | None = None,
             background: bool = False, spin: bool = False,
             claim: Callable[[Any], bool] | None = None) -> bool:
        # (claim is not used: every message goes to the handler, as Endpoint.wait allows)
        if predicate():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if background:
                self._bg_waiters += 1
            else:
                self._user_waiters += 1
        try:
            while True:
                self._gate()
                seen = self._changes
                if predicate():
                    return True
                left = self._left(deadline)
                if left == 0.0:
                    return False
                # an idle worker lets a thread that waits for a message poll first
                if not (background and self._user_waiters):
                    if self.try_poll():
                        continue
                    if predicate():
                        return True
                self._sleep(seen, left)
        finally:
            if background:
                with self._cond:
                    self._bg_waiters -= 1
            else:
                self._left_foreground()

    def _left(self, deadline: float | None) -> float | None:
        """Seconds a waiter has left: None without a deadline, 0.0 once past it or closed."""
        if self.closed:
            return 0.0
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _sleep(self, seen: int, left: float | None) -> None:
        """Sleep until something changes (``seen`` is the change count the caller
        looked at), a delayed message is due, or ``left`` seconds pass."""
        with self._cond:
            if self._changes != seen:
                return
            nap = NAP_S if left is None else min(NAP_S, left)
            due = self._next_due()
            if due is not None:
                nap = min(nap, due)
            self._cond.wait(nap)

    def service_step(self, max_sleep: float, spin: bool = False) -> None:
        self._gate()
        seen = self._changes
        if self.closed:
            time.sleep(max_sleep)
            return
        if not self._bg_waiters and self.try_poll():
            return
        self._sleep(seen, max_sleep)

    def notify(self) -> None:
        with self._cond:
            self._changes += 1
            self._cond.notify_all()

    def notify_background(self) -> None:
        self.notify()

    def foreground_done(self) -> None:
        self.notify()

    # -- failures and the end ------------------------------------------------------

    def declare_dead(self, rank: int) -> None:
        self.ignored.add(rank)
        self.failed.add(rank)

    def terminate(self, rank: int) -> bool:
        """Kill ``rank`` (unless the test made it unkillable); never a process signal:
        every rank is this process."""
        w = self.world
        w.terminated.append(rank)
        if rank not in w._unkillable:
            w.kill(rank)
        return True

    def add_link(self, rank: int, inter: Any, init: dict) -> None:
        raise ClusterVMError("in-process ranks are threads of one process: no node can be "
                             "started with MPI_Comm_spawn here; start the world with more "
                             "ranks (or spares) instead")

    def bell(self) -> tuple[int, list[str]] | None:
        return None             # threads: a delivery wakes the waiters itself

    def knock(self, port: int, addrs: list[str]) -> None:
        pass

    def bells(self) -> dict[int, tuple[str, int]]:
        return {}

    def find_bells(self, ask: Callable[[int], None]) -> None:
        pass

    def learn_bell(self, rank: int, addr: tuple[str, int] | list | None) -> None:
        pass

    def close(self, timeout: float = 1.0) -> None:
        self.closed = True
        self.notify()
