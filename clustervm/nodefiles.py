"""Checkpoint files a node writes itself, and the coordinator's reading of them.

With ``--checkpoint-dir``, every checkpoint of a log-mode task used to go to rank 0,
which was told of each one, wrote it, answered and then told the task's senders what
they might forget. That work of rank 0, taking a core from the tasks, cost heat2d
15-17 % against 3-5 % in memory; the bytes and the write themselves cost little
(benchmarks/RESULTS.md, nineteenth session). Now a node that sees the job's directory
writes its tasks' checkpoints there itself, in a thread of its own (:class:`OwnFiles`;
each file is synced before it counts), and tells nobody: its node tells the task's
senders what they may forget once the buddy holds the checkpoint *and* its file is
written (``Node._forget_if_kept``). After a loss the coordinator looks at what the nodes
wrote (:class:`NodeFiles`) as at one more holder of copies, and on ``--resume`` it
restores from the newest checkpoint of each task, its own or a node's. A checkpoint
group's epochs for the disk go the same way.

A node restoring a task deletes what the task's older incarnations wrote there after
the checkpoint it starts from (:meth:`OwnFiles.forget_after`); the coordinator does so
in the directories of nodes lost, and deletes a finished task's files once the sync
that makes its result durable is done (``CLUSTERVM_NODE_FILES=0``: none of this, every
checkpoint goes to the coordinator).

Layout: ``DIR/nodes/<rank>/ckpt/``, one :class:`~clustervm.checkpoint.CheckpointStore`
per node rank (slots, CRCs, as the coordinator's own), key ``"<tid>.<incarnation>"``.
``DIR/nodes/JOB`` names the job (:func:`clustervm.doorbell.job_key`): a node writes only
if it reads its own job's name there, so a node on another host with a directory of
that name that is not shared keeps sending its checkpoints to the coordinator.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Iterable

from .checkpoint import CheckpointStore, delete_file, read_version, versions_in
from .errors import CheckpointError, CorruptCheckpointError

__all__ = ["NodeFiles", "OwnFiles", "announce", "shared"]

log = logging.getLogger(__name__)

_JOB_FILE = "JOB"


def _root(directory: str) -> str:
    return os.path.join(directory, "nodes")


def announce(directory: str, job: str) -> None:
    """The coordinator: say in ``directory`` which job it belongs to (see :func:`shared`)."""
    root = _root(directory)
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".{_JOB_FILE}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(job)
    os.replace(tmp, os.path.join(root, _JOB_FILE))


def shared(directory: str, job: str | None) -> bool:
    """A node: is ``directory`` the coordinator's own (it names job ``job`` there)?"""
    if not job:
        return False
    try:
        with open(os.path.join(_root(directory), _JOB_FILE)) as f:
            return f.read() == job
    except OSError:
        return False


_OVER = 1 << 62      # an incarnation floor: the task is over


def _key(tid: int, inc: int) -> str:
    return f"{tid}.{inc}"


def _parse(key: str) -> tuple[int, int] | None:
    tid, dot, inc = key.partition(".")
    if not dot or not tid.isdigit() or not inc.isdigit():
        return None
    return int(tid), int(inc)


