"""Wire codec: messages are msgpack frames, numpy arrays travel out of band.

``dumps(obj)`` gives ``(payload, buffers)``: a msgpack payload, and the raw memory
of every numpy array in the message as a list of uint8 memoryviews (zero copy, in
the order the arrays were met). The transport sends each buffer as its own MPI
message; ``loads(payload, buffers)`` rebuilds the object, wrapping each received
buffer with ``np.frombuffer`` (zero copy again).

What goes through, and comes back as it went:

* None, bool, int (any size), float (nan/inf too), complex, str, bytes,
  list, tuple, dict (any sendable keys: int, tuple, ...), set, frozenset, nested
  arbitrarily (tuples and sets at most ``MAX_NESTING``, 128, levels deep: the
  decoder's C stack would overflow beyond; deeper messages are refused at both ends);
* numpy arrays of any dtype but object (numeric, bool, complex, ``U``/``S``,
  datetime64/timedelta64, structured), any shape incl. 0-d and empty; C or
  Fortran order is kept, other layouts are made C-contiguous first;
* numpy scalars (``np.float64(1.5)`` comes back as ``np.float64``).

Lossy on purpose (documented choices):

* ``bytearray`` and ``memoryview`` come back as ``bytes``;
* subclasses of the builtin types are sent as their base type: ``IntEnum`` and
  ``StrEnum`` members as their int/str value, ``namedtuple``/structseq as tuple,
  ``OrderedDict``/``defaultdict``/``Counter`` as dict, list/set subclasses as
  list/set. The class is not sent (so the receiver never needs it); values still
  compare equal. ``bool`` always stays ``bool``;
* subclasses of ``np.ndarray`` (e.g. ``np.memmap``) are sent as plain ndarrays,
  except masked arrays, which are refused (their mask would be lost).

Anything else raises :class:`WireError` naming the type and where it sits in the
message, e.g. ``cannot send object of type '_thread.lock' at [1]['model']``; the
path is also on ``err.path`` so a caller can prefix it (``args[1]['model']``).
With ``allow_pickle=True`` such objects (and object-dtype arrays) are pickled
(protocol 5; arrays inside them still go out of band). ``loads`` never unpickles
unless its own ``allow_pickle`` is true.

Ext type codes (msgpack ext, all private to clustervm)::

    1 tuple      packed list of the items
    2 set        packed list of the items
    3 frozenset  packed list of the items
    4 bigint     int beyond msgpack's 64-bit range: little-endian two's complement
    5 complex    two little-endian float64 (real, imag)
    6 ndarray    packed [descr, shape, fortran: bool, buffer index]
    7 np scalar  packed [descr, raw bytes]
    8 pickle     packed [type name, pickle bytes, first buffer index, buffer count]
    9 shared     the key (utf-8) of a ``vm.scatter`` handle (clustervm.vm.Shared)

``descr`` is ``np.lib.format.dtype_to_descr(dtype)``; it is rebuilt with
``descr_to_dtype``. Functions are not sent by value: send ``fn_ref(fn)`` (a
"module:qualname" string) and call ``resolve_ref`` on the other side.
"""
from __future__ import annotations

import ctypes
import importlib
import pickle
import struct
import sys
import threading
import weakref
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import msgpack
from msgpack import ExtType

from . import refs
from .errors import WireError
from .shared import Shared

__all__ = ["dumps", "loads", "fn_ref", "resolve_ref"]

EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_BIGINT = 4
EXT_COMPLEX = 5
EXT_NDARRAY = 6
EXT_NPSCALAR = 7
EXT_PICKLE = 8
EXT_SHARED = 9

_FIX = (
    "Send plain data (None, bool, int, float, complex, str, bytes, list, tuple, dict, "
    "set) and numpy arrays; send a function by reference (clustervm.wire.fn_ref); "
    "or opt in to pickle with CLUSTERVM_PICKLE=1 (only between trusted nodes)."
)
_FIX_PICKLING = (
    "Send plain data and numpy arrays instead, or make the object picklable "
    "(e.g. leave out locks, sockets, open files)."
)

#: Tuples and sets nest at most this deep in a message: msgpack's C unpacker takes
#: ~43 KiB of C stack per nested ext, and 195 levels overflow an 8 MiB stack (a
#: segfault, not an exception), so both ends refuse deeper messages.
MAX_NESTING = 128

# A packer that grew beyond this while packing a message is dropped.
_KEEP_PACKER_BYTES = 1 << 20
_PACKER_BUF = 4096

