"""Memory used again for big buffers: received message parts, replay-log copies.

New memory pays its page faults when first written: an 8 MiB copy into it took
3-13 ms here (a Firecracker VM: the host faults too), into memory touched before
0.8 ms; the coordinator's 370 KB checkpoints of heat2d took 0.24 ms each for that
alone (profiled). A :class:`Blocks` hands out views of numpy blocks it keeps and
that nothing else refers to any more (whoever held the last view of one let go
of it, as ``sys.getrefcount`` says), else of a new block, kept for next time.

Blocks are used only once numpy is loaded (a rank that never uses numpy does not
import it for this). Thread-safe.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any

__all__ = ["Blocks"]


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
    block is 1/16 larger than the first size it took, so sizes that vary a little fit;
    a size takes the smallest unused block that fits, none twice as big as it needs.
    With ``idle_s``, a block unused that long is let go at the next :meth:`take`."""

    def __init__(self, min_bytes: int, max_bytes: int, keep_bytes: int,
                 idle_s: float | None = None) -> None:
        self.min_bytes, self.max_bytes, self.keep_bytes = min_bytes, max_bytes, keep_bytes
        self.idle_s = idle_s
        self._blocks: list[Any] = []
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
            blocks = self._blocks
            best, most = -1, 2 * size + self.min_bytes   # no block twice too big
            for i in range(len(blocks)):
                block = blocks[i]
                n = block.nbytes
                if size <= n <= most and sys.getrefcount(block) <= free:   # unused
                    best, most = i, n - 1       # the smallest that fits
            if best >= 0:
                self._used[best] = now
                return blocks[best][:size]
            if self.idle_s is not None:
                self._let_go_idle(now - self.idle_s)
            import numpy as np
            block = np.empty(size + (size >> 4), dtype=np.uint8)
            self._blocks.append(block)
            self._used.append(now)
            total = sum(b.nbytes for b in self._blocks)
            while total > self.keep_bytes:
                total -= self._blocks[0].nbytes
                del self._blocks[0], self._used[0]
            return block[:size]

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
                del blocks[i], used[i]

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks kept here (in use or not)."""
        return sum(b.nbytes for b in self._blocks)
