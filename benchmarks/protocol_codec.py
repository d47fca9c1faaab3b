"""The cost of typed messages: build + encode, decode + dispatch, per message, in ns.

    python benchmarks/protocol_codec.py [--number 200000] [--repeat 5]

For each hot message kind, side by side in the same process:

* ``old``: the bare tuples the code used before clustervm.protocol had classes
  (a tuple literal on the send side; ``handlers[msg[0]]`` and tuple unpacking on
  the receive side), kept here as the baseline;
* ``new``: what the code does now: ``Kind(...).encode()`` (``User.make`` for USER)
  on the send side; ``protocol.decode`` (op, length and field types checked),
  ``handlers[type(msg)]`` and attribute reads on the receive side;
* ``wire``: ``wire.dumps`` + ``wire.loads`` of the same tuple, the codec's cost
  that every message pays anyway (for scale; MPI comes on top).

Prints one line per kind:
``codec kind=<K> old_ns=<send>+<recv> new_ns=<send>+<recv> extra_ns=<new-old> wire_ns=<w>``
(best of ``--repeat`` runs of ``--number`` messages each). No MPI is used.
"""
from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustervm import protocol as P  # noqa: E402
from clustervm import wire  # noqa: E402

SINK: list = [None]


def sink(*fields: Any) -> None:
    """What a handler does with the fields (the same in both paths)."""
    SINK[0] = fields


# -- the baseline: bare tuples, dispatch on msg[0] --------------------------------------

def old_user(src: int, msg: tuple) -> None:
    _, s, dst, tag, data, inc, seq = msg
    sink(s, dst, tag, data, inc, seq)


def old_req(src: int, msg: tuple) -> None:
    _, reqid, name, args = msg
    sink(reqid, name, args)


def old_reply(src: int, msg: tuple) -> None:
    _, reqid, ok, value = msg
    sink(reqid, ok, value)


def old_items(src: int, msg: tuple) -> None:
    sink(msg[1])


def old_heartbeat(src: int, msg: tuple) -> bool:
    return False


OLD_HANDLERS: dict[int, Callable[[int, Any], Any]] = {
    P.USER: old_user, P.REQ: old_req, P.REPLY: old_reply, P.DONE: old_items,
    P.RUN: old_items, P.HEARTBEAT: old_heartbeat,
}


def old_handle(src: int, msg: Any) -> Any:
    """Site._handle before typed messages."""
    handler = OLD_HANDLERS.get(msg[0])
    if handler is None:
        return None
    return handler(src, msg)


# -- now: typed messages, dispatch on the decoded class ----------------------------------

def new_user(src: int, m: P.User) -> None:
    sink(m.src, m.dst, m.tag, m.data, m.inc, m.seq)


def new_req(src: int, m: P.Req) -> None:
    sink(m.reqid, m.name, m.args)


def new_reply(src: int, m: P.Reply) -> None:
    sink(m.reqid, m.ok, m.value)


def new_items(src: int, m: Any) -> None:
    sink(m.items)


def new_heartbeat(src: int, m: P.Heartbeat) -> bool:
    return False


NEW_HANDLERS: dict[type, Callable[[int, Any], Any]] = {
    P.User: new_user, P.Req: new_req, P.Reply: new_reply, P.Done: new_items,
    P.Run: new_items, P.Heartbeat: new_heartbeat,
}


def new_handle(src: int, raw: Any) -> Any:
    """Site._handle now (the log line of its error path left out)."""
    try:
        msg = P.decode(raw)
    except P.MessageError:
        return None
    handler = NEW_HANDLERS.get(type(msg))
    if handler is None:
        return None
    return handler(src, msg)


DONE_ITEMS = [(100 + i, True, i) for i in range(8)]
RUN_ITEMS = [(100 + i, 1, "mod:fn", (i,), {}, None) for i in range(8)]

#: kind -> (old send, new send): each builds the tuple that travels
CASES: dict[str, tuple[Callable[[], tuple], Callable[[], tuple]]] = {
    "USER": (lambda: (P.USER, 7, 8, 1, "x", 0, 42),
             lambda: P.User.make(7, 8, 1, "x", 0, 42)),
    "REQ": (lambda: (P.REQ, 9, "locate", (8, False)),
            lambda: P.Req(9, "locate", (8, False)).encode()),
    "REPLY": (lambda: (P.REPLY, 9, True, (2, 0, False)),
              lambda: P.Reply(9, True, (2, 0, False)).encode()),
    "DONE/8": (lambda: (P.DONE, DONE_ITEMS), lambda: P.Done(DONE_ITEMS).encode()),
    "RUN/8": (lambda: (P.RUN, RUN_ITEMS), lambda: P.Run(RUN_ITEMS).encode()),
    "HEARTBEAT": (lambda: (P.HEARTBEAT, 3), lambda: P.Heartbeat(3).encode()),
}


def best(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """ns per call, best of ``repeat`` runs."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    for kind, (old_send, new_send) in CASES.items():
        msg = old_send()
        assert new_send() == msg, kind                     # the same tuple travels
        assert old_handle(1, msg) == new_handle(1, msg)    # and is handled alike
        os_ = best(old_send, a.number, a.repeat)
        or_ = best(lambda: old_handle(1, msg), a.number, a.repeat)
        ns = best(new_send, a.number, a.repeat)
        nr = best(lambda: new_handle(1, msg), a.number, a.repeat)
        w = best(lambda: wire.loads(*wire.dumps(msg)), a.number // 10, a.repeat)
        print(f"codec kind={kind} old_ns={os_:.0f}+{or_:.0f} new_ns={ns:.0f}+{nr:.0f} "
              f"extra_ns={ns + nr - os_ - or_:.0f} wire_ns={w:.0f}", flush=True)


if __name__ == "__main__":
    main()
