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

Malformed input: :func:`parse_frame` checks a frame's layout and the sizes it
claims before anything is allocated for its buffers, and raises :class:`FrameError`
naming the sender (the transport logs it and drops the frame).
"""
from __future__ import annotations

import struct
from typing import Any, Iterable, NamedTuple

from .errors import WireError

__all__ = ["Frame", "FrameError", "parse_frame", "packed", "packed_parts", "unbundled",
           "padded", "aligned", "split"]

TAG_BUF0 = 1 << 16
TAG_BUF_SPAN = 1 << 24
INLINE_MAX = 1 << 16       # payloads above this go out of band, like arrays
KIND_INLINE = 0
KIND_BUFFERS = 1
KIND_ROUTED = 2
KIND_LONG = 3
KIND_PACKED = 4
KIND_BUNDLED = 5
PACK_MAX = 1 << 16         # messages with arrays up to this size (in all) travel packed
BUNDLE_MAX = 64 << 20      # a bigger message's small arrays are copied up to this size
PREFIX = struct.Struct("<BIi")  # kind, number of buffers, buffer tag
ROUTE = struct.Struct("<BiiI")  # kind, sender, final destination, number of buffers
LONG = struct.Struct("<BQi")    # kind, size of the frame that follows in chunks, their tag
PACKED = struct.Struct("<B3xI")  # kind, number of buffers; then sizes, buffers, payload
PACKED1 = struct.Struct("<B3xIQQ")  # the same with one buffer: its size, the payload's


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
