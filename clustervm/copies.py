"""The checkpoint copies a node holds in memory: its own tasks' and its buddies'.

The buddy store (issue 14): a spawned task's checkpoint stays on the node that
took it, and one copy goes to a *buddy* node (the next live node after it, as
the coordinator says); the coordinator only records which checkpoint of which
task is held where. When a node is lost, its tasks restart on a node that holds
their copy (or get it from one), so no checkpoint crosses rank 0.

A copy is the blob the owner's node encoded (``wire.pack_frames`` of the
checkpoint's frames), kept as it is: it is decoded only to restore. Each task
keeps its two newest copies: the one the coordinator acknowledged and, while
the next is on its way, that next one. Thread-safe.
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ["Copies"]

#: copies kept per task: the acknowledged one and the one being acknowledged
KEEP = 2


class Copies:
    """Checkpoint blobs by task and checkpoint number, the newest :data:`KEEP` per task."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_tid: dict[int, dict[int, tuple[int, Any]]] = {}   # tid -> seq -> (inc, blob)
        self.nbytes = 0

    def put(self, tid: int, inc: int, seq: int, blob: Any) -> None:
        """Hold ``blob`` as checkpoint ``seq`` of incarnation ``inc`` of task ``tid``."""
        with self._lock:
            held = self._by_tid.setdefault(tid, {})
            old = held.get(seq)
            if old is not None:
                self.nbytes -= len(old[1])
            held[seq] = (inc, blob)
            self.nbytes += len(blob)
            while len(held) > KEEP:
                _, gone = held.pop(min(held))
                self.nbytes -= len(gone)

    def get(self, tid: int, seq: int) -> Any | None:
        """The blob of checkpoint ``seq`` of task ``tid``, or None if not held here."""
        with self._lock:
            got = self._by_tid.get(tid, {}).get(seq)
        return None if got is None else got[1]

    def drop(self, tid: int) -> None:
        """Forget every copy of task ``tid`` (it is over)."""
        with self._lock:
            held = self._by_tid.pop(tid, None) or {}
            self.nbytes -= sum(len(b) for _, b in held.values())

    def __len__(self) -> int:
        with self._lock:
            return sum(len(h) for h in self._by_tid.values())

    def __repr__(self) -> str:
        return f"<Copies tasks={len(self._by_tid)} bytes={self.nbytes}>"
