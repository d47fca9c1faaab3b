"""Flat frames (clustervm.frames.flat): a task's message without msgpack. Pure, no MPI.

A tuple of ints with one ``bytes`` or numeric array comes back as wire.loads would give
it (int-likes as ints); anything else is not made flat; a flat frame naming a dtype it
may not is a FrameError (truncated and mutated ones: tests/test_wire_fuzz.py). The real
path (every task message of every MPI test job) is covered by
tests/test_messaging_api.py and the drills.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustervm import frames as F
from clustervm import wire

SENDER = 5
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
DTYPES = ["<f8", "<f4", "<i8", ">i4", "|u1", "|b1", "<c16", "<u2"]


@st.composite
def values(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    count = int(np.prod(shape)) if shape else 1
    raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    a = np.frombuffer(raw, dtype).reshape(shape).copy()
    return a.astype(bool) if dtype.kind == "b" else a


@st.composite
def messages(draw):
    ints = draw(st.lists(INT64, min_size=1, max_size=8))
    pos = draw(st.integers(0, len(ints)))
    return tuple(ints[:pos]) + (draw(values()),) + tuple(ints[pos:]), pos


def same(got, want) -> bool:
    if isinstance(want, np.ndarray):
        return (type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
                and got.tobytes() == want.tobytes())
    return type(got) is type(want) and got == want


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_a_flat_message_comes_back_as_the_wire_gives_it(case):
    msg, pos = case
    frame = F.flat(msg, pos)
    assert frame is not None and frame[0] == F.KIND_FLAT
    assert F.flat(msg, pos) == frame      # again: an array's layout is the one remembered
    payload, bufs = wire.dumps(msg)
    by_wire = wire.loads(payload, [bytearray(b) for b in bufs])
    for _ in range(2):                    # again: read as the layout remembered
        got = F.flat_message(bytearray(frame), SENDER)
        assert len(got) == len(msg) == len(by_wire)
        assert all(same(g, w) for g, w in zip(got, by_wire))
        value = got[pos]
        if isinstance(value, np.ndarray) and value.size:
            assert value.flags.writeable      # a view of the received frame, as the wire's


def _forget_layouts() -> None:
    """Make frames.flat and flat_message remember another layout than the tests' own."""
    F.flat_message(bytearray(F.flat((1, np.zeros(3, "<i2")), 1)), SENDER)


def test_the_layout_remembered_makes_and_reads_the_same_frames():
    """A task sends the same kind of array again and again: flat and flat_message remember
    the last layout (frames._last_sent, _last_read). Frames made and read with it are the
    ones made and read without it."""
    first = (20, 1, 2, 3, np.arange(12.0).reshape(3, 4), 0, 1)
    later = (20, 1, 2, 7, np.arange(12.0).reshape(3, 4) * -2, 5, 2)
    F.flat_message(bytearray(F.flat(first, 4)), SENDER)       # remembered
    remembered = F.flat(later, 4)
    got = F.flat_message(bytearray(remembered), SENDER)
    _forget_layouts()
    assert F.flat(later, 4) == remembered
    want = F.flat_message(bytearray(remembered), SENDER)
    assert got[:4] == want[:4] == later[:4] and got[5:] == want[5:] == later[5:]
    assert same(got[4], later[4]) and same(want[4], later[4]) and got[4].flags.writeable


def test_an_array_like_the_last_but_not_contiguous_is_not_flat():
    F.flat((1, np.ones((3, 2))), 1)                            # remembered: (3, 2) float64
    assert F.flat((1, np.asfortranarray(np.ones((3, 2)))), 1) is None
    assert F.flat((1, np.ones((3, 4))[:, :2]), 1) is None


def test_a_frame_like_the_last_but_cut_or_longer_is_read_as_any_other():
    frame = bytearray(F.flat((1, np.arange(4.0)), 1))
    F.flat_message(frame, SENDER)                              # remembered
    with pytest.raises(F.FrameError, match="rank 5: flat frame's array does not fit"):
        F.flat_message(frame[:-8], SENDER)
    with pytest.raises(F.FrameError, match="rank 5: flat frame's array does not fit"):
        F.flat_message(frame + b"\0" * 8, SENDER)
    assert same(F.flat_message(frame, SENDER)[1], np.arange(4.0))
    frame = bytearray(F.flat((1, 2, b"abc"), 2))
    assert F.flat_message(frame, SENDER) == (1, 2, b"abc")   # remembered: bytes
    for cut in (20, 23):                                     # cut in the ints
        with pytest.raises(F.FrameError, match=f"rank 5: flat frame of {cut} bytes is shorter"):
            F.flat_message(frame[:cut], SENDER)
    assert F.flat_message(frame[:24], SENDER) == (1, 2, b"")


