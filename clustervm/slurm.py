"""The Slurm allocation a job runs in, from Slurm's variables alone.

Inside ``sbatch``, ``salloc`` or ``srun`` Slurm describes the allocation in the
environment; this module reads it without running ``scontrol`` (which need not be
installed where the job runs)::

    SLURM_JOB_NODELIST=node[01-03,7],gpu5     node01 node02 node03 node07 gpu5
    SLURM_TASKS_PER_NODE=2(x3),1,1            2 2 2 1 1 tasks on them, in that order

:func:`expand_nodelist` and :func:`expand_counts` are the two grammars;
:func:`allocation` puts them together (``None`` outside Slurm) and
:func:`direct_launch_error` says what is wrong when ``srun`` started the ranks
without a PMI for MPI to use. ``python -m clustervm.slurm`` prints the allocation
as an Open MPI hostfile.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from typing import Mapping

from .errors import ConfigError
from .hostfile import Host, hostfile_lines, write_temp_hostfile

__all__ = ["Allocation", "SlurmError", "allocation", "direct_launch_error", "expand_counts",
           "expand_nodelist", "write_hostfile"]

log = logging.getLogger(__name__)

#: Variables naming the nodes, the first one set wins (SLURM_NODELIST: Slurm < 20).
NODELIST_VARS = ("SLURM_JOB_NODELIST", "SLURM_NODELIST")
#: Variables giving tasks per node, the first one set wins (CPUs when no task count).
COUNTS_VARS = ("SLURM_TASKS_PER_NODE", "SLURM_JOB_CPUS_PER_NODE")
#: More hosts than this in one nodelist is taken for a typo (node[1-100000000]).
MAX_HOSTS = 1_000_000

_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]*\Z")
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?\Z")
_COUNT = re.compile(r"([0-9]+)(?:\(x([0-9]+)\))?\Z")


class SlurmError(ConfigError):
    """Slurm's variables cannot be read; the message names the variable and the fix."""


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The nodes of a Slurm job and the tasks Slurm gives each."""

    job_id: str
    #: In Slurm's order: the first node runs the batch script.
    hosts: tuple[Host, ...]
    #: SLURM_NTASKS if set (``-n``), else the sum of the tasks per node.
    ntasks: int

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def slots(self) -> int:
        """Tasks over every node (what ``clustervm run`` starts without ``-n``)."""
        return sum(h.slots for h in self.hosts)


# ------------------------------------------------------------------ grammar

def _split_top(text: str, var: str) -> list[str]:
    """Split at the commas outside brackets; check the brackets pair up."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            if depth:
                raise SlurmError(f"{var}={text!r}: '[' inside brackets at position {i + 1}; "
                                 f"brackets do not nest (write e.g. node[1-3,5])")
            depth = 1
        elif c == "]":
            if not depth:
                raise SlurmError(f"{var}={text!r}: ']' without '[' at position {i + 1}")
            depth = 0
        elif c == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SlurmError(f"{var}={text!r}: '[' is never closed; close it with ']'")
    parts.append(text[start:])
    return parts


def _expand_ranges(body: str, text: str, var: str) -> list[str]:
    """``01-03,7`` -> ['01', '02', '03', '7'] (zero padding kept, as Slurm does)."""
    out: list[str] = []
    for item in body.split(","):
        m = _RANGE.match(item.strip())
        if not m:
            raise SlurmError(f"{var}={text!r}: {item!r} in [{body}] is not a number or a "
                             f"range lo-hi of numbers; write e.g. node[01-03,7]")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise SlurmError(f"{var}={text!r}: range {item!r} goes down; write it as "
                             f"{hi}-{lo}")
        if int(hi) - int(lo) >= MAX_HOSTS:
            raise SlurmError(f"{var}={text!r}: range {item!r} has more than {MAX_HOSTS} "
                             f"hosts; is it a typo?")
        width = len(lo)
        out.extend(str(k).zfill(width) for k in range(int(lo), int(hi) + 1))
    return out


def _expand_one(word: str, text: str, var: str) -> list[str]:
    """One comma-free word, which may hold several ``[...]`` (each multiplies the names)."""
    names = [""]
    pos = 0
    for m in re.finditer(r"\[([^\]]*)\]", word):
        names = [n + word[pos:m.start()] for n in names]
        suffixes = _expand_ranges(m.group(1), text, var)
        if len(names) * len(suffixes) > MAX_HOSTS:
            raise SlurmError(f"{var}={text!r}: more than {MAX_HOSTS} hosts; is it a typo?")
        names = [n + s for n in names for s in suffixes]
        pos = m.end()
    names = [n + word[pos:] for n in names]
    for n in names:
        if not n or not _NAME_CHARS.match(n):
            raise SlurmError(f"{var}={text!r}: {n!r} is not a host name (letters, digits, "
                             f"'.', '-', '_'); is the variable set by Slurm?")
    return names


