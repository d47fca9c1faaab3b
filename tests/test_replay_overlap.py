"""The replay log's copy of a big array is made while the array is sent (issue 13 item
2): one rank's Site with a transport that records what it is given (no MPI)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from clustervm import protocol as P
from clustervm.config import Config
from clustervm.frames import one_frame
from clustervm.replaylog import Sent
from clustervm.site import Location, Site

SRC, DST, TAG = 5, 9, 3


class Recorder:
    """A transport of rank 1 that keeps what it is asked to send; ``during_send`` runs
    inside a send, before its ``meanwhile``."""
    rank = 1
    allow_pickle = False

    def __init__(self) -> None:
        self.handler = None
        self.sent: list[Any] = []
        self.frames: list[bytes | None] = []      # the frame given with each message sent
        self.posted: list[tuple[int, Any]] = []
        self.during_send: Callable[[], None] = lambda: None
        self.meanwhile_given: list[bool] = []

    def frame_of(self, msg: Any, flat_at: int | None = None) -> bytes | None:
        return one_frame(msg, flat_at, self.allow_pickle, 1 << 24)

    def send(self, dest: int, msg: Any, meanwhile: Callable[[], Any] | None = None,
             flat_at: int | None = None, frame: bytes | None = None) -> None:
        self.sent.append(msg)
        self.frames.append(frame)
        self.meanwhile_given.append(meanwhile is not None)
        self.during_send()
        if meanwhile is not None:
            meanwhile()

    def post(self, dest: int, msg: Any) -> bool:
        self.posted.append((dest, msg))
        return True


def _site() -> tuple[Site, Recorder, Any]:
    t = Recorder()
    site = Site(t, Config())  # type: ignore[arg-type]
    ctx = SimpleNamespace(tid=SRC, inc=0)
    site.contexts[SRC] = ctx
    site.locations[DST] = Location(2, 0, True)
    return site, t, ctx


def test_a_big_array_is_logged_as_sent_and_copied_while_it_goes():
    site, t, ctx = _site()
    arr = np.arange(1 << 18, dtype=np.float64)          # 2 MiB
    seen: list[Any] = []
    t.during_send = lambda: seen.append(ctx._outlog[DST][-1][2])
    site.send_user(SRC, 0, DST, TAG, arr, 1)
    assert t.meanwhile_given == [True]
    assert seen[0] is arr                      # logged as it is while it was on its way
    logged = ctx._outlog[DST][-1]
    assert logged[:2] == (1, TAG) and logged[2] is not arr
    arr[:] = -1                                # the sender changes it after send returns
    assert logged[2][10] == 10.0 and ctx._uncopied is None


def test_a_small_message_is_logged_as_the_frame_it_goes_in():
    """The frame is a copy of the message already (issue 13 item 2): the log keeps it and
    makes none of its own; a replay decodes it. A message to a task on the same rank has
    no frame: the log keeps a copy of its data."""
    site, t, ctx = _site()
    small = np.arange(100.0)
    site.send_user(SRC, 0, DST, TAG, small, 1)
    site.send_user(SRC, 0, DST, TAG, {"step": 2}, 2)
    (s1, tag1, row), (s2, _, value) = ctx._outlog[DST]
    assert t.meanwhile_given == [False, False] and (s1, tag1, s2) == (1, TAG, 2)
    assert type(row) is Sent and row.frame is t.frames[0]      # what was sent, no copy
    assert type(value) is Sent and value.frame is t.frames[1]
    small[:] = -1                              # the sender changes its array afterwards
    site._on_loc(0, P.Loc([(DST, 3, 1, True, {})]))            # the receiver restarted
    assert [m[6] for _, m in t.posted] == [1, 2]
    assert np.array_equal(t.posted[0][1][4], np.arange(100.0)) and t.posted[1][1][4] == {"step": 2}
    site.locations[DST] = Location(site.rank, 0, True)         # now on this rank
    site.deliver = lambda *args: None
    site.send_user(SRC, 0, DST, TAG, small, 3)
    assert ctx._outlog[DST][-1][0] == 3 and type(ctx._outlog[DST][-1][2]) is np.ndarray


def test_a_replay_while_the_copy_is_not_made_sends_a_copy_of_its_own():
    site, t, ctx = _site()
    arr = np.arange(1 << 18, dtype=np.float64)

    def receiver_moved():        # the receiver restarted elsewhere, as LOC says
        site._on_loc(0, P.Loc([(DST, 3, 1, True, {})]))
    t.during_send = receiver_moved
    site.send_user(SRC, 0, DST, TAG, arr, 1)
    [(rank, msg)] = t.posted
    assert rank == 3 and msg[0] == P.User.OP and msg[6] == 1
    assert msg[4] is not arr and np.array_equal(msg[4], np.arange(1 << 18, dtype=np.float64))
    assert ctx._outlog[DST][-1][2] is not arr      # and the log got its copy after
