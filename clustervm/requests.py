"""Non-blocking point to point in mpi4py's shape: ``ctx.isend`` / ``ctx.irecv`` give
:class:`Request` objects; :func:`waitall`, :func:`waitany`, :func:`waitsome`,
:func:`testall`, :func:`testany` work on lists of them.

**isend** takes the per-pair sequence number and the replay-log copy at once (as
``send`` does) and posts the message with MPI ``Isend``: it returns without waiting
for the message to leave. With message logging on (the default for spawned tasks,
``spawn(..., replay=True)``) the message that leaves *is* the logged copy, so the
caller may change its arrays as soon as ``isend`` returns (the cost is that one
copy). With ``replay=False`` it sends the caller's own arrays: as with MPI's
``Isend``, do not change them until ``wait()``/``test()`` says the request is done.
A send request is done when the message has left this process (or was delivered
on this node). It cannot be cancelled once posted (``cancel()`` returns False).

**irecv** posts a receive for ``(source, tag)``; it is matched in posting order:
before any receive (``recv``, ``nrecv``, ``probe``, another request) takes a
message, the receive requests posted earlier take theirs, as MPI's matching rule.
Its value (``wait()``) is the :class:`~clustervm.task.Message`. ``cancel()`` of a
receive not matched yet withdraws it (True); its ``wait()`` then returns None.

Failover: a request belongs to the incarnation that posted it. A task restarted
from its checkpoint runs again from there and posts its requests again; the
messages it had not consumed are replayed and duplicates dropped, so each new
request completes once, with the same message as in the first run. A request that
completed before the checkpoint counts as received (as a ``recv`` would);
checkpoint after ``waitall`` so no request is in flight across it.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from . import protocol as P
from .errors import DeadTaskError, WireError

if TYPE_CHECKING:
    from .mailbox import TaskLike as TaskContext   # task.py imports this module
    from .site import Site

log = logging.getLogger(__name__)


class Request:
    """A non-blocking operation: ``test()``, ``wait(timeout=)``, ``cancel()``."""

    __slots__ = ("ctx", "collected", "cancelled", "_value", "_done")

    def __init__(self, ctx: "TaskContext") -> None:
        self.ctx = ctx
        self.collected = False       # its value was handed out (waitany/waitsome skip it)
        self.cancelled = False
        self._value: Any = None
        self._done = False

    def _poll(self) -> bool:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        """Whether the operation has completed (without waiting, without progress)."""
        return self._done or self._poll()

    def test(self) -> tuple[bool, Any]:
        """``(True, value)`` if done, else ``(False, None)``; never blocks (MPI_Test)."""
        self.ctx._check()
        if not self._poll():
            self.ctx._site.progress()
            if not self._poll():
                return False, None
        self.collected = True
        return True, self._value

    def wait(self, timeout: float | None = None) -> Any:
        """Block until done; the received Message (irecv) or None (isend).

        Raises TimeoutError if not done within ``timeout`` seconds (the request
        stays posted: wait again, or cancel it)."""
        _wait_for([self], self._poll, timeout, "wait")
        self.collected = True
        return self._value

    def cancel(self) -> bool:
        """Withdraw the operation if it has not completed; True if it was withdrawn."""
        return False

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "done" if self._done else "pending"
        return f"<{type(self).__name__} of task {self.ctx.tid} {state}>"


class SendRequest(Request):
    """An ``isend``: done when the message has left this process."""

    __slots__ = ("head", "dst")

    def __init__(self, ctx: "TaskContext", dst: int, head: Any = None) -> None:
        super().__init__(ctx)
        self.dst = dst
        self.head = head
        self._done = head is None

    def _poll(self) -> bool:
        if self._done:
            return True
        if not self.ctx._site.transport.sent(self.head):
            return False
        self._done, self.head = True, None
        return True


class RecvRequest(Request):
    """An ``irecv`` of ``(source, tag)``; matched in posting order with the task's
    other receives."""

    __slots__ = ("source", "tag")

    def __init__(self, ctx: "TaskContext", source: int, tag: int) -> None:
        super().__init__(ctx)
        self.source = source
        self.tag = tag

    def _poll(self) -> bool:
        if not self._done:
            self.ctx._match_posted()
        return self._done

    def _match(self) -> bool:
        m = self.ctx.mailbox.take(self.source, self.tag)
        if m is None:
            return False
        self._value, self._done = m, True
        return True

    def cancel(self) -> bool:
        if self._done:
            return False
        self.ctx._match_posted()      # a message already here is received, not dropped
        if self._done:
            return False
        self.cancelled = self._done = True
        posted = self.ctx.__dict__.get("_posted")
        if posted and self in posted:
            posted.remove(self)
        return True

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} source={self.source} tag={self.tag}>"


def isend(ctx: "TaskContext", dst: int, tag: int, obj: Any) -> SendRequest:
    """Post a message of ``ctx``'s task to task ``dst`` (see the module docstring)."""
    # (not at import: `import clustervm` loads no MPI)
    from .site import ENDED, sized_snapshot, snapshot
    from .endpoint import PeerFailed
    ctx._check()
    if tag < 0:
        raise ValueError(f"tag must be >= 0, got {tag}; -1 is the wildcard of recv only")
    site = ctx._site
    seq = ctx._sent.get(dst, 0) + 1
    ended_ok = ctx.inc > 0
    for _ in range(100):
        loc = site.locate(dst, ended_ok=ended_ok)
        if loc.rank == ENDED:     # a restarted task sends again to a task that has ended
            ctx._sent[dst] = seq
            return SendRequest(ctx, dst)
        data = obj
        logged = False
        if loc.replay:            # the copy for the replay log is also the one that leaves
            data, nbytes = sized_snapshot(obj)
            logged = site._log_copy(ctx, dst, seq, tag, data, nbytes)
        try:
            if loc.rank == site.rank:
                site.deliver(ctx.tid, dst, tag, snapshot(data), ctx.inc, seq)   # its own copy
                ctx._sent[dst] = seq
                return SendRequest(ctx, dst)
            head = site.transport.isend(
                loc.rank, P.User.make(ctx.tid, dst, tag, data, ctx.inc, seq))
            ctx._sent[dst] = seq
            return SendRequest(ctx, dst, head)
        except WireError as exc:      # nothing was sent: forget it, name the path in obj
            if logged:
                ctx._outlog[dst].pop()
            path = getattr(exc, "path", None) or ""
            if not path.startswith("[4]"):
                raise
            inner = path[3:]
            err = WireError(str(exc).replace(f" at {path}:", f" at {inner or 'the top level'}:",
                                             1))
            err.path = inner  # type: ignore[attr-defined]
            raise err from None
        except PeerFailed:
            with site.lock:
                if site.locations.get(dst) is loc:
                    del site.locations[dst]
            if logged:
                site._unlog(ctx, dst, seq)
            ended_ok = True    # see Site.send_user: the replay log may deliver it first
            time.sleep(0.01)
    raise DeadTaskError(f"cannot deliver a message to task {dst}: its node keeps failing")


