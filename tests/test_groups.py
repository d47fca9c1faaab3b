"""Groups, collectives and the VM-wide mailbox.

Unit tests drive :class:`clustervm.core.groups.Groups` directly (no MPI) with a fake
coordinator; integration tests (marked ``mpi``) run real jobs: every group
call from spawned tasks and main, the mailbox, a collective whose member's
node is killed from outside, and each example against a single-process
reference computation at two node counts.
"""
from __future__ import annotations

import math
import operator
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clustervm import wire
from clustervm.errors import GroupError, WireError
from clustervm.core.groups import Groups
from clustervm.protocol import MAIN_TID
from clustervm.task import _op_ref

from conftest import EXAMPLES, run_job, without_options

APPS = Path(__file__).resolve().parent / "apps"
sys.path.insert(0, str(EXAMPLES))


# -- unit tests: Groups without MPI ------------------------------------------------------

class _Rec:
    def __init__(self, node: int) -> None:
        self.node = node


class FakeCoord:
    """What Groups asks of the coordinator: task records, restartability, refs."""

    def __init__(self) -> None:
        self.tasks: dict[int, _Rec] = {}
        self.alive = True

    def restartable(self, tid: int) -> bool:
        return tid in self.tasks and self.alive

    def resolve(self, ref: str):
        return wire.resolve_ref(ref)

    def in_world(self, rank: int) -> bool:
        return rank < 100      # ranks from 100 on play nodes started with MPI_Comm_spawn

    def lost_nodes(self) -> int:
        return 0 if self.alive else 1


class Box:
    """Collects the answer of one collective call."""

    def __init__(self) -> None:
        self.got: list = []

    def __call__(self, ok, value) -> None:
        self.got.append((ok, value))

    @property
    def done(self) -> bool:
        return bool(self.got)

    @property
    def value(self):
        assert len(self.got) == 1, self.got
        ok, value = self.got[0]
        if not ok:
            raise value
        return value

    @property
    def error(self) -> BaseException:
        assert len(self.got) == 1 and not self.got[0][0], self.got
        return self.got[0][1]


def make(n: int = 3, name: str = "g", nodes=None):
    """Groups with members tid 10, 11, ... (instances 0, 1, ...) on nodes 1, 2, ..."""
    coord = FakeCoord()
    g = Groups(coord)
    tids = []
    for i in range(n):
        tid = 10 + i
        coord.tasks[tid] = _Rec(nodes[i] if nodes else i + 1)
        assert g.join(name, tid) == (i, 0)
        tids.append(tid)
    return g, coord, tids


def call(g, tid, op, value=None, *, name="g", count=None, root=None, fn=None, round_no=None,
         envelope=False):
    box = Box()
    try:
        g.collective(box, op, name, tid, value, count, root, fn, round_no, envelope)
    except GroupError as exc:
        box(False, exc)
    return box


def everyone(g, tids, op, values=None, **kw):
    return [call(g, t, op, None if values is None else values[i], **kw)
            for i, t in enumerate(tids)]


def test_membership_instances_and_lookups():
    g, coord, tids = make(3)
    assert g.size("g") == 3 and g.tids("g") == tids
    assert g.tid("g", 1) == 11 and g.inst("g", 12) == 2
    g.leave("g", 11)
    assert g.tids("g") == [10, None, 12] and g.size("g") == 2
    assert g.join("g", 13)[0] == 1                 # the lowest free instance again
    assert g.join("g", 13)[0] == 1                 # joining twice is harmless
    assert g.join("other", 13)[0] == 0             # a task can be in several groups
    with pytest.raises(GroupError, match="no instance 7"):
        g.tid("g", 7)
    with pytest.raises(GroupError, match="not a member"):
        g.inst("g", 99)
    with pytest.raises(GroupError, match="not a member"):
        g.leave("g", 99)


def test_every_collective_by_instance_order():
    g, coord, tids = make(3)
    boxes = [call(g, t, "barrier") for t in tids[:2]]
    assert not any(b.done for b in boxes)
    boxes.append(call(g, tids[2], "barrier"))
    assert [b.value for b in boxes] == [None] * 3
    assert [b.value for b in everyone(g, tids, "bcast", ["x", None, None], root=0)] == ["x"] * 3
    assert [b.value for b in everyone(g, tids, "bcast", [None, None, 7], root=2)] == [7] * 3
    assert [b.value for b in everyone(g, tids, "reduce", [1, 2, 3], root=1, fn="sum")] == \
        [None, 6, None]
    assert [b.value for b in everyone(g, tids, "allreduce", [2, 3, 4], fn="prod")] == [24] * 3
    assert [b.value for b in everyone(g, tids, "allreduce", [2, 9, 4], fn="max")] == [9] * 3
    assert [b.value for b in everyone(g, tids, "allreduce", [2, 9, 4], fn="min")] == [2] * 3
    # members arrive in any order; results are by instance
    boxes = [call(g, tids[i], "gather", f"v{i}", root=0) for i in (2, 0, 1)]
    assert [b.value for b in boxes] == [None, ["v0", "v1", "v2"], None]
    boxes = [call(g, tids[i], "allgather", i * 10) for i in (1, 2, 0)]
    assert [b.value for b in boxes] == [[0, 10, 20]] * 3
    boxes = everyone(g, tids, "scatter", [None, ["a", "b", "c"], None], root=1)
    assert [b.value for b in boxes] == ["a", "b", "c"]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint64, np.float32, np.float64,
                                   np.complex64])
@pytest.mark.parametrize("op", ["sum", "prod", "min", "max"])
def test_numpy_reduce_is_elementwise_and_keeps_dtype(dtype, op):
    if dtype is np.complex64 and op in ("min", "max"):
        pytest.skip("complex numbers have no order")
    g, coord, tids = make(3)
    values = [(np.arange(5) % 3 + i + 1).astype(dtype) for i in range(3)]
    ufunc = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}[op]
    expect = ufunc(ufunc(values[0], values[1]), values[2])
    boxes = everyone(g, tids, "allreduce", values, fn=op)
    for b in boxes:
        got = b.value
        assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, expect)
    # numpy scalars stay numpy scalars of their dtype
    scalars = [dtype(i + 2) for i in range(3)]
    got = everyone(g, tids, "allreduce", scalars, fn=op)[0].value
    assert np.asarray(got).dtype == np.dtype(dtype)


def test_numpy_reduce_in_place_leaves_the_members_values_alone():
    """The hub sums into an array of its own (no new array per member): the members'
    values are unchanged, the sum is left to right, and mixed dtypes promote as before."""
    from clustervm.reduce import _reduce
    n = 1 << 14                                   # 128 KiB: summed in place
    values = [np.full(n, 1e16), np.full(n, 1.0), np.full(n, -1e16), np.full(n, 1.0)]
    before = [v.copy() for v in values]
    got = _reduce(values, "sum", None)
    np.testing.assert_array_equal(got, ((values[0] + values[1]) + values[2]) + values[3])
    assert got[0] == 1.0                  # left to right: 1e16 + 1 is 1e16 in float64
    for v, b in zip(values, before):
        np.testing.assert_array_equal(v, b)
    m = 1 << 16
    mixed = _reduce([np.arange(m, dtype=np.int8), np.ones(m, np.int8), np.full(m, 0.5)],
                    "sum", None)
    assert mixed.dtype == np.float64 and list(mixed[:3]) == [1.5, 2.5, 3.5]
    assert mixed[-1] == np.int8(np.arange(m, dtype=np.int8)[-1] + 1) + 0.5


