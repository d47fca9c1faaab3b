"""A real Slurm for tests: ``munged``, ``slurmctld`` and one ``slurmd`` per simulated host.

:class:`SlurmCluster` makes ``k`` hosts with :class:`~clustervm.testing.netns.TestHosts`
(network namespaces on a bridge, each with its own address and hostname) and starts::

    munged      root namespace   key and socket in the temp dir
    slurmctld   root namespace   listens on the bridge's address (the hosts reach it there)
    slurmd      in each host     NodeName = the host's hostname, NodeAddr = its address

so Slurm sees ``k`` nodes, and a job's batch script, its ``srun`` steps and the
processes they start run inside the hosts. Everything (slurm.conf, munge key and
socket, state and spool directories, logs, the jobs' TMPDIR) is in the hosts' work
directory (removed with the hosts, by the next run after a crash); the machine's own
Slurm or munge, if any, is not touched: commands reach this cluster through
``SLURM_CONF`` (:meth:`env`), and slurmctld and munged die with the process that
started them.

Choices: ``proctrack/linuxproc`` and ``task/none`` (no cgroups, which a container may
not delegate), ``select/cons_tres`` with ``CR_CPU``, ``SlurmdParameters=config_overrides``
(the nodes have the CPUs slurm.conf gives them, whatever the box has), no accounting
(``scontrol show job`` gives the exit code; ``sacct`` needs slurmdbd), ``SlurmUser=root``.
:meth:`SlurmCluster.down` cancels the jobs, stops the daemons it started (by pid), removes
the hosts (which kills whatever is left in them) and the directory.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Mapping, Sequence

from .netns import TestHosts, available as netns_available

__all__ = ["SlurmCluster", "SlurmClusterError", "available"]

log = logging.getLogger(__name__)

#: The programs the cluster needs (Debian: slurm-wlm, munge).
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "salloc", "srun", "scontrol",
            "scancel", "sinfo")
_STOP_GRACE_S = 5.0


class SlurmClusterError(RuntimeError):
    """The cluster could not be started or used; the message says what failed."""


def _program(name: str) -> str | None:
    """The path of a Slurm or munge program: PATH's, else the sbin directories (where
    Debian puts the daemons, and which a non-login PATH may lack)."""
    path = os.environ.get("PATH", os.defpath) + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def available() -> tuple[bool, str]:
    """Can a :class:`SlurmCluster` run here? ``(True, "")`` or ``(False, why not)``."""
    missing = [p for p in PROGRAMS if _program(p) is None]
    if missing:
        return False, (f"not found (PATH, sbin): {', '.join(missing)} (Debian: apt-get install "
                       f"slurm-wlm munge; tests/system_deps.sh does it as root)")
    ok, why = netns_available()
    if not ok:
        return False, f"the Slurm nodes are network namespaces: {why}"
    return True, ""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies, so
    that a crashed test run leaves no slurmctld or munged behind (slurmds and jobs are
    in the hosts, which the next run's TestHosts.up removes)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class SlurmCluster:
    """``k`` Slurm nodes with ``cpus`` CPUs each, on simulated hosts; see the module.

    >>> with SlurmCluster(2, cpus=2) as cluster:                        # doctest: +SKIP
    ...     job = cluster.sbatch(["-N2", "--ntasks-per-node=2", "job.sh"])
    ...     info = cluster.wait_job(job, timeout=60)                    # scontrol's fields
    ...     info["JobState"], info["ExitCode"]                          # COMPLETED 0:0
    """

    def __init__(self, k: int = 2, *, cpus: int = 2, partition: str = "cvm") -> None:
        self.k = k
        self.cpus = cpus
        self.partition = partition
        self.hosts = TestHosts(k, prefix="cvms")
        self.dir = ""
        #: TMPDIR of the commands run through :meth:`run` and of their jobs (Open MPI's
        #: session directories, the launcher's hostfiles), removed with the rest
        self.tmpdir = ""
        self.conf = ""
        self.nodes: list[str] = []       # Slurm's node names: the hosts' hostnames
        self.munge_socket = ""
        self.timings: dict[str, float] = {}
        self._daemons: dict[str, subprocess.Popen] = {}
        self._up = False

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> "SlurmCluster":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, timeout: float = 60.0) -> "SlurmCluster":
        """Make the hosts, start munged, slurmctld and the slurmds; wait until every node
        is idle (at most ``timeout`` s)."""
        ok, why = available()
        if not ok:
            raise SlurmClusterError(why)
        t0 = time.monotonic()
        self._up = True
        try:
            self.hosts.up()
            self.nodes = list(self.hosts.hostnames)
            # in the hosts' work directory: removed with the hosts, also after a crash
            self.dir = os.path.join(self.hosts.workdir, "slurm")
            self.tmpdir = os.path.join(self.hosts.workdir, "t")     # short: socket paths
            for path in (self.dir, self.tmpdir):
                os.makedirs(path, mode=0o755)
            self._start_munge()
            self._write_conf()
            self._start([self._prog("slurmctld"), "-D", "-f", self.conf], "slurmctld")
            for i, node in enumerate(self.nodes):
                for sub in ("spool", "tmp"):
                    os.makedirs(os.path.join(self.dir, f"{sub}-{node}"), exist_ok=True)
                self._start_slurmd(i)
            self._wait_idle(t0 + timeout)
        except BaseException:
            self.down()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def down(self) -> None:
        """Cancel every job, stop the daemons, remove the hosts and the directory.
        Never raises; idempotent."""
        if not self._up:
            return
        t0 = time.monotonic()
        if "slurmctld" in self._daemons and self._daemons["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.run(["scancel", "--partition", self.partition], timeout=15)
        for name in [n for n in self._daemons if n.startswith("slurmd")] + ["slurmctld",
                                                                            "munged"]:
            proc = self._daemons.pop(name, None)
            if proc is not None:
                self._stop(proc)
        with contextlib.suppress(Exception):
            self.hosts.down()   # kills what is left in the hosts; removes self.dir
        self._up = False
        self.timings["down"] = time.monotonic() - t0

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=_STOP_GRACE_S)

    # -- set-up ----------------------------------------------------------------------

    def _start(self, argv: Sequence[str], name: str) -> subprocess.Popen:
        log_path = os.path.join(self.dir, f"{name}.out")
        with open(log_path, "w") as out:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.env(),
                                    start_new_session=True, preexec_fn=_die_with_parent)
        self._daemons[name] = proc
        return proc

    @staticmethod
    def _prog(name: str) -> str:
        path = _program(name)
        if path is None:
            raise SlurmClusterError(f"{name} not found: {available()[1]}")
        return path

    def _start_slurmd(self, i: int) -> None:
        node = self.nodes[i]
        argv = [self._prog("slurmd"), "-D", "-N", node, "-f", self.conf]
        self._start(self.hosts.host_command(i, argv), f"slurmd-{node}")

    def _start_munge(self) -> None:
        key = os.path.join(self.dir, "munge.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        self.munge_socket = os.path.join(self.dir, "munge.socket")
        self._start([self._prog("munged"), "-F", "--key-file", key,
                     "--socket", self.munge_socket,
                     "--pid-file", os.path.join(self.dir, "munged.pid"),
                     "--log-file", os.path.join(self.dir, "munged.log"),
                     "--seed-file", os.path.join(self.dir, "munged.seed")], "munged")
        deadline = time.monotonic() + 15
        while not os.path.exists(self.munge_socket):
            if self._daemons["munged"].poll() is not None or time.monotonic() > deadline:
                raise SlurmClusterError(f"munged did not start: {self._tail('munged')}")
            time.sleep(0.05)

    def _write_conf(self) -> None:
        d = self.dir
        ctl_host = socket.gethostname().split(".")[0]
        lines = [
            f"# slurm.conf of the test cluster {self.hosts.tag}, written by clustervm",
            f"ClusterName={self.hosts.tag}",
            f"SlurmctldHost={ctl_host}({self.hosts.gateway})",
            f"SlurmctldPort={_free_port(self.hosts.gateway)}",
            "SlurmdPort=6818",               # each slurmd has a network namespace of its own
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool-%n",
            f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd-%n.pid",
            f"SlurmctldLogFile={d}/slurmctld.log",
            f"SlurmdLogFile={d}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "MinJobAge=600",                 # scontrol show job keeps ended jobs this long
            "KillWait=5",
            "InactiveLimit=0",
            "MailProg=/bin/true",
            f"TmpFS={d}/tmp-%n",             # per node: PMIx makes its directories there
        ]
        for node, addr in zip(self.nodes, self.hosts.addresses):
            lines.append(f"NodeName={node} NodeAddr={addr} NodeHostname={node} "
                         f"CPUs={self.cpus} State=UNKNOWN")
        lines.append(f"PartitionName={self.partition} Nodes=ALL Default=YES "
                     f"MaxTime=INFINITE State=UP")
        self.conf = os.path.join(d, "slurm.conf")
        os.makedirs(os.path.join(d, "state"), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        # slurmd 22.05 loads a cgroup plugin even with proctrack/linuxproc and task/none,
        # and its autodetection fails on a hybrid v1 layout (tmpfs on /sys/fs/cgroup): name
        # it. Nothing constrains a job, so no cgroup is made.
        with open(os.path.join(d, "cgroup.conf"), "w") as f:
            f.write(f"CgroupPlugin={self._cgroup_plugin()}\nConstrainCores=no\n"
                    "ConstrainRAMSpace=no\nConstrainDevices=no\n")

    @staticmethod
    def _cgroup_plugin() -> str:
        """cgroup/v2 where /sys/fs/cgroup is a cgroup2 file system, else cgroup/v1."""
        with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "/sys/fs/cgroup":
                    return "cgroup/v2" if fields[2] == "cgroup2" else "cgroup/v1"
        return "cgroup/v1"

    def _tail(self, name: str, chars: int = 1500) -> str:
        text = ""
        for path in (os.path.join(self.dir, f"{name}.out"), os.path.join(self.dir, f"{name}.log")):
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                text += f.read()[-chars:]
        return text.strip() or "(no output)"

    def _wait_idle(self, deadline: float) -> None:
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            for name, proc in self._daemons.items():
                if proc.poll() is not None:
                    raise SlurmClusterError(f"{name} ended with status {proc.returncode}: "
                                            f"{self._tail(name)}")
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15, check=False)
            states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            if len(states) == self.k and all(s == "idle" for s in states.values()):
                return
            time.sleep(0.3)
        raise SlurmClusterError(f"the nodes did not become idle: {states}; slurmctld: "
                                f"{self._tail('slurmctld')}")

    # -- use -------------------------------------------------------------------------

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment with SLURM_CONF pointing at this cluster (and
        none of the variables of an allocation this process may run in)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = self.conf
        env.update(extra or {})
        return env

    def run(self, argv: Sequence[str], *, timeout: float, check: bool = True,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            ) -> subprocess.CompletedProcess:
        """Run a Slurm command (sbatch, salloc, srun, scontrol...) against this cluster."""
        argv = [_program(argv[0]) or argv[0], *argv[1:]]
        try:
            out = subprocess.run(argv, env=self.env({"TMPDIR": self.tmpdir, **(env or {})}),
                                 cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            raise SlurmClusterError(f"{' '.join(argv)} ran past {timeout:g} s; output: "
                                    f"{e.stdout!r} {e.stderr!r}") from None
        if check and out.returncode != 0:
            raise SlurmClusterError(f"{' '.join(argv)} failed ({out.returncode}): "
                                    f"{out.stderr.strip()}")
        return out

    def sbatch(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
               cwd: str | None = None) -> str:
        """Submit a batch job (``sbatch --parsable ARGS``); returns its job id."""
        out = self.run(["sbatch", "--parsable", *args], timeout=30, env=env, cwd=cwd)
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, NodeList, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", job_id], timeout=15)
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def wait_job(self, job_id: str, timeout: float) -> dict[str, str]:
        """Wait for a job to end (cancelled after ``timeout`` s); its scontrol fields."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING",
                                            "COMPLETING", "SUSPENDED"):
                return info
            if time.monotonic() > deadline:
                self.run(["scancel", job_id], timeout=15, check=False)
                raise SlurmClusterError(f"job {job_id} still {info.get('JobState')} after "
                                        f"{timeout:g} s; cancelled it")
            time.sleep(0.2)

    def kill_node(self, i: int) -> list[int]:
        """Crash node I: SIGKILL every process of its host, its slurmd, the job steps'
        slurmstepd and whatever they started. Returns the pids killed."""
        killed = self.hosts.kill_host(i)
        proc = self._daemons.get(f"slurmd-{self.nodes[i]}")
        if proc is not None:
            proc.wait(timeout=_STOP_GRACE_S)
        return killed

    def start_slurmd(self, i: int) -> None:
        """Start node I's slurmd again (after :meth:`kill_node`: the node "rebooted");
        Slurm then ends there what it still counts as running."""
        node = self.nodes[i]
        proc = self._daemons.get(f"slurmd-{node}")
        if proc is not None and proc.poll() is None:
            raise SlurmClusterError(f"slurmd of {node} is still running (pid {proc.pid})")
        self._start_slurmd(i)

    def mpi_types(self) -> list[str]:
        """What ``srun --mpi=list`` offers here (e.g. none, pmi2, pmix)."""
        out = self.run(["srun", "--mpi=list"], timeout=15, check=False)
        # "MPI plugin types are...", then one name per line (indented)
        return sorted(set(re.findall(r"^\s+([a-z][a-z0-9_]*)\s*$", out.stdout + out.stderr,
                                     re.MULTILINE)))

    def log(self, name: str = "slurmctld") -> str:
        """The end of a daemon's log (``slurmctld``, ``slurmd-<node>``, ``munged``)."""
        return self._tail(name, 4000)