def irecv(ctx: "TaskContext", source: int, tag: int) -> RecvRequest:
    """Post a receive of ``ctx``'s task (see the module docstring)."""
    ctx._check()
    req = RecvRequest(ctx, source, tag)
    ctx.__dict__.setdefault("_posted", []).append(req)
    return req


def _site(requests: Sequence[Request]) -> "Site | None":
    for r in requests:
        if r is not None:
            return r.ctx._site
    return None


def _check_list(requests: Any, name: str) -> list:
    if isinstance(requests, Request):
        raise TypeError(f"{name} takes a list of requests, not one request; use "
                        f"request.wait() or {name}([request])")
    reqs = list(requests)
    for r in reqs:
        if r is not None and not isinstance(r, Request):
            raise TypeError(f"{name}: {r!r} is not a request (from ctx.isend / ctx.irecv)")
    return reqs


def _wait_for(reqs: list, ready: Any, timeout: float | None, name: str) -> None:
    site = _site(reqs)
    if site is None:
        return
    ctx = next(r.ctx for r in reqs if r is not None)
    if not site.wait(lambda: ctx.aborted or ready(), timeout, blocking=True):
        pending = sum(1 for r in reqs if r is not None and not r.done)
        raise TimeoutError(f"{name}: {pending} of {len(reqs)} request(s) not complete within "
                           f"{timeout} s; they stay posted (wait again, or cancel them)")
    ctx._check()


def waitall(requests: Iterable[Request], timeout: float | None = None) -> list:
    """Wait for every request; their values in order (None entries stay None)."""
    reqs = _check_list(requests, "waitall")
    _wait_for(reqs, lambda: all(r is None or r._poll() for r in reqs), timeout, "waitall")
    for r in reqs:
        if r is not None:
            r.collected = True
    return [None if r is None else r._value for r in reqs]


def waitany(requests: Iterable[Request], timeout: float | None = None) -> tuple[int | None, Any]:
    """Wait for one request not handed out yet: ``(index, value)``; ``(None, None)``
    when every request was already handed out (MPI_UNDEFINED)."""
    reqs = _check_list(requests, "waitany")
    active = [i for i, r in enumerate(reqs) if r is not None and not r.collected]
    if not active:
        return None, None
    got: list[int] = []

    def ready() -> bool:
        for i in active:
            if reqs[i]._poll():
                got.append(i)
                return True
        return False

    _wait_for(reqs, ready, timeout, "waitany")
    i = got[0]
    reqs[i].collected = True
    return i, reqs[i]._value


def waitsome(requests: Iterable[Request],
             timeout: float | None = None) -> tuple[list[int], list]:
    """Wait until at least one request not handed out yet is done: ``(indices, values)``
    of all such done ones; ``([], [])`` when every request was already handed out."""
    reqs = _check_list(requests, "waitsome")
    active = [i for i, r in enumerate(reqs) if r is not None and not r.collected]
    if not active:
        return [], []
    _wait_for(reqs, lambda: any(reqs[i]._poll() for i in active), timeout, "waitsome")
    done = [i for i in active if reqs[i]._poll()]
    for i in done:
        reqs[i].collected = True
    return done, [reqs[i]._value for i in done]


def testall(requests: Iterable[Request]) -> tuple[bool, list | None]:
    """``(True, values)`` if every request is done, else ``(False, None)``; never blocks."""
    reqs = _check_list(requests, "testall")
    site = _site(reqs)
    if site is not None:
        site.progress()
    if all(r is None or r._poll() for r in reqs):
        return True, waitall(reqs)
    return False, None


def testany(requests: Iterable[Request]) -> tuple[int | None, bool, Any]:
    """``(index, True, value)`` for a done request not handed out yet; ``(None, False,
    None)`` if none is done; ``(None, True, None)`` if all were handed out."""
    reqs = _check_list(requests, "testany")
    site = _site(reqs)
    if site is not None:
        site.progress()
    active = [i for i, r in enumerate(reqs) if r is not None and not r.collected]
    if not active:
        return None, True, None
    for i in active:
        if reqs[i]._poll():
            reqs[i].collected = True
            return i, True, reqs[i]._value
    return None, False, None
