"""Checkpoint store: the latest checkpoints of each task, in memory and on disk.

A task calls ``ctx.checkpoint(state)``; its node encodes the state into wire
*frames* (a msgpack payload, then raw numpy buffers) and sends them to the
coordinator, which keeps them here before it acknowledges. After a failover
``ctx.restore()`` gets the latest valid frames back; after ``clustervm run
--resume DIR`` a fresh :class:`CheckpointStore` on the same directory finds
everything that was acknowledged.

Reading a checkpoint never executes code: a file holds opaque byte frames, and
only the wire codec (msgpack, no pickle) interprets them.

On-disk layout: ``DIR/ckpt/<stem>.s<k>.ckpt``, a few *slot* files per key
(``keep + 1``: the newest ``keep`` versions, and one free slot the next write
reuses). ``<stem>`` is a readable prefix of the key (characters outside
``[A-Za-z0-9_-]`` written as ``%XX`` UTF-8 escapes, cut at 80 characters)
followed by ``~`` and a 20-hex-digit BLAKE2b hash of the whole key. The real
key and the version's seq are stored inside the file and checked on read.
(Files named ``<stem>.<seq:012d>.ckpt``, one per version, as clustervm wrote them
before, are read too, and deleted once superseded.) File format (little
endian)::

    0   8s   magic b"CVMCKPT\\n"
    8   u16  format version (1)
    10  u16  flags (0)
    12  u32  key length K
    16  u64  seq
    24  u32  number of frames N
    28  K    key, UTF-8 (surrogatepass)
        N*u64  length of each frame
        u32  CRC-32 of every byte above (header check: key discovery on resume
             reads only the header)
        ...  the frames, back to back
        u32  CRC-32 of every byte above (whole-file check)

The file size must equal exactly what the header announces, so truncation is
found before any frame is read; a flipped bit fails one of the two CRCs.

A write never touches the versions it keeps: it rewrites the free slot in place
(its magic zeroed first, then the frames, then the header, then ``fdatasync``), so
a crash mid-write leaves the kept versions whole and the slot marked as an
interrupted write, which is ignored. Rewriting a file in place needs no new
file, rename, unlink or directory sync: 2-3x less time and CPU than a new file
per version (benchmarks/RESULTS.md, 2026-12-03 ninth session). A slot is created
the first time atomically: a temp file ``.tmp.*`` in the same directory, write,
``fsync``, ``os.replace``, then ``fsync`` of the directory. Leftover temp files
(a crash mid-write) are never read and are removed when a store opens the
directory.
"""
from __future__ import annotations

import functools
import queue
import logging
import os
import re
import struct
import threading
import time
import zlib
from typing import Any, Callable, Sequence

from .errors import CheckpointError, CorruptCheckpointError

__all__ = ["CheckpointStore", "CheckpointStats", "WriteBehind", "delete_file", "file_version",
           "read_version", "versions_in"]

log = logging.getLogger(__name__)

MAGIC = b"CVMCKPT\n"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<8sHHIQI")  # magic, version, flags, keylen, seq, nframes
_U32 = struct.Struct("<I")
_SUFFIX = ".ckpt"
_TMP_PREFIX = ".tmp."
_NAME_RE = re.compile(r"^([A-Za-z0-9_%-]*~[0-9a-f]{20})\.(s[0-9]+|[0-9]{12,})\.ckpt$")
_INTERRUPTED = bytes(len(MAGIC))   # the magic of a slot whose rewrite did not finish
_STEM_PREFIX_MAX = 80
_MAX_SEQ = 2**64 - 1
_LOCK_STRIPES = 64


def _key_bytes(key: str) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"checkpoint key must be a str, not {type(key).__name__}")
    return key.encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=4096)
def safe_stem(key: str) -> str:
    """The file-name stem of ``key``: a readable escaped prefix + ``~`` + hash.

    Unique per key (by the hash), at most 101 characters, and made only of
    ``[A-Za-z0-9_%~-]`` so it is safe on every file system and never contains
    the ``.`` that separates the stem from the seq. (Cached: a checkpoint's write
    asked for it three times, ~28 us each, profiled at the coordinator.)
    """
    raw = _key_bytes(key)
    out: list[str] = []
    n = 0
    for b in raw:
        c = chr(b)
        piece = c if (c.isascii() and (c.isalnum() or c in "_-")) else f"%{b:02X}"
        if n + len(piece) > _STEM_PREFIX_MAX:
            break
        out.append(piece)
        n += len(piece)
    import hashlib   # here: 4 ms of a rank 0's start otherwise (its OpenSSL binding)
    digest = hashlib.blake2b(raw, digest_size=10).hexdigest()
    return "".join(out) + "~" + digest