def test_mains_array_is_only_read_by_a_reduction():
    """Main's array in a built-in reduction goes into the round without a copy (main
    waits for the answer): the sum is a new array, and main changing its array after
    the answer changes no member's answer, kept or replayed; alone, main gets a copy."""
    g, coord, tids = make(2)
    assert g.join("g", MAIN_TID) == (2, 0)
    mine = np.array([1.0, 2.0])
    b_main = call(g, MAIN_TID, "allreduce", mine, fn="sum", round_no=0)
    boxes = [call(g, t, "allreduce", np.array([10.0, 20.0]), fn="sum", round_no=0)
             for t in tids]
    mine[:] = -1                                  # main goes on with its array
    for b in boxes + [b_main]:
        np.testing.assert_array_equal(b.value, [21.0, 42.0])
    assert b_main.value is not boxes[0].value
    replay = call(g, tids[0], "allreduce", np.array([10.0, 20.0]), fn="sum", round_no=0)
    np.testing.assert_array_equal(replay.value, [21.0, 42.0])
    g2 = Groups(FakeCoord())
    g2.join("solo", MAIN_TID)
    alone = np.array([3.0])
    got = call(g2, MAIN_TID, "allreduce", alone, name="solo", fn="max", round_no=0).value
    alone[:] = 0
    assert got is not alone and list(got) == [3.0]
    np.testing.assert_array_equal(g2.done["solo"][0][1][MAIN_TID][1], [3.0])


def test_user_reduce_function_by_reference_in_instance_order():
    g, coord, tids = make(3)
    assert everyone(g, tids, "allreduce", [12, 18, 27], fn="math:gcd")[0].value == 3
    # not commutative: applied left to right by instance number
    assert everyone(g, tids, "allreduce", [[0], [1], [2]], fn="operator:add")[2].value == [0, 1, 2]
    boxes = everyone(g, tids, "allreduce", [1, 2, 3], fn="math:no_such_function")
    assert all("no_such_function" in str(b.error) for b in boxes)


def test_op_refs_on_the_caller_side():
    class Site:
        ref = staticmethod(wire.fn_ref)
    for f, name in [(sum, "sum"), (min, "min"), (max, "max"), (operator.add, "sum"),
                    (operator.mul, "prod"), (math.prod, "prod"), (np.add, "sum"),
                    (np.maximum, "max"), (np.minimum, "min"), (np.multiply, "prod")]:
        assert _op_ref(Site(), f) == name
    assert _op_ref(Site(), math.gcd) == "math:gcd"
    with pytest.raises(ValueError, match="unknown reduce op 'add'.*sum, prod, min, max"):
        _op_ref(Site(), "add")
    with pytest.raises(WireError, match="lambda"):
        _op_ref(Site(), lambda a, b: a)
    with pytest.raises(TypeError, match="reduce op must be"):
        _op_ref(Site(), 3)


def test_errors_name_the_problem_and_the_fix():
    g, coord, tids = make(3)
    box = call(g, 99, "barrier")
    assert re.search(r"task 99 called barrier on group 'g' without being a member; "
                     r"call join_group\('g'\) first", str(box.error))
    boxes = everyone(g, tids, "bcast", [1, 2, 3], root=5)
    for b in boxes:
        assert "root instance 5 is not a member; root= is the instance number of a member, " \
            "one of [0, 1, 2] (see group_tids)" in str(b.error)
    boxes = everyone(g, tids, "scatter", [[1], None, None], root=0)
    assert all("the root gave 1 values for 3 members" in str(b.error) for b in boxes)
    # different collectives in one round: the whole round fails, for every member
    a = call(g, tids[0], "bcast", 1, root=0)
    b = call(g, tids[1], "allreduce", 1, fn="sum")
    c = call(g, tids[2], "bcast", None, root=0)      # arrives after the round failed
    for box in (a, b, c):
        msg = str(box.error)
        assert "different collective calls in round" in msg
        assert "bcast(root=0)" in msg and "allreduce(op='sum')" in msg
        assert "same sequence of collective calls" in msg
    # a different root (or op) is a different call too
    a = call(g, tids[0], "reduce", 1, root=0, fn="sum")
    b = call(g, tids[1], "reduce", 1, root=1, fn="sum")
    c = call(g, tids[2], "reduce", 1, root=0, fn="sum")
    assert all("different collective calls" in str(x.error) for x in (a, b, c))
    # and the group carries on with the next round
    assert [x.value for x in everyone(g, tids, "allreduce", [1, 1, 1], fn="sum")] == [3] * 3


def test_barrier_with_count():
    coord = FakeCoord()
    g = Groups(coord)
    coord.tasks.update({10: _Rec(1), 11: _Rec(2), 12: _Rec(1)})
    g.join("g", 10)
    a = call(g, 10, "barrier", count=3)
    g.join("g", 11)
    b = call(g, 11, "barrier", count=3)
    assert not a.done and not b.done               # waits for members that have not joined
    g.join("g", 12)                                # joins the open barrier round
    c = call(g, 12, "barrier", count=3)
    assert a.value is None and b.value is None and c.value is None
    # count below the group size: released at count; a late member passes it
    x = call(g, 10, "barrier", count=2)
    y = call(g, 12, "barrier", count=2)
    assert x.done and y.done
    z = call(g, 11, "barrier", count=2)
    assert z.value is None
    # everyone must pass the same count
    p = call(g, 10, "barrier", count=3)
    q = call(g, 11, "barrier", count=2)
    assert "different collective calls" in str(q.error) and not p.got[0][0]


def test_restarted_member_calls_its_rounds_again():
    g, coord, tids = make(3)
    everyone(g, tids, "allreduce", [1, 2, 3], fn="sum")          # round 0
    open_ = [call(g, t, "allreduce", 10, fn="sum") for t in tids[:2]]  # round 1, open
    # member 12 was restarted from an old checkpoint: round 0 again, then round 1
    assert call(g, tids[2], "allreduce", 3, fn="sum", round_no=0).value == 6
    # member 11 restarted too while round 1 was open: its new call replaces the old one
    again = call(g, tids[1], "allreduce", 10, fn="sum", round_no=1)
    last = call(g, tids[2], "allreduce", 10, fn="sum", round_no=1)
    assert open_[0].value == 30 and again.value == 30 and last.value == 30
    assert open_[1].got == []                      # the replaced incarnation gets no answer


def test_dropped_round_fails_instead_of_hanging(monkeypatch):
    import clustervm.core.groups as groups
    monkeypatch.setattr(groups, "_KEEP_DONE", 2)
    g, coord, tids = make(2)
    for r in range(4):
        everyone(g, tids, "allreduce", [r, r], fn="sum")
    assert call(g, tids[0], "allreduce", 3, fn="sum", round_no=3).value == 6   # kept
    box = call(g, tids[0], "allreduce", 0, fn="sum", round_no=0)
    assert "is no longer kept" in str(box.error) and "checkpoint it more often" in str(box.error)


def test_kept_answers_are_bounded_in_bytes(monkeypatch):
    import clustervm.core.groups as groups
    monkeypatch.setattr(groups, "_KEEP_BYTES", 3 << 20)
    g, coord, tids = make(2)
    for r in range(6):
        everyone(g, tids, "bcast", [np.zeros(1 << 17), None], root=0)   # 1 MiB each
    assert len(g.done["g"]) <= 3


def test_node_lost_fails_only_its_non_restartable_members():
    g, coord, tids = make(3, nodes=[1, 2, 2])
    g.join("g", MAIN_TID)                    # main: on the coordinator, never lost
    waiting = [call(g, tids[0], "allreduce", 1, fn="sum")]
    g.node_lost(2)                            # members 11, 12 will be restarted
    assert not waiting[0].done
    waiting += [call(g, t, "allreduce", 1, fn="sum") for t in tids[1:]]
    main_box = call(g, MAIN_TID, "allreduce", 1, fn="sum")
    assert [b.value for b in waiting + [main_box]] == [4] * 4
    # a member that cannot come back (no node left to run it) fails the round, named
    box = call(g, tids[0], "barrier")
    coord.alive = False
    g.node_lost(2)
    err = str(box.error)
    assert "[11, 12] were lost with node 2" in err and "cannot be restarted" in err


