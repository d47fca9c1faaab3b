"""A frozen group's calls (clustervm.fastgroup) without MPI: its members are threads of
this process, their communicator a stand-in that exchanges the members' slots. Every
answer must be the hub's: the same values of the same types (reduce._reduce on what
the wire gives), whichever way a value travels (in the slot as a scalar or a raw
array, or encoded by the wire)."""
from __future__ import annotations

import math
import sys
import threading
import types

import mpi4py
import numpy as np
import pytest

if "mpi4py.MPI" not in sys.modules:
    mpi4py.rc.initialize = False          # no MPI_Init in the test process

from clustervm import fastgroup, wire   # noqa: E402
from clustervm.errors import GroupError, WireError   # noqa: E402
from clustervm.reduce import _reduce   # noqa: E402


class _Done:
    def Test(self) -> bool:             # noqa: N802 - mpi4py's name
        return True


class _Exchange:
    """What the members of one stand-in communicator share."""

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n)
        self.slots: list = [None] * n


class _Comm:
    """Member ``pos``'s stand-in communicator: Iallgather, and Ibcast of bytes."""

    def __init__(self, ex: _Exchange, pos: int) -> None:
        self.ex, self.pos = ex, pos

    def Set_errhandler(self, handler) -> None:   # noqa: N802
        pass

    def Iallgather(self, slot, slots):           # noqa: N802
        ex = self.ex
        ex.slots[self.pos] = bytes(slot)
        ex.barrier.wait(timeout=10)
        slots[:] = np.frombuffer(b"".join(ex.slots), np.uint8)
        ex.barrier.wait(timeout=10)              # all have read before the next call
        return _Done()

    def Ibcast(self, buf, root):                 # noqa: N802
        data, ex = buf[0], self.ex
        if self.pos == root:
            ex.slots[root] = bytes(data)
        ex.barrier.wait(timeout=10)
        if self.pos != root:
            memoryview(data).cast("B")[:] = ex.slots[root]   # (a bytearray or a numpy block)
        ex.barrier.wait(timeout=10)
        return _Done()


def _group(n: int) -> list[fastgroup.FrozenGroup]:
    site = types.SimpleNamespace(
        transport=types.SimpleNamespace(allow_pickle=False, failed=set()),
        rank=1, locations={}, locate=lambda tid: None, resolve=lambda ref: None)
    members = [(i, 10 + i, i + 1) for i in range(n)]
    ex = _Exchange(n)
    return [fastgroup.FrozenGroup(types.SimpleNamespace(tid=10 + p, aborted=False, _site=site),
                                  "g", members, 7, comm=_Comm(ex, p)) for p in range(n)]


