"""Simulated hosts for multi-host tests: Linux network namespaces on a bridge.

One :class:`TestHosts` instance with tag ``T`` (prefix + creating pid in hex + a
per-process counter in the letters g-z, e.g. ``cvmt1f3ag``: unambiguous, so no tag is a
prefix of another's names) makes, in the root namespace::

    bridge  Tb    address <subnet>.254  (the "gateway"; mpiexec / PRRTE's HNP talks from here)
      veth  Tv1 <-> eth0 in netns Th1   address <subnet>.1   hostname T-h1
      veth  Tv2 <-> eth0 in netns Th2   address <subnet>.2   hostname T-h2
      ...

Host indices are 0-based in the API (``addresses[0]`` is ``<subnet>.1``, namespace
``Th1``).  The subnet is ``10.77.<n>.0/24`` with the first ``n`` in 1..254 that no address
of the root namespace uses (``n = 0`` is left to ``shared/probes/netns_hosts.sh``), chosen
under a file lock so parallel test runs get different subnets.  The namespaces have no
default route: a host reaches the other hosts and the gateway address, nothing else.

Choices (see the report in ``tests/test_netns.py`` for what was measured):

* **Where mpiexec runs.**  mpiexec (PRRTE's HNP) runs in the *root* namespace, where the
  test process is, and is *not* one of the hosts: the hostfile lists only the
  namespaces, so PRRTE maps no rank onto the HNP's own node and every rank lives inside
  a namespace, under that host's ``prted`` (started through :attr:`rsh_agent`).  Killing
  a "host" (:meth:`kill_host`) therefore never kills the launcher.
* **Hostnames.**  Each host has its own persistent UTS namespace (``unshare --uts=FILE``,
  the file kept under ``/run/clustervm-testhosts``) whose hostname is ``T-h<i+1>``
  (:attr:`hostnames`).  The agent enters it with ``nsenter --uts``, so inside host ``i``
  ``socket.gethostname()`` and ``MPI.Get_processor_name()`` return ``hostnames[i]``; the
  agent also exports ``CLUSTERVM_HOSTNAME=hostnames[i]``, which the ranks inherit from
  prted (it wins over a value in mpiexec's environment unless mpiexec gets ``-x
  CLUSTERVM_HOSTNAME``).  The names for hostfiles (:attr:`names`) are the addresses,
  which need no name resolution anywhere.
* **Environment.**  Unlike ssh, the agent passes its whole environment through
  (``ip netns exec`` and ``nsenter`` keep it), so prted sees the ``OPAL_PREFIX``,
  ``PATH``, ``OMPI_*`` and ``PRTE_*`` variables of the mpiexec that started it.
* **No tree spawn** (``plm_ssh_no_tree_spawn 1`` in :meth:`mpiexec_args`): the HNP starts
  every prted itself, so a host's processes never include another host's launcher.

Every instance writes a record to ``/run/clustervm-testhosts/T.json`` *before* it creates
anything; :func:`cleanup_stale` (called by :meth:`TestHosts.up`) removes what records of
dead creators describe, so a crashed run's leftovers do not pile up or collide.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import glob
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Iterator, Mapping, Sequence

from .. import procs

__all__ = [
    "TestHosts",
    "TestHostsError",
    "Job",
    "JobResult",
    "available",
    "cleanup_stale",
    "REGISTRY_DIR",
]

REGISTRY_DIR = "/run/clustervm-testhosts"
NETNS_DIR = "/run/netns"
_IFNAMSIZ = 15  # longest interface name the kernel takes
_counter = itertools.count()
_available: tuple[bool, str] | None = None


class TestHostsError(RuntimeError):
    """Making, using or removing the simulated hosts failed."""

    __test__ = False


# ----------------------------------------------------------------------------- helpers


def _ip(args: Sequence[str], *, input: str | None = None, check: bool = True,
        timeout: float = 30.0) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], input=input, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise TestHostsError(f"ip {' '.join(args)} failed ({p.returncode}): "
                             f"{p.stderr.strip()}")
    return p


def _batch(lines: Sequence[str], *, netns: str | None = None, force: bool = False) -> None:
    """Run ``ip`` commands in one process (``ip [-n NS] [-force] -batch -``)."""
    if not lines:
        return
    args = (["-n", netns] if netns else []) + (["-force"] if force else []) + ["-batch", "-"]
    _ip(args, input="".join(line + "\n" for line in lines), check=not force)


def _letters(n: int) -> str:
    """N written with the digits g..z (never hex digits, so pid+counter stays unambiguous)."""
    out = ""
    while True:
        n, r = divmod(n, 20)
        out = chr(ord("g") + r) + out
        if not n:
            return out


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on, or None if PID is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None  # field 22, starttime in clock ticks


def _alive(pid: int) -> bool:
    """PID exists and is not a zombie."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _ppid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


