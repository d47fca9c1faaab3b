"""Checkpoint copies in shared memory, for a buddy node on the same host.

A spawned task's checkpoint is kept by its node and copied to a buddy node
(clustervm.copies). When the buddy runs on the same host, the copy need not cross
MPI: the node packs the checkpoint into a file of its own in ``/dev/shm`` (one
copy, as it packed it into its own memory before) and tells the buddy the file's
name. The buddy keeps that name as its copy and reads the file only to restore.
A file in ``/dev/shm`` outlives the process that wrote it: a node killed, stopped or
crashed leaves it there for its buddy. A host that dies takes both with it, as it
took the buddy's memory before (a buddy on another host gets the bytes over MPI).

Each task has :data:`SLOTS` files per incarnation, written in turn. A node takes
a task's next checkpoint only once the buddy holds the one before (Node._held),
and the buddy holds a task's two newest (copies.KEEP): the file written next
holds the third newest, which nobody holds any more. Each file starts with a
header (task, incarnation, checkpoint number, a write count, and whether the
write is complete), written with ``pwrite`` before and after the blob: a reader
checks the header before and after it copies the blob, so a file written again
meanwhile (a node found dead that was only hung, and wrote after it woke) is
seen, never read half old and half new.

Files are named ``cvm-ck-<job>-<rank>-<tid>-<inc>-<slot>``. A node deletes its
files of a task that is over and all of them when it leaves; rank 0 deletes the
job's on its host when the job ends (a killed node's, say), and so does the
launcher once mpiexec has ended (a killed job's). Both go by the job's key, never
by age or by who maps a file: a killed node's files map to nobody, and its
buddy may still read them. A killed node's files on another host than rank 0's
stay there until that host restarts.
"""
from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
from typing import Any, Sequence

from . import wire

__all__ = ["ShmCopies", "ShmRef", "SLOTS", "PREFIX", "contents", "host_id", "sweep",
           "enabled_key"]

log = logging.getLogger("clustervm.shmcopies")

SHM_DIR = "/dev/shm"
PREFIX = "cvm-ck-"
#: files per task and incarnation, written in turn (see the module's docstring)
SLOTS = 3
#: blobs from this size on take the MPI path (a first write into a new file takes its
#: page faults in the task's checkpoint call: 200 MB, 180-250 ms here)
MAX_SIZE = 32 * 1024 * 1024
_PAGE = 4096
#: room a new file leaves free in /dev/shm (MPI's own segments, a spawned node's among
#: them, are made there too: 16 MiB each with Open MPI)
RESERVE = 64 * 1024 * 1024
#: magic, tid, inc, seq, write count, complete (0/1), blob offset, blob size
_HEADER = struct.Struct("<8sqqqqqqq")
_MAGIC = b"cvmckpt1"
_DATA = _PAGE      # the blob's memory starts a page in (the header before it)


def host_id() -> str:
    """What two ranks share if and only if they see the same ``/dev/shm`` on the same
    machine: its boot id, this process's network namespace (the simulated hosts of
    clustervm.testing.netns share one machine's files) and ``/dev/shm`` itself."""
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        parts.append(os.uname().nodename)
    for path in ("/proc/self/ns/net", SHM_DIR):
        try:
            st = os.stat(path)
            parts.append(f"{st.st_dev}.{st.st_ino}")
        except OSError:
            parts.append("-")
    return ":".join(parts)


def contents(blob: Any) -> Any:
    """The bytes of a held copy: a :class:`ShmRef`'s, read from its file (None if it
    holds another checkpoint now, or is gone), or ``blob`` itself."""
    return blob.read() if type(blob) is ShmRef else blob


def enabled_key(job: str | None) -> str | None:
    """The job's key as it goes into file names, or None (no key, or no /dev/shm)."""
    if not job or not os.path.isdir(SHM_DIR):
        return None
    return "".join(c if c.isalnum() or c in "._" else "_" for c in job)


