"""The frames of a message on the wire: their layout, how they are built, and the
checks a received one passes (pure: no MPI; clustervm.transport moves them).

A message is any wire-encodable object. On the wire it is one MPI message on
``TAG_MSG`` (a one-byte kind, then the msgpack payload) followed, when the
message holds numpy arrays or a large payload, by one MPI message per buffer
on a tag of its own (so frames of two threads never interleave). A message
whose arrays are small (``PACK_MAX`` bytes in all) is *packed*: its arrays are
copied into its one frame, 8-byte aligned. One MPI message instead of two or
more, and the sender need not wait for the arrays to be out: the frame is its
copy (a tracked send waited on the receiver whenever MPI held the array back,
which halved heat2d's speed). A bigger message with several small arrays sends
them *bundled*, copied into one part (8-aligned), its big arrays each in their
own, without a copy: 2000 halo rows were 2000 MPI messages.

Any size: MPI counts are 32-bit (this Open MPI has no MPI-4 large-count ``_c``
calls, so a send of 2 GiB or more fails with ``MPI_ERR_ARG``). A buffer larger
than ``max_chunk`` (CLUSTERVM_MAX_CHUNK_BYTES, 16 MiB by default) travels as
several MPI messages on its tag, in order; a first frame larger than that (a
routed frame with big arrays inside) is announced by a small *long* frame
(kind, size, tag) and follows in chunks on that tag. The receiver takes the
parts as they come, whatever chunk size the sender used.

A tuple of ints with one ``bytes`` or numeric numpy array in it (up to ``PACK_MAX``
bytes) may travel *flat*: its value's shape and dtype in a fixed header, the ints as
int64, then the value's bytes; msgpack is not used on either side. A task's message
to another is one (``Site.send_user``: the data is the one item that is not an int):
a heat2d halo row's send and receive, each after a Jacobi step as in the job, took
18.3-18.6 us through msgpack and a packed frame, 14.6-14.7 flat (``msgcost.py --cold``).
:func:`flat` builds it (None for any other tuple), :func:`flat_message` gives the
tuple back.

Malformed input: :func:`parse_frame` checks a frame's layout and the sizes it
claims before anything is allocated for its buffers, and raises :class:`FrameError`
naming the sender (the transport logs it and drops the frame).
"""
from __future__ import annotations

import struct
import sys
from operator import itemgetter
from typing import Any, Callable, Iterable, NamedTuple

from . import wire
from .errors import WireError

__all__ = ["Frame", "FrameError", "parse_frame", "packed", "packed_parts", "unbundled",
           "padded", "aligned", "split", "flat", "flat_message", "one_frame",
           "one_frame_message", "whole_frame"]

TAG_BUF0 = 1 << 16
TAG_BUF_SPAN = 1 << 24
INLINE_MAX = 1 << 16       # payloads above this go out of band, like arrays
KIND_INLINE = 0
KIND_BUFFERS = 1
KIND_ROUTED = 2
KIND_LONG = 3
KIND_PACKED = 4
KIND_BUNDLED = 5
KIND_FLAT = 6
PACK_MAX = 1 << 16         # messages with arrays up to this size (in all) travel packed
BUNDLE_MAX = 64 << 20      # a bigger message's small arrays are copied up to this size
PREFIX = struct.Struct("<BIi")  # kind, number of buffers, buffer tag
ROUTE = struct.Struct("<BiiI")  # kind, sender, final destination, number of buffers
LONG = struct.Struct("<BQi")    # kind, size of the frame that follows in chunks, their tag
PACKED = struct.Struct("<B3xI")  # kind, number of buffers; then sizes, buffers, payload
PACKED1 = struct.Struct("<B3xIQQ")  # the same with one buffer: its size, the payload's
#: kind, number of items, the value's place among them, its type (0 bytes, 1 array), its
#: number of dimensions and the length of its dtype's name; then the shape (int64), the
#: dtype's name (8-aligned), the other items (int64), the value's bytes
FLAT = struct.Struct("<6B2x")
_FLAT_KINDS = "biufc"      # numpy arrays sent flat: bool, integers, floats, complex


