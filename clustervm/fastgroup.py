"""Frozen groups: collectives on an MPI communicator of the members' ranks.

``ctx.freeze_group(name)`` (PVM's ``pvm_freezegroup``) makes a group static.
If its members are one per rank (main counts as rank 0), each member then
builds an MPI communicator of those ranks (``MPI_Comm_create_group`` on
COMM_WORLD, which involves only the members) and the group's collectives run
on it with MPI's non-blocking collectives, member to member, instead of going
through the coordinator as a hub.

Every collective starts with one ``Iallgather`` of a fixed-size slot per
member: what the member called (op, root, count, reduce op) plus its value
when that is small: an int of 64 bits, a float, bytes or a str as its raw bytes,
a small numpy array raw (8-byte aligned, reduced in place by every member), any
other value in the wire format. Every member sees every slot, so a mismatch
(different calls, a bad root) is the same GroupError everywhere, as on the hub,
and small values need no further step. Larger values follow: ``Ibcast`` from the root,
``Iallgatherv`` of everyone's bytes, or, for numpy arrays of the same dtype
and shape with sum/prod/min/max, ``Iallreduce`` / ``Ireduce`` straight on the
arrays. Reductions of anything else combine the gathered values in instance
order with the hub's code, so results are the same on both paths.

alltoall, reduce_scatter, scan and exscan gather every member's value the same
way (``Iallgatherv``) and each member computes its own answer with the hub's
code (``groups.combine``): the same results as on the hub, at MPI speed for
small values; alltoall moves every member's whole list to every member (n
times what an MPI alltoallv moves), so for large per-destination data prefer
point to point (``isend``/``irecv``).

Failure: a member polls its request and, meanwhile, watches for a member
whose node is lost (MPI error from ULFM, or the coordinator moving or ending
that member). Then it revokes the communicator (ULFM), so no member stays
blocked.

Surviving it (``freeze_group(..., survive=True)``, the default). Each member
keeps a *shadow* of every call it completed (its contribution; for an
allreduce that MPI computed, the result itself), the last 64 calls and at most
64 MiB, and sends them to the coordinator in a batch only when it needs them:
when it sees a member lost, when it leaves or ends, or when it has made no call
for ``IDLE_FLUSH_S`` (a member busy elsewhere must not hold back what the hub
needs). A member that keeps calling sends nothing: the cost of survival is a
tuple per call (and a copy of a mutable value; a large array is copied into memory
used before, a dropped shadow's, so no new pages are faulted in). On a loss:

1. The members that see it revoke the communicator, send their shadows and
   retry the call in progress through the coordinator. The first such call
   *thaws* the group there (groups.py): its last rounds are rebuilt from the
   shadows.
2. The lost member restarts from its checkpoint (on a survivor, a spare of
   ``--spares``, or a node of ``--replace-failed``) and makes its calls again
   through the coordinator; each gets the answer the others got on MPI (the
   rebuilt round, or MPI's own allreduce result), and the call in progress
   completes for everyone with the result an undisturbed run gives.
3. The first round every member then makes itself puts the group back on
   MPI: its answer carries a plan with the members' current ranks, and each
   member builds a new communicator (``MPI_Comm_create_from_group``:
   ``MPI_Comm_create_group`` on COMM_WORLD fails once a rank of it has failed,
   measured with Open MPI 5 ULFM). The next calls run on MPI (``group_on_mpi``
   is True again). If that round was a reduction of arrays, the members make it
   again on the new communicator, so that MPI sums it in the order of the
   undisturbed run. The group stays on the coordinator, said once in the log,
   if two members now share a rank, a member runs on a node started by
   ``MPI_Comm_spawn`` (outside COMM_WORLD), the MPI has no ULFM, or the new
   communicator did not come within ``BUILD_S`` (it hung in about 1 of 10
   tries after a failure here; a late one is revoked).

Rollback: only the lost member rolls back (to its own last checkpoint); the
others keep their state and go on. This gives the same results as rolling the
whole group back to its last checkpoint, with less work: a member's state
after a collective depends only on its state before and the answer it got
(tasks are piecewise deterministic, as the message replay of site.py assumes).
The survivors' states are those of the undisturbed run; the lost member
re-executes from its checkpoint and, for every call it makes again, gets the
answer it got (or would have got) in the undisturbed run, so it reaches the
same states too. A whole-group rollback would redo the survivors' work to
reach the states they already have. Float sums are the same bit for bit too:
a replayed reduction that MPI computed is answered with MPI's result, and the
call in progress, if it is a reduction of arrays, is made again on MPI. Only
while a group stays on the coordinator (see above) are its float arrays summed
left to right, which may differ in the last bits from MPI's order. A call the
lost member replays from
before the last 64 rounds kept fails with a GroupError that says to
checkpoint more often.

MPICH (no ULFM, no revoke): the members see a loss only when the coordinator
moves the lost member (heartbeat timeout, plus ``_GRACE_S``), then go on
through the coordinator as above; the group is never put back on MPI (no
ULFM to revoke a communicator given up on). But on one host, Hydra kills every
rank of the host when one is killed: the job is lost whatever the group does,
and ``--restarts`` runs it again from the journal (exact, when the members do
not checkpoint inside the group: groups are not in the journal, and a member
restored from a checkpoint taken inside one ends with a GroupError saying so;
tests/test_mpich.py).

With ``survive=False`` no shadows are kept: a lost member makes the calls
raise a GroupError naming it (never hang), later calls raise it too, and a
restarted member gets the same error from the coordinator; ``leave_group``
and ``join_group`` again make it a hub group.
"""
from __future__ import annotations

import functools
import logging
import os
import struct
import threading
import time
import weakref
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from mpi4py import MPI

from . import wire
from .blocks import received_buffer
from .errors import GroupError, Thawed
from .protocol import MAIN_TID
from .mailbox import TaskAborted
from .reduce import VECTOR_OPS, _reduce, combine
from .site import approx_size, snapshot
from .values import ARRAY_COPIES, IMMUTABLE

if TYPE_CHECKING:
    from .mailbox import TaskLike as TaskContext   # task.py imports this module
    from .site import Site

SLOT = 256                          # bytes per member in the first exchange
_HDR = struct.Struct("<8q")         # op, root, count, fn hash, flags, meta len, bufs len, spare
#: a whole slot as :meth:`FrozenGroup._call` reads it: the header, then the first byte after
#: it and the float after that (a scalar's type code and, for a float, its value), the rest
#: skipped
_HDRS = struct.Struct(f"<8qBd{SLOT - _HDR.size - 9}x")
_IMMUTABLE_TYPES = frozenset(IMMUTABLE)   # values a shadow keeps as they are (exact types)
_VALUE_OPS = frozenset(("reduce", "allreduce", "gather", "allgather", *VECTOR_OPS))  # all give one
_ROOM = SLOT - _HDR.size
_OPS = {"barrier": 1, "bcast": 2, "reduce": 3, "allreduce": 4, "gather": 5, "allgather": 6,
        "scatter": 7, "alltoall": 8, "reduce_scatter": 9, "scan": 10, "exscan": 11}
