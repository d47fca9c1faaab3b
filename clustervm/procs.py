"""This host's processes as /proc shows them: state, children, sessions, and the
rank processes of a job found by their environment.

Linux only; elsewhere every query answers "nothing" ([], "", None).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping


def hostname() -> str:
    """This host's name: $CLUSTERVM_HOSTNAME if set, else the system's (what
    ``socket.gethostname()`` says, without loading the socket module on every rank)."""
    name = os.environ.get("CLUSTERVM_HOSTNAME")
    if name:
        return name
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket
    return socket.gethostname()


def boot_id() -> str:
    """This machine's boot id (Linux: a new one each boot), or "" where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def state(pid: int) -> str:
    """The state letter of ``pid`` ("R", "S", "T" stopped, "Z" zombie...; "" if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3].decode()


def alive(pid: int) -> bool:
    """Is ``pid`` running (not gone, not a zombie)?"""
    return state(pid) not in ("", "Z")


def children(pid: int) -> list[int]:
    """Child pids of ``pid``."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def _pids() -> list[int]:
    try:
        return [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []


def session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    out = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        # state ppid pgrp session ...
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
            out.append(pid)
    return out


def with_env(tag: str) -> list[tuple[int, list[bytes]]]:
    """(pid, environment) of the processes whose environment holds ``tag`` (NAME=value)."""
    want = tag.encode()
    out = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want in env:
            out.append((pid, env))
    return out


def world_rank(env: list[bytes]) -> int | None:
    """The COMM_WORLD rank of a job's process from its environment (Open MPI, or MPICH's
    Hydra); None for a node started later with MPI_Comm_spawn, which Open MPI puts in a
    namespace of its own (not the job's first, "...@1")."""
    if any(item.startswith(b"PMIX_NAMESPACE=") and not item.endswith(b"@1") for item in env):
        return None
    for item in env:
        if item.startswith((b"OMPI_COMM_WORLD_RANK=", b"PMI_RANK=")):
            return int(item.split(b"=", 1)[1])
    return None


def rank_pids(tag: str) -> dict[int, int]:
    """{COMM_WORLD rank: pid} of the rank processes whose environment holds ``tag``."""
    out = {}
    for pid, env in with_env(tag):
        rank = world_rank(env)
        if rank is not None:
            out[rank] = pid
    return out


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent ends (Linux prctl).

    A rank's parent is the MPI launcher's daemon (mpiexec itself on one host): when
    that is gone the job is over, and no rank may live on unattended. Returns False
    where this cannot be set (not Linux), or when the parent is already gone.
    """
    import ctypes
    parent = os.getppid()
    try:
        # the process's own symbols (libc's among them): no ctypes.util.find_library,
        # which runs `ldconfig -p` in a subprocess (every rank did, at start)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return os.getppid() == parent


def parent_death_setter(sig: int) -> Callable[[], None]:
    """A function for a child to call between fork and exec (``preexec_fn``) that makes
    the kernel send it ``sig`` when its parent ends (as :func:`die_with_parent`). libc is
    looked up here, in the parent: the forked child only makes the call (measured: the
    fork-to-exec wait of every job's start 1 ms shorter)."""
    import ctypes
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    args = (ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(int(sig)), ctypes.c_ulong(0),
            ctypes.c_ulong(0), ctypes.c_ulong(0))
    return lambda: prctl(*args)


SHM_DIR = "/dev/shm"
#: Shared-memory files MPI libraries make (Open MPI's sm BTL and PMIx, MPICH).
SHM_PREFIXES = ("sm_segment", "vader", "pmix", "ompi", "mpich_shm")


def shm_files() -> set[str]:
    """Names of the MPI shared-memory files in /dev/shm now."""
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIXES)}
    except OSError:
        return set()


def mapped_shm(but: int | None = None) -> set[str]:
    """/dev/shm paths some live process (other than ``but``) has mapped (a running
    job's: never removed)."""
    used: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == but:
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find(SHM_DIR + "/")
                    if i >= 0:
                        used.add(line[i:].strip().removesuffix(" (deleted)"))
        except OSError:
            continue
    return used


