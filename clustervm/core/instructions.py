"""What the coordinator core asks its shell to do: one small frozen record (core.record) each.

The shell carries them out in order: send a message, kill a process, resolve a
future, write the journal, tell observers. None of them asks the core anything
back; the shell may read the core's view (``Core.nodes``, ``Core.tasks``).
"""
from __future__ import annotations

from typing import Any

from .enums import LossCause, TaskKind
from .record import record


@record
class Instruction:
    """Base class of the core's instructions."""


@record
class Dispatch(Instruction):
    """Send short tasks to node ``rank`` (one RUN message): ``items`` is
    ``((tid, attempts), ...)``; a task with attempts (or on resume) may have a checkpoint."""
    rank: int
    items: tuple


@record
class CancelQueued(Instruction):
    """Tell node ``rank`` to drop short task ``tid`` (CANCEL)."""
    rank: int
    tid: int


@record
class Cancelled(Instruction):
    """Short task ``tid`` is cancelled: its future says so."""
    tid: int


@record
class PlaceSpawned(Instruction):
    """Start incarnation ``inc`` of spawned task ``tid`` on node ``rank`` (SPAWN).

    ``restart``: it ran before (load its checkpoint). ``tell``: the ranks to send its
    new location to (LOC), every alive node (so that no task's first message to it has
    to ask where it is), the coordinator's own table included by the shell; the
    shell sends the LOC of every placement of one batch before any of its SPAWNs.
    ``source``: where its checkpoint ``seq`` is: 0, the coordinator's store (or none);
    ``rank`` itself, the node's own copy; another node, which is to send its copy.
    ``buddy``, ``to_store``: where its checkpoints go (as CommitCheckpoint says)."""
    rank: int
    tid: int
    inc: int
    restart: bool
    replay: bool
    tell: tuple
    source: int = 0
    seq: int = 0
    buddy: int = 0
    to_store: bool = True
    group: int = 0          # its checkpoint group (coordinated checkpoints), or 0


@record
class BroadcastLocation(Instruction):
    """Tell ranks ``tell`` where task ``tid`` lives now (``rank`` -1: it has ended);
    ``resend``: its senders send it again all they hold (a checkpoint group's member
    going back: it drops what its checkpoint had)."""
    tid: int
    rank: int
    inc: int
    replay: bool
    tell: tuple
    resend: bool = False


@record
class TellLocations(Instruction):
    """Node ``rank`` has joined the work: tell it where the spawned tasks run now
    (``items``: ``((tid, rank, inc, replay), ...)``), so that its tasks' first messages
    need not ask; every later placement and end reaches it as every alive node."""
    rank: int
    items: tuple


@record
class KillTask(Instruction):
    """Abort incarnation ``inc`` of spawned task ``tid`` on node ``rank`` (KILL)."""
    rank: int
    tid: int
    inc: int


@record
class NodeDown(Instruction):
    """Node ``rank`` is lost: log it, record NODE_DOWN, tell groups; mark it failed in the
    transport, or (``cause.hung``) declare it dead so what it still sends is dropped."""
    rank: int
    cause: LossCause
    detail: str
    was_spare: bool


@record
class Kill(Instruction):
    """Kill node ``rank``'s process (SIGKILL): it was lost on a deadline and may hang."""
    rank: int


@record
class NodeUp(Instruction):
    """Node ``rank`` joins the work: ``how`` is "spare" (promoted) or "spawn" (new)."""
    rank: int
    how: str


@record
class ResolveTask(Instruction):
    """Task ``tid`` is over, once: give ``value`` (or the error) to its future, reply,
    joiners. ``packed``: an error value is a packed remote exception (else the
    exception itself). ``reused``: it came from the journal, not from a node."""
    tid: int
    kind: TaskKind
    ok: bool
    value: Any
    packed: bool = True
    reused: bool = False


@record
class JournalDone(Instruction):
    """Append "task ``tid`` finished" to the journal (digest, ok, packed value; ``cut``:
    a checkpoint group member's, as E.SpawnedExited says it)."""
    tid: int
    digest: int
    ok: bool
    value: Any
    cut: int = -1


@record
class StoreCheckpoint(Instruction):
    """Keep checkpoint ``seq`` of task ``tid`` (incarnation ``inc``; the shell holds its
    bytes); with a journal, write it to the checkpoint directory behind the run
    (CheckpointWritten)."""
    tid: int
    inc: int
    seq: int


@record
class CommitCheckpoint(Instruction):
    """Every copy of checkpoint ``seq`` of task ``tid`` is held (by ``holders``: node
    ranks, 0 the coordinator's store): answer its node ``rank``, saying where the next
    one goes (``buddy``, 0: none; ``to_store``: send its bytes to the coordinator too),
    and, if ``forget``, let the senders of what it received forget those messages (with
    a journal a ForgetReceived says so once it is on disk)."""
    rank: int
    tid: int
    seq: int
    holders: tuple
    buddy: int
    to_store: bool
    forget: bool = True


@record
class ForgetReceived(Instruction):
    """Checkpoint ``seq`` of task ``tid`` is acknowledged and on disk: the senders of
    the messages it had received may forget them."""
    tid: int
    seq: int


@record
class CopyCheckpoint(Instruction):
    """Node ``source`` is to send its copy of acknowledged checkpoint ``seq`` of task
    ``tid`` to node ``to`` (FETCH), which says HELD: a copy lost with a node is made
    again, so a checkpoint is on two nodes again."""
    source: int
    tid: int
    seq: int
    to: int


@record
class GroupRolledBack(Instruction):
    """Checkpoint group ``group`` goes back to its checkpoint ``seq`` (a member was
    lost): its members' unanswered CUT calls are over."""
    group: int
    seq: int


@record
class DropCheckpoints(Instruction):
    """Task ``tid`` is over: its checkpoints may go, the copies ``holders`` hold too."""
    tid: int
    holders: tuple = ()


@record
class AskHeld(Instruction):
    """Ask nodes ``ranks`` which copies they hold of checkpoint group members ``tids``
    (query ``qid``; their answers come as E.HeldReported): a member was lost."""
    qid: int
    ranks: tuple
    tids: tuple


@record
class TellBuddy(Instruction):
    """Node ``rank``'s checkpoint copies go to node ``buddy`` from now on (0: none)."""
    rank: int
    buddy: int


@record
class DropCheckpointsAfter(Instruction):
    """Task ``tid``'s checkpoints newer than ``seq`` are of a course its checkpoint group
    rolled back from: the coordinator's store (memory and disk) keeps none of them."""
    tid: int
    seq: int


@record
class Observe(Instruction):
    """Tell observers: ``kind`` "start" (on ``rank``), "end" (``ok``) or "rerun"."""
    kind: str
    tid: int
    rank: int | None
    ok: bool | None = None


@record
class RequestReplacement(Instruction):
    """--replace-failed: start a node process in place of lost node ``lost``."""
    lost: int


@record
class Warn(Instruction):
    """Log a warning (the core has no logger that writes anywhere by itself)."""
    text: str


@record
class Fatal(Instruction):
    """The job cannot go on (every node is lost, say): ``error`` is raised to main."""
    error: BaseException


@record
class ThawGroup(Instruction):
    """Ask members ``tids`` of auto-frozen group ``name`` (on the nodes ``ranks``, in the
    same order) off MPI: the shell sends each node a THAW, and handles main's itself."""
    name: str
    tids: tuple
    ranks: tuple


@record
class Answer(Instruction):
    """Answer a request: call the shell's ``reply`` handle with ``(ok, value)`` (value is
    the result, or the exception when not ``ok``)."""
    reply: Any
    ok: bool
    value: Any