def _links() -> set[str]:
    """Names of the network interfaces of the root namespace."""
    out = _ip(["-o", "link", "show"]).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@")[0])
    return names


def _netns_list() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def _ns_pids(netns: str) -> list[int]:
    """Processes whose network namespace is NETNS (what ``ip netns pids`` prints)."""
    try:
        st = os.stat(os.path.join(NETNS_DIR, netns))
    except FileNotFoundError:
        return []
    key = (st.st_dev, st.st_ino)
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            s = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone, or a zombie (no namespaces any more)
            continue
        if (s.st_dev, s.st_ino) == key:
            pids.append(int(entry))
    return sorted(pids)


def _signal_all(pids: Sequence[int], sig: int) -> list[int]:
    sent = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent.append(pid)
        except ProcessLookupError:
            pass
    return sent


def _kill_ns(netns: str, sig: int = signal.SIGKILL, wait: float = 5.0) -> list[int]:
    """Signal every process of NETNS; with SIGKILL, repeat until none is left (or WAIT s)."""
    killed: list[int] = []
    deadline = time.monotonic() + wait
    while True:
        pids = _ns_pids(netns)
        if not pids:
            return killed
        killed.extend(p for p in _signal_all(pids, sig) if p not in killed)
        if sig != signal.SIGKILL or time.monotonic() > deadline:
            return killed
        time.sleep(0.01)