def remove_stale_shm(before: set[str], ours: bool = False) -> list[str]:
    """Remove the MPI shared-memory files made since ``before`` that no live process maps:
    what a killed job leaves behind (16 MiB each, DESIGN.md); with ``ours``, also those
    this process maps (it is leaving: the mapping lasts until it exits). Returns the
    names removed."""
    new = shm_files() - before
    if not new:
        return []
    in_use = mapped_shm(but=os.getpid() if ours else None)
    removed = []
    for name in sorted(new):
        path = os.path.join(SHM_DIR, name)
        if path in in_use:
            continue
        try:
            os.unlink(path)
            removed.append(name)
        except OSError:
            pass
    return removed


#: Open MPI's mpiexec (prterun) keeps its session in ``<session base>/ompi.<its pid>``.
SESSION_PREFIX = "ompi."


def session_base(env: Mapping[str, str] | None = None) -> str:
    """Where Open MPI puts session directories for a process with environment ``env``
    (default ours): $TMPDIR, else $TEMP, else $TMP, else /tmp (as Open MPI chooses; not
    ``tempfile.gettempdir()``, which a program may have changed for itself)."""
    env = os.environ if env is None else env
    return env.get("TMPDIR") or env.get("TEMP") or env.get("TMP") or "/tmp"


def session_dirs(base: str | None = None) -> dict[int, str]:
    """{pid: path} of the mpiexec session directories in ``base`` (default: ours)."""
    base = base or session_base()
    try:
        names = os.listdir(base)
    except OSError:
        return {}
    return {int(n[len(SESSION_PREFIX):]): os.path.join(base, n) for n in names
            if n.startswith(SESSION_PREFIX) and n[len(SESSION_PREFIX):].isdigit()}


def remove_stale_session_dirs(pids: Iterable[int] | None = None,
                              base: str | None = None) -> list[str]:
    """Remove the session directories of mpiexecs that are gone (``pids``: only theirs;
    else every one of ours, that is, owned by this user).

    A SIGKILLed mpiexec whose ranks were killed too leaves its directory behind; a
    later mpiexec that gets the same pid (pid_max is 32768 on many hosts) finds it and
    exits at once with status 213, "The PMIx server's listener thread failed to
    start". Returns the paths removed."""
    wanted = None if pids is None else set(pids)
    return _remove_dead([(pid, path) for pid, path in session_dirs(base).items()
                         if wanted is None or pid in wanted], owned_only=wanted is None)


def remove_stale_pid_dirs(prefix: str, base: str) -> list[str]:
    """Remove the directories ``base/<prefix><pid>-<random>`` (``tempfile.mkdtemp``'s
    random part has no "-") of ours whose process ``pid`` is gone: a SIGKILLed launcher
    cannot remove its own. Returns the paths removed."""
    try:
        names = os.listdir(base)
    except OSError:
        return []
    found = []
    for name in names:
        rest = name[len(prefix):].split("-") if name.startswith(prefix) else ()
        if len(rest) == 2 and rest[0].isdigit():
            found.append((int(rest[0]), os.path.join(base, name)))
    return _remove_dead(found, owned_only=True)


def new_pid_dir(prefix: str, base: str) -> str:
    """A new directory ``base/<prefix><host>-<our pid>-<random>``, once those of ours
    whose process is gone are removed (:func:`remove_stale_pid_dirs`; the host name
    keeps apart containers that share ``base``, not pids). Raises OSError."""
    prefix = f"{prefix}{os.uname().nodename}-"
    remove_stale_pid_dirs(prefix, base)
    import tempfile
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base)


def _remove_dead(found: Iterable[tuple[int, str]], owned_only: bool) -> list[str]:
    """Remove each directory of ``found`` (pid, path) whose process is gone (with
    ``owned_only``, only if this user owns it); the paths removed."""
    removed = []
    for pid, path in found:
        if alive(pid) or (owned_only and not _owned(path)):
            continue
        import shutil   # here: 3 ms of every rank's start otherwise (it imports lzma)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _owned(path: str) -> bool:
    try:
        return os.stat(path).st_uid == os.getuid()
    except OSError:
        return False
