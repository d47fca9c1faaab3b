"""Main's output, kept beside the job so that none of it is lost at the job's end.

Rank 0's output reaches ``clustervm run`` through Open MPI: a pipe to the daemon on
rank 0's host, then that daemon's link to mpiexec. When a host is lost just after
``main`` returned, PRRTE may end the job while the last lines are still on their way,
and they are gone, though the job finished (seen once: a heat2d drill whose result line
never arrived, exit status 0). So under the supervisor rank 0 also keeps what it
writes, in the job's directory (:func:`keep`), the supervisor relays mpiexec's output
itself (:class:`Relay`), and after the job it prints what never arrived
(:func:`undelivered`). A relay of ``clustervm run`` also takes out the line in which
rank 0 on another host says it is past MPI_Init (:meth:`Relay.watch_for`).
"""
from __future__ import annotations

import io
import logging
import os
import sys
import threading
from typing import IO, BinaryIO

log = logging.getLogger(__name__)

#: CLUSTERVM_OUTPUT_DIR, set by the supervisor: rank 0 keeps its output there.
OUTPUT_DIR_ENV = "CLUSTERVM_OUTPUT_DIR"
#: The files rank 0 keeps, one per stream.
KEPT = {"stdout": "main.stdout", "stderr": "main.stderr"}
#: Output kept (per stream, either side) up to this many bytes; past it there is no check.
LIMIT = 64 << 20
#: A line start held while a relay looks for its token, at most (binary output: passed on).
_HELD_MAX = 1 << 16


class Tee(io.TextIOBase):
    """A text stream that writes to ``stream`` and, encoded as ``stream`` would, to
    ``file`` (up to :data:`LIMIT` bytes)."""

    def __init__(self, stream: IO[str], file: BinaryIO) -> None:
        super().__init__()
        self.stream, self.file = stream, file
        self.encoding_ = getattr(stream, "encoding", None) or "utf-8"
        self.kept = 0

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        if self.kept < LIMIT:
            data = text.encode(self.encoding_, "backslashreplace")
            self.kept += len(data)
            try:
                self.file.write(data)
            except OSError:
                self.kept = LIMIT
        return n

    def flush(self) -> None:
        self.stream.flush()
        try:
            self.file.flush()
        except OSError:
            pass

    def sync(self) -> None:
        """Flush both, and the file to its storage (a shared one caches until then)."""
        self.flush()
        try:
            os.fsync(self.file.fileno())
        except OSError:
            pass

    @property
    def encoding(self) -> str:   # type: ignore[override]
        return self.encoding_

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def buffer(self) -> BinaryIO:
        """The underlying stream's bytes (written there only: not kept)."""
        return self.stream.buffer   # type: ignore[attr-defined]


def keep(directory: str) -> None:
    """Rank 0: from now on, write ``sys.stdout`` and ``sys.stderr`` to files in
    ``directory`` too (:data:`KEPT`)."""
    for name, filename in KEPT.items():
        try:
            file = open(os.path.join(directory, filename), "wb")   # noqa: SIM115 - for the job
        except OSError as exc:
            log.warning("cannot keep main's %s in %s: %s", name, directory, exc)
            continue
        setattr(sys, name, Tee(getattr(sys, name), file))


def sync_kept() -> None:
    """Rank 0, before it says the job is done: what it kept is on the storage."""
    for name in KEPT:
        stream = getattr(sys, name)
        if isinstance(stream, Tee):
            stream.sync()
        else:
            stream.flush()