class OwnFiles:
    """A node's writer of its tasks' checkpoint files: ``write`` returns at once; a thread
    writes (each file synced) and calls ``done(tid, inc, seq, error)`` (error None: it
    counts), then ``release(blob)``. A write superseded by a newer one of the same task
    queued behind it is skipped (released, no ``done``): only the newest is needed."""

    def __init__(self, directory: str, rank: int,
                 done: Callable[[int, int, int, CheckpointError | None], None],
                 release: Callable[[Any], None]) -> None:
        self.store = CheckpointStore(os.path.join(_root(directory), str(rank)), keep=2,
                                     fsync=True)
        self._done, self._release = done, release
        self._lock = threading.Lock()            # a write, or forget_after, at a time
        self._floor: dict[int, int] = {}         # tid -> its incarnations before are over
        self._queue: queue.SimpleQueue[tuple[str, int, int, int, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cvm-own-files", daemon=True)
        self._thread.start()

    def write(self, tid: int, inc: int, seq: int, blob: Any) -> None:
        self._queue.put(("write", tid, inc, seq, blob))

    def forget(self, tid: int) -> None:
        """Task ``tid`` is over: write nothing more of it (its files are the coordinator's
        to delete, once its result is durable: :meth:`NodeFiles.drop`)."""
        with self._lock:
            self._floor[tid] = _OVER

    def forget_after(self, tid: int, inc: int, seq: int) -> None:
        """Incarnation ``inc`` of task ``tid`` starts from its checkpoint ``seq``: delete
        what its older incarnations wrote after it (a course it no longer takes), now,
        and write nothing more of theirs that is still queued."""
        with self._lock:
            if inc > self._floor.get(tid, -1):
                self._floor[tid] = inc
            for key in self.store.keys():
                got = _parse(key)
                if got is not None and got[0] == tid and got[1] < inc:
                    self.store.drop_after(key, seq)

    def flush(self, timeout: float) -> bool:
        """Wait until what was queued before is done; False if not within ``timeout``."""
        done = threading.Event()
        self._queue.put(("flush", 0, 0, 0, done))
        return done.wait(timeout)

    def close(self, timeout: float) -> None:
        self._queue.put(("stop", 0, 0, 0, None))
        self._thread.join(timeout)

    def _batch(self) -> list[tuple[str, int, int, int, Any]]:
        items = [self._queue.get()]
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        newest = {item[1]: i for i, item in enumerate(items) if item[0] == "write"}
        keep = []
        for i, item in enumerate(items):
            if item[0] == "write" and newest[item[1]] != i:
                self._release(item[4])
            else:
                keep.append(item)
        return keep

    def _run(self) -> None:
        while True:
            for op, tid, inc, seq, blob in self._batch():
                if op == "stop":
                    return
                if op == "flush":
                    blob.set()
                    continue
                try:
                    self._write(tid, inc, seq, blob)
                except Exception:   # noqa: BLE001 - the writer must outlive one bad call
                    log.exception("checkpoint files: %s of task %d failed", op, tid)

    def _write(self, tid: int, inc: int, seq: int, blob: Any) -> None:
        with self._lock:
            self._write_locked(tid, inc, seq, blob)

    def _write_locked(self, tid: int, inc: int, seq: int, blob: Any) -> None:
        key = _key(tid, inc)
        if inc < self._floor.get(tid, -1):       # an incarnation over: not on its course
            self._release(blob)
            return
        try:
            try:
                self.store.save(key, seq, [blob], copy=False)
                self.store.release(key, seq)      # kept on disk only
            except CheckpointError as exc:
                self._done(tid, inc, seq, exc)
                return
            self._done(tid, inc, seq, None)
        finally:
            self._release(blob)
        for old in self.store.keys():             # its older incarnations' files here
            got = _parse(old)
            if got is not None and got[0] == tid and got[1] < inc:
                self.store.drop(old)


class NodeFiles:
    """The coordinator's view of the checkpoint files the nodes write (read from the
    directory when asked: only after a loss, and on ``--resume``)."""

    def __init__(self, directory: str) -> None:
        self.root = _root(directory)
        #: tid -> [(incarnation, the checkpoint it went on from)] (see restarted)
        self._courses: dict[int, list[tuple[int, int]]] = {}

    def _ranks(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.root) if n.isdigit())
        except OSError:
            return []

    def restarted(self, tid: int, inc: int, base: int) -> None:
        """Task ``tid`` went on as incarnation ``inc`` from its checkpoint ``base`` (0: the
        start): a file of an older incarnation with a later checkpoint is of a course it
        no longer takes (a node found dead that was only hung, and wrote after it woke),
        never a version to restore it from (the coordinator journals these: ``--resume``
        knows them too)."""
        self._courses.setdefault(tid, []).append((inc, base))

    def on_course(self, tid: int, seq: int, inc: int) -> bool:
        """Is version ``seq`` of incarnation ``inc`` of task ``tid`` on the task's course
        (see :meth:`restarted`)?"""
        return not any(inc < rinc and seq > base for rinc, base in self._courses.get(tid, ()))

    def versions(self, tids: Iterable[int], every: bool = False
                 ) -> dict[int, list[tuple[int, int, str, int]]]:
        """Per task of ``tids``: ``(seq, inc, path, rank)`` of every version on disk on the
        task's course (``every``: off it too)."""
        want = set(tids)
        out: dict[int, list[tuple[int, int, str, int]]] = {}
        for rank in self._ranks():
            try:
                found = versions_in(os.path.join(self.root, str(rank)))
            except CheckpointError as exc:
                log.warning("checkpoint files of node %d: %s", rank, exc)
                continue
            for key, seq, path in found:
                got = _parse(key)
                if got is not None and got[0] in want and (
                        every or self.on_course(got[0], seq, got[1])):
                    out.setdefault(got[0], []).append((seq, got[1], path, rank))
        return out

    def held(self, tids: Iterable[int]) -> list[tuple[int, int, int, float]]:
        """``(tid, seq, inc, age)`` of every version of ``tids`` on disk, as a node
        answers the coordinator's ASKHELD (age: seconds since it was written)."""
        now = time.time()
        items = []
        for tid, found in self.versions(tids).items():
            for seq, inc, path, _rank in found:
                try:
                    age = max(0.0, now - os.stat(path).st_mtime)
                except OSError:
                    continue
                items.append((tid, seq, inc, age))
        return items

    def load(self, tid: int, seq: int | None = None,
             upto: int | None = None) -> tuple[int, list[bytes]] | None:
        """Version ``seq`` of task ``tid`` (None: the newest, at most ``upto``), verified,
        as ``(seq, frames)``; a damaged file is skipped with a warning (another one with
        the same seq, or the next newest, is tried). None if there is none."""
        found = sorted(self.versions([tid]).get(tid, []), reverse=True)
        for fseq, inc, path, _rank in found:
            if seq is not None and fseq != seq or upto is not None and fseq > upto:
                continue
            try:
                frames = read_version(path, _key(tid, inc), fseq)
            except CorruptCheckpointError as exc:
                log.warning("checkpoint of task %d skipped: %s", tid, exc)
                continue
            return fseq, frames
        return None

    def drop(self, tid: int, alive: Iterable[int], newer_than: int | None = None,
             below_inc: int | None = None) -> None:
        """Delete files of task ``tid`` but those of nodes ``alive``: all of them (the task
        is over, its nodes write no more of it: OwnFiles.forget), or with ``newer_than``
        those of a course the task no longer takes: newer than the checkpoint it starts
        again from, of incarnations before ``below_inc`` (a node alive deletes its own:
        OwnFiles.forget_after)."""
        alive = set(alive)
        for seq, inc, path, rank in self.versions([tid], every=True).get(tid, []):
            if rank in alive:
                continue
            if newer_than is not None and (seq <= newer_than
                                           or (below_inc is not None and inc >= below_inc)):
                continue
            delete_file(path)