class ShmRef:
    """A checkpoint blob in a file of ``/dev/shm``: task ``tid``'s checkpoint ``seq`` of
    incarnation ``inc``, ``size`` bytes, the file's write ``gen``. Held as a copy by the
    node that wrote it and by its buddy; :meth:`read` copies the blob out."""

    __slots__ = ("path", "tid", "inc", "seq", "size", "gen")
    shared = True

    def __init__(self, path: str, tid: int, inc: int, seq: int, size: int, gen: int) -> None:
        self.path, self.tid, self.inc, self.seq, self.size, self.gen = \
            path, tid, inc, seq, size, gen

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"<ShmRef {os.path.basename(self.path)} seq={self.seq} size={self.size}>"

    def fields(self) -> list:
        """What a KEEPREF carries of it."""
        return [self.path, self.size, self.gen]

    def read(self) -> bytearray | None:
        """A copy of the blob, or None (logged) if the file is gone or now holds
        another checkpoint."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            log.warning("checkpoint %d of task %d: its shared-memory copy %s is gone (%s)",
                        self.seq, self.tid, self.path, exc.strerror)
            return None
        try:
            before = os.pread(fd, _HEADER.size, 0)
            if not self._matches(before):
                return None
            off = _HEADER.unpack(before)[6]
            out = bytearray(self.size)
            got = os.preadv(fd, [out], off)
            if got != self.size or os.pread(fd, _HEADER.size, 0) != before:
                log.warning("checkpoint %d of task %d: its shared-memory copy %s was "
                            "written again while read", self.seq, self.tid, self.path)
                return None
            return out
        finally:
            os.close(fd)

    def _matches(self, header: bytes) -> bool:
        if len(header) == _HEADER.size:
            magic, tid, inc, seq, gen, done, _, size = _HEADER.unpack(header)
            if (magic, tid, inc, seq, gen, done, size) == \
                    (_MAGIC, self.tid, self.inc, self.seq, self.gen, 1, self.size):
                return True
        log.warning("checkpoint %d of task %d: its shared-memory copy %s now holds another "
                    "checkpoint", self.seq, self.tid, self.path)
        return False


class _Slot:
    """One file of a task's slots, mapped: its blob memory ``base`` (for
    wire.pack_frames) and its write count."""

    def __init__(self, path: str, capacity: int) -> None:
        self.path = path
        self.gen = 0
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            length = _DATA + capacity + _PAGE
            os.ftruncate(fd, length)
            try:        # reserve the pages now: a full /dev/shm is an error here, not
                os.posix_fallocate(fd, 0, length)       # a SIGBUS in the copy
            except OSError:
                os.unlink(path)
                raise
            self.map = mmap.mmap(fd, length)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.capacity = capacity
        import numpy as np
        self.base = np.frombuffer(self.map, np.uint8, offset=_DATA)
        self.last = (0, 0, 0)       # the last write: its gen, where its blob starts, size
        self.holds = 0              # writes of its blob to a checkpoint file under way

    def close(self) -> None:
        self.base = None
        try:
            self.map.close()
        except BufferError:     # a view of it is still alive: the mapping goes with it
            pass
        os.close(self.fd)


class ShmCopies:
    """A node's shared-memory files for its tasks' checkpoints (thread-safe)."""

    def __init__(self, job: str, rank: int) -> None:
        self._stem = f"{SHM_DIR}/{PREFIX}{job}-{rank}-"
        self._lock = threading.Lock()
        #: (tid, inc) -> its slots (None: not made yet), and how many writes so far
        self._slots: dict[tuple[int, int], list[_Slot | None]] = {}
        self._writes: dict[tuple[int, int], int] = {}
        self._held: dict[int, _Slot] = {}       # id of a view given by hold -> its slot
        self._failed = False

    def write(self, tid: int, inc: int, seq: int, frames: Sequence[Any]) -> ShmRef | None:
        """Pack ``frames`` (wire.dumps's) into the task's next file; None if that cannot
        be done (a full /dev/shm: logged once; the caller takes the MPI path)."""
        size = wire.packed_size(frames)
        key = (tid, inc)
        old: list[_Slot | None] = []
        with self._lock:
            n = self._writes.get(key, 0)
            slots = self._slots.setdefault(key, [None] * SLOTS)
            busy = slots[n % SLOTS]
            if busy is not None and busy.holds:
                return None     # its blob is still being written to a file (see hold)
            self._writes[key] = n + 1
            if n == SLOTS - 1:
                # two of this incarnation's are held: the buddy and this node hold no
                # older incarnation's (a task that went back here) any more
                for k in [k for k in self._slots if k[0] == tid and k[1] < inc]:
                    old += self._slots.pop(k)
                    self._writes.pop(k, None)
        for gone in old:
            if gone is not None:
                _unlink(gone.path)
                gone.close()
        i = n % SLOTS
        slot = slots[i]
        try:
            if slot is None or slot.capacity < size:
                if slot is not None:
                    slot.close()
                slots[i] = None
                capacity = size + size // 16
                st = os.statvfs(SHM_DIR)
                if st.f_bavail * st.f_frsize < capacity + _DATA + _PAGE + RESERVE:
                    raise OSError(28, f"{st.f_bavail * st.f_frsize >> 20} MiB free, "
                                      f"{(capacity + RESERVE) >> 20} MiB wanted")
                slot = _Slot(f"{self._stem}{tid}-{inc}-{i}", capacity)
                slots[i] = slot
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot write checkpoint copies to %s (%s); they go to the "
                            "buddy over MPI", SHM_DIR, exc.strerror or exc)
            return None
        slot.gen += 1
        gen = slot.gen
        os.pwrite(slot.fd, _HEADER.pack(_MAGIC, tid, inc, seq, gen, 0, 0, 0), 0)
        shift = wire.page_offset(frames)        # _DATA is a page in: the same offset
        wire.pack_frames(frames, into=slot.base[shift:shift + size])
        os.pwrite(slot.fd, _HEADER.pack(_MAGIC, tid, inc, seq, gen, 1, _DATA + shift, size),
                  0)
        slot.last = (gen, shift, size)
        return ShmRef(slot.path, tid, inc, seq, size, gen)

    def hold(self, ref: ShmRef) -> Any:
        """The blob :meth:`write` just wrote for ``ref``, as a view of its file's memory,
        for this node's writer of checkpoint files (clustervm.nodefiles): the file is not
        written again until :meth:`release` (a write that would is refused: the caller
        takes the MPI path). None if it was written again meanwhile."""
        with self._lock:
            slots = self._slots.get((ref.tid, ref.inc), ())
            slot = next((s for s in slots if s is not None and s.path == ref.path), None)
            if slot is None or slot.last[0] != ref.gen:
                return None
            _, shift, size = slot.last
            view = slot.base[shift:shift + size]
            slot.holds += 1
            self._held[id(view)] = slot
            return view

    def release(self, view: Any) -> bool:
        """The writer is done with a view :meth:`hold` gave; False if it is not one."""
        with self._lock:
            slot = self._held.pop(id(view), None)
            if slot is None:
                return False
            slot.holds -= 1
            return True

    def drop(self, tid: int) -> None:
        """Delete task ``tid``'s files (it is over)."""
        with self._lock:
            keys = [k for k in self._slots if k[0] == tid]
            gone = [s for k in keys for s in self._slots.pop(k) if s is not None]
            for k in keys:
                self._writes.pop(k, None)
        for slot in gone:
            _unlink(slot.path)
            slot.close()

    def close(self) -> None:
        """Delete every file (the node leaves)."""
        with self._lock:
            tids = {k[0] for k in self._slots}
        for tid in tids:
            self.drop(tid)


def sweep(job: str) -> int:
    """Delete every checkpoint file of job ``job`` (its key from :func:`enabled_key`)
    on this host: rank 0, when the job ends. Returns how many."""
    head = f"{PREFIX}{job}-"
    n = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if name.startswith(head) and _unlink(os.path.join(SHM_DIR, name)):
            n += 1
    return n


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
