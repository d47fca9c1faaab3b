"""What observers (dashboard, status line, tracer) see of the VM: immutable values.

The core gives the scheduling part (:meth:`clustervm.core.Core.node_views`); the
coordinator's shell adds what only it has (message counters, checkpoint store,
the event log) and hands out one :class:`VMView` per call of ``view()``. An
observer never reads the core's or the shell's live objects, so it cannot race
with the scheduler or depend on its internals; it is told of task runs as they
happen through ``observe(fn)`` with a :class:`TaskView`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence
from .record import record


@record
class NodeView:
    """One worker rank as the core knows it."""
    rank: int
    host: str
    pid: int
    state: str          # a NodeState value: starting, alive, spare, dead, left
    running: int        # tasks on it now (short in flight + spawned)
    spawned: int        # of which spawned tasks
    done: int           # short tasks it finished
    how_lost: str       # "" unless lost: the cause, e.g. "heartbeat (2.3 s silent)"
    lost_at: float      # time.monotonic() of the loss, 0.0 if not lost
    joined_at: float    # time.monotonic() of its hello, 0.0 before


@record
class TaskView:
    """The task an observer is told about (a run started, ended or was lost)."""
    tid: int
    fn: str             # "module:qualname"
    spawned: bool
    attempt: int        # incarnation of a spawned task, attempt of a short one
    t_start: float      # time.monotonic() of its dispatch


@record
class Traffic:
    """Messages and bytes through the coordinator's transport so far."""
    msgs_in: int = 0
    msgs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@record
class VMView:
    """The VM at one moment, copied under the coordinator's lock."""
    t0: float                       # time.monotonic() at the start of the job
    now: float                      # time.monotonic() when the view was taken
    host: str
    pid: int
    slots: int
    cap: int                        # tasks in flight per node (slots + prefetch)
    heartbeat_s: float
    nodes: tuple[NodeView, ...]
    pending: int                    # tasks queued, not yet on a node
    live: int                       # tasks submitted or spawned, not finished
    stats: Mapping[str, Any]        # the core's counters (rerun, ckpt_written, ...)
    events: tuple[dict, ...]        # the event log from ``events_from`` (at most max_events)
    events_total: int
    traffic: Traffic
    heard: Mapping[int, float]      # rank -> time.monotonic() it was last heard from
    ckpt_corrupt: int
    ckpt_bytes: int
    stopping: bool
    fatal: str | None


#: ``observer(kind, task, rank, ok)``: kind "start" (dispatched to node ``rank``), "end"
#: (``ok`` or not) or "rerun" (its node ``rank`` was lost). Called in the scheduler's
#: thread under its lock: record and return, never block.
Observer = Callable[[str, TaskView, "int | None", "bool | None"], None]


class ViewSource(Protocol):
    """What an observer holds: the coordinator, seen only through views."""
    t0: float

    def view(self, events_from: int = 0, max_events: int | None = 500) -> VMView:
        """The VM now (events from index ``events_from``, the last ``max_events`` of them)."""

    def traffic(self) -> Traffic:
        """Message counters now (cheap: no lock, no copy of the nodes)."""

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` of every task run from now on."""

    def observers_of(self, kind: type) -> Sequence[Any]:
        """The observers already attached that are instances of ``kind``."""
