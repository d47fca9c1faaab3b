"""Parallel sample sort of N random 64-bit integers over k spawned tasks.

    clustervm run -n 4 examples/samplesort.py --n 1000000 --tasks 4 --seed 1

The data set depends only on N and the seed: it is made of fixed-size chunks,
chunk c drawn from ``default_rng([seed, c])``, and task i of k makes chunks
i, i+k, i+2k, ... itself (nothing is shipped from main). Then, as in PSRS:

1. every task sorts its part and picks regular samples of it;
2. ``allgather`` of the samples in the group; every task picks the same k-1
   splitters from them;
3. every task cuts its sorted part at the splitters and sends piece j to task
   j (plain messages, tag BUCKET), then merges the k pieces it receives;
4. ``allgather`` of the counts gives each task the global position of its
   first element; each computes a position-weighted checksum of its piece,
   and ``gather`` brings (first, last, count, checksum) to instance 0, which
   checks the pieces are in order.

Prints ``sorted=True n=N checksum=<int>``, the checksum being
sum((i+1) * (x_i mod P)) mod P over the sorted sequence, P = 2**61-1, so it
does not depend on k.
"""
import argparse
import time

import numpy as np

GROUP = "samplesort"
BUCKET = 1
CHUNK = 1 << 16
P = (1 << 61) - 1          # a Mersenne prime
OVERSAMPLE = 32


def chunk(seed: int, n: int, c: int) -> np.ndarray:
    """Chunk ``c`` of the data set of ``n`` int64s made from ``seed``."""
    size = min(CHUNK, n - c * CHUNK)
    rng = np.random.default_rng([seed, c])
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=size,
                        dtype=np.int64, endpoint=True)


def n_chunks(n: int) -> int:
    return -(-n // CHUNK)


def weighted_checksum(x: np.ndarray, first_pos: int) -> int:
    """sum((first_pos + i + 1) * (x[i] mod P)) mod P, without leaving 64-bit numpy."""
    if len(x) == 0:
        return 0
    a = (x % P).astype(np.uint64)                              # < 2**61
    b = np.arange(first_pos + 1, first_pos + 1 + len(x), dtype=np.uint64)
    assert first_pos + len(x) < 1 << 32, "positions must fit in 32 bits"
    lo32, hi = a & np.uint64(0xFFFFFFFF), a >> np.uint64(32)   # a = hi*2**32 + lo32
    t = (hi * b) % np.uint64(P)                                # hi*b < 2**61
    # t * 2**32 mod P, with t = t_hi*2**29 + t_lo and 2**61 = 1 (mod P)
    t_hi, t_lo = t >> np.uint64(29), t & np.uint64((1 << 29) - 1)
    prod = (t_hi + (t_lo << np.uint64(32))) % np.uint64(P)
    prod = (prod + (lo32 * b) % np.uint64(P)) % np.uint64(P)   # lo32*b < 2**64
    # sum without overflow: 31-bit halves summed separately
    s_lo = int(np.sum(prod & np.uint64((1 << 31) - 1), dtype=np.uint64))
    s_hi = int(np.sum(prod >> np.uint64(31), dtype=np.uint64))
    return ((s_hi << 31) + s_lo) % P


def sorter(ctx, k: int, n: int, seed: int) -> dict:
    me = ctx.join_group(GROUP)
    ctx.barrier(GROUP, count=k)                  # everyone has joined
    # the members' tids by instance, as a collective: a member restarted after its node
    # was lost gets the same answer again, even when others have ended (and so left the
    # group) since; group_tids would then give None for them (found by tools/soak.py)
    tids = ctx.allgather(GROUP, ctx.tid)
    local = np.sort(np.concatenate(
        [chunk(seed, n, c) for c in range(me, n_chunks(n), k)] or [np.empty(0, np.int64)]))

    # 1-2. regular samples, all-gathered; the same splitters everywhere
    s = min(len(local), OVERSAMPLE * k)
    samples = local[np.linspace(0, len(local) - 1, s).astype(np.int64)] if s else local[:0]
    every = np.sort(np.concatenate(ctx.allgather(GROUP, samples)))
    splitters = every[np.linspace(0, len(every) - 1, k + 1).astype(np.int64)[1:-1]] \
        if len(every) else np.zeros(k - 1, np.int64)

    # 3. the shuffle: piece j of every task goes to task j
    cuts = np.concatenate([[0], np.searchsorted(local, splitters, side="right"), [len(local)]])
    for j, tid in enumerate(tids):
        if j != me:
            ctx.send(tid, BUCKET, local[cuts[j]:cuts[j + 1]])
    pieces = [local[cuts[me]:cuts[me + 1]]]
    pieces += [ctx.recv(tid, BUCKET).data for j, tid in enumerate(tids) if j != me]
    mine = np.sort(np.concatenate(pieces), kind="stable")

    # 4. global positions, checksum, order check at instance 0
    counts = ctx.allgather(GROUP, len(mine))
    first_pos = sum(counts[:me])
    part = (int(mine[0]) if len(mine) else None, int(mine[-1]) if len(mine) else None,
            len(mine), weighted_checksum(mine, first_pos))
    parts = ctx.gather(GROUP, part, root=0)
    if me != 0:
        return None
    ends = [(lo, hi) for lo, hi, c, _ in parts if c]
    in_order = all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
    return {"sorted": in_order, "n": sum(c for _, _, c, _ in parts),
            "checksum": sum(cs for *_, cs in parts) % P, "counts": counts}


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="number of integers")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(vm.argv[1:])
    if a.tasks < 1 or a.n < 0:
        p.error("need --tasks >= 1 and --n >= 0")
    t0 = time.perf_counter()
    tids = vm.spawn(sorter, a.tasks, a.n, a.seed, count=a.tasks)
    results = [vm.join(t) for t in tids]
    r = next(r for r in results if r is not None)
    ok = r["sorted"] and r["n"] == a.n
    print(f"sorted={ok} n={r['n']} checksum={r['checksum']}")
    print(f"samplesort: {a.tasks} tasks, {time.perf_counter() - t0:.2f} s, "
          f"per task {min(r['counts'])}..{max(r['counts'])} items", flush=True)