_NAMES = {v: k for k, v in _OPS.items()}
_HAS_VALUE, _META_INLINE, _BUFS_INLINE, _FAST, _RAW, _FAILED, _SCALAR = 1, 2, 4, 8, 16, 32, 64
_OFF = 128                          # not a call: this member is off MPI (auto-frozen groups)
_I64, _F64 = struct.Struct("<q"), struct.Struct("<d")
_UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}
_MPI_OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}
_FAST_KINDS = "biuf"                # integer, unsigned, float (complex: sum/prod only)
_SHADOW_KINDS = _FAST_KINDS + "c"   # arrays a shadow copies (any other value: snapshot)
_SPIN_S = 0.02                      # poll flat out this long, then back off
_CHECK_EVERY = 64                   # polls between looks at the members' whereabouts
_GRACE_S = 1.0                      # a member seen gone may still complete the call
_THAW_GRACE_S = 5.0                 # a call under way when asked off MPI must complete
_yield = getattr(os, "sched_yield", lambda: time.sleep(0))
KEEP_ROUNDS = 64                    # shadows kept by a member, at most (as the hub keeps) ...
KEEP_BYTES = 64 << 20               # ... and about this many bytes of them (the hub: 256 MiB)
_POOLED_BYTES = 64 << 10            # shadows of arrays this large go into memory used again
IDLE_FLUSH_S = 0.05                 # a member this long without a call sends its shadows
BUILD_S = 10.0                      # longest wait for a group's new communicator
log = logging.getLogger(__name__)


def _communicator(ranks: list[int], tag: int, after_loss: bool,
                  hold: "Callable[[bool], None] | None") -> MPI.Intracomm:
    """A new communicator of ``ranks`` of COMM_WORLD (collective over them alone)."""
    world = MPI.COMM_WORLD
    group = world.Get_group().Incl(ranks)
    try:
        if not after_loss:
            # 65536 > tag >= 2: never clustervm's point-to-point tags (1 and >= 65536)
            return world.Create_group(group, 2 + tag % 60000)
        # after a rank of COMM_WORLD failed, MPI_Comm_create_group on it fails
        # (MPI_ERR_PROC_FAILED, also after Ack_failed: measured with Open MPI 5 ULFM);
        # MPI-4's MPI_Comm_create_from_group needs no parent and works (~10 ms). The
        # string tag is the coordinator's: unique, the same at all. Another thread polling
        # MPI meanwhile (Iprobe + Ack_failed, as the transport does) made it hang in ~1 of
        # 10 tries, or crash, in a probe (never in 12 with the polls held off): ``hold``
        # holds them off
        if hold is not None:
            hold(True)
        try:
            return MPI.Intracomm.Create_from_group(
                group, f"clustervm.frozen.{tag}", MPI.INFO_NULL, MPI.ERRORS_RETURN)
        finally:
            if hold is not None:
                hold(False)
    finally:
        group.Free()


