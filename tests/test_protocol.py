"""The messages between ranks (clustervm.protocol), without MPI: every kind round-trips
through the wire codec, op codes are unique, malformed tuples give a clear error, every
kind has a handler on the side it is sent to, and the REQ names are one table."""
from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import mpi4py

mpi4py.rc.initialize = False   # the shells import the MPI transport: no MPI_Init here
mpi4py.rc.finalize = False

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from clustervm import protocol as P  # noqa: E402
from clustervm import wire  # noqa: E402
from clustervm.config import Config  # noqa: E402
from clustervm.errors import WireError  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "clustervm"

#: one message of every kind, with the field values the code sends
SAMPLES: dict[type[P.Message], P.Message] = {
    P.Hello: P.Hello("node-a", 4242),
    P.Done: P.Done([(5, True, {"x": np.arange(3.0)}), (6, False, b"\x00" * 40)]),
    P.Exited: P.Exited(7, 2, True, [1, (2, 3)], {8: [(5, 1, "x"), (6, 1, b"y")]}, 4, 12),
    P.Req: P.Req(9, "submit", (1, "mod:fn", (np.float32(2.5), 2**100, 1 + 2j), {})),
    P.Heartbeat: P.Heartbeat(3, 40),
    P.Bye: P.Bye(),
    P.Run: P.Run([(12, 1, "mod:fn", (1, 2), {"k": 3}, None),
                  (13, 1, "mod:fn", (), {}, {"state": 1})]),
    P.Spawn: P.Spawn(20, 1, "mod:work", (1, "a"), {"n": 2}, 1, {"state": [1]}, True, (20, 4),
                     (2, 7), (3, False), 20),
    P.Kill: P.Kill(20, 1),
    P.Reply: P.Reply(9, False, {"type": "ValueError", "text": "no"}),
    P.Loc: P.Loc([(20, 2, 1, True, {7: 3}), (21, -1, 0, False, None)]),
    P.Shutdown: P.Shutdown(True),
    P.Cancel: P.Cancel(12),
    P.User: P.User(7, 8, 1, {"k": [1, 2.5, None, (1, 2), {3, 4}, frozenset({5})]}, 0, 7),
    P.Keep: P.Keep(20, 1, 3, b"\x01\x02" * 10, 2),
    P.KeepRef: P.KeepRef(20, 1, 3, "/dev/shm/cvm-ck-j-1-20-1-0", 4096, 7, "boot:1.2:3.4", 2),
    P.Unshared: P.Unshared(20, 1, 3),
    P.Thaw: P.Thaw("ring", [20, 21]),
    P.Held: P.Held(20, 1, 3),
    P.Fetch: P.Fetch(20, 3, 2),
    P.Copy: P.Copy(20, 3, b"\x05" * 9, 1),
    P.Restored: P.Restored(20, 2, 3, True),
    P.Forget: P.Forget(20),
    P.Mark: P.Mark(21, 4, 20, 1, 17, 0, 1),
    P.AskHeld: P.AskHeld(3, [20, 21]),
    P.Holding: P.Holding([(20, 3, 1, 0.25), (21, 4, 1, 0.0)], 3),
    P.Buddy: P.Buddy(2),
    P.Bell: P.Bell(41233, ["10.0.0.1", "127.0.0.1"]),
}