class Relay:
    """Copies a pipe (mpiexec's stdout or stderr) to ``sink`` in a thread of its own,
    and remembers what passed (up to :data:`LIMIT` bytes).

    ``token`` (:meth:`watch_for`): the first line that holds it is taken out, and
    :attr:`found` is set (how rank 0 on another host says it is past MPI_Init,
    clustervm.launcher). Until then output is passed on by whole lines only."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.seen = bytearray()
        self.complete = True
        self.found = threading.Event()
        self._token: bytes | None = None
        self._held = b""            # the start of a line, while the token is looked for
        self._skip_line = False     # the token's line goes on in the next read
        self._thread: threading.Thread | None = None

    def watch_for(self, token: bytes) -> None:
        """Take the first line holding ``token`` out, and set :attr:`found` (before
        :meth:`start`)."""
        self._token = token

    def start(self, pipe: BinaryIO) -> None:
        self._thread = threading.Thread(target=self._copy, args=(pipe.fileno(), pipe),
                                        name="cvm-relay", daemon=True)
        self._thread.start()

    def _copy(self, fd: int, pipe: BinaryIO) -> None:
        sink: BinaryIO | None = self.sink
        try:
            while True:
                data = os.read(fd, 1 << 16)
                last = not data
                data = self._filter(data, last)
                if data and sink is not None:
                    try:
                        sink.write(data)
                        sink.flush()
                    except (OSError, ValueError):   # our reader left: still drain mpiexec's
                        sink = None
                if len(self.seen) < LIMIT:
                    self.seen += data
                else:
                    self.complete = False
                if last:
                    break
        except OSError:
            self.complete = False
        finally:
            pipe.close()

    def _filter(self, data: bytes, last: bool) -> bytes:
        """``data`` without the token's line; while it has not come, whole lines only
        (the rest is held for the next read, or passed on at the end: ``last``)."""
        if self._skip_line:
            end = data.find(b"\n")
            if end < 0:
                return b""
            self._skip_line, data = False, data[end + 1:]
        if self._token is None or self.found.is_set():
            return data
        data, self._held = self._held + data, b""
        at = data.find(self._token)
        if at < 0:
            cut = len(data) if last or len(data) > _HELD_MAX else data.rfind(b"\n") + 1
            self._held = data[cut:]
            return data[:cut]
        self.found.set()
        start, end = data.rfind(b"\n", 0, at) + 1, data.find(b"\n", at)
        if end < 0:
            self._skip_line = not last
            return data[:start]
        return data[:start] + data[end + 1:]

    def join(self, timeout: float) -> None:
        """Wait until the pipe is closed (every process that could write it has ended)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.complete = False


#: What :func:`undelivered` compares: main's last lines (what can still be on its way
#: when a job ends is a pipe's worth or so), against the end of what mpiexec passed on.
TAIL_LINES, SEEN_TAIL = 256, 8 << 20


def undelivered(seen: bytes, kept: bytes) -> bytes:
    """The end of ``kept`` (rank 0's output) that is not in ``seen`` (what mpiexec passed
    on, with the other ranks' and Open MPI's own lines among it): of main's last
    :data:`TAIL_LINES` lines, those after the last one found, in order, at the end of a
    line of ``seen`` (``--tag-output`` puts a tag before each). A line that is not found
    (another rank's output cut into it) does not stop the search for the ones after it."""
    lines = kept.splitlines(keepends=True)[-TAIL_LINES:]
    seen = seen[-SEEN_TAIL:]
    at, found = 0, 0
    for i, line in enumerate(lines):
        end = _find_line_end(seen, line.rstrip(b"\r\n"), at)
        if end >= 0:
            at, found = end, i + 1
    return b"".join(lines[found:])


def _find_line_end(seen: bytes, line: bytes, at: int) -> int:
    """Where ``line`` ends a line of ``seen``, at or after ``at``; -1 if it does not."""
    while (j := seen.find(line, at)) >= 0:
        end = j + len(line)
        if end == len(seen) or seen[end] in b"\r\n":
            return end
        at = j + 1
    return -1


def recover(directory: str, relays: dict[str, Relay]) -> None:
    """The supervisor, after a job that finished: print the end of main's output kept in
    ``directory`` that mpiexec never passed on, to the same stream, and say so."""
    for name, relay in relays.items():
        if not relay.complete:
            continue
        try:
            with open(os.path.join(directory, KEPT[name]), "rb") as f:
                kept = f.read(LIMIT + 1)
        except OSError:
            continue
        if len(kept) > LIMIT:
            continue
        missing = undelivered(bytes(relay.seen), kept)
        if not missing:
            continue
        lines = missing.count(b"\n") or 1
        print(f"clustervm: {lines} line(s) of main's {name} had not "
              f"reached mpiexec when the job ended (a host lost at the end?); here they are, "
              f"from {os.path.join(directory, KEPT[name])}", file=sys.stderr, flush=True)
        sink = relay.sink
        try:
            sink.write(missing)
            sink.flush()
        except (OSError, ValueError):
            pass