def _call_all(op: str, values: list, root=None, fn=None) -> list:
    """Every member makes the call with its value; what each got (or raised)."""
    fgs = _group(len(values))
    out: list = [None] * len(values)

    def member(p: int) -> None:
        try:
            out[p] = ("ok", fgs[p].call(op, values[p], None, root, fn))
        except Exception as exc:   # noqa: BLE001
            out[p] = ("raised", exc)

    threads = [threading.Thread(target=member, args=(p,)) for p in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(o is not None for o in out), out
    return out


def _same(a, b) -> bool:
    """Equal values of the same type (nan equal to nan, -0.0 not equal to 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1, a) == math.copysign(1, b) and (a == b or a != a and b != b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _hub(values: list) -> list:
    """The members' values as the hub gets them: through the wire."""
    return [wire.loads(*wire.dumps(v)) for v in values]


REDUCTIONS = [
    [1, 2, 3],
    [1, 2 ** 70, -5],                       # beyond 64 bits at one member: the wire carries it
    [-0.0, -0.0, -0.0],
    [1e16, 1.0, -1e16, 1.0],                # left to right, as the hub sums
    [1, 2.5, 3],                            # int and float mixed
    [True, True, False],                    # bools stay bools until added
    [float("inf"), 1.0, 2.0],
    [np.arange(3, dtype=np.int32), np.arange(3, dtype=np.int32) + 1],
    [np.full(2, 0.1, np.float32), np.full(2, 0.2, np.float32), np.full(2, 0.3, np.float32)],
    [np.array(2.0), np.array(3.0)],         # 0-d arrays
    [np.array(2.0), np.array(3.0), np.array(0.5)],   # ...of more than two members
    [np.float64(0.5), np.float64(0.25)],    # numpy scalars
    [np.arange(3), [1, 1, 1]],              # an array and a list: combined as on the hub
]


@pytest.mark.parametrize("values", REDUCTIONS, ids=range(len(REDUCTIONS)))
@pytest.mark.parametrize("fn", ["sum", "prod", "min", "max"])
def test_allreduce_gives_the_hubs_answer(values, fn):
    want = _reduce(_hub(values), fn, None)
    for how, got in _call_all("allreduce", values, fn=fn):
        assert how == "ok", got
        assert _same(got, want), (got, want)


@pytest.mark.parametrize("value", [b"8 bytes!", "\u00fcn\u00efc\u00f6de", 7, -2 ** 63, 2 ** 63,
                                   float("nan"), -0.0, None, {"from": 1}, (1, 2), True,
                                   b"x" * 300])
def test_bcast_gives_every_member_the_roots_value(value):
    want = _hub([value])[0]
    values = [value if p == 1 else None for p in range(3)]
    for how, got in _call_all("bcast", values, root=1):
        assert how == "ok", got
        assert _same(got, want), (got, want)


def test_a_big_value_received_stays_the_callers_while_it_holds_it():
    """A bcast's big array is received into memory used again (blocks.RECEIVED): never
    into the memory of one a member still holds."""
    fgs = _group(3)
    firsts, seconds = [None] * 3, [None] * 3

    def member(p: int) -> None:
        first = np.full(100_000, 1.0) if p == 0 else None
        firsts[p] = fgs[p].call("bcast", first, None, 0, None)
        second = np.full(100_000, 2.0) if p == 0 else None
        seconds[p] = fgs[p].call("bcast", second, None, 0, None)

    threads = [threading.Thread(target=member, args=(p,)) for p in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for p in range(3):
        assert (firsts[p] == 1.0).all() and (seconds[p] == 2.0).all(), p
    assert firsts[1].ctypes.data != seconds[1].ctypes.data


def test_gathers_keep_each_members_type():
    values = [1, "a", b"b", 2.5, None, [1, 2]]
    want = _hub(values)
    for how, got in _call_all("allgather", values):
        assert how == "ok" and _same(got, want), got
    out = _call_all("gather", values, root=2)
    assert _same(out[2][1], want)
    assert all(got is None for p, (_, got) in enumerate(out) if p != 2)


def test_reduce_gives_the_root_alone_the_answer():
    out = _call_all("reduce", [3, 4.5, 2], root=0, fn="prod")
    assert _same(out[0][1], 27.0) and out[1][1] is None and out[2][1] is None


def test_a_value_the_wire_refuses_fails_the_call_at_every_member():
    """A str that cannot be encoded is not sent raw: the root gets the wire's error, the
    others a GroupError naming the root's instance, as before."""
    out = _call_all("bcast", [None, "bad \udc80", None], root=1)
    assert out[1][0] == "raised" and isinstance(out[1][1], WireError), out[1]
    for p in (0, 2):
        assert out[p][0] == "raised" and isinstance(out[p][1], GroupError)
        assert "instance(s) [1] could not make their contribution" in str(out[p][1])


def test_scalars_travel_in_the_slot():
    """Ints of 64 bits, floats, bytes and str that fit go as raw bytes after a type code
    (no wire encoding); anything else, bools and numpy scalars included, does not."""
    for v in (0, -2 ** 63, 2 ** 63 - 1, 1.5, b"", "s", "\u20ac" * 10):
        code, data = fastgroup._scalar(v)
        assert code in (b"i", b"f", b"b", b"s") and len(data) < fastgroup._ROOM
    for v in (2 ** 63, True, np.float64(1.0), None, [1], b"x" * fastgroup._ROOM, "\udc80"):
        assert fastgroup._scalar(v) is None, v


def test_a_member_asked_off_mpi_marks_its_next_exchange_and_every_member_goes_off():
    """An auto-frozen group (core/groups.py): member 2, not in a call, is asked off MPI
    (a THAW). It posts the exchange of its next call marked off and waits for nothing;
    the two members in that call see the mark and take it through the coordinator
    (Thawed), with no revoke; later calls go there at once."""
    from clustervm.errors import Thawed
    fgs = _group(3)
    for fg in fgs:
        fg.auto = True
    out: list = [None] * 3

    def member(p: int) -> None:
        try:
            out[p] = ("ok", fgs[p].call("allreduce", 1, None, None, "sum"))
        except Exception as exc:   # noqa: BLE001
            out[p] = ("raised", exc)

    threads = [threading.Thread(target=member, args=(p,)) for p in (0, 1)]
    threads.append(threading.Thread(target=fgs[2].thaw_request))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [o[0] for o in out[:2]] == ["raised", "raised"], out
    assert all(isinstance(o[1], Thawed) for o in out[:2]), out
    assert all(isinstance(fg.broken, Thawed) for fg in fgs)
    assert fgs[2]._off is not None and not fgs[2]._saw_off and fgs[0]._saw_off
    with pytest.raises(Thawed):                  # no exchange: at once
        fgs[0].call("barrier", None, None, None, None)


def test_a_member_done_with_a_group_frees_its_communicator_after_its_last_exchange():
    """retire(): a member off MPI for good frees its communicator (a group back on MPI
    gets a new one each time); one whose last exchange (marked off) is still under way
    frees it once that exchange is over, never before (MPI still writes its buffers);
    a revoked one, or one it did not go off cleanly, is never freed."""
    class _Pending:
        done = False

        def Test(self) -> bool:             # noqa: N802
            return self.done

    class _Freed:
        def __init__(self) -> None:
            self.req, self.freed = _Pending(), 0

        def Iallgather(self, slot, slots):   # noqa: N802
            return self.req

        def Free(self) -> None:              # noqa: N802
            self.freed += 1

    fgs = _group(2)
    comms = [_Freed(), _Freed()]
    for fg, comm in zip(fgs, comms):
        fg.auto, fg.comm = True, comm
    fgs[1]._saw_off = True           # it saw a member's mark: all are off, and it has
    fgs[1].retire()                  # no exchange of its own under way: freed now
    assert comms[1].freed == 1 and fgs[1].comm is None and fgs[1].broken is not None
    fgs[0].thaw_request()            # not in a call: its next exchange posted, marked off
    assert fgs[0]._off is not None and fgs[0]._off[0] is comms[0].req
    fgs[0].retire()
    fastgroup._keep_last(None)
    assert comms[0].freed == 0       # that exchange is still under way
    comms[0].req.done = True
    fastgroup._keep_last(None)
    assert comms[0].freed == 1
    fgs[0].retire()                  # twice: nothing more
    assert comms[0].freed == 1 and not fastgroup._LAST
    lost = _group(2)[0]              # revoked (a member lost): kept, never freed
    lost.comm = comm = _Freed()
    lost._saw_off = True
    lost._revoke()                   # (the stand-in has no Revoke: ULFM's absence)
    lost.retire()
    assert comm.freed == 0 and lost.comm is None
    ended = _group(2)[0]             # not off MPI (a frozen group's member that ended):
    ended.comm = comm = _Freed()     # the others may still call on it: kept
    ended.retire()
    assert comm.freed == 0 and ended.comm is None and ended.broken is not None
