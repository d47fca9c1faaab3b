"""The replay log's checkpointed form (clustervm.replaylog): no MPI."""
import numpy as np
import pytest

from clustervm import replaylog, wire
from clustervm.blocks import Blocks
from clustervm.errors import CorruptCheckpointError
from clustervm.frames import one_frame


def _through_wire(form):
    head, bufs = wire.dumps({"outlog": form}, allow_pickle=False)
    frames = wire.unpack_frames(bytearray(wire.pack_frames([head, *bufs])))
    return wire.loads(frames[0], frames[1:])["outlog"]


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1] and type(a[2]) is type(b[2])
    if isinstance(a[2], np.ndarray):
        assert a[2].dtype == b[2].dtype and a[2].shape == b[2].shape
        assert np.array_equal(a[2], b[2])
    else:
        assert a[2] == b[2]


@pytest.mark.parametrize("shape", [(256,), (4, 3), (2, 3, 5)])
@pytest.mark.parametrize("blocks", [None, Blocks(1 << 10, 1 << 20, 1 << 20)])
def test_arrays_of_one_shape_are_stacked_and_come_back_entry_by_entry(blocks, shape):
    """(Rows, 1-d, are joined end to end; blocks of more dimensions stacked.)"""
    rows = [np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) * i
            for i in range(10)]
    log = {7: [(i + 1, 3, r) for i, r in enumerate(rows)]}
    form = replaylog.pack(log, blocks)
    assert set(form[7]) == {"seq", "tag", "rows"} and form[7]["rows"].shape == (10, *shape)
    back = replaylog.unpack(_through_wire(form))
    assert list(back) == [7] and len(back[7]) == 10
    for a, b in zip(log[7], back[7]):
        _same(a, b)


def test_other_logs_stay_lists_of_entries():
    log = {
        1: [(1, 0, "text"), (2, 0, b"raw"), (3, 0, {"k": [1, 2]})],     # not arrays
        2: [(i, 0, np.zeros(3 + i)) for i in range(5)],                   # shapes differ
        3: [(i, 0, np.zeros(3, np.int32 if i else np.int64)) for i in range(5)],  # dtypes
        4: [(i, 0, np.float64(i)) for i in range(5)],                     # numpy scalars
        5: [(i, 0, np.array(float(i))) for i in range(5)],                # 0-d arrays
        6: [(1, 0, np.zeros(4)), (2, 0, np.ones(4))],                     # too few to stack
    }
    form = replaylog.pack(log)
    assert all(isinstance(form[d], list) for d in log)
    back = replaylog.unpack(_through_wire(form))
    for d in log:
        assert len(back[d]) == len(log[d])
        for a, b in zip(log[d], back[d]):
            _same(a, b)


def test_a_log_in_the_form_before_stacking_is_read():
    old = {"9": [[1, 2, "x"], [2, 2, "y"]]}      # as checkpoints before this form hold it
    assert replaylog.unpack(old) == {9: [(1, 2, "x"), (2, 2, "y")]}


def test_a_stacked_log_that_does_not_add_up_is_a_corrupt_checkpoint():
    form = replaylog.pack({4: [(i, 0, np.zeros(8)) for i in range(6)]})
    form[4]["seq"].pop()
    with pytest.raises(CorruptCheckpointError, match="task 4 holds 5 sequence numbers"):
        replaylog.unpack(form)


def test_pack_keeps_each_receivers_entries_as_they_were_at_the_call():
    """A node trims a receiver's log in place on its service thread (Site._trim_and_replay)
    while the task thread checkpoints it: the packed form must not change under it."""
    live = [(1, 3, b"a"), (2, 3, b"b")]
    form = replaylog.pack({7: live})
    del live[:1]
    live.append((3, 3, b"c"))
    assert form[7] == [(1, 3, b"a"), (2, 3, b"b")]


def _sent(seq, tag, data):
    """A log entry as Site logs a message that went out in one frame."""
    frame = one_frame((20, 5, 9, tag, data, 0, seq), 4, False, 1 << 24)
    assert frame is not None
    return (seq, tag, replaylog.Sent(frame))


