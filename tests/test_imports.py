"""`import clustervm` (and the command line's modules) must not start MPI.

Loading mpi4py.MPI calls MPI_Init: in the launcher that is a singleton MPI
process, ~1 s of start-up and a 16 MiB file left in /dev/shm per command
(DESIGN.md). Only the rank processes may initialize MPI."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_job


def test_importing_clustervm_does_not_start_mpi():
    code = ("import sys, clustervm, clustervm.cli, clustervm.launcher, clustervm.preflight\n"
            "loaded = 'mpi4py.MPI' in sys.modules\n"
            "print('MPI LOADED' if loaded else 'NO MPI')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NO MPI"


def test_a_node_loads_only_its_own_core():
    """Every rank imports at start, all at once on few cores: a node (and the launcher)
    must not load the coordinator's core (its state, events and instructions)."""
    code = ("import sys, clustervm.node, clustervm.runtime, clustervm.cli, clustervm.status\n"
            "print(sorted(m for m in sys.modules if m.startswith('clustervm.core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = ast.literal_eval(out.stdout.strip())
    assert "clustervm.core.node" in loaded, loaded
    assert not {"clustervm.core.state", "clustervm.core.events", "clustervm.core.instructions",
                "clustervm.core.groups"} & set(loaded), loaded


def test_no_rank_loads_dataclasses_or_argparse():
    """What every rank imports at start (the coordinator's side and a node's) loads neither
    ``dataclasses`` (with ``inspect``, ``ast``, ``dis``: 7-13 ms of CPU each start) nor
    ``argparse`` (only the launcher parses a command line)."""
    code = ("import mpi4py\n"
            "mpi4py.rc.initialize = mpi4py.rc.finalize = False   # no MPI_Init here\n"
            "import sys, clustervm.coordinator, clustervm.vm, clustervm.node, "
            "clustervm.runtime, clustervm.cli\n"
            "print([m for m in ('dataclasses', 'inspect', 'argparse') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert ast.literal_eval(out.stdout.strip()) == []


@pytest.mark.mpi
def test_a_job_without_numpy_does_not_import_it_to_receive():
    """numpy takes 100-150 ms to import here: a node that received a message of a few KB
    imported it for the receive buffer, and a job's first big map waited for that."""
    r = run_job([str(Path(__file__).resolve().parent / "apps" / "no_numpy_app.py")], n=2)
    assert r.rc == 0, r.err
    assert r.line("no-numpy:") == ("no-numpy: bytes=100000 numpy_on_node=False "
                                   "numpy_on_coordinator=False")
