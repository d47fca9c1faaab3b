"""The transport's hot path for a waiting task (issue 13): the thread that waits is the
thread that receives, one message a poll, and nobody is notified when nobody sleeps.

The transport runs on a fake communicator (no MPI call is made): its ``Improbe``
serves first frames queued by the test. The real path is covered by the jobs of
tests/test_messaging_api.py and benchmarks/pingpong.py.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import mpi4py

mpi4py.rc.initialize = False   # no singleton MPI_Init in the test process (if not done yet)
mpi4py.rc.finalize = False

import pytest  # noqa: E402

from clustervm import frames as F  # noqa: E402
from clustervm import transport as T  # noqa: E402
from clustervm import wire  # noqa: E402


class FakeStatus:
    def __init__(self) -> None:
        self.source = self.count = 0

    def Get_source(self) -> int:  # noqa: N802 - MPI's names
        return self.source

    def Get_count(self, datatype) -> int:  # noqa: N802
        return self.count


class FakeMessage:
    def __init__(self, frame: bytes) -> None:
        self.frame = frame

    def Recv(self, spec) -> None:  # noqa: N802
        memoryview(spec[0])[:] = self.frame


class FakeComm:
    """A communicator whose Improbe serves the frames queued in ``inbox``, and counts."""

    def __init__(self, rank: int = 1, size: int = 3) -> None:
        self.rank, self.size = rank, size
        self.inbox: deque[tuple[int, bytes]] = deque()
        self.probes = 0
        self.late = 0      # probes up to this count find nothing (a message on its way)

    def Set_errhandler(self, handler) -> None:  # noqa: N802
        pass

    def Get_rank(self) -> int:  # noqa: N802
        return self.rank

    def Get_size(self) -> int:  # noqa: N802
        return self.size

    def Improbe(self, source, tag, status):  # noqa: N802
        self.probes += 1
        if not self.inbox or self.probes <= self.late:
            return None
        src, frame = self.inbox.popleft()
        status.source, status.count = src, len(frame)
        return FakeMessage(frame)

    def queue(self, src: int, msg) -> None:
        payload, bufs = wire.dumps(msg)
        assert not bufs
        self.inbox.append((src, b"\x00" + payload))


class CountingCondition:
    """A threading.Condition that counts how often its lock is taken."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.entered = 0

    def __enter__(self):
        self.entered += 1
        return self.cond.__enter__()

    def __exit__(self, *exc):
        return self.cond.__exit__(*exc)

    def wait(self, timeout=None):
        return self.cond.wait(timeout)

    def notify_all(self) -> None:
        self.cond.notify_all()


@pytest.fixture
def transport():
    t = T.Transport(FakeComm(), spin_ms=5.0, idle_sleep_ms=10.0, max_chunk_bytes=1 << 20)
    t._status = FakeStatus()
    got: list = []
    t.handler = lambda src, msg: got.append((src, msg))
    t.got = got   # type: ignore[attr-defined]
    return t


def test_a_waiter_handles_one_message_a_poll_and_probes_once_for_it(transport):
    """The message waited for is handed to the waiter without another probe of MPI;
    what came after it stays for the next poll."""
    comm = transport.comm
    for i in range(3):
        comm.queue(2, ("m", i))
    assert transport.wait(lambda: bool(transport.got), timeout=5.0)
    assert transport.got == [(2, ("m", 0))]
    assert comm.probes == 1
    assert len(comm.inbox) == 2
    assert transport.try_poll() == 2       # a plain poll takes everything there
    assert [m for _, m in transport.got] == [("m", 0), ("m", 1), ("m", 2)]


def test_nobody_is_notified_when_nobody_sleeps(transport):
    cond = transport._cond = CountingCondition()
    transport.comm.queue(2, ("m", 0))
    assert transport.try_poll() == 1
    transport.notify()
    assert cond.entered == 0


