"""Moving messages between ranks: frames over MPI, one progress engine per process.

A message is any wire-encodable object; on the wire it is a first frame on ``TAG_MSG``
and, for arrays and big payloads, parts on a tag of its own (the layout, and its
checks of malformed input: :mod:`clustervm.frames`). A bad frame, a part that does
not fit or does not come, or a payload the codec refuses is logged as an error naming
the sender and dropped, and the loop goes on.

Progress: one thread at a time owns MPI, the holder of the progress token
(leader/follower): whichever thread is waiting takes the token, probes MPI and
runs the handlers of what arrives itself, so a reply reaches the waiting
thread without a thread switch (and the message a task waits for is offered to
its ``claim`` first, which takes it without the handler: Site.claimer). A
waiting task handles one message a poll and
looks at what it waits for right after (no second probe before it sees its
message); for its first 20 us, if its last wait was about as short, it probes
in a tight loop (a reply due within microseconds is seen sooner); a waiter that
sleeps (past the spin) counts itself a sleeper, and a delivery notifies the
sleepers only: nobody is notified when nobody sleeps.
Every point-to-point MPI call (receives, and
the Isends of every message) is made by the token holder: a thread that sends
puts the message in the outbox and sends it itself when the token is free;
otherwise the holder sends it before it lets go (and looks again after). The
outbox is FIFO, so one thread's messages leave in order; ``send`` returns once
its message is Isent and, when it carries the caller's arrays, once its Isends
are complete (driving progress meanwhile, so two ranks sending each other large
messages cannot block each other); a message without arrays is completed by a
later poll. Outside the token, only
``MPI_Comm_spawn`` (the coordinator's replacement thread) and the frozen
groups' collectives on their own communicators (clustervm.fastgroup) call MPI,
which is why the ranks still ask for MPI_THREAD_MULTIPLE. The background service thread polls only
while no user thread is waiting. An idle loop spins for ``spin_ms`` after the
last message, then sleeps with a growing back-off up to ``idle_sleep_ms``:
fast while busy, next to no CPU when idle. Background pollers of a rank that has
had no traffic (heartbeats aside) for a quarter second back off further, up to
``deep_idle_sleep_ms``: the first message after a long quiet waits that long at
most, unless its sender also rings the rank's doorbell (clustervm.doorbell: any
rank on the same host; the coordinator and its nodes across hosts), whose thread
wakes the pollers at once. Threads
waiting for a message or a result keep the short back-off. In that deep idle one
thread per rank wakes up, the service loop (see ``service_step``).

Nodes started later with ``MPI_Comm_spawn`` are outside COMM_WORLD: each is
reached over its own intercommunicator with the coordinator (a *link*) and has
a virtual rank after the world's. Every other rank reaches it, and it reaches
them, through the coordinator: such a message travels as one self-contained
*routed* frame (sender, final destination, payload and buffers) that rank 0
forwards unopened.

Failures: with ULFM, a dead peer surfaces as ``MPI_ERR_PROC_FAILED`` from a
probe or a send; the transport acknowledges it and reports the dead ranks to
``on_failure``. Ranks declared dead by heartbeat are *ignored*: whatever they
still send is dropped.
"""
from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from mpi4py import MPI

from . import wire
from .blocks import NUMPY_BUFFER_MIN, received_buffer
from .config import Config
from .doorbell import host_addresses, open_doorbell
from .endpoint import CLAIMED, Counters, Handler, PeerFailed, dispatch, handle
from .errors import ConfigError
from .frames import (BUNDLE_MAX, INLINE_MAX, KIND_BUFFERS, KIND_BUNDLED, KIND_FLAT,
                     KIND_INLINE, KIND_LONG, KIND_PACKED, KIND_ROUTED, LONG, PACK_MAX, PREFIX,
                     ROUTE, TAG_BUF0, TAG_BUF_SPAN, Frame, FrameError, flat, flat_message,
                     one_frame, packed_parts, padded, parse_frame, split, unbundled,
                     whole_frame)

log = logging.getLogger(__name__)

TAG_MSG = 1
_BACKGROUND_PAUSE_S = 0.0002   # background pollers sleep at least this between polls
#: After an empty poll a waiter sleeps this fraction of the time since the last traffic
#: (capped, see _pause): a message after a quiet spell of t s waits at most that part of t.
#: Background pollers (idle workers, service loops) back off faster: every wake-up costs
#: 50-150 us of CPU on this VM, and the first second after traffic cost an idle rank as
#: much as the next nine (measured).
_FOREGROUND_GROWTH = 0.05
_BACKGROUND_GROWTH = 0.1
_DEEP_IDLE_AFTER_S = 0.25      # no traffic this long: background pollers back off further
#: After QUIET work (see endpoint.QUIET) a loop does not spin: it looks again after 1 ms,
#: then after as long as it has been since, at most 4 ms, for 50 ms (unless its usual
#: back-off is shorter): five wake-ups between two of heat2d's checkpoints instead of
#: sixty, and a checkpoint acknowledged within 4 ms, before a group member needs it.
_QUIET_PAUSE_S = 0.001
_QUIET_PAUSE_MAX_S = 0.004
_QUIET_WINDOW_S = 0.05
_DEEP_WORKER_WAIT_S = 5.0      # idle workers of a rank in deep idle look again this often
#                                (the service loop polls for them; work arriving wakes them)
#: An idle worker while a task of its rank polls (or began to within this long) looks
#: again this often: no sooner (each look takes the GIL from the task), and no later,
#: for what comes to the rank once the task computes is seen by nobody else. A sender
#: rings no doorbell within doorbell.RING_AFTER_S (5 ms) of its last message, counting
#: on the rank to look soon: with 5 s here (and deep idle's 0.25 s polls behind it), a
#: spawn right after the rank's last task ended waited 250-330 ms.
_PARKED_S = 0.02
_COUNT_MAX = (1 << 31) - 1       # largest count of one MPI call (no large-count calls here)
_PART_WAIT_S = 60.0              # longest wait for the next part of a frame whose head came
_DRAIN_WAIT_S = 0.5              # parts of a refused frame are dropped until this long silent
_LONG_RECV = 512 << 10           # parts above this are received while crediting silence
_CREDIT_EVERY_S = 0.05
_KEEPALIVE_S = 0.25                # a poller held up by one frame says it is alive this often
TAG_INIT = 3                     # the coordinator's first message to a spawned node
HUB = 0                          # the rank that forwards routed frames (the coordinator)
_FAILURE_CLASSES = {MPI.ERR_PROC_FAILED, getattr(MPI, "ERR_PROC_FAILED_PENDING", -1),
                    getattr(MPI, "ERR_REVOKED", -1)}
_testall = MPI.Request.Testall   # (a seam: tests without MPI put a fake here)
_ANY_SOURCE, _BYTE, _monotonic = MPI.ANY_SOURCE, MPI.BYTE, time.monotonic
_LIGHT_MAX = 32     # requests of messages sent at once kept before the sender completes them
_HOT_SPIN_S = 20e-6   # a foreground waiter polls this long without yielding its core
#                       (and probes in a tight loop meanwhile if its last wait was short)
_SEND_SPINS = 200   # tests of a waited-for send's requests before it waits as a poller

__all__ = ["Transport", "PeerFailed", "Counters", "Handler", "FrameError", "Frame",
           "parse_frame", "is_failure", "memory_limit", "HUB", "TAG_MSG", "TAG_INIT"]