class FrameError(WireError):
    """A frame from another rank is malformed or too big to take (``rank`` sent it)."""

    def __init__(self, rank: int, reason: str, tag: int = 0) -> None:
        super().__init__(f"bad frame from rank {rank}: {reason}")
        self.rank = rank
        #: the tag its parts come on, when the frame named a valid one (they are dropped)
        self.tag = tag


class Frame(NamedTuple):
    """A parsed first frame (what :func:`parse_frame` gives)."""

    kind: int
    #: tag of the parts that follow it on the wire (0: none)
    tag: int
    #: sizes of the parts that follow (out-of-band buffers; the whole frame for a long one)
    sizes: tuple[int, ...]
    #: the msgpack payload carried inline, or None when it is the first part
    payload: memoryview | None
    #: buffers carried inline (routed frames)
    bufs: list[memoryview]
    origin: int = -1    # routed: the rank that sent it
    dest: int = -1      # routed: the rank it is for
    #: bundled: each buffer's size, and whether it is in the bundle (the first part)
    layout: tuple[tuple[int, bool], ...] = ()


def valid_tag(tag: int) -> bool:
    return TAG_BUF0 <= tag < TAG_BUF0 + TAG_BUF_SPAN


def parse_frame(frame: Any, src: int, limit: int, *, nested: bool = False) -> Frame:
    """Check and split a first frame received from rank ``src`` (no MPI, no allocation).

    ``limit`` bounds the bytes the frame may announce; ``nested``: the frame came
    inside a long one (which may not nest). Raises :class:`FrameError`.
    """
    view = memoryview(frame).cast("B")
    size = view.nbytes
    if size == 0:
        raise FrameError(src, "empty frame")
    kind = view[0]
    if kind == KIND_INLINE:
        return Frame(kind, 0, (), view[1:], [])
    if kind == KIND_BUFFERS or kind == KIND_BUNDLED:
        if size < PREFIX.size + 1:
            raise FrameError(src, f"buffer frame of {size} bytes is shorter than its header")
        _, nbuf, tag = PREFIX.unpack_from(view)
        off = PREFIX.size + 1
        oob_payload = view[PREFIX.size]
        table = (9 if kind == KIND_BUNDLED else 8) * nbuf
        if table > size - off:
            raise FrameError(src, f"buffer frame announces {nbuf} buffers but holds "
                                  f"{size} bytes")
        if not valid_tag(tag):
            raise FrameError(src, f"buffer frame names tag {tag}, outside the buffer tags")
        if oob_payload not in (0, 1) or (oob_payload and nbuf == 0):
            raise FrameError(src, f"buffer frame has a bad payload flag {oob_payload}")
        sizes = struct.unpack_from(f"<{nbuf}Q", view, off)
        off += 8 * nbuf
        total = sum(sizes)
        if total > limit:
            raise FrameError(src, f"frame announces {total} bytes of buffers, more than the "
                                  f"{limit} bytes this rank takes in one message", tag)
        layout: tuple[tuple[int, bool], ...] = ()
        if kind == KIND_BUNDLED:
            flags = bytes(view[off:off + nbuf])
            off += nbuf
            if flags.count(1) < 2 or flags.count(0) + flags.count(1) != nbuf:
                raise FrameError(src, "bundled frame with a bad table of what is bundled", tag)
            layout = tuple((n, f == 1) for n, f in zip(sizes, flags))
            sizes = (sum(aligned(n) for n, inb in layout if inb),
                     *(n for n, inb in layout if not inb))
        if oob_payload and off != size:
            raise FrameError(src, "buffer frame has both an inline and an out-of-band payload")
        return Frame(kind, tag, sizes, None if oob_payload else view[off:], [], layout=layout)
    if kind == KIND_ROUTED:
        if size < ROUTE.size:
            raise FrameError(src, f"routed frame of {size} bytes is shorter than its header")
        _, origin, dest, nbuf = ROUTE.unpack_from(view)
        off = ROUTE.size
        if 8 * (nbuf + 1) > size - off:
            raise FrameError(src, f"routed frame announces {nbuf} buffers but holds "
                                  f"{size} bytes")
        if origin < 0 or dest < 0:
            raise FrameError(src, f"routed frame from rank {origin} to rank {dest}")
        sizes = struct.unpack_from(f"<{nbuf + 1}Q", view, off)
        off += 8 * (nbuf + 1)
        if off + sum(sizes) != size:
            raise FrameError(src, f"routed frame holds {size} bytes, its table says "
                                  f"{off + sum(sizes)}")
        bufs = []
        for n in sizes:
            bufs.append(view[off:off + n])
            off += n
        payload = bufs.pop(0)
        return Frame(kind, 0, (), payload, bufs, origin, dest)
    if kind == KIND_PACKED:
        return _parse_packed(view, src)
    if kind == KIND_LONG:
        if nested:
            raise FrameError(src, "a long frame inside a long frame")
        if size != LONG.size:
            raise FrameError(src, f"long frame of {size} bytes, not {LONG.size}")
        _, total, tag = LONG.unpack_from(view)
        if not valid_tag(tag):
            raise FrameError(src, f"long frame names tag {tag}, outside the buffer tags")
        if total == 0 or total > limit:
            raise FrameError(src, f"long frame announces {total} bytes (this rank takes "
                                  f"1 to {limit} bytes in one message)", tag)
        return Frame(kind, tag, (total,), None, [])
    raise FrameError(src, f"unknown frame kind {kind} (does the sender run another clustervm?)")


