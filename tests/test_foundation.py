"""Integration tests of issue 2 (the foundation) under real mpiexec.

Most checks run inside one 4-rank job of ``tests/apps/foundation_app.py``
(module-scoped, so the suite pays one job start for them); each test below
asserts on the ``CHECK <name> <json>`` line of its part. The other tests run
jobs of their own: hello, ring through a bare ``mpiexec``, main raising or
exiting, and the CLI's hostfile error.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import PY, ROOT, Checks, job_env, run_job

pytestmark = pytest.mark.mpi

APPS = Path(__file__).resolve().parent / "apps"
N_MSGS = 120                      # as in foundation_app.py


@pytest.fixture(scope="module")
def app():
    return Checks(run_job([str(APPS / "foundation_app.py")], n=4, timeout=150))


# ------------------------------------------------------------ the whole job

def test_app_job_ends_cleanly(app):
    app.assert_clean_end()


# ------------------------------------------------------------------- nodes

def test_nodes_show_rank_host_pid_state(app):
    c = app["nodes"]
    rows = c["rows"]
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert rows[0][2] == c["main_pid"] and rows[0][3] == "coordinator"
    assert all(r[3] == "alive" for r in rows[1:])
    assert all(r[1] == c["host"] == socket.gethostname() for r in rows)
    assert len({r[2] for r in rows}) == 4
    assert c["workers"] == 3
    # a task pinned to each node sees that node's rank, host and pid
    for rank, host, pid, state in rows[1:]:
        node, thost, tpid, tid = c["seen"][str(rank)]
        assert (node, thost, tpid) == (rank, host, pid)
    tids = [v[3] for v in c["seen"].values()] + [c["main_tid"]]
    assert len(set(tids)) == len(tids) and all(isinstance(t, int) for t in tids)


# ---------------------------------------------------------------- messages

def test_order_per_pair_and_tag(app):
    c = app["ordering"]
    res, senders = c["result"], c["senders"]
    evens, odds = list(range(0, N_MSGS, 2)), list(range(1, N_MSGS, 2))
    # tag B of the first sender was received selectively, past its tag-A messages
    assert res["first_b"] == odds
    expected = {}
    for i, s in enumerate(senders):          # a remote task, a local task, main
        expected[f"{s}/1"] = evens
        if i:
            expected[f"{s}/2"] = odds
    assert res["streams"] == expected
    assert res["sources_match"] and not res["left"]


def test_wildcards(app):
    c = app["wildcards"]
    main = c["main"]
    assert c["any"] == -1
    assert c["got"][:3] == [[main, 7, "second"], [main, 5, "first"], [main, 9, "third"]]
    assert c["got"][3] == c["pokers"]          # recv(-1, tag) took both sources


def test_recv_timeout_raises_timeout_error(app):
    c = app["timeouts"]
    for side in ("main", "task"):
        assert c[side]["type"] == "TimeoutError", c
        assert c[side]["waited"] >= 0.29
    assert "4242" in c["task"]["text"]


def test_nrecv_and_probe(app):
    c = app["nrecv_probe"]
    assert c["empty"] == [True, False, False]
    assert c["probed"] and c["still"] and c["source_probe"]
    assert not c["wrong_tag"] and not c["wrong_source"]
    assert c["msg"] == [c["tid"], 21, {"k": [1, 2]}]
    assert c["after"] == [True, False]


def test_mcast(app):
    c = app["mcast"]
    main = c["main"]
    first, *others = c["got"]
    assert first == [main, [1, 2.5, "z"], None, False]     # the relay did not get its own
    assert others == [[main, [1, 2.5, "z"], "relayed", False]] * 2
    assert c["main_got_own"] is False                      # mcast skips the sender


# ------------------------------------------------------------------ numpy

NP_CASES = ["int8", "uint16", "int32-3d", "int64", "float16", "float32", "float64-F", "int-F-3d",
            "complex64", "complex128-F", "bool", "big-endian", "unicode", "bytes", "datetime64",
            "structured", "0-d float", "0-d int16", "empty", "strided", "transposed", "8MiB"]


@pytest.mark.parametrize("how", ["submit", "message"])
def test_numpy_payloads(app, how):
    c = app["numpy"]
    for name in NP_CASES:
        d = c[f"{how} {name}"]
        assert d["type"] == "ndarray", (name, d)
        assert d["dtype_eq"] and d["dtype"][0] == d["dtype"][1], (name, d)
        assert d["shape"][0] == d["shape"][1] and d["equal"], (name, d)
    for name in ("float64-F", "int-F-3d", "complex128-F", "transposed"):
        assert c[f"{how} {name}"]["fortran"] == [True, True], name   # Fortran order kept
    for name in ("0-d float", "0-d int16"):
        assert c[f"{how} {name}"]["ndim"] == 0, name                  # not turned into a scalar


def test_numpy_nested_and_scalars(app):
    c = app["numpy"]
    nested = c["message nested"]
    assert nested["outer"] == ["dict", "list", "tuple"]
    for d in nested["parts"]:
        assert d["type"] == "ndarray" and d["dtype_eq"] and d["equal"], d
    assert nested["parts"][0]["fortran"] == [True, True]
    assert c["scalar"] == ["float32", 1.5]


# ----------------------------------------------------------------- errors

def test_task_exception_reaches_main_with_remote_traceback(app):
    c = app["task_errors"]["submit"]
    assert c["type"] == "ValueError" and c["text"] == "bad value 42"
    assert c["cause_type"] == "RemoteTraceback"
    tb = c["tb"]
    assert "deep_fail" in tb and "_inner_fail" in tb and "ValueError: bad value 42" in tb
    assert f"node 2 (host {socket.gethostname()}, pid {c['pid']})" in tb


def test_spawned_exception_keeps_its_class(app):
    c = app["task_errors"]["spawn"]
    assert c["type"] == "AppError" and c["args"] == ["custom", 7]
    assert "fail_app_error" in c["tb"] and "node 1" in c["tb"]


def test_exception_reaches_a_parent_task(app):
    c = app["task_errors"]["task parent"]
    assert c["type"] == "KeyError" and "missing-key" in c["text"]
    assert c["cause_type"] == "RemoteTraceback"
    assert "failing_child" in c["tb"] and "node 3" in c["tb"]


def test_unsendable_argument_names_type_and_path(app):
    c = app["wire_errors"]
    kind, text = c["submit"]
    assert kind == "WireError", c
    assert "'_thread.lock'" in text and "args[0]['model']" in text, text
    kind, text = c["submit kw"]
    assert kind == "WireError" and "'_thread.lock'" in text
    assert "kwargs['x']['model']" in text, text


def test_unsendable_spawn_argument(app):
    c = app["wire_errors"]
    kind, text = c["spawn"]
    assert kind == "WireError" and "'_thread.lock'" in text and "args[0]['model']" in text, text
    assert c["tasks after bad spawn"] == 0          # no ghost task left in the table


def test_unsendable_result_is_reported(app):
    kind, text = app["wire_errors"]["result"]
    assert kind == "WireError" and "'_thread.lock'" in text and "['lock']" in text, text


def test_unsendable_message_names_type_and_path(app):
    c = app["wire_errors"]
    kind, text = c["send"]
    assert kind == "WireError", c
    assert "'_thread.lock'" in text and "[1]['model']" in text, text
    # a failed send does not block later messages on the same pair
    assert c["next message"] == "after the bad one"


def test_vm_keeps_working_after_unsendable_submissions(app):
    c = app["wire_errors"]
    assert c["bad submits"] == ["WireError"] * 12
    assert c["later tasks"] == list(range(8))


def test_messages_to_finished_or_unknown_tasks(app):
    c = app["dead_unknown"]
    assert c["join"] == "done"
    assert c["dead"][0] == "DeadTaskError" and "has ended" in c["dead"][1]
    assert c["unknown"][0] == "UnknownTaskError" and "987654" in c["unknown"][1]
    assert c["from task"] == {"dead": "DeadTaskError", "unknown": "UnknownTaskError"}


def test_tasks_and_kill(app):
    c = app["tasks_kill"]
    t = c["tid"]
    rows = {r["tid"]: r for r in c["before"]}
    assert rows[1]["node"] == 0 and rows[1]["fn"] == "main"
    row = rows[t]
    assert row["parent"] == 1 and row["node"] == 3 and row["state"] == "running"
    assert row["fn"].endswith(":sleeper")
    assert c["joined"] == "DeadTaskError"           # join of a killed task says so
    assert t not in {r["tid"] for r in c["after"]}
    assert c["stopped"], "the killed task kept running"
    assert c["kill_unknown"] == "UnknownTaskError"


# ----------------------------------------------------------- jobs of their own

def test_hello_on_four_nodes():
    r = run_job(["examples/hello.py"], n=4)
    assert r.rc == 0, r.err
    coord = r.line("coordinator:")
    assert "3 worker node(s)" in coord
    hellos = [line.split() for line in r.out.splitlines() if line.startswith("hello from node")]
    assert sorted(int(w[4]) for w in hellos) == [1, 2, 3]
    assert {w[6] for w in hellos} == {socket.gethostname()}
    pids = {int(w[8]) for w in hellos} | {int(coord.split("pid ")[1].split(",")[0])}
    assert len(pids) == 4


def test_bare_mpiexec_runs_ring():
    mpiexec = Path(PY).parent / "mpiexec"
    assert mpiexec.exists(), f"no mpiexec beside {PY}"
    env = job_env({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMPI_MCA_btl": "^ofi"})
    cmd = [str(mpiexec), "--oversubscribe", "-n", "3", PY, "-m", "clustervm", "examples/ring.py"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec ring hung and was killed\n{out}\n{err}")
    assert proc.returncode == 0, err
    assert "ring: 4 tasks, 100 rounds, final token=400 (expected 400)" in out, out + err


def test_main_raising_fails_the_job_with_its_traceback():
    r = run_job([str(APPS / "main_raises.py")], n=3, timeout=60)
    assert r.rc not in (0, 124), (r.rc, r.err)
    assert "Traceback (most recent call last)" in r.err
    assert "in fail_in_main" in r.err and "RuntimeError: boom from main after 42" in r.err


def test_main_exit_status_is_passed_through():
    r = run_job([str(APPS / "main_raises.py"), "exit", "3"], n=3, timeout=60)
    assert r.rc == 3, (r.rc, r.err)
    assert "Traceback" not in r.err, r.err


def test_cli_bad_hostfile_names_file_and_line(tmp_path):
    bad = tmp_path / "hosts"
    bad.write_text("# two hosts\nlocalhost slots=2\nnode2 slots=many\n")
    r = subprocess.run([PY, "-m", "clustervm", "run", "--hostfile", str(bad), "-n", "2",
                        "examples/hello.py"], cwd=ROOT, env=job_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"clustervm: error: {bad}:3:"), r.stderr
    assert "many" in r.stderr and r.stdout == ""