def test_member_ending_with_error_fails_the_round_it_missed():
    g, coord, tids = make(3)
    first = call(g, tids[0], "allreduce", 1, fn="sum")
    g.task_exit(tids[2], ValueError("boom"))
    second = call(g, tids[1], "allreduce", 1, fn="sum")
    for b in (first, second):
        assert re.search(r"member task 12 \(instance 2\) ended with an error before taking "
                         r"part: ValueError: boom", str(b.error))
    assert [b.value for b in everyone(g, tids[:2], "allreduce", [1, 1], fn="sum")] == [2, 2]
    # also when the others reach that round only later
    g.task_exit(tids[1], RuntimeError("late"))
    assert "RuntimeError: late" in str(call(g, tids[0], "barrier").error)
    assert call(g, tids[0], "barrier").value is None
    # a member that ends normally just leaves (PVM)
    g2, _, t2 = make(2, name="h")
    box = call(g2, t2[0], "allreduce", 5, name="h", fn="sum")
    g2.task_exit(t2[1])
    assert box.value == 5


def test_main_gets_copies():
    coord = FakeCoord()
    g = Groups(coord)
    coord.tasks[10] = _Rec(1)
    g.join("g", MAIN_TID)
    g.join("g", 10)
    arr = np.ones(4)
    mine = call(g, MAIN_TID, "bcast", arr, root=0)
    other = call(g, 10, "bcast", None, root=0)
    arr[:] = 5                                   # main changes its array after the call
    got = mine.value
    got[:] = 7                                   # ... and the answer it got
    np.testing.assert_array_equal(other.value, np.ones(4))
    np.testing.assert_array_equal(g.done["g"][0][1][10][1], np.ones(4))


def test_freeze_plans_one_member_per_node():
    g, coord, tids = make(3, nodes=[1, 2, 3])
    g.join("g", MAIN_TID)
    boxes = [call(g, t, "freeze", count=1) for t in tids + [MAIN_TID]]
    plan = boxes[0].value
    assert plan["size"] == 4 and plan["tag"] >= 1
    assert plan["members"] == [(0, 10, 1), (1, 11, 2), (2, 12, 3), (3, MAIN_TID, 0)]
    assert all(b.value == plan for b in boxes)
    with pytest.raises(GroupError, match="is frozen.*membership is fixed"):
        g.join("g", 99)
    assert plan["survive"]                     # count=1: freeze_group(..., survive=True)
    g.leave("g", tids[2])                      # membership changed: not frozen any more
    assert g.join("g", 99)[0] == 2


def test_frozen_group_without_survive_refuses_the_hub():
    g, coord, tids = make(3, nodes=[1, 2, 3])
    plan = [call(g, t, "freeze", count=2) for t in tids][0].value    # survive=False
    assert plan["members"] and not plan["survive"]
    # only a member restarted from an older state calls the hub now: a clear error
    box = call(g, tids[1], "allreduce", 1, fn="sum")
    assert "frozen onto MPI collectives" in str(box.error)
    assert "leave_group('g') and join_group" in str(box.error)
    box = call(g, tids[1], "freeze", count=2, round_no=0)
    assert "frozen onto MPI collectives" in str(box.error)


def test_frozen_group_thaws_onto_the_hub_from_shadows():
    """Issue 15: members post their MPI calls' contributions (shadows); after a loss the
    group goes on on the hub, and a member restarted from an older checkpoint gets the
    answers the others got on MPI, then the call in progress completes for everyone."""
    g, coord, tids = make(3, nodes=[1, 2, 3])
    plan = [call(g, t, "freeze", count=1) for t in tids][0].value
    assert plan["survive"]
    # rounds 1 and 2 ran on MPI; in round 3 member 12 was lost before contributing
    for r, op, vals in [(1, "allreduce", [1, 2, 3]), (2, "scan", [5, 6, 7])]:
        for t, v in zip(tids, vals):
            g.shadow("g", t, r, op, v, None, None, "sum", None)
    for t, v in zip(tids[:2], [10, 20]):
        g.shadow("g", t, 3, "allgather", v, None, None, None, None)
    assert not g.rounds.get("g")                  # nothing computed while on MPI
    # the survivors retry round 3 on the hub; that thaws the group
    a, b = [call(g, t, "allgather", v, round_no=3) for t, v in zip(tids[:2], [10, 20])]
    assert not a.done and "g" in g.thawed
    # member 12 restarts from before the freeze: it calls every round again
    replay = [call(g, 12, "freeze", count=1, round_no=0).value,
              call(g, 12, "allreduce", 3, fn="sum", round_no=1).value,
              call(g, 12, "scan", 7, fn="sum", round_no=2).value]
    assert replay[0]["members"] is None and "thawed" in replay[0]["why"]
    assert replay[1:] == [6, 18]
    c = call(g, 12, "allgather", 30, round_no=3)
    assert a.value == b.value == c.value == [10, 20, 30]
    # and the group goes on on the hub
    assert [x.value for x in everyone(g, tids, "allreduce", [1, 1, 1], fn="sum",
                                      round_no=4)] == [3, 3, 3]


def test_thawed_group_goes_back_on_mpi_once_every_member_calls_itself():
    """Issue 15: after a loss, the first round every member makes itself (the lost one
    restarted and caught up) carries a plan of the members' current ranks; the next
    rounds are on MPI again, and a later loss thaws the group again."""
    g, coord, tids = make(3, nodes=[1, 2, 3])
    g.rebuild = True                    # as with ULFM (no MPI in these tests)
    plan0 = [call(g, t, "freeze", count=1) for t in tids][0].value
    g.shadow_batch("g", 10, [(1, "allreduce", 1, None, None, "sum", None)])
    g.shadow_batch("g", 11, [(1, "allreduce", 2, None, None, "sum", None)])
    coord.tasks[12].node = 1            # node 3 lost: member 12 restarted on node 1 ...
    a = call(g, 10, "allreduce", 1, fn="sum", round_no=1, envelope=True)   # thaws
    assert not a.done                   # waits for 12
    # ... from its checkpoint before round 1: round 1 is rebuilt, it completes it
    c = call(g, 12, "allreduce", 3, fn="sum", round_no=1, envelope=True)
    assert a.value == c.value == (6, None) and "g" in g.thawed
    # round 2: every member calls it itself, but 10 and 12 share node 1: stays on the hub
    got = [call(g, t, "bcast", v, root=0, round_no=2, envelope=True)
           for t, v in zip(tids, ["x", None, None])]
    assert [b.value for b in got] == [("x", None)] * 3
    assert "same node" in g.stay_on_hub["g"] and "g" in g.thawed
    # on a node started by MPI_Comm_spawn (rank 100 here): not in COMM_WORLD, stays too
    coord.tasks[12].node = 100
    assert [b.value for b in everyone(g, tids, "barrier", round_no=3, envelope=True)] == \
        [(None, None)] * 3
    assert "MPI_Comm_spawn" in g.stay_on_hub["g"]
    # member 12 is now on spare node 4 (one per rank again): round 4 re-freezes
    coord.tasks[12].node = 4
    got = [call(g, t, "allreduce", v, fn="sum", round_no=4, envelope=True)
           for t, v in zip(tids, [1, 2, 3])]
    answers = [b.value for b in got]
    assert [v for v, _ in answers] == [6, 6, 6]
    plan = answers[0][1]
    assert all(p == plan for _, p in answers)
    assert plan["members"] == [(0, 10, 1), (1, 11, 2), (2, 12, 4)]
    assert plan["tag"] > plan0["tag"] and plan["survive"]
    assert plan["retry"] is False        # ints: the hub's sum is MPI's (arrays: made again)
    assert "g" not in g.thawed and g.frozen["g"] and g.refreezes["g"] == 1
    # rounds 5.. on MPI: shadows kept; a second loss thaws it again
    for t, v in zip(tids, [1, 1, 1]):
        g.shadow("g", t, 5, "allreduce", v, None, None, "sum", None)
    coord.tasks[11].node = 3
    r = call(g, 12, "allreduce", 1, fn="sum", round_no=5, envelope=True)
    assert r.value == (3, None) and "g" in g.thawed
    # a member replaying round 4 after that gets its answer without the old plan
    assert call(g, 11, "allreduce", 2, fn="sum", round_no=4, envelope=True).value == (6, None)
    # round 5 (two of its parts from shadows) did not put the group back on MPI
    assert g.refreezes["g"] == 1


