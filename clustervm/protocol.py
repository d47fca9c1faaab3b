"""The messages between ranks: one small class per kind, the one place that lists them.

Every kind has its op code (``OP``), typed fields, ``encode()`` to the compact
tuple that travels (op first, then the fields in order: no names, no dict) and
:func:`decode`, which checks a received tuple's op, length and field types
through one table and gives the message object back. A malformed tuple raises
:class:`MessageError` (the receiver logs it naming the sender and drops it, as
the transport does with a bad frame). Receivers dispatch on the decoded class
through their handler tables (``Site.handlers``, extended by the coordinator
and the node); tests/test_protocol.py checks that every kind has a handler on
the side it is sent to.

The classes are written out by hand (``__slots__``, ``__init__``, ``encode``),
not made by ``@dataclass``: ``import clustervm`` does not load ``dataclasses``
(~11 ms to import, measured here, against 22 ms for all of clustervm), and a
frozen dataclass took ~1.2 us to build against ~0.2 us for these. USER, the
task-to-task hot path, has a hand-written decoder and :meth:`User.make`
(benchmarks/protocol_codec.py measures what each kind costs over bare tuples).
Treat a message as immutable. Op codes are plain ints (not an IntEnum) so the
wire codec stays on its fast path.

The coordinator's API (what a REQ carries) is listed in :data:`REQUESTS`; its
handlers are ``CoordinatorAPI._api_table`` (checked against this list by the tests).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from .errors import WireError

COORDINATOR = 0  # rank of the coordinator
MAIN_TID = 1     # tid of the application's main on the coordinator
ANY = -1         # wildcard source / tag, as PVM's -1
SYSTEM = -2      # source of notifications (vm.notify(..., tag=)); ANY never matches it

_NONE = type(None)
_SEQ = (tuple, list)


class MessageError(WireError):
    """A message from another rank is malformed: unknown op, wrong length or field type."""


class Message:
    """Base of the message kinds. A subclass sets ``OP``, ``__slots__`` (its fields, in
    wire order), ``TYPES`` (what :func:`decode` accepts for each field; ``object``: any)
    and ``TO`` (the sides that receive it: "coordinator", "node")."""

    __slots__ = ()
    OP: ClassVar[int] = -1
    TYPES: ClassVar[tuple] = ()
    TO: ClassVar[frozenset[str]] = frozenset()
    #: for a field that is a list of records: their length (checked with the first
    #: item of each record, a tid, an int); 0 if the message has no such list
    ITEM: ClassVar[int] = 0

    def encode(self) -> tuple:
        """The tuple that travels: ``(OP, field, ...)``."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and type(other) is type(self) \
            and self.encode() == other.encode()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"


# -- node -> coordinator -----------------------------------------------------------

class Hello(Message):
    """A node has started: its host and pid (node -> coordinator; answered by a HEARTBEAT)."""
    __slots__ = ("host", "pid")
    OP = 1
    TYPES = (str, int)
    TO = frozenset({"coordinator"})

    def __init__(self, host: str, pid: int) -> None:
        self.host, self.pid = host, pid

    def encode(self) -> tuple:
        return (1, self.host, self.pid)


class Done(Message):
    """Short tasks finished: ``items`` is ``[(tid, ok, value), ...]``, ``value`` the
    result, or the packed exception when not ``ok`` (node -> coordinator)."""
    __slots__ = ("items",)
    OP = 2
    TYPES = (list,)
    TO = frozenset({"coordinator"})
    ITEM = 3

    def __init__(self, items: list) -> None:
        self.items = items

    def encode(self) -> tuple:
        return (2, self.items)


