"""What the shells use of a transport: one rank's end of the VM's message network.

:class:`Endpoint` lists exactly what the coordinator, the nodes and the sites
call and read on their ``transport``. Two implementations:

- :class:`clustervm.transport.Transport`: frames over MPI (ULFM failures,
  links to nodes started with ``MPI_Comm_spawn``);
- :class:`clustervm.inprocess.InProcessTransport`: every rank a set of threads
  in one Python process, with fault injection (kill, stop, delay), for tests
  that need no MPI.

This module imports no MPI: the shells type their ``transport`` against it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ContextManager, Iterable, Protocol

from . import wire
from .errors import WireError
from .remote import raised_at

log = logging.getLogger(__name__)

#: What a handler returns for a message that is work, but whose sender does not wait for
#: an answer now (a posted checkpoint, a buddy's HELD): the loop handles it, and keeps
#: out of deep idle, but does not poll eagerly for a next message: the coordinator's
#: eager polls after every checkpoint took the CPU of the tasks beside it (heat2d's
#: in-memory checkpoints, 2 tasks on 2 cores: +12-16 % with them, +4-6 % without).
QUIET = "quiet"

#: What :func:`dispatch` returns when the waiter's ``claim`` took the message (work, as
#: True is; the waiter that claimed it needs nobody woken).
CLAIMED = "claimed"

#: Handles one message from rank ``src``; returns False when it was mere housekeeping
#: (a heartbeat), which does not count as activity for the idle back-off, and
#: :data:`QUIET` for work after which nothing more is expected soon.
Handler = Callable[[int, Any], "bool | str | None"]


class PeerFailed(Exception):
    """A send to (or receive from) a rank failed because the rank is dead."""

    def __init__(self, rank: int) -> None:
        super().__init__(f"rank {rank} is dead")
        self.rank = rank


class Counters:
    """Traffic of one rank (what the observers show)."""

    __slots__ = ("msgs_in", "msgs_out", "bytes_in", "bytes_out", "chunked_in", "chunked_out")

    def __init__(self) -> None:
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        #: buffers (or first frames) that travelled as more than one MPI message
        self.chunked_in = self.chunked_out = 0


class Endpoint(Protocol):
    """One rank's transport, as the shells (coordinator, node, site, runtime) use it.

    Progress is leader/follower: whichever thread waits drives delivery, and the
    handler runs on that thread (under the poller token), so a handler never
    blocks: it answers with :meth:`post`.
    """

    #: this rank (0 is the coordinator)
    rank: int
    #: ranks this endpoint can address (world ranks, then nodes added later)
    size: int
    #: ranks of the MPI world (0 on a node started with MPI_Comm_spawn)
    world_size: int
    #: True on a node started later (MPI_Comm_spawn), reached through the coordinator
    spawned: bool
    #: True when the ranks are processes of one MPI job: frozen groups
    #: (clustervm.fastgroup) can build MPI communicators of them
    mpi_world: bool
    #: whether pickle may carry what msgpack cannot (CLUSTERVM_PICKLE)
    allow_pickle: bool
    #: no more traffic: sends raise PeerFailed, waits return False
    closed: bool
    #: ranks known dead (reported failed, or declared dead); sends to them fail
    failed: set[int]
    #: ranks declared dead while maybe alive (hung): what they still send is dropped
    ignored: set[int]
    #: nodes started later, by rank (MPI: their intercommunicators)
    links: dict[int, Any]
    #: rank -> monotonic time its last message came in (heartbeat deadlines)
    last_heard: dict[int, float]
    #: runs each incoming message (set by the site)
    handler: Handler
    #: told the ranks newly found dead (as ULFM reports them)
    on_failure: Callable[[set[int]], None]
    counters: Counters

    def frame_of(self, msg: Any, flat_at: int | None = None) -> bytes | None:
        """The one frame ``msg`` travels in (clustervm.frames.one_frame), for
        :meth:`send`'s ``frame``; None if it needs more. Immutable: a replay log keeps it
        as its copy of the message (frames.one_frame_message reads it back). Raises
        WireError if ``msg`` cannot be encoded."""

    def send(self, dest: int, msg: Any, meanwhile: Callable[[], Any] | None = None,
             settle: bool = True, flat_at: int | None = None,
             frame: bytes | memoryview | None = None) -> None:
        """Send ``msg`` to ``dest``; returns when the caller may change what it sent.
        Raises PeerFailed if ``dest`` is dead (or this endpoint is closed), WireError
        if ``msg`` cannot be encoded. ``meanwhile`` is called once the message is on its
        way (not if encoding it failed), before waiting for it to leave: work that
        overlaps the transfer (it may read, never change, what is sent; it must not raise).
        ``settle=False``: a message that carries none of the caller's arrays (all of it
        copied in encoding) may be left to another thread to send; a ``dest`` found dead
        after that is not reported, as with :meth:`post`. ``flat_at``: ``msg`` is a
        tuple whose items are ints but the one there, which may then travel without
        msgpack (clustervm.frames.flat; int-likes arrive as ints). ``frame``: what
        :meth:`frame_of` gave for ``msg`` (sent instead of encoding it again)."""

    def post(self, dest: int, msg: Any, wake: bool = True) -> bool:
        """Send without blocking (for handlers); False (message dropped) if ``dest`` is
        known dead. The caller must not change ``msg`` until it has left. ``wake``: an
        idle ``dest`` should see it at once (not so for a heartbeat)."""

    def isend(self, dest: int, msg: Any) -> Any:
        """:meth:`post`, raising PeerFailed instead of returning False; returns a handle
        for :meth:`sent`."""

    def sent(self, handle: Any) -> bool:
        """Has the message posted by :meth:`isend` left this process?"""

    def broadcast(self, dests: Iterable[int], msg: Any) -> None:
        """Post ``msg`` to each of ``dests`` (dead ones are skipped)."""

    def wait(self, predicate: Callable[[], bool], timeout: float | None = None,
             background: bool = False, spin: bool = False,
             claim: Callable[[Any], bool] | None = None) -> bool:
        """Drive progress until ``predicate()`` is true; False if ``timeout`` passed
        first (or the endpoint closed). A ``background`` waiter (an idle worker) lets
        foreground waiters poll first. ``claim``: offered each message this waiter
        receives itself, decoded, before the handler; True takes it (the handler never
        sees it) and makes ``predicate`` true: the wait may end without looking at it
        again. An endpoint may hand every message to the handler instead."""

    def foreground(self) -> ContextManager[None]:
        """While in it, this thread waits for something else than a message (a frozen
        group's collective) and calls :meth:`try_poll` now and then: background
        pollers let it poll for the rank, as while it is in :meth:`wait`."""

    def try_poll(self, timeout: float = 0.0) -> int | None:
        """Handle what has arrived if the poller token can be had within ``timeout``:
        the number of messages handled, or None."""

    def poll(self, limit: int = 256) -> int:
        """Handle what has arrived (at most ``limit``); the caller holds the token."""

    def service_step(self, max_sleep: float, spin: bool = False) -> None:
        """One step of a background service loop: poll unless another thread does,
        sleeping at most ``max_sleep`` when nothing comes."""

    def notify(self) -> None:
        """Wake foreground waiters (state changed outside a poll)."""

    def notify_background(self) -> None:
        """Wake idle workers and the service thread (work arrived, or shutdown)."""

    def foreground_done(self) -> None:
        """This thread waits in the foreground no more (its task ended): background
        pollers take over at once."""

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every posted message has left; False on timeout."""

    def declare_dead(self, rank: int) -> None:
        """Stop trusting ``rank`` (hung): drop what it sends, send it nothing more."""

    def terminate(self, rank: int) -> bool:
        """End ``rank``'s process if this endpoint can (in process: the rank stops
        for good, as after SIGKILL); False: the caller kills the process itself."""

    def add_link(self, rank: int, inter: Any, init: dict) -> None:
        """Rank 0: take a node started later in as ``rank`` (reached through ``inter``,
        MPI: its intercommunicator) and send it ``init``."""

    def bell(self) -> tuple[int, list[str]] | None:
        """Rank 0: where ranks on other hosts knock to be rung when a message comes after a
        quiet spell (its doorbell's UDP port, this host's IPv4 addresses); None: nowhere."""

    def knock(self, port: int, addrs: list[str]) -> None:
        """A node: knock at rank 0's doorbell (:meth:`bell`), so that each rings the
        other's across hosts."""

    def bells(self) -> dict[int, tuple[str, int]]:
        """Rank 0: where the nodes' doorbells are across hosts (rank -> host, UDP port),
        as their knocks said."""

    def find_bells(self, ask: Callable[[int], None]) -> None:
        """A node: ``ask(rank)`` when a ring finds ``rank``'s doorbell neither on this
        host nor across hosts; :meth:`learn_bell` takes the answer."""

    def learn_bell(self, rank: int, addr: tuple[str, int] | list | None) -> None:
        """``rank``'s doorbell is at ``addr`` (as :meth:`bells` said at rank 0); None:
        not known there yet."""

    def close(self, timeout: float = 1.0) -> None:
        """Stop every thread from touching the network (before leaving)."""


def summary(msg: Any) -> str:
    """A short description of a message for a log line (its op and shape)."""
    if isinstance(msg, tuple) and msg:
        return f"op {msg[0]!r}, {len(msg)} fields"
    return f"a {type(msg).__name__}, not an op tuple"


def dispatch(handler: Handler, src: int, payload: Any, bufs: list[Any],
             allow_pickle: bool, claim: Callable[[Any], bool] | None = None) -> bool | str:
    """Decode a message from ``src`` and run ``handler`` on it (both transports): True if
    it was work (the handler did not return False), :data:`CLAIMED` if ``claim`` took the
    message first, :data:`QUIET` if the handler said so. A message that cannot be
    decoded, or that the handler fails on, is logged (naming ``src``) and dropped."""
    try:
        msg = wire.loads(payload, bufs, allow_pickle=allow_pickle)
    except WireError as exc:
        log.error("a message from rank %d cannot be decoded; dropped: %s", src, exc)
        return False
    return handle(handler, src, msg, claim)


def handle(handler: Handler, src: int, msg: Any,
           claim: Callable[[Any], bool] | None = None) -> bool | str:
    """Run ``handler`` on ``msg``, decoded, from ``src`` (what :func:`dispatch` does
    after decoding; a flat frame's tuple comes here at once)."""
    try:
        if claim is not None and claim(msg):    # a waiter took it for itself
            return CLAIMED
        verdict = handler(src, msg)
        return verdict if verdict is QUIET else verdict is not False
    except Exception as exc:   # noqa: BLE001 - one bad message never stops the loop
        log.error("the handler failed on a message from rank %d (%s): %s: %s (at %s); "
                  "dropped", src, summary(msg), type(exc).__name__, exc, raised_at(exc))
        log.debug("the handler's traceback", exc_info=True)
        return False