_modules = sys.modules
_tuple_new = tuple.__new__  # builds an ExtType without its Python-level checks
_complex = struct.Struct("<dd")
_unpackb = msgpack.unpackb


class _TooDeep(Exception):
    """Internal: tuples/sets nested deeper than MAX_NESTING."""


class _Unsendable(Exception):
    """Internal: raised inside the default hook, turned into WireError by dumps."""

    def __init__(self, obj: Any, reason: str, fix: str = _FIX) -> None:
        super().__init__(reason)
        self.obj = obj
        self.reason = reason
        self.fix = fix


# ---------------------------------------------------------------------------
# Encoding.
#
# msgpack calls _Encoder.default for every object it cannot pack itself. Ext
# payloads must be bytes, so containers (tuple, set) are packed by a nested
# packer. A Packer is not re-entrant, and creating one (256 KiB buffer) inside
# another costs an mmap, so each thread keeps an _Encoder with a free list of
# Packers bound to it: a nested pack takes one from the list and puts it back.
# A re-entrant dumps on the same thread (from a __reduce__ or a finalizer) gets
# a fresh encoder, so the per-call state (buffers, allow_pickle) is never shared.


def _bigint(obj: int) -> ExtType:
    data = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
    return _tuple_new(ExtType, (EXT_BIGINT, data))


def _type_name(obj: Any) -> str:
    t = type(obj)
    mod = getattr(t, "__module__", None)
    name = getattr(t, "__qualname__", t.__name__)
    return name if mod in (None, "builtins") else f"{mod}.{name}"


_descr_cache: dict[Any, Any] = {}


def _descr(dtype: Any) -> Any:
    """np.lib.format descr of dtype; ValueError if it does not survive the round trip."""
    try:
        return _descr_cache[dtype]
    except (KeyError, TypeError):
        pass
    from numpy.lib import format as npformat

    try:
        descr = npformat.dtype_to_descr(dtype)
        ok = npformat.descr_to_dtype(descr) == dtype
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"dtype {dtype} has no portable description: {exc}") from exc
    if not ok:
        raise ValueError(f"dtype {dtype} has no portable description")
    if len(_descr_cache) < 1024:
        _descr_cache[dtype] = descr
    return descr


#: (dtype, shape) -> the msgpack of an array record [descr, shape, False, index] but its
#: index: a C-contiguous array of a shape and dtype sent before skips the checks
_array_prefix: dict[tuple[Any, tuple[int, ...]], bytes] = {}
_FIXINT = [bytes([i]) for i in range(128)]


class _Encoder:
    __slots__ = ("free", "buffers", "allow_pickle", "busy", "depth")

    def __init__(self) -> None:
        self.free: list[msgpack.Packer] = []
        self.buffers: list[memoryview] = []
        self.allow_pickle = False
        self.busy = False
        self.depth = 0   # nested packs under way (reset by dumps; not restored on errors)

    def new_packer(self) -> msgpack.Packer:
        return msgpack.Packer(
            default=self.default, strict_types=True, use_bin_type=True, buf_size=_PACKER_BUF
        )

    def pack(self, obj: Any) -> bytes:
        if self.depth >= MAX_NESTING:
            raise _TooDeep
        self.depth += 1
        free = self.free
        packer = free.pop() if free else self.new_packer()
        data = packer.pack(obj)
        self.depth -= 1
        # On an exception the packer is simply dropped. One that grew big is
        # dropped too, so a thread does not keep a huge buffer after a huge message.
        if len(data) <= _KEEP_PACKER_BYTES:
            free.append(packer)
        return data

    def default(self, obj: Any) -> Any:
        t = type(obj)
        if t is tuple:  # the common case, self.pack inlined
            if self.depth >= MAX_NESTING:
                raise _TooDeep
            self.depth += 1
            free = self.free
            packer = free.pop() if free else self.new_packer()
            data = packer.pack(list(obj))
            self.depth -= 1
            if len(data) <= _KEEP_PACKER_BYTES:
                free.append(packer)
            return _tuple_new(ExtType, (EXT_TUPLE, data))
        if t is int:  # msgpack only hands us ints beyond its 64-bit range
            return _bigint(obj)
        if t is set:
            return _tuple_new(ExtType, (EXT_SET, self.pack(list(obj))))
        if t is frozenset:
            return _tuple_new(ExtType, (EXT_FROZENSET, self.pack(list(obj))))
        if t is complex:
            return _tuple_new(ExtType, (EXT_COMPLEX, _complex.pack(obj.real, obj.imag)))
        np = _modules.get("numpy")
        if np is not None and isinstance(obj, (np.ndarray, np.generic)):
            return self.numpy(obj, np)
        # Subclasses of builtin types: sent as their base type (see module docstring).
        # The base-class methods are called directly so overrides cannot interfere.
        if isinstance(obj, int):
            value = int.__int__(obj)
            return value if -(1 << 63) <= value < (1 << 64) else _bigint(value)
        if isinstance(obj, float):
            return float.__float__(obj)
        if isinstance(obj, str):
            return str.__str__(obj)
        if isinstance(obj, (bytes, bytearray)):
            return bytes(memoryview(obj))
        if isinstance(obj, tuple):
            return _tuple_new(ExtType, (EXT_TUPLE, self.pack(list(obj))))
        if isinstance(obj, list):
            return list.copy(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, frozenset):
            return _tuple_new(ExtType, (EXT_FROZENSET, self.pack(list(obj))))
        if isinstance(obj, set):
            return _tuple_new(ExtType, (EXT_SET, self.pack(list(obj))))
        if isinstance(obj, complex):
            return _tuple_new(ExtType, (EXT_COMPLEX, _complex.pack(obj.real, obj.imag)))
        if t is Shared:   # a vm.scatter handle
            return _tuple_new(ExtType, (EXT_SHARED, obj.key.encode()))
        if callable(obj) and hasattr(obj, "__qualname__"):
            reason = "functions and classes are not sent by value: send fn_ref(f), then resolve_ref"
        else:
            reason = "msgpack cannot carry it"
        return self.pickled(obj, reason)

    def numpy(self, obj: Any, np: Any) -> Any:
        if type(obj) is np.ndarray:     # the common case: a shape and dtype seen before
            prefix = _array_prefix.get((obj.dtype, obj.shape))
            if prefix is not None and obj.flags.c_contiguous:
                buffers = self.buffers
                index = len(buffers)
                if index < 128:          # a msgpack positive fixint: one byte
                    buffers.append(memoryview(obj).cast("B"))
                    return _tuple_new(ExtType, (EXT_NDARRAY, prefix + _FIXINT[index]))
        if isinstance(obj, np.generic):
            dtype = obj.dtype
            if dtype.hasobject:
                return self.pickled(obj, f"numpy scalar of dtype {dtype} holds Python objects")
            try:
                descr = _descr(dtype)
            except ValueError as exc:
                return self.pickled(obj, str(exc))
            return _tuple_new(ExtType, (EXT_NPSCALAR, self.pack([descr, obj.tobytes()])))
        if type(obj) is not np.ndarray:
            if isinstance(obj, np.ma.MaskedArray):
                return self.pickled(
                    obj, "masked arrays are not sent (the mask would be lost): send .data and .mask"
                )
            obj = obj.view(np.ndarray)  # np.memmap and other subclasses: a plain array
        dtype = obj.dtype
        if dtype.hasobject:
            return self.pickled(
                obj, f"arrays of dtype {dtype} hold Python objects and have no out-of-band form "
                "(convert it to a numeric or fixed-width string dtype)"
            )
        try:
            descr = _descr(dtype)
        except ValueError as exc:
            return self.pickled(obj, str(exc))
        flags = obj.flags
        if flags.c_contiguous:
            fortran = False
        elif flags.f_contiguous:
            fortran = True
        else:
            obj = np.ascontiguousarray(obj)
            fortran = False
        if obj.nbytes:
            raw = memoryview(obj.reshape(-1, order="F" if fortran else "C").view(np.uint8))
        else:
            raw = memoryview(b"")
        buffers = self.buffers
        buffers.append(raw)
        index = len(buffers) - 1
        record = self.pack([descr, list(obj.shape), fortran, index])
        if (not fortran and index < 128 and obj.nbytes and type(obj) is np.ndarray
                and obj.dtype.isnative and len(_array_prefix) < 1024):
            try:
                memoryview(obj).cast("B")   # the fast path's view (not every dtype has one)
            except (ValueError, TypeError):
                pass
            else:     # the record but its index (a one-byte fixint: the last byte)
                _array_prefix[(obj.dtype, obj.shape)] = record[:-1]
        return _tuple_new(ExtType, (EXT_NDARRAY, record))

    def pickled(self, obj: Any, reason: str) -> ExtType:
        if not self.allow_pickle:
            raise _Unsendable(obj, reason)
        buffers = self.buffers
        first = len(buffers)

        def out_of_band(pb: pickle.PickleBuffer) -> bool:
            try:
                buffers.append(pb.raw())
            except BufferError:  # not contiguous: keep it inside the pickle
                return True
            return False

        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
        except Exception as exc:  # noqa: BLE001 - any pickling failure is reported
            del buffers[first:]
            reason = f"pickle failed: {type(exc).__name__}: {exc}"
            raise _Unsendable(obj, reason, _FIX_PICKLING) from exc
        record = self.pack([_type_name(obj), data, first, len(buffers) - first])
        return _tuple_new(ExtType, (EXT_PICKLE, record))


