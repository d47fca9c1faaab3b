"""What one small task message costs a rank's CPU, next to raw mpi4py, in the same process.

    python benchmarks/msgcost.py [--sizes 8,1024] [--repeat 15] [--cold]

Round-trip timings on a shared 2-core box swing by 5x with the load (a waiting
rank that yields loses its core); this measures the other half of a round trip,
the work each message costs, in a way the load barely moves: one process
(``mpiexec -n 1``) sends task messages to itself through MPI, through the whole
stack a task uses (``TaskContext.send`` -> ``Site`` -> ``Transport`` Isend;
``TaskContext.recv`` -> poll -> ``Improbe``/``Recv`` -> decode -> mailbox), and
the best of ``--repeat`` runs of 2000 messages is kept. Beside it, raw mpi4py
``comm.isend``/``comm.recv`` (pickle) of the same bytes to itself.

Prints, per size and with/without the replay log, one line::

    msgcost size=<B> replay=<0|1> send_us=<f> recv_us=<f> both_us=<f> raw_us=<f> ratio=<both/raw>

``send_us``: 2000 sends in a row (the receiver not polling); ``recv_us``: taking
those 2000 (every probe finds one); ``both_us``: send then recv, one message at a
time (what one direction of a round trip costs, without the wait).

With ``--cold``: heat2d's case instead. Before each message one Jacobi step of heat2d's
strip (130 x 256 float64, ~170 us of numpy) runs untimed, so the message path runs
with the caches and TLB its own work left; the message is one 2 KB row (a numpy
array), and the peer is raw mpi4py's buffer ``Isend``/``Recv`` of the row, after the
same step. Medians of 2000 (``--repeat`` is not used)::

    msgcost cold replay=<0|1> send_us=<f> recv_us=<f> both_us=<f> raw_us=<f> ratio=<both/raw>

Here ``send_us`` and ``recv_us`` are the two halves of ``both_us`` (the send, then the
receive of the message just sent), each timed on its own. Measured on the fifteenth
session's box: clustervm's whole send path 30-55 us inside heat2d against ~10 us warm,
``wire.dumps`` of the row alone 31 us after a step against 2.8 us warm.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

N = 2000


def _tasks(replay: bool) -> tuple:
    """(comm, transport, sender, receiver): two task contexts of this rank whose messages
    go through MPI to this same rank, the whole stack a task uses."""
    from mpi4py import MPI

    from clustervm.config import Config
    from clustervm.site import Location, Site
    from clustervm.task import TaskContext
    from clustervm.transport import Transport

    comm = MPI.COMM_WORLD.Dup()
    t = Transport(comm, spin_ms=5.0, idle_sleep_ms=10.0)
    site = Site(t, Config())
    site.rank = -1            # not this rank: a message to task 11 goes through MPI
    site.locations[11] = Location(0, 0, replay)
    sender, receiver = TaskContext(site, 10, None), TaskContext(site, 11, None)
    site.contexts[10] = sender
    return comm, t, sender, receiver


def measure(size: int, replay: bool, repeat: int) -> str:
    comm, t, sender, receiver = _tasks(replay)
    try:
        data = b"x" * size
        best = [1e9, 1e9, 1e9, 1e9]
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(N):
                sender.send(11, 1, data)
            t1 = time.perf_counter()
            for _ in range(N):
                receiver.recv(10, 1)
            t2 = time.perf_counter()
            for _ in range(N):
                sender.send(11, 1, data)
                receiver.recv(10, 1)
            t3 = time.perf_counter()
            for _ in range(N):         # (isend: a blocking send to itself may wait forever)
                req = comm.isend(data, 0, 7)
                comm.recv(source=0, tag=7)
                req.wait()
            t4 = time.perf_counter()
            for i, dt in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                best[i] = min(best[i], dt / N)
            sender.__dict__.pop("_outlog", None)      # no checkpoint trims it here
            sender.__dict__.pop("_outbytes", None)
        s, r, b, raw = (x * 1e6 for x in best)
        return (f"msgcost size={size} replay={int(replay)} send_us={s:.2f} recv_us={r:.2f} "
                f"both_us={b:.2f} raw_us={raw:.2f} ratio={b / raw:.2f}")
    finally:
        t.close()
        comm.Free()


def measure_cold(replay: bool) -> str:
    import statistics

    import numpy as np

    comm, t, sender, receiver = _tasks(replay)
    u = np.random.default_rng(0).random((130, 256))

    def step() -> None:       # examples/heat2d.py's update of one strip
        inner = u[1:-1, 1:-1]
        lap = u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4.0 * inner
        u[1:-1, 1:-1] = inner + 0.24 * lap

    try:
        sends, recvs, raws = [], [], []
        buf = np.empty(256)
        for i in range(N):
            step()
            t0 = time.perf_counter()
            sender.send(11, 1, u[-2])
            t1 = time.perf_counter()
            receiver.recv(10, 1)
            t2 = time.perf_counter()
            sends.append(t1 - t0)
            recvs.append(t2 - t1)
            if i % 200 == 199:
                sender.__dict__.pop("_outlog", None)      # no checkpoint trims it here
                sender.__dict__.pop("_outbytes", None)
        for _ in range(N):
            step()
            t0 = time.perf_counter()
            req = comm.Isend(u[-2], 0, 7)
            comm.Recv(buf, 0, 7)
            req.Wait()
            raws.append(time.perf_counter() - t0)
        s, r = statistics.median(sends) * 1e6, statistics.median(recvs) * 1e6
        b = statistics.median([x + y for x, y in zip(sends, recvs)]) * 1e6
        raw = statistics.median(raws) * 1e6
        return (f"msgcost cold replay={int(replay)} send_us={s:.2f} recv_us={r:.2f} "
                f"both_us={b:.2f} raw_us={raw:.2f} ratio={b / raw:.2f}")
    finally:
        t.close()
        comm.Free()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8,1024")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--cold", action="store_true",
                   help="heat2d's case: a 2 KB row after each Jacobi step (see above)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if not a.inner:           # run under mpiexec -n 1 (a singleton leaves files in /dev/shm)
        from _util import BIN, PY, run
        rc, out, err, _ = run([str(BIN / "mpiexec"), "-n", "1", PY, os.path.abspath(__file__),
                               "--inner", "--sizes", a.sizes, "--repeat", str(a.repeat),
                               *(["--cold"] if a.cold else [])], 240)
        sys.stdout.write(out)
        if rc != 0:
            sys.exit(f"msgcost failed ({rc}):\n{err}")
        return
    if a.cold:
        for replay in (False, True):
            print(measure_cold(replay), flush=True)
        return
    for size in (int(x) for x in a.sizes.split(",")):
        for replay in (False, True):
            print(measure(size, replay, a.repeat), flush=True)


if __name__ == "__main__":
    main()