class FrozenGroup:
    """One member's view of a frozen group: the communicator and how to use it."""

    def __init__(self, ctx: "TaskContext", name: str, members: list, tag: int,
                 survive: bool = False, after_loss: bool = False,
                 hold: "Callable[[bool], None] | None" = None, comm: Any = None,
                 auto: bool = False) -> None:
        """Member ``ctx.tid`` of group ``name`` (``members``: (instance, tid, rank)); its
        communicator is built here (see :func:`_communicator`) unless ``comm`` is given
        (tests: a stand-in with the non-blocking collectives used here). ``auto``: the
        coordinator put this hub group on MPI itself (core/groups.py, ``_auto_freeze``):
        a call with ``count`` or a timeout, or the coordinator's asking (a task joins,
        a member left: :meth:`thaw_request`), takes it back to the coordinator."""
        self.ctx = ctx
        self.survive = survive
        self.auto = auto
        self._in_call = False           # a call of this member is under way (on MPI)
        self._thaw_asked = False        # the coordinator asked this member off MPI ...
        self._thaw_t = 0.0              # ... then (perf_counter)
        self._off: list | None = None   # its last exchange [request, buffers, comm to free]
        self._saw_off = False           # an exchange showed a member off: all are now
        self._revoked = False           # its communicator was revoked (or seen revoked)
        self.site: "Site" = ctx._site
        self.name = name
        self.members = sorted((int(i), int(t), int(r)) for i, t, r in members)   # by instance
        self.insts = [i for i, _, _ in self.members]
        self.pos_of_inst = {i: p for p, i in enumerate(self.insts)}
        self.me = next(p for p, (_, t, _) in enumerate(self.members) if t == ctx.tid)
        #: main is a member too, and this is another: results that MPI computed are kept
        #: by main, this member drops its own once main has it (_drop_last_result)
        self._main_keeps = ctx.tid != MAIN_TID and any(t == MAIN_TID for _, t, _ in members)
        self.broken: GroupError | None = None
        self.calls = 0
        self._lock = threading.Lock()
        self._pending: deque = deque()        # (bytes, shadow) not yet sent, oldest first
        self._pending_bytes = 0
        self._last_call = 0.0
        self._own_error: BaseException | None = None     # this member's own failed value
        self._mpi_result: Any = None                     # an allreduce computed by MPI
        self.deadline: float | None = None
        # the first exchange's buffers, the same every call (each call waits for its own
        # exchange; what a call returns is copied out of them)
        self._slot = np.zeros(SLOT, np.uint8)
        self._slots = np.empty(len(self.members) * SLOT, np.uint8)
        self._slot_mv = memoryview(self._slot)
        self._slots_mv = memoryview(self._slots)
        self._rows = self._slots.reshape(len(self.members), SLOT)     # one member's slot a row
        self._raw_metas: dict[tuple, bytes] = {}         # (dtype, shape) -> raw meta
        #: raw meta -> each member's array in its slot (views of ``_slots``, which every
        #: exchange fills in place)
        self._raw_views: dict[bytes, list[np.ndarray]] = {}
        self.comm = comm if comm is not None else _communicator(
            [r for _, _, r in self.members], tag, after_loss, hold)
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        # where the other members are now: a change means their node was lost
        self.watch = {}
        for _, t, r in self.members:
            if t not in (ctx.tid, MAIN_TID):
                self.site.locate(t)
                self.watch[t] = r

    # -- the call -------------------------------------------------------------

    def call(self, op: str, value: Any, count: Any, root: Any, fn: str | None,
             timeout: float | None = None, round_no: int | None = None) -> Any:
        if self.broken is not None:
            raise self.broken
        if self.auto and (timeout is not None or (op == "barrier" and count) or
                          op == "freeze"):
            # the hub's own kind of call: every member makes it (the same sequence of
            # calls), so every one takes the group back to the coordinator here
            self._go_off(f"{op} with a timeout" if timeout is not None else
                         "freeze_group" if op == "freeze" else f"{op} with count=")
            raise self.broken
        with self._lock:
            asked = self._thaw_asked
            self._in_call = not asked
        if asked:
            self._go_off("the coordinator asked (a task joins, or a member left)")
            raise self.broken
        try:
            return self._member_call(op, value, count, root, fn, timeout, round_no)
        finally:
            with self._lock:
                self._in_call = False
                asked = self._thaw_asked
            if asked and self.broken is None:     # asked while this call ran: the next
                self._go_off("the coordinator asked (a task joins, or a member left)")

    def _go_off(self, why: str) -> None:
        """Off MPI for good: this member's calls go through the coordinator from now on
        (Thawed); its shadows go there, the last batch saying so (``off``).

        Its next call's exchange is posted now, marked _OFF, and never waited for: every
        member makes exactly one more exchange (a call, or this), so whoever is in that
        call, or comes to it, sees the mark, and every member takes that call through the
        coordinator. No member waits on MPI for one that is off, and no communicator is
        revoked (unless a member is lost). Not after an exchange that showed a mark: all
        are off from that call on."""
        with self._lock:
            post = self._off is None and not self._saw_off and self.broken is None
            if self.broken is None:
                self.broken = Thawed(f"frozen group {self.name!r}: {why}; the group goes "
                                     f"on through the coordinator")
            if post:
                slot = np.zeros(SLOT, np.uint8)
                _HDR.pack_into(slot, 0, 0, -1, -1, 0, _OFF, 0, 0, 0)
                slots = np.empty(len(self.members) * SLOT, np.uint8)
                try:
                    self._off = [self.comm.Iallgather(slot, slots), slot, slots, None]
                except MPI.Exception:   # (revoked: a member was lost, and all see it)
                    self._off = [None, slot, slots, None]
                    self._revoked = True
        if post:
            _keep_last(self._off)       # (this object may go before the exchange is over)
        self.flush_shadows(off=True)

    def thaw_request(self) -> None:
        """The coordinator asks every member off MPI (a THAW, in a handler's thread). A
        member not in a call is off at once (:meth:`_go_off`). A call under way
        completes, as every member makes that exchange (a call, or its last one, marked
        off): off after it. (One not complete within _THAW_GRACE_S is given up:
        :meth:`_poll` revokes the communicator, and Open MPI prints ``NBC_Progress: an
        error 77 ...``.)"""
        with self._lock:
            self._thaw_t = time.perf_counter()
            self._thaw_asked = True
            busy = self._in_call
        if not busy:
            self._go_off("the coordinator asked (a task joins, or a member left)")

    def _member_call(self, op: str, value: Any, count: Any, root: Any, fn: str | None,
                     timeout: float | None, round_no: int | None) -> Any:
        self.calls += 1
        self.deadline = None if timeout is None else time.perf_counter() + timeout
        self._own_error = self._mpi_result = None
        shadow = self.survive and round_no is not None
        try:
            result = self._call(op, value, count, root, fn)
        except (Thawed, TimeoutError, TaskAborted):
            raise            # (the call in progress is retried on the hub, or the group is gone)
        except BaseException:
            if shadow:       # a call that ended with an error for every member, on MPI
                self._shadow(round_no, op, value, count, root, fn, self._own_error)
            raise
        if shadow:
            # kept once the call is complete: a member that did not complete it retries it
            # through the coordinator with its own value after a loss (then none is needed)
            self._shadow(round_no, op, value, count, root, fn, None, self._mpi_result)
        return result

    def _call(self, op: str, value: Any, count: Any, root: Any, fn: str | None) -> Any:
        failed = None
        try:
            slot, meta, bufs, value = self._prepare(op, value, count, root, fn)
        except Exception as exc:   # noqa: BLE001 - take part anyway, so no member waits
            failed, meta, bufs = exc, None, []
            slot = np.zeros(SLOT, np.uint8)
            _HDR.pack_into(slot, 0, _OPS[op], -2, -2, 0, _FAILED, 0, 0, 0)
        self._own_error = failed
        slots = self._slots
        self._wait(self.comm.Iallgather(slot, slots), op)
        hdrs = list(_HDRS.iter_unpack(slots))      # every member's header (and more)
        some = every = hdrs[0][4]          # the members' flags: in any slot, in all
        for h in hdrs:
            some |= h[4]
            every &= h[4]
        if some & _OFF:
            # a member is off MPI (asked, left, or a call of the hub's own): every member
            # takes this call through the coordinator; no exchange follows
            self._saw_off = True
            self._go_off("a member went off MPI")
            raise self.broken
        if failed is not None:
            raise failed
        if some & _FAILED:
            bad = [self.insts[p] for p, h in enumerate(hdrs) if h[4] & _FAILED]
            raise GroupError(f"{op} on frozen group {self.name!r}: instance(s) {bad} could not "
                             f"make their contribution (their own call raised the error); no "
                             f"member got a result")
        self._validate(op, hdrs)
        if op == "barrier":
            return None
        root_pos = self.pos_of_inst[root] if root is not None else None
        if op in ("bcast", "scatter"):
            got = self._from(root_pos, hdrs[root_pos], slots, op, bufs, meta)
            if op == "bcast":
                return got
            values = got
            if values is None or len(values) < max(self.insts) + 1:
                raise GroupError(f"scatter on group {self.name!r}: the root gave "
                                 f"{0 if values is None else len(values)} values for "
                                 f"{max(self.insts) + 1} instances")
            return values[self.insts[self.me]]
        if op in ("reduce", "allreduce") and every & _RAW and self._same_meta(hdrs):
            result = self._raw_reduce(hdrs, fn, meta)
            return result if op == "allreduce" or self.me == root_pos else None
        if op in ("reduce", "allreduce") and every & _FAST and self._same_meta(hdrs):
            return self._fast_reduce(op, value, fn, root_pos)
        plain = bool(every & _SCALAR)
        if plain:                                   # every value in its member's slot
            values = [self._scalar_at(p, h) for p, h in enumerate(hdrs)]
        else:
            values = self._everyone(hdrs, slots, op, bufs, meta)
        if op == "allgather":
            return values
        if op in VECTOR_OPS:      # computed by every member from everyone's value
            return combine(op, self.name, values, self.insts, fn, self.site)[self.me]
        if op == "gather":
            return values if self.me == root_pos else None
        result = _reduce(values, fn, self.site, plain)
        return result if op == "allreduce" or self.me == root_pos else None

    def _prepare(self, op: str, value: Any, count: Any, root: Any, fn: str | None) -> tuple:
        """This member's slot (and its value's meta and buffers when they do not fit)."""
        has_value = op in _VALUE_OPS or \
            (op in ("bcast", "scatter") and root == self.insts[self.me])
        slot = self._slot
        meta = head = None
        bufs: list = []
        flags = 0
        if has_value and op in ("reduce", "allreduce") and _fast_ok(value, fn) and \
                value.nbytes + 32 + 8 * value.ndim <= _ROOM:
            # a small array: its raw bytes in the slot, reduced by every member at once
            key = (value.dtype, value.shape)      # (a 0-d array stays one)
            if not value.flags.c_contiguous:
                value = np.ascontiguousarray(value)
            meta = self._raw_metas.get(key)
            if meta is None:
                meta = self._raw_metas[key] = struct.pack(
                    f"<q{len(key[1])}q", len(key[1]), *key[1]) + key[0].str.encode()
            flags = _HAS_VALUE | _RAW | _META_INLINE | _BUFS_INLINE
            mv, at = self._slot_mv, _raw_at(len(meta))
            mv[_HDR.size:_HDR.size + len(meta)] = meta
            mv[at:at + value.nbytes] = memoryview(value).cast("B")
            total = value.nbytes
        elif has_value and (scalar := _scalar(value)) is not None:
            # an int, float, bytes or str that fits: its raw bytes after a type code
            meta, payload = scalar
            flags = _HAS_VALUE | _SCALAR | _META_INLINE | _BUFS_INLINE
            mv, at = self._slot_mv, _HDR.size + 1
            mv[_HDR.size] = meta[0]
            mv[at:at + len(payload)] = payload
            total = len(payload)
        elif has_value:
            flags |= _HAS_VALUE
            if op in ("reduce", "allreduce") and _fast_ok(value, fn):
                flags |= _FAST
                value = np.ascontiguousarray(value)
            head, bufs = wire.dumps(value, allow_pickle=self.site.transport.allow_pickle)
            meta = struct.pack(f"<q{len(bufs)}q", len(bufs), *(memoryview(b).nbytes for b in bufs)) \
                + bytes(head)
            total = sum(memoryview(b).nbytes for b in bufs)
            if len(meta) <= _ROOM:
                flags |= _META_INLINE
                slot[_HDR.size:_HDR.size + len(meta)] = np.frombuffer(meta, np.uint8)
                if len(meta) + total <= _ROOM:
                    flags |= _BUFS_INLINE
                    at = _HDR.size + len(meta)
                    for b in bufs:
                        n = memoryview(b).nbytes
                        slot[at:at + n] = np.frombuffer(b, np.uint8)
                        at += n
            if not (flags & _META_INLINE and not flags & _BUFS_INLINE and len(bufs) == 1):
                flags &= ~_FAST
        else:
            total = 0
        _HDR.pack_into(slot, 0, _OPS[op], -1 if root is None else int(root),
                       -1 if count is None else int(count),
                       0 if fn is None else _fn_hash(fn), flags,
                       0 if meta is None else len(meta), total, 0)
        return slot, meta, bufs, value

    def _shadow(self, round_no: int, op: str, value: Any, count: Any, root: Any,
                fn: str | None, failed: BaseException | None, result: Any = None) -> None:
        """Keep this complete call's contribution (and ``result``, when MPI computed it)
        for the coordinator, sent later in a batch (see :meth:`flush_shadows`): if a
        member is lost, the group goes on on the hub from these (see groups.py)."""
        why = None
        if self._main_keeps:
            self._drop_last_result(round_no)
        size = 64                           # what a shadow of no array counts for
        if result is not None:
            result, value = self._copy(result), None    # the caller may change its copy
            size += approx_size(result)
        elif failed is not None:
            why = (f"{op} on frozen group {self.name!r}: instance(s) [{self.insts[self.me]}] "
                   f"could not make their contribution (their own call raised the error); no "
                   f"member got a result")
            value = None
        elif type(value) in _IMMUTABLE_TYPES:
            pass                            # (a barrier's None, a scalar: kept as it is)
        elif isinstance(value, np.ndarray) and value.dtype.kind in _SHADOW_KINDS:
            value = self._copy(value)       # the caller may change it once the call returns
            size = approx_size(value)
        elif not isinstance(value, IMMUTABLE):
            try:
                value = snapshot(value)     # the caller may change it once the call returns
            except Exception:   # noqa: BLE001 - unsendable: the MPI exchange fails alike
                value = None
            if not (value is None or isinstance(value, IMMUTABLE)):
                size = approx_size(value)
        with self._lock:
            pending = self._pending
            pending.append((size, (round_no, op, value, count, root, fn, why, result)))
            self._pending_bytes += size
            while len(pending) > KEEP_ROUNDS or (len(pending) > 1 and
                                                 self._pending_bytes > KEEP_BYTES):
                gone, _ = pending.popleft()
                self._pending_bytes -= gone
            self._last_call = time.monotonic()
        if not _FLUSHER.kick.is_set():
            _FLUSHER.wake(self)

    def _drop_last_result(self, round_no: int) -> None:
        """This member completed round ``round_no`` on MPI, so main (a member too) posted
        its exchange, so main's call of every round before it completed: main's shadow
        keeps their results (main is never lost; its shadows reach the coordinator
        without a transfer, and no round completes there without them). The result this
        member kept of the round before is not needed any more: an 8 MiB allreduce's
        copy goes to the coordinator at most once a batch, not once a call, and its
        memory takes the next result. (Until then it is needed: a member that completed
        a call, and main whose call of it did not complete before a loss, must get the
        same result.)"""
        with self._lock:
            pending = self._pending
            if not pending:
                return
            size, entry = pending[-1]
            result = entry[7]
            if result is None or entry[0] >= round_no:
                return
            less = approx_size(result)
            pending[-1] = (size - less, (*entry[:7], None))
            self._pending_bytes -= less

    @staticmethod
    def _copy(a: np.ndarray) -> np.ndarray:
        """A copy of array ``a`` for a shadow: a large one into memory used again
        (values.ARRAY_COPIES: a dropped shadow's, once nothing refers to it any more,
        whether the shadow was sent or not), so no new pages are faulted in (an 8 MiB
        bcast's root: 2.7-11 ms a call into new memory)."""
        return ARRAY_COPIES.copy(a) if a.nbytes >= _POOLED_BYTES else a.copy()

    def flush_shadows(self, idle_s: float = 0.0, off: bool = False) -> bool:
        """Send the kept shadows to the coordinator (if this member has made no call for
        ``idle_s``); True if some are still kept (the member was busy). ``off``: the last
        batch, sent even if empty: this member makes no more calls on MPI."""
        with self._lock:       # held while posting: batches leave in order
            if not self._pending and not off:
                return False
            if idle_s and time.monotonic() - self._last_call < idle_s:
                return True
            entries = [e for _, e in self._pending]
            self._pending.clear()
            self._pending_bytes = 0
            site = self.site
            args = (self.name, self.ctx.tid, entries) + ((True,) if off else ())
            try:
                _send_shadows(site, args)
            except Exception:   # noqa: BLE001 - a value that is not wire data: say so instead
                args = (self.name, self.ctx.tid, [_sendable(e, self.name) for e in entries],
                        *args[3:])
                try:
                    _send_shadows(site, args)
                except Exception:   # noqa: BLE001 - the coordinator is gone: nothing to keep
                    log.debug("frozen group %r: shadows not sent", self.name, exc_info=True)
        return False

    def _validate(self, op: str, hdrs: list) -> None:
        first = hdrs[0]
        same = first[:4]
        for p, other in enumerate(hdrs):
            if other[:4] != same:
                ops = " (with different reduce ops)" if other[:3] == first[:3] else ""
                raise GroupError(
                    f"members of frozen group {self.name!r} made different collective calls "
                    f"in call {self.calls}: instance {self.insts[0]} called {_describe(first)}, "
                    f"instance {self.insts[p]} called {_describe(other)}{ops}; every member "
                    f"must make the same sequence of collective calls on a group, with the "
                    f"same op, root and count")
        root = hdrs[0][1]
        if _OPS[op] in (2, 3, 5, 7) and root not in self.pos_of_inst:
            raise GroupError(f"{op} on group {self.name!r}: root instance {root} is not a "
                             f"member; root= is the instance number of a member, one of "
                             f"{self.insts} (see group_tids)")

    # -- moving the values --------------------------------------------------------

    def _from(self, pos: int, hdr: tuple, slots: np.ndarray, op: str, my_bufs: list,
              my_meta: bytes | None) -> Any:
        """The value of member ``pos`` (the root), sent to every member."""
        flags, mlen = hdr[4], hdr[5]
        if flags & _SCALAR:
            return self._scalar_at(pos, hdr)
        base = pos * SLOT + _HDR.size
        if self.me == pos:
            meta = my_meta
        elif flags & _META_INLINE:
            meta = bytes(slots[base:base + mlen])
        else:
            buf = bytearray(mlen)
            self._wait(self.comm.Ibcast([buf, MPI.BYTE], root=pos), op)
            meta = bytes(buf)
        if self.me == pos and not flags & _META_INLINE:
            self._wait(self.comm.Ibcast([bytearray(my_meta), MPI.BYTE], root=pos), op)
        nb, lens, head = _parse_meta(meta)
        if flags & _BUFS_INLINE:
            at, bufs = base + mlen, []
            for n in lens:
                bufs.append(bytearray(slots[at:at + n]))
                at += n
        else:
            bufs = []
            for i, n in enumerate(lens):
                if self.me == pos:
                    b = my_bufs[i]
                    if memoryview(b).readonly:
                        b = bytearray(b)
                else:
                    b = received_buffer(n)
                self._wait(self.comm.Ibcast([b, MPI.BYTE], root=pos), op)
                # the root gets a copy of its own value, as everyone else
                bufs.append(bytearray(b) if self.me == pos else b)
        return wire.loads(head, bufs, allow_pickle=self.site.transport.allow_pickle)

    def _everyone(self, hdrs: list, slots: np.ndarray, op: str, my_bufs: list,
                  my_meta: bytes | None) -> list:
        """Every member's value, in instance order."""
        n = len(hdrs)
        metas: list = [None] * n
        need = [h[5] if not h[4] & _META_INLINE else 0 for h in hdrs]
        if any(need):
            out = bytearray(sum(need))
            mine = bytearray(my_meta) if need[self.me] else bytearray()
            self._wait(self.comm.Iallgatherv([mine, MPI.BYTE], [out, (need, None), MPI.BYTE]), op)
            at = 0
            for p in range(n):
                if need[p]:
                    metas[p] = bytes(out[at:at + need[p]])
                    at += need[p]
        for p, h in enumerate(hdrs):
            if metas[p] is None:
                base = p * SLOT + _HDR.size
                metas[p] = bytes(slots[base:base + h[5]])
        parsed = [_parse_meta(m) if not hdrs[p][4] & (_RAW | _SCALAR) else None
                  for p, m in enumerate(metas)]
        blobs: list = [None] * n
        need = [h[6] if not h[4] & _BUFS_INLINE else 0 for h in hdrs]
        if any(need):
            out = bytearray(sum(need))
            mine = bytearray(b"".join(bytes(b) for b in my_bufs)) if need[self.me] else bytearray()
            self._wait(self.comm.Iallgatherv([mine, MPI.BYTE], [out, (need, None), MPI.BYTE]), op)
            view, at = memoryview(out), 0
            for p in range(n):
                if need[p]:
                    blobs[p], at = view[at:at + need[p]], at + need[p]
        values = []
        for p, got in enumerate(parsed):
            if hdrs[p][4] & _SCALAR:
                values.append(self._scalar_at(p, hdrs[p]))
                continue
            if got is None:                       # a small array sent raw
                values.append(_raw_value(metas[p], slots, p * SLOT + _raw_at(hdrs[p][5]),
                                         hdrs[p][6]))
                continue
            nb, lens, head = got
            if blobs[p] is None:
                base = p * SLOT + _HDR.size + hdrs[p][5]
                blob = memoryview(bytearray(slots[base:base + sum(lens)]))
            else:
                blob = blobs[p]
            bufs, at = [], 0
            for ln in lens:
                bufs.append(blob[at:at + ln])
                at += ln
            values.append(wire.loads(head, bufs, allow_pickle=self.site.transport.allow_pickle))
        return values

    def _same_meta(self, hdrs: list) -> bool:
        """Did every member's slot carry the same meta (its inline part: for raw arrays,
        dtype and shape) as the first's?"""
        mv = self._slots_mv
        at, n = _HDR.size, hdrs[0][5]
        first = mv[at:at + n]
        for h in hdrs[1:]:
            at += SLOT
            if h[5] != n or mv[at:at + n] != first:
                return False
        return True

    def _raw_reduce(self, hdrs: list, fn: str, meta: bytes) -> np.ndarray:
        """Small arrays of one dtype and shape (``meta``, every member's): combined left to
        right in instance order, as the hub does (so results are bit for bit the same)."""
        views = self._raw_views.get(meta)
        if views is None:
            shape, dtype = _raw_meta(meta)
            at, nbytes = _raw_at(len(meta)), hdrs[0][6]
            views = self._raw_views[meta] = [
                row[at:at + nbytes].view(dtype).reshape(shape) for row in self._rows]
        ufunc = _UFUNCS[fn]
        if len(views) > 1 and views[0].ndim:      # (of 0-d arrays a ufunc gives a scalar)
            acc, rest = ufunc(views[0], views[1]), views[2:]
        else:
            acc, rest = views[0].copy(), views[1:]
        for v in rest:
            ufunc(acc, v, out=acc)
        # 0-d arrays: the hub's ufuncs give a numpy scalar (a lone member: its array)
        return acc[()] if acc.ndim == 0 and len(views) > 1 else acc

    def _scalar_at(self, pos: int, hdr: tuple) -> Any:
        """The value member ``pos`` sent in its slot (see :func:`_scalar`)."""
        code = hdr[8]
        if code == 0x66:                      # b"f": read with the header (_HDRS)
            return hdr[9]
        at = pos * SLOT + _HDR.size
        mv = self._slots_mv
        if code == 0x69:                      # b"i"
            return _I64.unpack_from(mv, at + 1)[0]
        data = mv[at + 1:at + 1 + hdr[6]]
        if code == 0x62:                      # b"b"
            return bytes(data)
        return str(data, "utf-8")             # b"s"

    def _fast_reduce(self, op: str, value: np.ndarray, fn: str, root_pos: int | None) -> Any:
        out = np.frombuffer(received_buffer(value.nbytes), value.dtype).reshape(value.shape)
        mpi_op = _MPI_OPS[fn]
        if op == "allreduce" or self.survive:
            # (a reduce of a group that survives: every member keeps the root's result,
            # so a root restarted after a loss gets it again, bit for bit)
            self._wait(self.comm.Iallreduce(value, out, op=mpi_op), op)
            # MPI combined the values in its own order (float sums may differ in the last
            # bits from the hub's left-to-right order): a member replaying this call after
            # a loss gets this very result
            self._mpi_result = out
            return out if op == "allreduce" or self.me == root_pos else None
        self._wait(self.comm.Ireduce(value, out if self.me == root_pos else None, op=mpi_op,
                                     root=root_pos), op)
        return out if self.me == root_pos else None

    # -- waiting, and noticing a lost member ------------------------------------------

    def _wait(self, req: MPI.Request, op: str) -> None:
        """Poll ``req`` until done: flat out for _SPIN_S, then with short sleeps;
        meanwhile look out for a lost member, an aborted task and the caller's timeout.
        (MPI moves a big collective's data only while polled: with 5 ms instead of 20,
        an 8 MiB allreduce took 2-5x longer here; kmeans, 3 tasks on 2 cores, whose
        members wait for each other's computing, ran ~5 % faster.)"""
        try:
            if req.Test():
                return
        except MPI.Exception as exc:
            self._break(op, f"MPI reported an error ({exc.Get_error_string()})")
        transport = self.site.transport
        with transport.foreground():    # this thread polls for the rank meanwhile
            self._poll(req, op, transport)

    def _poll(self, req: MPI.Request, op: str, transport: Any) -> None:
        t0 = time.perf_counter()
        polls = 0
        pause = 0.00005
        gone_since = None
        while True:
            try:
                if req.Test():
                    return
            except MPI.Exception as exc:
                self._break(op, f"MPI reported an error ({exc.Get_error_string()})")
            polls += 1
            now = time.perf_counter()
            spinning = now - t0 < _SPIN_S
            if spinning and polls % _CHECK_EVERY:
                continue
            transport.try_poll()  # messages for this rank (background pollers keep off)
            _yield()              # more ranks than cores: let the others run now and then
            if self._thaw_asked and now - self._thaw_t > _THAW_GRACE_S:
                self._break(op, "this call did not complete")    # (revokes)
            if self.ctx.aborted:
                self._revoke()
                raise TaskAborted(self.ctx.tid)
            if self.deadline is not None and now > self.deadline:
                self._revoke()
                self.broken = GroupError(f"an earlier {op} on frozen group {self.name!r} timed "
                                         f"out; the group's communicator was given up")
                raise TimeoutError(f"{op} on frozen group {self.name!r}: not complete within "
                                   f"the timeout; the group cannot be used any more (leave_group "
                                   f"and join_group again to go on as a hub group)")
            lost = self._lost()
            if lost:
                gone_since = gone_since or now
                if now - gone_since > _GRACE_S:
                    self._break(op, "seen by the VM")
            else:
                gone_since = None
            if not spinning:
                time.sleep(pause)
                pause = min(0.001, pause * 2)

    def _lost(self, failed_ranks: frozenset = frozenset(), certain: bool = False) -> str:
        """The members that are gone (their node lost, moved elsewhere, or ended); with
        ``certain``, only those known lost or moved ("ended" may just mean not heard of)."""
        locs = self.site.locations
        failed = self.site.transport.failed
        dead, moved, ended = [], [], []        # most certain first: name only those
        for inst, tid, rank in self.members:
            if tid not in self.watch and rank not in failed_ranks:
                continue
            loc = locs.get(tid)
            if rank in failed or rank in failed_ranks:
                dead.append(f"task {tid} (instance {inst}) was lost with node {rank}")
            elif loc is not None and loc.rank != rank:
                moved.append(f"task {tid} (instance {inst}) was lost with node {rank} and "
                             f"restarted on node {loc.rank}")
            elif loc is None:
                ended.append(f"task {tid} (instance {inst}, on node {rank}) ended or was lost")
        return "; ".join(dead or moved or ([] if certain else ended))

    def _break(self, op: str, why: str) -> None:
        self._revoke()
        if self.survive:             # go on on the hub: the caller retries this call there
            what = "the coordinator asked it off MPI" if self._thaw_asked else \
                "a member was lost"
            self.broken = Thawed(f"{op} on frozen group {self.name!r}: {what} ({why}); the "
                                 f"group goes on through the coordinator")
            # (the shadows first: the hub rebuilds rounds from them)
            self.flush_shadows(off=True)
            raise self.broken
        failed: set = set()
        try:                                   # ULFM: which ranks of the communicator failed
            fg = self.comm.Get_failed()
            pos = MPI.Group.Translate_ranks(fg, list(range(fg.Get_size())), self.comm.Get_group())
            failed = {self.members[p][2] for p in pos if p is not None and p >= 0}
            fg.Free()
        except Exception:   # noqa: BLE001 - no ULFM
            pass
        # a revoke by another member can come before this one hears of the loss: wait a
        # little for a certain answer before naming members only not heard of
        lost = self._lost(frozenset(failed), certain=True)
        deadline = time.perf_counter() + 2 * _GRACE_S
        while not lost and time.perf_counter() < deadline:   # the VM has yet to hear of it
            time.sleep(0.01)
            lost = self._lost(certain=True)
        lost = lost or self._lost(frozenset(failed))
        self.broken = GroupError(
            f"{op} on frozen group {self.name!r} cannot complete: member "
            f"{lost or 'on a lost node'} ({why}); a frozen group (on MPI collectives) does not "
            f"survive the loss of a member. Have every member leave_group({self.name!r}) and "
            f"join_group again to go on as a hub group")
        raise self.broken

    def _revoke(self) -> None:
        self._revoked = True
        try:
            self.comm.Revoke()        # ULFM: every member's pending call on it ends
        except Exception:   # noqa: BLE001 - no ULFM: the others see the loss themselves
            pass

    def close(self) -> None:
        """This member leaves: the others' calls on the communicator must not wait for it
        (an auto-frozen group's: the coordinator asks the others off MPI instead)."""
        if self.auto:
            self._go_off("this task left it")
        elif self.broken is None:
            self._revoke()
        self.flush_shadows(off=True)
        self.broken = self.broken or GroupError(f"this task left frozen group {self.name!r}")

    def retire(self) -> None:
        """This member makes no more calls on the communicator: free it if every member
        went off it cleanly (:meth:`_go_off`: a join, a leave, ``count=``, a task's end
        in an auto-frozen group). Each time a group goes back on MPI its members build a
        new one (~10 KB each in Open MPI). Its last exchange, if still under way, completes
        first: the communicator is freed with it (:func:`_keep_last`). Any other is kept:
        a revoked one (a member lost: freeing it made the next communicator's first call
        hang, Open MPI 5 with ULFM, tests/test_groups.py's
        ``test_frozen_group_goes_back_on_mpi_after_a_killed_node``), and one whose
        other members may still call on it and revoke it (a frozen group's member that
        ended)."""
        with self._lock:
            if self.broken is None:
                self.broken = GroupError(f"this task is done with frozen group {self.name!r}")
            comm, self.comm = self.comm, None
        if comm is None or self._revoked or not (self._off or self._saw_off):
            return
        with _LAST_LOCK:
            off = self._off
            if off is not None and off[0] is not None:
                off[3] = comm
                comm = None
        if comm is None:
            _keep_last(None)        # (frees it now if that exchange is over)
        else:
            _free(comm)