def expand_nodelist(text: str, var: str = "SLURM_JOB_NODELIST") -> list[str]:
    """Slurm's hostlist expression as host names, in order: ``n[1-2],g5`` -> n1 n2 g5.

    Ranges keep the zero padding of their low end (``[08-10]``: 08 09 10); several
    bracket groups in one name give every combination (``r[1-2]n[1-2]``: r1n1 r1n2
    r2n1 r2n2). A host named twice is kept once. ``var`` names the variable in errors.
    """
    text = text.strip()
    if not text:
        raise SlurmError(f"{var} is empty; it should name the job's nodes, e.g. node[01-04]")
    names: list[str] = []
    for word in _split_top(text, var):
        if not word.strip():
            raise SlurmError(f"{var}={text!r}: empty name between commas; remove the extra "
                             f"comma")
        names.extend(_expand_one(word.strip(), text, var))
        if len(names) > MAX_HOSTS:
            raise SlurmError(f"{var}={text!r}: more than {MAX_HOSTS} hosts; is it a typo?")
    return list(dict.fromkeys(names))


def expand_counts(text: str, var: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Slurm's per-node counts as a list: ``2(x3),1`` -> [2, 2, 2, 1]."""
    text = text.strip()
    if not text:
        raise SlurmError(f"{var} is empty; it should give a count per node, e.g. 2(x3),1")
    out: list[int] = []
    for item in text.split(","):
        m = _COUNT.match(item.strip())
        if not m:
            raise SlurmError(f"{var}={text!r}: {item!r} is not N or N(xK); write e.g. "
                             f"4(x2),1")
        count, times = int(m.group(1)), int(m.group(2) or 1)
        if times < 1:
            raise SlurmError(f"{var}={text!r}: {item!r} repeats 0 times; K in N(xK) is at "
                             f"least 1")
        if len(out) + times > MAX_HOSTS:
            raise SlurmError(f"{var}={text!r}: more than {MAX_HOSTS} nodes; is it a typo?")
        out.extend([count] * times)
    return out


# --------------------------------------------------------------- allocation

def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        if env.get(name, "").strip():
            return name, env[name]
    return None


def allocation(env: Mapping[str, str] | None = None) -> Allocation | None:
    """The Slurm allocation described by ``env`` (default: ours), or None outside Slurm.

    Raises :class:`SlurmError` when the variables are there but do not make sense.
    """
    env = os.environ if env is None else env
    nodelist = _first(env, NODELIST_VARS)
    if nodelist is None:
        return None
    names = expand_nodelist(nodelist[1], nodelist[0])
    counts_var = _first(env, COUNTS_VARS)
    if counts_var is None:
        raise SlurmError(f"{nodelist[0]} is set but none of {', '.join(COUNTS_VARS)}: cannot "
                         f"tell how many tasks each node takes; give --hostfile or -n")
    counts = expand_counts(counts_var[1], counts_var[0])
    if len(counts) != len(names):
        raise SlurmError(f"{counts_var[0]}={counts_var[1]!r} gives {len(counts)} node(s) but "
                         f"{nodelist[0]}={nodelist[1]!r} names {len(names)}; are they from "
                         f"the same job? Give --hostfile instead")
    if any(c < 1 for c in counts):
        raise SlurmError(f"{counts_var[0]}={counts_var[1]!r}: a node with 0 tasks; give "
                         f"--hostfile instead")
    hosts = tuple(Host(name, count) for name, count in zip(names, counts))
    ntasks_text = env.get("SLURM_NTASKS", "").strip()
    ntasks = int(ntasks_text) if ntasks_text.isdigit() else sum(counts)
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "?"
    return Allocation(job_id, hosts, ntasks)


def write_hostfile(alloc: Allocation, syntax: str = "openmpi") -> str:
    """Write the allocation as a hostfile in a temp file named after its content; its path."""
    text = (f"# Slurm job {alloc.job_id}: {len(alloc.hosts)} node(s), written by clustervm\n"
            + hostfile_lines(alloc.hosts, syntax))
    return write_temp_hostfile(text, "clustervm-slurm", syntax)


#: Variables one of which a rank started by a process manager MPI can use has.
_PMI_VARS = ("PMIX_RANK", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK", "PMI_ID")


def direct_launch_error(env: Mapping[str, str] | None = None) -> str | None:
    """What is wrong, if srun started several tasks that have no PMI to make one job of.

    Then every task would start as an MPI job of its own (a singleton) and run the
    whole program once per task.
    """
    env = os.environ if env is None else env
    if "SLURM_STEP_ID" not in env or any(v in env for v in _PMI_VARS):
        return None
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    if not tasks.isdigit() or int(tasks) < 2:
        return None
    return (f"srun started {tasks} tasks without a PMI that MPI can use (srun --mpi="
            f"{env.get('SLURM_MPI_TYPE', 'none')}), so each would run the whole job alone; "
            f"run `clustervm run app.py` inside the allocation (sbatch/salloc) instead, or "
            f"`srun --mpi=pmix` if `srun --mpi=list` shows pmix")


def main() -> int:
    """``python -m clustervm.slurm``: print the allocation as an Open MPI hostfile."""
    try:
        alloc = allocation()
    except SlurmError as e:
        print(f"clustervm.slurm: error: {e}", file=sys.stderr)
        return 2
    if alloc is None:
        print(f"clustervm.slurm: error: not inside a Slurm allocation (no "
              f"{' or '.join(NODELIST_VARS)}); run this in an sbatch script or salloc",
              file=sys.stderr)
        return 2
    sys.stdout.write(hostfile_lines(alloc.hosts, "openmpi"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
