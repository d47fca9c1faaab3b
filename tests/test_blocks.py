"""Memory used again for big buffers (clustervm.blocks): no MPI, one process."""
from __future__ import annotations

import numpy as np

from clustervm.blocks import Blocks


def test_a_block_is_used_again_only_once_nothing_refers_to_it():
    """A big part goes into a block nobody refers to any more (no page faults: the
    8 MiB bandwidth and the coordinator's checkpoints), never into one still in use."""
    parts = Blocks(64 << 10, 16 << 20, 32 << 20)
    a = parts.take(370_000)
    a_block = id(a.base)
    b = parts.take(370_000)
    assert id(b.base) != a_block                 # a is in use
    kept = memoryview(b).cast("B")[100:]          # a view of b keeps b's block in use
    del a, b
    c = parts.take(380_000)                       # fits a's block (1/16 more room)
    assert id(c.base) == a_block
    d = parts.take(300_000)
    assert id(d.base) not in (a_block, id(kept.obj.base))
    assert parts.take(1000) is None and parts.take((16 << 20) + 1) is None   # out of range


def test_blocks_kept_are_bounded_and_the_oldest_let_go_first():
    parts = Blocks(1 << 20, 16 << 20, 4 << 20)
    first = parts.take(1 << 20)
    first_block = first.base
    taken = [parts.take(1 << 20) for _ in range(4)]
    assert parts.nbytes <= 4 << 20
    assert all(t.base is not first_block for t in taken)
    del first
    assert parts.take(1 << 20).base is not first_block      # let go: not kept any more


def test_idle_blocks_are_let_go():
    parts = Blocks(1 << 20, 16 << 20, 64 << 20, idle_s=0.0)
    a = parts.take(2 << 20)
    held = parts.take(2 << 20)
    del a
    c = parts.take(8 << 20)       # nothing fits: a new block; the idle one is let go
    assert parts.nbytes == held.nbytes + c.nbytes     # (whole huge pages: no more room)


def test_copy_is_an_equal_array_of_its_own():
    parts = Blocks(1 << 20, 16 << 20, 32 << 20)
    src = np.arange(300_000, dtype=np.float64).reshape(1000, 300)[:, ::2]   # not contiguous
    out = parts.copy(src)
    assert out.dtype == src.dtype and out.shape == src.shape and out.flags.c_contiguous
    assert np.array_equal(out, src)
    src[0, 0] = -1.0
    assert out[0, 0] == 0.0                       # a copy, not a view
    rec = np.zeros(3, dtype=[("a", "i4"), ("b", "f8")])
    assert np.array_equal(parts.copy(rec), rec)   # small: a plain copy
    again = parts.copy(np.ones((1000, 150)))
    assert again.base is not out.base             # out is still in use


def test_let_go_idle_keeps_blocks_in_use():
    parts = Blocks(1 << 20, 16 << 20, 64 << 20, idle_s=0.0)
    used = parts.take(1 << 20)
    parts.take(2 << 20)                   # dropped at once: unused
    parts.let_go_idle()
    assert parts.nbytes == used.base.nbytes


def test_a_size_takes_the_smallest_block_that_fits_never_one_twice_too_big():
    parts = Blocks(64 << 10, 16 << 20, 64 << 20)
    big, mid = parts.take(8 << 20), parts.take(1 << 20)
    big_block, mid_block = id(big.base), id(mid.base)        # (ids: a reference is a use)
    del big, mid
    near = parts.take(900_000)
    assert id(near.base) == mid_block                         # not the 8 MiB one
    small = parts.take(100_000)                               # the 8 MiB one is too big
    assert id(small.base) not in (big_block, mid_block)
    assert id(parts.take(8 << 20).base) == big_block          # still there for its size


def test_a_big_block_is_whole_huge_pages_from_a_huge_page_boundary():
    """So that the kernel can back all of it with transparent huge pages (copies into
    such memory ran ~20 % faster here)."""
    from clustervm.blocks import HUGE_PAGE
    parts = Blocks(64 << 10, 16 << 20, 64 << 20)
    for size in (2 << 20, 3_000_000, 8 << 20):
        view = parts.take(size)
        assert view.ctypes.data % HUGE_PAGE == 0 and view.nbytes == size
        assert view.base.nbytes >= 4 << 20           # numpy asks for huge pages from 4 MiB
    small = parts.take(300_000)
    assert small.nbytes == 300_000
    copied = parts.copy(np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024))
    assert copied.ctypes.data % HUGE_PAGE == 0 and copied[3, 5] == 3 * 1024 + 5


def test_a_small_block_is_a_mapping_of_its_own_a_bigger_one_numpys():
    """Below OFF_HEAP_BELOW a block never sits among the heap's memory (a log-mode
    task's numpy steps were 2-3 % slower with its frame-store chunks there); from it on
    numpy allocates, and memory freed before is used again."""
    import mmap

    from clustervm.blocks import OFF_HEAP_BELOW
    parts = Blocks(64 << 10, 16 << 20, 64 << 20)
    small = parts.take(OFF_HEAP_BELOW - (OFF_HEAP_BELOW >> 3))
    assert isinstance(small.base.base.obj, mmap.mmap) and small.base.flags.writeable
    small[:] = 7
    assert int(small.sum()) == 7 * small.nbytes
    big = parts.take(OFF_HEAP_BELOW)
    assert big.base.flags.owndata                  # numpy's own memory


def test_a_small_block_that_cannot_be_mapped_is_numpys(monkeypatch):
    """A process may hold only so many mappings (vm.max_map_count), and a replay log never
    trimmed may keep thousands of small copies: then a block is numpy's, on the heap,
    as before (MemoryError only if there is no memory at all)."""
    import errno
    import mmap

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    block = Blocks(64 << 10, 16 << 20, 64 << 20).take(100_000)
    assert block.nbytes == 100_000 and block.base.flags.owndata
    block[:] = 3
    assert int(block.sum()) == 300_000