def _umount(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), 2) != 0:  # MNT_DETACH
        err = ctypes.get_errno()
        if err not in (22,):  # EINVAL: not a mount point (any more)
            raise OSError(err, os.strerror(err), path)


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    os.makedirs(REGISTRY_DIR, exist_ok=True)
    with open(os.path.join(REGISTRY_DIR, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _records() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(glob.glob(os.path.join(REGISTRY_DIR, "*.json"))):
        try:
            with open(path) as f:
                out.append((path, json.load(f)))
        except (OSError, ValueError):
            continue
    return out


def _write_record(path: str, rec: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, path)


def _remove_mpi_leftovers(hostnames: Sequence[str]) -> None:
    """Remove what killed Open MPI 5 processes of these hosts leave: shared-memory
    segments ``/dev/shm/sm_segment.<hostname>.<uid>.<jobid>.<rank>`` (16 MiB each) and
    prted session directories ``$TMPDIR/prted.<pid>`` (holding ``pmix.<hostname>.tool``)
    of dead prteds."""
    tmp = tempfile.gettempdir()
    for hn in hostnames:
        for path in glob.glob(f"/dev/shm/*.{glob.escape(hn)}.*"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        for marker in glob.glob(f"{tmp}/prted.*/pmix.{glob.escape(hn)}.tool"):
            d = os.path.dirname(marker)
            pid = os.path.basename(d).split(".", 1)[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(d, ignore_errors=True)


def _teardown(rec: dict) -> list[str]:
    """Remove everything RECORD describes.  Returns what could not be removed."""
    problems: list[str] = []
    netns = list(rec.get("netns", []))
    # 1. processes first: a namespace with processes outlives `ip netns del`, with its veth.
    for ns in netns:
        _kill_ns(ns, signal.SIGKILL, wait=5.0)
        left = _ns_pids(ns)
        if left:
            problems.append(f"processes {left} in {ns} survived SIGKILL")
    # 2. links (deleting one end of a veth pair deletes both, synchronously), bridge.
    try:
        present = _links()
        gone = [v for v in rec.get("veths", []) if v in present]
        if rec.get("bridge") in present:
            gone.append(rec["bridge"])
        _batch([f"link del {name}" for name in gone], force=True)
    except Exception as e:  # noqa: BLE001 - teardown goes on
        problems.append(f"deleting links: {e}")
    # 3. namespaces.
    try:
        _batch([f"netns del {ns}" for ns in netns if ns in _netns_list()], force=True)
    except Exception as e:  # noqa: BLE001
        problems.append(f"deleting namespaces: {e}")
    # 4. persistent UTS namespaces.
    for path in rec.get("uts", []):
        if os.path.exists(path):
            try:
                _umount(path)
                os.unlink(path)
            except OSError as e:
                problems.append(f"removing {path}: {e}")
    # 5. what Open MPI jobs killed on these hosts leave behind.
    _remove_mpi_leftovers(rec.get("hostnames", []))
    if rec.get("workdir"):
        shutil.rmtree(rec["workdir"], ignore_errors=True)
    # 6. check.
    try:
        present = _links()
        left_links = [n for n in [*rec.get("veths", []), rec.get("bridge")] if n in present]
        if left_links:
            problems.append(f"links left: {left_links}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"listing links: {e}")
    left_ns = [ns for ns in netns if ns in _netns_list()]
    if left_ns:
        problems.append(f"namespaces left: {left_ns}")
    return problems


def cleanup_stale(prefix: str | None = None) -> list[str]:
    """Remove the hosts of registry records whose creating process is dead.

    Only records whose tag starts with PREFIX (all if None).  Returns the tags removed.
    """
    removed = []
    for path, rec in _records():
        tag = rec.get("tag", "")
        if prefix is not None and not tag.startswith(prefix):
            continue
        pid, start = rec.get("pid", 0), rec.get("start")
        if pid and _start_time(pid) == start:
            continue  # creator alive
        if not _teardown(rec):
            with contextlib.suppress(OSError):
                os.unlink(path)
            removed.append(tag)
    return removed


def available() -> tuple[bool, str]:
    """Can test hosts be made here?  ``(True, "")`` or ``(False, why not)``.

    Checks Linux, root, the tools (``ip``, ``nsenter``, ``unshare``), and then really
    makes and removes one namespace (a container may forbid it even to root).
    The answer is cached for the process.
    """
    global _available
    if _available is not None:
        return _available
    if not sys.platform.startswith("linux"):
        _available = (False, f"network namespaces need Linux, not {sys.platform}")
    elif os.geteuid() != 0:
        _available = (False, "making network namespaces needs root (euid is "
                             f"{os.geteuid()})")
    elif missing := [t for t in ("ip", "nsenter", "unshare") if shutil.which(t) is None]:
        _available = (False, f"not found on PATH: {', '.join(missing)} "
                             "(iproute2, util-linux)")
    else:
        name = f"cvmtprobe{os.getpid():x}"
        try:
            p = _ip(["netns", "add", name], check=False)
            if p.returncode != 0:
                _available = (False, f"ip netns add failed: {p.stderr.strip()}")
            else:
                _ip(["netns", "del", name], check=False)
                _available = (True, "")
        except (OSError, subprocess.SubprocessError) as e:
            _available = (False, f"ip netns add failed: {e}")
    return _available


# ----------------------------------------------------------------------------- jobs


@dataclasses.dataclass
class JobResult:
    """What :meth:`TestHosts.run_job` saw."""

    cmd: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool
    #: processes still in the hosts after the job ended (then killed), by host index
    leftovers: dict[int, list[int]]

    def __str__(self) -> str:
        return (f"rc={self.returncode} timed_out={self.timed_out} elapsed={self.elapsed:.2f}s "
                f"leftovers={self.leftovers}\n--- stdout\n{self.stdout}\n--- stderr\n"
                f"{self.stderr}")


# ----------------------------------------------------------------------------- hosts


class TestHosts:
    """k simulated hosts: network namespaces on a bridge, each with its own address and hostname.

    >>> with TestHosts(3) as hosts:                                  # doctest: +SKIP
    ...     hf = hosts.hostfile(2, tmp / "hosts")
    ...     cmd = ["mpiexec", *hosts.mpiexec_args(), "--hostfile", hf, "-n", "6", ...]
    ...     res = hosts.run_job(cmd, timeout=60, env=...)

    All attributes below are filled by :meth:`up` (the context manager calls it).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, k: int, *, prefix: str = "cvmt", subnet: str | None = None,
                 hostnames: bool = True) -> None:
        """K hosts.  PREFIX starts every name made (letters/digits, at most 5 characters
        so interface names fit in 15).  SUBNET (e.g. ``"10.77.9.0/24"``) or None to pick a
        free ``10.77.<n>.0/24``.  HOSTNAMES: give each host its own UTS namespace and
        hostname (else processes inside see the machine's hostname)."""
        if k < 1:
            raise ValueError("k must be >= 1")
        if not re.fullmatch(r"[a-z][a-z0-9]*", prefix):
            raise ValueError(f"prefix {prefix!r}: lowercase letters and digits, "
                             "starting with a letter")
        # tag = prefix + pid (<= 6 hex digits) + counter (1-2); veth = tag + "v" + index
        if len(prefix) + 6 + 2 + 1 + len(str(k)) > _IFNAMSIZ:
            raise ValueError(f"prefix {prefix!r} too long for {k} hosts "
                             f"(interface names are limited to {_IFNAMSIZ} characters)")
        self.k = k
        self.prefix = prefix
        self._want_subnet = subnet
        self._uts = hostnames
        self.tag: str = ""
        self.subnet: str = ""  # e.g. "10.77.1.0/24"
        self.gateway: str = ""  # the bridge's address in the root namespace
        self.addresses: list[str] = []
        self.names: list[str] = []  # for hostfiles: the addresses
        self.hostnames: list[str] = []  # what gethostname() returns inside each host
        self.netns: list[str] = []
        self.veths: list[str] = []  # root-side ends; the other end is eth0 in the host
        self.bridge: str = ""
        self.rsh_agent: str = ""
        self.workdir: str = ""
        self.timings: dict[str, float] = {}  # seconds taken by up / down
        self.down_problems: list[str] = []
        self._uts_files: list[str] = []
        self._record_path = ""
        self._is_up = False
        self._jobs: list[Job] = []

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> "TestHosts":
        return self.up()

    def __exit__(self, exc_type, exc, tb) -> bool:
        problems = self.down()
        if problems and exc_type is None:
            raise TestHostsError("teardown incomplete: " + "; ".join(problems))
        return False

    def __del__(self) -> None:  # last resort; down() is idempotent
        if getattr(self, "_is_up", False):
            with contextlib.suppress(Exception):
                self.down()

    def up(self) -> "TestHosts":
        """Make the bridge, the namespaces, their veths, addresses and hostnames."""
        if self._is_up:
            return self
        ok, why = available()
        if not ok:
            raise TestHostsError(why)
        t0 = time.monotonic()
        cleanup_stale(self.prefix)
        self._is_up = True  # from here on down() has something to do
        try:
            with _registry_lock():
                self._choose_names()
                self._choose_subnet()
                self._record_path = os.path.join(REGISTRY_DIR, self.tag + ".json")
                _write_record(self._record_path, self._record())
                # the bridge with its address claims the subnet: keep it under the lock
                net = ipaddress.ip_network(self.subnet)
                _batch([
                    f"link add {self.bridge} type bridge forward_delay 0 stp_state 0",
                    f"link set {self.bridge} addrgenmode none",
                    f"addr add {self.gateway}/{net.prefixlen} dev {self.bridge}",
                    f"link set {self.bridge} up",
                ])
            root = []
            for ns, veth in zip(self.netns, self.veths):
                root += [f"netns add {ns}",
                         f"link add {veth} type veth peer name eth0 netns {ns}",
                         f"link set {veth} addrgenmode none",
                         f"link set {veth} master {self.bridge}",
                         f"link set {veth} up"]
            _batch(root)
            for ns, addr in zip(self.netns, self.addresses):
                _batch(["link set lo up",
                        "link set eth0 addrgenmode none",
                        f"addr add {addr}/{net.prefixlen} dev eth0",
                        "link set eth0 up"], netns=ns)
            if self._uts:
                for path, hn in zip(self._uts_files, self.hostnames):
                    open(path, "w").close()
                    subprocess.run(["unshare", f"--uts={path}", "hostname", hn], check=True,
                                   capture_output=True, timeout=30)
            self.workdir = tempfile.mkdtemp(prefix=self.tag + "-")
            os.chmod(self.workdir, 0o755)
            _write_record(self._record_path, self._record())
            self.rsh_agent = os.path.join(self.workdir, "rsh_agent")
            with open(self.rsh_agent, "w") as f:
                f.write(self._agent_script())
            os.chmod(self.rsh_agent, 0o755)
        except BaseException:
            self.down()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def down(self) -> list[str]:
        """Kill every process in the hosts, remove the namespaces, veths, bridge, UTS
        files, the hosts' Open MPI leftovers in /dev/shm and the work directory.
        Never raises; returns (and keeps in :attr:`down_problems`) what could not be
        removed.  Idempotent."""
        if not self._is_up:
            return []
        t0 = time.monotonic()
        for job in self._jobs:  # an mpiexec still running (the test raised before wait)
            if job.running():
                job._kill_group()
                with contextlib.suppress(Exception):
                    job.proc.wait(timeout=10)
                    job._remove_hnp_dir()
        self._jobs = [j for j in self._jobs if j.running()]
        try:
            problems = _teardown(self._record())
        except Exception as e:  # noqa: BLE001
            problems = [f"teardown failed: {e!r}"]
        if not problems and self._record_path:
            with contextlib.suppress(OSError):
                os.unlink(self._record_path)
        if problems:
            warnings.warn(f"TestHosts {self.tag}: teardown incomplete: {problems}",
                          RuntimeWarning, stacklevel=2)
        self.down_problems = problems
        self._is_up = False
        self.timings["down"] = time.monotonic() - t0
        return problems

    def leftovers(self) -> list[str]:
        """Namespaces, links and UTS files of this instance that exist (empty after down)."""
        present = _links()
        ns = _netns_list()
        return ([n for n in self.netns if n in ns]
                + [n for n in [*self.veths, self.bridge] if n and n in present]
                + [p for p in self._uts_files if os.path.exists(p)])

    # -- naming ------------------------------------------------------------------

    def _choose_names(self) -> None:
        existing_ns, existing_links = _netns_list(), _links()
        for _ in range(256):
            tag = f"{self.prefix}{os.getpid():x}{_letters(next(_counter))}"
            netns = [f"{tag}h{i + 1}" for i in range(self.k)]
            veths = [f"{tag}v{i + 1}" for i in range(self.k)]
            bridge = f"{tag}b"
            if max(len(n) for n in [*veths, bridge]) > _IFNAMSIZ:
                raise ValueError(f"names too long for interfaces: {veths[-1]}")
            if (os.path.exists(os.path.join(REGISTRY_DIR, tag + ".json"))
                    or existing_ns.intersection(netns)
                    or existing_links.intersection([*veths, bridge])):
                continue
            break
        else:
            raise TestHostsError("no free name")
        self.tag, self.netns, self.veths, self.bridge = tag, netns, veths, bridge
        self.hostnames = [f"{tag}-h{i + 1}" for i in range(self.k)]
        self._uts_files = ([os.path.join(REGISTRY_DIR, f"{ns}.uts") for ns in netns]
                           if self._uts else [])

    def _choose_subnet(self) -> None:
        used = []
        for line in _ip(["-4", "-o", "addr", "show"]).stdout.splitlines():
            m = re.search(r"\binet (\S+)", line)
            if m:
                used.append(ipaddress.ip_network(m.group(1), strict=False))
        for _, rec in _records():
            if rec.get("subnet"):
                used.append(ipaddress.ip_network(rec["subnet"]))
        if self._want_subnet:
            cands = [ipaddress.ip_network(self._want_subnet)]
        else:
            cands = [ipaddress.ip_network(f"10.77.{n}.0/24") for n in range(1, 255)]
        for net in cands:
            if net.version != 4 or net.num_addresses < self.k + 4:
                raise ValueError(f"subnet {net}: need IPv4 with room for {self.k} hosts")
            if any(net.overlaps(u) for u in used):
                continue
            self.subnet = str(net)
            hosts = list(itertools.islice(net.hosts(), self.k))
            self.addresses = [str(a) for a in hosts]
            self.gateway = str(net.broadcast_address - 1)
            self.names = list(self.addresses)
            return
        raise TestHostsError(f"subnet {self._want_subnet or '10.77.*.0/24'} in use")

    def _record(self) -> dict:
        return {"tag": self.tag, "pid": os.getpid(), "start": _start_time(os.getpid()),
                "subnet": self.subnet, "bridge": self.bridge, "veths": self.veths,
                "netns": self.netns, "uts": self._uts_files, "hostnames": self.hostnames,
                "addresses": self.addresses, "workdir": self.workdir}

    def _agent_script(self) -> str:
        cases = []
        for i in range(self.k):
            pats = "|".join(dict.fromkeys([self.addresses[i], self.names[i], self.hostnames[i],
                                           self.netns[i]]))
            uts = self._uts_files[i] if self._uts else ""
            cases.append(f"  {pats}) ns={self.netns[i]}; uts={uts}; hn={self.hostnames[i]} ;;")
        enter = ('ip netns exec "$ns" nsenter --uts="$uts" --' if self._uts
                 else 'ip netns exec "$ns"')
        return f"""#!/bin/sh
# ssh stand-in made by clustervm.testing.netns for the test hosts {self.tag} ({self.subnet}).
# usage: rsh_agent [ssh options] HOST [COMMAND...]
# Runs COMMAND (its words joined by spaces and run by "${{SHELL:-/bin/sh}} -c", as ssh does)
# inside HOST's network namespace (ip netns exec) and UTS namespace (its own hostname),
# with CLUSTERVM_HOSTNAME set to that hostname.  Unlike ssh the environment passes
# through, so Open MPI's prted gets OPAL_PREFIX, PATH, OMPI_* and PRTE_* from mpiexec.
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    -[BbcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;  # ssh options that take an argument
    -*) shift ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || {{ echo "rsh_agent: no host" >&2; exit 255; }}
host=${{1#*@}}; shift
case "$host" in
{chr(10).join(cases)}
  *) echo "rsh_agent: $host is not one of the test hosts {self.tag}" >&2; exit 255 ;;
esac
CLUSTERVM_HOSTNAME=$hn; export CLUSTERVM_HOSTNAME
[ $# -gt 0 ] || set -- "${{SHELL:-/bin/sh}}"
exec {enter} "${{SHELL:-/bin/sh}}" -c "$*"
"""

    # -- use -----------------------------------------------------------------------

    def hostfile(self, slots: int, path: str | os.PathLike) -> str:
        """Write an Open MPI hostfile (``ADDRESS slots=N`` per host); returns its path."""
        path = os.fspath(path)
        with open(path, "w") as f:
            f.write(f"# clustervm test hosts {self.tag}\n")
            for name in self.names:
                f.write(f"{name} slots={slots}\n")
        return path

    def mpiexec_args(self) -> list[str]:
        """Extra Open MPI mpiexec arguments for a job over these hosts (add --hostfile)."""
        return ["--prtemca", "plm_ssh_agent", self.rsh_agent,
                "--prtemca", "plm_ssh_no_tree_spawn", "1",
                "--prtemca", "oob_tcp_if_include", self.subnet,
                "--mca", "btl_tcp_if_include", self.subnet]

    def host_command(self, i: int, argv: Sequence[str]) -> list[str]:
        """ARGV made to run inside host I (its namespace, hostname, CLUSTERVM_HOSTNAME)."""
        cmd = ["ip", "netns", "exec", self.netns[i]]
        if self._uts:
            cmd += ["nsenter", f"--uts={self._uts_files[i]}", "--"]
        return cmd + ["env", f"CLUSTERVM_HOSTNAME={self.hostnames[i]}", *argv]

    def pids(self, i: int) -> list[int]:
        """Processes running inside host I (same answer as ``ip netns pids``)."""
        return _ns_pids(self.netns[i])

    def daemon_pids(self, i: int) -> list[int]:
        """Host I's Open MPI daemons (``prted``) and the agent shells above them."""
        pids = set(self.pids(i))
        daemons = set()
        for pid in pids:
            if _comm(pid) == "prted":
                p = pid
                while p in pids and p not in daemons:
                    daemons.add(p)
                    p = _ppid(p)
        return sorted(daemons)

    def rank_pids(self, i: int) -> list[int]:
        """Processes of host I started by its prted (the ranks and their children)."""
        pids = set(self.pids(i))
        daemons = {p for p in pids if _comm(p) == "prted"}
        out = []
        for pid in pids - daemons:
            p = _ppid(pid)
            while p in pids:
                if p in daemons:
                    out.append(pid)
                    break
                p = _ppid(p)
        return sorted(out)

    def kill_ranks(self, i: int, sig: int = signal.SIGKILL) -> list[int]:
        """Signal the rank processes of host I, leaving its prted alive."""
        return _signal_all(self.rank_pids(i), sig)

    def kill_host(self, i: int, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process of host I, its prted included (with SIGKILL: until none
        is left).  Returns the pids signalled."""
        return _kill_ns(self.netns[i], sig)

    def cut_link(self, i: int) -> None:
        """Pull host I's cable: ``ip link set <veth> down`` (root-side end; eth0 inside
        loses carrier, packets either way are dropped, TCP connections stay open)."""
        _ip(["link", "set", self.veths[i], "down"])

    def restore_link(self, i: int) -> None:
        """Plug host I's cable back in (``ip link set <veth> up``)."""
        _ip(["link", "set", self.veths[i], "up"])

    def wait_idle(self, timeout: float = 5.0) -> dict[int, list[int]]:
        """Wait until no process runs in any host; returns what is still there."""
        deadline = time.monotonic() + timeout
        while True:
            left = {i: p for i in range(self.k) if (p := self.pids(i))}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.02)

    def kill_all(self) -> dict[int, list[int]]:
        """SIGKILL every process of every host; returns the pids by host."""
        return {i: p for i in range(self.k) if (p := _kill_ns(self.netns[i]))}

    def start_job(self, cmd: Sequence[str], *, timeout: float,
                  env: Mapping[str, str] | None = None, cwd: str | None = None) -> "Job":
        """Start CMD (an mpiexec command line) in its own process group; see :class:`Job`.

        ENV is added to os.environ.  TIMEOUT counts from now; :meth:`Job.wait` enforces it.
        """
        job = Job(self, cmd, timeout=timeout, env=env, cwd=cwd)
        self._jobs.append(job)
        return job

    def run_job(self, cmd: Sequence[str], *, timeout: float,
                env: Mapping[str, str] | None = None, cwd: str | None = None,
                idle_timeout: float = 3.0) -> JobResult:
        """:meth:`start_job` + :meth:`Job.wait`."""
        return self.start_job(cmd, timeout=timeout, env=env, cwd=cwd).wait(
            idle_timeout=idle_timeout)


class Job:
    """An mpiexec running over :class:`TestHosts`, bounded by a timeout.

    Output goes to temporary files (no pipe can fill up and block the job).
    :meth:`wait` returns when mpiexec ends or the timeout passes; then it SIGKILLs
    mpiexec's process group, waits up to IDLE_TIMEOUT s for the hosts to be empty,
    reports what was still there in ``leftovers`` and kills it: nothing of the job
    outlives :meth:`wait`.
    """

    __test__ = False

    def __init__(self, hosts: TestHosts, cmd: Sequence[str], *, timeout: float,
                 env: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
        self.hosts = hosts
        self.cmd = list(cmd)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._session_base = procs.session_base(full_env)   # where mpiexec's session goes
        self._out = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self._err = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self.t0 = time.monotonic()
        self.started_at = time.time()  # wall clock, to compare with times the ranks report
        self.deadline = self.t0 + timeout
        self.proc = subprocess.Popen(self.cmd, stdout=self._out, stderr=self._err,
                                     stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
                                     start_new_session=True)
        self.result: JobResult | None = None

    def running(self) -> bool:
        return self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def output(self) -> tuple[str, str]:
        """stdout and stderr so far."""
        outs = []
        for f in (self._out, self._err):
            f.flush()
            f.seek(0)
            outs.append(f.read())
            f.seek(0, os.SEEK_END)
        return outs[0], outs[1]

    def _remove_hnp_dir(self) -> None:
        """mpiexec (prterun, same pid) ended: remove its session dir $TMPDIR/ompi.<pid>
        if it was killed and left it (a later mpiexec with that pid could not start)."""
        procs.remove_stale_session_dirs([self.proc.pid], self._session_base)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None, *, idle_timeout: float = 3.0) -> JobResult:
        """Wait for mpiexec to end, at most until the job's deadline (or TIMEOUT s from
        now if sooner); past that, end the job (``timed_out``).  Then clean up as the class
        says.  Idempotent."""
        if self.result is not None:
            return self.result
        deadline = self.deadline if timeout is None else min(self.deadline,
                                                              time.monotonic() + timeout)
        timed_out = False
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:
            self._kill_group()
            self.hosts.kill_all()
            self.proc.wait(timeout=30)
            raise
        elapsed = time.monotonic() - self.t0
        if timed_out:
            self._kill_group()
            self.hosts.kill_all()
            self.proc.wait(timeout=30)
        else:
            self._kill_group()  # mpiexec's own children outside the hosts, if any
        leftovers = self.hosts.wait_idle(idle_timeout)
        if leftovers:
            self.hosts.kill_all()
        if timed_out or leftovers:  # killed processes do not clean up after themselves
            _remove_mpi_leftovers(self.hosts.hostnames)
        self._remove_hnp_dir()
        out, err = self.output()
        self._out.close()
        self._err.close()
        self.result = JobResult(self.cmd, self.proc.returncode, out, err, elapsed, timed_out,
                                leftovers)
        return self.result
