"""Append-only job journal, replayed by ``clustervm run --resume DIR``.

The coordinator appends one record per event (``start``, ``done`` with the
encoded result, ``error``...) to ``DIR/journal.log``; on resume it replays the
records in order to learn which tasks finished, and with which results. A
small job header (app path, argv...) lives beside it in ``DIR/job.json``,
written atomically, so a resume can check it is the same job.

Replaying never executes code: a record holds a kind, a key and opaque byte
frames (interpreted by the msgpack wire codec, never pickle).

File format (little endian)::

    file header   8s   b"CVMJRNL" + version byte (b"\\x01")
    record        4s   marker b"CJR\\xa5"
                  u64  body length L
                  u32  CRC-32 of (the 8 length bytes + body)
                  L    body:
                         u8   kind length, kind (UTF-8)
                         u32  key length, key (UTF-8, surrogatepass)
                         u32  number of frames N
                         N*u64  frame lengths
                         the frames, back to back

A crash mid-``append`` can only damage the last record: on replay a torn or
corrupt record after which no valid record follows is ignored with a warning,
and the next ``append`` cuts it off first. A damaged record *followed by valid
ones* means the file was corrupted after it was written: replay raises
:class:`CorruptCheckpointError` naming the file and offset.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
import zlib
from typing import Any, Callable, Collection, Iterator, NamedTuple, Sequence

from .checkpoint import _fsync_dir
from .errors import CheckpointError, CorruptCheckpointError

__all__ = ["Journal", "Record"]

log = logging.getLogger(__name__)

FILE_MAGIC = b"CVMJRNL\x01"
REC_MAGIC = b"CJR\xa5"
_REC = struct.Struct("<4sQI")  # marker, body length, crc
_LEN = struct.Struct("<Q")
JOURNAL_NAME = "journal.log"
META_NAME = "job.json"


class Record(NamedTuple):
    """One journal record."""

    kind: str
    key: str
    frames: list[bytes]


def _valid_at(buf, off: int, end: int) -> int | None:
    """If a complete valid record starts at ``off``: the offset just past it."""
    if end - off < _REC.size:
        return None
    magic, length, crc = _REC.unpack_from(buf, off)
    if magic != REC_MAGIC:
        return None
    start = off + _REC.size
    if length > end - start:
        return None
    if zlib.crc32(buf[start:start + length], zlib.crc32(_LEN.pack(length))) != crc:
        return None
    return start + length


class _Scan(NamedTuple):
    spans: list[tuple[int, int]]   # (body start, body length) of each valid record
    valid_end: int                 # offset just past the last valid record
    bad_offset: int | None         # first damaged record, if any
    reason: str                    # why it is damaged
    following: int                 # offset of a valid record after the damage (-1: none)


def _scan(buf, size: int) -> _Scan:
    """Find the valid records of a journal image ``buf[:size]`` (after the file header)."""
    spans: list[tuple[int, int]] = []
    off = len(FILE_MAGIC)
    while off < size:
        nxt = _valid_at(buf, off, size)
        if nxt is None:
            if size - off < _REC.size:
                reason = f"{size - off} bytes, less than a record header"
            else:
                magic, length, _ = _REC.unpack_from(buf, off)
                if magic != REC_MAGIC:
                    reason = "no record marker"
                elif length > size - off - _REC.size:
                    reason = (f"record announces {length} bytes, only "
                              f"{size - off - _REC.size} remain")
                else:
                    reason = "checksum mismatch"
            # Is there a valid record further on? Then this is not a torn tail.
            following = -1
            probe = off + 1
            while True:
                probe = buf.find(REC_MAGIC, probe, size)
                if probe < 0:
                    break
                if _valid_at(buf, probe, size) is not None:
                    following = probe
                    break
                probe += 1
            return _Scan(spans, off, off, reason, following)
        spans.append((off + _REC.size, nxt - off - _REC.size))
        off = nxt
    return _Scan(spans, off, None, "", -1)


def _kind_of(buf: memoryview, start: int) -> str:
    """The kind of the record whose body starts at ``start`` (its frames unread)."""
    klen = buf[start]
    return bytes(buf[start + 1:start + 1 + klen]).decode("utf-8", "replace")


def _parse_body(body: memoryview, where: str) -> Record:
    try:
        o = 0
        klen = body[o]
        o += 1
        kind = bytes(body[o:o + klen]).decode("utf-8")
        o += klen
        (keylen,) = struct.unpack_from("<I", body, o)
        o += 4
        key = bytes(body[o:o + keylen]).decode("utf-8", "surrogatepass")
        o += keylen
        (n,) = struct.unpack_from("<I", body, o)
        o += 4
        lengths = struct.unpack_from(f"<{n}Q", body, o)
        o += 8 * n
        if len(kind.encode()) != klen or o + sum(lengths) != len(body):
            raise ValueError("lengths do not add up")
        frames = []
        for ln in lengths:
            frames.append(bytes(body[o:o + ln]))
            o += ln
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(
            f"{where}: malformed record body ({exc}) although its checksum is right; "
            "was the journal written by another clustervm version?"
        ) from None
    return Record(kind, key, frames)


class Journal:
    """Append-only journal ``DIR/journal.log`` (plus the job header ``DIR/job.json``).

    ``fsync=True``: every :meth:`append` is durable when it returns.
    ``fsync=False``: appends reach the OS at once (they survive the process
    being killed, not a power cut) and :meth:`sync` makes them durable, e.g.
    once per batch of ``done`` records. Thread-safe.
    """

    def __init__(self, directory: str | os.PathLike, *, fsync: bool = True) -> None:
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, JOURNAL_NAME)
        self.meta_path = os.path.join(self.directory, META_NAME)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._dirty = False
        self._corrupt: CorruptCheckpointError | None = None
        self._tail = 0  # bytes of damaged tail to cut off before the next append
        self._tail_reason = ""
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise CheckpointError(
                f"cannot open the journal {self.path}: {exc}; choose a writable directory"
            ) from None
        try:
            self._open_check()
        except BaseException:
            os.close(self._fd)
            raise

    def _open_check(self) -> None:
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, len(FILE_MAGIC), 0)
        if size < len(FILE_MAGIC) and FILE_MAGIC.startswith(head):
            # New journal (or one torn while its header was written).
            os.ftruncate(self._fd, 0)
            self._write_all(FILE_MAGIC)
            self._sync_now()
            _fsync_dir(self.directory)
            self._end = len(FILE_MAGIC)
            return
        if head != FILE_MAGIC:
            raise CorruptCheckpointError(
                f"{self.path}: not a clustervm journal (bad header {head!r}); "
                f"delete the directory {self.directory} to start the job over"
            )
        with mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) as buf:
            sc = _scan(buf, size)
        self._end = sc.valid_end
        if sc.bad_offset is not None:
            if sc.following >= 0:
                self._corrupt = self._middle_error(sc)
            else:
                self._tail = size - sc.valid_end
                self._tail_reason = sc.reason

    def _middle_error(self, sc: _Scan) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{self.path}: record at byte offset {sc.bad_offset} is damaged ({sc.reason}) "
            f"but valid records follow (at offset {sc.following}): the journal was corrupted "
            f"after it was written and cannot be trusted. Delete the directory "
            f"{self.directory} to start the job over (finished tasks will run again)."
        )

    # -- writing ------------------------------------------------------------

    def _write_all(self, data: bytes) -> None:
        mv = memoryview(data)
        while mv:
            n = os.write(self._fd, mv)
            mv = mv[n:]

    def _sync_now(self) -> None:
        os.fsync(self._fd)
        self._dirty = False

    def append(self, kind: str, key: str, frames: Sequence[bytes | memoryview] = ()) -> None:
        """Append one record; durable on return if the journal was opened with fsync=True."""
        kb = kind.encode("utf-8")
        if not 0 < len(kb) < 256:
            raise ValueError(f"kind must be 1-255 UTF-8 bytes, not {kind!r}")
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        keyb = key.encode("utf-8", "surrogatepass")
        views = []
        for i, fr in enumerate(frames):
            try:
                mv = memoryview(fr)
            except TypeError:
                raise CheckpointError(
                    f"journal frame {i} is a {type(fr).__name__}, not a bytes-like object"
                ) from None
            if not mv.c_contiguous:
                raise CheckpointError(f"journal frame {i} is not C-contiguous")
            views.append(mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv)
        body = b"".join([
            bytes([len(kb)]), kb,
            struct.pack("<I", len(keyb)), keyb,
            struct.pack(f"<I{len(views)}Q", len(views), *(len(v) for v in views)),
            *views,
        ])
        crc = zlib.crc32(body, zlib.crc32(_LEN.pack(len(body))))
        record = _REC.pack(REC_MAGIC, len(body), crc) + body
        with self._lock:
            if self._fd < 0:
                raise CheckpointError(f"journal {self.path} is closed")
            if self._corrupt is not None:
                raise self._corrupt
            try:
                if self._tail:
                    log.warning(
                        "journal %s: cutting off a torn last record (%d bytes at offset %d) "
                        "left by a crash before appending", self.path, self._tail, self._end,
                    )
                    os.ftruncate(self._fd, self._end)
                    self._tail = 0
                self._write_all(record)
                self._end += len(record)
                self._dirty = True
                if self.fsync:
                    self._sync_now()
            except OSError as exc:
                # Leave no half record behind for the next append to bury.
                try:
                    os.ftruncate(self._fd, self._end)
                except OSError:
                    pass
                raise CheckpointError(
                    f"cannot append to the journal {self.path}: {exc}; "
                    "check free space and permissions"
                ) from None

    def cut_after_last(self, kind: str) -> int:
        """Cut off the records after the last one of ``kind`` (all of them if there is
        none), durably; returns how many were cut."""
        def keep(mv: memoryview, spans: list[tuple[int, int]]) -> int:
            return max((i + 1 for i, (start, _) in enumerate(spans)
                        if _kind_of(mv, start) == kind), default=0)
        return self._cut(keep)

    @property
    def dirty(self) -> bool:
        """Has a record been appended since the last sync?"""
        return self._dirty

    def cut(self, keep: int) -> int:
        """Keep the first ``keep`` records and cut the others off, durably (a resume that
        goes back to an earlier moment of the job); returns how many were cut."""
        return self._cut(lambda mv, spans: keep)

    def _cut(self, keep_of: Callable[[memoryview, list[tuple[int, int]]], int]) -> int:
        """Keep the first ``keep_of(records, their spans)`` records (one scan, under the
        lock) and cut the others off, durably."""
        with self._lock:
            if self._fd < 0:
                raise CheckpointError(f"journal {self.path} is closed")
            size = self._end
            if size <= len(FILE_MAGIC):
                return 0
            with mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) as buf:
                spans = _scan(buf, size).spans
                with memoryview(buf) as mv:
                    keep = keep_of(mv, spans)
            if keep >= len(spans):
                return 0
            end = spans[keep - 1][0] + spans[keep - 1][1] if keep > 0 else len(FILE_MAGIC)
            try:
                os.ftruncate(self._fd, end)
                self._sync_now()
            except OSError as exc:
                raise CheckpointError(f"cannot cut the journal {self.path}: {exc}") from None
            self._end = end
            self._tail = 0
            return len(spans) - keep

    def sync(self) -> None:
        """Make every record appended so far durable (flush + fsync)."""
        with self._lock:
            if self._fd >= 0 and self._dirty:
                try:
                    self._sync_now()
                except OSError as exc:
                    raise CheckpointError(f"cannot fsync the journal {self.path}: {exc}") from None

    def close(self) -> None:
        """Sync and close (idempotent)."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self._dirty:
                    self._sync_now()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------

    def replay(self, kinds: Collection[str] | None = None) -> Iterator[Record]:
        """The records in the order they were appended (only those of ``kinds`` if given:
        the others' frames are not read).

        The file is checked when replay() is called, before any record is
        read: a damaged last record (torn by a crash) is skipped with a
        warning; damage followed by valid records raises
        CorruptCheckpointError (file, offset, and the fix).
        """
        with self._lock:
            if self._fd < 0:
                raise CheckpointError(f"journal {self.path} is closed")
            if self._corrupt is not None:
                raise self._corrupt
            if self._tail:
                log.warning(
                    "journal %s: ignoring a torn last record at byte offset %d (%s, %d bytes): "
                    "the job was killed while writing it",
                    self.path, self._end, self._tail_reason, self._tail,
                )
            # Only the records known valid: appends only extend the file past
            # this point, so the mapping stays valid while we read it.
            size = self._end
            if size <= len(FILE_MAGIC):
                return iter(())
            fd = os.open(self.path, os.O_RDONLY)
            try:
                buf = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
        try:
            sc = _scan(buf, size)
            if sc.bad_offset is not None:  # changed on disk since it was opened
                raise self._middle_error(sc) if sc.following >= 0 else CorruptCheckpointError(
                    f"{self.path}: record at byte offset {sc.bad_offset} is damaged "
                    f"({sc.reason}); it was valid when the journal was opened, so the file "
                    f"was modified behind our back. Delete the directory {self.directory} "
                    "to start the job over."
                )
        except BaseException:
            buf.close()
            raise
        return self._records(buf, sc.spans, kinds)

    def _records(self, buf: mmap.mmap, spans: list[tuple[int, int]],
                 kinds: Collection[str] | None) -> Iterator[Record]:
        try:
            mv = memoryview(buf)
            try:
                for start, length in spans:
                    if kinds is not None and _kind_of(mv, start) not in kinds:
                        continue
                    body = mv[start:start + length]
                    try:
                        rec = _parse_body(
                            body, f"{self.path}: record at byte offset {start - _REC.size}"
                        )
                    finally:
                        body.release()
                    yield rec
            finally:
                mv.release()
        finally:
            buf.close()

    # -- job header ---------------------------------------------------------

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Write the job header ``DIR/job.json`` atomically (JSON-serialisable dict)."""
        try:
            data = json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"job header is not JSON-serialisable: {exc}") from None
        tmp = os.path.join(self.directory, f".{META_NAME}.{os.getpid()}.{os.urandom(16).hex()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.meta_path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CheckpointError(f"cannot write the job header {self.meta_path}: {exc}") from None
        if self.fsync:
            _fsync_dir(self.directory)

    def read_meta(self) -> dict[str, Any] | None:
        """The job header, or None if there is none."""
        try:
            with open(self.meta_path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read the job header {self.meta_path}: {exc}") from None
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise CorruptCheckpointError(
                f"{self.meta_path}: not valid JSON ({exc}); delete the directory "
                f"{self.directory} to start the job over"
            ) from None
        if not isinstance(meta, dict):
            raise CorruptCheckpointError(
                f"{self.meta_path}: expected a JSON object, found {type(meta).__name__}"
            )
        return meta
