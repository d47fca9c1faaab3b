"""Round trips between two nodes: raw mpi4py and clustervm messages in the same job."""
import time

import numpy as np
from mpi4py import MPI

RAW_TAG = 7
PING, PONG, STOP = 1, 2, 3
SIZES = [8, 1024, 8 << 20]


def reps(size: int) -> int:
    return 2000 if size <= 1024 else 40


def raw_side(ctx, peer: int, first: bool) -> dict:
    """Raw mpi4py on COMM_WORLD between two node ranks (tag 7: not clustervm's).

    ``SendCopy``: ``Send``/``Recv`` where each side also copies the array it sends into
    memory used before while its ``Isend`` is under way, as a replay log must keep a
    copy: the most a logged send of a big array can reach on this machine."""
    comm = MPI.COMM_WORLD
    out = {}
    for size in SIZES:
        small = size <= 1024
        obj = b"x" * size
        arr = np.ones(size, dtype=np.uint8)
        buf = np.empty_like(arr)
        keep = np.empty_like(arr)
        for kind in (("send", "Send") if small else ("Send", "SendCopy", "send")):
            n = reps(size)
            for _ in range(3):   # warm-up, as for clustervm (the first message sets up the pair)
                if first:
                    comm.send(obj, peer, RAW_TAG)
                    comm.recv(source=peer, tag=RAW_TAG)
                else:
                    comm.send(comm.recv(source=peer, tag=RAW_TAG), peer, RAW_TAG)
            t0 = time.perf_counter()
            for _ in range(n):
                if kind == "send":
                    if first:
                        comm.send(obj if small else arr, peer, RAW_TAG)
                        comm.recv(source=peer, tag=RAW_TAG)
                    else:
                        comm.send(comm.recv(source=peer, tag=RAW_TAG), peer, RAW_TAG)
                elif kind == "Send":
                    if first:
                        comm.Send(arr, peer, RAW_TAG)
                        comm.Recv(buf, peer, RAW_TAG)
                    else:
                        comm.Recv(buf, peer, RAW_TAG)
                        comm.Send(buf, peer, RAW_TAG)
                else:
                    if first:
                        req = comm.Isend(arr, peer, RAW_TAG)
                        np.copyto(keep, arr)
                        req.Wait()
                        comm.Recv(buf, peer, RAW_TAG)
                    else:
                        comm.Recv(buf, peer, RAW_TAG)
                        req = comm.Isend(buf, peer, RAW_TAG)
                        np.copyto(keep, buf)
                        req.Wait()
            out[f"{kind}:{size}"] = (time.perf_counter() - t0) / n
    return out


def ponger(ctx) -> None:
    while True:
        m = ctx.recv()
        if m.tag == STOP:
            return
        ctx.send(m.source, PONG, m.data)


def pinger(ctx, peer: int) -> dict:
    out = {}
    for size in SIZES:
        data = b"x" * size if size <= 1024 else np.ones(size, dtype=np.uint8)
        n = reps(size)
        for _ in range(3):
            ctx.send(peer, PING, data)
            ctx.recv(peer, PONG)
        t0 = time.perf_counter()
        for _ in range(n):
            ctx.send(peer, PING, data)
            ctx.recv(peer, PONG)
        out[f"cvm:{size}"] = (time.perf_counter() - t0) / n
    ctx.send(peer, STOP, None)
    return out


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
    for k, v in sorted(results.items()):
        print(f"result {k} {sorted(v)[len(v) // 2]!r}")