def _fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename/create/unlink in it survives a power cut."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _as_bytes_view(frame: object, i: int) -> memoryview:
    try:
        mv = memoryview(frame)  # type: ignore[arg-type]
    except TypeError:
        raise CheckpointError(
            f"frame {i} is a {type(frame).__name__}, not a bytes-like object; "
            "pass the frames produced by the wire codec (bytes, bytearray, memoryview)"
        ) from None
    if not mv.c_contiguous:
        raise CheckpointError(
            f"frame {i} is not C-contiguous; pass a contiguous buffer (e.g. numpy.ascontiguousarray)"
        )
    return mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv


def _encode_header(kb: bytes, seq: int, lengths: Sequence[int]) -> bytes:
    head = _FIXED.pack(MAGIC, FORMAT_VERSION, 0, len(kb), seq, len(lengths))
    head += kb + struct.pack(f"<{len(lengths)}Q", *lengths)
    return head + _U32.pack(zlib.crc32(head))


def _read_exact(f, n: int, path: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptCheckpointError(f"{path}: truncated while reading {what}")
    return data


def _read_header(f, path: str, size: int) -> tuple[str, int, list[int], bytes]:
    """Parse and check the header; return (key, seq, frame lengths, raw header bytes)."""
    if size < _FIXED.size + 4:
        raise CorruptCheckpointError(f"{path}: truncated: {size} bytes, smaller than a header")
    fixed = _read_exact(f, _FIXED.size, path, "the header")
    magic, version, _flags, keylen, seq, nframes = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise CorruptCheckpointError(f"{path}: bad magic {magic!r}: not a clustervm checkpoint")
    if _FIXED.size + keylen + 8 * nframes + 8 > size:
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt header (key length {keylen}, {nframes} frames "
            f"do not fit in {size} bytes)"
        )
    rest = _read_exact(f, keylen + 8 * nframes + 4, path, "the header")
    (hcrc,) = _U32.unpack_from(rest, keylen + 8 * nframes)
    if zlib.crc32(rest[: keylen + 8 * nframes], zlib.crc32(fixed)) != hcrc:
        raise CorruptCheckpointError(f"{path}: header checksum mismatch")
    if version != FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"{path}: unknown format version {version} (this clustervm reads version "
            f"{FORMAT_VERSION}; was it written by a newer clustervm?)"
        )
    try:
        key = rest[:keylen].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise CorruptCheckpointError(f"{path}: key is not valid UTF-8 ({exc})") from None
    lengths = list(struct.unpack_from(f"<{nframes}Q", rest, keylen))
    return key, seq, lengths, fixed + rest