def test_quiet_work_keeps_a_waiter_from_spinning_but_looks_again_within_4_ms(transport):
    """A message whose handler says QUIET (a posted checkpoint at the coordinator) is
    handled, keeps the rank out of deep idle, but does not start the spin: the waiter
    sleeps 1-4 ms between polls for a while instead of yielding for spin_ms; other work
    still starts the spin."""
    from clustervm.endpoint import QUIET
    t = transport
    t.handler = lambda src, msg: QUIET if msg[0] == "quiet" else None
    pauses: list[float] = []
    t._sleep = lambda pause, predicate: pauses.append(pause) or False
    t._last_activity = t._last_work = time.perf_counter() - 10.0   # long idle
    t.comm.queue(2, ("quiet", 1))
    assert t.try_poll() == 1
    assert time.perf_counter() - t._last_activity > 9.0          # no spin started
    assert time.perf_counter() - t._last_work < 1.0              # but it was work
    assert not t._deep_idle()
    assert t._back_off(None, lambda: False) is False
    assert pauses and T._QUIET_PAUSE_S <= pauses[-1] <= T._QUIET_PAUSE_MAX_S
    t._last_work -= 0.02      # 20 ms later: still at most 4 ms between two looks
    t._back_off(None, lambda: False)
    assert pauses[-1] == T._QUIET_PAUSE_MAX_S
    t._last_work -= 1.0       # long after: the usual back-off, up to idle_sleep_ms
    t._back_off(None, lambda: False)
    assert pauses[-1] == pytest.approx(0.010)
    t.comm.queue(2, ("work", 2))
    assert t.try_poll() == 1
    n = len(pauses)
    t._back_off(None, lambda: False)  # just after other work: it yields, does not sleep
    assert len(pauses) == n


def test_a_sleeping_waiter_is_woken_by_notify():
    """Past the spin, a waiter sleeps on the condition (up to idle_sleep_ms, long here);
    a state change with notify() ends its sleep at once."""
    t = T.Transport(FakeComm(), spin_ms=0.0, idle_sleep_ms=5000.0, max_chunk_bytes=1 << 20)
    t._status = FakeStatus()
    t._last_activity -= 10.0         # long idle: the back-off is at its ceiling
    flag = threading.Event()
    done: list[float] = []

    def waiter() -> None:
        t.wait(flag.is_set, timeout=20.0)
        done.append(time.monotonic())

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    deadline = time.monotonic() + 5.0
    while not t._sleepers and time.monotonic() < deadline:
        time.sleep(0.001)
    assert t._sleepers == 1, "the waiter never went to sleep"
    flag.set()
    woke = time.monotonic()
    t.notify()
    th.join(10.0)
    assert done and done[0] - woke < 2.5, "the waiter slept on after notify()"
    assert t._sleepers == 0


def test_a_change_between_the_check_and_the_sleep_is_not_lost():
    """A notifier that runs after the waiter counted itself a sleeper but before it
    waits (here: inside the predicate) keeps it from sleeping at all."""
    t = T.Transport(FakeComm(), spin_ms=0.0, idle_sleep_ms=5000.0, max_chunk_bytes=1 << 20)
    calls = 0

    def predicate() -> bool:
        nonlocal calls
        calls += 1
        t.notify()                    # the state changed just now, from "another thread"
        return False

    t0 = time.monotonic()
    assert t._sleep(5.0, predicate) is False
    assert time.monotonic() - t0 < 2.5
    assert calls == 1 and t._sleepers == 0


def test_sleep_returns_true_without_waiting_when_the_predicate_holds():
    t = T.Transport(FakeComm(), spin_ms=0.0, idle_sleep_ms=5000.0, max_chunk_bytes=1 << 20)
    t0 = time.monotonic()
    assert t._sleep(5.0, lambda: True) is True
    assert time.monotonic() - t0 < 2.5 and t._sleepers == 0


class FakeRequest:
    def __init__(self) -> None:
        self.complete = False

    def Test(self) -> bool:  # noqa: N802
        return self.complete