def same(a: Any, b: Any) -> bool:
    """Equal, numpy arrays included (compared by value)."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# -- the kinds ------------------------------------------------------------------------

def test_every_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(P.KINDS)


@pytest.mark.parametrize("kind", P.KINDS, ids=lambda k: k.__name__)
def test_every_kind_round_trips_through_the_wire(kind: type[P.Message]) -> None:
    msg = SAMPLES[kind]
    raw = msg.encode()
    assert type(raw) is tuple and raw[0] == kind.OP and len(raw) == len(kind.__slots__) + 1
    got = wire.loads(*wire.dumps(raw))
    assert same(got, raw)                          # the wire keeps the compact tuple as it is
    back = P.decode(got)
    assert type(back) is kind
    for field in kind.__slots__:
        assert same(getattr(back, field), getattr(msg, field)), field
    assert same(back.encode(), raw)


def test_op_codes_are_unique_and_match_their_names() -> None:
    ops = [k.OP for k in P.KINDS]
    assert len(set(ops)) == len(ops), ops
    assert len({k.__name__ for k in P.KINDS}) == len(P.KINDS)
    for kind in P.KINDS:
        assert getattr(P, kind.__name__.upper()) == kind.OP     # P.USER is User.OP
        assert isinstance(kind.OP, int) and not isinstance(kind.OP, bool)
    assert sorted(P._DECODERS) == sorted(ops)                    # one decoder per kind


@pytest.mark.parametrize("kind", P.KINDS, ids=lambda k: k.__name__)
def test_every_kind_is_declared_once_and_fully(kind: type[P.Message]) -> None:
    assert kind.__doc__ and kind.__doc__.strip(), "a one-line docstring says what it is for"
    assert len(kind.TYPES) == len(kind.__slots__)
    assert kind.TO and kind.TO <= {"coordinator", "node"}
    assert not hasattr(SAMPLES[kind], "__dict__")                 # slots only
    if kind.ITEM:
        # the records come first (the decoder checks field 1)
        assert kind.__slots__[0] == "items" and all(len(i) == kind.ITEM for i in
                                                    SAMPLES[kind].items)


def test_user_fast_path_is_the_same_message() -> None:
    m = SAMPLES[P.User]
    assert P.User.make(m.src, m.dst, m.tag, m.data, m.inc, m.seq) == m.encode()
    assert P.decode(m.encode()) == m
    # dst and tag are as the task gave them (a numpy int works as before)
    got = P.decode((P.USER, 7, np.int64(8), np.int32(1), "x", 0, 3))
    assert got.dst == 8 and got.tag == 1


def test_messages_compare_by_kind_and_fields() -> None:
    assert P.Kill(1, 2) == P.Kill(1, 2) and P.Kill(1, 2) != P.Kill(1, 3)
    assert P.Cancel(1) != P.Heartbeat(1)
    assert repr(P.Kill(1, 2)) == "Kill(tid=1, inc=2)"


# -- malformed tuples --------------------------------------------------------------------

@pytest.mark.parametrize("raw, text", [
    ((P.DONE, 5), "DONE (op 2): field items is int, not list"),
    ((P.EXITED, "x"), "EXITED (op 3) has 1 field(s), not 7 (tid, inc, ok, value, outlog, cut, ckpts)"),
    ((P.REQ, [1], {"a": 1}, 5), "REQ (op 4): field reqid is list, not int"),
    ((P.HELLO,), "HELLO (op 1) has 0 field(s), not 2 (host, pid)"),
    ((P.HELLO, "h", 1, 2), "HELLO (op 1) has 3 field(s), not 2"),
    ((P.SPAWN, 1, "p", "f", (), {}, 0, None, True, None, None, None, 0),
     "field parent is str, not int or None"),
    ((P.DONE, [(1, True)]), "item 0 of items is not a record of 3 fields"),
    ((P.RUN, [(1, 1, "f", (), {}, None), ("x", 1, "f", (), {}, None)]), "item 1 of items"),
    ((P.LOC, [[1, 2, 3]]), "item 0 of items is not a record of 5 fields"),
    ((P.USER, "7", 8, 1, "x", 0, 1), "USER (op 20): field src is str, not int"),
    ((P.USER, 7, 8, 1, "x", 0), "USER (op 20) has 5 field(s), not 6"),
    ([P.USER, 7, 8, 1, "x", 0, 1], "USER (op 20) as a list, not a tuple"),
    ((99, 1), "unknown op 99"),
    (("x",), "unknown op 'x'"),
    ((), "an empty tuple, without an op"),
    ("no tuple", "a str ('no tuple'), not a tuple"),
    ({"op": 1}, "a dict"),
    (None, "a NoneType"),
])
def test_malformed_tuples_give_a_clear_error(raw: Any, text: str) -> None:
    with pytest.raises(P.MessageError) as err:
        P.decode(raw)
    assert text in str(err.value)
    assert isinstance(err.value, WireError)      # a bad message, as a bad frame is


# -- the receiving sides -------------------------------------------------------------------

class StubTransport:
    """What the shells' constructors touch of a transport; records what is sent."""

    mpi_world = False

    def __init__(self, rank: int, size: int = 4) -> None:
        self.rank, self.size = rank, size
        self.sent: list[tuple[int, tuple]] = []
        self.handler: Any = None
        self.on_failure: Any = None
        self.last_heard: dict[int, float] = {}
        self.failed: set[int] = set()
        self.links: dict = {}

    def post(self, dest: int, msg: tuple, wake: bool = True) -> bool:
        assert type(msg) is tuple, msg           # what travels is the encoded tuple
        self.sent.append((dest, msg))
        return True

    def send(self, dest: int, msg: tuple) -> bool:
        return self.post(dest, msg)

    def bell(self) -> None:
        return None

    def knock(self, port: int, addrs: list[str]) -> None:
        self.knocked = (port, addrs)

    def bells(self) -> dict:
        return {}

    def find_bells(self, ask) -> None:
        self.ask_bell = ask

    def learn_bell(self, rank: int, addr) -> None:
        self.learnt = (rank, addr)

    def broadcast(self, dests: list[int], msg: tuple) -> None:
        for d in dests:
            self.post(d, msg)

    def notify(self) -> None:
        pass

    notify_background = notify


