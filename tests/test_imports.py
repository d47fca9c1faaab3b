"""`import clustervm` (and the command line's modules) must not start MPI.

Loading mpi4py.MPI calls MPI_Init: in the launcher that is a singleton MPI
process, ~1 s of start-up and a 16 MiB file left in /dev/shm per command
(DESIGN.md). Only the rank processes may initialize MPI."""
from __future__ import annotations

import subprocess
import sys


def test_importing_clustervm_does_not_start_mpi():
    code = ("import sys, clustervm, clustervm.cli, clustervm.launcher, clustervm.preflight\n"
            "loaded = 'mpi4py.MPI' in sys.modules\n"
            "print('MPI LOADED' if loaded else 'NO MPI')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NO MPI"