class SendComm(FakeComm):
    """A FakeComm whose Isends stay incomplete until the test completes them."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[FakeRequest] = []
        self.sent: list[tuple[bytes, int, int]] = []

    def Isend(self, spec, dest, tag):  # noqa: N802
        self.sent.append((bytes(spec[0]), dest, tag))
        req = FakeRequest()
        self.requests.append(req)
        return req


@pytest.fixture
def sender(monkeypatch):
    monkeypatch.setattr(T, "_testall", lambda reqs: all(r.complete for r in reqs))
    t = T.Transport(SendComm(), spin_ms=5.0, idle_sleep_ms=10.0, max_chunk_bytes=1 << 20)
    t._status = FakeStatus()
    return t


def test_a_send_without_arrays_returns_once_isent(sender):
    """Its first frame is the transport's own copy: the sender goes on at once, and a
    later poll completes the request, off the sender's path."""
    returned = threading.Event()

    def send() -> None:
        sender.send(2, ("m", b"x" * 8))
        returned.set()

    threading.Thread(target=send, daemon=True).start()
    assert returned.wait(5.0), "send waited for the completion of a message without arrays"
    [req] = sender.comm.requests
    assert len(sender._pending) + len(sender._light) == 1     # Isent, not complete
    sender.try_poll()
    assert len(sender._pending) + len(sender._light) == 1
    req.complete = True
    sender.try_poll()
    assert not sender._pending and not sender._light


def test_a_send_with_small_arrays_packs_them_and_returns_once_isent(sender):
    """Arrays of up to PACK_MAX bytes (clustervm.frames) are copied into the one frame: the sender's
    arrays are free at once, nothing waits for the receiver."""
    np = pytest.importorskip("numpy")
    row = np.arange(256.0)
    sender.send(2, ("m", row))
    [req] = sender.comm.requests
    assert not req.complete
    frame = T.parse_frame(sender.comm.sent[0][0], 1, 1 << 30)
    assert frame.kind == F.KIND_PACKED
    got = wire.loads(frame.payload, frame.bufs)[1]
    row[:] = -1.0                       # the sender reuses its array: the frame is a copy
    assert got.flags.aligned and got.tolist() == list(range(256))


