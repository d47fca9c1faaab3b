"""Slurm's variables read without Slurm: the nodelist and tasks-per-node grammars, the
allocation they make, and the mpiexec command ``clustervm run`` builds from them.

The command is built against a fake Open MPI mpiexec (``CLUSTERVM_MPIEXEC``), so no MPI
and no Slurm are needed here; tests/test_slurm.py runs the same against a real Slurm.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from clustervm import slurm
from clustervm.hostfile import Host, parse_hostfile
from clustervm.slurm import SlurmError, allocation, expand_counts, expand_nodelist

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, names", [
    ("node01", ["node01"]),
    ("node[01-03,7],gpu5", ["node01", "node02", "node03", "node7", "gpu5"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),
    ("a,b,c", ["a", "b", "c"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("n[1-2].ib", ["n1.ib", "n2.ib"]),
    ("n[3]", ["n3"]),
    ("[1-2]x", ["1x", "2x"]),
    ("cvmt1f3ag-h[1-2]", ["cvmt1f3ag-h1", "cvmt1f3ag-h2"]),
    ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
    (" n1,n1,n[1-2] ", ["n1", "n2"]),               # a host named twice is kept once
])
def test_nodelist(text, names):
    assert expand_nodelist(text) == names


@pytest.mark.parametrize("text, words", [
    ("", ["SLURM_JOB_NODELIST is empty"]),
    ("n[1-3", ["never closed"]),
    ("n1-3]", ["']' without '['"]),
    ("n[1-[2]]", ["do not nest"]),
    ("n[3-1]", ["goes down", "1-3"]),
    ("n[a-b]", ["'a-b'", "not a number"]),
    ("n[]", ["not a number"]),
    ("n1,,n2", ["empty name"]),
    ("n 1", ["'n 1' is not a host name"]),
    ("n[1-99999999]", ["more than"]),
    ("n[1-1000]m[1-1000]x[1-10]", ["more than"]),
])
def test_nodelist_errors(text, words):
    with pytest.raises(SlurmError) as e:
        expand_nodelist(text)
    for word in words:
        assert word in str(e.value)
    assert "SLURM_JOB_NODELIST" in str(e.value)


@pytest.mark.parametrize("text, counts", [
    ("4", [4]),
    ("2(x3),1", [2, 2, 2, 1]),
    ("1,2,3", [1, 2, 3]),
    ("16(x2)", [16, 16]),
])
def test_counts(text, counts):
    assert expand_counts(text) == counts


@pytest.mark.parametrize("text, word", [
    ("", "empty"), ("2(x)", "not N or N(xK)"), ("x", "not N or N(xK)"),
    ("2(x0)", "repeats 0 times"), ("2,,1", "not N or N(xK)"), ("-1", "not N or N(xK)"),
])
def test_counts_errors(text, word):
    with pytest.raises(SlurmError, match="SLURM_TASKS_PER_NODE") as e:
        expand_counts(text)
    assert word in str(e.value)


def test_allocation():
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[01-03,7],gpu5",
           "SLURM_TASKS_PER_NODE": "2(x3),1,1", "SLURM_NTASKS": "8"}
    a = allocation(env)
    assert a is not None
    assert a.job_id == "42" and a.ntasks == 8 and a.slots == 8
    assert a.hosts == (Host("node01", 2), Host("node02", 2), Host("node03", 2),
                       Host("node7", 1), Host("gpu5", 1))
    assert allocation({}) is None
    assert allocation({"SLURM_JOB_ID": "1"}) is None      # no nodelist: not in an allocation
    # old Slurm's names, and CPUs when Slurm gives no task count
    b = allocation({"SLURM_NODELIST": "a,b", "SLURM_JOB_CPUS_PER_NODE": "4(x2)"})
    assert b is not None and b.hosts == (Host("a", 4), Host("b", 4)) and b.ntasks == 8


@pytest.mark.parametrize("env, words", [
    ({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2)"},
     ["gives 2 node(s)", "names 3", "--hostfile"]),
    ({"SLURM_JOB_NODELIST": "n1"}, ["SLURM_TASKS_PER_NODE", "--hostfile or -n"]),
    ({"SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "0"}, ["0 tasks"]),
    ({"SLURM_JOB_NODELIST": "n[1", "SLURM_TASKS_PER_NODE": "1"}, ["never closed"]),
])
def test_allocation_errors(env, words):
    with pytest.raises(SlurmError) as e:
        allocation(env)
    for word in words:
        assert word in str(e.value)


def test_direct_launch_error():
    step = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_MPI_TYPE": "none"}
    msg = slurm.direct_launch_error(step)
    assert msg and "clustervm run" in msg and "--mpi=none" in msg and "4 tasks" in msg
    assert "\n" not in msg
    assert slurm.direct_launch_error({**step, "PMIX_RANK": "0"}) is None    # srun --mpi=pmix
    assert slurm.direct_launch_error({**step, "PMI_FD": "5"}) is None       # srun --mpi=pmi2
    assert slurm.direct_launch_error({**step, "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert slurm.direct_launch_error({}) is None


# ------------------------------------------------- the command clustervm run builds

OMPI_VERSION = "mpiexec (Open MPI) 5.0.11\n"
OMPI_INFO = "ompi:version:full:5.0.11\noptions:ft_mpi_support:yes\n"


@pytest.fixture
def fake_mpiexec(tmp_path):
    """A fake Open MPI 5 mpiexec with ULFM and its ompi_info (they only print)."""
    for name, text in (("mpiexec", OMPI_VERSION), ("ompi_info", OMPI_INFO)):
        path = tmp_path / "bin" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}EOF\n")
        path.chmod(0o755)
    return str(tmp_path / "bin" / "mpiexec")


def dry_run(mpiexec: str, tmp: Path, slurm_env: dict[str, str], *args: str) -> list[str]:
    """``clustervm run --dry-run ARGS app.py`` under SLURM_ENV: the mpiexec argv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CLUSTERVM_"))}
    env.update(slurm_env, CLUSTERVM_MPIEXEC=mpiexec, TMPDIR=str(tmp))
    out = subprocess.run([sys.executable, "-m", "clustervm", "run", "--dry-run", *args,
                          "app.py"], env=env, capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    return words[words.index(mpiexec):]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_run_in_one_node_allocation(fake_mpiexec, tmp_path):
    """One node: simply -n (its tasks), no hostfile, no remote keepalive."""
    argv = dry_run(fake_mpiexec, tmp_path, {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "c5",
                                            "SLURM_TASKS_PER_NODE": "3", "SLURM_NNODES": "1"})
    assert option(argv, "-n") == "3"
    assert "--hostfile" not in argv and "--oversubscribe" not in argv
    assert not any("keepalive" in a for a in argv)


def test_run_in_multi_node_allocation(fake_mpiexec, tmp_path):
    """Several nodes: a hostfile with each node's tasks as slots, -n their sum, keepalive."""
    argv = dry_run(fake_mpiexec, tmp_path,
                   {"SLURM_JOB_ID": "8", "SLURM_JOB_NODELIST": "node[01-03,7],gpu5",
                    "SLURM_TASKS_PER_NODE": "2(x3),1,1", "SLURM_JOB_NUM_NODES": "5"})
    assert option(argv, "-n") == "8"
    hostfile = option(argv, "--hostfile")
    assert hostfile and hostfile.startswith(str(tmp_path))
    assert parse_hostfile(hostfile) == [Host("node01", 2), Host("node02", 2), Host("node03", 2),
                                        Host("node7", 1), Host("gpu5", 1)]
    assert any("keepalive" in a for a in argv)
    # -n given: it wins (oversubscribed past the allocation's tasks)
    argv = dry_run(fake_mpiexec, tmp_path,
                   {"SLURM_JOB_ID": "8", "SLURM_JOB_NODELIST": "n[1-2]",
                    "SLURM_TASKS_PER_NODE": "1(x2)"}, "-n", "3")
    assert option(argv, "-n") == "3" and "--oversubscribe" in argv
    # a hostfile given: Slurm's variables are not read
    hf = tmp_path / "hosts"
    hf.write_text("h1 slots=5\n")
    argv = dry_run(fake_mpiexec, tmp_path, {"SLURM_JOB_NODELIST": "n[1-2]",
                                            "SLURM_TASKS_PER_NODE": "1(x2)"},
                   "--hostfile", str(hf))
    assert option(argv, "-n") == "5" and option(argv, "--hostfile") == str(hf)


def test_run_with_bad_slurm_variables(fake_mpiexec, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CLUSTERVM_"))}
    env.update(SLURM_JOB_NODELIST="n[1-3]", SLURM_TASKS_PER_NODE="2(x2)",
               CLUSTERVM_MPIEXEC=fake_mpiexec)
    out = subprocess.run([sys.executable, "-m", "clustervm", "run", "--dry-run", "app.py"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "SLURM_TASKS_PER_NODE" in out.stderr, out.stderr


def test_hostfile_command(tmp_path):
    """``python -m clustervm.slurm`` prints the allocation as a hostfile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    cmd = [sys.executable, "-m", "clustervm.slurm"]
    out = subprocess.run(cmd, env={**env, "SLURM_JOB_NODELIST": "n[1-2]",
                                   "SLURM_TASKS_PER_NODE": "4,2"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "n1 slots=4\nn2 slots=2\n"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not inside a Slurm allocation" in out.stderr
