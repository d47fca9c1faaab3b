#!/usr/bin/env bash
# The core tests on MPICH (PyPI `mpich` wheel), failures found by heartbeats only.
#
#   bash tests/run_mpich.sh [pytest args...]
#
# Builds (once) a venv of its own with mpi4py + mpich: never the project's .venv, where
# mpi4py would load whichever MPI wheel it finds first. Then puts this checkout on its
# path and runs the MPICH tests with CLUSTERVM_TEST_MPI=mpich (conftest
# stops at once if that Python loads another MPI). Takes ~1-2 min plus ~1 min the first
# time (the wheels). Where: $CLUSTERVM_MPICH_VENV, default $TMPDIR/clustervm-mpich-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CLUSTERVM_MPICH_VENV:-${TMPDIR:-/tmp}/clustervm-mpich-venv}
PYTHON=${PYTHON:-python3}

ready() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/mpiexec" ] &&
        "$VENV/bin/mpiexec" --version 2>/dev/null | grep -q HYDRA &&
        "$VENV/bin/python" -c "import mpi4py, msgpack, numpy, pytest, tqdm" 2>/dev/null
}

if ! ready; then
    echo "run_mpich: making $VENV (mpi4py + the mpich wheel)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet mpi4py mpich msgpack numpy pytest tqdm
    ready || { echo "run_mpich: $VENV is not usable (no Hydra mpiexec?)" >&2; exit 1; }
fi
# this checkout on the venv's path by a .pth file, not `pip install -e .`: that writes
# clustervm.egg-info into the checkout, which `make test` installs into .venv at the same time
# (an editable install left by an earlier version of this script would shadow it: removed)
"$VENV/bin/python" -m pip uninstall --quiet --yes clustervm >/dev/null 2>&1 || true
"$VENV/bin/python" - "$PWD" <<'PY'
import pathlib, sys, sysconfig
pth = pathlib.Path(sysconfig.get_paths()["purelib"]) / "clustervm-checkout.pth"
pth.write_text(sys.argv[1] + "\n")
PY

export PATH="$VENV/bin:$PATH"
export CLUSTERVM_TEST_MPI=mpich
# test_mpich.py: what differs on MPICH (killed nodes, Hydra, no ULFM); the rest: the core
# API on real jobs, the supervisor (and its relay of main's output), and the unit tests. Not here: Open MPI's own tests
# (test_netns, test_multihost, test_failover need ULFM or prted; test_launcher checks
# Open MPI details).
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_mpich.py tests/test_foundation.py tests/test_supervisor.py tests/test_output.py \
    tests/test_wire.py tests/test_checkpoint.py tests/test_hostfile.py tests/test_config.py \
    --deselect tests/test_foundation.py::test_bare_mpiexec_runs_ring \
    "$@"
