"""benchmarks/simulate.py at a small size: the real core, simulated nodes, no MPI."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^simulate nodes=(\d+) tasks=(\d+) busy=([0-9.]+) "
                  r"core_us_per_task=([0-9.]+) lost=(\d+) exact=(True|False)$")


def simulate(*args: str) -> re.Match:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "simulate.py"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [m for m in map(LINE.match, proc.stdout.splitlines()) if m]
    assert len(lines) == 1, f"no result line in {proc.stdout!r}"
    return lines[0]


def test_simulate_with_a_tenth_of_the_nodes_killed_is_exact() -> None:
    m = simulate("--nodes", "50", "--task-ms", "100", "--tasks", "2000", "--kill-frac", "0.1")
    assert m.group(1, 2) == ("50", "2000")
    assert int(m.group(5)) == 5                 # every killed node was found lost
    assert m.group(6) == "True"
    assert 0.0 < float(m.group(3)) <= 1.0


def test_simulate_without_faults() -> None:
    m = simulate("--nodes", "20", "--task-ms", "10", "--tasks", "500", "--slots", "2")
    assert m.group(5) == "0" and m.group(6) == "True"
