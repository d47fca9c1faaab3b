"""Unit tests without MPI: the progress display, futures, the Executor and map's chunking."""
from __future__ import annotations

import concurrent.futures as cf
import io
import types

import pytest

from clustervm import progress as progress_mod
from clustervm.futures import ClusterFuture, Executor, chunks
from clustervm.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_mod, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


def coordinator(states):
    return types.SimpleNamespace(nodes={i + 1: types.SimpleNamespace(state=s)
                                        for i, s in enumerate(states)})


# ----------------------------------------------------------------- Progress

def test_plain_lines_when_not_a_terminal(clock):
    out = io.StringIO()
    bar = Progress(10, coordinator(["alive", "dead", "alive"]), stream=out)
    for i in range(10):
        clock.now += 0.3                   # one line per second at most, and the last one
        bar.update(1, failed=1 if i == 4 else 0)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "progress: 1/10 tasks, 3.3/s, ETA 3 s, 0 failed, 1 node(s) lost"
    assert lines[-1] == "progress: 10/10 tasks, 3.3/s, ETA 0 s, 1 failed, 1 node(s) lost"
    assert 3 <= len(lines) <= 5
    assert "\r" not in out.getvalue()


def test_rate_and_eta_before_anything_is_done(clock):
    bar = Progress(4, stream=io.StringIO())
    assert bar.line() == "progress: 0/4 tasks, 0.0/s, ETA ?, 0 failed, 0 node(s) lost"
    clock.now += 2.0
    bar.update(2)
    assert bar.line() == "progress: 2/4 tasks, 1.0/s, ETA 2 s, 0 failed, 0 node(s) lost"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tqdm_bar_on_a_terminal():
    out = Terminal()
    bar = Progress(5, coordinator(["dead"]), stream=out)
    for _ in range(4):
        bar.update(1)
    bar.update(1, failed=1)
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "5/5" in text
    assert "failed=1" in text and "nodes_lost=1" in text
    assert "progress:" not in text


# ---------------------------------------------------------- ClusterFuture

class FakeSite:
    """Answers a future when it is waited on, as the transport would."""

    def __init__(self, outcome=None, cancel_answer=True):
        self.outcome = outcome
        self.waits = []
        self.cancelled = []
        self.cancel_answer = cancel_answer
        self.future = None

    def wait(self, predicate, timeout=None, blocking=False):
        self.waits.append((timeout, blocking))
        if self.outcome is not None:
            kind, value = self.outcome
            getattr(self.future, kind)(value)
        return predicate()

    def cancel_task(self, tid):
        self.cancelled.append(tid)
        if self.cancel_answer:
            return cf.Future.cancel(self.future)
        return False


def test_future_result_drives_the_site_and_is_a_concurrent_future():
    site = FakeSite(("set_result", 42))
    f = site.future = ClusterFuture(site, tid=7)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=5) == 42
    assert site.waits == [(5, True)]
    assert f.result() == 42 and len(site.waits) == 1     # done: no more waiting


def test_future_exception_and_timeout():
    site = FakeSite(("set_exception", ValueError("bad")))
    f = site.future = ClusterFuture(site, tid=8)
    assert isinstance(f.exception(timeout=1), ValueError)
    with pytest.raises(ValueError):
        f.result()
    idle = FakeSite()
    g = idle.future = ClusterFuture(idle, tid=9)
    with pytest.raises(cf.TimeoutError):
        g.result(timeout=0.01)


def test_future_cancel_asks_the_coordinator():
    site = FakeSite(cancel_answer=True)
    f = site.future = ClusterFuture(site, tid=3)
    assert f.cancel() is True and f.cancelled() and site.cancelled == [3]
    busy = FakeSite(cancel_answer=False)
    g = busy.future = ClusterFuture(busy, tid=4)
    assert g.cancel() is False and not g.cancelled()
    done = FakeSite()
    h = done.future = ClusterFuture(done, tid=5)
    h.set_result(1)
    assert h.cancel() is False and done.cancelled == []


# ----------------------------------------------------------------- Executor

class FakeVM:
    def __init__(self):
        self.futures = []
        self.maps = []

    def submit(self, fn, *args, **kwargs):
        f = cf.Future()
        self.futures.append((f, fn, args, kwargs))
        return f

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        self.maps.append((fn, iterables, timeout, chunksize))
        return iter([fn(*a) for a in zip(*iterables)])


def test_executor_is_a_concurrent_futures_executor():
    vm = FakeVM()
    ex = Executor(vm)
    assert isinstance(ex, cf.Executor)
    f = ex.submit(pow, 2, 5)
    assert vm.futures[0][1:] == (pow, (2, 5), {})
    f.set_result(32)
    assert list(ex.map(pow, [2, 3], [2, 2], timeout=3, chunksize=2)) == [4, 9]
    assert vm.maps == [(pow, ([2, 3], [2, 2]), 3, 2)]
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 1, 1)
    with pytest.raises(RuntimeError):
        ex.map(pow, [1], [1])


def test_executor_shutdown_cancels_pending_futures():
    vm = FakeVM()
    ex = Executor(vm)
    done, pending = ex.submit(abs, -1), ex.submit(abs, -2)
    done.set_result(1)
    ex.shutdown(wait=True, cancel_futures=True)
    assert pending.cancelled() and done.result() == 1


def test_executor_with_block_waits_for_its_futures():
    vm = FakeVM()
    with Executor(vm) as ex:
        f = ex.submit(abs, -3)
        f.set_result(3)
    assert f.done() and ex._shutdown


# --------------------------------------------------------------- chunking

def test_chunks_zip_the_iterables():
    got = list(chunks(([1, 2, 3, 4, 5], "abcde"), 2))
    # argument lists, not tuples: msgpack packs lists without the encoder's hook
    assert got == [[[1, "a"], [2, "b"]], [[3, "c"], [4, "d"]], [[5, "e"]]]
    assert list(chunks(([],), 3)) == []
    assert list(chunks((range(3), range(10)), 5)) == [[[0, 0], [1, 1], [2, 2]]]