_tls = threading.local()
_FIXEXT = {1: b"\xd4\x01", 2: b"\xd5\x01", 4: b"\xd6\x01", 8: b"\xd7\x01", 16: b"\xd8\x01"}
_EXT8, _EXT16, _EXT32 = struct.Struct(">BBb"), struct.Struct(">BHb"), struct.Struct(">BIb")


#: the headers of the EXT_TUPLE exts shorter than 256 bytes, by size
_SHORT_HEADERS = [_FIXEXT.get(n) or _EXT8.pack(0xC7, n, EXT_TUPLE) for n in range(0x100)]


def _tuple_header(size: int) -> bytes:
    """The msgpack header of an EXT_TUPLE ext of ``size`` bytes (as msgpack packs one)."""
    if size < 0x100:
        return _SHORT_HEADERS[size]
    if size < 0x10000:
        return _EXT16.pack(0xC8, size, EXT_TUPLE)
    return _EXT32.pack(0xC9, size, EXT_TUPLE)


def dumps(obj: Any, *, allow_pickle: bool = False) -> tuple[bytes, list[memoryview]]:
    """Encode obj: a msgpack payload plus the out-of-band buffers of its numpy arrays (in order).

    The buffers are zero-copy uint8 views of the arrays' memory: do not modify the
    arrays until they are sent. Raises WireError for an object that cannot be sent
    (its type and path in the message are in the error; ``err.path`` holds the path).
    With allow_pickle=True such objects are pickled instead.
    """
    try:
        enc = _tls.encoder
    except AttributeError:
        enc = _tls.encoder = _Encoder()
    if enc.busy:
        enc = _Encoder()  # re-entrant call on this thread
    enc.busy = True
    enc.depth = 0
    enc.buffers = buffers = []
    enc.allow_pickle = allow_pickle
    try:
        if type(obj) is tuple:   # every protocol message: its ext made here, not in a callback
            enc.depth = 1        # (as deep as inside pack)
            free = enc.free
            packer = free.pop() if free else enc.new_packer()
            data = packer.pack(list(obj))
            if len(data) <= _KEEP_PACKER_BYTES:
                free.append(packer)
            size = len(data)        # the bytes of packing ExtType(EXT_TUPLE, data):
            payload = (_SHORT_HEADERS[size] if size < 0x100 else _tuple_header(size)) + data
        else:
            payload = enc.pack(obj)
    except _Unsendable as exc:
        raise _wire_error(obj, exc) from None
    except _TooDeep:
        raise WireError(
            f"cannot send message: it contains a reference cycle, or tuples and sets in it "
            f"nest more than {MAX_NESTING} levels deep (the receiver could not decode it); "
            "break the cycle, or flatten the data"
        ) from None
    except RecursionError:
        raise WireError(
            "cannot send message: it is nested too deeply or contains a reference cycle"
        ) from None
    except (ValueError, OverflowError, TypeError) as exc:
        if "recursion limit" in str(exc):
            msg = "cannot send message: it is nested too deeply or contains a reference cycle"
        else:
            msg = f"cannot send message: {type(exc).__name__}: {exc}"
        raise WireError(msg) from exc
    finally:
        enc.busy = False
        enc.buffers = []
    return payload, buffers


_FRAMES = struct.Struct("<I")


def packed_size(frames: Sequence[Any]) -> int:
    """The size of :func:`pack_frames`'s blob of ``frames``."""
    return _FRAMES.size + 8 * len(frames) + sum(memoryview(f).nbytes for f in frames)


