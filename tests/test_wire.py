"""Tests of clustervm.wire, the msgpack + out-of-band numpy codec (no MPI)."""
from __future__ import annotations

import collections
import enum
import math
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from clustervm import wire
from clustervm.errors import WireError


def rt(obj, **kw):
    payload, buffers = wire.dumps(obj, **kw)
    assert isinstance(payload, bytes)
    assert all(isinstance(b, memoryview) for b in buffers)
    return wire.loads(payload, buffers, **kw)


def same(a, b):
    """Equal, and of the same types all the way down."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


# --------------------------------------------------------------------------- plain data

SCALARS = [
    None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1,
    2**100, -(2**200), 10**400, 0.0, -0.0, 1.5, math.inf, -math.inf, 1e308, 5e-324,
    1 + 2j, complex(math.inf, -0.5), "", "x", "héllo ✓", "a" * 100_000, b"", b"\x00\xff",
]


@pytest.mark.parametrize("value", SCALARS, ids=lambda v: repr(v)[:30])
def test_scalar_round_trip(value):
    same(rt(value), value)


def test_nan():
    assert math.isnan(rt(math.nan))


def test_bool_stays_bool():
    out = rt([True, False, 1, 0, (True,), {True: False}])
    same(out, [True, False, 1, 0, (True,), {True: False}])


def test_big_ints_keep_sign_and_value():
    for v in [2**64, 2**100, -(2**64), -(2**200), 2**1000 + 12345, -(2**63) - 1, 2**127 - 1]:
        out = rt(v)
        assert type(out) is int and out == v


def test_bytearray_and_memoryview_come_back_as_bytes():
    same(rt(bytearray(b"abc")), b"abc")
    same(rt(memoryview(b"xyz")), b"xyz")


def test_containers_round_trip():
    obj = {
        "list": [1, [2, [3, []]]],
        "tuple": (1, (2, (3, ())), ()),
        "set": {1, 2, "x", (3, 4)},
        "frozenset": frozenset({1, frozenset({2})}),
        "empty": [(), [], {}, set(), frozenset()],
        1: "int key",
        (1, "a"): "tuple key",
        None: "none key",
        2.5: "float key",
        b"k": "bytes key",
        frozenset({1}): "frozenset key",
    }
    out = rt(obj)
    same(out, obj)
    assert type(out["set"]) is set and out["set"] == obj["set"]
    assert type(out["frozenset"]) is frozenset and out["frozenset"] == obj["frozenset"]
    assert out[(1, "a")] == "tuple key"


def test_deeply_nested():
    obj: object = 0
    for i in range(100):
        obj = [obj, (i, {"k": obj})] if i % 10 == 0 else (i, [obj])
    same(rt(obj), obj)


def test_tuple_stays_tuple_and_list_stays_list():
    out = rt(([1, (2,)], (3, [4])))
    same(out, ([1, (2,)], (3, [4])))


def test_typical_message():
    msg = (3, 17, 5, 42, (1, 2.5, "x"))
    payload, buffers = wire.dumps(msg)
    assert buffers == []
    same(wire.loads(payload), msg)


def test_loads_accepts_memoryview_and_bytearray_payload():
    payload, _ = wire.dumps({"a": (1, 2)})
    assert wire.loads(memoryview(payload)) == {"a": (1, 2)}
    assert wire.loads(bytearray(payload)) == {"a": (1, 2)}


# --------------------------------------------------------------------------- subclasses


class Color(enum.IntEnum):
    RED = 1


class Big(enum.IntEnum):
    HUGE = 2**70


class Name(str, enum.Enum):
    ALICE = "alice"


Point = collections.namedtuple("Point", "x y")


def test_subclasses_are_sent_as_their_base_type():
    out = rt([Color.RED, Big.HUGE, Name.ALICE, Point(1, (2,)),
              collections.OrderedDict(a=(1,)), collections.defaultdict(list, b=[2]),
              collections.Counter("aab")])
    same(out, [1, 2**70, "alice", (1, (2,)), {"a": (1,)}, {"b": [2]}, {"a": 2, "b": 1}])


def test_class_is_not_needed_by_receiver():
    class MyList(list):
        pass

    class MyStr(str):
        def __str__(self):
            return "overridden"

    same(rt([MyList([1, 2]), MyStr("real")]), [[1, 2], "real"])


# --------------------------------------------------------------------------- numpy

DTYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "bool",
    "U5", "S3", "datetime64[ns]", "timedelta64[s]", ">i4", "<f8",
    [("a", "<i4"), ("b", "<f8")],
    [("a", "u1"), ("b", ">i8", (2, 3)), ("c", [("d", "U2")])],
]


def sample(dtype, shape=(4, 3)):
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "U":
        return np.array((["ab", "ü✓", "", "hello"] * n)[:n], dtype=dt).reshape(shape)
    if dt.kind == "b":
        return (np.arange(n) % 3 == 0).reshape(shape)
    if dt.kind in "fc":
        return (np.arange(n) * 1.25 - 3).astype(dt).reshape(shape)
    # ints, bytes, datetimes, structured: arbitrary bytes
    raw = (np.arange(n * dt.itemsize) * 37 % 251).astype(np.uint8)
    return raw.view(dt).reshape(shape)


def check_array(a, b):
    assert type(b) is np.ndarray
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_array_dtypes(dtype):
    a = sample(dtype)
    payload, buffers = wire.dumps(a)
    assert len(buffers) == 1 and buffers[0].nbytes == a.nbytes
    check_array(a, wire.loads(payload, buffers))


def test_structured_field_access():
    a = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])
    a["a"] = [1, 2, 3]
    a["b"] = [0.5, 1.5, 2.5]
    out = rt(a)
    check_array(a, out)
    assert out["b"].tolist() == [0.5, 1.5, 2.5]


def test_padded_aligned_structured_dtype():
    dt = np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 8],
                   "itemsize": 24})
    a = np.zeros(4, dtype=dt)
    a["b"] = [1, 2, 3, 4]
    out = rt(a)
    assert out.dtype == dt and out["b"].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (3, 0, 2), (1,), (5,), (2, 3, 4)])
def test_array_shapes(shape):
    a = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    out = rt(a)
    check_array(a, out)


@pytest.mark.parametrize("make", [
    lambda: np.arange(12.0).reshape(3, 4),
    lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    lambda: np.arange(12.0).reshape(3, 4)[:, ::2].copy(),
    lambda: np.arange(12, dtype=">f8").reshape(3, 4),
    lambda: np.zeros(4, [("a", "<i4"), ("b", "<f8")]),
    lambda: np.array(2.5),
], ids=["c", "fortran", "strided-copy", "big-endian", "structured", "0-d"])
def test_an_array_of_a_shape_and_dtype_seen_before_comes_back_the_same(make):
    """The second array of a (dtype, shape) takes the encoder's fast path; one of the same
    shape but other layout or byte order must not be mistaken for it."""
    first, again = make(), make()
    for a in (first, again, np.arange(12.0).reshape(3, 4), np.zeros((3, 4), order="F")):
        back = rt((1, a))[1]
        assert back.dtype == a.dtype and back.shape == a.shape
        assert back.tobytes(order="A") == a.tobytes(order="A")
        if a.flags.f_contiguous and not a.flags.c_contiguous:
            assert back.flags.f_contiguous and not back.flags.c_contiguous


def test_a_known_array_record_with_a_buffer_of_the_wrong_size_is_refused():
    payload, bufs = wire.dumps((1, np.arange(4.0)))
    rt((1, np.arange(4.0)))               # the record is known from now on
    with pytest.raises(WireError, match="holds 5 item"):
        wire.loads(payload, [bytearray(40)])


def test_more_than_128_arrays_of_one_shape_in_one_message():
    arrays = [np.full(3, i, dtype=np.int32) for i in range(300)]
    back = rt(arrays)
    assert [b.tolist() for b in back] == [[i] * 3 for i in range(300)]


def test_zero_d_array_stays_array():
    out = rt(np.array(7, dtype=np.int16))
    assert type(out) is np.ndarray and out.shape == () and out.dtype == np.int16 and out == 7


def test_fortran_order_kept():
    a = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    assert not a.flags.c_contiguous
    payload, buffers = wire.dumps(a)
    assert buffers[0].tobytes() == a.tobytes(order="F")  # memory order, zero copy
    out = wire.loads(payload, buffers)
    check_array(a, out)
    assert out.flags.f_contiguous and not out.flags.c_contiguous


def test_non_contiguous_slices():
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    for a in [base[::2, ::3], base[:, 1], base.T[::2], base[1:4, 2:5], base[::-1]]:
        out = rt(a)
        check_array(a, out)
        assert out.flags.c_contiguous or out.flags.f_contiguous
    cube = np.arange(24).reshape(2, 3, 4).transpose(1, 0, 2)
    check_array(cube, rt(cube))


def test_large_array_is_out_of_band_and_zero_copy():
    a = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    payload, buffers = wire.dumps({"data": a, "tag": 7})
    assert len(payload) < 100
    assert len(buffers) == 1 and buffers[0].nbytes == a.nbytes == 8 << 20
    assert buffers[0].format == "B" and buffers[0].contiguous
    # zero copy on the way out: the buffer is the array's memory
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.uint8), a)
    received = bytearray(buffers[0])  # what the transport would hand to loads
    out = wire.loads(payload, [received])
    check_array(a, out["data"])
    # zero copy on the way in: the array wraps the received buffer
    assert np.shares_memory(out["data"], np.frombuffer(received, dtype=np.uint8))


def test_arrays_in_order_and_writability():
    a, b, c = np.arange(3), np.ones((2, 2), dtype=np.float32), np.array([b"x"], dtype="S1")
    payload, buffers = wire.dumps([a, {"b": b}, (c, a)])
    assert len(buffers) == 4
    writable = [bytearray(buf) for buf in buffers]
    out = wire.loads(payload, writable)
    check_array(a, out[0])
    check_array(b, out[1]["b"])
    check_array(c, out[2][0])
    check_array(a, out[2][1])
    assert out[0].flags.writeable
    out[0][0] = 99  # must not raise
    readonly = [bytes(buf) for buf in buffers]
    out = wire.loads(payload, readonly)
    check_array(a, out[0])
    assert not out[0].flags.writeable


def test_read_only_source_array():
    a = np.arange(5)
    a.flags.writeable = False
    check_array(a, rt(a))


def test_memmap_sent_as_plain_array(tmp_path):
    m = np.memmap(tmp_path / "m.bin", dtype=np.int32, mode="w+", shape=(4,))
    m[:] = [1, 2, 3, 4]
    out = rt(m)
    assert type(out) is np.ndarray and out.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "value",
    [np.float64(1.5), np.float32(-2.25), np.float16(3), np.int32(3), np.int64(-(2**62)),
     np.uint64(2**64 - 1), np.int8(-5), np.bool_(True), np.complex128(1 - 2j),
     np.str_("hé"), np.bytes_(b"ab"), np.datetime64("2024-01-02T03:04:05", "ns"),
     np.timedelta64(5, "s")],
    ids=lambda v: f"{type(v).__name__}({v})",
)
def test_numpy_scalars(value):
    out = rt(value)
    assert type(out) is type(value)
    assert out.dtype == value.dtype
    assert out == value


def test_numpy_scalar_nan_and_dict_key():
    assert np.isnan(rt(np.float32("nan")))
    out = rt({np.int64(3): "three"})
    (key,) = out
    assert type(key) is np.int64 and key == 3


def test_object_array_rejected_and_pickled_on_opt_in():
    a = np.array([1, "x", None], dtype=object)
    with pytest.raises(WireError, match=r"object.*\[1\]\['arr'\]|\[1\]\['arr'\].*object"):
        wire.dumps((0, {"arr": a}))
    out = rt(a, allow_pickle=True)
    assert out.dtype == object and out.tolist() == [1, "x", None]


def test_masked_array_rejected():
    with pytest.raises(WireError, match="mask"):
        wire.dumps(np.ma.masked_array([1, 2], mask=[0, 1]))


def test_import_does_not_import_numpy():
    code = (
        "import sys; import clustervm.wire as w; "
        "p, b = w.dumps((1, {'a': [2.5, 'x']}, {3}, 2**100)); w.loads(p, b); "
        "assert 'numpy' not in sys.modules, 'numpy imported'"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_buffer_count_checked():
    payload, buffers = wire.dumps(np.arange(4))
    with pytest.raises(WireError, match="buffer 0"):
        wire.loads(payload, [])
    with pytest.raises(WireError, match="buffer 0"):
        wire.loads(payload, [b"\x00" * 8])


# --------------------------------------------------------------------------- errors


def test_unsendable_object_names_type_and_path():
    lock = threading.Lock()
    with pytest.raises(WireError) as info:
        wire.dumps(("f", [1, {"model": lock}], {}))
    msg = str(info.value)
    assert "lock" in msg
    assert "[1][1]['model']" in msg
    assert info.value.path == "[1][1]['model']"
    assert "CLUSTERVM_PICKLE=1" in msg and "fn_ref" in msg
    assert isinstance(info.value, TypeError)


def test_path_like_args():
    args = (1, {"model": threading.Lock()})
    with pytest.raises(WireError, match=r"at \[1\]\['model'\]"):
        wire.dumps(args)


def test_path_of_top_level_set_member_and_dict_key():
    with pytest.raises(WireError, match="top level"):
        wire.dumps(object())

    class Key:
        pass

    k = Key()
    with pytest.raises(WireError, match=r"Key.*\['d'\] \(a dict key\)"):
        wire.dumps({"d": {k: 1}})
    with pytest.raises(WireError, match=r"Key.*\[0\]\{\*\}"):
        wire.dumps([{k}])


def test_function_by_value_rejected_with_hint():
    with pytest.raises(WireError, match="fn_ref"):
        wire.dumps({"f": len})


def test_cycle_rejected():
    a: list = []
    a.append((a,))
    with pytest.raises(WireError, match="cycle"):
        wire.dumps(a)


def test_encoder_still_works_after_errors():
    for _ in range(3):
        with pytest.raises(WireError):
            wire.dumps((1, (2, object())))
    same(rt((1, (2, 3))), (1, (2, 3)))


def test_malformed_payload():
    with pytest.raises(WireError):
        wire.loads(b"\xc1")
    with pytest.raises(WireError, match="unknown ext"):
        wire.loads(b"\xd4\x63\x00")  # fixext1 with code 99


# --------------------------------------------------------------------------- pickle


class Custom:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Custom and other.x == self.x


def test_pickle_opt_in():
    obj = {"c": Custom((1, np.arange(3)))}
    with pytest.raises(WireError, match="Custom"):
        wire.dumps(obj)
    payload, buffers = wire.dumps(obj, allow_pickle=True)
    with pytest.raises(WireError, match="pickled.*Custom.*CLUSTERVM_PICKLE=1"):
        wire.loads(payload, buffers)
    out = wire.loads(payload, buffers, allow_pickle=True)
    assert out["c"].x[0] == 1
    np.testing.assert_array_equal(out["c"].x[1], np.arange(3))


def test_pickle_keeps_large_arrays_out_of_band():
    obj = Custom(np.zeros(1 << 20))
    payload, buffers = wire.dumps([obj], allow_pickle=True)
    assert len(payload) < 1000
    assert sum(b.nbytes for b in buffers) == 8 << 20
    out = wire.loads(payload, buffers, allow_pickle=True)
    assert out[0].x.shape == (1 << 20,)


def test_pickle_failure_reported():
    with pytest.raises(WireError, match=r"lock.*\[0\].*pickle failed"):
        wire.dumps([threading.Lock()], allow_pickle=True)


def test_nothing_is_unpickled_without_opt_in(monkeypatch):
    payload, buffers = wire.dumps(Custom(1), allow_pickle=True)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(WireError):
        wire.loads(payload, buffers)


# --------------------------------------------------------------------------- threads


def test_threads_encode_concurrently():
    errors = []

    def work(i):
        try:
            for j in range(2000):
                msg = (i, j, (i, "x" * (j % 7)), {"a": [i, (j,)]}, np.full(3, i))
                out = rt(msg)
                assert out[:4] == msg[:4] and out[4].tolist() == [i, i, i]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_reentrant_dumps_from_reduce():
    class Reentrant:
        def __reduce__(self):
            inner = wire.dumps((1, np.arange(2)))
            return (tuple, ((len(inner[0]),),))

    payload, buffers = wire.dumps([(0,), Reentrant(), np.arange(3)], allow_pickle=True)
    assert len(buffers) == 1  # the inner call's buffers did not leak into this message
    out = wire.loads(payload, buffers, allow_pickle=True)
    assert out[0] == (0,) and out[2].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- fn_ref


def module_level(x):
    return x + 1


class Holder:
    def method(self):
        return 1

    @classmethod
    def cm(cls):
        return 2

    @staticmethod
    def sm():
        return 3


def test_fn_ref_round_trip():
    for fn in [module_level, Holder.cm, Holder.sm, Holder.method, Holder, len, math.sqrt]:
        ref = wire.fn_ref(fn)
        assert ":" in ref
        assert wire.resolve_ref(ref) == fn
    assert wire.fn_ref(module_level) == f"{__name__}:module_level"
    assert wire.fn_ref(math.sqrt) == "math:sqrt"


def test_fn_ref_lambda():
    with pytest.raises(WireError, match="lambda"):
        wire.fn_ref(lambda x: x)


def test_fn_ref_closure():
    def inner():
        return 1

    with pytest.raises(WireError, match="inside another function"):
        wire.fn_ref(inner)


def test_fn_ref_bound_method():
    # issue 15: methods bound to instances the wire can carry travel (instance as data)
    assert wire.resolve_ref(wire.fn_ref(Holder().method))() == 1
    assert wire.resolve_ref(wire.fn_ref([1, 2, 2].count))(2) == 2
    held = Holder()
    held.lock = threading.Lock()
    with pytest.raises(WireError, match=r"attributes of the Holder instance.*_thread.lock.*\['lock'\]"):
        wire.fn_ref(held.method, allow_pickle=False)


def test_fn_ref_callable_instance():
    import functools

    # issue 15: a partial of a named function travels with its bound arguments
    assert wire.resolve_ref(wire.fn_ref(functools.partial(module_level, 1)))() == \
        module_level(1)
    with pytest.raises(WireError, match="lambda"):
        wire.fn_ref(functools.partial(lambda x: x, 1), allow_pickle=False)


def test_fn_ref_main_module_allowed(monkeypatch):
    import types

    main = types.ModuleType("__main__")

    def job():
        return 5

    job.__module__ = "__main__"
    job.__qualname__ = "job"
    main.job = job
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert wire.fn_ref(job) == "__main__:job"
    assert wire.resolve_ref("__main__:job") is job


def test_resolve_ref_errors():
    with pytest.raises(WireError, match="importable on every node"):
        wire.resolve_ref("no_such_module_xyz:f")
    with pytest.raises(WireError, match="math:nope.*importable on every node"):
        wire.resolve_ref("math:nope")
    with pytest.raises(WireError, match="module:qualname"):
        wire.resolve_ref("justaname")


def test_pack_frames_round_trip_and_truncation():
    arr = np.arange(1000, dtype=np.float64)
    head, bufs = wire.dumps({"state": arr, "log": [np.ones(3), b"x" * 10]})
    blob = wire.pack_frames([head, *bufs])
    frames = wire.unpack_frames(blob)
    back = wire.loads(frames[0], frames[1:])
    assert np.array_equal(back["state"], arr) and back["log"][1] == b"x" * 10
    with pytest.raises(WireError, match="truncated|holds"):
        wire.unpack_frames(blob[:-1])
    with pytest.raises(WireError, match="truncated"):
        wire.unpack_frames(b"\x01")


def test_mutable_blob_puts_its_largest_buffer_at_its_sources_page_offset():
    # a copy to a few bytes further into a page than its source runs 3-4x slower here
    big = np.arange(300_000, dtype=np.float64)[1:]       # a view: 8 bytes into its page
    head, bufs = wire.dumps({"small": np.ones(3), "big": big, "n": 7})
    frames = [head, *bufs]

    def where_big(blob):
        sizes = [memoryview(f).cast("B").nbytes for f in frames]
        i = sizes.index(big.nbytes)
        off = 4 + 8 * len(frames) + sum(sizes[:i])
        return blob.ctypes.data + off

    blob = wire.pack_frames(frames, mutable=True)
    assert where_big(blob) % 4096 == big.ctypes.data % 4096
    again = wire.pack_frames(frames, into=blob, mutable=True)   # filled again, same memory
    assert again.base is blob.base and where_big(again) % 4096 == big.ctypes.data % 4096
    back = wire.unpack_frames(again)
    out = wire.loads(back[0], back[1:])
    assert np.array_equal(out["big"], big) and out["n"] == 7
    plain = np.zeros(len(blob), np.uint8)      # memory without room to move: used as it is
    assert wire.pack_frames(frames, into=plain, mutable=True) is plain
    received = np.zeros(len(blob) + 3 * 4096, np.uint8)   # part of a bigger buffer (a
    inside = received[100:100 + len(blob)]                # copy from a buddy): kept in place
    assert wire.pack_frames(frames, into=inside, mutable=True) is inside
    assert not received[:100].any() and not received[100 + len(blob):].any()
    back = wire.unpack_frames(plain)
    assert np.array_equal(wire.loads(back[0], back[1:])["big"], big)


# --------------------------------------------------------------------------- issue 11


def test_nesting_deeper_than_the_decoder_takes_is_refused_at_both_ends():
    obj: object = 0
    for _ in range(wire.MAX_NESTING + 5):
        obj = (obj,)
    with pytest.raises(WireError, match="nest more than 128 levels"):
        wire.dumps(obj)
    # a hand-made message nested 5000 deep: msgpack's C unpacker would overflow the C
    # stack (a segfault) at ~195; the decoder stops at MAX_NESTING instead
    import msgpack
    data = msgpack.packb([1])
    for _ in range(5000):
        data = msgpack.packb([msgpack.ExtType(wire.EXT_TUPLE, data)])
    with pytest.raises(WireError, match="nested more than 128 levels"):
        wire.loads(data)
    ok: object = 0
    for _ in range(wire.MAX_NESTING - 2):
        ok = (ok,)
    same(rt(ok), ok)


def test_relabel_names_the_path_the_user_wrote():
    with pytest.raises(WireError) as info:
        wire.dumps((2, [(5, True, {"lock": threading.Lock()})]))
    err = wire.relabel(info.value, "[1][0][2]", "result")
    assert "at result['lock']:" in str(err) and "[1][0][2]" not in str(err)
    assert err.path == "result['lock']"
    with pytest.raises(WireError) as info:
        wire.dumps((3, 7, 0, True, threading.Lock()))
    err = wire.relabel(info.value, "[4]", "result")
    assert "at result:" in str(err) and err.path == "result"
    assert wire.relabel(err, "[9]", "x") is err          # another path: unchanged


def test_loads_never_raises_anything_but_wire_error_on_garbage():
    for data in [b"\xc1", b"\xd4\x06\x00", b"\xc7\x05\x01abcde", b"\x91\xd5\x05\x00\x00"]:
        with pytest.raises(WireError, match="malformed message|unknown ext"):
            wire.loads(data)
