"""Checkpoint files nodes write themselves (clustervm.nodefiles), and the coordinator's
reading of them: no MPI (the drills in tests/test_buddy.py use them in real jobs)."""
import os
import threading

import numpy as np
import pytest

from clustervm import nodefiles, wire
from clustervm.copies import Copies


class Writer:
    """An OwnFiles of node ``rank`` whose callbacks are recorded."""

    def __init__(self, directory, rank=1):
        self.done, self.released = [], []
        self.files = nodefiles.OwnFiles(str(directory), rank,
                                        lambda *a: self.done.append(a), self.released.append)

    def settle(self):
        assert self.files.flush(10)


def blob(value):
    head, bufs = wire.dumps({"state": value}, allow_pickle=False)
    return wire.pack_frames([head, *bufs])


def state_of(frames):
    parts = wire.unpack_frames(bytearray(frames[0]))
    return wire.loads(parts[0], parts[1:])["state"]


def test_a_job_names_its_directory_and_a_node_checks_the_name(tmp_path):
    assert not nodefiles.shared(str(tmp_path), "job-a")         # nothing announced yet
    nodefiles.announce(str(tmp_path), "job-a")
    assert nodefiles.shared(str(tmp_path), "job-a")
    assert not nodefiles.shared(str(tmp_path), "job-b")         # another job's directory
    assert not nodefiles.shared(str(tmp_path), None)


def test_written_files_are_read_back_newest_first_by_the_coordinator(tmp_path):
    w = Writer(tmp_path)
    b1, b2 = blob(np.arange(4.0)), blob(np.arange(4.0) * 2)
    w.files.write(7, 0, 1, b1)
    w.settle()
    w.files.write(7, 0, 2, b2)
    w.settle()
    assert w.done == [(7, 0, 1, None), (7, 0, 2, None)]
    assert w.released == [b1, b2]          # each blob handed back once written
    files = nodefiles.NodeFiles(str(tmp_path))
    assert sorted((t, s, i) for t, s, i, _age in files.held([7, 8])) == [(7, 1, 0), (7, 2, 0)]
    seq, frames = files.load(7)
    assert seq == 2 and np.array_equal(state_of(frames), np.arange(4.0) * 2)
    assert files.load(7, 1)[0] == 1 and files.load(7, upto=1)[0] == 1
    assert files.load(7, 3) is None and files.load(8) is None
    w.files.close(5)


def test_a_write_superseded_in_the_queue_is_skipped_and_handed_back(tmp_path, monkeypatch):
    w = Writer(tmp_path)
    gate, writing = threading.Event(), threading.Event()
    save = w.files.store.save

    def slow_save(key, seq, frames, **kw):
        if seq == 1:                           # the first write waits: two more queue up
            writing.set()
            assert gate.wait(10)
        return save(key, seq, frames, **kw)

    monkeypatch.setattr(w.files.store, "save", slow_save)
    b1, b2, b3 = blob(1), blob(2), blob(3)
    w.files.write(3, 0, 1, b1)
    assert writing.wait(10)
    w.files.write(3, 0, 2, b2)
    w.files.write(3, 0, 3, b3)
    gate.set()
    w.settle()
    assert [d[2] for d in w.done] == [1, 3]    # 2 was superseded by 3 before its turn
    assert w.released == [b1, b2, b3]          # each handed back once (2 unwritten)
    assert nodefiles.NodeFiles(str(tmp_path)).load(3)[0] == 3
    w.files.close(5)