class Exited(Message):
    """Incarnation ``inc`` of spawned task ``tid`` ended: ``value`` is its return value,
    or its packed exception when not ``ok``; ``outlog``: its replay log as it ended
    (``{dst: [(seq, tag, data), ...]}``: what receivers that have not checkpointed past
    it may still need; journaled with the result), encoded and packed into one blob
    (``wire.pack_frames``), or None; ``cut``: a checkpoint group member's last
    checkpoint if it sent the other members nothing after it (0: it took none and sent
    them nothing), else -1; ``ckpts``: as HEARTBEAT's, the node's count of checkpoints
    the coordinator was not told of, all so far (node -> coordinator)."""
    __slots__ = ("tid", "inc", "ok", "value", "outlog", "cut", "ckpts")
    OP = 3
    TYPES = (int, int, int, object, object, int, int)
    TO = frozenset({"coordinator"})

    def __init__(self, tid: int, inc: int, ok: bool, value: Any,
                 outlog: Any = None, cut: int = -1, ckpts: int = 0) -> None:
        self.tid, self.inc, self.ok, self.value, self.outlog = tid, inc, ok, value, outlog
        self.cut, self.ckpts = cut, ckpts

    def encode(self) -> tuple:
        return (3, self.tid, self.inc, self.ok, self.value, self.outlog, self.cut, self.ckpts)


class Req(Message):
    """A call of coordinator API ``name`` (see :data:`REQUESTS`) with ``args``; answered
    by a REPLY with the same ``reqid``, none when ``reqid`` is 0 (node -> coordinator)."""
    __slots__ = ("reqid", "name", "args")
    OP = 4
    TYPES = (int, str, _SEQ)
    TO = frozenset({"coordinator"})

    def __init__(self, reqid: int, name: str, args: tuple) -> None:
        self.reqid, self.name, self.args = reqid, name, args

    def encode(self) -> tuple:
        return (4, self.reqid, self.name, self.args)


class Heartbeat(Message):
    """I am alive: a node says how many tasks it holds (``running``) and how many
    checkpoints its tasks took that the coordinator was not told of (``ckpts``, all so
    far: the report's and the dashboard's count); the coordinator beats with 0, and
    answers a HELLO with one (both ways)."""
    __slots__ = ("running", "ckpts")
    OP = 5
    TYPES = (int, int)
    TO = frozenset({"coordinator", "node"})

    def __init__(self, running: int, ckpts: int = 0) -> None:
        self.running, self.ckpts = running, ckpts

    def encode(self) -> tuple:
        return (5, self.running, self.ckpts)


class Bye(Message):
    """The node leaves, as the coordinator asked (node -> coordinator)."""
    __slots__ = ()
    OP = 6
    TYPES = ()
    TO = frozenset({"coordinator"})

    def encode(self) -> tuple:
        return (6,)


# -- coordinator -> node -----------------------------------------------------------

class Run(Message):
    """Short tasks to run: ``items`` is ``[(tid, parent, fn_ref, args, kwargs,
    checkpoint or None), ...]`` (coordinator -> node)."""
    __slots__ = ("items",)
    OP = 10
    TYPES = (list,)
    TO = frozenset({"node"})
    ITEM = 6

    def __init__(self, items: list) -> None:
        self.items = items

    def encode(self) -> tuple:
        return (10, self.items)


class Spawn(Message):
    """Start incarnation ``inc`` of spawned task ``tid``: ``fn_ref(ctx, *args, **kwargs)``
    from checkpoint ``ckpt`` (None: from the start, or from ``ckpt_at``); ``replay``:
    others log what they send it; ``siblings``: (first tid, count) of its spawn;
    ``ckpt_at``: ``(rank, seq)``, a node's copy of checkpoint ``seq`` to start from (this
    node's own, or one a COPY from ``rank`` brings), or None; ``buddy``: ``(rank,
    to_store)``, where its checkpoints go (the node that keeps copies, 0 for none; and
    whether their bytes go to the coordinator too); ``group``: its checkpoint group (the
    first tid of its spawn, coordinated checkpoints) or 0 (coordinator -> node)."""
    __slots__ = ("tid", "parent", "fn", "args", "kwargs", "inc", "ckpt", "replay", "siblings",
                 "ckpt_at", "buddy", "group")
    OP = 11
    TYPES = (int, (int, _NONE), str, _SEQ, dict, int, (dict, _NONE), int, (*_SEQ, _NONE),
             (*_SEQ, _NONE), (*_SEQ, _NONE), int)
    TO = frozenset({"node"})

    def __init__(self, tid: int, parent: int | None, fn: str, args: tuple, kwargs: dict,
                 inc: int, ckpt: dict | None, replay: bool,
                 siblings: tuple[int, int] | None, ckpt_at: tuple[int, int] | None = None,
                 buddy: tuple[int, bool] | None = None, group: int = 0) -> None:
        self.tid, self.parent, self.fn, self.args, self.kwargs = tid, parent, fn, args, kwargs
        self.inc, self.ckpt, self.replay, self.siblings = inc, ckpt, replay, siblings
        self.ckpt_at, self.buddy, self.group = ckpt_at, buddy, group

    def encode(self) -> tuple:
        return (11, self.tid, self.parent, self.fn, self.args, self.kwargs, self.inc,
                self.ckpt, self.replay, self.siblings, self.ckpt_at, self.buddy, self.group)