def test_group_whose_new_communicator_saw_no_call_stays_on_the_hub():
    """The members could not build the rebuilt communicator (they gave up on it and
    came back through the coordinator with no call made on it): no more tries."""
    g, coord, tids = make(2, nodes=[1, 2])
    g.rebuild = True
    [call(g, t, "freeze", count=1) for t in tids]
    g.thaw("g", "test")
    plan = [b.value[1] for b in everyone(g, tids, "barrier", round_no=1, envelope=True)][0]
    assert plan["members"] and g.frozen["g"]
    everyone(g, tids, "allreduce", [1, 2], fn="sum", round_no=2, envelope=True)   # thaws
    assert "could not be built" in g.stay_on_hub["g"]
    got = everyone(g, tids, "allreduce", [1, 2], fn="sum", round_no=3, envelope=True)
    assert [b.value for b in got] == [(3, None)] * 2 and g.refreezes["g"] == 1


def _auto(n: int, after: int = 3, nodes=None):
    """Groups that put a hub group on MPI after ``after`` full rounds (ULFM as if there);
    the ThawGroup asks it makes are in ``asks``."""
    g, coord, tids = make(n, nodes=nodes)
    asks: list = []
    g.auto_after, g.rebuild = after, True
    g._thaw = lambda name, t, r: asks.append((name, list(t), list(r)))
    return g, coord, tids, asks


def test_hub_group_moves_onto_mpi_after_full_rounds_with_the_same_members():
    g, coord, tids, asks = _auto(3)
    everyone(g, tids, "barrier", round_no=0, envelope=True)
    # a barrier with count= is the hub's own: the rounds in a row start again
    everyone(g, tids, "barrier", count=3, round_no=1, envelope=True)
    for r in (2, 3):
        got = everyone(g, tids, "allreduce", [1, 2, 3], fn="sum", round_no=r, envelope=True)
        assert [b.value for b in got] == [(6, None)] * 3
    got = [b.value for b in everyone(g, tids, "bcast", ["x", None, None], root=0,
                                      round_no=4, envelope=True)]
    plan = got[0][1]
    assert [v for v, _ in got] == ["x"] * 3 and all(p == plan for _, p in got)
    assert plan["members"] == [(0, 10, 1), (1, 11, 2), (2, 12, 3)]
    assert plan["auto"] and plan["survive"] and not plan["retry"]
    assert plan["after_loss"] is False           # no node lost: MPI_Comm_create_group
    assert g.frozen["g"] and "g" in g.auto and not asks
    # a member replaying that round (restarted: its node was lost) thaws the group and
    # gets the answer without the plan
    assert call(g, 11, "bcast", None, root=0, round_no=4, envelope=True).value == ("x", None)
    assert "g" in g.thawed


def test_hub_group_stays_on_the_hub_when_members_share_a_node_or_auto_freeze_is_off():
    g, coord, tids, asks = _auto(3, nodes=[1, 1, 2])
    for r in range(5):
        assert [b.value for b in everyone(g, tids, "barrier", round_no=r, envelope=True)] == \
            [(None, None)] * 3
    assert "g" not in g.frozen and "g" not in g.auto
    g, coord, tids = make(3)                     # auto_after 0 (the Groups default)
    g.rebuild = True
    for r in range(20):
        everyone(g, tids, "barrier", round_no=r, envelope=True)
    assert "g" not in g.frozen


def test_a_task_joining_an_auto_frozen_group_waits_until_its_members_are_off_mpi():
    g, coord, tids, asks = _auto(3, after=1)
    plan = everyone(g, tids, "barrier", round_no=0, envelope=True)[0].value[1]
    assert plan["members"]                       # on MPI from round 1 on
    for r in (1, 2):                             # rounds 1 and 2 made on MPI
        g.shadow_batch("g", 10, [(r, "allreduce", 1, None, None, "sum", None)])
    coord.tasks[13] = _Rec(4)
    joined = Box()
    assert g.join_when_off("g", 13, joined)
    assert not joined.done and asks == [("g", tids, [1, 2, 3])]
    # members 10 and 11 are off (not in a call): their last shadows, saying so
    g.shadow_batch("g", 11, [(r, "allreduce", 2, None, None, "sum", None) for r in (1, 2)],
                   off=True)
    g.shadow_batch("g", 10, [], off=True)
    assert not joined.done
    # member 12 was in round 3 (revoked): its shadows, then its retry through the hub
    g.shadow_batch("g", 12, [(r, "allreduce", 3, None, None, "sum", None) for r in (1, 2)],
                   off=True)
    assert joined.value == [3, 3, True]          # instance 3, first round 3, new
    assert g.join_when_off("g", 13, Box()) is False     # a member already
    got = [b.value for b in [call(g, t, "allreduce", 1, fn="sum", round_no=3, envelope=True)
                             for t in tids + [13]]]
    assert [v for v, _ in got] == [4] * 4        # the new member is in round 3 ...
    plan = got[0][1]                             # ... which puts the group back on MPI
    assert all(p == plan for _, p in got)
    assert [t for _, t, _ in plan["members"]] == tids + [13] and plan["auto"]


def test_a_member_leaving_an_auto_frozen_group_is_not_waited_for():
    g, coord, tids, asks = _auto(3, after=1)
    everyone(g, tids, "barrier", round_no=0, envelope=True)
    g.shadow_batch("g", 12, [(1, "allreduce", 3, None, None, "sum", None)], off=True)
    g.leave("g", 12)
    assert asks == [("g", [10, 11], [1, 2])]     # the others are asked off MPI
    got = [call(g, t, "allreduce", v, fn="sum", round_no=1, envelope=True)
           for t, v in zip(tids[:2], [1, 2])]
    assert [b.value for b in got] == [(6, None)] * 2   # round 1 with 12's part (made it)
    got = [call(g, t, "allreduce", v, fn="sum", round_no=2, envelope=True)
           for t, v in zip(tids[:2], [1, 2])]
    assert [b.value[0] for b in got] == [3, 3]


def test_freeze_group_on_an_auto_frozen_group_keeps_its_rounds_made_on_mpi():
    g, coord, tids, asks = _auto(3, after=1)
    everyone(g, tids, "barrier", round_no=0, envelope=True)
    for t, v in zip(tids, [1, 2, 3]):            # round 1 on MPI
        g.shadow_batch("g", t, [(1, "allreduce", v, None, None, "sum", None)], off=True)
    plan = [b.value[0] for b in everyone(g, tids, "freeze", count=1, round_no=2,
                                         envelope=True)][0]
    assert plan["members"] and plan["survive"] and "g" not in g.auto
    with pytest.raises(GroupError, match="is frozen"):
        g.join("g", 99)                          # frozen by its members: PVM's rule
    # a member restarted from before round 1 still gets round 1's answer
    assert call(g, 12, "allreduce", 3, fn="sum", round_no=1).value == 6


def test_member_gives_up_a_new_communicator_that_does_not_come(monkeypatch):
    """MPI_Comm_create_from_group after a failure sometimes never returns (Open MPI 5
    ULFM, ~1 in 10 here): the member waits BUILD_S at most, goes on through the
    coordinator, and revokes the communicator if it comes after all."""
    import threading
    import mpi4py
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False          # no MPI_Init in the test process
    from clustervm import fastgroup
    came, revoked = threading.Event(), []

    class Slow:
        def __init__(self, ctx, name, members, tag, survive, after_loss=False, hold=None,
                     auto=False):
            assert after_loss and survive and not auto
            came.wait(5)

        def _revoke(self):
            revoked.append(True)

    class Ctx:
        tid = 10

    monkeypatch.setattr(fastgroup, "FrozenGroup", Slow)
    monkeypatch.setattr(fastgroup, "BUILD_S", 0.2)
    ctx = Ctx()
    t0 = time.monotonic()
    fastgroup.refreeze(ctx, "g", {"members": [(0, 10, 1)], "tag": 2, "survive": True})
    assert time.monotonic() - t0 < 3 and "_frozen" not in ctx.__dict__
    came.set()
    deadline = time.monotonic() + 5
    while not revoked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert revoked == [True]


def test_replay_gets_the_result_mpi_computed_bit_for_bit():
    """A float allreduce that MPI summed in its own order: its shadows carry that result,
    and a member replaying the round gets it (not the hub's left-to-right sum)."""
    g, coord, tids = make(3, nodes=[1, 2, 3])
    [call(g, t, "freeze", count=1) for t in tids]
    vals = [np.array([1e16]), np.array([1.0]), np.array([-1e16])]
    mpi_order = np.array([1.0])                  # e.g. (a + c) + b; left to right gives 0.0
    for t in tids[:2]:
        g.shadow_batch("g", t, [(1, "allreduce", None, None, None, "sum", None, mpi_order)])
    g.thaw("g", "test")
    got = call(g, 12, "allreduce", vals[2], fn="sum", round_no=1).value
    np.testing.assert_array_equal(got, mpi_order)
    # a reduce likewise: the root gets MPI's result, the others None
    for t in tids[1:]:
        g.shadow_batch("g", t, [(2, "reduce", None, None, 0, "sum", None, mpi_order)])
    assert call(g, 10, "reduce", vals[0], fn="sum", root=0, round_no=2).value == mpi_order


def test_member_that_stops_calling_sends_its_shadows():
    """Shadows stay with the member while it keeps calling, and go to the coordinator
    when it has made no call for IDLE_FLUSH_S (a member busy elsewhere must not hold
    back what the hub needs after a loss), in one batch, oldest first, at most the last
    KEEP_ROUNDS."""
    import threading
    from collections import deque
    import mpi4py
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False          # no MPI_Init in the test process
    from clustervm import fastgroup

    class Site:
        rank = 0
        sent: list = []

        def _serve(self, name, args, reply):
            self.sent.append((name, args))

    class Ctx:
        tid = MAIN_TID

    fg = fastgroup.FrozenGroup.__new__(fastgroup.FrozenGroup)
    fg.site, fg.ctx, fg.name, fg.insts, fg.me, fg.survive = Site(), Ctx(), "g", [0], 0, True
    fg._lock, fg._pending, fg._pending_bytes, fg._last_call = threading.Lock(), deque(), 0, 0.0
    fg._main_keeps = False
    for r in range(1, fastgroup.KEEP_ROUNDS + 11):
        fg._shadow(r, "allreduce", np.array([r]), None, None, "sum", None)
    assert not Site.sent                      # the member keeps calling: nothing sent
    deadline = time.monotonic() + 10
    while not Site.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(Site.sent) == 1, Site.sent
    name, (group, tid, entries) = Site.sent[0]
    assert (name, group, tid) == ("frozen_shadow", "g", MAIN_TID)
    assert [e[0] for e in entries] == list(range(11, fastgroup.KEEP_ROUNDS + 11))
    assert not fg._pending and not fg.flush_shadows()