def thaw(site: "Site", name: str, tids: list) -> None:
    """A THAW: members ``tids`` (tasks of this rank) of auto-frozen group ``name`` go
    off MPI. One that has no communicator for it (its build failed, or it is a new
    incarnation) is off already, and says so."""
    for tid in tids:
        ctx = site.contexts.get(tid)
        fg = ctx.__dict__.get("_frozen", {}).get(name) if ctx is not None else None
        if fg is not None:
            fg.thaw_request()
        elif ctx is not None:
            _send_shadows(site, (name, tid, [], True))


def _send_shadows(site: "Site", args: tuple) -> None:
    """A member's ``frozen_shadow`` call (never answered): main's is served on the
    coordinator itself, a task's posted to it. Raises what encoding it raises."""
    if site.rank == 0:
        site._serve("frozen_shadow", args, _no_reply)
        return
    from . import protocol as P
    site.transport.post(P.COORDINATOR, _request("frozen_shadow", args))


def task_ended(ctx: "TaskContext") -> None:
    """A member task ends: the shadows it still keeps go to the coordinator (a member
    lost later replays calls that this one made). A member of an auto-frozen group goes
    off MPI (its last exchange marked off): a member still calling there takes its next
    call through the coordinator at once, instead of waiting _GRACE_S for the end to
    be seen."""
    for fg in list(ctx.__dict__.get("_frozen", {}).values()):
        if fg.auto and fg.broken is None:
            fg._go_off("its task ended")
        elif fg.survive:
            fg.flush_shadows()
        fg.retire()