class Kill(Message):
    """Abort spawned task ``tid`` if its incarnation is ``inc`` or older, and drop it if
    queued (coordinator -> node)."""
    __slots__ = ("tid", "inc")
    OP = 12
    TYPES = (int, int)
    TO = frozenset({"node"})

    def __init__(self, tid: int, inc: int) -> None:
        self.tid, self.inc = tid, inc

    def encode(self) -> tuple:
        return (12, self.tid, self.inc)


class Reply(Message):
    """The answer to REQ ``reqid``: ``value``, or the packed exception when not ``ok``
    (coordinator -> node)."""
    __slots__ = ("reqid", "ok", "value")
    OP = 13
    TYPES = (int, int, object)
    TO = frozenset({"node"})

    def __init__(self, reqid: int, ok: bool, value: Any) -> None:
        self.reqid, self.ok, self.value = reqid, ok, value

    def encode(self) -> tuple:
        return (13, self.reqid, self.ok, self.value)


class Loc(Message):
    """Where tasks live now: ``items`` is ``[(tid, rank, inc, replay, delivered), ...]``;
    rank < 0: the task has ended; ``delivered`` (or None): the sequence numbers it has
    received, per sender, so senders trim their replay logs and resend the rest
    (coordinator -> node; the coordinator applies it to its own table too)."""
    __slots__ = ("items",)
    OP = 14
    TYPES = (list,)
    TO = frozenset({"node"})
    ITEM = 5

    def __init__(self, items: list) -> None:
        self.items = items

    def encode(self) -> tuple:
        return (14, self.items)


class Shutdown(Message):
    """Leave: abort the tasks and say BYE; ``unclean``: a rank failed or never joined, so
    no rank may risk MPI_Finalize (coordinator -> node)."""
    __slots__ = ("unclean",)
    OP = 15
    TYPES = (int,)
    TO = frozenset({"node"})

    def __init__(self, unclean: bool) -> None:
        self.unclean = unclean

    def encode(self) -> tuple:
        return (15, self.unclean)


class Cancel(Message):
    """Drop short task ``tid`` if it is still queued (coordinator -> node)."""
    __slots__ = ("tid",)
    OP = 16
    TYPES = (int,)
    TO = frozenset({"node"})

    def __init__(self, tid: int) -> None:
        self.tid = tid

    def encode(self) -> tuple:
        return (16, self.tid)


# -- checkpoint copies (issue 14's buddy store) ---------------------------------------

class Keep(Message):
    """Hold a copy of checkpoint ``seq`` of incarnation ``inc`` of task ``tid``: ``blob``
    as its node encoded it (bytes, or a uint8 array when large: wire.as_blob_frame);
    answered by a HELD to rank ``ack``: the coordinator (0), or the node that took it (a
    checkpoint group's epoch, which the coordinator is not told of) (node -> its buddy)."""
    __slots__ = ("tid", "inc", "seq", "blob", "ack")
    OP = 30
    TYPES = (int, int, int, object, int)
    TO = frozenset({"node"})

    def __init__(self, tid: int, inc: int, seq: int, blob: Any, ack: int = 0) -> None:
        self.tid, self.inc, self.seq, self.blob, self.ack = tid, inc, seq, blob, ack

    def encode(self) -> tuple:
        return (30, self.tid, self.inc, self.seq, self.blob, self.ack)