def test_large_shadows_reuse_the_memory_of_shadows_nothing_refers_to(monkeypatch):
    """A member copies each large result into memory used before (a Blocks pool): of a
    shadow dropped unsent (past KEEP_ROUNDS), not into new memory; never of one that is
    kept or was sent (the coordinator holds it): those hold the values of their own
    calls, whatever the caller does with its arrays afterwards."""
    import threading
    import types
    from collections import deque
    import mpi4py
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False          # no MPI_Init in the test process
    from clustervm import fastgroup
    from clustervm.blocks import Blocks
    monkeypatch.setattr(fastgroup, "KEEP_ROUNDS", 2)
    monkeypatch.setattr(fastgroup, "ARRAY_COPIES", Blocks(64 << 10, 4 << 20, 64 << 20))
    kick = threading.Event()
    kick.set()                                # no flusher thread: this test flushes
    monkeypatch.setattr(fastgroup, "_FLUSHER", types.SimpleNamespace(kick=kick))
    sent: list = []

    class Site:
        rank = 0

        def _serve(self, name, args, reply):
            sent.append(args)

    fg = fastgroup.FrozenGroup.__new__(fastgroup.FrozenGroup)
    fg.site, fg.ctx, fg.name, fg.insts, fg.me, fg.survive = \
        Site(), types.SimpleNamespace(tid=MAIN_TID), "g", [0], 0, True
    fg._lock, fg._pending, fg._pending_bytes, fg._last_call = threading.Lock(), deque(), 0, 0.0
    fg._main_keeps = False
    result = np.zeros((1 << 20) // 8)
    places: set = set()

    def calls(rounds):
        for r in rounds:
            result[:] = r
            fg._shadow(r, "allreduce", None, None, None, "sum", None, result)
            result[:] = -1                    # the caller changes the array it got
            places.update(e[7].ctypes.data for _, e in fg._pending)

    calls(range(1, 6))
    assert [(e[0], e[7][0], e[7][-1]) for _, e in fg._pending] == [(4, 4, 4), (5, 5, 5)]
    assert len(places) == 3                   # KEEP_ROUNDS + 1 places for five calls
    fg.flush_shadows()
    (_, _, entries), = sent
    calls(range(6, 10))
    assert [(e[0], e[7].min(), e[7].max()) for e in entries] == [(4, 4, 4), (5, 5, 5)]
    assert [(e[0], e[7][0]) for _, e in fg._pending] == [(8, 8), (9, 9)]
    assert {e[7].ctypes.data for e in entries}.isdisjoint(
        e[7].ctypes.data for _, e in fg._pending)


def test_a_member_beside_main_keeps_only_its_last_result_and_reuses_its_memory(monkeypatch):
    """When main is a member too, another member keeps the result MPI computed only until
    its next call completes (which shows main completed the call before: main's shadow
    has that result); its memory goes to the next result, and a batch sent carries at
    most one result (8 MiB allreduces: not one 8 MiB copy a call to the coordinator)."""
    import threading
    import types
    from collections import deque
    import mpi4py
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False          # no MPI_Init in the test process
    from clustervm import fastgroup
    from clustervm.blocks import Blocks
    monkeypatch.setattr(fastgroup, "ARRAY_COPIES", Blocks(64 << 10, 4 << 20, 64 << 20))
    kick = threading.Event()
    kick.set()                                # no flusher thread: this test flushes
    monkeypatch.setattr(fastgroup, "_FLUSHER", types.SimpleNamespace(kick=kick))
    fg = fastgroup.FrozenGroup.__new__(fastgroup.FrozenGroup)
    fg.ctx, fg.name, fg.insts, fg.me, fg.survive = \
        types.SimpleNamespace(tid=11), "g", [0, 1], 1, True
    fg._lock, fg._pending, fg._pending_bytes, fg._last_call = threading.Lock(), deque(), 0, 0.0
    fg._main_keeps = True
    result = np.zeros((1 << 20) // 8)
    places = []
    for r in (1, 2, 3):
        result[:] = r
        fg._shadow(r, "allreduce", None, None, None, "sum", None, result)
        result[:] = -1                        # the caller changes the array it got
        places.append(fg._pending[-1][1][7].ctypes.data)
    assert [(e[0], e[7] is None) for _, e in fg._pending] == [(1, True), (2, True), (3, False)]
    kept = fg._pending[-1][1][7]
    assert kept[0] == kept[-1] == 3
    assert places[0] == places[1] == places[2]      # round 1's memory took the next results
    assert fg._pending_bytes < 3 * 64 + result.nbytes + 1024


def test_thawed_group_counts_shadows_of_a_member_that_ended():
    g, coord, tids = make(3, nodes=[1, 2, 3])
    [call(g, t, "freeze", count=1) for t in tids]
    for t, v in zip(tids, [1, 2, 3]):
        g.shadow("g", t, 1, "gather", v, None, 0, None, None)
    g.task_exit(10)                               # instance 0 ended after its last call
    g.shadow("g", 11, 2, "allreduce", 5, None, None, "sum", None)
    b = call(g, 11, "allreduce", 5, fn="sum", round_no=2)      # thaws
    assert call(g, 12, "gather", 3, root=0, round_no=1).value is None
    assert not b.done                            # waits for 12, not for the ended 10
    c = call(g, 12, "allreduce", 6, fn="sum", round_no=2)
    assert b.value == c.value == 11
    # a shadow of a call whose value could not be sent: the same error on replay
    g2, _, t2 = make(2, name="h", nodes=[1, 2])
    [call(g2, t, "freeze", name="h", count=1) for t in t2]
    g2.shadow("h", t2[0], 1, "allgather", None, None, None, None, "instance 0 could not")
    g2.shadow("h", t2[1], 1, "allgather", 2, None, None, None, None)
    g2.thaw("h", "test")
    assert "instance 0 could not" in str(call(g2, t2[1], "allgather", 2, name="h",
                                              round_no=1).error)


def test_freeze_stays_on_the_hub_when_members_share_a_node():
    g, coord, tids = make(3, nodes=[1, 1, 2])
    plan = [call(g, t, "freeze", count=1) for t in tids][0].value
    assert plan["members"] is None and "share a node" in plan["why"]
    assert [b.value for b in everyone(g, tids, "allreduce", [1, 2, 3], fn="sum")] == [6] * 3
    g3, _, t3 = make(2, name="s", nodes=[1, 100])
    plan = [call(g3, t, "freeze", name="s", count=1) for t in t3][0].value
    assert plan["members"] is None and "MPI_Comm_spawn" in plan["why"]
    g2, _, t2 = make(2, name="h")
    plan = [call(g2, t, "freeze", name="h", count=0) for t in t2][0].value
    assert plan["members"] is None and plan["why"] == "mpi=False"
    with pytest.raises(GroupError, match="frozen"):
        g2.join("h", 99)


# -- integration tests: real jobs ---------------------------------------------------------

TIMEOUT = 90.0


def _ok(res, what: str) -> None:
    assert res.rc == 0, f"{what} failed (rc {res.rc}):\n{res.out}\n--- stderr ---\n{res.err}"


def _check_records(r: dict) -> dict:
    """What groups_calls.record returned at every member is what it should be."""
    n, tids = 4, r["tids"]
    order = r["main"]["tids"]                      # instance -> tid, in joining order
    assert sorted(order[:3]) == sorted(tids) and order[3] == r["main_tid"]   # main joined last
    records = r["tasks"] + [r["main"]]
    by_inst = {rec["inst"]: rec for rec in records}
    gcd = math.gcd(*[6 * (i + 2) for i in range(n)])
    for rec in records:
        i = rec["inst"]
        assert rec["my_inst"] == i and rec["size"] == n and rec["tids"] == order
        assert rec["tid_of_0"] == order[0]
        assert rec["bcast"] == {"from": 1}
        assert rec["reduce"] == (math.prod(range(1, n + 1)) if i == 0 else None)
        assert rec["allreduce_sum"] == sum(range(n))
        assert rec["allreduce_max"] == max(j * 7 % 5 for j in range(n))
        assert rec["allreduce_min"] == min(j * 7 % 5 for j in range(n))
        assert rec["allreduce_gcd"] == gcd
        assert rec["np"] == [[sum(range(n)) + n * x for x in range(4)], "int32",
                             [float(math.factorial(n))] * 3, "float32"]
        assert rec["gather"] == ([j * 10 for j in range(n)] if i == n - 1 else None)
        assert rec["allgather"] == [f"m{j}" for j in range(n)]
        assert rec["scatter"] == i * i
        assert rec["big"] == [float(sum(range(1 << 20))), "float64"]
    return by_inst


@pytest.mark.mpi
def test_every_group_call_and_the_mailbox():
    import json
    res = run_job([str(APPS / "groups_calls.py"), "--tasks", "3"], n=3, timeout=TIMEOUT)
    _ok(res, "groups_calls")
    check_groups_calls(json.loads(res.line("groups-result=").split("=", 1)[1]))


def check_groups_calls(r: dict) -> None:
    """What tests/apps/groups_calls.py must report (run under mpiexec or in process)."""
    by_inst = _check_records(r)
    n, order = 4, r["main"]["tids"]
    for rec in by_inst.values():
        assert rec["after_rejoin"] == n
    assert by_inst[1]["rejoined_inst"] == 1        # the lowest free instance again
    errors = by_inst[0]["errors"]
    assert "GroupError" in errors["not_member"] and "call join_group(" in errors["not_member"]
    assert "unknown reduce op 'add'" in errors["bad_op"]
    m = r["main"]
    assert m["size_after_leave"] == n - 1
    box = m["mailbox"]
    assert box["got"] == [order[0], [0, 1, 2]] and box["none"] is None
    assert box["get_missing"].startswith("KeyError") and "from-task" in box["get_missing"]
    assert box["del_missing"].startswith("KeyError")
    assert box["wait_timeout"].startswith("TimeoutError") and "'never-put'" in box["wait_timeout"]


def _kill_when_ready(job, markers: Path, rank: int) -> None:
    deadline = time.monotonic() + 60
    while not (markers / "ready").exists():
        assert time.monotonic() < deadline, "the victim never got ready"
        assert job.proc.poll() is None, str(job.wait())
        time.sleep(0.05)
    time.sleep(0.3)                   # main and the others now wait in the round
    job.kill_rank(rank)


@pytest.mark.mpi
@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "restart"])
def test_collective_completes_after_failover(job, tmp_path, checkpoint):
    args = [str(APPS / "groups_failover.py"), "--markers", str(tmp_path)]
    j = job(args + (["--checkpoint"] if checkpoint else []), n=3, timeout=TIMEOUT)
    _kill_when_ready(j, tmp_path, 2)
    res = j.wait()
    _ok(res, "groups_failover")
    line = res.line("failover-result:")
    acc, expected = re.findall(r"acc=(\d+) expected=(\d+)", line)[0]
    assert acc == expected
    assert "'node': 2" in res.line("failover-mailbox:")      # put by the lost node
    assert "node 2" in res.err and "lost" in res.err


@pytest.mark.mpi
def test_collective_fails_clearly_when_member_cannot_come_back(job, tmp_path):
    j = job([str(APPS / "groups_failover.py"), "--markers", str(tmp_path), "--checkpoint"],
            n=2, timeout=TIMEOUT)
    _kill_when_ready(j, tmp_path, 1)                 # the only worker: nowhere to restart
    res = j.wait()
    line = res.line("failover-error:")
    assert "GroupError" in line and "lost with node 1" in line
    assert re.search(r"member task\(s\) \[\d+\]", line)
    assert "'node': 1" in res.line("failover-mailbox:")



@pytest.mark.mpi
def test_frozen_group_runs_every_call_on_mpi():
    import json
    res = run_job([str(APPS / "groups_frozen.py")], n=4, timeout=TIMEOUT)
    _ok(res, "groups_frozen")
    r = json.loads(res.line("frozen-result=").split("=", 1)[1])
    by_inst = _check_records(r)
    assert r["main"]["frozen_size"] == 4
    for rec in by_inst.values():
        assert rec["on_mpi"] is True
        e = rec["errors"]
        assert "different collective calls" in e["mismatch"]
        assert "bcast(root=0)" in e["mismatch"] and "allreduce()" in e["mismatch"]
        assert "root instance 42 is not a member" in e["bad_root"]
        assert e["mixed"] == [3, 4, 5]
        if rec["inst"] == 1:
            assert e["unsendable"].startswith("WireError")
        else:
            assert "instance(s) [1] could not make their contribution" in e["unsendable"]
        assert e["after"] == 4
    mismatches = {rec["errors"]["mismatch"] for rec in by_inst.values()}
    assert len(mismatches) == 1                   # the same error at every member


def _auto_result(res) -> dict:
    import json
    _ok(res, "groups_auto")
    # members go off MPI with a marked exchange, never by revoking the communicator
    # (Open MPI prints this for a revoked call under way)
    assert "NBC_Progress" not in res.err, res.err
    return json.loads(res.line("auto-result:").split(":", 1)[1])


