"""The thread pools of a rank's numeric libraries (OpenBLAS, MKL, OpenMP): its share of the host's cores.

numpy's OpenBLAS starts one thread per core in every process that imports it, and
those threads spin after they start. Ranks that share a host's cores then fight
over them: with 3 ranks on 2 cores, a job's first task started 3-9 ms late in 3 of
16 runs (0.4-0.8 ms in 10 of 10 with one thread each), and heat2d ran 0.175 s
against 0.170 s (medians of 8 alternating runs). As Dask's workers do, each rank
sizes the pools to its share, unless the user has sized any of them: before the
application is loaded (numpy reads the variables when it is first imported), every
rank sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to
the cores it may run on divided by the ranks of the job on its host (at least 1).
A rank alone on a host keeps all of its cores.
"""
from __future__ import annotations

import logging
import os
from typing import MutableMapping

__all__ = ["POOL_VARS", "share", "size_pools"]

log = logging.getLogger(__name__)

#: the variables that size the pools; if the user set any of them, none is touched
POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: how many ranks of the job run on this host: Open MPI's, then MPICH Hydra's
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def share(cores: int, env: MutableMapping[str, str]) -> int:
    """Threads for a rank that may run on ``cores`` cores: its share of them among the
    job's ranks on this host (as the launcher says in ``env``; 1 rank if it does not)."""
    local = 1
    for name in _LOCAL_SIZE_VARS:
        try:
            local = max(1, int(env.get(name, "")))
            break
        except ValueError:
            continue
    return max(1, cores // local)


def size_pools(env: MutableMapping[str, str] | None = None) -> int | None:
    """Set the pool variables in ``env`` (os.environ) to this rank's share of its cores,
    unless one is set already; the size set, or None."""
    env = os.environ if env is None else env
    if any(name in env for name in POOL_VARS):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    threads = share(cores, env)
    for name in POOL_VARS:
        env[name] = str(threads)
    return threads
