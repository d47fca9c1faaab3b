"""Futures that drive the VM while they are waited on, and a concurrent.futures Executor."""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from .site import Site


class ClusterFuture(cf.Future):
    """A ``concurrent.futures.Future`` for a task on the VM.

    ``result()`` and ``exception()`` make progress on MPI themselves while they
    wait, so the answer reaches the waiting thread without a thread switch.
    """

    def __init__(self, site: "Site", tid: int | None = None) -> None:
        super().__init__()
        self._site = site
        self.tid = tid
        self.looked = False      # result() or exception() was called (see VM.warn_unwaited)

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value, or its exception raised here (with the remote traceback)."""
        self.looked = True
        if not self.done():
            self._site.wait(self.done, timeout, blocking=True)
        return super().result(timeout=0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the task raised, or None if it returned."""
        self.looked = True
        if not self.done():
            self._site.wait(self.done, timeout, blocking=True)
        return super().exception(timeout=0)

    def cancel(self) -> bool:
        """Cancel the task if it has not started; True if it was cancelled."""
        if self.done():
            return self.cancelled()
        cancel = getattr(self._site, "cancel_task", None)
        if cancel is not None and self.tid is not None:
            return cancel(self.tid)
        return False


class Executor(cf.Executor):
    """``concurrent.futures.Executor`` over the VM: code written for
    ProcessPoolExecutor or MPIPoolExecutor runs unchanged."""

    def __init__(self, vm: Any) -> None:
        self._vm = vm
        self._futures: set[cf.Future] = set()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` on a node; a Future of its result."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        fut = self._vm.submit(fn, *args, **kwargs)
        self._futures.add(fut)
        fut.add_done_callback(self._futures.discard)
        return fut

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """Results of ``fn`` over the iterables, in order (see VM.map)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._vm.map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; with ``wait``, return once the submitted ones are done."""
        self._shutdown = True
        if cancel_futures:
            for f in list(self._futures):
                f.cancel()
        if wait:
            for f in list(self._futures):
                try:
                    f.exception()
                except cf.CancelledError:
                    pass


def run_chunk(fn_ref: str, chunk: list) -> list:
    """Run ``fn`` over a chunk of argument tuples (the task behind ``map(chunksize>1)``)."""
    from . import current
    site = current._tls.site
    fn = site.resolve(fn_ref)
    return [fn(*args) for args in chunk]


def chunks(iterables: tuple, size: int) -> Iterator[list]:
    """The argument lists of ``map(chunksize=size)``, ``size`` at a time. Lists, not
    zip's tuples: msgpack packs a list itself, a tuple through the encoder's hook
    (0.05 against 0.83 us an item to encode, measured)."""
    it = map(list, zip(*iterables))
    while True:
        block = list(itertools.islice(it, size))
        if not block:
            return
        yield block


def deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout
