"""Integration tests of issue 3 (futures, map, placement, Executor, scatter) under real mpiexec.

Most checks run inside one job of ``tests/apps/scheduling_app.py`` on 3 ranks
(2 worker nodes) with ``--slots 1`` (module-scoped: one job start for all of
them); each test asserts on the ``CHECK <name> <json>`` line of its part.
pi_montecarlo runs as jobs of its own, on 2 and 4 ranks.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from conftest import Checks, run_job

pytestmark = pytest.mark.mpi

APPS = Path(__file__).resolve().parent / "apps"


@pytest.fixture(scope="module")
def app():
    return Checks(run_job([str(APPS / "scheduling_app.py")], n=3, timeout=240,
                          run_args=["--slots", "1"]))


def test_app_job_ends_cleanly(app):
    app.assert_clean_end()


# ---------------------------------------------------------------- results

def test_submit_and_map_results_in_order(app):
    c = app["results"]
    assert c["submit"] == [i * i for i in range(20)]
    assert c["map"] == [i * i for i in range(30)]
    assert c["map2"] == [i + 100 + i for i in range(10)]
    assert c["kwargs"] == 3 and c["empty"] == []
    # item 0 could only finish after item 5 had finished: still yielded first
    assert c["ordered"] == list(range(6))


def test_map_unordered_yields_as_completed(app):
    c = app["unordered"]
    got, n = c["got"], c["n"]
    assert sorted(got) == list(range(n))
    assert got[0] != 0                      # 0 could only end after the first result


def test_map_chunksize(app):
    c = app["chunks"]
    assert c["values"] == [i * i for i in range(23)]
    assert c["tasks"] == 5                     # ceil(23 / 5) tasks, not 23
    assert c["unordered"] == sorted(i * i for i in range(23))


def test_map_timeout(app):
    c = app["map_timeout"]
    for ordered in ("True", "False"):
        kind, waited = c[ordered]
        assert kind == "TimeoutError", c
        assert waited >= 0.45


# ------------------------------------------------------------- exceptions

def test_exceptions_carry_remote_traceback_as_cause(app):
    c = app["exceptions"]
    s = c["submit"]
    assert s["type"] == "ZeroDivisionError" and s["cause"] == "RemoteTraceback"
    assert "in divide" in s["tb"] and re.search(r"Traceback on node [12] \(host ", s["tb"])
    # printed like concurrent.futures: the remote traceback, then "direct cause"
    assert "The above exception was the direct cause of the following exception" in s["formatted"]
    assert s["formatted"].index("in divide") < s["formatted"].index("direct cause")
    assert c["map"]["type"] == "ZeroDivisionError" and "in divide" in c["map"]["tb"]
    # raised two levels down (main -> nested_fail -> divide): the cause names both
    assert c["nested"]["type"] == "ZeroDivisionError"
    assert "in divide" in c["nested"]["tb"] and "in nested_fail" in c["nested"]["tb"]


# ----------------------------------------------------------- cancellation

def test_cancel_pending_tasks(app):
    c = app["cancel"]
    assert c["cancelled"] == [True] * 4
    assert c["states"] == [[True, True]] * 4
    assert c["late"] == "CancelledError"
    assert c["ran"] == list(range(10)), "a cancelled task ran"
    assert c["live"] == []


def test_cancel_of_a_running_task_fails(app):
    c = app["cancel"]
    assert c["running_cancel"] is False        # as concurrent.futures: it is running
    assert c["results"] == list(range(10))


# ------------------------------------------------------ nested submission

def test_nested_submission_cannot_deadlock(app):
    c = app["nested"]
    assert c["fan_out"] == [sum(i * i for i in range(5))] * 4
    assert c["tree"] == 8                      # 7 waiting inner tasks, 8 leaves, 2 nodes
    assert c["spawned"] == sum(i * i for i in range(6))


# ------------------------------------------------------------------ where

def test_where_rank_host_and_list(app):
    c = app["where"]
    host = socket.gethostname()
    assert c["ranks"] == [1, 2] and c["host"] == host
    for r in c["ranks"]:
        assert c["rank"][str(r)] == [[r, host]] * 4
    assert c["list"] == [[2, host]] * 3
    node, h = c["host_runs"]
    assert node in (1, 2) and h == host
    assert c["map"] == [[1, host]] * 6
    assert c["spawn"] == [2, host]
    assert c["bad_rank"][0] == "ValueError" and "99" in c["bad_rank"][1]
    assert c["bad_host"][0] == "ValueError" and "no-such-host.invalid" in c["bad_host"][1]


# --------------------------------------------------------------- executor

def test_executor_runs_concurrent_futures_code_unchanged(app):
    c = app["executor"]
    remote, local = c["remote"], c["local"]
    cause = remote.pop("cause")
    local.pop("cause")
    assert remote == local                      # same answers as ThreadPoolExecutor
    assert remote["wait"] == [[i * i for i in range(10)], 0]
    assert remote["map2"] == [10, 12, 14, 16, 18]
    assert remote["isinstance"] == [True, True]
    assert remote["callback"] == [81]
    assert cause == "RemoteTraceback"
    assert c["after_with"] == [True, 144]       # the with block waited for it
    assert c["closed"] == "RuntimeError"


# ---------------------------------------------------------------- scatter

def test_scatter_handle_shared_by_many_tasks(app):
    c = app["scatter"]
    assert c["sum_ok"] and c["parts"] == 20
    # sent once per node at most, not once per task (20 tasks)
    assert c["sent_per_array"] <= c["workers"] + 0.5, c
    assert c["table"] == [3] * 5
    assert c["main_get"] == 45.0


# ---------------------------------------------------------- pi_montecarlo

PI_ARGS = ["examples/pi_montecarlo.py", "--tasks", "12", "--samples", "240000", "--seed", "7"]


def test_pi_montecarlo_same_hits_on_2_and_4_nodes_and_progress():
    two = run_job(PI_ARGS, n=2, run_args=["--progress"])
    four = run_job(PI_ARGS, n=4)
    for r in (two, four):
        assert r.rc == 0, r.err
    m2 = re.fullmatch(r"hits=(\d+) samples=240000 pi=([\d.]+)", two.line("hits="))
    m4 = re.fullmatch(r"hits=(\d+) samples=240000 pi=([\d.]+)", four.line("hits="))
    assert m2 and m4, (two.out, four.out)
    assert m2.group(1) == m4.group(1)
    assert abs(float(m2.group(2)) - 3.14159) < 0.02
    # --progress, not on a terminal: plain lines on stderr, ending with all tasks done
    lines = [ln for ln in two.err.splitlines() if ln.startswith("progress:")]
    assert lines, two.err
    assert lines[-1].startswith("progress: 12/12 tasks,") and "0 failed" in lines[-1]
    assert "\r" not in two.err                       # no terminal bar
    assert not any(ln.startswith("progress:") for ln in four.err.splitlines())