def pack_frames(frames: Sequence[Any], into: Any = None, mutable: bool = False) -> Any:
    """Join a payload and its buffers (what :func:`dumps` gives) into one blob: one
    MPI message instead of one per array (a checkpoint holds many small ones).

    ``into``: a blob made here before (``mutable``) to fill again, if its memory holds
    the size needed (then a view of its memory is returned); ``mutable``:
    else make the blob a new uint8 numpy array (bytes otherwise), which can be filled
    again later. Copying 200 MB into memory already touched takes a fifth of the time
    it takes into new memory (page faults), measured here; numpy allocates and copies
    without holding the GIL. A mutable blob is placed in its memory so that its
    largest buffer lands at the same offset in a page as the array it copies (see
    :func:`blob_memory`)."""
    views = [memoryview(f).cast("B") for f in frames]
    head = _FRAMES.pack(len(views)) + struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
    size = len(head) + sum(v.nbytes for v in views)
    if into is not None and len(into) != size:
        into = _resized(into, size)
    if into is None:
        if not mutable:
            return b"".join([head, *views])
        into = blob_memory(size)
    into = _page_matched(into, head, views)
    out = memoryview(into)
    out[:len(head)] = head
    off = len(head)
    for v in views:
        n = v.nbytes
        if n >= _BIG_COPY:      # numpy copies without the GIL: heartbeats go on meanwhile
            import numpy as np
            np.copyto(np.frombuffer(out[off:off + n], np.uint8), np.frombuffer(v, np.uint8))
        else:
            out[off:off + n] = v
        off += n
    return into


_PAGE = 4096
#: a buffer from this size on is worth placing (a 266 KB one: 129 us 8 bytes further into
#: its page, 44 us at the same offset)
_MATCH_MIN = 64 * 1024


#: the memory blob_memory made, by id (a view may move within it, and within nothing else)
_blob_bases: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def blob_memory(size: int) -> Any:
    """Memory for a mutable blob of ``size`` bytes: a uint8 array viewing a page more
    than it needs, so that :func:`pack_frames` can move the view. A copy whose target
    lies a few bytes to a few hundred bytes further into its page than its source
    runs 3-4x slower here (200 MB: 19 ms at the same offset, 73-90 ms 8 or 64 bytes
    further; 4K aliasing of the loads on the stores). A big one has 1/16 more room,
    so that the next blob, a little larger (a checkpoint whose messages differ), fits
    in it too: new memory costs its page faults (180-250 ms for 200 MB here)."""
    import numpy as np
    spare = size // 16 if size >= _BIG_COPY else 0
    base = np.empty(size + spare + _PAGE, np.uint8)
    _blob_bases[id(base)] = base
    return base[:size]


def _resized(blob: Any, size: int) -> Any:
    """A view of ``size`` bytes of the memory of ``blob`` (from :func:`blob_memory`), or
    None if it is not blob_memory's or too small (a page of room is kept for
    :func:`_page_matched`)."""
    base = getattr(blob, "base", None)
    if base is None or _blob_bases.get(id(base)) is not base or len(base) < size + _PAGE:
        return None
    return base[:size]


def _page_matched(blob: Any, head: bytes, views: list[memoryview]) -> Any:
    """``blob`` moved within its memory (from :func:`blob_memory`) so that the largest
    of ``views`` is copied to the same offset in a page as it comes from; ``blob``
    itself if its memory is not blob_memory's (a copy received from a buddy, say) or
    no buffer is big."""
    base = getattr(blob, "base", None)
    if base is None or _blob_bases.get(id(base)) is not base or not views:
        return blob
    shift = (page_offset(views) - _address(base)) % _PAGE
    return base[shift:shift + len(blob)]


def _address(buf: Any) -> int:
    """The address of the first byte of contiguous buffer ``buf`` (ctypes: 0.2 us, where
    numpy's ``.ctypes`` takes 1.3; page_offset in a group checkpoint: 13 -> 9 us)."""
    view = memoryview(buf)
    if not view.readonly:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    import numpy as np
    return np.frombuffer(view.cast("B"), np.uint8).__array_interface__["data"][0]


def page_offset(frames: Sequence[Any]) -> int:
    """Where in a page a :func:`pack_frames` blob of ``frames`` best starts: its largest
    buffer is then copied to the same offset in a page as it comes from (0 if no buffer
    is big enough to matter)."""
    views = [memoryview(f).cast("B") for f in frames]
    if not views:
        return 0
    i = max(range(len(views)), key=lambda k: views[k].nbytes)
    if views[i].nbytes < _MATCH_MIN:
        return 0
    off = _FRAMES.size + 8 * len(views) + sum(v.nbytes for v in views[:i])
    return (_address(views[i]) - off) % _PAGE


_BIG_COPY = 1 << 20


#: blobs from this size on travel as a uint8 array (out of band), not inside the payload
BLOB_OUT_OF_BAND = 64 * 1024


