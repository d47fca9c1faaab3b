"""Copies of message values (clustervm.values.snapshot): what the replay log keeps, a
task on the same node receives and a group's value is, made the wire's way."""
from __future__ import annotations

import numpy as np

from clustervm.values import approx_size, sized_snapshot, snapshot


class Point:
    """Not msgpack-able: the copy falls back to deepcopy."""

    def __init__(self, x: list) -> None:
        self.x = x


def test_a_container_is_copied_as_a_receiver_over_the_wire_gets_it():
    rows = np.arange(6.0).reshape(2, 3)
    data = {"a": [1, 2, 3], "t": (1, "x"), "s": {4}, "rows": rows, "raw": bytearray(b"ab")}
    copy, nbytes = sized_snapshot(data)
    data["a"].append(4)
    rows[0, 0] = 99.0                   # the array inside: copied, not a view
    data["raw"][0] = ord("z")
    assert copy["a"] == [1, 2, 3] and copy["t"] == (1, "x") and copy["s"] == {4}
    assert copy["rows"][0, 0] == 0.0 and copy["rows"].shape == (2, 3)
    assert copy["raw"] == b"ab" and type(copy["raw"]) is bytes     # as the wire delivers
    assert nbytes >= rows.nbytes


def test_immutable_values_and_arrays_keep_their_own_form():
    for value in (b"abc", "abc", 7, 2.5, None):
        assert sized_snapshot(value)[0] is value
    assert sized_snapshot(b"abc")[1] == 3
    a = np.ones(4)
    copy, nbytes = sized_snapshot(a)
    a[0] = 5.0
    assert copy[0] == 1.0 and nbytes == a.nbytes


def test_what_only_pickle_carries_is_deep_copied():
    p = Point([1, 2])
    copy = snapshot({"p": p})
    p.x.append(3)
    assert isinstance(copy["p"], Point) and copy["p"].x == [1, 2]
    assert sized_snapshot([p])[1] == approx_size([p])
