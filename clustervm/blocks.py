"""Memory used again for big buffers: what a rank receives, replay-log copies.

New memory pays its page faults when first written: an 8 MiB copy into it took
3-13 ms here (a Firecracker VM: the host faults too), into memory touched before
0.8 ms; the coordinator's 370 KB checkpoints of heat2d took 0.24 ms each for that
alone (profiled). A :class:`Blocks` hands out views of numpy blocks it keeps and
that nothing else refers to any more (whoever held the last view of one let go
of it, as ``sys.getrefcount`` says), else of a new block, kept for next time.

A block of 2 MiB or more starts on a 2 MiB boundary and spans whole huge pages, so that
the kernel can back all of it with transparent huge pages (numpy asks for them for its
arrays of 4 MiB or more, and gets them only for the whole 2 MiB pages inside): raw
mpi4py's 8 MiB round trip between two such buffers took 656-685 us here against
784-853 us between plain numpy arrays, and without huge pages 1.7 ms. The price is a
new block's first writes: on this VM a huge page took ~4.3 ms to fault in (2.1 ms a MiB,
against 0.33 ms a MiB in 4 KiB pages; numpy's own arrays of 4 MiB or more pay it too),
once per block: blocks are for memory used again. A block below 512 KiB is a mapping of
its own, never among the heap's memory, where it slowed a task's numpy work
(:data:`OFF_HEAP_BELOW`).

Blocks are used only once numpy is loaded (a rank that never uses numpy does not
import it for this). Thread-safe.
"""
from __future__ import annotations

import mmap
import sys
import threading
import time
from typing import Any

__all__ = ["Blocks", "NUMPY_BUFFER_MIN", "RECEIVED", "received_buffer"]

#: a transparent huge page (x86-64; arm64 with 4 KiB pages)
HUGE_PAGE = 2 << 20


def _refs_of_unused() -> int:
    """What ``sys.getrefcount`` says of an object that only a list refers to, when it is
    looked at as :class:`Blocks` does (measured, not assumed: interpreters count
    differently)."""
    blocks = [bytearray(1)]
    block = blocks[0]
    return sys.getrefcount(block)