def _read_checkpoint(path: str, expect_key: str | None = None) -> tuple[str, int, list[bytes]]:
    """Read and verify one checkpoint file: (key, seq, frames).

    Raises CorruptCheckpointError (message: file path and reason) if the file
    is truncated, has extra bytes, fails a checksum, or belongs to another key.
    """
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path}: file vanished") from None
    except OSError as exc:
        raise CorruptCheckpointError(f"{path}: cannot open: {exc}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            key, seq, lengths, header = _read_header(f, path, size)
            expected = len(header) + sum(lengths) + 4
            if size < expected:
                raise CorruptCheckpointError(
                    f"{path}: truncated: {size} bytes, the header announces {expected}"
                )
            if size > expected:
                raise CorruptCheckpointError(
                    f"{path}: {size - expected} unexpected bytes after the end "
                    f"(file has {size} bytes, the header announces {expected})"
                )
            crc = zlib.crc32(header)  # the whole-file CRC covers the header too
            frames: list[bytes] = []
            for i, n in enumerate(lengths):
                data = _read_exact(f, n, path, f"frame {i}")
                crc = zlib.crc32(data, crc)
                frames.append(data)
            (fcrc,) = _U32.unpack(_read_exact(f, 4, path, "the trailing checksum"))
        except OSError as exc:
            raise CorruptCheckpointError(f"{path}: read error: {exc}") from None
    if crc != fcrc:
        raise CorruptCheckpointError(f"{path}: checksum mismatch (data damaged)")
    if expect_key is not None and key != expect_key:
        raise CorruptCheckpointError(
            f"{path}: holds key {key!r}, expected {expect_key!r} (misplaced file)"
        )
    return key, seq, frames


def file_version(path: str | os.PathLike) -> tuple[str, int] | None:
    """The key and seq a checkpoint file holds (only its header is read), or None for a
    slot whose rewrite was interrupted. Raises CorruptCheckpointError."""
    path = os.fspath(path)
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size >= len(_INTERRUPTED) and f.read(len(_INTERRUPTED)) == _INTERRUPTED:
                return None
            f.seek(0)
            key, seq, _lengths, _ = _read_header(f, path, size)
    except OSError as exc:
        raise CorruptCheckpointError(f"{path}: cannot read: {exc}") from None
    return key, seq


def versions_in(directory: str | os.PathLike) -> list[tuple[str, int, str]]:
    """``(key, seq, path)`` of every checkpoint version in store directory ``directory``
    (its ``ckpt`` folder), from their headers only; without touching anything (another
    process may write there: slots being rewritten, temp files and damaged headers are
    left out)."""
    path = os.path.join(os.fspath(directory), "ckpt")
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CheckpointError(f"cannot list {path}: {exc}") from None
    found = []
    for name in names:
        if _NAME_RE.match(name) is None:
            continue
        full = os.path.join(path, name)
        try:
            got = file_version(full)
        except CorruptCheckpointError:
            continue
        if got is not None:
            found.append((got[0], got[1], full))
    return found


def read_version(path: str, key: str, seq: int) -> list[bytes]:
    """The frames of version ``seq`` of ``key`` in file ``path``, verified. Raises
    CorruptCheckpointError (the file, and why) if it is damaged or now holds another."""
    _key, fseq, frames = _read_checkpoint(path, expect_key=key)
    if fseq != seq:
        raise CorruptCheckpointError(f"{path}: holds seq {fseq}, expected {seq} (rewritten)")
    return frames


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> int:
    """Write all of ``data`` at ``offset`` (a write may be partial); the offset after it."""
    mv = memoryview(data).cast("B")
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv, offset = mv[n:], offset + n
    return offset


_fdatasync = getattr(os, "fdatasync", os.fsync)


def delete_file(path: str) -> None:
    """Delete a checkpoint file; one already gone is fine, a failure is logged."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot delete the checkpoint file %s: %s", path, exc)

#: a checkpoint frame as the store keeps it
Frame = bytes | memoryview


class CheckpointStats:
    """Counters of a :class:`CheckpointStore` (since it was created). A plain class, not a
    dataclass: ``dataclasses`` (with ``inspect``, ``ast``, ``dis``) cost rank 0 7-13 ms
    of CPU at every start, measured with ``-X importtime``."""

    __slots__ = ("saved", "ignored", "loaded", "read", "corrupt", "pruned", "dropped",
                 "bytes_written")

    def __init__(self) -> None:
        self.saved = 0          #: checkpoints stored
        self.ignored = 0        #: saves ignored because their seq was not newer
        self.loaded = 0         #: successful loads
        self.read = 0           #: of them, read from a file (not held in memory)
        self.corrupt = 0        #: corrupt/truncated files found (each counted once)
        self.pruned = 0         #: old versions given up (keep)
        self.dropped = 0        #: keys dropped
        self.bytes_written = 0  #: bytes written to disk (whole files)

    def __repr__(self) -> str:
        return "CheckpointStats(" + ", ".join(f"{n}={getattr(self, n)}"
                                              for n in self.__slots__) + ")"


class CheckpointStore:
    """Latest checkpoints per key, in memory and (optionally) on disk.

    ``directory=None``: memory only (the newest frames of each key).
    With a directory, every save is also written to ``DIR/ckpt`` before
    :meth:`save` returns (durably if ``fsync``), the newest ``keep`` versions
    per key are kept on disk, and a store created later on the same directory
    (``--resume``) finds them. Thread-safe.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        keep: int = 2,
        fsync: bool = True,
    ) -> None:
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, not {keep!r}")
        self.keep = keep
        self.fsync = fsync
        self.stats = CheckpointStats()
        self._lock = threading.Lock()  # guards the dicts and stats below
        self._stripes = [threading.Lock() for _ in range(_LOCK_STRIPES)]  # serialise per key
        # frames are bytes, or memoryviews of buffers given away (save(copy=False))
        self._mem: dict[str, tuple[int, list[Frame]]] = {}
        self._prev: dict[str, tuple[int, list[Frame]]] = {}    # save(keep_previous=True)
        # On disk, indexed by stem: {stem: {seq: path}} (the versions kept), {stem: key}
        self._disk: dict[str, dict[int, str]] = {}
        self._slots: dict[str, set[str]] = {}   # {stem: its slot files, kept or free}
        self._stem_key: dict[str, str] = {}
        self._bad: set[str] = set()  # paths already reported corrupt
        # Without ``fsync`` (a write-behind store): what :meth:`sync` makes durable and
        # what it must keep meanwhile. Written since the last sync: files, and whether
        # the directory changed (a slot created or deleted).
        self._dirty: set[str] = set()
        self._dir_dirty = False
        #: the versions the last sync made durable, as its record names them: {stem:
        #: (key, {seq: path})}. Their files are neither rewritten nor deleted until the
        #: next sync's record is durable (a power cut meanwhile goes back to them).
        self._pins: dict[str, tuple[str, dict[int, str]]] = {}
        self._pinned: set[str] = set()          # their paths
        self._deferred: set[str] = set()        # pinned files to delete after the next sync
        self._sizes: dict[str, int] = {}        # slot file sizes this store made
        self.directory: str | None = None
        self.path: str | None = None  # DIR/ckpt
        if directory is not None:
            self.directory = os.fspath(directory)
            self.path = os.path.join(self.directory, "ckpt")
            try:
                created = not os.path.isdir(self.path)
                os.makedirs(self.path, exist_ok=True)
                if created and fsync:
                    _fsync_dir(self.directory)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot create the checkpoint directory {self.path}: {exc}; "
                    "choose a writable directory"
                ) from None
            self._scan()

    # -- disk index ---------------------------------------------------------

    def _scan(self) -> None:
        assert self.path is not None
        try:
            names = os.listdir(self.path)
        except OSError as exc:
            raise CheckpointError(f"cannot list {self.path}: {exc}") from None
        for name in sorted(names):
            full = os.path.join(self.path, name)
            if name.startswith(_TMP_PREFIX):
                # A crash mid-write: never renamed, so never acknowledged.
                log.info("removing leftover temp file %s (interrupted checkpoint write)", full)
                try:
                    os.unlink(full)
                except OSError:
                    pass
                continue
            m = _NAME_RE.match(name)
            if m is None:
                continue
            stem, tag = m.group(1), m.group(2)
            if tag.startswith("s"):
                self._slots.setdefault(stem, set()).add(full)
            try:
                found = file_version(full)
                if found is None:   # never acknowledged: the slot is free
                    log.info("checkpoint slot %s: its last write was interrupted (it was "
                             "never acknowledged); it will be reused", full)
                    continue
                key, seq = found
                if safe_stem(key) != stem:
                    raise CorruptCheckpointError(
                        f"{full}: holds key {key!r}, not this file name's (misplaced file)")
                if not tag.startswith("s") and int(tag) != seq:
                    raise CorruptCheckpointError(f"{full}: holds seq {seq}, its name says {tag}")
            except CorruptCheckpointError as exc:
                self._bad.add(full)
                self.stats.corrupt += 1
                log.warning("corrupt checkpoint file skipped: %s", exc)
                continue
            self._disk.setdefault(stem, {}).setdefault(seq, full)
            self._stem_key[stem] = key

    def _stripe(self, key: str) -> threading.Lock:
        return self._stripes[hash(key) % _LOCK_STRIPES]

    def _newest_seq(self, key: str, stem: str | None) -> int | None:
        best = None
        if key in self._mem:
            best = self._mem[key][0]
        if stem is not None and self._disk.get(stem):
            d = max(self._disk[stem])
            best = d if best is None else max(best, d)
        return best

    # -- API ----------------------------------------------------------------

    def save(self, key: str, seq: int, frames: Sequence[bytes | memoryview],
             write: bool = True, keep_previous: bool = False, copy: bool = True) -> None:
        """Store ``frames`` as checkpoint ``seq`` of ``key``; durable on return.

        ``seq`` is the writer's increasing checkpoint number for the key; a
        save whose seq is not newer than the stored one is ignored (a
        duplicate resent after a failover). Raises CheckpointError if the
        file cannot be written (nothing is stored then). ``write=False``:
        keep it in memory only, for :meth:`write` to put on disk later.
        ``keep_previous``: the one it replaces stays in memory too (a checkpoint
        group may go back to it: ``load(key, upto)``). ``copy=False``: the frames are
        given away (a buffer nobody changes or reuses, such as a message's receive
        buffer) and kept without a copy.
        """
        kb = _key_bytes(key)
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"seq must be an int in [0, 2**64), not {seq!r}")
        views = [_as_bytes_view(fr, i) for i, fr in enumerate(frames)]
        stem = safe_stem(key) if self.path is not None else None
        with self._stripe(key):
            with self._lock:
                newest = self._newest_seq(key, stem)
                if newest is not None and seq <= newest:
                    self.stats.ignored += 1
                    log.debug("checkpoint %r seq %d ignored: %d is stored", key, seq, newest)
                    return
            # bytes are immutable: keep them as they are, copy everything else unless
            # given away (the caller may reuse a receive buffer).
            owned = [fr if type(fr) is bytes else mv if not copy else mv.tobytes()
                     for fr, mv in zip(frames, views)]
            if stem is not None and write:
                self._write_version(kb, key, stem, seq, owned)
            with self._lock:
                if keep_previous and key in self._mem:
                    self._prev[key] = self._mem[key]
                self._mem[key] = (seq, owned)
                self.stats.saved += 1

    def write(self, key: str, seq: int, frames: Sequence[bytes]) -> None:
        """Put checkpoint ``seq`` of ``key`` (kept by ``save(..., write=False)``) on disk,
        durably, unless a newer version is there already or the key was dropped since
        (a write behind the run). Raises CheckpointError if it cannot be written."""
        kb = _key_bytes(key)
        assert self.path is not None, "write() needs a store with a directory"
        stem = safe_stem(key)
        with self._stripe(key):
            with self._lock:
                versions = self._disk.get(stem)
                if key not in self._mem or (versions and max(versions) >= seq):
                    return
            self._write_version(kb, key, stem, seq, list(frames))

    def _write_version(self, kb: bytes, key: str, stem: str, seq: int,
                       frames: list[Frame]) -> None:
        """Write one version into a free slot of the key (a new slot if it has none) and
        forget the versions beyond ``keep`` (under the key's stripe)."""
        with self._lock:
            versions = self._disk.setdefault(stem, {})
            slots = self._slots.setdefault(stem, set())
            free = sorted(slots.difference(versions.values(), self._pinned))
        if free:
            path = free[0]
            written = self._rewrite(path, kb, seq, frames)
        else:
            taken = {os.path.basename(p) for p in slots}
            k = next(k for k in range(len(slots) + 1) if f"{stem}.s{k}{_SUFFIX}" not in taken)
            path = os.path.join(self.path or "", f"{stem}.s{k}{_SUFFIX}")
            written = self._create(path, kb, seq, frames)
        with self._lock:
            slots.add(path)
            self.stats.bytes_written += written
            versions[seq] = path
            self._stem_key[stem] = key
            self._bad.discard(path)
            if not self.fsync:
                self._dirty.add(path)
            old = sorted(versions, reverse=True)[self.keep:]
            released = [versions.pop(s) for s in old]
            self.stats.pruned += len(old)
            # a version in a file of its own (the layout before slots), and free slots
            # beyond one, are deleted (a pinned one after the next sync)
            doomed = [p for p in released if p not in slots]
            for p in sorted(slots.difference(versions.values(), self._pinned))[1:]:
                slots.discard(p)
                doomed.append(p)
            doomed = self._not_pinned(doomed)
        for p in doomed:
            delete_file(p)
            with self._lock:
                self._bad.discard(p)

    def _encode(self, kb: bytes, seq: int, frames: list[Frame]) -> tuple[bytes, bytes, int]:
        """A version's header and trailer, and its file's size."""
        header = _encode_header(kb, seq, [len(fr) for fr in frames])
        crc = zlib.crc32(header)
        for fr in frames:
            crc = zlib.crc32(fr, crc)
        return header, _U32.pack(crc), len(header) + sum(len(fr) for fr in frames) + 4

    def _failed(self, path: str, exc: OSError) -> CheckpointError:
        return CheckpointError(
            f"cannot write checkpoint {path}: {exc}; check free space and permissions "
            f"of {self.path}")

    def _create(self, final: str, kb: bytes, seq: int, frames: list[Frame]) -> int:
        """A new slot file holding one version, created atomically; its size."""
        assert self.path is not None
        tmp = os.path.join(self.path, f"{_TMP_PREFIX}{os.getpid()}.{os.urandom(16).hex()}")
        header, trailer, total = self._encode(kb, seq, frames)
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                for fr in frames:
                    f.write(fr)
                f.write(trailer)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._failed(final, exc) from None
        if self.fsync:
            _fsync_dir(self.path)
        else:
            with self._lock:
                self._dir_dirty = True
        self._sizes[final] = total
        return total

    def _rewrite(self, path: str, kb: bytes, seq: int, frames: list[Frame]) -> int:
        """Put one version into the free slot ``path``, in place; its size. The magic is
        zeroed first and the header written last: a crash in between leaves a slot that
        reads as an interrupted write (the slot stays free if this fails)."""
        header, trailer, total = self._encode(kb, seq, frames)
        try:
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:       # deleted behind the store's back: made anew
                return self._create(path, kb, seq, frames)
            try:
                _pwrite_all(fd, _INTERRUPTED, 0)
                at = len(header)
                for fr in frames:
                    at = _pwrite_all(fd, fr, at)
                _pwrite_all(fd, trailer, at)
                if self._sizes.get(path) != total:     # as a rule the slot's size is
                    os.ftruncate(fd, total)
                    self._sizes[path] = total
                _pwrite_all(fd, header, 0)
                if self.fsync:
                    _fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._failed(path, exc) from None
        return total

    def newest(self, key: str) -> int | None:
        """The seq of the newest checkpoint of ``key`` held (in memory or on disk)."""
        _key_bytes(key)
        with self._lock:
            return self._newest_seq(key, safe_stem(key) if self.path is not None else None)

    def seqs(self, key: str) -> set[int]:
        """The seqs of every checkpoint of ``key`` held, in memory or on disk (not
        checked: a corrupt file is found by :meth:`load`)."""
        _key_bytes(key)
        with self._lock:
            held = {hit[0] for hit in (self._mem.get(key), self._prev.get(key)) if hit}
            if self.path is not None:
                held.update(self._disk.get(safe_stem(key), {}))
            return held

    def load(self, key: str, upto: int | None = None) -> tuple[int, list[Frame]] | None:
        """The latest valid checkpoint of ``key`` as ``(seq, frames)``, or None;
        with ``upto``, the latest whose seq is at most that.

        Memory first; then the disk versions, newest first. A corrupt or
        truncated file is reported with a warning (file and reason) and the
        previous version is used.
        """
        _key_bytes(key)
        with self._stripe(key):
            with self._lock:
                for hit in (self._mem.get(key), self._prev.get(key)):
                    if hit is not None and (upto is None or hit[0] <= upto):
                        self.stats.loaded += 1
                        return hit[0], list(hit[1])
                if self.path is None:
                    return None
                stem = safe_stem(key)
                versions = sorted(((s, p) for s, p in self._disk.get(stem, {}).items()
                                   if upto is None or s <= upto), reverse=True)
            for seq, path in versions:
                with self._lock:
                    if path in self._bad:
                        continue
                try:
                    fkey, fseq, frames = _read_checkpoint(path, expect_key=key)
                    if fseq != seq:
                        raise CorruptCheckpointError(
                            f"{path}: holds seq {fseq}, expected {seq} (changed on disk)"
                        )
                except CorruptCheckpointError as exc:
                    with self._lock:
                        self._bad.add(path)
                        self.stats.corrupt += 1
                    log.warning(
                        "corrupt checkpoint of %r skipped, trying the previous version: %s",
                        key, exc,
                    )
                    continue
                with self._lock:
                    if upto is None:
                        self._mem[key] = (seq, frames)
                    self._stem_key[stem] = key
                    self.stats.loaded += 1
                    self.stats.read += 1
                return seq, list(frames)
            if versions:
                log.warning(
                    "no valid checkpoint of %r: all %d version(s) on disk are corrupt",
                    key, len(versions),
                )
            return None

    def release(self, key: str, seq: int) -> None:
        """Let go of the frames of version ``seq`` of ``key`` held in memory once that
        version is on disk (it is read from its file if ever loaded again); a newer one
        kept meanwhile stays."""
        if self.path is None:
            return
        stem = safe_stem(key)
        with self._lock:
            on_disk = self._disk.get(stem, {})
            if seq not in on_disk:
                return
            hit = self._mem.get(key)
            if hit is not None and hit[0] == seq:
                del self._mem[key]
                if key in self._prev and self._prev[key][0] in on_disk:
                    del self._prev[key]

    def drop(self, key: str) -> None:
        """Forget ``key`` (its task finished): memory and every file on disk."""
        _key_bytes(key)
        with self._stripe(key):
            with self._lock:
                self._prev.pop(key, None)
                found = self._mem.pop(key, None) is not None
                paths: list[str] = []
                if self.path is not None:
                    stem = safe_stem(key)
                    paths = sorted(set(self._disk.pop(stem, {}).values())
                                   | self._slots.pop(stem, set()))
                    self._stem_key.pop(stem, None)
                    for p in paths:
                        self._bad.discard(p)
                if found or paths:
                    self.stats.dropped += 1
                paths = self._not_pinned(paths)
            self._delete(paths)

    def _not_pinned(self, paths: list[str]) -> list[str]:
        """Of the files ``paths`` to delete, those the last sync did not pin; the pinned
        ones are deleted after the next sync (under ``self._lock``)."""
        keep = [p for p in paths if p in self._pinned]
        self._deferred.update(keep)
        return [p for p in paths if p not in self._pinned]

    def _delete(self, paths: list[str]) -> None:
        """Delete the files ``paths`` (durably if ``fsync``, else at the next
        :meth:`sync`)."""
        for p in paths:
            delete_file(p)
        if paths and self.fsync:
            assert self.path is not None
            _fsync_dir(self.path)
        elif paths:
            with self._lock:
                self._dir_dirty = True

    def drop_after(self, key: str, seq: int) -> None:
        """Forget the checkpoints of ``key`` newer than ``seq`` (its checkpoint group went
        back to ``seq``: they are of a course it no longer takes), in memory and on disk."""
        _key_bytes(key)
        voided: list[str] = []
        with self._stripe(key):
            with self._lock:
                for held in (self._prev, self._mem):
                    hit = held.get(key)
                    if hit is not None and hit[0] > seq:
                        del held[key]
                if key not in self._mem and key in self._prev:
                    self._mem[key] = self._prev.pop(key)
                paths: list[str] = []
                if self.path is not None:
                    stem = safe_stem(key)
                    versions = self._disk.get(stem, {})
                    paths = [versions.pop(s) for s in sorted(versions) if s > seq]
                    # and the free slots, whose versions are not known here: deleted, so
                    # that --resume cannot find any of them
                    slots = self._slots.get(stem, set())
                    paths += sorted(slots.difference(versions.values()).difference(paths))
                    for p in paths:
                        self._bad.discard(p)
                    # a pinned one stays until the next sync (a power cut before it goes
                    # back to it) but is marked unfinished now: a resume of this boot
                    # does not find it
                    voided = [p for p in paths if p in self._pinned]
                    paths = self._not_pinned(paths)
                    for p in paths:
                        slots.discard(p)
            for p in voided:
                self._void(p)
            self._delete(paths)

    def _void(self, path: str) -> None:
        """Mark the version in ``path`` unfinished (its magic zeroed): never read again."""
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                _pwrite_all(fd, _INTERRUPTED, 0)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot void the checkpoint %s: %s", path, exc)
            return
        with self._lock:
            self._dirty.add(path)

    # -- syncs (a store without ``fsync``) -----------------------------------

    @property
    def dirty(self) -> bool:
        """Has anything been written or deleted since the last :meth:`sync`?"""
        with self._lock:
            return bool(self._dirty or self._dir_dirty or self._deferred)

    def sync(self, commit: Callable[[dict[str, list[int]], list[str]], None] | None = None,
             full: bool = False) -> None:
        """Make the versions kept now durable (``fdatasync``; of the directory too if a
        file was created or deleted) and pin them in place of the last sync's.

        ``commit(kept, gone)`` records that durably before the old pins are let go (the
        job journal's ``synced`` record): ``kept`` maps each key whose kept versions
        changed since the last sync (every key if ``full``) to their seqs, ``gone`` lists
        the keys that have none any more. Until then the last sync's versions are
        neither rewritten nor deleted, so a power cut at any moment finds the versions
        of the last recorded sync whole. ``full`` syncs every version kept, written by
        this store or found on disk (a resume's first sync). A store with ``fsync`` pins
        nothing (its writes are durable as they are made). Raises CheckpointError if a
        file cannot be synced or ``commit`` fails (the old pins stay)."""
        if self.path is None:
            return
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            kept = {stem: (self._stem_key[stem], dict(v))
                    for stem, v in self._disk.items() if v and stem in self._stem_key}
        try:
            paths = {p for _, v in kept.values() for p in v.values()}
            for path in sorted(paths if full else dirty & paths):
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    _fdatasync(fd)
                finally:
                    os.close(fd)
            if dir_dirty or full:
                _fsync_dir(self.path)
        except OSError as exc:
            with self._lock:
                self._dirty |= dirty
                self._dir_dirty |= dir_dirty
            raise CheckpointError(f"cannot sync the checkpoints in {self.path}: {exc}") from None
        changed = {key: sorted(v) for stem, (key, v) in kept.items()
                   if full or self._pins.get(stem) != (key, v)}
        gone = sorted(key for stem, (key, _) in self._pins.items() if stem not in kept)
        if commit is not None:
            commit(changed, gone)
        if self.fsync:
            return      # every write is synced: nothing to keep for a power cut
        with self._lock:
            self._pins = kept
            self._pinned = set(paths)
            released = sorted(self._deferred - self._pinned)
            self._deferred &= self._pinned
        for p in released:
            delete_file(p)
        if released:
            with self._lock:
                self._dir_dirty = True
                for p in released:
                    for slots in self._slots.values():
                        slots.discard(p)

    def restrict(self, allowed: dict[str, set[int]]) -> int:
        """Keep only the versions ``allowed`` names (key -> seqs): the others are marked
        unfinished or deleted, on disk too. After a power cut: a resume goes back to the
        last sync's versions (a newer one may have reached the disk while another that
        it depends on did not). Returns how many versions were given up."""
        if self.path is None:
            return 0
        voided: list[str] = []
        doomed: list[str] = []
        with self._lock:
            for stem, versions in self._disk.items():
                key = self._stem_key.get(stem)
                ok = allowed.get(key, set()) if key is not None else set()
                for seq in [s for s in versions if s not in ok]:
                    path = versions.pop(seq)
                    (voided if path in self._slots.get(stem, ()) else doomed).append(path)
            self._mem.clear()
            self._prev.clear()
        for p in voided:
            self._void(p)
        self._delete(doomed)
        return len(voided) + len(doomed)

    def keys(self) -> list[str]:
        """Keys that have a checkpoint (in memory, or on disk with a readable header)."""
        with self._lock:
            ks = set(self._mem)
            ks.update(k for s, k in self._stem_key.items() if self._disk.get(s))
        return sorted(ks)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._mem:
                return True
            if self.path is None:
                return False
            stem = safe_stem(key)
            return bool(self._disk.get(stem)) and self._stem_key.get(stem) == key

    def __repr__(self) -> str:
        where = self.path if self.path is not None else "memory"
        return f"<CheckpointStore {where} keys={len(self.keys())} keep={self.keep}>"