@pytest.mark.parametrize("msg, pos, why", [
    ((1, 2.5, b"x"), 2, "a float among the ints"),
    ((1, 1 << 64, b"x"), 2, "an int beyond int64"),
    ((1, "s"), 1, "a str value"),
    ((1, bytearray(b"x")), 1, "a bytearray (the wire gives bytes back)"),
    ((1, b"x" * (F.PACK_MAX + 1)), 1, "bytes beyond PACK_MAX: the wire's way"),
    ((1, np.zeros(F.PACK_MAX // 8 + 1)), 1, "an array beyond PACK_MAX: out of band"),
    ((1, np.arange(6)[::2]), 1, "not contiguous"),
    ((1, np.asfortranarray(np.ones((3, 2)))), 1, "Fortran order"),
    ((1, np.array([None, 1], dtype=object)), 1, "objects"),
    ((1, np.array(["ab"])), 1, "strings"),
    ((1, np.zeros(2, dtype=[("a", "<i4")])), 1, "a structured dtype"),
    ((1, np.float64(2.0)), 1, "a numpy scalar"),
    ((1, np.ma.masked_array([1.0])), 1, "an ndarray subclass"),
    ((b"x",), 0, "no int with it"),
    ((1, b"x"), 2, "no item there"),
])
def test_what_is_not_flat_goes_the_wires_way(msg, pos, why):
    assert F.flat(msg, pos) is None, why


def test_int_likes_travel_as_ints():
    got = F.flat_message(F.flat((np.int64(3), True, b"x"), 2), SENDER)
    assert got == (3, 1, b"x") and type(got[0]) is int and type(got[1]) is int


def test_a_flat_frame_that_names_another_dtype_is_refused():
    frame = bytearray(F.flat((1, np.zeros(2, "<f8")), 1))
    name = frame.index(b"<f8")
    frame[name:name + 3] = b"|O8"              # objects: never sent flat
    with pytest.raises(F.FrameError, match="rank 5: flat frame's array"):
        F.flat_message(frame, SENDER)
    frame[name:name + 3] = b",  "              # numpy parses it as Python: a SyntaxError
    with pytest.raises(F.FrameError, match="rank 5: flat frame's array"):
        F.flat_message(frame, SENDER)
    short = F.FLAT.pack(F.KIND_FLAT, 3, 1, 0, 0, 0) + struct.pack("<q", 1)
    with pytest.raises(F.FrameError, match="shorter than its header"):
        F.flat_message(short, SENDER)


@pytest.mark.parametrize("msg, flat_at", [
    ((20, 1, 2, 3, np.arange(5.0), 0, 9), 4),                # flat
    ((20, 1, 2, 3, {"a": [1, "b"]}, 0, 9), 4),               # inline msgpack
    ((20, 1, 2, 3, [np.ones(3), np.zeros(2, np.int8)], 0, 9), 4),   # packed, small arrays
    (("anything", 1.5), None),
])
def test_a_message_in_one_frame_comes_back_from_it(msg, flat_at):
    """What a replay log keeps of a message that went in one frame (F.one_frame) gives
    the message the receiver got (F.one_frame_message)."""
    frame = F.one_frame(msg, flat_at, False, 1 << 24)
    assert type(frame) is bytes                          # immutable: kept as it is
    got, want = F.one_frame_message(frame), wire.loads(*wire.dumps(msg))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, list):
            assert all(same(a, b) for a, b in zip(g, w))
        else:
            assert same(g, w) or (isinstance(w, dict) and g == w)


def test_a_message_too_big_for_one_frame_has_none():
    assert F.one_frame((20, np.zeros(F.PACK_MAX // 8 + 1)), 1, False, 1 << 24) is None
    assert F.one_frame((20, b"x" * (F.INLINE_MAX + 1)), None, False, 1 << 24) is None
    assert F.one_frame((20, b"x" * 100), 1, False, 64) is None       # over the limit
    with pytest.raises(F.FrameError, match="kind"):
        F.one_frame_message(b"\x03abc")