@pytest.mark.parametrize("rows", [5, 40])
def test_messages_logged_as_sent_are_checkpointed_as_their_frames_and_read_back(rows):
    """A receiver's entries all logged as their frames go into the checkpoint as the
    frames end to end (one buffer; from 64 KiB on, out of band), and come back as frames
    that decode to the data sent: flat rows, msgpack values, small arrays packed with
    their message."""
    values = [np.arange(256.0) * i for i in range(rows)] + [{"k": [1, 2]}, b"raw",
                                                            [np.ones(3), "x"]]
    log = {7: [_sent(i + 1, 3, v) for i, v in enumerate(values)]}
    form = replaylog.pack(log)
    assert set(form[7]) == {"seq", "tag", "frames", "ends"}
    assert isinstance(form[7]["frames"], bytes if rows == 5 else np.ndarray)
    back = replaylog.unpack(_through_wire(form))
    assert [(e[0], e[1]) for e in back[7]] == [(i + 1, 3) for i in range(len(values))]
    for e, want in zip(back[7], values):
        assert type(e[2]) is replaylog.Sent
        got = replaylog.data_of(e)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and np.array_equal(got, want)
        elif isinstance(want, list):
            assert np.array_equal(got[0], want[0]) and got[1] == want[1]
        else:
            assert got == want


def test_a_log_of_frames_and_copies_is_checkpointed_decoded():
    """A receiver with entries of both kinds (a send and an isend): the frames are
    decoded, so that rows of one shape are still stacked."""
    log = {4: [_sent(1, 0, np.zeros(8)), (2, 0, np.ones(8)), _sent(3, 0, np.full(8, 2.0)),
               (4, 0, np.full(8, 3.0))]}
    form = replaylog.pack(log)
    assert set(form[4]) == {"seq", "tag", "rows"}
    back = replaylog.unpack(_through_wire(form))
    assert [float(e[2][0]) for e in back[4]] == [0.0, 1.0, 2.0, 3.0]


def test_a_log_of_frames_that_does_not_add_up_is_a_corrupt_checkpoint():
    form = replaylog.pack({4: [_sent(i, 0, b"m%d" % i) for i in range(3)]})
    form[4]["ends"][-1] += 1
    with pytest.raises(CorruptCheckpointError, match="task 4 holds 3 sequence numbers"):
        replaylog.unpack(form)


def test_a_frame_store_keeps_copies_in_chunks_used_again_once_their_frames_are_gone():
    """Frames end to end, each 8-aligned, in chunks from a pool; a chunk whose frames are
    all gone (trimmed from the log) is the next one a store takes."""
    pool = Blocks(64 << 10, 4 << 20, 8 << 20)
    store = replaylog.FrameStore(pool)
    kept = [store.keep(bytes([i]) * 2001) for i in range(3)]
    assert [bytes(k) for k in kept] == [bytes([i]) * 2001 for i in range(3)]
    addr = [np.frombuffer(k, np.uint8).ctypes.data for k in kept]
    assert addr[1] - addr[0] == 2008 and all(a % 8 == 0 for a in addr)
    big = b"x" * (replaylog.FrameStore.LARGEST + 1)
    assert store.keep(big) is big                                  # kept as it is
    for _ in range(11):                                            # fills the chunk
        store.keep(b"y" * 100_000)
    nxt = store.keep(b"z" * 5000)                                  # in a second chunk
    second = np.frombuffer(nxt, np.uint8).ctypes.data
    assert not addr[0] <= second < addr[0] + replaylog.FrameStore.CHUNK
    again = replaylog.FrameStore(pool).keep(b"w" * 10)
    assert np.frombuffer(again, np.uint8).ctypes.data != addr[0]   # the first: in use
    del kept, again
    reused = replaylog.FrameStore(pool).keep(b"v" * 10)
    assert np.frombuffer(reused, np.uint8).ctypes.data == addr[0] and bytes(nxt) == b"z" * 5000


def test_a_task_that_logs_a_few_messages_takes_a_small_chunk():
    """Chunks start small and double (up to CHUNK): a short task sending a handful of
    messages does not hold a whole CHUNK."""
    pool = Blocks(64 << 10, 4 << 20, 64 << 20)
    store = replaylog.FrameStore(pool)
    for i in range(5):
        store.keep(b"m" * 300)
    assert pool.nbytes < 2 * replaylog.FrameStore.FIRST
    for i in range(3000):                      # ~6 MB: chunks of 64 KiB, 128 KiB, ... 1 MiB
        store.keep(b"r" * 2100)
    sizes = sorted(pool._room)
    assert sizes[0] < 2 * replaylog.FrameStore.FIRST and sizes[-1] >= replaylog.FrameStore.CHUNK
