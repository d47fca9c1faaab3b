"""What every rank runs: the transport, task mailboxes, locations and messaging.

:class:`Site` is the part the coordinator and the nodes share; ``node.Node``
and ``coordinator.Coordinator`` add their own handlers and API.

Messages between tasks go straight from node to node. Exactly-once delivery
across failover uses sender-based message logging: each task keeps the
messages it sent to a restartable task until that task checkpoints past them
(the log travels inside the sender's own checkpoint), messages carry a
per-pair sequence number, and receivers deliver each pair's messages in
sequence order, dropping duplicates. When a task is restarted elsewhere from
its checkpoint, the senders replay what it had not yet received; when a sender
is restarted, it replays its own log and what it sends again is dropped as a
duplicate (tasks are assumed piecewise deterministic, as in message-logging
protocols: with specific-source receives they are).
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

from . import protocol as P
from . import remote, wire
from .config import Config
from .errors import DeadTaskError, WireError
from .mailbox import Mailbox, TaskLike, message
from .protocol import ANY
from .values import ARRAY_COPIES, approx_size, sized_snapshot, snapshot   # noqa: F401 - importable from here too
from .procs import hostname   # noqa: F401 - importable from here too
from .replaylog import FrameStore, Sent, data_of
from .endpoint import Endpoint, PeerFailed

log = logging.getLogger(__name__)


class Location:
    """Where a task lives now, and whether messages to it must be logged for replay."""
    __slots__ = ("rank", "inc", "replay")

    def __init__(self, rank: int, inc: int, replay: bool) -> None:
        self.rank, self.inc, self.replay = rank, inc, replay


#: a message that is one numpy array this big is logged for replay while it is sent
#: (the copy overlaps the transfer: Site._log_message)
_OVERLAP_MIN = 1 << 20


def _ndarray() -> Any:
    np = sys.modules.get("numpy")
    return None if np is None else np.ndarray


#: The rank ``locate`` gives for a task that has ended (when asked to tolerate it).
ENDED = -2
_PUT, _HOLD, _DROP = 0, 1, 2    # what Site.deliver does with a task's message (Site._admit)
_USER = P.User.OP


class Site:
    """Shared machinery of one rank."""

    def __init__(self, transport: Endpoint, config: Config) -> None:
        self.transport = transport
        self.config = config
        self.rank = transport.rank
        self.host = hostname()
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.mailboxes: dict[int, Mailbox] = {}
        self.holdback: dict[int, dict[tuple[int, int], tuple]] = {}   # dst -> (src, seq) -> msg
        #: checkpoint group members here whose group is going back (tid -> incarnation
        #: then): they take no checkpoint more, and what comes for them is held back for
        #: the incarnation that replaces them (Node._on_ask_held)
        self.rolling: dict[int, int] = {}
        self.locations: dict[int, Location] = {}
        self.contexts: dict[int, TaskLike] = {}     # tasks running here
        self._log_limit = config.replay_log_mb * 1e6   # bytes of a replay log per receiver
        self._replies: dict[int, tuple[bool, Any]] = {}
        self._reqids = itertools.count(1)
        self._waiting: set[int] = set()
        self._futures: dict[int, Any] = {}     # reqid -> future of a nested submit
        self._refs: dict[str, Any] = {}
        #: what this rank does with each message kind it receives (the coordinator and the
        #: node add theirs); every kind of protocol.KINDS sent to a side has one here
        self.handlers: dict[type[P.Message], Callable[[int, Any], bool | None]] = {
            P.User: self._on_user,
            P.Reply: self._on_reply,
            P.Loc: self._on_loc,
        }
        transport.handler = self._handle

    # -- dispatch ------------------------------------------------------------

    def _handle(self, src: int, raw: Any) -> bool | None:
        """Decode a message tuple from rank ``src`` and run its kind's handler; a malformed
        one is logged, naming the sender, and dropped. A handler that raises is a bug of
        clustervm's: :meth:`_handler_failed` (the shells end the job with it)."""
        try:
            if type(raw) is tuple and len(raw) == 7 and raw[0] == _USER:
                # the hot path: a task's message, checked as protocol.User's decoder does,
                # delivered without making the message object
                _, src_tid, dst, tag, data, inc, seq = raw
                if type(src_tid) is int and type(inc) is int and type(seq) is int:
                    self.deliver(src_tid, dst, tag, data, inc, seq)
                    return None
            try:
                msg = P.decode(raw)
            except P.MessageError as exc:
                log.error("bad message from rank %d (%s): %s; dropped", src, P.summary(raw),
                          exc)
                return None
            handler = self.handlers.get(type(msg))
            if handler is None:
                log.error("bad message from rank %d: rank %d takes no %s message; dropped",
                          src, self.rank, type(msg).__name__.upper())
                return None
            return handler(src, msg)
        except Exception as exc:   # noqa: BLE001 - the shells say what becomes of it
            self._handler_failed(src, raw, exc)
            return True

    def _handler_failed(self, src: int, raw: Any, exc: Exception) -> None:
        """Handling ``raw`` from ``src`` raised ``exc`` (a bug of clustervm's): the
        message is lost, so the job cannot go on exactly; each shell says how it ends."""
        raise exc

    @staticmethod
    def _failed_on(src: int, raw: Any, exc: Exception) -> str:
        """What :meth:`_handler_failed` says: the message, its sender, the error and
        where it was raised."""
        return (f"failed on {P.kind_of(raw)} from rank {src}: {type(exc).__name__}: {exc} "
                f"(at {remote.raised_at(exc)})")

    def where(self) -> str:
        return f"node {self.rank} (host {self.host}, pid {self.pid})"

    # -- functions by reference ----------------------------------------------

    def ref(self, fn: Callable) -> str:
        return wire.fn_ref(fn)

    def resolve(self, ref: str) -> Any:
        fn = self._refs.get(ref)
        if fn is None:
            fn = self._refs[ref] = wire.resolve_ref(ref)
        return fn

    # -- waiting -------------------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout: float | None = None,
             blocking: bool = False, claim: Callable[[Any], bool] | None = None) -> bool:
        return self.transport.wait(predicate, timeout, claim=claim)

    def progress(self) -> None:
        """Handle what has arrived, if no other thread is polling (nrecv, probe)."""
        self.transport.try_poll()

    # -- mailboxes and user messages -----------------------------------------

    def mailbox(self, tid: int) -> Mailbox:
        box = self.mailboxes.get(tid)
        if box is None:
            with self.lock:
                box = self.mailboxes.setdefault(tid, Mailbox())
        return box

    def deliver(self, src: int, dst: int, tag: int, data: Any, inc: int, seq: int) -> None:
        """Put a message into ``dst``'s mailbox in per-pair sequence order, once."""
        if src < 0:     # an event from the VM (pvm_notify style): not sequenced
            self.mailbox(dst).put(src, tag, data, inc, seq)
            self.transport.notify()
            return
        with self.lock:
            verdict, box = self._admit(src, dst, inc, seq)
            if verdict == _HOLD:
                self.holdback.setdefault(dst, {})[(src, seq)] = (tag, data, inc)
            if verdict != _PUT:
                return
            box.put(src, tag, data, inc, seq)
            held = self.holdback.get(dst)
            while held:
                nxt = held.pop((src, seq + 1), None)
                if nxt is None:
                    break
                seq += 1
                box.put(src, nxt[0], nxt[1], nxt[2], seq)
        self.transport.notify()

    def _admit(self, src: int, dst: int, inc: int, seq: int) -> tuple[int, Any]:
        """What :meth:`deliver` does with message ``seq`` of task ``src`` (incarnation
        ``inc``) for ``dst``, and ``dst``'s mailbox if it looked at it (the caller holds
        ``lock``): _PUT it in now, _HOLD it back, or _DROP it."""
        loc = self.locations.get(src)
        if loc is not None and inc < loc.inc:
            return _DROP, None      # from a replaced incarnation of src
        if dst in self.rolling:
            return _HOLD, None      # for the incarnation that replaces dst
        box = self.mailboxes.get(dst) or self.mailbox(dst)
        if box.group and inc > box.incs.get(src, inc):
            # a group peer's new incarnation: its group rolled back, and so does dst;
            # dst's restore delivers this against its restored counters
            return _HOLD, box
        last = box.delivered.get(src, 0)
        if seq <= last:
            return _DROP, box       # a duplicate (replayed after a failover)
        return (_HOLD if seq > last + 1 else _PUT), box     # (one before it is on its way)

    def claimer(self, tid: int, box: Mailbox, source: int, tag: int,
                got: list) -> Callable[[Any], bool]:
        """What task ``tid``, waiting in ``recv(source, tag)``, takes for itself of the
        messages its own polls receive (Endpoint.wait's ``claim``): a task message to it
        that matches, when :meth:`deliver` would put it into its mailbox at once, nothing
        is held back for it, and its mailbox is empty. It goes into ``got``, and the
        mailbox counts it as delivered; the handler, the mailbox and the waiter's look
        into it are skipped (an 8 B round trip between two nodes: 19.0 -> 18.1 us).
        What it needs is looked up here, before the wait: in a round trip only the
        call after the message came counts (~0.2 us less)."""
        user, lock, admit, holdback, count = _USER, self.lock, self._admit, self.holdback, \
            box.count
        any_source, any_tag = source == ANY, tag == ANY

        def claim(raw: Any) -> bool:
            if type(raw) is not tuple or len(raw) != 7:
                return False
            op, src, dst, t, data, inc, seq = raw
            if op != user or dst != tid or not (any_source or src == source) or \
                    not (any_tag or t == tag) or type(src) is not int or src < 0 or \
                    type(inc) is not int or type(seq) is not int:
                return False
            with lock:
                if holdback.get(tid) or admit(src, tid, inc, seq)[0] != _PUT or \
                        not count(src, inc, seq):
                    return False
            got.append(message(src, t, data))
            return True

        return claim

    def _on_user(self, src_rank: int, msg: P.User) -> None:
        self.deliver(msg.src, msg.dst, msg.tag, msg.data, msg.inc, msg.seq)

    def locate(self, tid: int, ended_ok: bool = False) -> Location:
        """Where task ``tid`` runs. With ``ended_ok``, a task that has ended gives
        rank ENDED instead of DeadTaskError.

        Usually known already: every node is told each placement before the task starts
        (Coordinator._announce). The coordinator is asked only when it is not: a LOC
        still on its way, or a location forgotten with a failed node."""
        loc = self.locations.get(tid)
        if loc is None or loc.rank < 0:
            for attempt in range(200):
                rank, inc, replay = self.call("locate", tid, ended_ok)
                if rank == ENDED:
                    return Location(ENDED, inc, False)
                if rank is not None:
                    loc = Location(rank, inc, replay)
                    with self.lock:
                        cur = self.locations.get(tid)
                        if cur is None or cur.inc <= inc:
                            self.locations[tid] = loc
                    break
                time.sleep(min(0.05, 0.001 * (attempt + 1)))   # being recovered
            else:
                raise DeadTaskError(f"task {tid} has no node to run on; it could not be recovered")
        return loc

    def send_user(self, src: int, inc: int, dst: int, tag: int, data: Any, seq: int) -> None:
        """Send a message of task ``src`` to task ``dst`` wherever it lives."""
        ctx = None          # the sender's, looked up only to log the message
        # a task restarted from a checkpoint sends again what its first run sent; a
        # receiver that has ended since got those messages then: they are dropped
        ended_ok = inc > 0
        for _ in range(100):
            loc = self.locations.get(dst)
            if loc is None or loc.rank < 0:
                loc = self.locate(dst, ended_ok=ended_ok)
            if loc.rank == ENDED:
                log.debug("task %d (incarnation %d): task %d has ended; message seq %d "
                          "dropped", src, inc, dst, seq)
                return
            copy_later = frame = None
            msg = (_USER, src, dst, tag, data, inc, seq)
            try:
                if loc.replay:
                    ctx = self.contexts.get(src)
                    if ctx is not None and dst not in ctx.__dict__.get("_peers", ()):
                        # (a checkpoint group's members log nothing to each other: they go
                        # back together, and the cut keeps what is in flight between them)
                        copy_later, frame = self._log_message(ctx, msg, loc.rank != self.rank)
                if loc.rank == self.rank:   # a copy, as a send over MPI would make
                    self.deliver(src, dst, tag, snapshot(data), inc, seq)
                    return
                self.transport.send(loc.rank, msg, copy_later, flat_at=4, frame=frame)   # USER
                return
            except WireError as exc:      # nothing was sent: forget it, name the path in data
                if loc.replay and ctx is not None:
                    self._unlog(ctx, dst, seq)
                    ctx.__dict__["_uncopied"] = None
                path = getattr(exc, "path", None) or ""
                if not path.startswith("[4]"):
                    raise
                inner = path[3:]
                where = inner or "the top level of the message"
                err = WireError(str(exc).replace(f" at {path}:", f" at {where}:", 1))
                err.path = inner  # type: ignore[attr-defined]
                raise err from None
            except PeerFailed:
                with self.lock:
                    if self.locations.get(dst) is loc:
                        del self.locations[dst]
                if loc.replay and ctx is not None:
                    self._unlog(ctx, dst, seq)
                    ctx.__dict__["_uncopied"] = None
                # the receiver's node died while this was on its way: its restarted
                # incarnation gets the message from the replay log, and may even end
                # before we try again (found by tools/soak.py on wordcount): then there
                # is nothing left to deliver, not an error
                ended_ok = True
                time.sleep(0.01)
        raise DeadTaskError(f"cannot deliver a message to task {dst}: its node keeps failing")

    @staticmethod
    def _unlog(ctx: TaskLike, dst: int, seq: int) -> None:
        """Take message ``seq`` to ``dst`` out of the replay log (it was not sent)."""
        entries = ctx.__dict__.get("_outlog", {}).get(dst)
        if entries and entries[-1][0] == seq:
            entries.pop()

    def _log_message(self, ctx: TaskLike, msg: tuple, remote: bool
                     ) -> tuple[Callable[[], None] | None, bytes | memoryview | None]:
        """Keep a copy of task message ``msg`` (protocol.User's tuple) until its receiver
        checkpoints past it: (what Transport.send's ``meanwhile`` must do, the frame it
        must send), either may be None.

        ``bytes`` and ``str`` are kept as they are. To another rank (``remote``), a
        message that goes in one frame is logged as that frame (replaylog.Sent: no copy
        of its own), kept in the task's replaylog.FrameStore, and sent from there. A big
        array (the 8 MiB of issue 13) is logged as it is and copied while it is sent: the
        function returned makes the copy and puts it in its place; until then a replay
        sends a copy of its own (:meth:`_trim_and_replay`). The copy goes into memory
        used before (values.ARRAY_COPIES). Raises WireError for data that cannot be
        sent."""
        _, _, dst, tag, data, _, seq = msg
        kind = type(data)
        if kind is bytes or kind is str:     # never changes: kept as it is
            self._log_copy(ctx, dst, seq, tag, data, len(data))
            return None, None
        if remote:
            if getattr(data, "nbytes", 0) >= _OVERLAP_MIN and kind is _ndarray():
                if not self._log_copy(ctx, dst, seq, tag, data, data.nbytes):
                    return None, None
                ctx.__dict__["_uncopied"] = (dst, seq)
                return (lambda: self._copy_logged(ctx, dst, seq, data)), None
            frame = self.transport.frame_of(msg, flat_at=4)
            if frame is not None:
                try:
                    store = ctx.__dict__["_frames"]
                except KeyError:
                    store = ctx.__dict__["_frames"] = FrameStore(ARRAY_COPIES)
                frame = store.keep(frame)      # (sent from there: the bytes go at once)
                self._log_copy(ctx, dst, seq, tag, Sent(frame), len(frame))
                return None, frame
        copy, nbytes = sized_snapshot(data)
        self._log_copy(ctx, dst, seq, tag, copy, nbytes)
        return None, None

    def _copy_logged(self, ctx: TaskLike, dst: int, seq: int, data: Any) -> None:
        """Put a copy of ``data`` in place of message ``seq`` to ``dst`` (logged as it was
        sent, see :meth:`_log_message`), unless the log has forgotten it meanwhile."""
        try:
            copy = snapshot(data)
        except MemoryError:
            copy = None
        with self.lock:
            ctx.__dict__["_uncopied"] = None
            entries = ctx.__dict__.get("_outlog", {}).get(dst)
            if not entries:
                return
            for i in range(len(entries) - 1, -1, -1):
                if entries[i][0] == seq:
                    if copy is not None:
                        entries[i] = (seq, entries[i][1], copy)
                    else:
                        self._drop_log(ctx, dst, "no memory for a copy of a message to it")
                    return
                if entries[i][0] < seq:
                    return

    def _log_copy(self, ctx: TaskLike, dst: int, seq: int, tag: int, copy: Any,
                  nbytes: int) -> bool:
        """Keep ``copy`` (the sender's own, never changed; ``nbytes`` its size) in the
        task's replay log for ``dst``; past CLUSTERVM_REPLAY_LOG_MB the log is dropped with
        a warning (False)."""
        fields = ctx.__dict__
        try:
            entries = fields["_outlog"][dst]
            sizes = fields["_outbytes"]
        except KeyError:
            entries = fields.setdefault("_outlog", {}).setdefault(dst, [])
            sizes = fields.setdefault("_outbytes", {})
        size = sizes.get(dst, 0) + nbytes
        if size > self._log_limit:
            with self.lock:
                self._drop_log(ctx, dst, f"{size / 1e6:.0f} MB since its last checkpoint")
            return False
        # no lock: a receiver's list is only ever changed in place (_trim_and_replay
        # takes a prefix off), and an append is one step under the GIL
        entries.append((seq, tag, copy))
        sizes[dst] = size
        return True

    @staticmethod
    def _drop_log(ctx: TaskLike, dst: int, why: str) -> None:
        """Forget the replay log of ``ctx`` for ``dst``, with a warning (hold the lock)."""
        log.warning("task %d: messages to task %d are no longer kept for replay (%s); if "
                    "its node fails before it checkpoints, they are lost. Checkpoint more "
                    "often or raise CLUSTERVM_REPLAY_LOG_MB", ctx.tid, dst, why)
        fields = ctx.__dict__
        fields["_outlog"][dst].clear()     # in place: see _log_copy
        fields["_outbytes"][dst] = 0

    def _tell_senders(self, tid: int, rank: int, inc: int, replay: bool, delivered: dict,
                      rank_of: Callable[[int], int | None]) -> None:
        """Task ``tid`` (incarnation ``inc`` on ``rank``) has a checkpoint held that counts
        ``delivered`` (per sender): one LOC to each node where a sender runs
        (``rank_of``), which then forgets those messages."""
        item = P.Loc([(tid, rank, inc, replay, delivered)])
        ranks = {r for r in map(rank_of, delivered) if r is not None and r >= 0}
        for r in ranks:
            if r == self.rank:
                self._on_loc(r, item)
            else:
                self.transport.post(r, item.encode())

    def _on_loc(self, src_rank: int, msg: P.Loc) -> None:
        """Locations changed: forget stale ones; replay logged messages to moved tasks."""
        for tid, rank, inc, replay, delivered in msg.items:
            with self.lock:
                old = self.locations.get(tid)
                if old is not None and old.inc > inc:
                    continue
                if rank < 0:
                    self.locations.pop(tid, None)
                else:
                    self.locations[tid] = Location(rank, inc, replay)
            if rank < 0:
                for ctx in list(self.contexts.values()):
                    getattr(ctx, "_outlog", {}).pop(tid, None)
                continue
            if delivered is not None:
                self._trim_and_replay(tid, rank, inc, delivered, replay_all=old is None
                                      or old.inc != inc)

    def _trim_and_replay(self, dst: int, rank: int, inc: int, delivered: dict,
                         replay_all: bool) -> None:
        for ctx in list(self.contexts.values()):
            outlog = getattr(ctx, "_outlog", None)
            if not outlog or dst not in outlog:
                continue
            upto = delivered.get(ctx.tid, delivered.get(str(ctx.tid), 0))
            with self.lock:
                # in place, a prefix (a task thread appends in order of seq, without
                # the lock: see _log_copy); what is left as it is now is replayed
                kept = outlog[dst]
                done = 0
                for entry in kept:
                    if entry[0] > upto:
                        break
                    done += 1
                del kept[:done]
                entries = list(kept)
                uncopied = getattr(ctx, "_uncopied", None)
            sizes = getattr(ctx, "_outbytes", None)
            if sizes is not None:
                sizes[dst] = sum(approx_size(e[2]) for e in entries)
            if replay_all:
                for entry in entries:
                    seq, tag = entry[0], entry[1]
                    data = data_of(entry, self.transport.allow_pickle)   # (a Sent: decoded)
                    # a copy of its own for a local receiver (as a send over MPI makes),
                    # or if the entry is still the sender's array (being sent, copied)
                    if rank == self.rank or uncopied == (dst, seq):
                        data = snapshot(data)
                    if rank == self.rank:
                        self.deliver(ctx.tid, dst, tag, data, ctx.inc, seq)
                    else:
                        self.transport.post(rank, P.User.make(ctx.tid, dst, tag, data,
                                                              ctx.inc, seq))

    # -- calls to the coordinator --------------------------------------------

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Run coordinator API ``name`` and return its answer (raises what it raised)."""
        return self.call_result(self.call_start(name, *args), name, timeout)

    def call_start(self, name: str, *args: Any, post: bool = False) -> int:
        """Send a request for coordinator API ``name``; :meth:`call_result` collects it.

        ``post``: do not even wait for the request to leave (the arguments must not
        change until it has: pass bytes)."""
        reqid = next(self._reqids)
        self._waiting.add(reqid)
        try:
            req = P.Req(reqid, name, args).encode()
            if post:
                if not self.transport.post(P.COORDINATOR, req):
                    raise PeerFailed(P.COORDINATOR)
            else:
                self.transport.send(P.COORDINATOR, req)
        except PeerFailed:
            self._waiting.discard(reqid)
            raise SystemExit("clustervm: the coordinator is gone") from None
        return reqid

    def call_result(self, reqid: int, name: str, timeout: float | None = None) -> Any:
        """The answer to request ``reqid`` (waits for it; raises what the API raised)."""
        replies = self._replies
        try:
            if not self.wait(lambda: reqid in replies, timeout, blocking=True):
                raise TimeoutError(f"{name}: no answer from the coordinator within {timeout} s")
        finally:
            self._waiting.discard(reqid)
        ok, value = replies.pop(reqid)
        if ok:
            return value
        raise remote.unpack_exception(value)

    def _on_reply(self, src_rank: int, msg: P.Reply) -> None:
        reqid, ok, value = msg.reqid, msg.ok, msg.value
        if reqid in self._waiting:
            self._replies[reqid] = (ok, value)
            return
        fut = self._futures.pop(reqid, None)
        if fut is not None and not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(remote.unpack_exception(value))
