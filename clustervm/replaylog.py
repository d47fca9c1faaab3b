"""A sender's replay log: its entries, and the form checkpoints and the job journal keep.

In memory, a task's replay log (sender-based message logging, ``ctx._outlog``) is
per receiver a list of ``(seq, tag, data)`` entries. A message that went out in one
frame (``Transport.frame_of``: a heat2d row, any small message) is logged as that
frame, a :class:`Sent`, decoded only to be sent again: the frame is a copy of the
message already, so the log makes none of its own (a row's send after a heat2d step:
9.3 -> 8.6 us, before the store below). Other data are the sender's copies
(values.sized_snapshot).

The frames a log keeps go into memory of their own (:class:`FrameStore`), not the
heap: heat2d's 2 KB rows, one a step kept on the heap between the numpy
temporaries each step allocates and frees, made the steps' own computation 4-5 us
slower (70-74 us a step against 66 us; raw mpi4py 61-64).

Encoded as it is, every entry
costs the wire format a tuple and every array an out-of-band buffer of its own:
heat2d's 100 halo rows took 186 us to encode and 44 us to pack into a checkpoint,
on the critical path of every log-mode checkpoint. When a receiver's entries are
all numpy arrays of one dtype and shape (halo rows, blocks), they are kept here
as one stacked array instead: 42 us to stack, 7 to encode, 15 to pack.

:func:`pack` gives that form, :func:`unpack` the entries back; a receiver's log
whose data differ stays a list of entries, which :func:`unpack` also takes (as
it takes checkpoints made before this form).
"""
from __future__ import annotations

import sys
from typing import Any

from . import wire
from .blocks import Blocks
from .errors import CorruptCheckpointError
from .frames import one_frame_message

__all__ = ["FrameStore", "Sent", "data_of", "pack", "unpack"]

#: where a task message's data is in its tuple (protocol.User)
_DATA_AT = 4


class Sent:
    """A logged message as it went out: its one frame (bytes or a view of a
    :class:`FrameStore`'s memory, never changed)."""
    __slots__ = ("frame",)

    def __init__(self, frame: bytes | memoryview) -> None:
        self.frame = frame

    @property
    def nbytes(self) -> int:
        """What it takes (values.approx_size counts a log's entries by this)."""
        return len(self.frame)

    def data(self, allow_pickle: bool = False) -> Any:
        """The message's data, decoded (its arrays are views of the frame: to be sent or
        copied, never changed)."""
        return one_frame_message(self.frame, allow_pickle)[_DATA_AT]


class FrameStore:
    """Where one task's replay log keeps the frames it logs: chunks of memory apart from
    the heap (from ``blocks``, used again once every frame in one is gone: a receiver's
    checkpoint trims the log), frames end to end, each at an 8-byte boundary (a flat
    array in one stays aligned). Chunks start at :data:`FIRST` bytes and double up to
    :data:`CHUNK` (a task that sends a few messages takes little). One task thread uses
    it: no lock; drop it when the task ends (its last chunk goes with its frames)."""
    FIRST = 64 << 10
    CHUNK = 1 << 20
    #: frames larger than this stay as they are
    LARGEST = CHUNK >> 3

    def __init__(self, blocks: Blocks) -> None:
        self.blocks = blocks
        self._view: memoryview | None = None
        self._at = 0
        self._next = self.FIRST

    def keep(self, frame: bytes) -> bytes | memoryview:
        """A copy of ``frame`` in the store (a memoryview), or ``frame`` itself if it is
        big or numpy is not loaded (the blocks are numpy's)."""
        n = len(frame)
        if n > self.LARGEST:
            return frame
        at, view = self._at, self._view
        if view is None or at + n > len(view):
            size = self._next
            while size < n:
                size <<= 1
            block = self.blocks.take(size)
            if block is None:
                return frame
            self._next = min(size << 1, self.CHUNK)
            view = self._view = memoryview(block)    # (its views keep the block in use)
            at = 0
        kept = view[at:at + n]
        kept[:] = frame
        self._at = (at + n + 7) & ~7
        return kept


def data_of(entry: tuple, allow_pickle: bool = False) -> Any:
    """The data of a log entry ``(seq, tag, data)``, decoded if it was logged as sent."""
    data = entry[2]
    return data.data(allow_pickle) if type(data) is Sent else data

#: fewer entries than this are kept as they are (stacking gains nothing)
MIN_STACKED = 4