def test_a_send_with_arrays_waits_until_they_have_left(sender):
    np = pytest.importorskip("numpy")
    returned = threading.Event()

    def send() -> None:
        sender.send(2, ("m", np.zeros(F.PACK_MAX // 8 + 1)))
        returned.set()

    th = threading.Thread(target=send, daemon=True)
    th.start()
    time.sleep(0.2)
    assert not returned.is_set(), "send returned while the array was still in flight"
    assert len(sender.comm.requests) == 2          # the first frame and the array
    for req in sender.comm.requests:
        req.complete = True
    assert returned.wait(5.0)
    th.join(5.0)


def test_an_unsettled_send_leaves_its_message_to_the_token_holder(sender):
    """settle=False (a node's DONE): while another thread holds the token, a message
    without the sender's arrays stays in the outbox and the sender goes on; the next
    poller sends it (in a job, the holder before it lets go). One with arrays still
    waits for them to leave."""
    np = pytest.importorskip("numpy")
    held, let_go = threading.Event(), threading.Event()

    def holder() -> None:                          # another thread polls meanwhile
        with sender._token:
            held.set()
            let_go.wait(10)

    threading.Thread(target=holder, daemon=True).start()
    assert held.wait(5.0)
    done = threading.Event()
    threading.Thread(target=lambda: sender.send(2, ("done", [1, 2.5, b"r"]), settle=False)
                     or done.set(), daemon=True).start()
    assert done.wait(5.0), "an unsettled send waited for the token's holder"
    assert not sender.comm.sent and len(sender._outbox) == 1
    returned = threading.Event()

    def send_array() -> None:
        sender.send(2, ("m", np.zeros(F.PACK_MAX // 8 + 1)), settle=False)
        returned.set()

    th = threading.Thread(target=send_array, daemon=True)
    th.start()
    time.sleep(0.2)
    assert not returned.is_set(), "an unsettled send with arrays returned before they left"
    let_go.set()
    deadline = time.monotonic() + 5
    while sender._outbox and time.monotonic() < deadline:
        sender.try_poll()                          # the next holder sends the outbox
    assert sender.comm.sent[0][1] == 2
    assert wire.loads(sender.comm.sent[0][0][1:], []) == ("done", [1, 2.5, b"r"])
    deadline = time.monotonic() + 5
    while not returned.is_set() and time.monotonic() < deadline:
        for req in sender.comm.requests:
            req.complete = True
        sender.try_poll()
        time.sleep(0.01)
    assert returned.is_set()
    th.join(5.0)


def test_a_handler_that_polls_does_not_nest_a_poll(transport):
    """A handler that asks for a poll (main's submission from a future's callback, say,
    clustervm.coordinator.MAIN_POLL_S) gets None: the messages after the one in hand
    are handled after it, in order, by the poll under way."""
    comm = transport.comm
    for i in range(3):
        comm.queue(2, ("m", i))
    inner: list = []

    def handler(src, msg):
        inner.append(transport.try_poll())
        transport.got.append(msg)

    transport.handler = handler
    assert transport.try_poll() == 3
    assert inner == [None, None, None]
    assert transport.got == [("m", 0), ("m", 1), ("m", 2)]


def test_a_reply_due_soon_is_probed_for_in_a_tight_loop(transport):
    """A wait's hot start (``_wait_hot``) probes on until the message comes, then looks
    at the predicate; with nothing by its end it gives up (False) and the wait's polls
    go on; an outbox handed over meanwhile is sent by it (it holds the token)."""
    comm = transport.comm
    comm.queue(2, ("reply", 1))
    comm.late = 5                    # the first five probes find nothing
    assert transport._wait_hot(lambda: bool(transport.got), None,
                               time.perf_counter() + 5.0, None)
    assert comm.probes == 6 and transport.got == [(2, ("reply", 1))]
    assert not transport._wait_hot(lambda: False, None, time.perf_counter() + 0.001, None)
    sent: list = []
    transport._send_outbox = lambda: sent.append(transport._outbox.popleft())
    transport._outbox.append("out")
    comm.queue(2, ("reply", 2))
    comm.late = comm.probes + 3
    assert transport._wait_hot(lambda: len(transport.got) == 2, None,
                               time.perf_counter() + 5.0, None)
    assert sent == ["out"] and not transport._outbox


def test_a_message_claimed_in_the_hot_start_ends_the_wait(transport):
    """The claim takes the reply: the wait ends without the handler, without another
    look at the predicate and without waking anyone; a message it does not take goes
    to the handler, and the loop goes on."""
    comm = transport.comm
    comm.queue(2, ("other", 0))
    comm.queue(2, ("reply", 1))
    mine: list = []
    looks: list = []

    def claim(msg):
        if msg[0] == "reply":
            mine.append(msg)
            return True
        return False

    def predicate():
        looks.append(1)
        return bool(mine)

    transport.notify = lambda: looks.append("woken")   # (_handled after the first only)
    assert transport._wait_hot(predicate, claim, time.perf_counter() + 5.0, None)
    assert mine == [("reply", 1)] and transport.got == [(2, ("other", 0))]
    assert looks == ["woken", 1]
    assert transport._claim is None and transport._owner is None


def test_a_waiter_probes_hot_only_while_its_waits_are_short(transport, monkeypatch):
    """After a wait longer than twice the hot window the next wait has no hot start
    (ranks outnumbering cores: heat2d 8-10 % slower with it); after a short one it has
    one again."""
    monkeypatch.setattr(T, "_HOT_SPIN_S", 0.005)    # (no thread switch makes it flaky)
    hot: list[float] = []
    wait_hot = transport._wait_hot
    transport._wait_hot = lambda *a: hot.append(a[2]) or wait_hot(*a)
    transport._sleep = lambda pause, predicate: predicate()
    assert transport._short_waits
    end = time.perf_counter() + 0.05
    assert transport.wait(lambda: time.perf_counter() > end, timeout=5.0)
    assert len(hot) == 1 and not transport._short_waits
    hot.clear()
    transport.comm.queue(2, ("m", 0))
    assert transport.wait(lambda: bool(transport.got), timeout=5.0)
    assert hot == [] and transport._short_waits
    transport.comm.queue(2, ("m", 1))
    assert transport.wait(lambda: len(transport.got) == 2, timeout=5.0)
    assert len(hot) == 1


class _Cond:
    """A background condition that records each wait's timeout in ``waits`` (and
    ``woken``, if given, at each notify_all) instead of waiting."""

    def __init__(self, waits: list, woken: str | None = None) -> None:
        self.waits, self.woken = waits, woken

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait(self, timeout=None):
        self.waits.append(timeout)

    def notify_all(self):
        if self.woken is not None:
            self.waits.append(self.woken)


def test_an_idle_worker_sleeps_until_work_while_a_task_polls_for_the_rank(transport):
    """While a foreground thread waits (it polls for the rank), an idle worker waits to
    be woken (work comes with the core's Notify) or _PARKED_S, not idle_sleep_ms: each
    look took the GIL from the task (heat2d's step mean +6 %). The service loop, which
    has a tick (``remaining``), still looks within idle_sleep_ms, and so does a worker
    while another background thread polls."""
    waits: list = []
    transport._bg_cond = _Cond(waits)
    transport._user_waiters.append(1)          # a task thread waits in recv
    transport._background_step(None, spin=False)
    transport._background_step(0.05, spin=False)
    transport._user_waiters.clear()
    transport._bg_poller = 2                   # another background thread polls
    transport._background_step(None, spin=False)
    assert waits == [T._PARKED_S, transport._idle_max_s, transport._idle_max_s]


def test_an_idle_worker_polls_again_soon_after_the_task_stops_and_at_once_when_it_ends(
        transport, monkeypatch):
    """Between a task's waits (it computes) an idle worker stays parked, but only for
    _PARKED_S after the last one: then it polls for the rank, which nobody else does (a
    sender rings no doorbell within doorbell.RING_AFTER_S of its last message). When
    the task ends (``foreground_done``) it polls at once, woken."""
    waits: list = []
    polls: list = []
    transport._bg_cond = _Cond(waits, woken="woken")
    monkeypatch.setattr(transport, "try_poll", lambda: polls.append(1) or 0)
    monkeypatch.setattr(transport, "_pause", lambda remaining, spin: None)
    assert transport.wait(lambda: True)           # (a wait that ends at once records nothing)
    transport.wait(iter([False, True]).__next__, timeout=1.0)   # the task's last wait
    transport._background_step(None, spin=False)
    assert waits == [T._PARKED_S] and not polls   # parked: the task polled just now
    transport._fg_at -= T._PARKED_S
    transport._background_step(None, spin=False)
    assert polls == [1]                           # no foreground wait for _PARKED_S
    transport.wait(iter([False, True]).__next__, timeout=1.0)
    transport.foreground_done()                   # the task ended
    transport._background_step(None, spin=False)
    assert waits == [T._PARKED_S, "woken"] and polls == [1, 1]


def test_a_poll_that_took_a_message_leaves_the_light_requests_to_an_empty_one(sender):
    """The reply's poll does not test the waiter's own last Isend (one MPI call a message
    on the round trip's path): an empty poll completes it, or a send once _LIGHT_MAX are
    kept."""
    sender.send(2, ("m", 0))
    [req] = sender.comm.requests
    req.complete = True
    sender.handler = lambda src, msg: None
    sender.comm.queue(2, ("reply", 0))
    assert sender.try_poll() == 1
    assert len(sender._light) == 1           # complete, but left for later
    assert sender.try_poll() == 0
    assert not sender._light                 # the empty poll took it
    for i in range(T._LIGHT_MAX + 1):
        sender.send(2, ("m", i))
    for r in sender.comm.requests:
        r.complete = True
    sender.send(2, ("m", "one more"))        # more than _LIGHT_MAX kept: completed here
    assert len(sender._light) <= 1