class WriteBehind:
    """Writes a store's checkpoints to its directory in a thread of its own, so the
    coordinator never waits for a disk: ``write(tid, inc, seq, blob)`` returns at once;
    ``done(tid, inc, seq, error)`` is called from the thread once the file is written
    (``error`` None) or could not be written (a CheckpointError). Writes are done in
    the order they came, except that a ``skippable`` checkpoint whose task has a newer
    one queued behind it is skipped (no ``done``): the disk then only needs each
    task's newest. (A checkpoint group's are not skipped: on ``--resume`` its members
    go back to the newest checkpoint they all have on disk.)
    ``drop(tid)`` forgets a task's checkpoints after the writes queued before it;
    ``drop_after(tid, seq)`` those newer than ``seq``, likewise.

    Written means durable with a store that syncs every write (``fsync``). Otherwise
    a written file survives the death of any process at once, and at most
    ``sync_every_s`` after a write the thread syncs the store and ``commit`` records
    what that made durable (:meth:`CheckpointStore.sync`), which a power cut goes back
    to. ``also_dirty()`` says whether something else the sync makes durable (the
    journal, through ``commit``) was written: :meth:`poke` after writing it."""

    def __init__(self, store: CheckpointStore,
                 done: Callable[[int, int, int, CheckpointError | None], None],
                 sync_every_s: float = 0.5,
                 commit: Callable[[dict[str, list[int]], list[str]], None] | None = None,
                 also_dirty: Callable[[], bool] | None = None) -> None:
        self.store = store
        self._done = done
        self._every = sync_every_s
        self._commit = commit
        self._also_dirty = also_dirty
        self._poked = False     # a poke is queued, or a sync is due: the next need not be
        self._queue: queue.SimpleQueue[tuple[str, int, int, int, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cvm-ckpt-writer", daemon=True)
        self._thread.start()

    def write(self, tid: int, inc: int, seq: int, blob: bytes, skippable: bool = True) -> None:
        self._queue.put(("write" if skippable else "write-all", tid, inc, seq, blob))

    def drop(self, tid: int) -> None:
        self._queue.put(("drop", tid, 0, 0, None))

    def drop_after(self, tid: int, seq: int) -> None:
        self._queue.put(("drop-after", tid, 0, seq, None))

    def poke(self) -> None:
        """Something ``also_dirty`` watches was written: sync within ``sync_every_s``
        (one wake-up of the thread for all the pokes before that sync)."""
        if not self._poked and not self.store.fsync:
            self._poked = True
            self._queue.put(("poke", 0, 0, 0, None))

    def close(self, timeout: float) -> bool:
        """Finish what is queued and sync (at most ``timeout`` seconds); True if all was
        done."""
        self._queue.put(("stop", 0, 0, 0, None))
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("checkpoint writer: still writing after %.0f s; leaving it", timeout)
            return False
        return True

    def _batch(self, timeout: float | None) -> list[tuple[str, int, int, int, Any]]:
        """What is queued (waiting for one item at most ``timeout`` seconds), without the
        writes a later write of the same task supersedes."""
        try:
            items = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        newest: dict[int, int] = {}
        for i, (op, tid, *_rest) in enumerate(items):
            if op == "write":
                newest[tid] = i
            elif op == "drop":
                newest.pop(tid, None)
        return [item for i, item in enumerate(items)
                if item[0] != "write" or newest.get(item[1]) == i]

    def _run(self) -> None:
        due: float | None = None     # when to sync what was written since the last sync
        while True:
            timeout = None if due is None else max(0.0, due - time.monotonic())
            for op, tid, inc, seq, blob in self._batch(timeout):
                if op == "stop":
                    self._sync()
                    return
                if op != "poke":
                    self._do(op, tid, inc, seq, blob)
                del blob            # not held while this thread waits (a big state)
            if self.store.fsync:
                continue
            now = time.monotonic()
            if due is None and (self.store.dirty or (self._also_dirty is not None
                                                     and self._also_dirty())):
                due = now + self._every
            if due is not None and now >= due:
                self._sync()
                due = None

    def _sync(self) -> None:
        if self.store.fsync:
            return
        self._poked = False     # what is written from here on pokes again
        try:
            self.store.sync(self._commit)
        except CheckpointError as exc:
            log.error("checkpoint writer: %s", exc)
        except Exception:   # noqa: BLE001 - the writer must outlive one bad call
            log.exception("checkpoint writer: sync failed")

    def _do(self, op: str, tid: int, inc: int, seq: int, blob: Any) -> None:
        try:
            if op == "drop":
                self.store.drop(str(tid))
                return
            if op == "drop-after":
                self.store.drop_after(str(tid), seq)
                return
            try:
                self.store.write(str(tid), seq, [blob])
            except CheckpointError as exc:
                self._done(tid, inc, seq, exc)
            else:
                self._done(tid, inc, seq, None)
        except Exception:   # noqa: BLE001 - the writer must outlive one bad call
            log.exception("checkpoint writer: %s of task %d failed", op, tid)
