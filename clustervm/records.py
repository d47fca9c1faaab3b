"""What the coordinator's shell keeps of each task: what to run and whom to tell.

Where a task runs, its state, incarnation and attempts are the core's
(:class:`clustervm.core.Task`, one place); a :class:`TaskRecord` reads them
from there. Nodes are the core's :class:`clustervm.core.Node` (``NodeInfo``).
"""
from __future__ import annotations

from typing import Any, Callable

from .core import Node as NodeInfo
from .core import Task, TaskState, TaskView
from .futures import ClusterFuture

#: A task's kind: a short task (submit/map) or a spawned, long-lived one (spawn).
SHORT, SPAWNED = 0, 1
#: Answers a request: ``reply(ok, value)``.
Reply = Callable[[bool, Any], None]

__all__ = ["SHORT", "SPAWNED", "Reply", "NodeInfo", "TaskRecord"]


class TaskRecord:
    """One task of the VM as the shell knows it: its function, arguments and answerers."""
    __slots__ = ("tid", "kind", "parent", "fn", "args", "kwargs", "future", "reply", "joiners",
                 "digest", "siblings", "sched")

    def __init__(self, tid: int, kind: int, parent: int, fn: str, args: Any, kwargs: Any) -> None:
        self.tid = tid
        self.kind = kind
        self.parent = parent
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future: ClusterFuture | None = None
        self.reply: Reply | None = None
        self.joiners: list[Reply] = []
        self.digest = 0
        #: a spawned task's spawn call: (first tid, count); its siblings are consecutive tids
        self.siblings: tuple[int, int] | None = None
        self.sched: Task | None = None      # the core's record (None: never scheduled)

    # the scheduling state, read from the core
    @property
    def node(self) -> int | None:
        return self.sched.node if self.sched is not None else None

    @property
    def state(self) -> TaskState:
        return self.sched.state if self.sched is not None else TaskState.PENDING

    @property
    def inc(self) -> int:
        return self.sched.inc if self.sched is not None else 0

    @property
    def attempts(self) -> int:
        return self.sched.attempts if self.sched is not None else 0

    @property
    def replay(self) -> bool:
        return self.sched.replay if self.sched is not None else True

    @property
    def t_start(self) -> float:
        return self.sched.t_start if self.sched is not None else 0.0

    def view(self) -> TaskView:
        """This task as observers see it."""
        spawned = self.kind != SHORT
        return TaskView(self.tid, self.fn, spawned, self.inc if spawned else self.attempts,
                        self.t_start)

    @property
    def t_ckpt(self) -> float:
        return self.sched.t_ckpt if self.sched is not None else 0.0

    @property
    def where(self) -> set[int] | None:
        return self.sched.where if self.sched is not None else None