class KeepRef(Message):
    """As KEEP, for a buddy on the same host: the copy is ``size`` bytes in the file
    ``path`` of /dev/shm (write count ``gen``; clustervm.shmcopies), if the buddy's
    ``host`` (shmcopies.host_id) is the sender's; else the buddy answers UNSHARED and
    gets a KEEP (node -> its buddy)."""
    __slots__ = ("tid", "inc", "seq", "path", "size", "gen", "host", "ack")
    OP = 41
    TYPES = (int, int, int, str, int, int, str, int)
    TO = frozenset({"node"})

    def __init__(self, tid: int, inc: int, seq: int, path: str, size: int, gen: int,
                 host: str, ack: int) -> None:
        self.tid, self.inc, self.seq, self.path = tid, inc, seq, path
        self.size, self.gen, self.host, self.ack = size, gen, host, ack

    def encode(self) -> tuple:
        return (41, self.tid, self.inc, self.seq, self.path, self.size, self.gen,
                self.host, self.ack)


class Unshared(Message):
    """This node cannot read your /dev/shm: send copy ``seq`` of incarnation ``inc`` of
    task ``tid`` as a KEEP, and every copy from now on (buddy -> node, after KEEPREF)."""
    __slots__ = ("tid", "inc", "seq")
    OP = 42
    TYPES = (int, int, int)
    TO = frozenset({"node"})

    def __init__(self, tid: int, inc: int, seq: int) -> None:
        self.tid, self.inc, self.seq = tid, inc, seq

    def encode(self) -> tuple:
        return (42, self.tid, self.inc, self.seq)


class Thaw(Message):
    """Members ``tids`` of group ``name``, which the coordinator put on MPI by itself
    (auto-frozen, core/groups.py): go off MPI, each saying so with its last shadows; a
    task joins the group, or a member ended (coordinator -> node)."""
    __slots__ = ("name", "tids")
    OP = 43
    TYPES = (str, _SEQ)
    TO = frozenset({"node"})

    def __init__(self, name: str, tids: list) -> None:
        self.name, self.tids = name, tids

    def encode(self) -> tuple:
        return (43, self.name, self.tids)


class Held(Message):
    """This node holds a copy of checkpoint ``seq`` of task ``tid`` (incarnation ``inc``;
    -1: a copy another node sent with a COPY) (buddy -> coordinator, or -> the node that
    took it: KEEP's ``ack``)."""
    __slots__ = ("tid", "inc", "seq")
    OP = 31
    TYPES = (int, int, int)
    TO = frozenset({"coordinator", "node"})

    def __init__(self, tid: int, inc: int, seq: int) -> None:
        self.tid, self.inc, self.seq = tid, inc, seq

    def encode(self) -> tuple:
        return (31, self.tid, self.inc, self.seq)


class Fetch(Message):
    """Send your copy of checkpoint ``seq`` of task ``tid`` to node ``to`` as a COPY (for
    a restart there, or to make a lost copy again) (coordinator -> a node that holds it)."""
    __slots__ = ("tid", "seq", "to")
    OP = 32
    TYPES = (int, int, int)
    TO = frozenset({"node"})

    def __init__(self, tid: int, seq: int, to: int) -> None:
        self.tid, self.seq, self.to = tid, seq, to

    def encode(self) -> tuple:
        return (32, self.tid, self.seq, self.to)


class Copy(Message):
    """Checkpoint ``seq`` of task ``tid`` for the node that restarts it; ``blob`` None:
    the sender no longer holds it; ``inc``: the incarnation that took it (node -> node)."""
    __slots__ = ("tid", "seq", "blob", "inc")
    OP = 33
    TYPES = (int, int, object, int)
    TO = frozenset({"node"})

    def __init__(self, tid: int, seq: int, blob: Any, inc: int = -1) -> None:
        self.tid, self.seq, self.blob, self.inc = tid, seq, blob, inc

    def encode(self) -> tuple:
        return (33, self.tid, self.seq, self.blob, self.inc)


class Restored(Message):
    """Incarnation ``inc`` of task ``tid`` runs again from checkpoint copy ``seq`` (``ok``),
    or could not get that copy (not ``ok``) (node -> coordinator)."""
    __slots__ = ("tid", "inc", "seq", "ok")
    OP = 34
    TYPES = (int, int, int, int)
    TO = frozenset({"coordinator"})

    def __init__(self, tid: int, inc: int, seq: int, ok: bool) -> None:
        self.tid, self.inc, self.seq, self.ok = tid, inc, seq, ok

    def encode(self) -> tuple:
        return (34, self.tid, self.inc, self.seq, self.ok)


