"""examples/heat2d.py's algorithm in raw mpi4py: one strip per rank, halo rows with
Sendrecv, the same arithmetic, so the checksum is the same as clustervm's.

    mpiexec -n K python benchmarks/apps/heat2d_mpi4py.py --size 256 --steps 2000 [--phases]
Prints ``checksum=<hex> total=<float> steps=<int>`` and ``heat2d_mpi4py_s=<float>``; with
``--phases`` also one line per rank on its steps (benchmarks/heat2d_phases.py)::

    steps rank=<r> msg_us=<median> compute_us=<median> step_us=<median> step_mean_us=<f> step_p90_us=<f>
"""
import argparse
import hashlib
import os
import sys
import time

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import phases  # noqa: E402
from heat2d import ALPHA, initial, strip_bounds  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--phases", action="store_true", help="time each step's two parts")
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    me, k = comm.Get_rank(), comm.Get_size()
    comm.Barrier()
    t0 = time.perf_counter()
    lo, hi = strip_bounds(a.size, k, me)
    u = initial(a.size, lo, hi)
    up = me - 1 if me > 0 else MPI.PROC_NULL
    down = me + 1 if me < k - 1 else MPI.PROC_NULL
    recv_up = np.empty(a.size)
    recv_down = np.empty(a.size)
    clock = time.perf_counter
    marks: list[float] = []     # with --phases: each step's start and its messages' end
    for _ in range(a.steps):
        if a.phases:
            marks.append(clock())
        comm.Sendrecv(u[1], dest=up, sendtag=1, recvbuf=recv_down, source=down, recvtag=1)
        comm.Sendrecv(u[-2], dest=down, sendtag=2, recvbuf=recv_up, source=up, recvtag=2)
        if a.phases:
            marks.append(clock())
        if up != MPI.PROC_NULL:
            u[0] = recv_up
        if down != MPI.PROC_NULL:
            u[-1] = recv_down
        inner = u[1:-1, 1:-1]
        lap = u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4.0 * inner
        u[1:-1, 1:-1] = inner + ALPHA * lap
        if down == MPI.PROC_NULL:
            u[-2, :] = 0.0
    if a.phases:
        marks.append(clock())
        steps = [(marks[i + 1] - marks[i], 0.0, marks[i + 2] - marks[i])
                 for i in range(0, len(marks) - 2, 2)]
        print(f"steps rank={me} {phases.summary(steps, ('msg',))}", flush=True)
    parts = comm.gather(u[1:-1], root=0)
    if me == 0:
        grid = np.vstack(parts)
        elapsed = time.perf_counter() - t0
        digest = hashlib.sha256(np.ascontiguousarray(grid).tobytes()).hexdigest()[:16]
        print(f"checksum={digest} total={float(grid.sum())!r} steps={a.steps}")
        print(f"heat2d_mpi4py_s={elapsed:.4f}", flush=True)


if __name__ == "__main__":
    main()
