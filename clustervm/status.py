"""The one-line live status of a job on the terminal that started it.

``clustervm run`` starts mpiexec in a session of its own, and Open MPI hands
the ranks' stderr to mpiexec through a pipe (and stdout through a pty that it
forwards line by line), so rank 0 can neither tell whether the user's stderr
is a terminal nor draw a line that is updated in place through them. So the
launcher, when its stderr is a terminal, passes that terminal to the job in
``CLUSTERVM_STATUS_TTY`` ("host:device:path"), and rank 0, when it runs on
that host, writes the status line straight to the device: on the terminal's
last row, below a scroll region that keeps everything the ranks print
(through mpiexec, in any order) above it. The line shows nodes alive, tasks
done/total, running, failures, re-runs and lost nodes, is redrawn at most 4
times a second and only when it changes, and is removed when the job ends
(the launcher also resets the scroll region if rank 0 died before it could).
``CLUSTERVM_STATUS_TTY=-`` turns it off. Started without ``clustervm run``
(``mpiexec ... python -m clustervm app.py``), rank 0 uses its controlling
terminal when its stdout or stderr is one.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:   # the launcher imports this module for use_terminal alone
    from .core.view import ViewSource, VMView
    from .monitor import Counts, TaskCounter

log = logging.getLogger(__name__)

ENV = "CLUSTERVM_STATUS_TTY"
OFF = "-"
INTERVAL_S = 0.25


# ------------------------------------------------------------ the launcher

def terminal_spec() -> str:
    """``host:device:path`` of this process's stderr if it is a terminal, else ``-``."""
    try:
        if not sys.stderr.isatty():
            return OFF
        fd = sys.stderr.fileno()
        path = os.ttyname(fd)
        from .procs import hostname
        return f"{hostname()}:{os.fstat(fd).st_rdev}:{path}"
    except (OSError, ValueError, AttributeError):
        return OFF


def use_terminal(env: Mapping[str, str]) -> dict[str, str]:
    """The job's environment with our terminal for the status line (unless the user chose)."""
    out = dict(env)
    spec = os.environ.get(ENV)
    if spec is None:
        # in our own environment too, for the jobs a supervisor starts (--restarts)
        spec = os.environ[ENV] = terminal_spec()
        if spec != OFF:
            atexit.register(_reset_region, spec)
    out[ENV] = spec
    return out


def _reset_region(spec: str) -> None:
    """Give the terminal its whole height back (rank 0 may have died with a region set)."""
    fd = _open_spec(spec)
    if fd is not None:
        try:
            os.write(fd, b"\x1b7\x1b[r\x1b8")
        except OSError:
            pass
        os.close(fd)


def _open_spec(spec: str) -> int | None:
    host, _, rest = spec.partition(":")
    rdev, _, path = rest.partition(":")
    from .procs import hostname
    if not path or host != hostname():
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if os.isatty(fd) and str(os.fstat(fd).st_rdev) == rdev:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def open_terminal(env: Mapping[str, str] | None = None) -> int | None:
    """The terminal rank 0 draws the status line on, as a file descriptor, or None."""
    env = os.environ if env is None else env
    spec = env.get(ENV)
    if spec is not None:
        return None if spec in ("", OFF) else _open_spec(spec)
    try:
        if not (sys.stderr.isatty() or sys.stdout.isatty()):
            return None
        fd = os.open("/dev/tty", os.O_WRONLY | os.O_NOCTTY)
    except (OSError, ValueError, AttributeError):
        return None
    return fd


# ---------------------------------------------------------------- rank 0

def line(view: VMView, counts: Counts) -> str:
    """The status text: nodes alive, tasks done/total, failures."""
    alive = [n for n in view.nodes if n.state == "alive"]
    lost = sum(1 for n in view.nodes if n.state == "dead")
    running = sum(n.running for n in alive)
    ok, failed = counts.ok, counts.failed
    rerun = max(counts.rerun, view.stats.get("rerun", 0))
    total = ok + failed + view.live
    parts = [f"clustervm {view.now - view.t0:6.1f} s",
             f"nodes {len(alive)}/{len(view.nodes)} alive" + (f", {lost} lost" if lost else ""),
             f"tasks {ok + failed}/{total} done, {running} running, {view.pending} queued",
             f"{failed} failed, {rerun} re-run"]
    return " | ".join(parts)


class StatusLine:
    """Draws :func:`line` on the last row of a terminal, a few times a second."""

    def __init__(self, source: ViewSource, fd: int, counter: TaskCounter) -> None:
        self.source = source
        self.fd = fd
        self.counter = counter
        self.rows = 0
        self.last = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="cvm-status", daemon=True)

    def _size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self.fd)
            return size.lines, size.columns
        except OSError:
            return 24, 80

    def _write(self, data: str) -> None:
        try:
            os.write(self.fd, data.encode("utf-8", "replace"))
        except OSError:
            self._stop.set()

    def draw(self) -> None:
        text = line(self.source.view(max_events=0), self.counter.copy())
        rows, cols = self._size()
        with self._lock:
            if self._stop.is_set() and self.rows == 0:
                return
            if rows < 3:
                return
            if rows != self.rows:
                # make room, keep the last row out of the scroll region, go back into it
                self._write(f"\n\x1b7\x1b[1;{rows - 1}r\x1b8\x1b[1A")
                self.rows = rows
                self.last = ""
            shown = text[:max(1, cols - 1)].ljust(max(1, cols - 1))
            if shown == self.last:
                return
            self.last = shown
            self._write(f"\x1b7\x1b[{rows};1H\x1b[2K\x1b[7m{shown}\x1b[0m\x1b8")

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                self.draw()
            except Exception:   # noqa: BLE001 - a status line is never worth a failed job
                log.debug("status line", exc_info=True)
                return

    def start(self) -> "StatusLine":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Remove the line and give the terminal its whole height back."""
        self._stop.set()
        self._thread.join(1.0)
        with self._lock:
            if self.rows:
                self._write(f"\x1b7\x1b[r\x1b[{self.rows};1H\x1b[2K\x1b8")
                self.rows = 0
            try:
                os.close(self.fd)
            except OSError:
                pass


def start(source: ViewSource, config: Any = None) -> Callable[[], None] | None:
    """Show the status line if the job has a terminal; returns its stop function or None."""
    fd = open_terminal()
    if fd is None:
        return None
    from .monitor import counter_of
    status = StatusLine(source, fd, counter_of(source)).start()
    return status.stop