class Forget(Message):
    """Task ``tid`` is over: drop the copies of its checkpoints (coordinator -> node)."""
    __slots__ = ("tid",)
    OP = 35
    TYPES = (int,)
    TO = frozenset({"node"})

    def __init__(self, tid: int) -> None:
        self.tid = tid

    def encode(self) -> tuple:
        return (35, self.tid)


class Mark(Message):
    """Member ``src`` (incarnation ``inc``) of a checkpoint group is at checkpoint ``seq``
    and had sent ``sent`` messages to member ``dst`` then (a coordinated checkpoint's cut,
    node -> the node of ``dst``; see Node._cut); ``ready``: 0 if its node asks every
    member to skip this one (memory for its first big state is being made ready);
    ``disk``: 1 if its node asks that this one go to the coordinator's disk (every
    member's does if one member's node asks)."""
    __slots__ = ("dst", "seq", "src", "inc", "sent", "ready", "disk")
    OP = 36
    TYPES = (int, int, int, int, int, int, int)
    TO = frozenset({"node"})

    def __init__(self, dst: int, seq: int, src: int, inc: int, sent: int,
                 ready: int = 1, disk: int = 0) -> None:
        self.dst, self.seq, self.src, self.inc, self.sent = dst, seq, src, inc, sent
        self.ready, self.disk = ready, disk

    def encode(self) -> tuple:
        return (36, self.dst, self.seq, self.src, self.inc, self.sent, self.ready, self.disk)


class AskHeld(Message):
    """Which checkpoint copies do you hold of tasks ``tids``? (a checkpoint group lost a
    member: the group goes back to the newest epoch held for every member). The node's
    members among ``tids`` take no checkpoint after this; answered by HOLDING
    (coordinator -> node)."""
    __slots__ = ("qid", "tids")
    OP = 37
    TYPES = (int, list)
    TO = frozenset({"node"})

    def __init__(self, qid: int, tids: list) -> None:
        self.qid, self.tids = qid, tids

    def encode(self) -> tuple:
        return (37, self.qid, self.tids)


class Holding(Message):
    """The answer to ASKHELD ``qid``: ``items`` is ``[(tid, seq, inc, age), ...]``, each
    copy this node holds and how many seconds ago it came (node -> coordinator)."""
    __slots__ = ("items", "qid")
    OP = 38
    TYPES = (list, int)
    TO = frozenset({"coordinator"})
    ITEM = 4

    def __init__(self, items: list, qid: int) -> None:
        self.items, self.qid = items, qid

    def encode(self) -> tuple:
        return (38, self.items, self.qid)


class Buddy(Message):
    """From now on copies of this node's checkpoints go to node ``rank`` (0: none, the
    coordinator keeps them) (coordinator -> node, when the nodes alive change)."""
    __slots__ = ("rank",)
    OP = 39
    TYPES = (int,)
    TO = frozenset({"node"})

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def encode(self) -> tuple:
        return (39, self.rank)


class Bell(Message):
    """The coordinator's doorbell, for nodes on other hosts: its UDP ``port`` and its
    host's IPv4 ``addrs``, where the node knocks (coordinator -> node, after a HELLO;
    clustervm.doorbell)."""
    __slots__ = ("port", "addrs")
    OP = 40
    TYPES = (int, list)
    TO = frozenset({"node"})

    def __init__(self, port: int, addrs: list) -> None:
        self.port, self.addrs = port, addrs

    def encode(self) -> tuple:
        return (40, self.port, self.addrs)


# -- task -> task ------------------------------------------------------------------

class User(Message):
    """Message number ``seq`` of incarnation ``inc`` of task ``src`` to task ``dst``, with
    ``tag`` and ``data``; ``src`` is SYSTEM for a notification (any rank -> any rank).

    The hot path: :meth:`make` builds the tuple without an object, and the decoder is
    written out. ``dst`` and ``tag`` are as the sending task gave them (any int-like)."""
    __slots__ = ("src", "dst", "tag", "data", "inc", "seq")
    OP = 20
    TYPES = (int, object, object, object, int, int)
    TO = frozenset({"coordinator", "node"})

    def __init__(self, src: int, dst: int, tag: int, data: Any, inc: int, seq: int) -> None:
        self.src, self.dst, self.tag, self.data, self.inc, self.seq = src, dst, tag, data, inc, seq

    def encode(self) -> tuple:
        return (20, self.src, self.dst, self.tag, self.data, self.inc, self.seq)

    @staticmethod
    def make(src: int, dst: int, tag: int, data: Any, inc: int, seq: int) -> tuple:
        """``User(src, dst, tag, data, inc, seq).encode()`` without making the object."""
        return (20, src, dst, tag, data, inc, seq)


