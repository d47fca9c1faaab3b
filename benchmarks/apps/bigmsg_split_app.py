"""Where an 8 MiB message's time goes: two spawned tasks ping-pong a numpy array, the
receiving side's steps timed inside the transport; raw mpi4py ``Send``/``Recv``
between the same two ranks in the same job.

    clustervm run -n 3 benchmarks/apps/bigmsg_split_app.py [--mb 8] [--reps 100] [--rounds 2]

A diagnostic: it wraps three of the transport's private steps in timers (waiting for
a frame's part, the receive of a part, and completing a long receive), as a
profiler would. Prints one line a round::

    bigmsg mb=<n> rt_ms=<f> raw_rt_ms=<f> ratio=<raw/ours> recv_part_ms=<f> probe_ms=<f> wait_long_ms=<f>

where the three step figures are per message received, on the pinging side.
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

PING, PONG, STOP = 1, 2, 3
STEPS = {"recv_part": "_recv_part", "probe": "_probe_part", "wait_long": "_wait_long"}


def timed_steps(ctx) -> dict:
    """Wrap this rank's transport steps in timers; the dict they add up into."""
    spent = dict.fromkeys(STEPS, 0.0)
    transport = ctx._site.transport
    for key, name in STEPS.items():
        step = getattr(transport, name)

        def timed(*args, _step=step, _key=key, **kwargs):
            t0 = time.perf_counter()
            try:
                return _step(*args, **kwargs)
            finally:
                spent[_key] += time.perf_counter() - t0
        setattr(transport, name, timed)
    return spent


def echo(ctx) -> None:
    while True:
        m = ctx.recv()
        if m.tag == STOP:
            return
        ctx.send(m.source, PONG, m.data)


def pinger(ctx, peer: int, mb: int, reps: int) -> tuple:
    data = np.ones(mb << 20, np.uint8)
    for _ in range(3):
        ctx.send(peer, PING, data)
        ctx.recv(peer, PONG)
    spent = timed_steps(ctx)
    t0 = time.perf_counter()
    for _ in range(reps):
        ctx.send(peer, PING, data)
        ctx.recv(peer, PONG)
    rt = (time.perf_counter() - t0) / reps
    ctx.send(peer, STOP, None)
    return rt, {k: v / reps for k, v in spent.items()}


def raw(ctx, peer: int, first: bool, mb: int, reps: int) -> float:
    comm = MPI.COMM_WORLD
    buf = np.ones(mb << 20, np.uint8)
    out = np.empty_like(buf)
    for i in range(reps + 3):
        if i == 3:
            t0 = time.perf_counter()
        if first:
            comm.Send(buf, peer, 7)
            comm.Recv(out, peer, 7)
        else:
            comm.Recv(out, peer, 7)
            comm.Send(out, peer, 7)
    return (time.perf_counter() - t0) / reps


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=8)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(vm.argv[1:])
    x, y = [n.rank for n in vm.nodes if n.rank > 0][:2]
    for _ in range(a.rounds):
        t1 = vm.spawn(raw, y, True, a.mb, a.reps, where=x)[0]
        t2 = vm.spawn(raw, x, False, a.mb, a.reps, where=y)[0]
        raw_rt = vm.join(t1)
        vm.join(t2)
        [pong] = vm.spawn(echo, where=y, replay=False)
        [ping] = vm.spawn(pinger, pong, a.mb, a.reps, where=x, replay=False)
        rt, steps = vm.join(ping)
        vm.join(pong)
        ms = {k: v * 1e3 for k, v in steps.items()}
        print(f"bigmsg mb={a.mb} rt_ms={rt * 1e3:.2f} raw_rt_ms={raw_rt * 1e3:.2f} "
              f"ratio={raw_rt / rt:.2f} recv_part_ms={ms['recv_part']:.3f} "
              f"probe_ms={ms['probe']:.3f} wait_long_ms={ms['wait_long']:.3f}", flush=True)