def _parse_packed(view: memoryview, src: int) -> Frame:
    payload, bufs = packed_parts(view, src)
    return Frame(KIND_PACKED, 0, (), payload, bufs)


def packed_parts(frame: Any, src: int) -> tuple[memoryview, list[memoryview]]:
    """The payload and the buffers of a packed frame (views). Raises FrameError."""
    view = memoryview(frame)
    size = view.nbytes
    if size >= PACKED1.size and view[4] == 1 and not view[5] and not view[6] and not view[7]:
        _, _, n, n_payload = PACKED1.unpack_from(view)    # one array: the common case
        end = PACKED1.size + n
        if end <= size and aligned(end) + n_payload == size:
            return view[aligned(end):], [view[PACKED1.size:end]]
    if size < PACKED.size:
        raise FrameError(src, f"packed frame of {size} bytes is shorter than its header")
    _, nbuf = PACKED.unpack_from(view)
    off = PACKED.size
    if 8 * (nbuf + 1) > size - off:
        raise FrameError(src, f"packed frame announces {nbuf} buffers but holds {size} bytes")
    *sizes, n_payload = struct.unpack_from(f"<{nbuf + 1}Q", view, off)
    off += 8 * (nbuf + 1)
    bufs = []
    for n in sizes:
        if n > size - off:
            raise FrameError(src, f"packed frame of {size} bytes: its buffer of {n} bytes "
                                  "does not fit")
        bufs.append(view[off:off + n])
        off += aligned(n)
    if off + n_payload != size:
        raise FrameError(src, f"packed frame holds {size} bytes, its table says "
                              f"{off + n_payload}")
    return view[off:], bufs


def unbundled(layout: tuple[tuple[int, bool], ...], parts: list[Any]) -> list[Any]:
    """The buffers of a bundled frame: views into its bundle (the first part), and the
    parts after it."""
    bundle = memoryview(parts[0]).cast("B")
    rest = iter(parts[1:])
    out: list[Any] = []
    off = 0
    for n, inb in layout:
        if inb:
            out.append(bundle[off:off + n])
            off += aligned(n)
        else:
            out.append(next(rest))
    return out


def aligned(n: int) -> int:
    return (n + 7) & ~7


