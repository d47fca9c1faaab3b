"""The checkpoint copies a node holds in memory: its own tasks' and its buddies'.

The buddy store (issue 14): a spawned task's checkpoint stays on the node that
took it, and one copy goes to a *buddy* node (on another host if there is one,
else the next live node after it, as the coordinator says: Core._buddy_of); the
coordinator only records which checkpoint of which task is held where. When a node
is lost, its tasks restart on a node that holds their copy (or get it from one), so
no checkpoint crosses rank 0.

A copy is the blob the owner's node encoded (``wire.pack_frames`` of the
checkpoint's frames), kept as it is: it is decoded only to restore. Each task
keeps its two newest copies: the one the coordinator acknowledged and, while
the next is on its way, that next one. Thread-safe.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Iterable

from . import wire

__all__ = ["Copies"]

#: copies kept per task: the acknowledged one and the one being acknowledged
KEEP = 2


class Copies:
    """Checkpoint blobs by task and checkpoint number, the newest :data:`KEEP` per task."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: tid -> seq -> (inc, blob, when it came: time.monotonic())
        self._by_tid: dict[int, dict[int, tuple[int, Any, float]]] = {}
        self._spares: dict[int, Any] = {}     # tid -> memory for its next checkpoint
        self._warming: set[int] = set()
        self._first: set[int] = set()         # warming for a first checkpoint (prepare)
        self._pinned: set[int] = set()        # ids of blobs being written (never spares)
        self.nbytes = 0

    def put(self, tid: int, inc: int, seq: int, blob: Any) -> list[Any]:
        """Hold ``blob`` as checkpoint ``seq`` of incarnation ``inc`` of task ``tid`` (-1:
        unknown, a copy of an acknowledged one), unless a newer incarnation's checkpoint
        ``seq`` is held; the blobs no longer held because of it (the oldest beyond
        :data:`KEEP`, the one it replaced, or ``blob`` itself if refused)."""
        gone = []
        with self._lock:
            held = self._by_tid.setdefault(tid, {})
            old = held.get(seq)
            if old is not None:
                if old[0] > inc:      # an old incarnation's (a hung node woke up): not ours
                    return [blob]
                self.nbytes -= len(old[1])
                gone.append(old[1])
            held[seq] = (inc, blob, time.monotonic())
            self.nbytes += len(blob)
            while len(held) > KEEP:
                out = held.pop(min(held))[1]
                self.nbytes -= len(out)
                gone.append(out)
        return gone

    def put_own(self, tid: int, inc: int, seq: int, blob: Any) -> None:
        """:meth:`put` a checkpoint this node took, and keep memory for the next one.

        A large blob (a uint8 array from ``wire.pack_frames(mutable=True)``) that is no
        longer held becomes the task's *spare*: it was acknowledged, so every send of it
        is complete, and the next checkpoint is copied into it. Memory already touched
        takes a 200 MB state in 20-40 ms here, new memory in 150-900 ms (page faults).
        Until a task has one, a thread touches a new one of the same size beside it.
        A copy in a file of /dev/shm (clustervm.shmcopies) is only held: its files are
        the memory used again."""
        if getattr(blob, "shared", False):
            self.put(tid, inc, seq, blob)
            return
        gone = [b for b in self.put(tid, inc, seq, blob)
                if b is not blob and type(b) is type(blob) is not bytes]
        with self._lock:
            gone = [b for b in gone if id(b) not in self._pinned]
            if gone:
                self._spares[tid] = gone[-1]
                return
            if type(blob) is bytes or tid in self._spares or tid in self._warming:
                return
            self._warming.add(tid)
        threading.Thread(target=self._warm, args=(tid, len(blob)), daemon=True,
                         name=f"cvm-ckpt-spare-{tid}").start()

    def prepare(self, tid: int, size: int) -> bool:
        """For a task none of whose checkpoints is held here: True while memory of
        ``size`` bytes for its first one is made ready by a thread (started by the first
        call), so that the caller skips this one; False once it is ready (take_spare
        gives it) or when a checkpoint of the task is held."""
        with self._lock:
            if self._by_tid.get(tid) or tid in self._spares:
                return False
            if tid in self._warming:
                return True
            self._warming.add(tid)
            self._first.add(tid)
        threading.Thread(target=self._warm, args=(tid, size), daemon=True,
                         name=f"cvm-ckpt-spare-{tid}").start()
        return True

    def _warm(self, tid: int, size: int) -> None:
        buf = wire.blob_memory(size)
        buf.base[::4096] = 0         # one write a page: the page faults happen here, not
        with self._lock:             # in the task's next checkpoint (numpy lets go of the GIL)
            self._warming.discard(tid)
            if tid in self._by_tid or tid in self._first:
                self._spares.setdefault(tid, buf)
            self._first.discard(tid)

    def pin(self, blob: Any) -> None:
        """``blob`` is being written to a file (clustervm.nodefiles): it never becomes a
        spare, even once no longer held, until :meth:`unpin`."""
        with self._lock:
            self._pinned.add(id(blob))

    def unpin(self, blob: Any) -> None:
        with self._lock:
            self._pinned.discard(id(blob))

    def take_spare(self, tid: int) -> Any | None:
        """The memory kept for task ``tid``'s next checkpoint (see :meth:`put_own`)."""
        with self._lock:
            return self._spares.pop(tid, None)

    def get(self, tid: int, seq: int) -> Any | None:
        """The blob of checkpoint ``seq`` of task ``tid``, or None if not held here."""
        got = self.entry(tid, seq)
        return None if got is None else got[1]

    def entry(self, tid: int, seq: int) -> tuple[int, Any] | None:
        """(incarnation, blob) of checkpoint ``seq`` of task ``tid``, or None."""
        with self._lock:
            got = self._by_tid.get(tid, {}).get(seq)
        return None if got is None else got[:2]

    def holding(self, tids: Iterable[int]) -> list[tuple[int, int, int, float]]:
        """``[(tid, seq, inc, age), ...]``: every copy held of tasks ``tids``, with how
        many seconds ago it came (what a restart from it redoes, about)."""
        now = time.monotonic()
        with self._lock:
            return [(tid, seq, inc, round(now - t, 4)) for tid in tids
                    for seq, (inc, _, t) in sorted(self._by_tid.get(tid, {}).items())]

    def drop(self, tid: int) -> None:
        """Forget every copy of task ``tid`` (it is over)."""
        with self._lock:
            held = self._by_tid.pop(tid, None) or {}
            self.nbytes -= sum(len(e[1]) for e in held.values())
            self._spares.pop(tid, None)
            self._first.discard(tid)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(h) for h in self._by_tid.values())

    def __repr__(self) -> str:
        return f"<Copies tasks={len(self._by_tid)} bytes={self.nbytes}>"