@pytest.mark.mpi
def test_hub_group_moves_onto_mpi_and_back_for_a_join_and_a_leave():
    """CLUSTERVM_AUTO_FREEZE (16): after 16 full rounds a hub group of one member per rank
    runs on MPI; a task that joins while the members wait elsewhere is answered once they
    are off MPI (asked), and the five are on MPI again; after a leave, the four."""
    r = _auto_result(run_job([str(APPS / "groups_auto.py")], n=5, timeout=TIMEOUT))
    rounds = 24
    olds = [r["main"], *r["tasks"]]
    for rec in olds:
        assert rec["a"] == [4 * i for i in range(rounds)]
        assert rec["b"] == [5] * rounds and rec["c"] == [4] * rounds
        assert rec["on_mpi_a"] is rec["on_mpi_b"] is rec["on_mpi_c"] is True
    assert r["joiner"]["b"] == [5] * rounds and r["joiner"]["on_mpi_b"] is True
    assert r["main"]["joined_inst"] == r["joiner"]["inst"] == 4


@pytest.mark.mpi
def test_a_task_joins_an_auto_frozen_group_while_its_members_call_on_mpi():
    """The members are in the middle of an allreduce on MPI when the join comes: asked
    off, each finishes its call, marks its next exchange off, and goes on through the
    coordinator; every member counts the new one from the same round on (the joiner's
    first)."""
    r = _auto_result(run_job([str(APPS / "groups_auto.py"), "--busy"], n=5, timeout=TIMEOUT))
    olds = [r["main"], *r["tasks"]]
    first = olds[0]["b"]
    k = first.index(5)
    assert first == [4] * k + [5] * 21      # (the app's AFTER: 20 more)
    for rec in olds:
        assert rec["a"] == [4] * 24 and rec["on_mpi_a"] is True
        assert rec["b"] == first              # the same round for every member
    # on MPI again (16 full rounds of the five)
    assert r["joiner"]["b"] == [5] * 21 and r["joiner"]["on_mpi_b"] is True


def _killed_at(job, tmp_path, app: str, step: int):
    """Run ``app --kill-at step`` on 4 ranks, SIGKILL rank 3 once its member is ready:
    the job's result (checked to have ended with status 0)."""
    j = job([str(APPS / app), "--kill-at", str(step), "--markers", str(tmp_path)],
            n=4, timeout=TIMEOUT)
    _kill_when_ready(j, tmp_path, 3)
    res = j.wait()
    _ok(res, f"{app} --kill-at")
    return res


@pytest.mark.mpi
def test_a_hub_group_on_mpi_by_itself_survives_a_killed_node(job, tmp_path):
    """The group went on MPI by itself (16 rounds); the node of one member is SIGKILLed
    at step 30; the member restarts from the start on a node that has a member already,
    gets every answer the others got, and the group goes on through the coordinator."""
    res = _killed_at(job, tmp_path, "groups_auto.py", 30)
    assert res.line("auto-kill:") == "auto-kill: sums_ok=True task_errors=[]"
    assert "two of its members now run on the same node" in res.err


@pytest.mark.mpi
def test_frozen_group_survives_a_lost_member(job, tmp_path):
    """Issue 15: a member's node is killed mid-loop; the member restarts (from scratch:
    this app does not checkpoint) on a node that has a member already, replays every round
    from the others' shadows, and the group goes on through the coordinator (it cannot be
    one member per rank: said once in the log) with every result right."""
    res = _killed_at(job, tmp_path, "groups_frozen.py", 5)
    assert res.line("frozen-error:") == "frozen-error: none"
    # the member restarted on a node that has a member already: one per rank no more
    assert res.line("frozen-survived:") == \
        "frozen-survived: sums_ok=True on_mpi=False task_errors=[]"
    assert res.err.count("frozen group 'g' stays on the coordinator") == 1, res.err
    assert "two of its members now run on the same node" in res.err


# -- the examples against single-process references ---------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("n,tasks", [(2, 3), (4, 5)])
def test_samplesort(n, tasks):
    import samplesort
    size, seed = 150_000, 11
    res = run_job([str(EXAMPLES / "samplesort.py"), "--n", str(size), "--tasks", str(tasks),
                   "--seed", str(seed)], n=n, timeout=TIMEOUT)
    _ok(res, "samplesort")
    data = np.sort(np.concatenate([samplesort.chunk(seed, size, c)
                                   for c in range(samplesort.n_chunks(size))]))
    p = (1 << 61) - 1
    checksum = sum((i + 1) * (v % p) for i, v in enumerate(data.tolist())) % p
    assert res.line("sorted=") == f"sorted=True n={size} checksum={checksum}"


def _kmeans_reference(points: np.ndarray, cents: np.ndarray, max_iter: int):
    label = None
    for it in range(1, max_iter + 1):
        d2 = ((points[:, None, :] - cents[None]) ** 2).sum(axis=2)
        new = d2.argmin(axis=1)
        inertia = d2.min(axis=1).sum()
        if label is not None and (new == label).all():
            return it, inertia, cents
        label = new
        for c in range(len(cents)):
            if (label == c).any():
                cents[c] = points[label == c].mean(axis=0)
    return max_iter, inertia, cents


@pytest.mark.mpi
@pytest.mark.parametrize("n,tasks,mpi", [(2, 2, False), (4, 5, False), (4, 3, True)])
def test_kmeans(n, tasks, mpi):
    import ast
    import kmeans
    size, clusters, dim, seed = 60_000, 4, 2, 5
    res = run_job([str(EXAMPLES / "kmeans.py"), "--points", str(size), "--clusters",
                   str(clusters), "--dim", str(dim), "--tasks", str(tasks), "--seed", str(seed),
                   *(["--mpi"] if mpi else [])], n=n, timeout=TIMEOUT)
    _ok(res, "kmeans")
    m = re.match(r"kmeans: clusters=(\d+) iters=(\d+) inertia=([\d.]+) centroids=(.*)$",
                 res.line("kmeans: clusters="))
    assert m, res.out
    points = np.concatenate([kmeans.chunk(seed, size, clusters, dim, c)
                             for c in range(kmeans.n_chunks(size))])
    init = kmeans.initial_centroids(seed, size, clusters, dim)
    iters, inertia, cents = _kmeans_reference(points, init.copy(), 100)
    assert int(m.group(2)) == iters
    assert float(m.group(3)) == pytest.approx(inertia, rel=1e-9)
    np.testing.assert_allclose(np.array(ast.literal_eval(m.group(4))), cents, atol=2e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("n,mappers,reducers", [(2, 2, 1), (4, 4, 3)])
def test_wordcount(n, mappers, reducers):
    import glob
    from collections import Counter
    import wordcount
    files = sorted(glob.glob(str(EXAMPLES / "data" / "corpus" / "*.txt")))
    assert len(files) >= 3
    res = run_job([str(EXAMPLES / "wordcount.py"), *files, "--mappers", str(mappers),
                   "--reducers", str(reducers), "--top", "8"], n=n, timeout=TIMEOUT)
    _ok(res, "wordcount")
    counts: Counter = Counter()
    for f in files:
        counts.update(wordcount.words(Path(f).read_text(encoding="utf-8")))
    best = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:8]
    assert res.line("wordcount: words=") == (
        f"wordcount: words={sum(counts.values())} distinct={len(counts)} "
        f"top={','.join(f'{w}:{c}' for w, c in best)}")


def test_thawed_group_keeps_the_last_rounds_only():
    g, coord, tids = make(2, nodes=[1, 2])
    [call(g, t, "freeze", count=1) for t in tids]
    for r in range(1, 71):                        # 70 calls on MPI: the oldest 6 dropped
        for t in tids:
            g.shadow("g", t, r, "allreduce", r, None, None, "sum", None)
    g.thaw("g", "test")
    assert call(g, tids[1], "allreduce", 70, fn="sum", round_no=70).value == 140
    err = call(g, tids[1], "allreduce", 1, fn="sum", round_no=1).error
    assert "no longer kept" in str(err) and "checkpoint it more often" in str(err)


