"""Round trips between two nodes: raw mpi4py and clustervm messages in the same job.

Small messages (8 B, 1 KiB): raw ``comm.send``/``comm.recv`` between the two node ranks
(``raw_side``), then clustervm messages between a task on each (``pinger``/``ponger``).

8 MiB numpy arrays (``big_pinger``/``big_ponger``): this machine's memory bandwidth
drifts by 2x from one second to the next (raw ``Send``/``Recv`` measured 4.5 to 15 GB/s
in runs minutes apart), so the same two tasks alternate blocks of ``BIG_REPS`` raw
``Send``/``Recv`` round trips (and, beside a task with the replay log, raw round trips
that copy each array during its ``Isend``) with blocks of as many clustervm round
trips, ``BIG_BLOCKS`` blocks after one untimed; each kind's time is summed over its
blocks, so every ratio compares times taken in the same seconds.
"""
import time

import numpy as np
from mpi4py import MPI

RAW_TAG = 7
PING, PONG, STOP = 1, 2, 3
SIZES = [8, 1024, 8 << 20]
BIG = 8 << 20
BIG_BLOCKS, BIG_REPS = 8, 20
#: a replay log keeps each array it sent until a checkpoint, so a raw round trip that
#: copies as a log must copies into one of KEEPS buffers in turn (32 MiB a side, this
#: box's L3: a copy into one buffer used every time was 130 us against 305 us into
#: buffers taken in turn, in one process: the same buffer stays in cache, a log's do not)
KEEPS = 4
#: clustervm round trips before the blocks, timed apart (``first:...``): a replay log's
#: first copies go into new memory (values.ARRAY_COPIES), ~17 ms an 8 MiB copy on this
#: VM (huge page faults), until the log is trimmed or, never trimmed here, dropped at
#: CLUSTERVM_REPLAY_LOG_MB (31 arrays); then its blocks are used again, as in a job
#: whose tasks checkpoint. Raw's buffers are touched before it is timed, likewise.
BIG_WARM = 40


def reps(size: int) -> int:
    return 2000 if size <= 1024 else 40


#: Two tasks that start on one core take turns there until the scheduler moves one
#: away, after ~20 ms here (twenty-sixth session: a round's mean was 26 us instead of
#: 12). So small round trips begin with WARM_UP untimed ones (~20 ms raw, ~55 ms ours),
#: then are timed in BLOCKS blocks, of which the median counts.
WARM_UP, BLOCKS = 5000, 10


def warm_up(size: int) -> int:
    """Untimed round trips before the timed ones (the first sets up the pair)."""
    return WARM_UP if size <= 1024 else 3


