"""`make demo`'s failover demo (examples/failover_demo.py): a node killed half-way by the
app itself, the job survives, the result is the undisturbed one, the report says so.

Runs the demo exactly as the Makefile does (`clustervm run -n 5`, default arguments),
bounded by conftest's run_job timeout. Also checks that the Makefile still runs it and
still prints pi_montecarlo's line that other scripts look for.
"""
from __future__ import annotations

import re

import pytest

from conftest import EXAMPLES, ROOT, run_job

pytestmark = pytest.mark.mpi

PI_LINE = "hits=15707350 samples=20000000 pi=3.14147"   # --tasks 32 --samples 20000000 --seed 1


def test_failover_demo_survives_its_own_kill_with_the_undisturbed_result():
    res = run_job([str(EXAMPLES / "failover_demo.py")], n=5, timeout=90)
    detail = f"rc {res.rc}\n--- stdout ---\n{res.out}\n--- stderr ---\n{res.err}"
    assert res.rc == 0, detail
    lines = res.out.splitlines()
    assert lines.count(PI_LINE) == 2, detail               # undisturbed, then with a node lost
    assert "a job on 4 worker nodes" in res.out, detail
    kill = re.search(r"^demo: 16 of 32 tasks done: killing node (\d+) \(pid (\d+)", res.out, re.M)
    assert kill, detail
    assert res.out.index(PI_LINE) < kill.start() < res.out.rindex(PI_LINE), detail
    assert "demo: identical to the undisturbed result (hits=15707350 both times)" in res.out
    for hint in ("--dashboard", "--trace", "clustervm timeline", "make docs"):
        assert hint in res.out, f"the demo no longer points to {hint}\n{detail}"
    reports = [ln for ln in res.err.splitlines() if ln.startswith("clustervm report:")]
    assert len(reports) == 1, detail
    report = reports[0]
    assert re.search(rf"1 node\(s\) lost: node {kill.group(1)} \(host [^,]+, pid "
                     rf"{kill.group(2)}\)", report), report
    rerun = re.search(r"(\d+) task\(s\) re-run", report)
    assert rerun and int(rerun.group(1)) >= 1, report
    assert "Traceback" not in res.err, detail


def test_make_demo_keeps_the_pi_line_and_runs_the_failover_demo():
    """Scripts check `make demo` for pi_montecarlo's line; the failover demo comes after it."""
    demo = ROOT.joinpath("Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    commands = [ln.strip() for ln in demo.splitlines()[1:]]
    assert commands[:2] == [
        "$(VENV)/bin/clustervm run -n 4 examples/hello.py",
        "$(VENV)/bin/clustervm run -n 4 examples/pi_montecarlo.py --tasks 32 --samples "
        "20000000 --seed 1"]
    assert any("examples/failover_demo.py" in c and "-n 5" in c for c in commands[2:]), commands