def is_failure(exc: BaseException) -> bool:
    return isinstance(exc, MPI.Exception) and exc.Get_error_class() in _FAILURE_CLASSES


def memory_limit() -> int:
    """Largest message a rank accepts: its physical memory (a claim beyond is refused)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


class _Out:
    """One outgoing message: its frames, where they go, and how far it got."""
    __slots__ = ("dest", "comm", "peer", "via", "head", "bufs", "tag", "head_tag", "reqs",
                 "tracked", "patient", "done", "failed")

    def __init__(self, dest: int, comm: Any, peer: int, via: int | None, head: Any,
                 bufs: list, tag: int, head_tag: int = TAG_MSG) -> None:
        self.dest, self.comm, self.peer, self.via = dest, comm, peer, via
        self.head, self.bufs, self.tag, self.head_tag = head, bufs, tag, head_tag
        self.reqs: list | None = None
        self.tracked = False      # a sender waits for it (send, isend): set done promptly
        self.patient = False      # ... after work of its own (send's meanwhile): no spin
        self.done = False         # its Isends completed (or it failed)
        self.failed = False


class _Foreground:
    """Transport.foreground's context (a class: a generator's costs 1 us, this 0.35)."""
    __slots__ = ("waiters", "me")

    def __init__(self, waiters: list[int]) -> None:
        self.waiters = waiters

    def __enter__(self) -> None:
        self.me = threading.get_ident()
        self.waiters.append(self.me)

    def __exit__(self, *exc: object) -> None:
        self.waiters.remove(self.me)


class Transport:
    """Frames over one MPI communicator (plus links to spawned nodes), with
    leader/follower progress (a :class:`clustervm.endpoint.Endpoint`)."""

    #: the ranks are processes of one MPI job (frozen groups build communicators of them)
    mpi_world = True

    def __init__(self, comm: MPI.Comm, *, spin_ms: float = 5.0, idle_sleep_ms: float = 10.0,
                 deep_idle_sleep_ms: float = 250.0,
                 allow_pickle: bool = False, rank: int | None = None,
                 max_chunk_bytes: int | None = None, doorbell: bool = False) -> None:
        if max_chunk_bytes is None:   # CLUSTERVM_MAX_CHUNK_BYTES, on every rank alike
            max_chunk_bytes = Config.from_env().max_chunk_bytes
        if not 1 <= max_chunk_bytes <= _COUNT_MAX:
            raise ConfigError(f"CLUSTERVM_MAX_CHUNK_BYTES={max_chunk_bytes} is out of range: "
                              f"set it between 1 and {_COUNT_MAX} (MPI counts are 32-bit) "
                              "or unset it")
        #: largest MPI message this rank sends; bigger buffers go in chunks
        self.max_chunk = max_chunk_bytes
        #: largest message this rank accepts (bytes a frame may announce)
        self.max_message = memory_limit()
        comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.comm = comm
        #: on a spawned node, ``comm`` is the intercommunicator to the coordinator
        self.spawned = rank is not None
        self.rank = comm.Get_rank() if rank is None else rank
        self.world_size = 0 if self.spawned else comm.Get_size()
        self.size = max(self.world_size, self.rank + 1)
        self.links: dict[int, MPI.Intercomm] = {}     # spawned node -> its link (on rank 0)
        # where messages come in: (communicator, None) gives the source rank as is,
        # (link, rank) is the one peer of a link
        self._inbound: list[tuple[MPI.Comm, int | None]] = [
            (comm, HUB if self.spawned else None)]
        self.allow_pickle = allow_pickle
        self.handler: Handler = lambda src, msg: None
        self.on_failure: Callable[[set[int]], None] = lambda ranks: None
        #: called every _KEEPALIVE_S while this poller is held up by one long frame (a
        #: node sends its heartbeat: a 200 MB receive must not make it look dead)
        self.keepalive: Callable[[], None] | None = None
        self._keepalive_at = 0.0
        self.failed: set[int] = set()     # dead by ULFM (or declared dead)
        self.ignored: set[int] = set()    # declared dead: drop what they send
        self.last_heard: dict[int, float] = {}
        self.counters = Counters()
        self._spin_s = spin_ms / 1000.0
        self._idle_max_s = idle_sleep_ms / 1000.0
        self._deep_max_s = max(idle_sleep_ms, deep_idle_sleep_ms) / 1000.0
        self._token = threading.RLock()          # held by the one thread calling MPI now
        self._owner: int | None = None           # that thread (None: nobody)
        self._outbox: deque[_Out] = deque()      # messages waiting for the token
        self._cond = threading.Condition()       # foreground waiters sleep here
        self._bg_cond = threading.Condition()    # idle workers and the service thread
        self._bg_poller: int | None = None       # the background thread polling now
        self._deep_poller: int | None = None     # the service thread, polling in deep idle
        self._bg_waiters = 0                     # idle workers waiting for work
        self._turn_waiters = 0                   # background threads waiting for a turn
        self._busy = False                       # a poll handled more than heartbeats
        self._quiet = False                      # ... or only QUIET work and heartbeats
        self._user_waiters: list[int] = []       # foreground threads in wait() (no lock:
        #                                          list.append/remove are atomic)
        self._fg_at = 0.0                        # when the last foreground wait began
        self._sleepers = 0                       # foreground waiters asleep on _cond
        self._short_waits = True                 # the last foreground wait was short
        #: what the waiting token holder takes for itself (see Endpoint.wait)
        self._claim: Callable[[Any], bool] | None = None
        self._wakeups = 0                        # notify()s that found a sleeper
        self._pending: deque[_Out] = deque()      # Isent, not complete (token holder only)
        #: requests of small messages sent by their sender at once (see _send_now)
        self._light: deque[MPI.Request] = deque()
        #: long receives given up (their sender declared dead): kept for MPI to finish
        self._abandoned: list[tuple[MPI.Request, Any]] = []
        self._bufseq = itertools.count()
        self._status = MPI.Status()
        #: the last message that makes a waiting loop spin, and the last of any work (a
        #: loop goes into deep idle after none for _DEEP_IDLE_AFTER_S)
        self._last_activity = self._last_work = time.perf_counter()
        self.closed = False
        #: wakes this rank's pollers when another rank sends after a quiet spell, and
        #: rings theirs (clustervm.doorbell); None: found at the next poll
        self._bell = open_doorbell(self.rank, self._rung) if doorbell and not self.spawned \
            else None

    # -- sending -------------------------------------------------------------

    def _frames(self, msg: Any) -> tuple[bytes, list[Any], int]:
        return self._frames_of(*wire.dumps(msg, allow_pickle=self.allow_pickle))

    def _frames_of(self, payload: bytes, bufs: list[Any]) -> tuple[Any, list[Any], int]:
        """The first frame, the parts and their tag of an encoded message (small arrays
        packed into the first frame: no parts)."""
        whole = whole_frame(payload, bufs)
        if whole is not None:
            return whole, [], 0
        if len(payload) > INLINE_MAX:
            bufs = [memoryview(payload), *bufs]
            inline = b""
            kind_payload_oob = 1
        else:
            inline = payload
            kind_payload_oob = 0
        tag = self._new_tag()
        sizes = [memoryview(b).nbytes for b in bufs]
        small, bundled = [], 0
        for n in sizes:                 # the small ones, up to BUNDLE_MAX in all
            inb = n < PACK_MAX and bundled + n <= BUNDLE_MAX
            small.append(inb)
            bundled += n if inb else 0
        if small.count(True) > 1:       # one part for the small ones, a copy
            bundle = b"".join(padded(b for b, inb in zip(bufs, small) if inb))
            head = (PREFIX.pack(KIND_BUNDLED, len(bufs), tag)
                    + struct.pack(f"<B{len(sizes)}Q", kind_payload_oob, *sizes)
                    + bytes(small) + inline)
            return head, [bundle, *(b for b, inb in zip(bufs, small) if not inb)], tag
        head = (PREFIX.pack(KIND_BUFFERS, len(bufs), tag)
                + struct.pack(f"<B{len(sizes)}Q", kind_payload_oob, *sizes) + inline)
        return head, bufs, tag

    def _new_tag(self) -> int:
        return TAG_BUF0 + next(self._bufseq) % TAG_BUF_SPAN

    def _chunked(self, head: Any, bufs: list[Any], tag: int) -> tuple[Any, list[Any], int]:
        """The MPI messages of a frame: a first frame no larger than ``max_chunk``, then
        the parts on ``tag``, each buffer split into chunks of ``max_chunk`` bytes."""
        limit = self.max_chunk
        if len(head) <= limit and all(memoryview(b).nbytes <= limit for b in bufs):
            return head, bufs, tag
        parts: list[Any] = []
        if len(head) > limit:       # announced by a long frame, sent in chunks first
            if not tag:
                tag = self._new_tag()
            parts.extend(split(head, limit))
            head = LONG.pack(KIND_LONG, len(head), tag)
            self.counters.chunked_out += 1
        for b in bufs:
            chunks = split(b, limit)
            parts.extend(chunks)
            if len(chunks) > 1:
                self.counters.chunked_out += 1
        return head, parts, tag

    def _path(self, dest: int) -> tuple[MPI.Comm, int, int | None]:
        """How to reach ``dest``: (communicator, its rank there, link rank or None).

        Raises :class:`PeerFailed` for a rank nobody can reach."""
        if not self.spawned and dest < self.world_size:
            return self.comm, dest, None
        link = self.links.get(dest)
        if link is not None:
            return link, 0, dest
        if self.spawned and dest == HUB:
            return self.comm, 0, HUB
        raise PeerFailed(dest)

    def _routed(self, dest: int) -> bool:
        """Does a message to ``dest`` go through the hub (one end is a spawned node)?"""
        if self.rank == HUB or dest == HUB:
            return False
        return self.spawned or dest >= self.world_size

    def _prepare(self, dest: int, msg: Any) -> "_Out":
        """Encode ``msg`` for ``dest`` (no MPI call): the frames and how they go."""
        if dest in self.failed or self.closed:
            raise PeerFailed(dest)
        if not self.spawned and 0 <= dest < self.world_size:   # a world rank: direct
            comm, peer, via = self.comm, dest, None
        elif self._routed(dest):
            comm, peer, via = self._path(HUB)
            head, bufs, tag = self._chunked(self._routed_frame(dest, msg), [], 0)
            return _Out(dest, comm, peer, via, head, bufs, tag)
        else:
            comm, peer, via = self._path(dest)
        head, bufs, tag = self._frames(msg)
        if bufs or len(head) > self.max_chunk:
            head, bufs, tag = self._chunked(head, bufs, tag)
        return _Out(dest, comm, peer, via, head, bufs, tag)

    def _routed_frame(self, dest: int, msg: Any) -> bytes:
        payload, bufs = wire.dumps(msg, allow_pickle=self.allow_pickle)
        views = [memoryview(b).cast("B") for b in bufs]
        head = (ROUTE.pack(KIND_ROUTED, self.rank, dest, len(views))
                + struct.pack(f"<{len(views) + 1}Q", len(payload), *(v.nbytes for v in views)))
        return b"".join([head, payload, *views])

    # Only the thread that holds the progress token calls MPI for point-to-point
    # traffic. A thread that wants to send puts the message in the outbox and sends
    # it itself if the token is free; otherwise the holder sends it before it lets
    # go (and checks the outbox again after, so nothing waits for the next poll).
    # The outbox is FIFO, so messages of one thread leave in the order it sent them.

    def frame_of(self, msg: Any, flat_at: int | None = None) -> bytes | None:
        """See Endpoint.frame_of (frames.one_frame)."""
        return one_frame(msg, flat_at, self.allow_pickle, self.max_chunk)

    def send(self, dest: int, msg: Any, meanwhile: Callable[[], Any] | None = None,
             settle: bool = True, flat_at: int | None = None,
             frame: bytes | memoryview | None = None) -> None:
        """Send ``msg`` to rank ``dest``; returns when the caller may reuse its arrays.

        Raises :class:`PeerFailed` if ``dest`` is dead (or the transport is closed).
        ``meanwhile``: called once the message is handed over, before waiting for its
        arrays to leave (the replay log's copy of a big array overlaps its transfer).
        ``settle=False``: a message without the caller's arrays is left in the outbox
        when another thread holds the token (it sends it before it lets go) instead of
        waiting for that thread to Isend it (see Endpoint.send). ``flat_at``: ``msg``
        is a tuple of ints but for its item there, which may travel flat (frames.flat).
        ``frame``: ``msg``'s frame, made by :meth:`frame_of` (used to a world rank).
        """
        if 0 <= dest < self.world_size:      # a world rank (none on a spawned node): direct
            if dest in self.failed or self.closed:
                raise PeerFailed(dest)
            if self._bell is not None:       # _wake inlined: dest is a world rank already
                self._bell.sending(dest)
            head = frame if frame is not None else None if flat_at is None else flat(msg, flat_at)
            if head is not None and len(head) <= self.max_chunk:
                bufs = []
            else:
                payload, bufs = wire.dumps(msg, allow_pickle=self.allow_pickle)
                if not bufs and len(payload) <= INLINE_MAX and len(payload) < self.max_chunk:
                    head = b"\x00" + payload               # the common case, inlined
                else:
                    head, bufs, tag = self._frames_of(payload, bufs)
            if not bufs and len(head) <= self.max_chunk:     # one frame, our own copy
                if not self._outbox and self._send_now(dest, head):
                    if meanwhile is not None:
                        meanwhile()
                    return
                out = _Out(dest, self.comm, dest, None, head, [], 0)
            else:
                out = _Out(dest, self.comm, dest, None, *self._chunked(head, bufs, tag))
        else:
            out = self._prepare(dest, msg)
            self._wake(dest)
        out.tracked = bool(out.bufs)         # the caller's arrays are in flight
        out.patient = meanwhile is not None   # it has work to do before it waits
        self._hand(out)
        if meanwhile is not None:
            meanwhile()
        if not (settle or out.tracked or out.failed):
            return
        if not _far_enough(out):
            if self._owner == threading.get_ident():
                self._finish_owned(out)      # in a handler: no nested poll
            else:               # drive progress meanwhile (a big send needs its receiver)
                self.wait(lambda: _far_enough(out) or dest in self.ignored)
        if out.failed or not _far_enough(out):   # the peer died, was declared dead, or we closed
            raise PeerFailed(dest)

    def _send_now(self, dest: int, frame: bytes | bytearray | memoryview) -> bool:
        """Isend a small first frame to world rank ``dest`` at once if the token is free
        (the sender's own path: no outbox, no _Out; its request is completed later by
        whoever holds the token). False if it is not: the caller goes through the outbox.
        Raises PeerFailed if MPI says ``dest`` is dead."""
        token = self._token
        if not token.acquire(False):
            return False
        try:
            self._isend_light(dest, frame)
            if self._outbox:         # handed over while this thread held the token
                self._send_outbox()
        finally:
            token.release()
        if self._outbox:
            self._try_flush()
        return True

    def _isend_light(self, dest: int, frame: bytes | bytearray | memoryview) -> None:
        """Isend a small first frame to world rank ``dest``, its request kept with the
        others completed in bulk (the caller holds the token). Raises PeerFailed."""
        try:
            req = self.comm.Isend([frame, _BYTE], dest, TAG_MSG)
        except MPI.Exception as exc:
            if not is_failure(exc):
                raise
            self._path_failed(None)
            raise PeerFailed(dest) from None
        c = self.counters
        c.msgs_out += 1
        c.bytes_out += len(frame)
        light = self._light
        light.append(req)
        if len(light) > _LIGHT_MAX:
            self._complete_light()

    def post(self, dest: int, msg: Any, wake: bool = True) -> bool:
        """Send without blocking (for handlers); the transport completes it later.

        Returns False (and drops the message) if ``dest`` is known to be dead.
        ``wake``: ring ``dest``'s doorbell if it may be idle (not for a heartbeat).
        """
        try:
            if 0 <= dest < self.world_size and not self._outbox:
                # a small one leaves at once, as a task's send does, not through the
                # outbox: from a handler (this thread polls, holding the token) or while
                # the token is free (_send_now; a group checkpoint's MARK: 10 -> 7 us)
                if dest in self.failed or self.closed:
                    return False
                payload, bufs = wire.dumps(msg, allow_pickle=self.allow_pickle)
                if not bufs and len(payload) <= INLINE_MAX and len(payload) < self.max_chunk:
                    if wake and self._bell is not None:
                        self._bell.sending(dest)
                    frame = b"\x00" + payload
                    if self._owner == threading.get_ident():
                        self._isend_light(dest, frame)
                        return True
                    if self._send_now(dest, frame):
                        return True
                    out = _Out(dest, self.comm, dest, None, frame, [], 0)
                    wake = False        # rung above
                else:
                    out = _Out(dest, self.comm, dest, None,
                               *self._chunked(*self._frames_of(payload, bufs)))
            else:
                out = self._prepare(dest, msg)
        except PeerFailed:
            return False
        if wake:
            self._wake(dest)
        self._hand(out)
        return not out.failed

    def isend(self, dest: int, msg: Any) -> Any:
        """:meth:`post`, raising PeerFailed instead of returning False; the handle it
        returns tells :meth:`sent` when the message has left."""
        out = self._prepare(dest, msg)
        out.tracked = True
        self._wake(dest)
        self._hand(out)
        if out.failed:
            raise PeerFailed(dest)
        return out

    def sent(self, handle: Any) -> bool:
        """Has the message :meth:`isend` gave ``handle`` for left (its Isends done)?"""
        if not handle.done:
            self._try_flush()      # no poller about: complete what can be completed
        return handle.done

    def _wake(self, dest: int) -> None:
        """A message goes to ``dest``: ring its doorbell if it may be idle (world ranks:
        a spawned node's messages go through the coordinator)."""
        bell = self._bell
        if bell is not None and 0 <= dest < self.world_size:
            bell.sending(dest)

    def _hand(self, out: "_Out") -> None:
        self._outbox.append(out)
        self._try_flush()

    def _try_flush(self) -> None:
        """Send the outbox now if the token is free (or ours); else its holder will."""
        token = self._token
        while True:
            if not token.acquire(False):
                return
            owner = self._send_owned()
            # reentrant (a handler's send): the outer holder goes on; else once more
            # if another thread handed a message over while this one held the token
            if owner is not None or not self._outbox:
                return

    def _send_owned(self) -> int | None:
        """With the token just acquired: complete what can be of what was sent before, send
        the outbox, let go of the token; the previous owner (not None: this thread held
        it already). What is sent now is completed later (a poll, the next send), off
        the sender's path, unless its sender waits for it (``tracked``)."""
        owner, self._owner = self._owner, threading.get_ident()
        box = self._outbox
        try:
            if self._pending:
                self._complete_pending()
            if self._light:
                self._complete_light()
            while box:
                self._isend(box.popleft())
        finally:
            self._owner = owner
            self._token.release()
        return owner

    def _send_outbox(self) -> None:
        """Isend everything in the outbox, in order (the caller holds the token)."""
        box = self._outbox
        while box:
            self._isend(box.popleft())

    def _isend(self, out: "_Out") -> None:
        comm, peer, bufs = out.comm, out.peer, out.bufs
        try:
            reqs = [comm.Isend([out.head, MPI.BYTE], peer, out.head_tag)]
            for b in bufs:
                reqs.append(comm.Isend([b, MPI.BYTE], peer, out.tag))
        except MPI.Exception as exc:
            if is_failure(exc):
                out.failed = out.done = True
                self._path_failed(out.via)
                return
            raise
        c = self.counters
        c.msgs_out += 1
        c.bytes_out += len(out.head)
        if bufs:
            c.bytes_out += sum(memoryview(b).nbytes for b in bufs)
        if out.tracked and not out.patient and self._test_a_while(out, reqs):
            return
        out.reqs = reqs
        self._pending.append(out)

    def _test_a_while(self, out: "_Out", reqs: list) -> bool:
        """A sender waits for ``out``: test its requests a while, as MPI_Send would (a
        small message is out within a few tests). True once it is done (or failed)."""
        try:
            for _ in range(_SEND_SPINS):
                if _testall(reqs):
                    out.done = True
                    return True
        except MPI.Exception as exc:
            self._send_failed(out, exc)
            return True
        return False

    def _finish_owned(self, out: "_Out") -> None:
        """Complete ``out`` while this thread holds the token (a send from a handler): test
        its requests only, as a blocking MPI_Send would wait, without handling messages."""
        pause = 0.0
        while not out.done and out.dest not in self.ignored and not self.closed:
            self._complete_pending()
            if not out.done:
                time.sleep(pause)
                pause = min(0.001, 2 * pause + 0.00001)

    def _send_failed(self, out: "_Out", exc: MPI.Exception) -> None:
        if not is_failure(exc):
            log.warning("send failed: %s", exc)
        out.failed = out.done = True
        self._path_failed(out.via)   # the peer is gone; the message is dropped with it

    def _forward(self, dest: int, frame: bytearray) -> None:
        """The hub passes a routed frame on, unopened (dropped if ``dest`` is dead)."""
        if dest in self.failed or self.closed:
            return
        try:
            comm, peer, via = self._path(dest)
        except PeerFailed:
            log.debug("routed frame for unknown rank %d dropped", dest)
            return
        self._hand(_Out(dest, comm, peer, via, *self._chunked(frame, [], 0)))

    def broadcast(self, dests: Iterable[int], msg: Any) -> None:
        for d in dests:
            self.post(d, msg)

    def _complete_pending(self) -> None:
        """Mark the posted messages whose Isends are done (the caller holds the token)."""
        pending = self._pending
        for _ in range(len(pending)):
            out = pending.popleft()
            try:
                done = _testall(out.reqs)
            except MPI.Exception as exc:
                self._send_failed(out, exc)
                continue
            if done:
                out.done = True
                out.reqs = None
            else:
                pending.append(out)

    def _complete_light(self) -> None:
        """Forget the requests of the messages :meth:`_send_now` sent that are complete, in
        order (the caller holds the token); a failed one reports its peer dead."""
        light = self._light
        while light:
            try:
                if not light[0].Test():
                    return
            except MPI.Exception as exc:
                if not is_failure(exc):
                    log.warning("send failed: %s", exc)
                light.popleft()
                self._path_failed(None)   # the peer is gone; the message is dropped with it
                continue
            light.popleft()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every posted message has left; False on timeout."""
        deadline = time.monotonic() + timeout
        while (self._outbox or self._pending or self._light) and time.monotonic() < deadline:
            if self._token.acquire(timeout=0.01):
                self._send_owned()
            if self._outbox or self._pending or self._light:
                time.sleep(0.0005)
        return not (self._outbox or self._pending or self._light)

    # -- receiving -----------------------------------------------------------

    def _recv_one(self, comm: MPI.Comm, link_rank: int | None) -> bool:
        """Receive and handle the next message on ``comm`` if one is there."""
        m = comm.Improbe(_ANY_SOURCE, TAG_MSG, self._status)
        if m is None:
            return False
        self._receive(comm, link_rank, m)
        return True

    def _receive(self, comm: MPI.Comm, link_rank: int | None, m: MPI.Message) -> Any:
        """Receive and handle message ``m``, just matched on ``comm`` into ``_status``:
        :data:`endpoint.CLAIMED` if the waiter's claim took it."""
        status = self._status
        peer = status.Get_source()
        src = peer if link_rank is None else link_rank
        count = status.Get_count(_BYTE)
        self.last_heard[src] = _monotonic()
        if count < 0:       # MPI_UNDEFINED: beyond a 32-bit count, not from a clustervm
            _drop(m)
            log.error("a first frame from rank %d is larger than 2 GiB; dropped", src)
            return None
        try:
            # a first frame below NUMPY_BUFFER_MIN (all but routed and long ones: a flat
            # frame is at most PACK_MAX and its header) is a bytearray of its own, no call
            # (~0.1 us a message, measured; frames.flat_message reads bytearrays fastest);
            # a bigger one comes from the pool, as received_buffer gives it
            frame = bytearray(count) if count < NUMPY_BUFFER_MIN else received_buffer(count)
        except MemoryError:
            _drop(m)
            log.error("a first frame of %d bytes from rank %d: no memory for it; dropped",
                      count, src)
            return None
        m.Recv([frame, _BYTE])
        c = self.counters
        c.msgs_in += 1
        c.bytes_in += count
        kind = frame[0] if count else -1
        if kind == KIND_FLAT or count > 1 and kind == KIND_INLINE:   # all of it is here
            if src in self.ignored:     # (_deliver inlined: ~0.1 us a message)
                return None
            if kind == KIND_FLAT:       # (a task's message, often)
                try:
                    msg = flat_message(frame, src)
                except FrameError as exc:
                    log.error("%s; dropped", exc)
                    return None
                verdict = handle(self.handler, src, msg, self._claim)
            else:
                verdict = dispatch(self.handler, src, memoryview(frame)[1:], (),
                                   self.allow_pickle, self._claim)
            if verdict is True or verdict is CLAIMED:   # work (see endpoint.QUIET)
                self._busy = True
            elif verdict:
                self._quiet = True
            return verdict
        try:
            return self._take(comm, peer, src, frame)
        except FrameError as exc:
            log.error("%s; dropped", exc)
        return None

    def _take(self, comm: Any, peer: int, src: int, frame: Any) -> Any:
        """Handle a first frame from ``src`` (``peer`` on ``comm``): receive the parts it
        announces, then decode and dispatch (what :meth:`_deliver` returns). Raises
        :class:`FrameError`."""
        if len(frame) > 1 and frame[0] == KIND_INLINE:   # the common case: all of it is here
            return self._deliver(src, memoryview(frame)[1:], [])
        if len(frame) > 1 and frame[0] == KIND_PACKED:   # small arrays inside: here too
            return self._deliver(src, *packed_parts(frame, src))
        tag = 0
        try:
            f = parse_frame(frame, src, self.max_message)
            tag = f.tag
            if f.kind == KIND_LONG:
                frame = self._recv_part(comm, peer, tag, f.sizes[0], src)
                f = parse_frame(frame, src, self.max_message, nested=True)
                if f.tag != tag and f.sizes:
                    raise FrameError(src, f"a long frame on tag {tag} announces its parts "
                                          f"on tag {f.tag}")
            if f.kind == KIND_ROUTED:
                if f.dest != self.rank:
                    if self.rank == HUB and src not in self.ignored:
                        self._forward(f.dest, frame)
                    return None
                src = f.origin
            bufs = list(f.bufs)
            for size in f.sizes:
                bufs.append(self._recv_part(comm, peer, tag, size, src))
            if f.layout:
                bufs = unbundled(f.layout, bufs)
        except FrameError as exc:
            tag = tag or exc.tag
            if tag:      # drop the parts still on their way, so the sender is not stuck
                self._drain(comm, peer, tag)
            raise
        payload = f.payload if f.payload is not None else bufs.pop(0)
        return self._deliver(src, payload, bufs)

    def _deliver(self, src: int, payload: Any, bufs: list[Any]) -> Any:
        """Decode and handle a message from ``src``: what :func:`endpoint.dispatch` says
        (None for a rank declared dead)."""
        if src in self.ignored:
            return None
        verdict = dispatch(self.handler, src, payload, bufs, self.allow_pickle, self._claim)
        if verdict is True or verdict is CLAIMED:   # work (QUIET: nothing soon after)
            self._busy = True
        elif verdict:
            self._quiet = True
        return verdict

    def _recv_part(self, comm: Any, peer: int, tag: int, size: int, src: int) -> Any:
        """Receive one ``size``-byte buffer on ``tag``: as many MPI messages as the sender
        cut it into. Raises :class:`FrameError` for a part that does not fit or does
        not come within _PART_WAIT_S."""
        try:
            buf = received_buffer(size)
        except MemoryError:
            raise FrameError(src, f"cannot allocate {size} bytes for its buffer") from None
        view = memoryview(buf).cast("B")
        status = MPI.Status()
        off = 0
        messages = 0
        while True:
            m = self._probe_part(comm, peer, tag, src, status)
            messages += 1
            n = status.Get_count(MPI.BYTE)
            if n < 0 or n > size - off or (n == 0 and size > off):
                _drop(m)
                raise FrameError(src, f"a part of {n} bytes does not fit the {size - off} "
                                      f"bytes left of a {size}-byte buffer")
            if n <= _LONG_RECV:
                m.Recv([view[off:off + n], MPI.BYTE])
            else:
                since = time.monotonic()   # the copy may be done within Irecv already
                self._wait_long(m.Irecv([view[off:off + n], MPI.BYTE]), src, buf, n, since)
            off += n
            if off >= size:
                break
        c = self.counters
        c.bytes_in += size
        if messages > 1:
            c.chunked_in += 1
        return buf

    def _wait_long(self, req: MPI.Request, src: int, buf: Any, size: int,
                   since: float | None = None) -> None:
        """Complete a long receive of ``size`` bytes from ``src``, under way. This poller
        takes nothing else meanwhile, so the time it takes is nobody's silence (the
        heartbeats wait unread; ``src`` is busy sending). A receive that takes longer
        than at 10 MB/s (at least _PART_WAIT_S) is given up, its buffer kept for MPI;
        with ULFM a dead ``src`` ends it at once (an MPI failure). ``since``: when it was
        started (Open MPI may copy all of it inside the Irecv call)."""
        start = last = time.monotonic() if since is None else since
        limit = max(_PART_WAIT_S, size / 10e6)
        while not req.Test():
            now = time.monotonic()
            if now - last >= _CREDIT_EVERY_S:
                self._credit(now - last)
                last = now
                if now - start > limit or src in self.ignored or self.closed:
                    self._abandoned.append((req, buf))
                    raise FrameError(src, f"a part of {size} bytes was still coming in after "
                                          f"{now - start:.0f} s (or the rank was declared "
                                          "dead, or this rank is closing)")
        self._credit(time.monotonic() - last)

    def _credit(self, seconds: float, but: int | None = None) -> None:
        """Move the last-heard time of every rank (``but`` one) ``seconds`` later: time
        this poller was busy with one frame is not the others' silence."""
        heard = self.last_heard
        for r in list(heard):
            if r != but:
                heard[r] += seconds
        if self.keepalive is not None:
            now = time.monotonic()
            if now >= self._keepalive_at:
                self._keepalive_at = now + _KEEPALIVE_S
                self.keepalive()

    def _probe_part(self, comm: Any, peer: int, tag: int, src: int, status: MPI.Status) -> Any:
        """The next part on ``tag`` from ``peer`` (matched, not yet received)."""
        deadline = 0.0
        pause = 0.0
        last = time.monotonic()
        while True:
            m = comm.Improbe(peer, tag, status)
            if m is not None:
                if deadline:      # it had to be waited for: the sender's own silence counts
                    self._credit(time.monotonic() - last, but=src)
                return m
            now = time.monotonic()
            if not deadline:
                deadline = now + _PART_WAIT_S
            elif now > deadline:
                raise FrameError(src, f"the rest of a frame (tag {tag}) did not come within "
                                      f"{_PART_WAIT_S:.0f} s")
            if now - last >= _CREDIT_EVERY_S:
                self._credit(now - last, but=src)
                last = now
                if src in self.ignored or src in self.failed or self.closed:
                    raise FrameError(src, f"it was declared dead (or this rank is closing) "
                                          f"before the rest of its frame (tag {tag}) came")
            time.sleep(pause)
            pause = min(0.001, 2 * pause + 0.00001)

    def _drain(self, comm: Any, peer: int, tag: int) -> None:
        """Drop what still comes on ``tag`` from ``peer`` (the parts of a refused frame),
        so that its sender is not left blocked in a send."""
        status = MPI.Status()
        quiet_until = time.monotonic() + _DRAIN_WAIT_S
        while time.monotonic() < quiet_until:
            m = comm.Improbe(peer, tag, status)
            if m is None:
                time.sleep(0.001)
                continue
            _drop(m)
            quiet_until = time.monotonic() + _DRAIN_WAIT_S

    def poll(self, limit: int = 256) -> int:
        """Receive and handle what has arrived (at most ``limit``); caller holds the token."""
        n = 0
        self._busy = self._quiet = False
        if self._outbox:
            self._send_outbox()
        for comm, link_rank in self._inbound:
            try:
                while n < limit and self._recv_one(comm, link_rank):
                    n += 1
            except MPI.Exception as exc:
                if not is_failure(exc):
                    raise
                self._path_failed(link_rank)
        if self._outbox:
            self._send_outbox()
        if self._pending:
            self._complete_pending()
        if self._light and not n:     # a poll that took something leaves them (at most
            self._complete_light()    # _LIGHT_MAX: then the next send completes them)
        if n:
            self._handled()
        return n

    def _handled(self) -> None:
        """After messages were handled: note the time of the work among them (see
        endpoint.QUIET; heartbeats alone do not make an idle loop spin), wake sleepers."""
        if self._busy or self._quiet:
            now = time.perf_counter()
            self._last_work = now
            if self._busy:
                self._last_activity = now
        self.notify()

    # -- links to spawned nodes ------------------------------------------------

    def add_link(self, rank: int, inter: MPI.Intercomm, init: dict) -> None:
        """Rank 0: take a spawned node in as ``rank``, and send it ``init``."""
        inter.Set_errhandler(MPI.ERRORS_RETURN)
        payload, _ = wire.dumps(init)
        # through the outbox (the token holder sends it), before anything else to it
        self._hand(_Out(rank, inter, 0, rank, payload, [], 0, head_tag=TAG_INIT))
        self.links[rank] = inter
        self.size = max(self.size, rank + 1)
        self._inbound = [*self._inbound, (inter, rank)]   # pollers iterate a snapshot

    @staticmethod
    def spawned_init(parent: MPI.Intercomm) -> dict:
        """On a spawned node: wait for the coordinator's first message (its rank, config)."""
        parent.Set_errhandler(MPI.ERRORS_RETURN)
        status = MPI.Status()
        parent.Probe(0, TAG_INIT, status)
        buf = bytearray(status.Get_count(MPI.BYTE))
        parent.Recv([buf, MPI.BYTE], 0, TAG_INIT)
        return wire.loads(buf)

    def _path_failed(self, link_rank: int | None) -> None:
        """A call on a communicator failed: find out who died."""
        if link_rank is None:
            self._note_failures()
            return
        comm = self.comm if self.spawned else self.links.get(link_rank)
        if comm is not None:
            try:
                comm.Ack_failed()
            except MPI.Exception:
                pass
            self._inbound = [(c, r) for c, r in self._inbound if c is not comm]
        self._report_failed({link_rank})

    def _note_failures(self) -> None:
        try:
            self.comm.Ack_failed()
            group = self.comm.Get_failed()
            ranks = MPI.Group.Translate_ranks(group, list(range(group.Get_size())),
                                              self.comm.Get_group())
            group.Free()
        except MPI.Exception as exc:   # no ULFM in this MPI
            log.debug("cannot query failed ranks: %s", exc)
            return
        self._report_failed({r for r in ranks if r is not None and r >= 0})

    def _report_failed(self, ranks: set[int]) -> None:
        new = ranks - self.failed
        if new:
            self.failed |= new
            log.info("MPI reports dead ranks %s", sorted(new))
            try:
                self.on_failure(new)
            except Exception:
                log.exception("failure handler raised")

    def close(self, timeout: float = 1.0) -> None:
        """Stop every thread from touching MPI (before MPI_Finalize)."""
        self.closed = True
        if self._bell is not None:
            self._bell.close()
        self.notify()
        self.notify_background()
        if self._token.acquire(timeout=timeout):   # kept: nobody polls or sends after this
            self._owner = threading.get_ident()
            self.flush(timeout)

    def declare_dead(self, rank: int) -> None:
        """Stop trusting ``rank`` (hung): drop its messages, send it nothing more."""
        self.ignored.add(rank)
        self.failed.add(rank)

    def terminate(self, rank: int) -> bool:
        """Ranks are processes here: the caller kills them (False)."""
        return False

    # -- waiting -------------------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout: float | None = None,
             background: bool = False, spin: bool = False,
             claim: Callable[[Any], bool] | None = None) -> bool:
        """Drive progress until ``predicate()`` is true; False if ``timeout`` passed first.

        A ``background`` waiter (an idle worker) polls only while no foreground
        thread (a task waiting for a message or a result) is waiting; it spins
        after recent traffic only with ``spin`` (no task of its rank is running).
        """
        if predicate():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        if background:
            return self._wait_background(predicate, deadline, spin)
        me = threading.get_ident()
        waiters = self._user_waiters
        waiters.append(me)
        try:
            return self._wait(predicate, deadline, claim)
        finally:
            # nobody is woken: background pollers look again within idle_sleep_ms. Waking
            # them after every wait made them race the task thread for the GIL and the
            # token on each message: 8 B round trips 230-260 us against 57-85 us (measured)
            waiters.remove(me)

    def foreground_done(self) -> None:
        """This thread waits in the foreground no more (its task ended): the idle
        workers poll for the rank again now, not after :data:`_PARKED_S`."""
        self._fg_at = 0.0
        self.notify_background()

    def foreground(self) -> "_Foreground":
        """This thread waits for MPI to complete something of its own (a frozen group's
        collective) and calls :meth:`try_poll` now and then meanwhile: background
        pollers keep off the GIL and MPI until it is done, as while a thread is in
        :meth:`wait` (a frozen barrier of 4 ranks on 2 cores: 29-36 us against 41-52)."""
        return _Foreground(self._user_waiters)

    def _wait(self, predicate: Callable[[], bool], deadline: float | None,
              claim: Callable[[Any], bool] | None = None) -> bool:
        """Poll until ``predicate()`` is true (the caller found it false). Predicates may
        have side effects (take a message): once one is true, return. ``claim`` is offered
        what this thread's polls receive, before the handler (see Endpoint.wait)."""
        token = self._token
        me = threading.get_ident()
        remaining = None
        # (when it began: idle workers stay parked a while after it, see _PARKED_S)
        self._fg_at = now = time.perf_counter()
        hot_until = now + _HOT_SPIN_S
        # a wait after a short one probes in a tight loop at first (see _wait_hot); with
        # waits that last (ranks outnumbering cores) that made heat2d 8-10 % slower
        if self._short_waits and self._wait_hot(predicate, claim, hot_until, deadline):
            return True
        while True:
            if self.closed:
                return False
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0.0:
                    return False
            # a foreground waiter takes the token as soon as the holder lets go, and handles
            # one message a poll: the one it waits for is taken without probing MPI again
            if token.acquire(False) or token.acquire(
                    timeout=0.001 if remaining is None else min(0.001, remaining)):
                owner, self._owner = self._owner, me
                self._claim = claim         # (read by this token holder's polls only)
                try:
                    got = self.poll(1)
                finally:
                    self._claim = None
                    self._owner = owner
                    token.release()
                    if self._outbox and owner is None:   # handed over while we polled
                        self._try_flush()
                if got == 0 and self._back_off(remaining, predicate, hot_until):
                    break
            if predicate():
                break
        self._short_waits = time.perf_counter() < hot_until + _HOT_SPIN_S
        return True

    def _wait_hot(self, predicate: Callable[[], bool], claim: Callable[[Any], bool] | None,
                  until: float, deadline: float | None) -> bool:
        """The start of a foreground wait (see :meth:`_wait`): holding the token, probe
        the one inbound communicator in a tight loop until ``until`` (perf_counter),
        handle each message as a poll does (``claim`` first) and look at ``predicate``
        after it; True once that holds, or once ``claim`` took a message (which makes it
        hold, see Endpoint.wait). A reply due within microseconds is taken without the
        wait loop's and the poll's rounds (an 8 B round trip between two nodes: 18.4 ->
        17.55 us, medians of 24). Not tried (False) with several inbound communicators
        (rank 0 with spawned nodes) or while another thread holds the token past 1 ms."""
        inbound = self._inbound
        token = self._token
        if len(inbound) != 1 or self.closed or not (token.acquire(False) or token.acquire(
                timeout=0.001 if deadline is None
                else min(0.001, max(0.0, deadline - time.monotonic())))):
            return False
        comm, link_rank = inbound[0]
        owner, self._owner = self._owner, threading.get_ident()
        self._claim = claim
        improbe, status, clock = comm.Improbe, self._status, time.perf_counter
        done = False
        try:
            while True:
                m = improbe(_ANY_SOURCE, TAG_MSG, status)
                if m is None:
                    if clock() >= until or self.closed:
                        break
                    if self._outbox:
                        self._send_outbox()
                    continue
                self._busy = self._quiet = False
                if self._receive(comm, link_rank, m) is CLAIMED:
                    self._last_activity = self._last_work = clock()   # (nobody to wake)
                    done = True
                    break
                self._handled()
                if predicate():
                    done = True
                    break
        except MPI.Exception as exc:
            if not is_failure(exc):
                raise
            self._path_failed(link_rank)
        finally:
            self._claim = None
            try:
                if self._pending:
                    self._complete_pending()
                if self._light and not done:
                    self._complete_light()
            finally:
                self._owner = owner
                token.release()
                if self._outbox and owner is None:   # handed over while we polled
                    self._try_flush()
        return done

    def _back_off(self, remaining: float | None, predicate: Callable[[], bool],
                  hot_until: float = 0.0) -> bool:
        """A foreground waiter's pause after an empty poll: yield while recently busy
        (not before ``hot_until``: a reply that comes within a few tens of microseconds
        is seen sooner without the system call), else sleep until notified (at most the
        back-off). True if ``predicate``, looked at before sleeping, was true."""
        now = time.perf_counter()
        idle = now - self._last_activity
        if idle < self._spin_s:
            if now >= hot_until:
                os.sched_yield()
            return False
        pause = self._after_quiet(now, min(
            self._idle_max_s, 0.00005 + (idle - self._spin_s) * _FOREGROUND_GROWTH))
        return self._sleep(pause if remaining is None else min(pause, remaining), predicate)

    def _after_quiet(self, now: float, pause: float) -> float:
        """``pause``, shortened while QUIET work is recent (see _QUIET_PAUSE_S)."""
        since = now - self._last_work
        if since < _QUIET_WINDOW_S:
            return min(pause, max(_QUIET_PAUSE_S, min(since, _QUIET_PAUSE_MAX_S)))
        return pause

    def _sleep(self, pause: float, predicate: Callable[[], bool]) -> bool:
        """Sleep on the foreground condition for at most ``pause`` s unless ``predicate``
        is true (then True). The predicate is looked at once this thread counts as a
        sleeper, outside the lock: a notifier that saw no sleeper had changed the state
        before, and one that saw it bumps ``_wakeups`` before this thread waits, or wakes it.
        """
        cond = self._cond
        with cond:
            self._sleepers += 1
            seen = self._wakeups
        try:
            if predicate():
                return True
            with cond:
                if self._wakeups == seen:
                    cond.wait(pause)
        finally:
            with cond:
                self._sleepers -= 1
        return False

    def _left(self, deadline: float | None) -> float | None:
        """Seconds a waiter has left: None without a deadline, 0.0 once past it or closed."""
        if self.closed:
            return 0.0
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def try_poll(self, timeout: float = 0.0) -> int | None:
        """Poll if the poller token can be had within ``timeout``: messages handled, or None."""
        return self._poll_if_free(timeout, 256)

    def _poll_if_free(self, timeout: float, limit: int) -> int | None:
        """Poll (at most ``limit`` messages) if the token can be had within ``timeout``;
        never inside a poll of this thread (a handler that submits a task, say): a
        nested poll would handle later messages before the one in hand is done."""
        if self._owner == threading.get_ident():
            return None
        token = self._token
        if not (token.acquire(False) or timeout > 0 and token.acquire(timeout=timeout)):
            return None
        owner, self._owner = self._owner, threading.get_ident()
        try:
            return self.poll(limit)
        finally:
            self._owner = owner
            token.release()
            if self._outbox and owner is None:   # handed over while we polled
                self._try_flush()

    def _wait_background(self, predicate: Callable[[], bool], deadline: float | None,
                         spin: bool = False) -> bool:
        with self._bg_cond:
            self._bg_waiters += 1
        try:
            while not predicate():
                remaining = self._left(deadline)
                if remaining == 0.0:
                    return False
                self._background_step(remaining, spin=spin, predicate=predicate)
            return True
        finally:
            with self._bg_cond:
                self._bg_waiters -= 1

    def _background_step(self, remaining: float | None, spin: bool,
                         predicate: Callable[[], bool] | None = None) -> None:
        """Poll once as the process's single background poller, or wait for a turn.

        Background threads (idle workers, the service thread) poll only while no
        foreground thread waits, and one at a time, so an idle rank wakes up a
        few hundred times a second at most.
        """
        me = threading.get_ident()
        with self._bg_cond:
            if predicate is not None and predicate():
                return
            if self._deep_poller not in (None, me) and self._deep_idle():
                # the service loop polls for the whole rank: an idle worker sleeps until
                # work wakes it (one thread per rank wakes up in deep idle, not each)
                self._bg_cond.wait(_DEEP_WORKER_WAIT_S if remaining is None
                                   else min(_DEEP_WORKER_WAIT_S, remaining))
                return
            parked = remaining is None and (
                self._user_waiters or time.perf_counter() - self._fg_at < _PARKED_S)
            if parked or self._user_waiters or self._bg_poller not in (None, me):
                pause = self._longest_pause(background=True)
                if parked:
                    # an idle worker while a task polls for the rank (between its steps
                    # too): work that comes wakes it (the core's Notify), so it need not
                    # look every idle_sleep_ms. Each look took the GIL from the task:
                    # heat2d's steps, mean 147.3 -> 139.1 us (2 tasks on -n 3, 12
                    # alternating runs; p90 178.9 -> 156.5 us)
                    pause = _PARKED_S
                self._turn_waiters += 1
                try:
                    self._bg_cond.wait(pause if remaining is None else min(pause, remaining))
                finally:
                    self._turn_waiters -= 1
                return
            self._bg_poller = me
        try:
            got = self.try_poll()
            if got is None:
                time.sleep(_BACKGROUND_PAUSE_S)
            elif not got and (predicate is None or not predicate()):
                self._pause(remaining, spin=spin)
        finally:
            with self._bg_cond:
                self._bg_poller = None
                if self._turn_waiters:
                    # one waits for this turn (an idle worker woken with this poller, say,
                    # by a doorbell): it polls now, not after its pause (idle_sleep_ms)
                    self._bg_cond.notify_all()

    def _deep_idle(self) -> bool:
        """No traffic for _DEEP_IDLE_AFTER_S (and a deeper back-off is configured)."""
        return (self._deep_max_s > self._idle_max_s
                and time.perf_counter() - self._last_work > _DEEP_IDLE_AFTER_S)

    def _longest_pause(self, background: bool) -> float:
        """The back-off's ceiling now: ``deep_idle_sleep_ms`` for a background poller in
        deep idle, else ``idle_sleep_ms``."""
        return self._deep_max_s if background and self._deep_idle() else self._idle_max_s

    def _pause(self, remaining: float | None, spin: bool) -> None:
        """A background poller's back-off after an empty poll: yield while recently busy
        (only with ``spin``), else sleep on the background condition (wakeable). Without
        ``spin`` it always sleeps a little, so it never competes with a task thread for
        the GIL or MPI's locks."""
        now = time.perf_counter()
        idle = now - self._last_activity
        if spin and idle < self._spin_s:
            os.sched_yield()
            return
        floor = 0.00005 if spin else _BACKGROUND_PAUSE_S
        grown = floor + max(0.0, idle - self._spin_s) * _BACKGROUND_GROWTH
        pause = self._after_quiet(now, min(self._longest_pause(background=True), grown))
        if remaining is not None:
            pause = min(pause, remaining)
        with self._bg_cond:
            self._bg_cond.wait(pause)

    def service_step(self, max_sleep: float, spin: bool = False) -> None:
        """One step of the background service loop: poll unless a user thread is polling.

        The coordinator's service thread spins while busy (it schedules while main
        computes); a node's only polls now and then while its tasks run. While idle
        workers wait for work they poll (the thread that gets the task runs it), and
        this loop only wakes every ``max_sleep``; in deep idle it is the other way
        round: this loop is the rank's one poller, sleeping up to ``deep_idle_sleep_ms``
        between polls (its caller's ticks, the heartbeats, come as often), and the
        workers sleep until work comes. Each wake-up costs 50-150 us of CPU here
        (measured), so an idle rank wakes up a few times a second, not 15.
        """
        if self.closed:
            time.sleep(max_sleep)
            return
        if self._deep_idle():
            self._deep_poller = threading.get_ident()
            self._background_step(max(max_sleep, self._deep_max_s), spin=spin)
            return
        self._deep_poller = None
        if self._bg_waiters:          # an idle worker polls: it is the one who needs work
            with self._bg_cond:       # (state changes that need this loop wake it)
                self._bg_cond.wait(max_sleep)
            return
        self._background_step(max_sleep, spin=spin)

    def bell(self) -> tuple[int, list[str]] | None:
        if self._bell is None or not self._bell.udp_port:
            return None
        return self._bell.udp_port, host_addresses()

    def knock(self, port: int, addrs: list[str]) -> None:
        if self._bell is not None:
            self._bell.knock(port, addrs)

    def bells(self) -> dict[int, tuple[str, int]]:
        return {} if self._bell is None else self._bell.known()

    def find_bells(self, ask: Callable[[int], None]) -> None:
        if self._bell is not None:
            self._bell.on_unknown = ask

    def learn_bell(self, rank: int, addr: tuple[str, int] | list | None) -> None:
        if self._bell is not None:
            self._bell.learn(rank, addr)

    def _rung(self) -> None:
        """Our doorbell rang (its thread): another rank sent a message after a quiet
        spell. Traffic now: every poller looks at once and backs off from scratch."""
        self._last_work = self._last_activity = time.perf_counter()
        self.notify_background()
        self.notify()

    def notify(self) -> None:
        """Wake the foreground waiters that sleep (state changed: a delivery, a poll that
        handled messages); nobody is notified when nobody sleeps (see :meth:`_sleep`)."""
        if self._sleepers:
            cond = self._cond
            with cond:
                self._wakeups += 1
                cond.notify_all()

    def notify_background(self) -> None:
        """Wake idle workers and the service thread (work arrived, or shutdown)."""
        with self._bg_cond:
            self._bg_cond.notify_all()


def _far_enough(out: _Out) -> bool:
    """Has ``out`` gone far enough for :meth:`Transport.send` to return? Complete when it
    carries the caller's arrays (``tracked``); else once Isent: its first frame is the
    transport's own copy, and a later poll completes it, off the sender's path."""
    return out.done or (not out.tracked and out.reqs is not None)


def _drop(m: Any) -> None:
    """Receive a matched message into nothing (MPI truncates it); it is gone after."""
    try:
        m.Recv([bytearray(0), MPI.BYTE])
    except MPI.Exception:
        pass

