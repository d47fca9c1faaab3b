"""Checkpoint copies in /dev/shm (clustervm.shmcopies), in one process: no MPI."""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clustervm import shmcopies, wire
from clustervm.copies import Copies

pytestmark = pytest.mark.skipif(not os.path.isdir(shmcopies.SHM_DIR), reason="no /dev/shm")


@pytest.fixture
def shm():
    job = shmcopies.enabled_key(f"test-{secrets.token_hex(4)}")
    copies = shmcopies.ShmCopies(job, 3)
    yield job, copies
    copies.close()
    shmcopies.sweep(job)


def frames_of(state) -> list:
    head, bufs = wire.dumps({"state": state}, allow_pickle=False)
    return [head, *bufs]


def state_of(blob) -> dict:
    frames = wire.unpack_frames(blob)
    return wire.loads(frames[0], frames[1:])["state"]


def test_a_copy_reads_back_what_was_packed(shm):
    job, copies = shm
    arr = np.arange(40000, dtype=np.float64)        # big: placed as in its page
    frames = frames_of({"u": arr, "step": 7})
    ref = copies.write(5, 0, 1, frames)
    assert ref is not None and len(ref) == wire.packed_size(frames)
    assert os.path.basename(ref.path).startswith(f"{shmcopies.PREFIX}{job}-3-5-0-")
    blob = ref.read()
    assert bytes(blob) == bytes(wire.pack_frames(frames))
    got = state_of(blob)
    assert got["step"] == 7 and np.array_equal(got["u"], arr)


def test_a_file_written_again_is_not_read_as_the_old_copy(shm, caplog):
    """Each task has SLOTS files, written in turn: once the file of a copy holds a newer
    checkpoint, the old copy reads as missing (None, and a warning), never as the new
    one's bytes."""
    _, copies = shm
    refs = [copies.write(5, 0, seq, frames_of({"seq": seq, "pad": b"x" * 5000}))
            for seq in range(1, shmcopies.SLOTS + 2)]
    assert refs[0].path == refs[-1].path
    with caplog.at_level(logging.WARNING, logger="clustervm.shmcopies"):
        assert refs[0].read() is None
    assert "now holds another checkpoint" in caplog.text
    for seq, ref in enumerate(refs[1:], 2):
        assert state_of(ref.read())["seq"] == seq


def test_a_file_held_for_the_writer_is_not_written_again_until_released(shm):
    """A checkpoint this node also writes to its file (nodefiles) is written from the
    file in /dev/shm: hold() gives the blob's memory, and a later write that would go
    to that file is refused (None: the caller takes the MPI path), without skipping it
    in the turn (the next file may hold a copy the buddy holds), until release()."""
    _, copies = shm
    first = copies.write(5, 0, 1, frames_of({"seq": 1}))
    view = copies.hold(first)
    assert bytes(view) == bytes(first.read())
    later = [copies.write(5, 0, seq, frames_of({"seq": seq})) for seq in (2, 3)]
    assert all(r is not None and r.path != first.path for r in later)
    assert copies.write(5, 0, 4, frames_of({"seq": 4})) is None      # first's file, held
    assert copies.write(5, 0, 4, frames_of({"seq": 4})) is None      # still: no skipping
    assert state_of(bytes(view))["seq"] == 1
    assert copies.release(view) and not copies.release(view)
    again = copies.write(5, 0, 4, frames_of({"seq": 4}))
    assert again is not None and again.path == first.path
    assert copies.hold(first) is None                # written again since: no view


def test_a_bigger_checkpoint_makes_its_file_bigger(shm):
    _, copies = shm
    small = copies.write(5, 0, 1, frames_of({"a": np.zeros(10)}))
    for seq in range(2, shmcopies.SLOTS + 1):
        copies.write(5, 0, seq, frames_of({"a": np.zeros(10)}))
    big = copies.write(5, 0, 9, frames_of({"a": np.ones(300000)}))
    assert big.path == small.path
    assert np.array_equal(state_of(big.read())["a"], np.ones(300000))


def test_incarnations_and_tasks_have_their_own_files(shm):
    _, copies = shm
    a = copies.write(5, 0, 1, frames_of(1))
    b = copies.write(5, 1, 1, frames_of(2))
    c = copies.write(6, 0, 1, frames_of(3))
    assert len({a.path, b.path, c.path}) == 3
    assert [state_of(r.read()) for r in (a, b, c)] == [1, 2, 3]


def test_an_older_incarnations_files_go_once_two_of_the_new_ones_are_held(shm):
    """A task that went back on this node writes as a new incarnation; once its third
    checkpoint is written (a node writes one only when its buddy holds the one before),
    nobody holds the older incarnation's copies: its files are deleted."""
    _, copies = shm
    old = copies.write(5, 0, 4, frames_of(1))
    other = copies.write(6, 0, 4, frames_of(1))
    new = [copies.write(5, 1, seq, frames_of(seq)) for seq in (5, 6)]
    assert os.path.exists(old.path)
    new.append(copies.write(5, 1, 7, frames_of(7)))
    assert not os.path.exists(old.path) and os.path.exists(other.path)
    assert [state_of(r.read()) for r in new] == [5, 6, 7]