@pytest.mark.mpi
def test_frozen_group_with_checkpoints_survives_a_killed_node(job, tmp_path):
    """Members restart from their checkpoints (mid-run, not from scratch): they call the
    rounds after their checkpoint again, and the result is the undisturbed one."""
    from test_failover import ckpt_files, wait_until
    app, args = str(APPS / "frozen_iter.py"), ["--steps", "12", "--step-ms", "150"]
    base = run_job([app, *args], n=4, timeout=TIMEOUT)
    _ok(base, "frozen_iter")
    assert base.line("frozen-iter-where:") == "frozen-iter-where: on_mpi=True"
    ck = tmp_path / "ck"
    j = job([app, *args], n=4, timeout=TIMEOUT, run_args=["--checkpoint-dir", str(ck)])
    wait_until(lambda: len(ckpt_files(ck)) >= 3, "the members' first checkpoints", j)
    j.kill_rank(2)
    res = j.wait()
    _ok(res, "frozen_iter with a node killed")
    assert res.line("frozen-iter:") == base.line("frozen-iter:")
    assert res.line("frozen-iter-where:") == "frozen-iter-where: on_mpi=False"
    assert "node 2" in res.err and "lost" in res.err, res.err


_FROZEN_ITER_BASE: dict = {}


def _frozen_iter_base(app: str, args: list) -> str:
    """The undisturbed result of frozen_iter.py with ``args``: the same without its
    sleeps (``--step-ms`` only paces the steps, so that a drill can strike mid-run)."""
    args = without_options(args)
    key = tuple(args)
    if key not in _FROZEN_ITER_BASE:
        base = run_job([app, *args], n=4, timeout=TIMEOUT)
        _ok(base, "frozen_iter")
        assert base.line("frozen-iter-recovery:") == ("frozen-iter-recovery: hub_steps=0 "
                                                      "mpi_after_hub=0 nodes=[1, 2, 3] "
                                                      "members_on_mpi=[True, True, True]")
        _FROZEN_ITER_BASE[key] = base.line("frozen-iter:")
    return _FROZEN_ITER_BASE[key]


@pytest.mark.mpi
@pytest.mark.parametrize("where", ["idle-node", "spare", "spare-floats"])
def test_frozen_group_goes_back_on_mpi_after_a_killed_node(job, tmp_path, where):
    """Issue 15: a member's node is SIGKILLed mid-run; the member restarts from its
    checkpoint on a node without a member (an idle one, or the spare of --spares 1),
    catches up through the coordinator, and then the group is on MPI again, one member
    per rank, on a new communicator: the result is the undisturbed one, bit for bit
    also for float sums that MPI makes in its own order (spare-floats)."""
    from test_failover import ckpt_files, wait_until
    app, args = str(APPS / "frozen_iter.py"), ["--steps", "14", "--step-ms", "150"]
    if where.endswith("floats"):
        args += ["--floats", "64"]
    expected = _frozen_iter_base(app, args)
    ck = tmp_path / "ck"
    run_args = ["--checkpoint-dir", str(ck)]
    if where.startswith("spare"):
        run_args += ["--spares", "1"]
    else:
        args = args + ["--idle", "1"]
    j = job([app, *args], n=5, timeout=TIMEOUT, run_args=run_args)
    wait_until(lambda: len(ckpt_files(ck)) >= 3, "the members' first checkpoints", j)
    j.kill_rank(2)
    res = j.wait()
    _ok(res, f"frozen_iter with a node killed ({where})")
    assert res.line("frozen-iter:") == expected
    assert res.line("frozen-iter-where:") == "frozen-iter-where: on_mpi=True", res.err
    # the member moved to node 4, and every member (the restarted one too, which never
    # called freeze_group again) is on MPI at the end
    assert re.fullmatch(r"frozen-iter-recovery: hub_steps=\d+ mpi_after_hub=\d+ "
                        r"nodes=\[1, 3, 4\] members_on_mpi=\[True, True, True\]",
                        res.line("frozen-iter-recovery:")), res.line("frozen-iter-recovery:")
    assert res.err.count("frozen group 'it' is back on MPI after the loss of a member: a "
                         "new communicator of ranks [0, 1, 3, 4]") == 1, res.err
    assert "node 2" in res.err and "lost" in res.err, res.err
    if where.startswith("spare"):
        assert "spare node 4 takes over" in res.err, res.err
    assert "stays on the coordinator" not in res.err, res.err


@pytest.mark.mpi
def test_frozen_group_survives_two_killed_nodes_one_after_the_other(job, tmp_path):
    """Two members' nodes SIGKILLed 2.5 s apart (two spares): the group goes back on MPI
    after each loss (or once, if the second comes before the first rebuild), and the
    float result is the undisturbed one, bit for bit."""
    from test_failover import ckpt_files, wait_until
    app = str(APPS / "frozen_iter.py")
    args = ["--steps", "40", "--step-ms", "150", "--floats", "64"]
    expected = _frozen_iter_base(app, args)
    ck = tmp_path / "ck"
    j = job([app, *args], n=6, timeout=TIMEOUT, run_args=["--checkpoint-dir", str(ck),
                                                         "--spares", "2"])
    wait_until(lambda: len(ckpt_files(ck)) >= 3, "the members' first checkpoints", j)
    j.kill_rank(2)
    time.sleep(2.5)
    j.kill_rank(3)
    res = j.wait()
    _ok(res, "frozen_iter with two nodes killed")
    assert res.line("frozen-iter:") == expected
    assert res.line("frozen-iter-where:") == "frozen-iter-where: on_mpi=True", res.err
    assert re.fullmatch(r"frozen-iter-recovery: hub_steps=\d+ mpi_after_hub=\d+ "
                        r"nodes=\[1, 4, 5\] members_on_mpi=\[True, True, True\]",
                        res.line("frozen-iter-recovery:")), res.line("frozen-iter-recovery:")
    assert "a new communicator of ranks [0, 1, 4, 5]" in res.err, res.err


def test_member_failing_after_a_restart_fails_the_open_round_not_completes_it():
    """Found by tools/soak.py (kmeans, a node SIGSTOPped): a member restarted without a
    checkpoint could not replay its old rounds and ended with a GroupError; the open
    round then completed without its part and the others went on with wrong sums,
    exit status 0. Now that round fails for everyone."""
    g, coord, tids = make(3)
    for _ in range(3):
        assert [b.value for b in everyone(g, tids, "allreduce", [1, 2, 3], fn="sum")] == [6] * 3
    a, b = call(g, 10, "allreduce", 1, fn="sum"), call(g, 11, "allreduce", 2, fn="sum")
    assert not a.done and not b.done                       # round 3 waits for task 12
    g.counter[("g", 12)] = 1                               # its new incarnation replayed round 0
    g.task_exit(12, GroupError("round 1 is over and its result is no longer kept"))
    assert isinstance(a.error, GroupError) and "task 12" in str(a.error)
    assert isinstance(b.error, GroupError) and "round 3" in str(b.error)


class _JoinSite:
    """A site whose coordinator answers join_group with a fixed [inst, round, new]."""

    def __init__(self, answer: list) -> None:
        self.answer = answer

    def mailbox(self, tid: int):
        return None

    def call(self, name: str, *args):
        assert name == "join_group"
        return self.answer


@pytest.mark.parametrize("new, expected", [(True, 0), (False, 11)])
def test_a_restored_task_joining_a_new_group_takes_the_groups_rounds(new, expected):
    """Found by tools/soak.py (kmeans, rank 0 SIGKILLed, --resume): the members restored
    checkpoints of different iterations (round 11 and round 21), found their group gone
    (groups are not journaled) and joined it anew, each keeping its checkpoint's round
    count: their barriers waited for each other forever. A new member takes the group's
    first round; a task still a member (restarted on a lost node) keeps its own count."""
    from clustervm.task import TaskContext
    ctx = TaskContext(_JoinSite([0, 0, new]), 50, None, seqs={"coll": {"kmeans": 11}})
    assert ctx.join_group("kmeans") == 0
    assert ctx._coll["kmeans"] == expected
