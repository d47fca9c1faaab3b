"""The soak of issue 11 in short: two faulty runs of tools/soak.py (a node SIGKILLed, then
rank 0 SIGKILLed and the job resumed) give the undisturbed results, and nothing hangs.
The 30-minute soak over every example is in benchmarks/RESULTS.md."""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import PY, ROOT, job_env

pytestmark = pytest.mark.mpi


def test_short_soak():
    cmd = [PY, "tools/soak.py", "--runs", "2", "--apps", "pi", "--faults",
           "kill-node,kill-rank0", "--seed", "2", "--memory-s", "0", "--timeout", "60"]
    out = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True,
                         timeout=400, stdin=subprocess.DEVNULL)
    m = re.search(r"^soak runs=(\d+) faults=(\d+) exact=(\d+) failed=(\d+) hung=(\d+) ",
                  out.stdout, re.MULTILINE)
    assert m, out.stdout + out.stderr
    runs, faults, exact, failed, hung = map(int, m.groups())
    assert (runs, faults, exact, failed, hung) == (2, 2, 2, 0, 0), out.stdout
    assert out.returncode == 0
