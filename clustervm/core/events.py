"""What the coordinator core is told: one small frozen dataclass per stimulus.

Every event that comes from a node carries the time it was received (``now``,
seconds on the shell's monotonic clock): the core never reads a clock. Values
(task results, error payloads) pass through the core unopened.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .enums import LossCause


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of the core's events."""


@dataclass(frozen=True, slots=True)
class StartBegun(Event):
    """The shell starts waiting for the nodes' hellos; a node silent for ``timeout``
    seconds after the start is lost (NO_HELLO)."""
    timeout: float


@dataclass(frozen=True, slots=True)
class StartGraceOver(Event):
    """The wait for the first hellos is over (``wait_for_nodes``): nodes still starting
    are lost or waited for, and ``spares`` of the alive ones become spares."""
    now: float
    timeout: float
    spares: int = 0


@dataclass(frozen=True, slots=True)
class NodeHello(Event):
    """Node ``rank`` said hello (it is up)."""
    rank: int
    host: str
    pid: int
    now: float


@dataclass(frozen=True, slots=True)
class NodeBye(Event):
    """Node ``rank`` is leaving (it answers a shutdown)."""
    rank: int
    now: float


@dataclass(frozen=True, slots=True)
class NodeLost(Event):
    """Node ``rank`` is gone, for ``cause`` (``detail``: words for the log)."""
    rank: int
    cause: LossCause
    now: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HeartbeatHeard(Event):
    """Something (a heartbeat or any message) came from node ``rank`` at ``now``."""
    rank: int
    now: float


@dataclass(frozen=True, slots=True)
class Tick(Event):
    """Time passes: check the heartbeat and hello deadlines at ``now``.

    ``heard``: last-heard times the shell tracked itself (rank -> time), merged first.
    ``stalled``: the coordinator's own process was stalled (its loop did not run for
    a while): nodes are not blamed, every last-heard time becomes ``now``."""
    now: float
    heard: Any = None
    stalled: bool = False


@dataclass(frozen=True, slots=True)
class TaskSubmitted(Event):
    """Short task ``tid`` was submitted by task ``parent``.

    ``where``: the ranks it may run on (None: any). ``digest``: a checksum of its
    function and arguments (the journal reuses a finished task only if it matches)."""
    tid: int
    parent: int
    now: float
    where: frozenset[int] | None = None
    digest: int = 0


@dataclass(frozen=True, slots=True)
class TaskSpawned(Event):
    """Spawned (long-lived) task ``tid`` was started by task ``parent``."""
    tid: int
    parent: int
    now: float
    where: frozenset[int] | None = None
    replay: bool = True
    digest: int = 0


@dataclass(frozen=True, slots=True)
class TasksDone(Event):
    """Node ``rank`` finished short tasks: ``results`` is ``[(tid, ok, value), ...]``."""
    rank: int
    results: Any
    now: float


@dataclass(frozen=True, slots=True)
class SpawnedExited(Event):
    """Incarnation ``inc`` of spawned task ``tid`` ended on node ``rank``."""
    rank: int
    tid: int
    inc: int
    ok: bool
    value: Any
    now: float


@dataclass(frozen=True, slots=True)
class TaskCancelled(Event):
    """Cancel short task ``tid``: only if no node has it yet, or any (``running``)."""
    tid: int
    running: bool = False


@dataclass(frozen=True, slots=True)
class TaskKilled(Event):
    """vm.kill: end task ``tid`` now; a spawned one ends with error ``value`` (packed)."""
    tid: int
    value: Any


@dataclass(frozen=True, slots=True)
class CheckpointStored(Event):
    """Task ``tid`` (incarnation ``inc``, on node ``rank``) sent checkpoint ``seq``."""
    rank: int
    tid: int
    inc: int
    seq: int
    now: float


@dataclass(frozen=True, slots=True)
class JournalLoaded(Event):
    """Resume: the finished tasks of an earlier run, ``[(tid, digest, ok, value), ...]``."""
    entries: Any


@dataclass(frozen=True, slots=True)
class ReplacementStarted(Event):
    """A node process started with MPI_Comm_spawn got rank ``rank``; its hello is due."""
    rank: int
    host: str
    now: float


@dataclass(frozen=True, slots=True)
class ReplacementEnded(Event):
    """An attempt to start a replacement node is over (started or not)."""
    now: float


@dataclass(frozen=True, slots=True)
class SparesWanted(Event):
    """vm.add_nodes: bring up to ``count`` spare nodes into service."""
    count: int


@dataclass(frozen=True, slots=True)
class ObserversChanged(Event):
    """Observers (trace, dashboard) are attached (``on``): emit Observe instructions."""
    on: bool


@dataclass(frozen=True, slots=True)
class ShutdownBegun(Event):
    """The job is ending: no more placement, re-queue or replacement."""
    now: float


# -- the VM-wide mailbox (PVM's pvm_putinfo / pvm_recvinfo / pvm_delinfo) ----------

@dataclass(frozen=True, slots=True)
class InfoPut(Event):
    """``put_info(name, value)``: store (or replace) an entry; answer ``reply``."""
    name: str
    value: Any
    reply: Any          # an opaque answer handle of the shell, given back in Answer


@dataclass(frozen=True, slots=True)
class InfoGet(Event):
    """``get_info(name, wait)``: answer with the entry, or once it is put (``wait``)."""
    name: str
    wait: bool
    reply: Any


@dataclass(frozen=True, slots=True)
class InfoDeleted(Event):
    """``del_info(name)``: remove an entry; answer ``reply``."""
    name: str
    reply: Any


# -- PVM groups (clustervm.core.groups) --------------------------------------------

@dataclass(frozen=True, slots=True)
class GroupJoined(Event):
    """``join_group(name)`` by task ``tid``; answered with [instance, first round]."""
    name: str
    tid: int
    reply: Any


@dataclass(frozen=True, slots=True)
class GroupLeft(Event):
    """``leave_group(name)`` by task ``tid``."""
    name: str
    tid: int
    reply: Any


@dataclass(frozen=True, slots=True)
class GroupAsked(Event):
    """A question about group ``name``: ``what`` is "size", "tids", "tid" (of instance
    ``arg``) or "inst" (of task ``arg``)."""
    what: str
    name: str
    arg: Any
    reply: Any


@dataclass(frozen=True, slots=True)
class GroupCalled(Event):
    """Task ``tid``'s part of a collective call on hub group ``name`` (round ``round_no``)."""
    op: str
    name: str
    tid: int
    value: Any
    count: Any
    root: Any
    fn: Any
    round_no: int | None
    envelope: bool
    reply: Any


@dataclass(frozen=True, slots=True)
class FrozenShadows(Event):
    """A batch of a frozen group member's calls made on MPI (kept for failover)."""
    name: str
    tid: int
    entries: list


@dataclass(frozen=True, slots=True)
class MemberEnded(Event):
    """Task ``tid`` ended (``error``: the exception it ended with, or None): it leaves
    its groups."""
    tid: int
    error: BaseException | None