#: the last exchanges of members gone off MPI [request, buffers, comm to free], kept
#: until complete: MPI writes into the buffers until every member has made that exchange
_LAST: list[list] = []
_LAST_LOCK = threading.Lock()


def _keep_last(entry: list | None) -> None:
    """Keep ``entry`` (if any) until its exchange completes; let go of those complete,
    and free the communicators that waited for them (FrozenGroup.retire)."""
    done = []
    with _LAST_LOCK:
        live = []
        for item in _LAST:
            try:
                if item[0] is not None and not item[0].Test():
                    live.append(item)
                    continue
            except Exception:   # noqa: BLE001 - revoked (a member lost): over
                pass
            done.append(item[3])
        if entry is not None:
            live.append(entry)
        _LAST[:] = live
    for comm in done:
        if comm is not None:
            _free(comm)


def _free(comm: Any) -> None:
    """MPI_Comm_free (local in Open MPI); a revoked one may not free cleanly."""
    try:
        comm.Free()
    except Exception:   # noqa: BLE001 - best effort
        log.debug("a frozen group's communicator did not free cleanly", exc_info=True)


class _Flusher:
    """One thread per process: sends the shadows of members that stopped calling (a
    member busy elsewhere, say waiting for a message, must not hold back the shadows
    that the hub needs after a loss). A member that keeps calling sends none: they
    are needed only when a member is lost, and then it sends them itself."""

    def __init__(self) -> None:
        self.kick = threading.Event()
        self.groups: "weakref.WeakSet[FrozenGroup]" = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def wake(self, group: "FrozenGroup") -> None:
        self.groups.add(group)
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="clustervm-shadows")
                    self._thread.start()
        self.kick.set()

    def _run(self) -> None:
        while True:
            self.kick.wait()
            self.kick.clear()
            busy = True
            while busy:
                time.sleep(IDLE_FLUSH_S)
                busy = False
                for g in list(self.groups):
                    try:
                        busy = g.flush_shadows(IDLE_FLUSH_S) or busy
                    except Exception:   # noqa: BLE001 - logged; the loop goes on
                        log.exception("frozen group %r: sending shadows failed", g.name)