def _decode_user(t: tuple) -> User:
    if type(t) is tuple and len(t) == 7:
        _, src, dst, tag, data, inc, seq = t
        if type(src) is int and type(inc) is int and type(seq) is int:
            m = _new(User)
            m.src, m.dst, m.tag, m.data, m.inc, m.seq = src, dst, tag, data, inc, seq
            return m
    _check(User, t)      # raises the error that says what is wrong
    raise MessageError(f"{_name(User)}: malformed")   # pragma: no cover - _check raised


# -- the table -----------------------------------------------------------------------

#: Every message kind, once.
KINDS: tuple[type[Message], ...] = (Hello, Done, Exited, Req, Heartbeat, Bye, Run, Spawn,
                                    Kill, Reply, Loc, Shutdown, Cancel, User,
                                    Keep, Held, Fetch, Copy, Restored, Forget, Mark,
                                    AskHeld, Holding, Buddy, Bell, KeepRef, Unshared, Thaw)

# the op codes by name (P.USER, ...), as tests and tools spell them
HELLO, DONE, EXITED, REQ, HEARTBEAT, BYE = (k.OP for k in KINDS[:6])
RUN, SPAWN, KILL, REPLY, LOC, SHUTDOWN, CANCEL = (k.OP for k in KINDS[6:13])
USER = User.OP
KEEP, HELD, FETCH, COPY, RESTORED, FORGET, MARK = (k.OP for k in KINDS[14:21])
ASKHELD, HOLDING, BUDDY, BELL, KEEPREF, UNSHARED, THAW = (k.OP for k in KINDS[21:28])

_new = object.__new__


def _name(cls: type[Message]) -> str:
    return f"{cls.__name__.upper()} (op {cls.OP})"


def _records_ok(items: list, size: int) -> bool:
    """Is every item a record of ``size`` fields starting with a tid?"""
    for r in items:
        if type(r) is not tuple and type(r) is not list or len(r) != size or type(r[0]) is not int:
            return False
    return True


def _check(cls: type[Message], t: tuple) -> None:
    """Raise MessageError if ``t`` is not a well-formed ``cls`` message."""
    if type(t) is not tuple:
        raise MessageError(f"{_name(cls)} as a {type(t).__name__}, not a tuple")
    n = len(cls.TYPES)
    if len(t) != n + 1:
        raise MessageError(f"{_name(cls)} has {len(t) - 1} field(s), not {n} "
                           f"({', '.join(cls.__slots__) or 'none'})")
    for i, (field, types) in enumerate(zip(cls.__slots__, cls.TYPES), 1):
        v = t[i]
        if types is not object and not isinstance(v, types):
            want = (" or ".join("None" if x is _NONE else x.__name__ for x in types)
                    if isinstance(types, tuple) else types.__name__)
            raise MessageError(f"{_name(cls)}: field {field} is {type(v).__name__}, "
                               f"not {want}")
    if cls.ITEM:
        for j, item in enumerate(t[1]):
            if type(item) not in _SEQ or len(item) != cls.ITEM or type(item[0]) is not int:
                raise MessageError(f"{_name(cls)}: item {j} of {cls.__slots__[0]} is not a "
                                   f"record of {cls.ITEM} fields starting with a tid "
                                   f"({_short(item)})")


def summary(msg: Any) -> str:
    """A short description of a received message for a log line (its op and shape)."""
    if isinstance(msg, tuple) and msg:
        return f"op {_short(msg[0])}, {len(msg)} fields"
    return f"a {type(msg).__name__}, not an op tuple"


