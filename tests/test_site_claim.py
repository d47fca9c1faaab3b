"""A waiting task takes the message it waits for from its own poll (``Site.claimer``,
Endpoint.wait's ``claim``): only when ``Site.deliver`` would have put it into the
mailbox at once, and with the mailbox counting it as delivered. Pure: no MPI (the real
path is covered by the jobs of tests/test_messaging_api.py and the chaos drills)."""
from __future__ import annotations

import mpi4py

mpi4py.rc.initialize = False     # no singleton MPI_Init in the test process
mpi4py.rc.finalize = False

import pytest  # noqa: E402

from clustervm import protocol as P  # noqa: E402
from clustervm.config import Config  # noqa: E402
from clustervm.inprocess import InProcessWorld  # noqa: E402
from clustervm.protocol import ANY, SYSTEM  # noqa: E402
from clustervm.site import Location, Site  # noqa: E402

ME, PEER, OTHER = 11, 10, 12


def user(src: int, tag: int, data, seq: int, inc: int = 0, dst: int = ME) -> tuple:
    return (P.User.OP, src, dst, tag, data, inc, seq)


@pytest.fixture
def site():
    world = InProcessWorld(2)
    s = Site(world.transport(0), Config())
    yield s
    world.close()


def claimer(site: Site, source: int = ANY, tag: int = ANY):
    box, got = site.mailbox(ME), []
    return site.claimer(ME, box, source, tag, got), box, got


def test_the_next_message_that_matches_is_taken_and_counted(site):
    claim, box, got = claimer(site, PEER, 3)
    assert claim(user(PEER, 3, b"hi", 1))
    assert got == [(PEER, 3, b"hi")] and got[0].data == b"hi"
    assert box.delivered == {PEER: 1} and box.incs == {PEER: 0} and not box.items
    site.deliver(PEER, ME, 3, b"again", 0, 1)      # a replayed duplicate: dropped
    assert not box.items
    site.deliver(PEER, ME, 3, b"next", 0, 2)
    assert [m[2] for m in box.items] == [b"next"]


@pytest.mark.parametrize("raw, why", [
    (user(PEER, 4, b"x", 1), "another tag"),
    (user(OTHER, 3, b"x", 1), "another sender"),
    (user(PEER, 3, b"x", 1, dst=OTHER), "for another task"),
    (user(PEER, 3, b"x", 2), "a gap: message 1 is still on its way"),
    (user(PEER, 3, b"x", 0), "a duplicate"),
    ((P.User.OP, PEER, ME, 3, b"x"), "not a task message"),
    (user(PEER, 3, b"x", "1"), "a malformed one"),
])
def test_what_deliver_would_not_put_in_at_once_is_left_to_it(site, raw, why):
    claim, box, got = claimer(site, PEER, 3)
    assert not claim(raw), why
    assert not got and box.delivered == {}


def test_nothing_is_taken_past_a_message_already_in_the_mailbox(site):
    claim, box, got = claimer(site)
    site.deliver(OTHER, ME, 5, b"first", 0, 1)
    assert not claim(user(PEER, 3, b"second", 1))       # order of arrival is kept
    assert not got


def test_held_back_rolled_back_and_older_incarnations_are_left_to_deliver(site):
    claim, box, got = claimer(site)
    site.deliver(PEER, ME, 3, b"two", 0, 2)              # held back: 1 has not come
    assert site.holdback.get(ME) and not claim(user(PEER, 3, b"one", 1))
    site.holdback.clear()
    site.rolling[ME] = 0                                 # its group goes back
    assert not claim(user(PEER, 3, b"one", 1))
    del site.rolling[ME]
    site.locations[PEER] = Location(1, 2, False)         # the sender's incarnation 2 runs
    assert not claim(user(PEER, 3, b"one", 1, inc=1))
    assert claim(user(PEER, 3, b"one", 1, inc=2))
    box.group = True                                     # a group peer's newer incarnation
    assert not claim(user(PEER, 3, b"two", 2, inc=3))
    assert len(got) == 1


def test_any_source_never_takes_a_notification(site):
    claim, box, got = claimer(site, ANY, ANY)
    assert not claim(user(SYSTEM, 3, b"event", 1))
    assert claim(user(PEER, 3, b"x", 1))


class _Sender:
    """A sending task's context as Site's replay log sees it."""

    def __init__(self, tid: int) -> None:
        self.tid, self.inc = tid, 0


def test_a_trim_takes_a_prefix_off_the_list_the_sender_appends_to(site):
    """The task thread appends to its replay log without the lock (Site._log_copy): a
    receiver's checkpoint trims that same list in place, so an entry appended after the
    trim began is never lost with a replaced list, and what was delivered is gone."""
    ctx = _Sender(PEER)
    site.contexts[PEER] = ctx
    for seq in (1, 2, 3):
        assert site._log_copy(ctx, ME, seq, 5, b"m%d" % seq, 2)
    held = ctx._outlog[ME]
    site._trim_and_replay(ME, 1, 0, {PEER: 2}, replay_all=False)
    assert ctx._outlog[ME] is held and held == [(3, 5, b"m3")]
    assert site._log_copy(ctx, ME, 4, 5, b"m4", 2)
    assert [e[0] for e in ctx._outlog[ME]] == [3, 4] and ctx._outbytes[ME] == 4


def test_a_send_without_replay_log_goes_out_at_once_or_names_what_cannot_go(site):
    """Site.send_user's path for a task without a replay log (a known rank, nothing to
    log): the message leaves as a USER message; one that cannot be encoded is not sent,
    and the error names where in the message the culprit is, as on the general path."""
    import threading

    from clustervm.errors import WireError

    peer = site.transport.world.transport(1)
    got = []
    peer.handler = lambda src, msg: got.append(msg)
    site.locations[OTHER] = Location(1, 0, False)
    site.send_user(PEER, 0, OTHER, 3, {"k": b"v"}, 1)
    assert peer.wait(lambda: got, timeout=5)
    assert tuple(got[0]) == (P.User.OP, PEER, OTHER, 3, {"k": b"v"}, 0, 1)
    with pytest.raises(WireError, match=r"at \['k'\]"):
        site.send_user(PEER, 0, OTHER, 3, {"k": threading.Lock()}, 2)



def test_a_task_waits_with_the_same_claim_for_one_source_and_tag_each_time(site):
    """recv makes what it waits with once for each (source, tag) (TaskContext._waiter:
    ~0.4 us a message less); a wait that timed out, took a message or was aborted
    leaves nothing behind in it."""
    import threading

    from clustervm.task import TaskAborted, TaskContext

    ctx = TaskContext(site, ME, None)
    with pytest.raises(TimeoutError):
        ctx.recv(PEER, 3, timeout=0.01)
    first = ctx._waiters[PEER, 3]
    assert first[2] == []
    later = threading.Timer(0.02, site.deliver, (PEER, ME, 3, b"one", 0, 1))
    later.start()
    assert ctx.recv(PEER, 3, timeout=5).data == b"one"     # came while it waited
    later.join()
    assert ctx._waiters[PEER, 3] is first and first[2] == []
    site.deliver(PEER, ME, 4, b"other tag", 0, 2)
    assert ctx.recv(PEER, 4).data == b"other tag"          # already here: no wait made
    assert set(ctx._waiters) == {(PEER, 3)}

    def abort() -> None:
        ctx.aborted = True
        site.transport.notify()

    later = threading.Timer(0.02, abort)
    later.start()
    with pytest.raises(TaskAborted):
        ctx.recv(PEER, 3, timeout=5)
    later.join()
    assert first[2] == []
