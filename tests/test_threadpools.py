"""A rank's numeric thread pools get its share of the host's cores (clustervm.threadpools)."""
from __future__ import annotations

import json
import os
import re

import pytest

from clustervm import threadpools
from clustervm.threadpools import POOL_VARS, share, size_pools
from conftest import ROOT, run_job


@pytest.mark.parametrize("env, cores, threads", [
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, 2, 1),       # more ranks than cores: one each
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 32, 8),
    ({"MPI_LOCALNRANKS": "2"}, 8, 4),                   # MPICH's Hydra
    ({}, 16, 16),                                       # no launcher: alone on the host
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "x", "MPI_LOCALNRANKS": "2"}, 8, 4),
])
def test_a_rank_gets_its_share_of_the_cores(env, cores, threads):
    assert share(cores, env) == threads


def test_the_pools_are_sized_unless_the_user_sized_one(monkeypatch):
    monkeypatch.setattr(threadpools.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert size_pools(env) == 2
    assert all(env[name] == "2" for name in POOL_VARS)
    mine = {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MKL_NUM_THREADS": "7"}
    assert size_pools(mine) is None
    assert mine == {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MKL_NUM_THREADS": "7"}


@pytest.mark.mpi
def test_every_rank_of_a_job_has_its_pools_sized_before_the_app_is_loaded():
    """3 ranks on this host: main and a task see the cores // 3 (at least 1) each; a
    pool the user sized is left as it is, and so are the others."""
    app = str(ROOT / "tests" / "apps" / "threadpools_app.py")
    preset = {name: os.environ[name] for name in POOL_VARS if name in os.environ}
    cores = len(os.sched_getaffinity(0))
    res = run_job([app], n=3, timeout=60)
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    m = re.search(r"^pools main=(\{.*\}) task=(\{.*\})$", res.out, re.MULTILINE)
    assert m, res.out
    want = {name: os.environ.get(name) for name in POOL_VARS} if preset \
        else dict.fromkeys(POOL_VARS, str(max(1, cores // 3)))
    assert json.loads(m.group(1)) == json.loads(m.group(2)) == want
    res = run_job([app], n=3, timeout=60, env={"OMP_NUM_THREADS": "3"})
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    m = re.search(r"^pools main=(\{.*\}) task=(\{.*\})$", res.out, re.MULTILINE)
    assert m, res.out
    want = {**{name: os.environ.get(name) for name in POOL_VARS}, "OMP_NUM_THREADS": "3"}
    assert json.loads(m.group(1)) == json.loads(m.group(2)) == want
