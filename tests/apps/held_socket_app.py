"""The drill of tests/failover_app.py, with each world node's MPI sockets outliving it.

Every world node but rank 0 forks a holder process that keeps the node's file
descriptors (its PMIx socket to mpiexec among them, not its stdio) open until
HOLD_S after the node died. mpiexec then sees the node end (waitpid, end of
its output) before the end of its PMIx socket, which is the order that makes
Open MPI 5.0.11's PMIx server leave that socket's number deaf (see
clustervm/replacement.py, NodeSpawning._spawn_retrying): a process spawned
afterwards that gets the number hangs in MPI_Init. Used by
tests/test_replacement.py; run with the drill's arguments.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpi4py import MPI  # noqa: E402 - the app is loaded after MPI_Init anyway

#: How long a holder outlives its node (the test's kill comes first; then it goes).
HOLD_S = 1.5

if MPI.Comm.Get_parent() == MPI.COMM_NULL and MPI.COMM_WORLD.Get_rank() != 0:
    node = os.getpid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        while os.getppid() == node:
            time.sleep(0.02)
        time.sleep(HOLD_S)
        os._exit(0)

from failover_app import main  # noqa: E402,F401 - the drill itself
