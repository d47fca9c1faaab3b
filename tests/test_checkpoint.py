"""Checkpoint store and job journal (pure Python, no MPI)."""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest

from clustervm.checkpoint import CheckpointStore, WriteBehind, file_version, safe_stem
from clustervm.errors import CheckpointError, CorruptCheckpointError
from clustervm.journal import Journal, Record

MiB = 1 << 20


def frames_for(seq: int) -> list[bytes]:
    return [b"payload-%d" % seq, b"", bytes([seq % 256]) * 1000]


def ckpt_files(d, key=None) -> list[str]:
    """Checkpoint files in d/ckpt (of one key if given), oldest seq first (the seq in
    each file's header: a key's slot files are reused)."""
    names = [n for n in os.listdir(os.path.join(d, "ckpt")) if n.endswith(".ckpt")]
    if key is not None:
        stem = safe_stem(key)
        names = [n for n in names if n.split(".")[0] == stem]
    paths = [os.path.join(d, "ckpt", n) for n in names]
    return sorted(paths, key=lambda p: file_version(p)[1])


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


# -- CheckpointStore -----------------------------------------------------------


@pytest.mark.parametrize("use_dir", [False, True])
def test_round_trip_several_frames(tmp_path, use_dir):
    store = CheckpointStore(tmp_path if use_dir else None)
    big = np.arange(MiB // 8, dtype=np.float64)
    frames = [b"\x93msgpack header", memoryview(big), bytearray(b"xyz"), b""]
    store.save("task-1", 1, frames)
    big[:] = -1  # the store must have copied the buffer
    seq, got = store.load("task-1")
    assert seq == 1
    assert all(type(f) is bytes for f in got)
    assert got[0] == b"\x93msgpack header"
    assert len(got[1]) == MiB
    assert np.array_equal(np.frombuffer(got[1], dtype=np.float64), np.arange(MiB // 8))
    assert got[2:] == [b"xyz", b""]
    assert store.load("other") is None
    assert store.keys() == ["task-1"]
    assert store.stats.saved == 1 and store.stats.loaded == 1
    if use_dir:
        assert store.stats.bytes_written > MiB
        # a fresh store (a resumed job) reads the same thing from disk
        seq2, got2 = CheckpointStore(tmp_path).load("task-1")
        assert (seq2, got2[1]) == (1, got[1])
        assert got2 == got


def test_keep_and_prune(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for seq in range(1, 6):
        store.save("k", seq, frames_for(seq))
    # keep + 1 slot files: the two kept, and the one the next save rewrites
    files = ckpt_files(tmp_path)
    assert [file_version(f)[1] for f in files] == [3, 4, 5]
    assert sorted(os.path.basename(f).split(".")[1] for f in files) == ["s0", "s1", "s2"]
    assert store.seqs("k") == {4, 5}
    assert store.stats.pruned == 3 and store.stats.saved == 5
    assert store.load("k") == (5, frames_for(5))
    assert CheckpointStore(tmp_path).load("k", upto=4) == (4, frames_for(4))

    one = CheckpointStore(tmp_path / "one", keep=1)
    for seq in range(3):
        one.save("k", seq, frames_for(seq))
    assert len(ckpt_files(tmp_path / "one")) == 2
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path, keep=0)


def test_older_seq_ignored(tmp_path):
    for store in (CheckpointStore(), CheckpointStore(tmp_path)):
        store.save("k", 5, [b"five"])
        store.save("k", 5, [b"dup"])  # duplicate resent after a failover
        store.save("k", 3, [b"old"])
        assert store.load("k") == (5, [b"five"])
        assert store.stats.ignored == 2 and store.stats.saved == 1
        store.save("k", 6, [b"six"])
        assert store.load("k") == (6, [b"six"])
    # also after a restart, against what is on disk
    fresh = CheckpointStore(tmp_path)
    fresh.save("k", 6, [b"stale"])
    assert fresh.stats.ignored == 1
    assert fresh.load("k") == (6, [b"six"])


def test_drop(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("a", 1, [b"a1"])
    store.save("a", 2, [b"a2"])
    store.save("b", 1, [b"b1"])
    store.drop("a")
    store.drop("never-saved")
    assert store.load("a") is None
    assert store.keys() == ["b"]
    assert ckpt_files(tmp_path, "a") == []
    assert CheckpointStore(tmp_path).keys() == ["b"]
    mem = CheckpointStore()
    mem.save("a", 1, [b"x"])
    mem.drop("a")
    assert mem.load("a") is None and mem.keys() == []


def test_fresh_store_finds_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path)
    for i in range(5):
        store.save(f"task-{i}", 10 + i, [b"state %d" % i])
    fresh = CheckpointStore(tmp_path)
    assert fresh.keys() == [f"task-{i}" for i in range(5)]
    assert "task-3" in fresh and "task-9" not in fresh
    for i in range(5):
        assert fresh.load(f"task-{i}") == (10 + i, [b"state %d" % i])


def test_corrupt_newest_falls_back(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save("k", 1, frames_for(1))
    store.save("k", 2, frames_for(2))
    newest = ckpt_files(tmp_path)[-1]
    flip_byte(newest, os.path.getsize(newest) - 500)  # inside a frame
    fresh = CheckpointStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="clustervm.checkpoint"):
        assert fresh.load("k") == (1, frames_for(1))
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(newest in m and "checksum" in m for m in msgs), msgs
    assert fresh.stats.corrupt == 1
    # a new save after the fallback supersedes the corrupt file
    fresh.save("k", 3, frames_for(3))
    assert CheckpointStore(tmp_path).load("k") == (3, frames_for(3))


@pytest.mark.parametrize("offset", [0, 9, 17, 30, -1])
def test_bit_flip_anywhere_is_detected(tmp_path, caplog, offset):
    """Magic, version, seq, key, trailing crc: every part is checked."""
    store = CheckpointStore(tmp_path)
    store.save("key", 1, [b"one"])
    store.save("key", 2, [b"two"])
    newest = ckpt_files(tmp_path)[-1]
    flip_byte(newest, offset % os.path.getsize(newest))
    with caplog.at_level(logging.WARNING, logger="clustervm.checkpoint"):
        assert CheckpointStore(tmp_path).load("key") == (1, [b"one"])
    assert any(newest in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("cut", [1, 4, 100, 10_000])
def test_truncated_newest_falls_back(tmp_path, caplog, cut):
    store = CheckpointStore(tmp_path)
    store.save("k", 1, frames_for(1))
    store.save("k", 2, frames_for(2))
    newest = ckpt_files(tmp_path)[-1]
    size = os.path.getsize(newest)
    os.truncate(newest, max(0, size - cut))
    with caplog.at_level(logging.WARNING, logger="clustervm.checkpoint"):
        assert CheckpointStore(tmp_path).load("k") == (1, frames_for(1))
    msgs = [r.getMessage() for r in caplog.records]
    assert any(newest in m and "truncated" in m for m in msgs), msgs


def test_extra_bytes_detected(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save("k", 1, [b"one"])
    store.save("k", 2, [b"two"])
    with open(ckpt_files(tmp_path)[-1], "ab") as f:
        f.write(b"junk")
    with caplog.at_level(logging.WARNING, logger="clustervm.checkpoint"):
        assert CheckpointStore(tmp_path).load("k") == (1, [b"one"])


def test_all_versions_corrupt(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save("k", 1, [b"one"])
    store.save("k", 2, [b"two"])
    for path in ckpt_files(tmp_path):
        flip_byte(path, os.path.getsize(path) - 6)
    fresh = CheckpointStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="clustervm.checkpoint"):
        assert fresh.load("k") is None
        assert fresh.load("k") is None  # each bad file is reported once
    assert fresh.stats.corrupt == 2
    assert sum("corrupt checkpoint" in r.getMessage() for r in caplog.records) == 2


def test_memory_preferred_over_disk(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("k", 1, [b"one"])
    os.truncate(ckpt_files(tmp_path)[-1], 10)
    assert store.load("k") == (1, [b"one"])  # served from memory


def test_leftover_temp_file_ignored(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save("k", 1, [b"one"])
    # a crash mid-write leaves a partial temp file next to the real ones
    tmp = os.path.join(tmp_path, "ckpt", ".tmp.12345.deadbeef")
    with open(tmp, "wb") as f:
        f.write(b"CVMCKPT\npartial")
    fresh = CheckpointStore(tmp_path)
    assert fresh.keys() == ["k"]
    assert fresh.load("k") == (1, [b"one"])
    assert not os.path.exists(tmp)  # cleaned up when the store opened
    # unrelated files are left alone and never read
    other = os.path.join(tmp_path, "ckpt", "README")
    with open(other, "w") as f:
        f.write("hello")
    assert CheckpointStore(tmp_path).keys() == ["k"] and os.path.exists(other)


@pytest.mark.parametrize("key", [
    "a/b/c", "../../etc/passwd", "", ".", "..", "tâche-数据-🚀", "x" * 1000, "a.b.c",
    "with space\nand newline", "\udcff lone surrogate", "a%2Fb",
])
def test_awkward_keys(tmp_path, key):
    store = CheckpointStore(tmp_path)
    store.save(key, 7, [key.encode("utf-8", "surrogatepass")])
    files = os.listdir(os.path.join(tmp_path, "ckpt"))
    assert len(files) == 1 and "/" not in files[0] and len(files[0]) < 200
    fresh = CheckpointStore(tmp_path)
    assert fresh.keys() == [key]
    assert fresh.load(key) == (7, [key.encode("utf-8", "surrogatepass")])


def test_similar_keys_do_not_collide(tmp_path):
    keys = ["a/b", "a%2Fb", "a_b", "A/b", "x" * 200 + "1", "x" * 200 + "2"]
    store = CheckpointStore(tmp_path)
    for i, k in enumerate(keys):
        store.save(k, 1, [str(i).encode()])
    fresh = CheckpointStore(tmp_path)
    assert sorted(fresh.keys()) == sorted(keys)
    for i, k in enumerate(keys):
        assert fresh.load(k) == (1, [str(i).encode()])


def test_misplaced_file_is_rejected(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save("a", 1, [b"a"])
    store.save("b", 1, [b"b"])
    (fa,) = ckpt_files(tmp_path, "a")
    (fb,) = ckpt_files(tmp_path, "b")
    os.replace(fb, fa)  # file of "b" under the name of "a"
    with caplog.at_level(logging.WARNING, logger="clustervm.checkpoint"):
        assert CheckpointStore(tmp_path).load("a") is None


def test_bad_input(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError):
        store.save("k", 1, [object()])
    with pytest.raises(ValueError):
        store.save("k", -1, [b""])
    with pytest.raises(TypeError):
        store.save(1, 1, [b""])
    with pytest.raises(CheckpointError):
        store.save("k", 1, [np.zeros((4, 4))[:, 0]])  # not contiguous
    assert store.keys() == []


def test_no_pickle_anywhere():
    import clustervm.checkpoint as c
    import clustervm.journal as j

    for mod in (c, j):
        src = open(mod.__file__, encoding="utf-8").read()
        assert "import pickle" not in src and "pickle.load" not in src


def test_threads(tmp_path):
    store = CheckpointStore(tmp_path, fsync=False)
    errors = []

    def work(t):
        try:
            for seq in range(20):
                store.save(f"k{t % 4}", seq * 8 + t, [b"%d-%d" % (t, seq)])
                store.load(f"k{t % 4}")
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    fresh = CheckpointStore(tmp_path)
    for k in range(4):
        seq, _ = fresh.load(f"k{k}")
        assert seq == store.load(f"k{k}")[0]
        assert len(ckpt_files(tmp_path, f"k{k}")) == 3     # keep + 1 slots


def test_write_failure_raises_and_stores_nothing(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save("k", 1, [b"one"])

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointError, match="No space left"):
        store.save("k", 2, [b"two"])
    monkeypatch.undo()
    assert store.load("k") == (1, [b"one"])
    assert [n for n in os.listdir(tmp_path / "ckpt") if n.startswith(".tmp")] == []
    assert CheckpointStore(tmp_path).load("k") == (1, [b"one"])
    store.save("k", 2, [b"two"])  # the retry is not mistaken for a duplicate
    assert CheckpointStore(tmp_path).load("k") == (2, [b"two"])


CRASH_WRITER = r"""
import sys
from clustervm.checkpoint import CheckpointStore
from clustervm.journal import Journal
d = sys.argv[1]
store = CheckpointStore(d, keep=2, fsync=sys.argv[2] == "1")
journal = Journal(d, fsync=sys.argv[2] == "1")
seq = 0
while True:
    seq += 1
    store.save("task", seq, [b"s%d" % seq, bytes(200_000)])
    journal.append("done", "t%d" % seq, [b"r%d" % seq])
    print(seq, flush=True)
"""


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_killed_writer_loses_nothing_acknowledged(tmp_path, fsync):
    """SIGKILL a process mid-save/append: everything it acknowledged is still there
    (without fsync too: what was written survives the process)."""
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(3):
        d = tmp_path / f"run{_}"
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASH_WRITER, str(d), "1" if fsync else "0"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": root}, text=True,
        )
        acked = 0
        try:
            for line in proc.stdout:
                acked = int(line)
                if acked >= 20 + 7 * _:
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert acked > 0
        seq, frames = CheckpointStore(d).load("task")
        assert seq >= acked and frames[0] == b"s%d" % seq
        keys = [r.key for r in Journal(d).replay()]
        assert keys[:acked] == [f"t{i}" for i in range(1, acked + 1)]


# -- Journal -------------------------------------------------------------------


def sample_records() -> list[Record]:
    return [
        Record("start", "t1", []),
        Record("done", "t1", [b"\x93result", bytes(range(256)) * 10]),
        Record("start", "t/2 — ü", []),
        Record("error", "t/2 — ü", [b"traceback"]),
        Record("done", "t3", [b"", b"x" * MiB]),
    ]


def write_journal(d, records, fsync=True) -> None:
    with Journal(d, fsync=fsync) as j:
        for r in records:
            j.append(r.kind, r.key, r.frames)


def test_journal_round_trip(tmp_path):
    recs = sample_records()
    j = Journal(tmp_path)
    assert list(j.replay()) == []
    for r in recs[:2]:
        j.append(r.kind, r.key, [memoryview(f) for f in r.frames])
    assert list(j.replay()) == recs[:2]  # replay while open
    j.close()
    j.close()
    with Journal(tmp_path) as j2:  # reopen: appends go after the old records
        for r in recs[2:]:
            j2.append(r.kind, r.key, r.frames)
        assert list(j2.replay()) == recs
    with pytest.raises(CheckpointError):
        j2.append("done", "x")


def test_journal_batched_sync(tmp_path):
    j = Journal(tmp_path, fsync=False)
    for i in range(100):
        j.append("done", f"t{i}", [b"%d" % i])
    j.sync()
    j.sync()
    assert [r.key for r in Journal(tmp_path).replay()] == [f"t{i}" for i in range(100)]
    j.close()


@pytest.mark.parametrize("cut", [1, 3, 15, 17, 1000])
def test_journal_torn_last_record_ignored(tmp_path, caplog, cut):
    recs = sample_records()
    write_journal(tmp_path, recs)
    path = os.path.join(tmp_path, "journal.log")
    os.truncate(path, os.path.getsize(path) - cut)
    with caplog.at_level(logging.WARNING, logger="clustervm.journal"):
        j = Journal(tmp_path)
        assert list(j.replay()) == recs[:-1]
    assert any("torn last record" in r.getMessage() and path in r.getMessage()
               for r in caplog.records)
    # the next append cuts the torn tail off, so the journal stays readable
    j.append("done", "t4", [b"r4"])
    j.close()
    assert list(Journal(tmp_path).replay()) == recs[:-1] + [Record("done", "t4", [b"r4"])]


def test_journal_garbage_tail_ignored(tmp_path, caplog):
    """A crash may leave a zero-filled or half-written tail."""
    recs = sample_records()[:3]
    write_journal(tmp_path, recs)
    path = os.path.join(tmp_path, "journal.log")
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)
    with caplog.at_level(logging.WARNING, logger="clustervm.journal"):
        assert list(Journal(tmp_path).replay()) == recs
    assert any("torn" in r.getMessage() for r in caplog.records)


def test_journal_corrupt_last_record_ignored(tmp_path, caplog):
    recs = sample_records()[:3]
    write_journal(tmp_path, recs)
    path = os.path.join(tmp_path, "journal.log")
    flip_byte(path, os.path.getsize(path) - 2)
    with caplog.at_level(logging.WARNING, logger="clustervm.journal"):
        assert list(Journal(tmp_path).replay()) == recs[:2]


def test_journal_corrupt_middle_raises(tmp_path):
    recs = sample_records()
    write_journal(tmp_path, recs)
    path = os.path.join(tmp_path, "journal.log")
    offsets = []
    # find where the 2nd record starts: replay the first one alone
    write_journal(tmp_path / "one", recs[:1])
    offsets.append(os.path.getsize(tmp_path / "one" / "journal.log"))
    flip_byte(path, offsets[0] + 40)  # inside record 2's body
    j = Journal(tmp_path)
    with pytest.raises(CorruptCheckpointError) as ei:
        list(j.replay())
    msg = str(ei.value)
    assert path in msg and f"offset {offsets[0]}" in msg and "Delete the directory" in msg
    with pytest.raises(CorruptCheckpointError):  # and nothing is appended to it
        j.append("done", "x")
    j.close()


def test_journal_corrupt_length_in_middle_raises(tmp_path):
    """A damaged length that reaches past the end must not pass for a torn tail."""
    recs = sample_records()
    write_journal(tmp_path, recs)
    write_journal(tmp_path / "one", recs[:1])
    off = os.path.getsize(tmp_path / "one" / "journal.log")
    flip_byte(os.path.join(tmp_path, "journal.log"), off + 4 + 6)  # high byte of the length
    with pytest.raises(CorruptCheckpointError, match=f"offset {off}"):
        list(Journal(tmp_path).replay())


def test_journal_not_a_journal(tmp_path):
    with open(tmp_path / "journal.log", "wb") as f:
        f.write(b"hello world, this is not a journal")
    with pytest.raises(CorruptCheckpointError, match="not a clustervm journal"):
        Journal(tmp_path)


def test_journal_torn_file_header(tmp_path):
    with open(tmp_path / "journal.log", "wb") as f:
        f.write(b"CVMJ")  # crash while creating the journal
    j = Journal(tmp_path)
    j.append("start", "t")
    assert list(j.replay()) == [Record("start", "t", [])]


def test_journal_meta_round_trip(tmp_path):
    j = Journal(tmp_path)
    assert j.read_meta() is None
    meta = {"app": "/home/u/app.py", "argv": ["--n", "10", "ü"], "nodes": 4}
    j.write_meta(meta)
    assert j.read_meta() == meta
    j.write_meta({"app": "other"})  # replaced atomically
    assert Journal(tmp_path).read_meta() == {"app": "other"}
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    with pytest.raises(CheckpointError):
        j.write_meta({"bad": object()})
    with open(tmp_path / "job.json", "w") as f:
        f.write("{truncated")
    with pytest.raises(CorruptCheckpointError, match="job.json"):
        j.read_meta()
    j.close()


def test_journal_bad_input(tmp_path):
    with Journal(tmp_path) as j:
        with pytest.raises(ValueError):
            j.append("", "k")
        with pytest.raises(TypeError):
            j.append("done", 3)
        with pytest.raises(CheckpointError):
            j.append("done", "k", [42])
        assert list(j.replay()) == []


def test_write_behind_writes_each_tasks_newest_in_order(tmp_path):
    """The writer skips a checkpoint whose task has a newer one queued behind it, tells
    every write it made (durable or failed), and a drop goes after the writes before it."""
    store = CheckpointStore(tmp_path)
    started, go = threading.Event(), threading.Event()
    real_write = store.write

    def write(key, seq, frames):
        started.set()
        go.wait(10)
        if key == "7":
            raise CheckpointError("disk full")
        return real_write(key, seq, frames)

    store.write = write
    done = []
    writer = WriteBehind(store, lambda tid, inc, seq, err: done.append((tid, inc, seq, err)))

    def queue(tid, inc, seq, blob):     # as the coordinator does: kept, then written behind
        store.save(str(tid), seq, [blob], write=False)
        writer.write(tid, inc, seq, blob)

    queue(5, 0, 1, b"a")
    assert started.wait(10)             # the writer is inside seq 1: the rest queues up
    for seq in (2, 3, 4):
        queue(5, 0, seq, b"b%d" % seq)
    queue(6, 1, 1, b"c")
    queue(7, 0, 1, b"d")
    queue(6, 1, 2, b"e")
    writer.drop(6)
    go.set()
    assert writer.close(10)
    assert [d[:3] for d in done] == [(5, 0, 1), (5, 0, 4), (7, 0, 1)]
    assert [d[3] is None for d in done] == [True, True, False]
    assert CheckpointStore(tmp_path).load("5") == (4, [b"b4"])
    assert CheckpointStore(tmp_path).load("6") is None


def test_load_upto_finds_the_previous_version_kept_in_memory(tmp_path):
    """A checkpoint group may go back to a member's previous checkpoint, which may not be
    on disk yet (written behind the run): save(keep_previous=True) keeps it in memory."""
    store = CheckpointStore(tmp_path)
    store.save("g", 3, [b"three"], write=False, keep_previous=True)
    store.save("g", 4, [b"four"], write=False, keep_previous=True)
    assert store.load("g") == (4, [b"four"]) and store.newest("g") == 4
    assert store.load("g", upto=3) == (3, [b"three"])
    assert store.load("g", upto=2) is None
    plain = CheckpointStore(tmp_path / "plain")
    plain.save("k", 3, [b"three"], write=False)
    plain.save("k", 4, [b"four"], write=False)
    assert plain.load("k", upto=3) is None      # not kept, and not on disk
    store.drop("g")
    assert store.load("g", upto=3) is None and store.newest("g") is None


def test_drop_after_forgets_the_newer_checkpoints_in_memory_and_on_disk(tmp_path):
    """A checkpoint group rolled back to seq 2: its member's seq 3 is of a course it no
    longer takes; after drop_after the store holds 2 as the newest, and a new seq 3
    is stored again (not ignored as a duplicate)."""
    store = CheckpointStore(tmp_path)
    for seq in (1, 2, 3):
        store.save("7", seq, [b"old %d" % seq], keep_previous=True)
    assert store.newest("7") == 3
    store.drop_after("7", 2)
    assert store.newest("7") == 2
    assert store.load("7") == (2, [b"old 2"])
    assert [file_version(p)[1] for p in ckpt_files(tmp_path)] == [2]
    store.save("7", 3, [b"new 3"])
    assert store.load("7") == (3, [b"new 3"])
    again = CheckpointStore(tmp_path)       # what --resume finds
    assert again.load("7") == (3, [b"new 3"])


def test_drop_after_deletes_the_free_slot_too(tmp_path):
    """The free slot may hold a version newer than the point a group went back to: it
    goes too, so that --resume cannot find the abandoned course."""
    store = CheckpointStore(tmp_path)
    for seq in (1, 2, 3, 4):        # slots: s0 = 4, s1 = 2 (free), s2 = 3
        store.save("7", seq, [b"v%d" % seq])
    store.drop_after("7", 1)
    assert ckpt_files(tmp_path) == []
    assert CheckpointStore(tmp_path).load("7") is None


def test_interrupted_rewrite_keeps_the_versions_kept(tmp_path, monkeypatch, caplog):
    """A write that stops after the slot's magic was zeroed (a crash): the kept versions
    are whole, a fresh store ignores the slot without calling it corrupt, and reuses it."""
    store = CheckpointStore(tmp_path)
    for seq in (1, 2, 3):
        store.save("k", seq, frames_for(seq))       # s0 = 1 (free), s1 = 2, s2 = 3

    import clustervm.checkpoint as ck
    real = ck._pwrite_all

    def crash(fd, data, offset):       # before the header, written last
        if offset == 0 and bytes(memoryview(data)[:len(ck.MAGIC)]) == ck.MAGIC:
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)
    monkeypatch.setattr(ck, "_pwrite_all", crash)
    with pytest.raises(CheckpointError, match="No space left"):
        store.save("k", 4, frames_for(4))
    monkeypatch.undo()
    assert store.load("k") == (3, frames_for(3))
    with caplog.at_level(logging.INFO, logger="clustervm.checkpoint"):
        fresh = CheckpointStore(tmp_path)
        assert fresh.load("k") == (3, frames_for(3))
        assert fresh.load("k", upto=2) == (2, frames_for(2))
    assert fresh.stats.corrupt == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("interrupted" in r.getMessage() for r in caplog.records)
    fresh.save("k", 4, frames_for(4))
    assert len(ckpt_files(tmp_path)) == 3
    assert CheckpointStore(tmp_path).load("k") == (4, frames_for(4))


def test_files_of_the_layout_before_slots_are_read_then_deleted(tmp_path):
    """A directory written by clustervm before slot files (one file per version, its seq
    in the name) is resumed from; its files are deleted once superseded."""
    store = CheckpointStore(tmp_path)
    store.save("k", 7, [b"seven"])
    (slot,) = ckpt_files(tmp_path)
    old_name = os.path.join(os.path.dirname(slot), f"{safe_stem('k')}.{7:012d}.ckpt")
    os.replace(slot, old_name)
    fresh = CheckpointStore(tmp_path)
    assert fresh.load("k") == (7, [b"seven"])
    for seq in (8, 9):
        fresh.save("k", seq, [b"v%d" % seq])
    assert not os.path.exists(old_name)
    assert [file_version(p)[1] for p in ckpt_files(tmp_path)] == [8, 9]


def test_save_without_copy_keeps_the_buffer_given_away(tmp_path):
    """copy=False (the coordinator's receive buffers): kept as they are, not copied; with
    a directory the file holds the same bytes."""
    for store in (CheckpointStore(), CheckpointStore(tmp_path)):
        buf = np.arange(100_000, dtype=np.uint8)
        store.save("k", 1, [buf], copy=False)
        seq, (got,) = store.load("k")
        assert seq == 1 and bytes(got) == buf.tobytes()
        assert np.shares_memory(np.frombuffer(got, np.uint8), buf)
        kept = bytearray(b"abc")
        store.save("k", 2, [kept])          # copied: the caller may change it after
        kept[0] = ord("x")
        assert store.load("k") == (2, [b"abc"])
    assert CheckpointStore(tmp_path).load("k") == (2, [b"abc"])


def test_a_slot_deleted_behind_the_stores_back_is_made_anew(tmp_path):
    store = CheckpointStore(tmp_path)
    for seq in (1, 2, 3):
        store.save("k", seq, [b"v%d" % seq])        # s0 = 1 (free), s1 = 2, s2 = 3
    free = ckpt_files(tmp_path)[0]
    assert file_version(free) == ("k", 1)
    os.unlink(free)
    store.save("k", 4, [b"v4"])
    assert [file_version(p)[1] for p in ckpt_files(tmp_path)] == [2, 3, 4]
    assert CheckpointStore(tmp_path).load("k") == (4, [b"v4"])


# -- syncs (a store without fsync, as the coordinator's writer uses it) ---------


def test_sync_pins_the_versions_it_made_durable_until_the_next(tmp_path):
    """A store without fsync never rewrites nor deletes what the last sync recorded, so a
    power cut finds it whole; the next sync lets it go. ``commit`` gets what changed."""
    store = CheckpointStore(tmp_path, keep=2, fsync=False)
    records = []
    for seq in (1, 2):
        store.save("a", seq, frames_for(seq))
    store.save("b", 1, frames_for(1))
    assert store.dirty
    store.sync(lambda kept, gone: records.append((kept, gone)))
    assert records == [({"a": [1, 2], "b": [1]}, [])]
    assert not store.dirty
    pinned = {p: open(p, "rb").read() for p in ckpt_files(tmp_path)}
    for seq in range(3, 9):             # the kept versions move on: new slots, pins whole
        store.save("a", seq, frames_for(seq))
    store.drop("b")
    for p, data in pinned.items():
        assert open(p, "rb").read() == data
    assert store.load("a") == (8, frames_for(8))
    store.sync(lambda kept, gone: records.append((kept, gone)))
    assert records[-1] == ({"a": [7, 8]}, ["b"])
    assert not ckpt_files(tmp_path, "b")        # deleted once the sync let it go
    store.save("a", 9, frames_for(9))
    # a's old pins are free slots again, all but one deleted: 7 and 8 pinned, 9, a free one
    assert len(os.listdir(tmp_path / "ckpt")) <= 4
    store.sync(lambda kept, gone: records.append((kept, gone)), full=True)
    assert records[-1] == ({"a": [8, 9]}, [])
    assert CheckpointStore(tmp_path).load("a") == (9, frames_for(9))


def test_a_failed_commit_keeps_the_old_pins(tmp_path):
    store = CheckpointStore(tmp_path, keep=1, fsync=False)
    store.save("a", 1, frames_for(1))
    store.sync()
    first = ckpt_files(tmp_path, "a")

    def fail(kept, gone):
        raise CheckpointError("journal full")

    store.save("a", 2, frames_for(2))
    with pytest.raises(CheckpointError):
        store.sync(fail)
    for seq in (3, 4):
        store.save("a", seq, frames_for(seq))
    assert file_version(first[0]) == ("a", 1)   # still pinned: its record is the last


def test_restrict_goes_back_to_the_versions_named(tmp_path):
    store = CheckpointStore(tmp_path, keep=2, fsync=False)
    for seq in (1, 2, 3):
        store.save("a", seq, frames_for(seq))
    store.save("b", 1, frames_for(1))
    store.save("c", 4, frames_for(4))
    again = CheckpointStore(tmp_path, keep=2, fsync=False)     # a resume
    # a's 3, c's 4, and a's 1 (pruned, in its free slot: a scan finds it)
    assert again.restrict({"a": {2}, "b": {1}}) == 3
    assert again.load("a") == (2, frames_for(2))
    assert again.load("c") is None
    later = CheckpointStore(tmp_path)                          # and any later one
    assert later.load("a") == (2, frames_for(2)) and later.load("b") == (1, frames_for(1))
    assert later.load("c") is None


def test_drop_after_voids_a_pinned_version_at_once(tmp_path):
    """A checkpoint group went back: its newer versions are not found by a resume even
    while the last sync still pins them."""
    store = CheckpointStore(tmp_path, keep=2, fsync=False)
    for seq in (1, 2):
        store.save("m", seq, frames_for(seq))
    store.sync()
    store.drop_after("m", 1)
    assert CheckpointStore(tmp_path).seqs("m") == {1}
    store.save("m", 3, frames_for(3))
    assert CheckpointStore(tmp_path).load("m") == (3, frames_for(3))


def test_write_behind_tells_a_write_before_it_syncs_and_syncs_soon_after(tmp_path):
    store = CheckpointStore(tmp_path, fsync=False)
    done, commits = [], []
    synced = threading.Event()

    def commit(kept, gone):
        commits.append((list(done), kept, gone))
        synced.set()

    writer = WriteBehind(store, lambda tid, inc, seq, err: done.append((tid, seq, err)),
                         sync_every_s=0.05, commit=commit)
    store.save("1", 1, [b"x"], write=False)
    writer.write(1, 0, 1, b"x")
    assert synced.wait(10)
    assert commits == [([(1, 1, None)], {"1": [1]}, [])]
    writer.drop(1)
    assert writer.close(10)
    assert commits[-1][1:] == ({}, ["1"])
    assert not ckpt_files(tmp_path)


def test_back_to_last_sync_after_a_restart(tmp_path):
    """A resume on another boot goes back to the last sync: the journal's later records
    are cut off and only the versions it named are kept; on the same boot nothing is."""
    from clustervm import syncs

    def run(boot: str) -> None:
        store = CheckpointStore(tmp_path, keep=2, fsync=False)
        journal = Journal(tmp_path, fsync=False)
        store.save("a", 1, frames_for(1))
        store.save("b", 1, frames_for(1))
        journal.append("done", "t1", [b"r1"])
        store.sync(lambda kept, gone: syncs.record_sync(journal, kept, gone, boot=boot))
        store.save("a", 2, frames_for(2))           # after the sync: not durable yet
        journal.append("done", "t2", [b"r2"])
        journal.close()

    run("boot-1")
    store, journal = CheckpointStore(tmp_path), Journal(tmp_path)
    assert syncs.back_to_last_sync(journal, store, boot="boot-1") is None
    assert store.load("a")[0] == 2 and [r.key for r in journal.replay()][-1] == "t2"
    journal.close()

    store, journal = CheckpointStore(tmp_path), Journal(tmp_path)
    what = syncs.back_to_last_sync(journal, store, boot="boot-2")
    assert "1 journal record(s) and 1 checkpoint version(s)" in what
    assert [(r.kind, r.key) for r in journal.replay()] == [("done", "t1"), ("synced", "")]
    assert store.load("a") == (1, frames_for(1)) and store.load("b") == (1, frames_for(1))
    journal.close()
    assert CheckpointStore(tmp_path).load("a") == (1, frames_for(1))


def test_back_to_last_sync_keeps_everything_after_a_strict_run(tmp_path):
    from clustervm import syncs
    store, journal = CheckpointStore(tmp_path), Journal(tmp_path)
    syncs.record_sync(journal, {}, [], full=True, strict=True, boot="boot-1")
    store.save("a", 1, frames_for(1))
    assert syncs.back_to_last_sync(journal, CheckpointStore(tmp_path), boot="boot-2") is None
    assert CheckpointStore(tmp_path).load("a") == (1, frames_for(1))


def test_journal_cut(tmp_path):
    write_journal(tmp_path, sample_records())
    with Journal(tmp_path) as j:
        assert j.cut(2) == 3
        assert j.cut(5) == 0
        j.append("done", "t9", [b"r9"])
    assert [r.key for r in Journal(tmp_path).replay()] == ["t1", "t1", "t9"]


def test_write_behind_syncs_the_journal_alone_when_poked(tmp_path):
    """A job whose tasks take no checkpoint still has its journal synced (a power cut
    goes back to the last sync, and would otherwise lose every finished task)."""
    from clustervm import syncs
    store = CheckpointStore(tmp_path, fsync=False)
    journal = Journal(tmp_path, fsync=False)
    writer = WriteBehind(store, lambda *a: None, sync_every_s=0.05,
                         commit=lambda kept, gone: syncs.record_sync(journal, kept, gone),
                         also_dirty=lambda: journal.dirty)
    journal.append("done", "t1", [b"r1"])
    writer.poke()
    deadline = time.monotonic() + 10
    while journal.dirty and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not journal.dirty
    assert [r.kind for r in journal.replay()] == ["done", syncs.SYNCED]
    assert writer.close(10)
    journal.close()


def test_a_store_that_syncs_every_write_pins_nothing(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    records = []
    store.save("a", 1, frames_for(1))
    store.sync(lambda kept, gone: records.append(kept), full=True)
    assert records == [{"a": [1]}]
    for seq in range(2, 9):
        store.save("a", seq, frames_for(seq))
    assert len(os.listdir(tmp_path / "ckpt")) == 3      # 2 kept, 1 free: slot 1 reused


def test_release_lets_go_of_a_version_once_it_is_on_disk(tmp_path):
    """The coordinator lets go of a checkpoint's bytes once written: loaded again, it
    comes from its file; a newer one kept meanwhile (not written yet) stays in memory."""
    store = CheckpointStore(tmp_path, fsync=False)
    store.save("a", 1, frames_for(1), write=False)
    store.release("a", 1)                       # not on disk yet: kept
    assert store._mem["a"][0] == 1
    store.write("a", 1, frames_for(1))
    store.save("a", 2, frames_for(2), write=False)
    store.release("a", 1)                       # 2 is newer: kept
    assert store._mem["a"][0] == 2
    store.write("a", 2, frames_for(2))
    store.release("a", 2)
    assert "a" not in store._mem
    assert store.load("a") == (2, frames_for(2)) and store.stats.loaded == 1
    assert store.load("a", upto=1) == (1, frames_for(1))
