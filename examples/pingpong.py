"""Round-trip time between two tasks on different nodes, 8 B to 8 MiB, bytes and numpy.

    clustervm run -n 3 examples/pingpong.py [--reps 50]
"""
import argparse
import time

import numpy as np

PING, PONG, STOP = 1, 2, 3


def ponger(ctx) -> None:
    while True:
        m = ctx.recv()
        if m.tag == STOP:
            return
        ctx.send(m.source, PONG, m.data)


def pinger(ctx, peer: int, sizes: list, reps: int) -> list:
    rows = []
    for size in sizes:
        for kind in ("bytes", "numpy"):
            data = b"x" * size if kind == "bytes" else np.ones(size, dtype=np.uint8)
            n = reps if size < (1 << 20) else max(3, reps // 10)
            ctx.send(peer, PING, data)            # warm up
            ctx.recv(peer, PONG)
            t0 = time.perf_counter()
            for _ in range(n):
                ctx.send(peer, PING, data)
                ctx.recv(peer, PONG)
            rtt = (time.perf_counter() - t0) / n
            rows.append((kind, size, rtt))
    ctx.send(peer, STOP, None)
    return rows


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--replay", action="store_true",
                   help="keep the message log for replay after failover (default off here)")
    a = p.parse_args(vm.argv[1:])
    workers = [n.rank for n in vm.nodes if n.rank > 0]
    if len(workers) < 2:
        raise SystemExit("pingpong needs two worker nodes: run with -n 3 or more")
    sizes = [8, 1024, 64 * 1024, 1 << 20, 8 << 20]
    [pong] = vm.spawn(ponger, where=workers[1], replay=a.replay)
    [ping] = vm.spawn(pinger, pong, sizes, a.reps, where=workers[0], replay=a.replay)
    print(f"{'payload':>8} {'size':>9} {'round trip':>12} {'bandwidth':>12}")
    for kind, size, rtt in vm.join(ping):
        bw = 2 * size / rtt / 1e9
        print(f"{kind:>8} {size:>9} {rtt * 1e6:>9.1f} us {bw:>9.3f} GB/s")
    vm.join(pong)