def median_block(times: list[float], each: int) -> float:
    """Seconds per round trip in the median of blocks of ``each`` that took ``times``."""
    return sorted(times)[len(times) // 2] / each


def raw_side(ctx, peer: int, first: bool) -> dict:
    """Raw mpi4py on COMM_WORLD between two node ranks (tag 7: not clustervm's):
    ``send`` (pickled) for every size, ``Send`` (buffers) for the small ones (the big
    ones' ``Send``: :func:`big_pinger`)."""
    comm, quiet = MPI.COMM_WORLD, _quiet(ctx)
    out = {}
    for size in SIZES:
        small = size <= 1024
        obj = b"x" * size
        arr = np.ones(size, dtype=np.uint8)
        buf = np.empty_like(arr)
        for kind in (("send", "Send") if small else ("send",)):
            n = reps(size)
            for _ in range(warm_up(size)):   # as for clustervm (see WARM_UP)
                if first:
                    comm.send(obj, peer, RAW_TAG)
                    comm.recv(source=peer, tag=RAW_TAG)
                else:
                    comm.send(comm.recv(source=peer, tag=RAW_TAG), peer, RAW_TAG)
            blocks = BLOCKS if small else 1
            each, times = n // blocks, []
            with quiet:
                for _ in range(blocks):
                    t0 = time.perf_counter()
                    for _ in range(each):
                        if kind == "Send":
                            _raw_round(comm, peer, first, kind, arr, buf, None)
                        elif first:
                            comm.send(obj if small else arr, peer, RAW_TAG)
                            comm.recv(source=peer, tag=RAW_TAG)
                        else:
                            comm.send(comm.recv(source=peer, tag=RAW_TAG), peer, RAW_TAG)
                    times.append(time.perf_counter() - t0)
            out[f"{kind}:{size}"] = median_block(times, each)
    return out


def ponger(ctx) -> None:
    while True:
        m = ctx.recv()
        if m.tag == STOP:
            return
        ctx.send(m.source, PONG, m.data)


def pinger(ctx, peer: int) -> dict:
    out = {}
    for size in SIZES[:2]:          # (the big arrays: big_pinger)
        data = b"x" * size
        n = reps(size)
        for _ in range(warm_up(size)):
            ctx.send(peer, PING, data)
            ctx.recv(peer, PONG)
        each, times = n // BLOCKS, []
        for _ in range(BLOCKS):
            t0 = time.perf_counter()
            for _ in range(each):
                ctx.send(peer, PING, data)
                ctx.recv(peer, PONG)
            times.append(time.perf_counter() - t0)
        out[f"cvm:{size}"] = median_block(times, each)
    ctx.send(peer, STOP, None)
    return out


def _quiet(ctx):
    """A context in which this node's own pollers keep off MPI and the GIL (as while a
    clustervm task waits for a message), so that raw mpi4py runs undisturbed by them."""
    return ctx._site.transport.foreground()


def _raw_kinds(replay: bool) -> tuple:
    """The raw kinds a big pair alternates with its clustervm messages."""
    return ("Send", "SendCopy") if replay else ("Send",)


def _keeps() -> list:
    """Buffers a raw ``SendCopy`` round trip copies into in turn (touched: memory used
    before, as the blocks a log's copies go into)."""
    return [np.ones(BIG, np.uint8) for _ in range(KEEPS)]


def _raw_round(comm, peer: int, first: bool, kind: str, arr, buf, keep) -> None:
    """One raw round trip of a buffer: ``Send``/``Recv``, or ``SendCopy`` (each side also
    copies what it sends into ``keep`` during its ``Isend``, as a replay log must)."""
    if kind == "Send":
        if first:
            comm.Send(arr, peer, RAW_TAG)
            comm.Recv(buf, peer, RAW_TAG)
        else:
            comm.Recv(buf, peer, RAW_TAG)
            comm.Send(buf, peer, RAW_TAG)
    elif first:
        req = comm.Isend(arr, peer, RAW_TAG)
        np.copyto(keep, arr)
        req.Wait()
        comm.Recv(buf, peer, RAW_TAG)
    else:
        comm.Recv(buf, peer, RAW_TAG)
        req = comm.Isend(buf, peer, RAW_TAG)
        np.copyto(keep, buf)
        req.Wait()


def big_ponger(ctx, peer_rank: int, replay: bool) -> None:
    comm, quiet = MPI.COMM_WORLD, _quiet(ctx)
    buf, keeps = np.empty(BIG, np.uint8), _keeps()
    for _ in range(BIG_WARM):
        m = ctx.recv()
        ctx.send(m.source, PONG, m.data)
    for _ in range(BIG_BLOCKS + 1):
        for kind in _raw_kinds(replay):
            with quiet:
                for i in range(BIG_REPS):
                    _raw_round(comm, peer_rank, False, kind, None, buf, keeps[i % KEEPS])
        for _ in range(BIG_REPS):
            m = ctx.recv()
            ctx.send(m.source, PONG, m.data)


def big_pinger(ctx, pong: int, peer_rank: int, replay: bool) -> dict:
    """Seconds per round trip of each kind, summed over blocks taken in turn."""
    comm, quiet = MPI.COMM_WORLD, _quiet(ctx)
    arr = np.ones(BIG, dtype=np.uint8)
    buf, keeps = np.empty_like(arr), _keeps()
    spent = dict.fromkeys((*_raw_kinds(replay), "cvm"), 0.0)
    t0 = time.perf_counter()
    for _ in range(BIG_WARM):
        ctx.send(pong, PING, arr)
        ctx.recv(pong, PONG)
    first = (time.perf_counter() - t0) / BIG_WARM
    for block in range(BIG_BLOCKS + 1):       # block 0: warm-up, not counted
        for kind in _raw_kinds(replay):
            t0 = time.perf_counter()
            with quiet:
                for i in range(BIG_REPS):
                    _raw_round(comm, peer_rank, True, kind, arr, buf, keeps[i % KEEPS])
            if block:
                spent[kind] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(BIG_REPS):
            ctx.send(pong, PING, arr)
            ctx.recv(pong, PONG)
        if block:
            spent["cvm"] += time.perf_counter() - t0
    n = BIG_BLOCKS * BIG_REPS
    tail = ":replay" if replay else ""
    return {f"first:{BIG}{tail}": first, **{f"{k}:{BIG}{tail}": v / n for k, v in spent.items()}}


def main(vm) -> None:
    a, b = [n.rank for n in vm.nodes if n.rank > 0][:2]
    rounds = int(vm.argv[1]) if len(vm.argv) > 1 else 3
    results: dict[str, list] = {}
    for _ in range(rounds):
        t1, t2 = vm.spawn(raw_side, b, True, where=a)[0], vm.spawn(raw_side, a, False, where=b)[0]
        for k, v in vm.join(t1).items():
            results.setdefault(k, []).append(v)
        vm.join(t2)
        for replay in (False, True):
            [pong] = vm.spawn(ponger, where=b, replay=replay)
            [ping] = vm.spawn(pinger, pong, where=a, replay=replay)
            for k, v in vm.join(ping).items():
                results.setdefault(k + (":replay" if replay else ""), []).append(v)
            vm.join(pong)
            [pong] = vm.spawn(big_ponger, a, replay, where=b, replay=replay)
            [ping] = vm.spawn(big_pinger, pong, b, replay, where=a, replay=replay)
            for k, v in vm.join(ping).items():
                results.setdefault(k, []).append(v)
            vm.join(pong)
    for k, v in sorted(results.items()):
        # the median of the rounds; of the first round trips, the slowest round's (the
        # first, as a rule: later rounds find the blocks of the one before, if in 10 s)
        v = sorted(v)
        print(f"result {k} {v[-1] if k.startswith('first:') else v[len(v) // 2]!r}")