def as_blob_frame(blob: bytes) -> Any:
    """``blob`` as a message field: a large one as a read-only uint8 numpy array over it, so
    it leaves as its own MPI message instead of being copied into the msgpack payload (a
    200 MB checkpoint would be copied twice); the receiver gets a uint8 array."""
    if len(blob) < BLOB_OUT_OF_BAND:
        return blob
    import numpy as np
    return np.frombuffer(blob, np.uint8)


def unpack_frames(blob: Any) -> list[memoryview]:
    """The frames of a :func:`pack_frames` blob, as views into it (no copy)."""
    view = memoryview(blob).cast("B")
    try:
        (n,) = _FRAMES.unpack_from(view)
        sizes = struct.unpack_from(f"<{n}Q", view, _FRAMES.size)
    except struct.error:
        raise WireError("a packed frame blob is truncated") from None
    off = _FRAMES.size + 8 * n
    if off + sum(sizes) != view.nbytes:
        raise WireError(f"a packed frame blob holds {view.nbytes} bytes, its table says "
                        f"{off + sum(sizes)}")
    out = []
    for size in sizes:
        out.append(view[off:off + size])
        off += size
    return out


def _wire_error(root: Any, exc: _Unsendable) -> WireError:
    bad = exc.obj
    path = _find_path(root, bad)
    where = "the top level of the message" if path == "" else (path or "somewhere in the message")
    err = WireError(
        f"cannot send object of type {_type_name(bad)!r} at {where}: {exc.reason}. {exc.fix}"
    )
    err.path = path  # type: ignore[attr-defined]
    return err


def _find_path(root: Any, bad: Any) -> str | None:
    """Path of bad inside root, like "[1]['model']", in msgpack's packing order.

    Only called on the error path. None if not found.
    """
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> str | None:
        if obj is bad:
            return path
        if depth > 1000 or id(obj) in seen:
            return None
        if isinstance(obj, (list, tuple)):
            seen.add(id(obj))
            for i, item in enumerate(obj):
                found = walk(item, f"{path}[{i}]", depth + 1)
                if found is not None:
                    return found
        elif isinstance(obj, dict):
            seen.add(id(obj))
            for key, value in dict.items(obj):
                if key is bad:
                    return f"{path} (a dict key)" if path else "(a dict key)"
                found = walk(key, f"{path}<key {_short_repr(key)}>", depth + 1)
                if found is None:
                    found = walk(value, f"{path}[{_short_repr(key)}]", depth + 1)
                if found is not None:
                    return found
        elif isinstance(obj, (set, frozenset)):
            seen.add(id(obj))
            for item in obj:
                found = walk(item, f"{path}{{*}}", depth + 1)
                if found is not None:
                    return found
        return None

    return walk(root, "", 0)


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001
        text = f"<{_type_name(obj)}>"
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------
# Decoding.

_dtype_cache: dict[str, Any] = {}


def _dtype(descr: Any) -> Any:
    if type(descr) is str:
        dt = _dtype_cache.get(descr)
        if dt is not None:
            return dt
    from numpy.lib import format as npformat

    dt = npformat.descr_to_dtype(descr)
    if type(descr) is str and len(_dtype_cache) < 1024:
        _dtype_cache[descr] = dt
    return dt


#: an array record seen before -> (dtype, shape, index, bytes): a C-ordered array of it
#: is made without decoding the record again (the receiving side of _array_prefix)
_record_cache: dict[bytes, tuple[Any, tuple[int, ...], int, int]] = {}


def _dec_ndarray(data: bytes, buffers: Sequence, hook: Any) -> Any:
    import numpy as np

    known = _record_cache.get(data)
    if known is not None:
        dtype, shape, index, nbytes = known
        try:
            buf = buffers[index]
            if memoryview(buf).nbytes == nbytes:
                return np.ndarray(shape, dtype, buffer=buf)
        except (IndexError, TypeError, ValueError):
            pass                # a buffer that does not fit: the checks below say how
    descr, shape, fortran, index = _unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)
    dtype = _dtype(descr)
    try:
        buf = buffers[index]
    except (IndexError, TypeError):
        raise WireError(
            f"message refers to out-of-band buffer {index} but only {len(buffers)} "
            "buffer(s) were given to loads"
        ) from None
    order = "F" if fortran else "C"
    count = 1
    for n in shape:
        count *= n
    if count == 0 or dtype.itemsize == 0:
        return np.zeros(shape, dtype=dtype, order=order)
    try:
        flat = np.frombuffer(buf, dtype=dtype)
    except ValueError as exc:
        raise WireError(f"out-of-band buffer {index} does not fit dtype {dtype}: {exc}") from None
    if flat.size != count:
        raise WireError(
            f"out-of-band buffer {index} holds {flat.size} item(s) of {dtype} "
            f"but the array has shape {tuple(shape)}"
        )
    if (not fortran and type(index) is int and len(_record_cache) < 1024
            and all(type(n) is int for n in shape)):
        _record_cache[bytes(data)] = (dtype, tuple(shape), index, count * dtype.itemsize)
    return flat.reshape(shape, order=order)