def kind_of(msg: Any) -> str:
    """A received message's kind for an error ("message EXITED"), or its shape."""
    try:
        return f"message {type(decode(msg)).__name__.upper()}"
    except Exception:   # noqa: BLE001 - only a name for an error
        return f"a message ({summary(msg)})"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _decoder(cls: type[Message]) -> Callable[[tuple], Message]:
    """The decoder of kind ``cls``: the checks of :func:`_check`, on the fast path."""
    size = len(cls.TYPES) + 1
    checks = tuple((i, types) for i, types in enumerate(cls.TYPES, 1) if types is not object)
    item = cls.ITEM

    def decode_kind(t: tuple) -> Message:
        if type(t) is tuple and len(t) == size:
            for i, types in checks:
                if not isinstance(t[i], types):
                    break
            else:
                if not item or _records_ok(t[1], item):
                    return cls(*t[1:])
        _check(cls, t)      # raises the error that says what is wrong
        raise MessageError(f"{_name(cls)}: malformed")   # pragma: no cover - _check raised
    decode_kind.__qualname__ = f"decode_{cls.__name__.lower()}"
    return decode_kind


#: op -> its decoder: the one dispatch table of :func:`decode`
_DECODERS: dict[int, Callable[[tuple], Message]] = {k.OP: _decoder(k) for k in KINDS}
_DECODERS[USER] = _decode_user


def decode(msg: Any) -> Message:
    """The message object of a received tuple; MessageError if it is malformed."""
    try:
        dec = _DECODERS[msg[0]]
    except (KeyError, IndexError, TypeError):
        if type(msg) is not tuple:
            raise MessageError(f"a {type(msg).__name__} ({_short(msg)}), not a tuple "
                               f"(op, fields...)") from None
        if not msg:
            raise MessageError("an empty tuple, without an op") from None
        raise MessageError(f"unknown op {_short(msg[0])} (a message has one of the ops "
                           f"{sorted(_DECODERS)}; does the sender run another clustervm?)") \
            from None
    return dec(msg)      # each decoder checks that msg is a tuple


# -- the coordinator's API -----------------------------------------------------------

#: The names a REQ may carry: ``name: "(arguments) -> answer"``. The coordinator's
#: handlers are ``CoordinatorAPI._api_table`` (one per name here, no other).
REQUESTS: dict[str, str] = {
    "locate": "(tid, ended_ok=False) -> (rank, inc, replay): where a task runs now "
              "(rank None: being recovered; ENDED: it has ended and ended_ok)",
    "checkpoint": "(tid, inc, seq, delivered, blob, buddy=0) -> (buddy, to_store): a task's "
                  "checkpoint: blob (None: not sent here) kept by the coordinator, and/or by "
                  "the node and a copy sent to node buddy; answered once every copy is "
                  "held, with where to send the next one",
    "submit": "(parent, fn_ref, args, kwargs) -> the result, once the short task ran",
    "spawn": "(parent, fn_ref, args, kwargs, count, where, replay=True, per=None, "
             "checkpoint='log') -> [tid]",
    "join": "(tid) -> the return value of a spawned task, once it has ended",
    "tasks": "() -> [row]: the live tasks, main first",
    "kill": "(tid) -> None: cancel a short task, abort a spawned one",
    "notify": "(tid, kinds, tids, tag) -> None: send VM events to task tid (pvm_notify)",
    "join_group": "(name, tid) -> [inst, first round, new member]: join a dynamic group",
    "leave_group": "(name, tid) -> the instance number it had",
    "group_size": "(name) -> int",
    "group_tids": "(name) -> [tid] by instance",
    "group_tid": "(name, inst) -> tid",
    "group_inst": "(name, tid) -> inst",
    "collective": "(op, name, tid, value, count, root, fn, round_no=None, envelope=False) "
                  "-> this member's part of a collective call on the hub ((value, plan) "
                  "with envelope: plan rebuilds a frozen group's communicator)",
    "frozen_shadow": "(name, tid, entries) -> never answered (reqid 0): a batch of a frozen "
                     "group's calls made on MPI, kept for failover",
    "put_info": "(name, value) -> None: the VM-wide mailbox",
    "get_info": "(name, wait) -> the value (waits for it with wait)",
    "del_info": "(name) -> None",
    "node_failed": "(text) -> never answered: a node's handler failed on a message (a bug "
                   "of clustervm's); the job ends with an InternalError that says so",
    "bells": "() -> {rank: [host, port]}: the nodes' doorbells across hosts, as their "
             "knocks said (clustervm.doorbell)",
}
