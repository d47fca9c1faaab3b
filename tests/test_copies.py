"""clustervm.copies: the checkpoint copies a node holds (no MPI)."""
from __future__ import annotations

import numpy as np

from clustervm import wire
from clustervm.copies import KEEP, Copies


def test_a_task_keeps_its_newest_copies_and_forgets_them_when_it_ends() -> None:
    c = Copies()
    for seq in range(1, 5):
        c.put(7, 0, seq, bytes([seq]) * 10)
    assert KEEP == 2 and len(c) == 2
    assert c.get(7, 1) is None and c.get(7, 2) is None
    assert c.get(7, 3) == b"\x03" * 10 and c.get(7, 4) == b"\x04" * 10
    c.put(8, 1, 1, b"x" * 5)
    assert c.nbytes == 25
    c.put(7, 1, 4, b"y" * 3)           # a restarted incarnation's same number: replaced
    assert c.get(7, 4) == b"yyy" and c.nbytes == 18
    assert c.put(7, 0, 4, b"z" * 3) == [b"zzz"]   # an old incarnation's (woke up): refused
    assert c.get(7, 4) == b"yyy"
    c.drop(7)
    assert c.get(7, 3) is None and len(c) == 1 and c.nbytes == 5


def test_a_large_blob_travels_out_of_band_and_comes_back_whole() -> None:
    small = b"s" * 100
    assert wire.as_blob_frame(small) is small
    big = bytes(range(256)) * 1024
    frame = wire.as_blob_frame(big)
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    payload, bufs = wire.dumps((30, 1, 0, 2, frame))
    assert len(payload) < 200 and sum(b.nbytes for b in bufs) == len(big)   # not copied in
    got = wire.loads(payload, [bytearray(b) for b in bufs])[4]
    assert bytes(got) == big
    c = Copies()
    c.put(1, 0, 2, got)
    assert c.nbytes == len(big) and bytes(c.get(1, 2)) == big


def test_memory_for_a_first_big_checkpoint_is_made_ready_behind_the_task() -> None:
    """prepare: True (skip) while a thread touches the memory, then False and the memory
    is the task's spare, of the size asked for; a task with a copy held needs none; a
    task that ends while its memory is made ready leaves none behind."""
    import time
    c = Copies()
    size = 3 << 20
    assert c.prepare(5, size) is True
    deadline = time.monotonic() + 10
    while c.prepare(5, size):
        assert time.monotonic() < deadline, "the memory was never made ready"
        time.sleep(0.005)
    spare = c.take_spare(5)
    assert spare is not None and len(spare) == size
    blob = wire.pack_frames([b"h" * (size - wire.packed_size([b""]))], into=spare, mutable=True)
    assert len(blob) == size and np.shares_memory(blob, spare)
    c.put_own(6, 0, 1, b"small")            # held: nothing to make ready
    assert c.prepare(6, size) is False
    assert c.prepare(9, size) is True
    c.drop(9)
    deadline = time.monotonic() + 10
    while 9 in c._warming:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert c.take_spare(9) is None


def test_a_big_blob_refills_the_memory_of_one_a_little_smaller_or_larger() -> None:
    """A checkpoint's size moves with the messages it carries: its next blob goes into
    the old one's memory if it fits (big blobs get 1/16 more room), else into new."""
    n = 4 << 20
    first = wire.pack_frames([b"h", np.ones(n, np.uint8)], mutable=True)
    for m in (n - 1000, n + 1000, n + n // 32):
        again = wire.pack_frames([b"h", np.full(m, 7, np.uint8)], into=first, mutable=True)
        assert np.shares_memory(again, first) and len(again) == wire.packed_size(
            [b"h", np.empty(m, np.uint8)])
        assert bytes(wire.unpack_frames(again)[1][-3:]) == b"\x07\x07\x07"
    bigger = wire.pack_frames([b"h", np.ones(2 * n, np.uint8)], into=first, mutable=True)
    assert not np.shares_memory(bigger, first)