_FLUSHER = _Flusher()


def _request(name: str, args: tuple) -> Any:
    """A REQ that nobody answers (reqid 0), as protocol.py spells it (a typed ``Req``
    where it has one)."""
    from . import protocol as P
    req = getattr(P, "Req", None)
    return req(0, name, args).encode() if req is not None else (P.REQ, 0, name, args)


def _sendable(entry: tuple, name: str) -> tuple:
    """A shadow whose value is not wire data: sent with the error its call had instead."""
    round_no, op, value, count, root, fn, why, result = entry
    try:
        wire.dumps(value)
        return entry
    except Exception:   # noqa: BLE001
        return (round_no, op, None, count, root, fn,
                why or f"{op} on frozen group {name!r}: a value that cannot be sent", result)


def _no_reply(ok: bool, value: Any) -> None:
    """Shadows are never answered."""


def _fast_ok(value: Any, fn: str | None) -> bool:
    if not isinstance(value, np.ndarray) or fn not in _MPI_OPS or value.size == 0:
        return False
    kind = value.dtype.kind
    return kind in _FAST_KINDS or (kind == "c" and fn in ("sum", "prod"))


def _scalar(value: Any) -> tuple[bytes, bytes] | None:
    """(type code, bytes) of a value a frozen group sends in the slot itself, without
    the wire format: an int of 64 bits, a float, bytes or a str (exactly those types, so
    that every member gets what the wire gives: the same type and value); None for any
    other value, or one too large for the slot."""
    t = type(value)
    if t is float:
        return b"f", _F64.pack(value)
    if t is int:
        return (b"i", _I64.pack(value)) if -(1 << 63) <= value < (1 << 63) else None
    if t is bytes:
        data = value
    elif t is str:
        try:
            data = value.encode()
        except UnicodeEncodeError:            # (the wire says what is wrong with it)
            return None
    else:
        return None
    return ((b"b" if t is bytes else b"s"), data) if len(data) < _ROOM else None