def _dec_npscalar(data: bytes, hook: Any) -> Any:
    import numpy as np

    descr, raw = _unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)
    return np.ndarray((), dtype=_dtype(descr), buffer=raw)[()]


def _dec_pickle(data: bytes, buffers: Sequence, allow_pickle: bool, hook: Any) -> Any:
    type_name, blob, first, count = _unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)
    if not allow_pickle:
        raise WireError(
            f"the sender pickled an object of type {type_name!r} (it runs with "
            "CLUSTERVM_PICKLE=1), but this side does not accept pickle: unpickling can run "
            "arbitrary code. Set CLUSTERVM_PICKLE=1 here too if every node is trusted "
            "(loads(..., allow_pickle=True)), or send plain data and numpy arrays instead."
        )
    try:
        return pickle.loads(blob, buffers=list(buffers[first : first + count]))
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported
        raise WireError(
            f"cannot unpickle the object of type {type_name!r} the sender pickled: "
            f"{type(exc).__name__}: {exc}; its module must be importable on every node"
        ) from exc


def loads(
    payload: bytes | memoryview | bytearray, buffers: Sequence = (), *, allow_pickle: bool = False
) -> Any:
    """Decode what dumps produced; buffers are writable or read-only bytes-like objects, same order as dumps gave them.

    Arrays wrap their buffer without a copy: they are writable if it is (e.g. a
    bytearray), read-only otherwise. bytearray/memoryview values come back as
    bytes. A pickled object is refused with WireError unless allow_pickle is true.
    """

    depth = 0   # nested unpacks under way (msgpack's C unpacker recurses through hook)

    def hook(code: int, data: bytes) -> Any:
        nonlocal depth
        if code == EXT_TUPLE:     # every protocol message is one: first
            if depth >= MAX_NESTING:
                raise WireError(f"malformed message: nested more than {MAX_NESTING} levels deep")
            depth += 1
            value: Any = tuple(_unpackb(data, ext_hook=hook, raw=False, strict_map_key=False))
            depth -= 1
            return value
        if code == EXT_BIGINT:
            return int.from_bytes(data, "little", signed=True)
        if code == EXT_COMPLEX:
            return complex(*_complex.unpack(data))
        if code == EXT_SHARED:
            return Shared(bytes(data).decode())
        if depth >= MAX_NESTING:
            raise WireError(f"malformed message: nested more than {MAX_NESTING} levels deep")
        depth += 1
        if code == EXT_NDARRAY:
            value = _dec_ndarray(data, buffers, hook)
        elif code == EXT_NPSCALAR:
            value = _dec_npscalar(data, hook)
        elif code == EXT_SET:
            value = set(_unpackb(data, ext_hook=hook, raw=False, strict_map_key=False))
        elif code == EXT_FROZENSET:
            value = frozenset(_unpackb(data, ext_hook=hook, raw=False, strict_map_key=False))
        elif code == EXT_PICKLE:
            value = _dec_pickle(data, buffers, allow_pickle, hook)
        else:
            raise WireError(f"unknown ext type {code} in message (sender runs another clustervm?)")
        depth -= 1
        return value

    try:
        return _unpackb(payload, ext_hook=hook, raw=False, strict_map_key=False, use_list=True)
    except WireError:
        raise
    except RecursionError:
        raise WireError("malformed message: it is nested too deeply to decode") from None
    except Exception as exc:  # noqa: BLE001 - bytes from the wire: any failure is malformed input
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise WireError(f"malformed message: {detail}") from exc
    finally:
        # hook refers to itself (through its closure cell), and so to ``buffers``: a
        # reference cycle that kept every received buffer alive until the cyclic GC ran,
        # so each large message got fresh memory (page faults: ~2 ms per 8 MiB)
        del hook


# ---------------------------------------------------------------------------
# Functions by reference.


