"""The states and causes the coordinator core works with, as enums (never strings)."""
from __future__ import annotations

from enum import Enum


class NodeState(str, Enum):
    """Life of a worker rank, as the coordinator sees it. A ``str`` enum: observers
    written against the old string states (``n.state == "dead"``) keep working; the
    core itself compares by identity."""
    STARTING = "starting"   # started, no hello yet
    ALIVE = "alive"         # takes work
    SPARE = "spare"         # up, kept idle until a node is lost
    DEAD = "dead"           # lost; never trusted again
    LEFT = "left"           # said goodbye at shutdown


class TaskState(str, Enum):
    """Life of a task (a ``str`` enum, as NodeState)."""
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


#: States a task never leaves.
FINAL = frozenset({TaskState.DONE, TaskState.ERROR, TaskState.CANCELLED})


class TaskKind(Enum):
    SHORT = "task"          # submit/map: re-run from the start (or its checkpoint) if lost
    SPAWNED = "spawned"     # spawn: long-lived, restarted from its checkpoint elsewhere


class LossCause(Enum):
    """Why a node is declared lost. ``hung`` causes mean the process may still run:
    it is killed and whatever it still sends is ignored."""
    ULFM = "MPI (ULFM)"                               # the MPI library reported it failed
    SEND_FAILED = "MPI (send failed)"                 # a post to it failed
    HEARTBEAT = "heartbeat"                           # silent longer than heartbeat_s
    NO_HELLO = "no hello at start"                    # never said hello after the start
    NO_HELLO_SPAWN = "no hello after MPI_Comm_spawn"  # a spawned node never said hello

    @property
    def hung(self) -> bool:
        """Was it declared lost on a deadline (it may still run): kill it, never trust it."""
        return self in _HUNG

    def describe(self, detail: str = "") -> str:
        """Words for the log and the end-of-job report, e.g. "heartbeat (2.3 s silent)"."""
        return f"{self.value} ({detail})" if detail else self.value


_HUNG = frozenset({LossCause.HEARTBEAT, LossCause.NO_HELLO, LossCause.NO_HELLO_SPAWN})