@functools.lru_cache(maxsize=256)
def _fn_hash(fn: str) -> int:
    """What a slot's header says of a reduce function: members must name the same one."""
    return zlib.crc32(fn.encode())


@functools.lru_cache(maxsize=256)
def _raw_meta(meta: bytes) -> tuple[tuple, np.dtype]:
    (ndim,) = struct.unpack_from("<q", meta)
    return struct.unpack_from(f"<{ndim}q", meta, 8), np.dtype(meta[8 + 8 * ndim:].decode())


def _raw_at(mlen: int) -> int:
    """Where a small array sent raw starts in its slot, after a meta of ``mlen`` bytes:
    8-byte aligned, so that numpy reads it at full speed."""
    return (_HDR.size + mlen + 7) & ~7


def _raw_value(meta: bytes, slots: np.ndarray, at: int, nbytes: int) -> np.ndarray:
    shape, dtype = _raw_meta(meta)
    return slots[at:at + nbytes].view(dtype).reshape(shape).copy()


def _parse_meta(meta: bytes) -> tuple[int, list[int], bytes]:
    (nb,) = struct.unpack_from("<q", meta, 0)
    lens = list(struct.unpack_from(f"<{nb}q", meta, 8))
    return nb, lens, meta[8 + 8 * nb:]