def fn_ref(fn: Any, *, allow_pickle: bool | None = None) -> str:
    """Return "module:qualname" naming a module-level function (or class, staticmethod,
    classmethod), or a compound reference (clustervm.refs) for ``functools.partial``,
    a method bound to an instance and a callable instance, which carry their data.

    Raises WireError for lambdas and nested functions/closures (the receiver could
    not import them), and for a compound whose data the wire cannot carry (unless
    ``allow_pickle``; None: as the job's ``--pickle``).
    """
    if refs.is_compound(fn):
        return refs.compound_ref(fn, allow_pickle)
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, (type, ModuleType)):
        raise WireError(
            f"cannot send {fn!r} by reference: it is a method bound to an instance of "
            f"{_type_name(owner)!r}; send a module-level function and pass the data "
            "it needs as arguments"
        )
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise WireError(
            f"cannot send object of type {_type_name(fn)!r} by reference: it has no "
            "module-level name (__module__/__qualname__); wrap it in a function defined "
            "with def at module level"
        )
    if "<lambda>" in qualname:
        raise WireError(
            f"cannot send lambda {module}:{qualname} by reference: a lambda has no importable "
            "name; define the function with def at module level"
        )
    if "<locals>" in qualname:
        raise WireError(
            f"cannot send {module}:{qualname} by reference: it is defined inside another "
            "function (a closure or nested function) and cannot be imported; move it to "
            "module level and pass what it captured as arguments"
        )
    ref = f"{module}:{qualname}"
    target: Any = _modules.get(module)
    try:
        for part in qualname.split("."):
            target = getattr(target, part)
    except AttributeError:
        target = None
    if target is not fn and target != fn:
        raise WireError(
            f"cannot send {fn!r} by reference: {ref} does not name it (was it redefined, or "
            "decorated without functools.wraps?); the receiver must find it by that name"
        )
    return ref


def resolve_ref(ref: str) -> Any:
    """Import the module of a "module:qualname" ref and return the object it names
    (for a compound reference, a callable that rebuilds it: see clustervm.refs)."""
    if ref.startswith("~"):
        return refs.resolve_compound(ref)
    module, sep, qualname = ref.partition(":")
    if not sep or not module or not qualname:
        raise WireError(f"bad function reference {ref!r}: expected 'module:qualname'")
    try:
        target = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise WireError(
            f"cannot resolve function reference {ref!r}: importing module {module!r} failed "
            f"({type(exc).__name__}: {exc}); the module must be importable on every node"
        ) from exc
    try:
        for part in qualname.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise WireError(
            f"cannot resolve function reference {ref!r}: module {module!r} has no "
            f"{qualname!r}; the module must be importable on every node, in the same version"
        ) from None
    return target


def relabel(exc: WireError, prefix: str, label: str) -> WireError:
    """``exc`` with the path the user wrote: ``prefix`` (where the value sits in the
    protocol message, e.g. ``"[4]"``) replaced by ``label`` (e.g. ``"result"``).

    ``cannot send ... at [4]['lock']`` becomes ``cannot send ... at result['lock']``.
    An error whose path does not start with ``prefix`` comes back unchanged.
    """
    path = getattr(exc, "path", None)
    if path is None or not path.startswith(prefix):
        return exc
    inner = path[len(prefix):]
    where = "the top level of the message" if path == "" else path
    err = WireError(str(exc).replace(f" at {where}:", f" at {label}{inner}:", 1))
    err.path = f"{label}{inner}"  # type: ignore[attr-defined]
    return err


_PLAIN = (int, float, str, bytes, bool, type(None))


def check_sendable(obj: Any, label: str, *, allow_pickle: bool = False) -> None:
    """Raise WireError if ``obj`` cannot be sent, with its path prefixed by ``label``.

    Cheap for plain scalars and flat tuples of them (the common task arguments).
    """
    if isinstance(obj, _PLAIN) or (type(obj) in (tuple, list)
                                   and all(isinstance(x, _PLAIN) for x in obj)):
        return
    if type(obj) is dict and not obj:
        return
    try:
        dumps(obj, allow_pickle=allow_pickle)
    except WireError as exc:
        path = getattr(exc, "path", None)
        text = str(exc)
        if path is not None:
            where = "the top level of the message" if path == "" else path
            text = text.replace(f" at {where}:", f" at {label}{path}:", 1)
        err = WireError(text)
        err.path = f"{label}{path or ''}"  # type: ignore[attr-defined]
        raise err from None


refs.wire = sys.modules[__name__]   # compound references are encoded with this codec
