"""What the coordinator core is told: one small frozen record (core.record) per stimulus.

Every event that comes from a node carries the time it was received (``now``,
seconds on the shell's monotonic clock): the core never reads a clock. Values
(task results, error payloads) pass through the core unopened.
"""
from __future__ import annotations

from typing import Any

from .enums import LossCause
from .record import record


@record
class Event:
    """Base class of the core's events."""


@record
class StartBegun(Event):
    """The shell starts waiting for the nodes' hellos; a node silent for ``timeout``
    seconds after the start is lost (NO_HELLO)."""
    timeout: float


@record
class StartGraceOver(Event):
    """The wait for the first hellos is over (``wait_for_nodes``): nodes still starting
    are lost or waited for, and ``spares`` of the alive ones become spares."""
    now: float
    timeout: float
    spares: int = 0


@record
class NodeHello(Event):
    """Node ``rank`` said hello (it is up)."""
    rank: int
    host: str
    pid: int
    now: float


@record
class NodeBye(Event):
    """Node ``rank`` is leaving (it answers a shutdown)."""
    rank: int
    now: float


@record
class NodeLost(Event):
    """Node ``rank`` is gone, for ``cause`` (``detail``: words for the log)."""
    rank: int
    cause: LossCause
    now: float
    detail: str = ""


@record
class HeartbeatHeard(Event):
    """Something (a heartbeat or any message) came from node ``rank`` at ``now``."""
    rank: int
    now: float


@record
class Tick(Event):
    """Time passes: check the heartbeat and hello deadlines at ``now``.

    ``heard``: last-heard times the shell tracked itself (rank -> time), merged first.
    ``stalled``: the coordinator's own process was stalled (its loop did not run for
    a while): nodes are not blamed, every last-heard time becomes ``now``."""
    now: float
    heard: Any = None
    stalled: bool = False


@record
class TaskSubmitted(Event):
    """Short task ``tid`` was submitted by task ``parent``.

    ``where``: the ranks it may run on (None: any). ``digest``: a checksum of its
    function and arguments (the journal reuses a finished task only if it matches)."""
    tid: int
    parent: int
    now: float
    where: frozenset[int] | None = None
    digest: int = 0


@record
class TaskSpawned(Event):
    """Spawned (long-lived) task ``tid`` was started by task ``parent``."""
    tid: int
    parent: int
    now: float
    where: frozenset[int] | None = None
    replay: bool = True
    digest: int = 0
    #: its checkpoint group: the first tid of its spawn when spawned with
    #: checkpoint="group" (coordinated checkpoints, rolled back together); 0: none
    group: int = 0


@record
class TasksDone(Event):
    """Node ``rank`` finished short tasks: ``results`` is ``[(tid, ok, value), ...]``."""
    rank: int
    results: Any
    now: float


@record
class SpawnedExited(Event):
    """Incarnation ``inc`` of spawned task ``tid`` ended on node ``rank``; ``cut``: for a
    checkpoint group member, its last checkpoint if it sent the other members nothing
    after it (0: none, and nothing sent), else -1; ``ckpts``: its node's checkpoints the
    coordinator was not told of, all so far (protocol.Exited)."""
    rank: int
    tid: int
    inc: int
    ok: bool
    value: Any
    now: float
    cut: int = -1
    ckpts: int = 0


@record
class TaskCancelled(Event):
    """Cancel short task ``tid``: only if no node has it yet, or any (``running``)."""
    tid: int
    running: bool = False


@record
class TaskKilled(Event):
    """vm.kill: end task ``tid`` now; a spawned one ends with error ``value`` (packed)."""
    tid: int
    value: Any


@record
class CheckpointStored(Event):
    """Task ``tid`` (incarnation ``inc``, on node ``rank``) sent checkpoint ``seq``.

    ``stored``: its bytes came to the coordinator, which keeps them (and, with a
    journal, writes them: a CheckpointWritten follows). ``buddy``: a node rank when the
    node keeps the checkpoint itself and sent a copy to that node (a CheckpointHeld
    follows from it); 0: no buddy copy. ``received``: the task had received messages
    (a restart from the start would not get them again)."""
    rank: int
    tid: int
    inc: int
    seq: int
    now: float
    buddy: int = 0
    stored: bool = True
    received: bool = True