def _describe(hdr: tuple) -> str:
    op, root, count = hdr[:3]
    args = [f"{k}={v}" for k, v in (("root", root), ("count", count)) if v != -1]
    return f"{_NAMES.get(op, op)}({', '.join(args)})"


def refreeze(ctx: "TaskContext", name: str, plan: dict) -> "FrozenGroup | None":
    """The coordinator put thawed group ``name`` back on MPI (its answer to the round that
    every member made itself carried ``plan``): build the group's new communicator.

    MPI_Comm_create_from_group after a failure sometimes never returns (Open MPI 5.0
    ULFM here: at every member, in about 1 of 10 tries; PMIx group construction), so the
    member waits for it at most ``BUILD_S``; then it goes on through the coordinator (the
    others too: their builds wait on the same construction), and a build that completes
    after all is revoked, so no member waits on a communicator another has given up.
    (A build that never returns keeps the transport's poller token: this process then
    stops taking messages and its node is lost by heartbeat, which the job survives,
    unless it is rank 0, main's. With the polls held off it did not happen in 22 tries
    of a probe and 30 killed-node test runs.)"""
    state: dict = {}
    lock = threading.Lock()
    done = threading.Event()
    token = getattr(getattr(getattr(ctx, "_site", None), "transport", None), "_token", None)

    def hold(on: bool) -> None:
        """Hold off this process's polls of MPI (the transport's poller token) while the
        builder makes the communicator (acquired and released by the builder thread: the
        token may be an RLock)."""
        if token is None:
            return
        if on:
            state["held"] = token.acquire(timeout=BUILD_S / 2)
        elif state.pop("held", False):
            token.release()

    def build() -> None:
        try:
            fg = FrozenGroup(ctx, name, plan["members"], plan["tag"],
                             bool(plan.get("survive")), after_loss=plan.get("after_loss", True),
                             hold=hold, auto=bool(plan.get("auto")))
        except BaseException as exc:   # noqa: BLE001 - told below
            with lock:
                state["error"] = exc
            done.set()
            return
        with lock:
            if state.get("gave_up"):
                fg._revoke()
                log.warning("frozen group %r: its new communicator came after the member "
                            "gave up on it; revoked", name)
            else:
                state["fg"] = fg
        done.set()

    threading.Thread(target=build, daemon=True, name=f"clustervm-freeze-{name}").start()
    done.wait(BUILD_S)
    with lock:
        fg = state.get("fg")
        if fg is None:
            state["gave_up"] = True
    if fg is None:
        why = state.get("error") or f"not built within {BUILD_S:.0f} s"
        log.warning("frozen group %r: its new communicator could not be built (%s); it goes "
                    "on through the coordinator", name, why)
        return None
    frozen = ctx.__dict__.setdefault("_frozen", {})
    old, frozen[name] = frozen.get(name), fg
    if old is not None:
        old.retire()
    log.info("task %d: frozen group %r is on MPI again (%s)", ctx.tid, name, plan.get("why"))
    return fg


def can_rebuild() -> bool:
    """Can a frozen group get a new communicator after a failure? Only with ULFM (Open MPI
    launched with --with-ft ulfm): a build given up on must be revoked, and without
    ULFM the failed ranks' node is lost for good anyway (MPICH: docs/messages.md)."""
    return MPI.Get_library_version().startswith("Open MPI")