@pytest.fixture
def sides(tmp_path, monkeypatch) -> dict[str, Any]:
    from clustervm.coordinator import Coordinator
    from clustervm.node import Node

    monkeypatch.chdir(tmp_path)
    return {"coordinator": Coordinator(StubTransport(0), Config()),
            "node": Node(StubTransport(1), Config())}


def test_every_kind_has_a_handler_on_the_side_it_is_sent_to(sides) -> None:
    for side, shell in sides.items():
        for kind in P.KINDS:
            if side in kind.TO:
                assert kind in shell.handlers, f"the {side} has no handler for {kind.__name__}"
        # the tables are keyed by message class: no handler for an op nobody sends
        assert set(shell.handlers) <= set(P.KINDS), shell.handlers
        assert shell.transport.handler == shell._handle


def test_a_malformed_or_unknown_message_is_logged_naming_the_sender(sides, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="clustervm.site")
    coord = sides["coordinator"]
    assert coord._handle(3, (P.DONE, 5)) is None
    assert coord._handle(2, (99, "x")) is None
    assert coord._handle(1, P.Run([]).encode()) is None      # sent to nodes only
    texts = [r.getMessage() for r in caplog.records]
    assert any(t.startswith("bad message from rank 3 (op 2, 2 fields): DONE (op 2): field "
                            "items is int, not list; dropped") for t in texts), texts
    assert any("bad message from rank 2 (op 99, 2 fields): unknown op 99" in t
               for t in texts), texts
    assert any("bad message from rank 1: rank 0 takes no RUN message" in t for t in texts), texts


def test_a_well_formed_message_reaches_its_handler(sides) -> None:
    node = sides["node"]
    # the first heartbeat answers the node's hello (work: the first task is on its way);
    # later ones are not work: idle loops stay idle
    assert node._handle(0, P.Heartbeat(0).encode()) is True
    assert node._handle(0, P.Heartbeat(0).encode()) is False
    node._handle(0, P.Cancel(12).encode())
    assert 12 in node.cancelled
    node._handle(0, P.Run([(13, 1, "mod:fn", (), {}, None)]).encode())
    assert node.queue[-1][0] == 13
    node._handle(0, P.User.make(7, 13, 2, "hi", 0, 1))
    assert node.mailbox(13).take(7, 2).data == "hi"
    node._handle(0, P.Loc([(7, 2, 0, True, None)]).encode())
    assert node.locations[7].rank == 2
    coord = sides["coordinator"]
    coord._handle(1, P.Hello("node-a", 4242).encode())
    assert coord.nodes[1].host == "node-a"
    assert (1, P.Heartbeat(0).encode()) in coord.transport.sent   # its hello is answered
    coord._handle(1, P.Req(5, "tasks", ()).encode())
    dest, reply = coord.transport.sent[-1]
    got = P.decode(reply)
    assert dest == 1 and isinstance(got, P.Reply) and got.reqid == 5 and got.ok
    coord._handle(1, P.Req(6, "no such call", ()).encode())
    got = P.decode(coord.transport.sent[-1][1])
    assert got.reqid == 6 and not got.ok


# -- the coordinator's API: one table of request names --------------------------------------

def _called_names() -> dict[str, str]:
    """Every request name the package sends literally: name -> where."""
    found: dict[str, str] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            pos = {"call": 0, "call_start": 0, "_serve": 0, "Req": 1}.get(name)
            if pos is None or len(node.args) <= pos:
                continue
            arg = node.args[pos]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found[arg.value] = f"{path.name}:{node.lineno}"
    return found


def test_request_names_are_one_table(sides) -> None:
    api = sides["coordinator"].api
    assert set(api) == set(P.REQUESTS), "protocol.REQUESTS and CoordinatorAPI._api_table differ"
    assert all(callable(h) for h in api.values())
    called = _called_names()
    assert {"locate", "checkpoint", "submit", "frozen_shadow", "notify"} <= set(called)
    unknown = {n: where for n, where in called.items() if n not in P.REQUESTS}
    assert not unknown, f"requests sent but not listed in protocol.REQUESTS: {unknown}"
