"""Issue 15: the calls a message-passing programmer reaches for.

One real job (tests/apps/messaging_app.py) runs every check; each test asserts on
its ``CHECK`` line. Separate jobs run examples/cannon.py, undisturbed and with a
node SIGKILLed mid-run.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import Checks, run_job
from test_failover import ckpt_files, lost_ranks, report, wait_until

APPS = Path(__file__).resolve().parent / "apps"

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def app():
    return Checks(run_job([str(APPS / "messaging_app.py")], n=4, timeout=150))


def test_job_ends_cleanly_and_warns_once_about_unwaited_work(app):
    app.assert_clean_end()
    err = app.result.err
    assert err.count("main returned with work never waited for") == 1, err
    assert "1 future(s) not done" in err and "1 spawned task(s) still running" in err, err


def test_siblings_rank_size_and_per_instance_args(app):
    c = app["siblings"]
    assert [r["rank"] for r in c["same"]] == [0, 1, 2]
    assert all(r["siblings"] == c["same_tids"] and r["size"] == 3 and r["a"] == 7
               and r["k"] == 1 for r in c["same"])
    assert [(r["a"], r["b"]) for r in c["own"]] == [(1, "x"), (2, "y"), (3, None)]
    assert all(r["siblings"] == c["own_tids"] and r["k"] == 2 for r in c["own"])
    assert [r["rank"] for r in c["own"]] == [0, 1, 2]
    nested = c["nested"]
    assert [(r["rank"], r["a"], r["size"]) for r in nested["got"]] == [(0, "p", 2), (1, "q", 2)]
    assert c["main"] == [0, 1, [1]]
    assert c["errors"]["mismatch"].startswith("ValueError: spawn got count=2 and 1")
    assert c["errors"]["empty"].startswith("ValueError")
    assert c["errors"]["not_list"].startswith("TypeError")


def test_notifications_have_source_system_and_a_kind(app):
    c = app["notify"]
    assert c["SYSTEM"] != c["ANY"]
    assert c["first"] == [1, 50, "user", None]           # recv(ANY, ANY) skipped the event
    assert c["note"] == [c["SYSTEM"], 50, "TASK_EXIT", True]
    assert c["none_left"]


def test_executor_takes_partials_methods_and_callables(app):
    c = app["executor"]
    assert c["partial"] == [x * 3 + 1 for x in range(4)]
    assert c["bound"] == [x * 5 for x in range(4)]        # a fresh instance per task
    assert c["static"] == [0, 2, 4]
    assert c["classmethod"] == ["Scaler:0", "Scaler:1"]
    assert c["callable"] == -8
    assert c["list_method"] == 2
    assert c["chunked"] == [x + 10 for x in range(5)]
    assert c["lambda"].startswith("WireError: cannot send lambda")


def test_nonblocking_requests_and_sendrecv(app):
    c = app["requests"]
    tids = c["tids"]
    for r in c["ring"]:
        me = r["rank"]
        assert r["shifted"] == 10 * ((me - 1) % 3)
        # the senders overwrote their arrays right after isend: the copies left
        assert r["from_left"] == (me - 1) % 3 and r["from_right"] == (me + 1) % 3
        assert r["sources"] == [tids[(me - 1) % 3], tids[(me + 1) % 3]]
        assert r["send_done"] == [True, True]
    assert c["order"] == ["b", "a"]                  # matched in posting order
    assert c["recv_after_irecv"] == ["y", "x"]
    assert c["test_before"] == [False, None]
    assert c["timeout"].startswith("TimeoutError: wait: 1 of 1 request(s) not complete")
    assert c["cancel"] == [True, True, None, False]
    assert c["late_stays"] == "late"
    assert c["waitany"] == [[0, 0], [1, 1], [2, 2]]
    assert c["waitsome"] == [[1], ["s"], [None, False]]
    assert c["testall"] == [True, True, "t"]


@pytest.mark.parametrize("group", ["hub", "fz"])
def test_alltoall_reduce_scatter_scan_exscan(app, group):
    c = app["collectives"]
    members = c[group]
    n = len(members)
    assert sorted(m["inst"] for m in members) == list(range(n))
    for m in members:
        me = m["inst"]
        assert m["on_mpi"] is (True if group == "fz" else None)
        assert m["alltoall"] == [f"{j}->{me}" for j in range(n)]
        assert m["alltoallv"] == [j + me for j in range(n)]          # sizes differ: alltoallv
        assert m["reduce_scatter"] == sum(j * 10 + me for j in range(n))
        assert m["reduce_scatter_np"] == [float(2 * me * n), float((2 * me + 1) * n)]
        assert m["scan"] == sum(range(1, me + 2))
        assert m["exscan"] == (None if me == 0 else sum(range(1, me + 1)))
        assert m["scan_prod"] == __import__("math").prod(range(2, me + 3))
        assert m["scan_np"] == [sum(range(me + 1))] * 3
        assert m["short"].startswith(f"GroupError: alltoall on group '{group}': instance 0 gave 1")


def test_collective_timeout(app):
    assert app["collectives"]["timeout"].startswith(
        "TimeoutError: scan on group 'solo': not every member took part within 0.3 s")


def test_combine_unit():
    """The shared computation of the four new collectives, without MPI (gaps included)."""
    from clustervm.core.groups import combine

    vals = [[f"{i}{j}" for j in range(4)] for i in (0, 1, 3)]
    assert combine("alltoall", "g", vals, [0, 1, 3], None, None) == [
        ["00", "10", None, "30"], ["01", "11", None, "31"], ["03", "13", None, "33"]]
    assert combine("scan", "g", [1, 2, 3], [0, 1, 2], "sum", None) == [1, 3, 6]
    assert combine("exscan", "g", [1, 2, 3], [0, 1, 2], "max", None) == [None, 1, 2]
    assert combine("reduce_scatter", "g", [[1, 2], [3, 4]], [0, 1], "prod", None) == [3, 8]


# -- examples/cannon.py ---------------------------------------------------------------

CANNON = str(Path(__file__).resolve().parents[1] / "examples" / "cannon.py")


def test_cannon_matches_numpy():
    res = run_job([CANNON, "--n", "96", "--grid", "3"], n=4, timeout=90)
    assert res.rc == 0, f"rc {res.rc}\n{res.out}\n{res.err}"
    line = res.line("cannon ok=")
    assert re.fullmatch(r"cannon ok=True n=96 grid=3 maxdiff=\S+", line), line
    assert float(line.rsplit("=", 1)[1]) < 1e-9


def test_cannon_with_a_node_killed_mid_run(job, tmp_path):
    """A node SIGKILLed after the first step's checkpoints: its tasks restart from them
    (same rank and siblings), the replayed blocks complete their requests once."""
    ck = tmp_path / "ck"
    j = job([CANNON, "--n", "48", "--grid", "3", "--step-ms", "700"], n=4, timeout=120,
            run_args=["--checkpoint-dir", str(ck)])
    wait_until(lambda: len(ckpt_files(ck)) >= 9, "the first step's checkpoints", j)
    j.kill_rank(2)
    res = j.wait()
    assert res.rc == 0, f"rc {res.rc}\n{res.out}\n{res.err}"
    line = res.line("cannon ok=")
    assert re.fullmatch(r"cannon ok=True n=48 grid=3 maxdiff=\S+", line), line
    rep = report(res)
    assert lost_ranks(rep) == {2}, rep
    m = re.search(r"(\d+) restored", rep)
    assert m and int(m.group(1)) >= 1, rep


def test_pickle_carries_what_msgpack_cannot():
    res = run_job([str(APPS / "pickle_callables.py")], n=2, timeout=60,
                  run_args=["--pickle"])
    assert res.rc == 0, f"rc {res.rc}\n{res.out}\n{res.err}"
    assert res.line("pickled=") == 'pickled={"bound": "2/3", "partial": "3/2"}'


# -- unit tests of clustervm.refs (no MPI) -----------------------------------------------

class Counter:
    def __init__(self, k):
        self.k = k
        self.n = 0

    def bump(self, x):
        self.n += 1
        return self.k * x + self.n

    @staticmethod
    def st(x):
        return x - 1

    @classmethod
    def cm(cls, x):
        return cls.__name__ + str(x)


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self):
        self.a, self.b = 2, 3

    def __call__(self, x):
        return self.a * x + self.b


def add3(a, b, c=0):
    return a + b + c


def test_refs_round_trip_and_fresh_instances():
    import functools

    from clustervm import wire
    obj = Counter(10)
    f = wire.resolve_ref(wire.fn_ref(obj.bump, allow_pickle=False))
    assert [f(1), f(1)] == [11, 11]            # rebuilt per call: n starts at 0 each time
    assert obj.n == 0
    assert wire.fn_ref(Counter.st) == f"{__name__}:Counter.st"
    assert wire.resolve_ref(wire.fn_ref(Counter.cm))(4) == "Counter4"
    assert wire.resolve_ref(wire.fn_ref(Slotted()))(5) == 13
    p = functools.partial(add3, 1, c=5)
    assert wire.resolve_ref(wire.fn_ref(p))(2) == 8
    nested = functools.partial(functools.partial(add3, 1), 2)
    assert wire.resolve_ref(wire.fn_ref(nested))(c=4) == 7
    assert wire.fn_ref(p) == wire.fn_ref(functools.partial(add3, 1, c=5))   # deterministic


def test_refs_errors_name_the_problem():
    import functools
    import threading

    from clustervm import WireError, wire
    obj = Counter(threading.Lock())
    with pytest.raises(WireError, match=r"attributes of the Counter instance.*\['k'\]"):
        wire.fn_ref(obj.bump, allow_pickle=False)
    with pytest.raises(WireError, match="arguments bound by functools.partial"):
        wire.fn_ref(functools.partial(add3, threading.Lock()), allow_pickle=False)
    with pytest.raises(WireError, match="pickle cannot send it either"):
        wire.fn_ref(obj.bump, allow_pickle=True)