def packed(payload: bytes, bufs: list[memoryview], total: int) -> bytes:
    """One frame holding ``payload`` and (copies of) ``bufs``, each buffer 8-aligned."""
    n = len(bufs)
    if n == 1:
        return b"".join((PACKED1.pack(KIND_PACKED, 1, total, len(payload)), bufs[0],
                         _PAD[-total & 7], payload))
    return b"".join([PACKED.pack(KIND_PACKED, n),
                     struct.pack(f"<{n + 1}Q", *(b.nbytes for b in bufs), len(payload)),
                     *padded(bufs), payload])


def padded(bufs: Iterable[memoryview]) -> list[Any]:
    """``bufs``, each followed by the zero bytes that align the next to 8 (to be joined)."""
    parts: list[Any] = []
    for b in bufs:
        parts.append(b)
        pad = -b.nbytes & 7
        if pad:
            parts.append(_PAD[pad])
    return parts


_PAD = [b"\0" * i for i in range(8)]


def split(buf: Any, limit: int) -> list[memoryview]:
    """``buf`` as consecutive byte views of at most ``limit`` bytes (one view if it fits)."""
    view = memoryview(buf).cast("B")
    size = view.nbytes
    if size <= limit:
        return [view]
    return [view[i:i + limit] for i in range(0, size, limit)]


#: (number of items, the value's place) -> a bytes value's header, the other items'
#: struct and their getter
_flat_plans: dict[int, tuple[bytes, struct.Struct, Callable[[tuple], tuple]]] = {}
#: (dtype, shape, number of items, the value's place) -> an array's header
_flat_arrays: dict[tuple, bytes] = {}
#: an array's header after FLAT, as received -> numpy, its dtype, shape and size
_flat_layouts: dict[bytes, tuple[Any, Any, tuple[int, ...], int]] = {}
_ints = [struct.Struct(f"<{n}q") for n in range(256)]
_PLANS_MAX = 1024


def _flat_plan(n: int, pos: int) -> tuple[bytes, struct.Struct, Callable[[tuple], tuple]]:
    plan = (FLAT.pack(KIND_FLAT, n, pos, 0, 0, 0), _ints[n - 1],
            itemgetter(*(i for i in range(n) if i != pos)) if n > 2
            else lambda msg: (msg[1 - pos],))
    if len(_flat_plans) < _PLANS_MAX:
        _flat_plans[n << 8 | pos] = plan
    return plan


def _array_head(value: Any, n: int, pos: int) -> bytes:
    name = value.dtype.str.encode()
    head = b"".join((FLAT.pack(KIND_FLAT, n, pos, 1, value.ndim, len(name)),
                     _ints[value.ndim].pack(*value.shape), name, _PAD[-len(name) & 7]))
    if len(_flat_arrays) < _PLANS_MAX:
        _flat_arrays[value.dtype, value.shape, n << 8 | pos] = head
    return head


#: the array layout :func:`flat` last made a header for: (numpy.ndarray, its dtype, shape,
#: number of items << 8 | the value's place, the header, the other items' struct and
#: getter). A task sends the same kind of array again and again (heat2d's rows): such a
#: frame is made without hashing a dtype, and the array is joined as it is (bytes.join
#: takes a C-contiguous array, and refuses any other with TypeError): a halo row's frame
#: right after a Jacobi step 3.3 -> 2.4 us, warm 1.1 -> 0.8 us (scratch timings, one
#: process). A tuple, replaced whole: threads read it without a lock.
_last_sent: tuple = (None, None, None, -1, b"", None, None)


