"""This host's processes as /proc shows them: state, children, sessions, and the
rank processes of a job found by their environment.

Linux only; elsewhere every query answers "nothing" ([], "", None).
"""
from __future__ import annotations

import os


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