def _stackable(entries: list) -> bool:
    """Whether every entry's data is a plain numpy array (1-d or more, no objects) of
    the first one's dtype and shape."""
    np = sys.modules.get("numpy")
    if np is None or len(entries) < MIN_STACKED:
        return False
    first = entries[0][2]
    if type(first) is not np.ndarray or first.ndim == 0 or first.dtype.hasobject:
        return False
    dtype, shape = first.dtype, first.shape
    for e in entries:
        data = e[2]
        if type(data) is not np.ndarray or data.shape != shape or data.dtype != dtype:
            return False
    return True


def pack(outlog: dict[int, list], blocks: Blocks | None = None) -> dict[int, Any]:
    """The checkpointed form of ``outlog`` (receiver tid -> entries): per receiver the
    entries as they are, or ``{"seq": [...], "tag": [...], "rows": stacked array}``,
    or, when all were logged as sent, ``{"seq": [...], "tag": [...], "frames": bytes,
    "ends": [...]}`` (the frames end to end: one buffer). The stacked arrays go into
    memory from ``blocks`` if given (new memory pays its page faults: 50 us for
    heat2d's rows): use them before the next call."""
    out: dict[int, Any] = {}
    for dst, live in list(outlog.items()):   # (another thread may drop a receiver)
        entries = list(live)    # as it is now: another thread may take a prefix off
        if entries and all(type(e[2]) is Sent for e in entries):
            frames = [e[2].frame for e in entries]
            ends, at = [], 0
            for f in frames:
                at += len(f)
                ends.append(at)
            joined = b"".join(frames)
            if "numpy" in sys.modules:     # a big one goes out of band, not copied again
                joined = wire.as_blob_frame(joined)
            out[dst] = {"seq": [e[0] for e in entries], "tag": [e[1] for e in entries],
                        "frames": joined, "ends": ends}
            continue
        entries = [(e[0], e[1], data_of(e)) if type(e[2]) is Sent else e for e in entries]
        if _stackable(entries):
            out[dst] = {"seq": [e[0] for e in entries], "tag": [e[1] for e in entries],
                        "rows": _stack([e[2] for e in entries], blocks)}
        else:
            out[dst] = entries
    return out


def _stack(arrays: list, blocks: Blocks | None) -> Any:
    import numpy as np
    first = arrays[0]
    block = blocks.take(first.nbytes * len(arrays)) if blocks is not None else None
    shape = (len(arrays), *first.shape)
    rows = np.empty(shape, first.dtype) if block is None else \
        block.view(first.dtype).reshape(shape)
    if first.ndim == 1:     # rows: joined end to end (np.stack: 11.8 -> 4.4 us for 50)
        np.concatenate(arrays, out=rows.reshape(-1))
    else:
        np.stack(arrays, out=rows)
    return rows


def unpack(form: dict) -> dict[int, list[tuple]]:
    """The replay log :func:`pack` made (decoded by the wire format), as entries
    ``(seq, tag, data)``; a stacked receiver's data are views of its rows."""
    out: dict[int, list[tuple]] = {}
    for dst, kept in form.items():
        if isinstance(kept, dict) and "frames" in kept:
            out[int(dst)] = _unpack_frames(dst, kept)
        elif isinstance(kept, dict):
            seqs, tags, rows = kept["seq"], kept["tag"], kept["rows"]
            if not len(seqs) == len(tags) == len(rows):
                raise CorruptCheckpointError(
                    f"a replay log for task {dst} holds {len(seqs)} sequence numbers, "
                    f"{len(tags)} tags and {len(rows)} messages; the checkpoint is damaged: "
                    "delete it (or its directory) to start the task again")
            out[int(dst)] = [(seqs[i], tags[i], rows[i]) for i in range(len(seqs))]
        else:
            out[int(dst)] = [tuple(e) for e in kept]
    return out


def _unpack_frames(dst: Any, kept: dict) -> list[tuple]:
    seqs, tags, ends = kept["seq"], kept["tag"], kept["ends"]
    frames = memoryview(kept["frames"]).cast("B")
    if not len(seqs) == len(tags) == len(ends) or (ends and ends[-1] != frames.nbytes) or \
            any(b < a for a, b in zip([0, *ends], ends)):
        raise CorruptCheckpointError(
            f"a replay log for task {dst} holds {len(seqs)} sequence numbers, {len(tags)} "
            f"tags and {len(ends)} messages in {frames.nbytes} bytes that do not add up; "
            "the checkpoint is damaged: delete it (or its directory) to start the task again")
    entries, at = [], 0
    for i, end in enumerate(ends):
        entries.append((seqs[i], tags[i], Sent(bytes(frames[at:end]))))
        at = end
    return entries