def flat(msg: tuple, pos: int) -> bytes | None:
    """The flat frame of ``msg`` (see the module's doc), whose item at ``pos`` is the
    value and every other an int (an int-like one travels as an int); None if the value
    is not ``bytes`` or a C-contiguous numeric array of up to PACK_MAX bytes, or the
    others do not fit an int64."""
    n = len(msg)
    if not (1 < n < 256 and 0 <= pos < n):
        return None
    value = msg[pos]
    last = _last_sent
    try:
        if type(value) is last[0] and value.dtype is last[1] and value.shape == last[2] \
                and n << 8 | pos == last[3]:
            return b"".join((last[4], last[5].pack(*last[6](msg)), value))
        plan = _flat_plans.get(n << 8 | pos) or _flat_plan(n, pos)
        if type(value) is bytes:
            if len(value) > PACK_MAX:
                return None
            return b"".join((plan[0], plan[1].pack(*plan[2](msg)), value))
        np = sys.modules.get("numpy")
        if np is None or type(value) is not np.ndarray:
            return None
        head = _flat_arrays.get((value.dtype, value.shape, n << 8 | pos))
        if head is None:
            if value.dtype.kind not in _FLAT_KINDS or value.ndim > 32:
                return None
            head = _array_head(value, n, pos)
        if value.nbytes > PACK_MAX or not value.flags.c_contiguous:
            return None
        frame = b"".join((head, plan[1].pack(*plan[2](msg)), value))
    except (struct.error, TypeError):   # an item that is not an int or beyond an int64;
        return None                     # an array not C-contiguous (the first test)
    _remember_sent(np.ndarray, value, n << 8 | pos, head, plan)
    return frame


def _remember_sent(ndarray: type, value: Any, key: int, head: bytes, plan: tuple) -> None:
    """Remember the layout of an array just made flat (see _last_sent)."""
    global _last_sent
    _last_sent = (ndarray, value.dtype, value.shape, key, head, plan[1], plan[2])


#: the layout :func:`flat_message` last read: (the frames' first bytes, up to the other
#: items, where those start, the value's place, their struct, where the value starts;
#: for an array its dtype, shape (None: one dimension), bytes and numpy.frombuffer, for
#: ``bytes`` None, None, None, None). A frame that starts with the same bytes, in a
#: bytearray (as the transport receives it), is read without taking its header apart
#: again: a halo row after a Jacobi step 3.3 -> 2.3 us, warm 1.15 -> 0.8 us; 8 bytes
#: 0.75 -> 0.39 us (scratch timings, one process). A tuple, replaced whole.
_last_read: tuple = (b"\xff", 0, 0, None, 0, None, None, None, None)


def flat_message(frame: Any, src: int) -> tuple:
    """The tuple a flat frame from rank ``src`` carries (arrays are views of ``frame``,
    writable if it is). Raises :class:`FrameError`."""
    last = _last_read
    if type(frame) is bytearray and frame.startswith(last[0]):
        _, at, pos, ints_of, end, dtype, shape, nbytes, frombuffer = last
        size = len(frame) - end          # (shorter than the header: the checks below)
        if dtype is None:
            if size >= 0:
                ints = ints_of.unpack_from(frame, at)
                return (*ints[:pos], bytes(frame[end:]), *ints[pos:])
        elif size == nbytes:
            ints = ints_of.unpack_from(frame, at)
            value = frombuffer(frame, dtype, -1, end)
            if shape is not None:
                value = value.reshape(shape)
            return (*ints[:pos], value, *ints[pos:])
    view = memoryview(frame)
    size = view.nbytes
    if size < FLAT.size:
        raise FrameError(src, f"flat frame of {size} bytes is shorter than its header")
    _, items, pos, vtype, ndim, nlen = FLAT.unpack_from(view)
    if not pos < items > 1 or vtype > 1 or (vtype == 0 and ndim | nlen) or ndim > 32:
        raise FrameError(src, f"flat frame with a bad header ({items} items, the value at "
                              f"{pos}, type {vtype})")
    at = FLAT.size + 8 * ndim + nlen + (-nlen & 7)      # the other items
    end = at + 8 * (items - 1)                            # the value
    if end > size:
        raise FrameError(src, f"flat frame of {size} bytes is shorter than its header")
    ints = _ints[items - 1].unpack_from(view, at)
    if vtype == 0:
        value: Any = bytes(view[end:])
        _remember_read(bytes(view[:at]), at, pos, _ints[items - 1], end, None)
    else:
        key = bytes(view[FLAT.size:at])
        layout = _flat_layouts.get(key)
        try:
            if layout is None:
                import numpy as np
                name = view[FLAT.size + 8 * ndim:FLAT.size + 8 * ndim + nlen]
                dtype = np.dtype(bytes(name).decode("ascii"))
                if dtype.kind not in _FLAT_KINDS:
                    raise ValueError(f"dtype {dtype} is not sent flat")
                shape = _ints[ndim].unpack_from(view, FLAT.size)
                count = 1
                for k in shape:
                    count *= k
                if min(shape, default=0) < 0:
                    raise ValueError(f"shape {shape}")
                layout = np, dtype, shape, count * dtype.itemsize
                if len(_flat_layouts) < _PLANS_MAX:
                    _flat_layouts[key] = layout
            np, dtype, shape, nbytes = layout
            if size - end != nbytes:
                raise ValueError(f"{size - end} bytes for an array of {nbytes}")
            value = np.frombuffer(view[end:], dtype)     # (np.ndarray(offset=): +0.1 us)
            if len(shape) != 1:
                value = value.reshape(shape)
        except Exception as exc:   # noqa: BLE001 - np.dtype parses text: any error
            raise FrameError(src, f"flat frame's array does not fit its header: "
                                  f"{type(exc).__name__}: {exc}") from None
        if nbytes:
            _remember_read(bytes(view[:at]), at, pos, _ints[items - 1], end, layout)
    return (*ints[:pos], value, *ints[pos:])