def test_drop_close_and_sweep_delete_the_files(shm, caplog):
    job, copies = shm
    a = copies.write(5, 0, 1, frames_of(1))
    b = copies.write(6, 0, 1, frames_of(2))
    copies.drop(5)
    assert not os.path.exists(a.path) and os.path.exists(b.path)
    with caplog.at_level(logging.WARNING, logger="clustervm.shmcopies"):
        assert a.read() is None
    assert "is gone" in caplog.text
    copies.close()
    assert not os.path.exists(b.path)
    # a killed node's files: rank 0 sweeps the job's, and no other job's
    other = shmcopies.ShmCopies(shmcopies.enabled_key("another-job"), 1)
    try:
        left = shmcopies.ShmCopies(job, 4).write(7, 0, 1, frames_of(3))
        theirs = other.write(7, 0, 1, frames_of(4))
        assert shmcopies.sweep(job) == 1
        assert not os.path.exists(left.path) and os.path.exists(theirs.path)
    finally:
        other.close()


def test_a_full_dev_shm_gives_none_not_a_crash(shm, monkeypatch, caplog):
    """No room for a file (posix_fallocate fails): the node is told None (and sends the
    bytes over MPI), with one warning."""
    _, copies = shm

    def full(fd, off, length):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    with caplog.at_level(logging.WARNING, logger="clustervm.shmcopies"):
        assert copies.write(5, 0, 1, frames_of(1)) is None
        assert copies.write(5, 0, 2, frames_of(2)) is None
    assert caplog.text.count("cannot write checkpoint copies") == 1
    assert not [n for n in os.listdir(shmcopies.SHM_DIR) if "-3-5-0-" in n
                and n.startswith(shmcopies.PREFIX + shm[0])]


def test_a_small_dev_shm_keeps_room_for_mpi(shm, monkeypatch, caplog):
    """A file is made only if /dev/shm keeps RESERVE bytes free after it (MPI's own
    segments go there too): else the node sends the bytes over MPI, said once."""
    _, copies = shm
    real = os.statvfs

    class Small:
        f_frsize = 4096
        f_bavail = (shmcopies.RESERVE >> 12) + 8        # 32 KiB more than the reserve

    monkeypatch.setattr(os, "statvfs", lambda path: Small())
    with caplog.at_level(logging.WARNING, logger="clustervm.shmcopies"):
        assert copies.write(5, 0, 1, frames_of({"a": np.zeros(100000)})) is None
    assert "MiB free" in caplog.text and "over MPI" in caplog.text
    monkeypatch.setattr(os, "statvfs", real)
    assert copies.write(6, 0, 1, frames_of({"a": np.zeros(10)})) is not None


def test_a_node_holds_a_shared_copy_without_a_spare():
    """Copies.put_own of a copy in /dev/shm only holds it: its files are the memory
    used again, so no spare is kept and no thread warms one."""
    c = Copies()
    ref = shmcopies.ShmRef("/dev/shm/none", 5, 0, 1, 1 << 20, 1)
    c.put_own(5, 0, 1, ref)
    assert c.get(5, 1) is ref and c.take_spare(5) is None and c.nbytes == 1 << 20


def test_the_host_id_is_the_same_in_a_process_and_differs_in_another_network():
    me = shmcopies.host_id()
    code = "from clustervm import shmcopies; print(shmcopies.host_id())"
    same = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
    assert same == me
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a network namespace needs root and unshare")
    other = subprocess.run(["unshare", "--net", sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=30)
    if other.returncode != 0:
        pytest.skip(f"unshare --net failed: {other.stderr.strip()}")
    assert other.stdout.strip() != me      # a simulated host (clustervm.testing.netns)


# -- in a VM of threads (clustervm.inprocess): a killed node's task restarts exactly ----

@pytest.mark.parametrize("same_host", [True, False], ids=["same-host", "other-hosts"])
def test_a_killed_nodes_task_restarts_from_its_buddys_copy(monkeypatch, same_host):
    """A ring of spawned tasks, one node killed half way: with every node on one host the
    buddies hold the copies as files in /dev/shm (KEEPREF) and one is read to restore;
    with every node on its own host (another host id each) each buddy answers UNSHARED
    once and gets the bytes over the transport from then on. Both give the undisturbed
    result, and leave no file behind."""
    from test_inprocess import lost, ring_killed_half_way

    from clustervm.node import Node

    job = f"test-{secrets.token_hex(4)}"
    monkeypatch.setenv("CLUSTERVM_JOB_KEY", job)
    if not same_host:
        hosts = iter(range(1000))
        monkeypatch.setattr(shmcopies, "host_id", lambda: f"host-{next(hosts)}")
    seen = {"ref": 0, "unshared": 0, "keep": 0}

    def counting(kind, handler):
        def handle(self, src, msg):
            seen[kind] += 1
            return handler(self, src, msg)
        return handle
    monkeypatch.setattr(Node, "_on_keep_ref", counting("ref", Node._on_keep_ref))
    monkeypatch.setattr(Node, "_on_unshared", counting("unshared", Node._on_unshared))
    monkeypatch.setattr(Node, "_on_keep", counting("keep", Node._on_keep))

    expected, got, ivm = ring_killed_half_way()
    assert got == expected
    coord = ivm.coordinator
    assert list(lost(coord)) == [2]
    assert seen["ref"] > 0
    if same_host:
        assert seen["unshared"] == 0
    else:       # every KEEPREF answered so (once per node and buddy), then bytes (KEEP)
        assert seen["unshared"] == seen["ref"] and seen["keep"] > seen["ref"], seen
    key = shmcopies.enabled_key(job)
    assert not [n for n in os.listdir(shmcopies.SHM_DIR)
                if n.startswith(f"{shmcopies.PREFIX}{key}-")]