def test_a_damaged_file_is_skipped_for_the_version_before(tmp_path, caplog):
    w = Writer(tmp_path)
    for seq in (1, 2):
        w.files.write(5, 0, seq, blob(seq))
        w.settle()
    files = nodefiles.NodeFiles(str(tmp_path))
    path = next(p for s, _i, p, _r in files.versions([5])[5] if s == 2)
    with open(path, "r+b") as f:           # a flipped byte in the last frame
        f.seek(-8, os.SEEK_END)
        byte = f.read(1)
        f.seek(-8, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    seq, frames = files.load(5)
    assert seq == 1 and state_of(frames) == 1
    assert "checkpoint of task 5 skipped" in caplog.text and "checksum" in caplog.text
    w.files.close(5)


def test_a_newer_incarnation_drops_the_older_ones_files_on_its_node(tmp_path):
    w = Writer(tmp_path)
    w.files.write(4, 0, 3, blob("old"))
    w.settle()
    w.files.write(4, 1, 4, blob("new"))
    w.settle()
    assert [(s, i) for s, i, _p, _r in nodefiles.NodeFiles(str(tmp_path)).versions([4])[4]] \
        == [(4, 1)]
    w.files.close(5)


def test_a_restored_incarnation_deletes_what_the_older_ones_wrote_after_its_checkpoint(
        tmp_path):
    w = Writer(tmp_path)
    for seq in (5, 6):
        w.files.write(4, 0, seq, blob(seq))
        w.settle()
    w.files.forget_after(4, 1, 5)              # incarnation 1 starts from checkpoint 5
    w.files.write(4, 0, 7, blob(7))            # incarnation 0's, still queued: not written
    w.settle()
    assert [(s, i) for s, i, _p, _r in nodefiles.NodeFiles(str(tmp_path)).versions([4])[4]] \
        == [(5, 0)]
    assert [d[2] for d in w.done] == [5, 6]
    w.files.forget(4)                          # the task is over: nothing more of it
    w.files.write(4, 1, 8, blob(8))
    w.settle()
    assert [d[2] for d in w.done] == [5, 6]
    nodefiles.NodeFiles(str(tmp_path)).drop(4, ())    # the coordinator's, once durable
    assert nodefiles.NodeFiles(str(tmp_path)).versions([4]) == {}
    w.files.close(5)


def test_the_coordinator_deletes_a_lost_nodes_files_of_a_course_not_taken(tmp_path):
    """Task 9 ran on node 1 (lost after writing checkpoints 5 and 6) and starts again
    from checkpoint 5 as incarnation 1: node 1's checkpoint 6 goes; node 2 (alive)
    deletes its files itself."""
    lost, alive = Writer(tmp_path, rank=1), Writer(tmp_path, rank=2)
    for seq in (5, 6):
        lost.files.write(9, 0, seq, blob(seq))
        lost.settle()
    alive.files.write(9, 0, 7, blob(7))
    alive.settle()
    files = nodefiles.NodeFiles(str(tmp_path))
    files.drop(9, alive=[2], newer_than=5, below_inc=1)
    assert sorted((s, r) for s, _i, _p, r in files.versions([9])[9]) == [(5, 1), (7, 2)]
    files.drop(9, alive=[2])                   # the task is over: node 1's files go
    assert [(s, r) for s, _i, _p, r in files.versions([9])[9]] == [(7, 2)]
    for w in (lost, alive):
        w.files.close(5)


def test_a_file_written_after_the_task_went_on_without_it_is_never_read(tmp_path):
    """Task 9 went on from its checkpoint 5 as incarnation 1; its node 1, found dead but
    only hung, wakes and writes checkpoint 6 of incarnation 0 afterwards (after the
    coordinator deleted what it found). That file is off the task's course: neither read
    nor reported, by this run or by a resume that replays the journaled restart; only
    a drop deletes it."""
    hung = Writer(tmp_path, rank=1)
    hung.files.write(9, 0, 5, blob(5))
    hung.settle()
    files = nodefiles.NodeFiles(str(tmp_path))
    files.restarted(9, 1, 5)
    hung.files.write(9, 0, 6, blob(6))      # late
    hung.settle()
    for reader in (files, nodefiles.NodeFiles(str(tmp_path))):
        if reader is not files:             # --resume: the journal's record replayed
            reader.restarted(9, 1, 5)
        assert reader.load(9)[0] == 5 and reader.load(9, 6) is None
        assert [(t, s, i) for t, s, i, _age in reader.held([9])] == [(9, 5, 0)]
        assert not reader.on_course(9, 6, 0) and reader.on_course(9, 6, 1)
    assert sorted(s for s, *_ in files.versions([9], every=True)[9]) == [5, 6]
    assert nodefiles.NodeFiles(str(tmp_path)).load(9)[0] == 6     # without the record
    files.drop(9, alive=[])
    assert files.versions([9], every=True) == {}
    hung.files.close(5)


def test_a_blob_being_written_never_becomes_the_next_checkpoints_memory():
    copies = Copies()
    blobs = [wire.blob_memory(1 << 16) for _ in range(4)]
    copies.pin(blobs[0])
    for seq, b in enumerate(blobs[:3], 1):
        copies.put_own(1, 0, seq, b)           # the third pushes out the first
    assert copies.take_spare(1) is not blobs[0]
    copies.unpin(blobs[0])
    copies.put_own(1, 0, 4, blobs[3])          # pushes out the second: not pinned
    assert copies.take_spare(1) is blobs[1]


@pytest.mark.parametrize("name", ["12.x", "a.0", "12", "12.0.1"])
def test_files_of_other_keys_are_not_taken_for_a_tasks(name, tmp_path):
    from clustervm.checkpoint import CheckpointStore
    store = CheckpointStore(os.path.join(str(tmp_path), "nodes", "1"), fsync=True)
    store.save(name, 1, [blob(0)])
    assert nodefiles.NodeFiles(str(tmp_path)).versions([12]) == {}