def _remember_read(head: bytes, at: int, pos: int, ints_of: struct.Struct, end: int,
                   layout: tuple | None) -> None:
    """Remember the layout of a frame just read (``layout``: its array's, None for bytes)."""
    global _last_read
    if layout is None:
        _last_read = (head, at, pos, ints_of, end, None, None, None, None)
        return
    np, dtype, shape, nbytes = layout
    _last_read = (head, at, pos, ints_of, end, dtype, None if len(shape) == 1 else shape,
                  nbytes, np.frombuffer)


def one_frame(msg: Any, flat_at: int | None, allow_pickle: bool, limit: int) -> bytes | None:
    """The one frame that holds all of ``msg``: flat (``flat_at``: see :func:`flat`),
    inline, or packed with its small arrays; None if it needs more (big arrays or
    payload), or more than ``limit`` bytes. Raises WireError."""
    head = None if flat_at is None else flat(msg, flat_at)
    if head is None:
        head = whole_frame(*wire.dumps(msg, allow_pickle=allow_pickle))
    return head if head is not None and len(head) <= limit else None


def whole_frame(payload: bytes, bufs: list[Any]) -> bytes | None:
    """The one frame that holds an encoded message: inline, or packed with its arrays
    when they are small (PACK_MAX in all); None if it needs parts (a big payload or big
    arrays)."""
    if len(payload) > INLINE_MAX:
        return None
    if not bufs:
        return b"\x00" + payload
    total = 0
    for b in bufs:        # wire's buffers are flat byte views
        total += b.nbytes
    return packed(payload, bufs, total) if total <= PACK_MAX else None


def one_frame_message(frame: Any, allow_pickle: bool = False) -> Any:
    """The message a frame that holds all of it carries (inline, packed or flat: what
    :func:`one_frame` made; a replay log keeps such frames as they were sent).
    Raises :class:`FrameError` or :class:`~clustervm.errors.WireError`."""
    kind = frame[0] if len(frame) else -1
    if kind == KIND_FLAT:
        return flat_message(frame, -1)
    if kind == KIND_INLINE:
        return wire.loads(memoryview(frame)[1:], [], allow_pickle=allow_pickle)
    if kind == KIND_PACKED:
        payload, bufs = packed_parts(frame, -1)
        return wire.loads(payload, bufs, allow_pickle=allow_pickle)
    raise FrameError(-1, f"a frame of kind {kind} does not hold a whole message")