@record
class CheckpointHeld(Event):
    """Node ``rank`` holds its copy of checkpoint ``seq`` of task ``tid`` (``inc``; -1:
    a copy of an acknowledged checkpoint, made again after a loss)."""
    rank: int
    tid: int
    inc: int
    seq: int
    now: float


@record
class HeldReported(Event):
    """Node ``rank`` answers query ``qid`` (I.AskHeld): the copies it holds, ``items``
    ``[(tid, seq, inc), ...]``."""
    rank: int
    qid: int
    items: Any
    now: float


@record
class CheckpointsUntold(Event):
    """Node ``rank`` says its tasks have taken ``count`` checkpoints the coordinator was
    not told of, all so far (HEARTBEAT, EXITED): the count of checkpoints written."""
    rank: int
    count: int


@record
class CheckpointWritten(Event):
    """The coordinator's write of checkpoint ``seq`` of task ``tid`` (incarnation
    ``inc``) to the checkpoint directory ended (``ok``; if not, the shell holds the
    error). A checkpoint superseded before its turn is not written (no event)."""
    tid: int
    inc: int
    seq: int
    ok: bool
    now: float


@record
class TaskRestored(Event):
    """Incarnation ``inc`` of task ``tid`` runs again on node ``rank`` from copy ``seq``
    (``ok``), or could not get that copy (not ``ok``)."""
    rank: int
    tid: int
    inc: int
    seq: int
    ok: bool
    now: float


@record
class JournalLoaded(Event):
    """Resume: the finished tasks of an earlier run, ``[(tid, digest, ok, value), ...]``."""
    entries: Any


@record
class ReplacementStarted(Event):
    """A node process started with MPI_Comm_spawn got rank ``rank``; its hello is due."""
    rank: int
    host: str
    now: float


@record
class ReplacementEnded(Event):
    """An attempt to start a replacement node is over (started or not)."""
    now: float


@record
class SparesWanted(Event):
    """vm.add_nodes: bring up to ``count`` spare nodes into service."""
    count: int


@record
class ObserversChanged(Event):
    """Observers (trace, dashboard) are attached (``on``): emit Observe instructions."""
    on: bool


@record
class JobFailed(Event):
    """The coordinator cannot go on (``error``, e.g. its own bug): every task ends with it."""
    error: BaseException


@record
class ShutdownBegun(Event):
    """The job is ending: no more placement, re-queue or replacement."""
    now: float


# -- the VM-wide mailbox (PVM's pvm_putinfo / pvm_recvinfo / pvm_delinfo) ----------

@record
class InfoPut(Event):
    """``put_info(name, value)``: store (or replace) an entry; answer ``reply``."""
    name: str
    value: Any
    reply: Any          # an opaque answer handle of the shell, given back in Answer


@record
class InfoGet(Event):
    """``get_info(name, wait)``: answer with the entry, or once it is put (``wait``)."""
    name: str
    wait: bool
    reply: Any


@record
class InfoDeleted(Event):
    """``del_info(name)``: remove an entry; answer ``reply``."""
    name: str
    reply: Any


# -- PVM groups (clustervm.core.groups) --------------------------------------------

@record
class GroupJoined(Event):
    """``join_group(name)`` by task ``tid``; answered with [instance, first round, whether
    this call made it a member]."""
    name: str
    tid: int
    reply: Any


@record
class GroupLeft(Event):
    """``leave_group(name)`` by task ``tid``."""
    name: str
    tid: int
    reply: Any


@record
class GroupAsked(Event):
    """A question about group ``name``: ``what`` is "size", "tids", "tid" (of instance
    ``arg``) or "inst" (of task ``arg``)."""
    what: str
    name: str
    arg: Any
    reply: Any


@record
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


@record
class FrozenShadows(Event):
    """A batch of a frozen group member's calls made on MPI (kept for failover); ``off``:
    its last, the member makes no more calls there (it goes on through the hub)."""
    name: str
    tid: int
    entries: list
    off: bool = False


@record
class MemberEnded(Event):
    """Task ``tid`` ended (``error``: the exception it ended with, or None): it leaves
    its groups."""
    tid: int
    error: BaseException | None
