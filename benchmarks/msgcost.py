"""What one small task message costs a rank's CPU, next to raw mpi4py, in the same process.

    python benchmarks/msgcost.py [--sizes 8,1024] [--repeat 15]

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
"""
from __future__ import annotations

import argparse
import os
import sys
import time

N = 2000


def measure(size: int, replay: bool, repeat: int) -> str:
    from mpi4py import MPI

    from clustervm.config import Config
    from clustervm.site import Location, Site
    from clustervm.task import TaskContext
    from clustervm.transport import Transport

    comm = MPI.COMM_WORLD.Dup()
    t = Transport(comm, spin_ms=5.0, idle_sleep_ms=10.0)
    try:
        site = Site(t, Config())
        site.rank = -1            # not this rank: a message to task 11 goes through MPI
        site.locations[11] = Location(0, 0, replay)
        sender, receiver = TaskContext(site, 10, None), TaskContext(site, 11, None)
        site.contexts[10] = sender
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8,1024")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if not a.inner:           # run under mpiexec -n 1 (a singleton leaves files in /dev/shm)
        from _util import BIN, PY, run
        rc, out, err, _ = run([str(BIN / "mpiexec"), "-n", "1", PY, os.path.abspath(__file__),
                               "--inner", "--sizes", a.sizes, "--repeat", str(a.repeat)], 240)
        sys.stdout.write(out)
        if rc != 0:
            sys.exit(f"msgcost failed ({rc}):\n{err}")
        return
    for size in (int(x) for x in a.sizes.split(",")):
        for replay in (False, True):
            print(measure(size, replay, a.repeat), flush=True)


if __name__ == "__main__":
    main()
