"""Where an 8 B round trip goes: clustervm tasks timed inside, raw mpi4py in the same job.

    clustervm run -n 3 benchmarks/apps/pingpong_split_app.py [reps] [rounds]

Two spawned tasks on two nodes ping-pong 8 B; the pinger times its ``send`` and its
wait in ``recv``, the ponger its wait in ``recv`` and its ``send``. Before each
round, raw mpi4py ``comm.send``/``comm.recv`` (pickle) between the same two ranks
(tag 7, not clustervm's). Prints one line a round::

    split rt_us=<f> raw_us=<f> ratio=<f> ping_send_us=<f> ping_wait_us=<f> pong_wait_us=<f> pong_send_us=<f>
"""
import time

from mpi4py import MPI

PING, PONG, STOP = 1, 2, 3
RAW_TAG = 7
pc = time.perf_counter


def raw(ctx, peer: int, first: bool, n: int) -> float:
    comm, obj = MPI.COMM_WORLD, b"x" * 8
    for _ in range(200):
        if first:
            comm.send(obj, peer, RAW_TAG)
            comm.recv(source=peer, tag=RAW_TAG)
        else:
            comm.send(comm.recv(source=peer, tag=RAW_TAG), peer, RAW_TAG)
    t0 = pc()
    for _ in range(n):
        if first:
            comm.send(obj, peer, RAW_TAG)
            comm.recv(source=peer, tag=RAW_TAG)
        else:
            comm.send(comm.recv(source=peer, tag=RAW_TAG), peer, RAW_TAG)
    return (pc() - t0) / n


def ponger(ctx) -> tuple:
    wait = send = 0.0
    n = 0
    while True:
        t0 = pc()
        m = ctx.recv()
        t1 = pc()
        if m.tag == STOP:
            return wait / max(n, 1), send / max(n, 1)
        ctx.send(m.source, PONG, m.data)
        wait += t1 - t0
        send += pc() - t1
        n += 1


def pinger(ctx, peer: int, n: int) -> tuple:
    data = b"x" * 8
    for _ in range(200):
        ctx.send(peer, PING, data)
        ctx.recv(peer, PONG)
    send = wait = 0.0
    t_all = pc()
    for _ in range(n):
        t0 = pc()
        ctx.send(peer, PING, data)
        t1 = pc()
        ctx.recv(peer, PONG)
        send += t1 - t0
        wait += pc() - t1
    total = pc() - t_all
    ctx.send(peer, STOP, None)
    return total / n, send / n, wait / n


def main(vm) -> None:
    reps = int(vm.argv[1]) if len(vm.argv) > 1 else 5000
    rounds = int(vm.argv[2]) if len(vm.argv) > 2 else 3
    a, b = [n.rank for n in vm.nodes if n.rank > 0][:2]
    for _ in range(rounds):
        t1 = vm.spawn(raw, b, True, reps, where=a)[0]
        t2 = vm.spawn(raw, a, False, reps, where=b)[0]
        raw_rt = vm.join(t1)
        vm.join(t2)
        [pong] = vm.spawn(ponger, where=b, replay=False)
        [ping] = vm.spawn(pinger, pong, reps, where=a, replay=False)
        rt, s, w = vm.join(ping)
        pw, ps = vm.join(pong)
        us = 1e6
        print(f"split rt_us={rt * us:.1f} raw_us={raw_rt * us:.1f} ratio={rt / raw_rt:.2f} "
              f"ping_send_us={s * us:.1f} ping_wait_us={w * us:.1f} "
              f"pong_wait_us={pw * us:.1f} pong_send_us={ps * us:.1f}", flush=True)