class Blocks:
    """Blocks of ``min_bytes`` to ``max_bytes`` used again, ``keep_bytes`` of them kept at
    most (the oldest let go first: one still in use is freed by its last user). Each
    block is 1/16 larger than the first size it took, or whole huge pages from 2 MiB on
    (:func:`_new_block`), so sizes that vary a little fit;
    a size takes the smallest unused block that fits, none twice as big as it needs.
    With ``idle_s``, a block unused that long is let go at the next :meth:`take`."""

    def __init__(self, min_bytes: int, max_bytes: int, keep_bytes: int,
                 idle_s: float | None = None) -> None:
        self.min_bytes, self.max_bytes, self.keep_bytes = min_bytes, max_bytes, keep_bytes
        self.idle_s = idle_s
        self._blocks: list[Any] = []           # numpy arrays (views of one refer to it)
        self._at: list[int] = []               # where each block's room starts in it
        self._room: list[int] = []             # and how many bytes it has
        self._used: list[float] = []           # when each block was last handed out
        self._free = _refs_of_unused()
        self._lock = threading.Lock()

    def take(self, size: int) -> Any:
        """A writable uint8 array of ``size`` bytes in a block kept here, or None if
        ``size`` is out of range or numpy is not loaded (the caller makes its own)."""
        if not self.min_bytes <= size <= self.max_bytes or "numpy" not in sys.modules:
            return None
        free = self._free
        with self._lock:
            now = time.monotonic()
            blocks, room = self._blocks, self._room
            best, most = -1, 2 * size + self.min_bytes   # no block twice too big
            for i in range(len(blocks)):
                block = blocks[i]        # (a local, as _refs_of_unused counts)
                n = room[i]
                if size <= n <= most and sys.getrefcount(block) <= free:   # unused
                    best, most = i, n - 1       # the smallest that fits
            if best >= 0:
                self._used[best] = now
                at = self._at[best]
                return blocks[best][at:at + size]
            if self.idle_s is not None:
                self._let_go_idle(now - self.idle_s)
            block, at, n = _new_block(size)
            blocks.append(block)
            self._at.append(at)
            room.append(n)
            self._used.append(now)
            total = sum(room)
            while total > self.keep_bytes:
                total -= room[0]
                self._forget(0)
            return block[at:at + size]

    def copy(self, array: Any) -> Any:
        """A C-ordered copy of numpy ``array`` (no object dtype) in a block kept here, or a
        plain copy if its size is out of range."""
        size = array.nbytes
        block = self.take(size) if self.min_bytes <= size <= self.max_bytes else None
        if block is None:
            return array.copy()
        out = block.view(array.dtype).reshape(array.shape)
        out[...] = array
        return out

    def let_go_idle(self) -> None:
        """Let go of the blocks unused for ``idle_s`` (called now and then: a heartbeat)."""
        if self.idle_s is not None and self._blocks:
            with self._lock:
                self._let_go_idle(time.monotonic() - self.idle_s)

    def _let_go_idle(self, before: float) -> None:
        blocks, used = self._blocks, self._used
        for i in reversed(range(len(blocks))):
            block = blocks[i]
            if used[i] < before and sys.getrefcount(block) <= self._free:
                self._forget(i)

    def _forget(self, i: int) -> None:
        del self._blocks[i], self._at[i], self._room[i], self._used[i]

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks kept here (in use or not; a big block's few unused pages
        before and after its room are never touched, so they take no memory)."""
        return sum(self._room)


#: blocks of fewer bytes are anonymous mappings of their own, off the heap (_new_block)
OFF_HEAP_BELOW = 512 << 10


def _new_block(size: int) -> tuple[Any, int, int]:
    """A new numpy block with room for ``size`` bytes and a little more: (the array, where
    the room starts in it, its bytes). Below 2 MiB the room is 1/16 more than ``size``;
    from 2 MiB on it starts on a huge page's boundary and is whole huge pages, and the
    array is 4 MiB or more (numpy then asks the kernel for huge pages:
    ``madvise(MADV_HUGEPAGE)``).

    Below :data:`OFF_HEAP_BELOW` a block is a mapping of its own, never among the heap's
    memory: while a log-mode heat2d task's first frame-store chunks (64-256 KiB) and the
    first checkpoint copy its node received were malloc's, between numpy's temporaries,
    its numpy steps took 1.5-3 us longer (2-5 %) than without checkpoints, far from any
    checkpoint (fresh jobs; none with a mapping each; `checkpoint_overhead.py`, log mode
    in memory, 6.0-7.7 -> 3.2-3.8 %). Bigger ones come from numpy (malloc) as before: a
    mapping for each 1 MiB chunk of a replay log never trimmed made its sends ~1 us
    slower (new pages each time; malloc gives memory freed before). A small block that
    cannot be mapped is numpy's too."""
    import numpy as np
    room = size + (size >> 4)
    if room < OFF_HEAP_BELOW:
        try:
            return np.frombuffer(mmap.mmap(-1, room), dtype=np.uint8), 0, room
        except OSError:
            # no mapping to be had (a process may hold vm.max_map_count of them, 65530 by
            # default, and a replay log never trimmed may keep thousands of small
            # copies): numpy's memory then, as before (MemoryError if none either)
            pass
    if room < HUGE_PAGE:
        return np.empty(room, dtype=np.uint8), 0, room
    room = -(-size // HUGE_PAGE) * HUGE_PAGE
    block = np.empty(room + HUGE_PAGE, dtype=np.uint8)
    return block, -block.ctypes.data % HUGE_PAGE, room


#: memory for what a rank receives big, used again: a message's parts (transport.py), a
#: frozen group's collective results (fastgroup.py); 64 KiB to 16 MiB, 32 MiB kept
RECEIVED = Blocks(64 << 10, 16 << 20, 32 << 20)


#: new buffers from this size on are numpy's (not zero-filled); smaller ones are
#: bytearrays, so that a rank whose tasks never use numpy does not import it (100-150 ms
#: here) on the first message of a few KB it receives
NUMPY_BUFFER_MIN = 1 << 20


def received_buffer(size: int) -> Any:
    """A writable buffer of ``size`` bytes to receive into: a view of a block of
    :data:`RECEIVED` (memory written before, so receiving into it faults no pages in: an
    8 MiB frozen allreduce took 11.4-11.8 ms into a new bytearray, 3.9-4.0 ms into a
    block, raw mpi4py 4.1 ms), else a new buffer."""
    buf = RECEIVED.take(size)
    if buf is not None:
        return buf
    if size < NUMPY_BUFFER_MIN:
        return bytearray(size)
    import numpy as np   # large buffers: no zero-filling
    return np.empty(size, dtype=np.uint8)
