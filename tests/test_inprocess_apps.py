"""The mpiexec test apps' checks, run on an in-process VM (clustervm.testing.inprocess).

Each app of ``tests/apps`` runs its CHECKS in one in-process VM of the same
size as its mpiexec job (seconds instead of a job start each), and the very
test functions of the mpiexec test module assert on the ``CHECK`` lines:
``test_inprocess_apps.py::test_scheduling[test_cancel_pending_tasks]`` runs
``test_scheduling.py::test_cancel_pending_tasks`` on the in-process output.
Tests that need real processes (distinct pids, frozen groups on MPI, the
job's exit status and stderr) are left to mpiexec: see ``MPI_ONLY``. A test of
those modules renamed ``check_<name>`` no longer runs under mpiexec but still
runs here (the way to drop the mpiexec run and keep the assertions).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import sys
import time
import traceback
from pathlib import Path

import pytest
import test_foundation as foundation_tests
import test_messaging_api as messaging_tests
import test_scheduling as scheduling_tests
from conftest import Checks, JobResult

from clustervm import runtime
from clustervm.testing.inprocess import InProcessVM, test_config

APPS = Path(__file__).resolve().parent / "apps"

#: mpiexec tests that check what only separate processes show, with the reason
MPI_ONLY = {
    "test_app_job_ends_cleanly": "the job's exit status, stderr and processes",
    "test_job_ends_cleanly_and_warns_once_about_unwaited_work":
        "its unwaited tasks sleep 30 s: a process exit ends them, a thread cannot be",
    "test_nodes_show_rank_host_pid_state": "one pid per node",
    "test_alltoall_reduce_scatter_scan_exscan[fz]": "frozen groups on MPI",
}


def _run_app(name: str, ranks: int, **config) -> Checks:
    """Run the CHECKS of tests/apps/<name>.py on an in-process VM of ``ranks`` ranks."""
    mod = runtime.load_app(str(APPS / f"{name}.py"))

    def main(vm):
        for check, fn in mod.CHECKS:
            try:
                value = fn(vm)
            except BaseException:   # noqa: BLE001 - reported as the app does
                value = {"error": traceback.format_exc()}
            mod.report(check, value)
        print("ALL CHECKS RAN", flush=True)

    out = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out):
        InProcessVM(ranks - 1, test_config(**config), timeout=120).run(main, [name])
    sys.modules.pop(runtime.APP_MODULE, None)
    return Checks(JobResult(0, out.getvalue(), "", time.monotonic() - t0))


def _tests_of(module) -> list:
    """The tests of ``module`` that assert on its app's checks (they take ``app``):
    ``test_*`` (run under mpiexec too) or ``check_*`` (run here only)."""
    out = []
    for name, fn in vars(module).items():
        if not (name.startswith(("test_", "check_")) and callable(fn)):
            continue
        params = list(inspect.signature(fn).parameters)
        if params[:1] != ["app"]:
            continue
        marks = getattr(fn, "pytestmark", [])
        cases = [()]
        for m in marks:
            if m.name == "parametrize":
                argnames = [a.strip() for a in m.args[0].split(",")] if isinstance(
                    m.args[0], str) else list(m.args[0])
                cases = [c if isinstance(c, tuple) else (c,) for c in m.args[1]]
                assert params[1:] == argnames, (name, params, argnames)
        for case in cases:
            ident = name + (f"[{'-'.join(map(str, case))}]" if case else "")
            reason = MPI_ONLY.get(ident) or MPI_ONLY.get(name)
            marks_ = [pytest.mark.skip(reason=f"mpiexec only: {reason}")] if reason else []
            out.append(pytest.param(fn, case, id=ident, marks=marks_))
    return out


@pytest.fixture(scope="module")
def scheduling():
    return _run_app("scheduling_app", 3, slots=1)


@pytest.fixture(scope="module")
def foundation():
    return _run_app("foundation_app", 4)


@pytest.fixture(scope="module")
def messaging():
    return _run_app("messaging_app", 4)


@pytest.mark.parametrize("test, case", _tests_of(scheduling_tests))
def test_scheduling(scheduling, test, case):
    test(scheduling, *case)


@pytest.mark.parametrize("test, case", _tests_of(foundation_tests))
def test_foundation(foundation, test, case):
    test(foundation, *case)


@pytest.mark.parametrize("test, case", _tests_of(messaging_tests))
def test_messaging_api(messaging, test, case):
    test(messaging, *case)


@pytest.mark.parametrize("fixture", ["scheduling", "foundation", "messaging"])
def test_every_check_ran(fixture, request):
    checks = request.getfixturevalue(fixture)
    assert "ALL CHECKS RAN" in checks.result.out, checks.result.out[-2000:]
