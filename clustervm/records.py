"""What the coordinator knows of each worker node and each task."""
from __future__ import annotations

from typing import Any, Callable

from .futures import ClusterFuture

#: A task's kind: a short task (submit/map) or a spawned, long-lived one (spawn).
SHORT, SPAWNED = 0, 1
#: Answers a request: ``reply(ok, value)``.
Reply = Callable[[bool, Any], None]


class NodeInfo:
    """What the coordinator knows of one worker rank."""
    __slots__ = ("rank", "host", "pid", "state", "inflight", "spawned", "done", "load",
                 "how_lost", "lost_at", "joined_at", "last_done")

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.host = "?"
        self.pid = 0
        self.state = "starting"        # starting, alive, spare, dead, left
        self.inflight: dict[int, TaskRecord] = {}
        self.spawned: set[int] = set()
        self.done = 0
        self.load = 0
        self.how_lost = ""
        self.lost_at = 0.0
        self.joined_at = 0.0
        self.last_done = 0.0

    def as_dict(self) -> dict:
        return {"rank": self.rank, "host": self.host, "pid": self.pid, "state": self.state,
                "running": len(self.inflight) + len(self.spawned), "done": self.done}


class TaskRecord:
    """One task of the VM, short or spawned."""
    __slots__ = ("tid", "kind", "parent", "fn", "args", "kwargs", "node", "state", "future",
                 "reply", "attempts", "where", "inc", "replay", "t_start", "t_ckpt", "joiners",
                 "digest", "siblings")

    def __init__(self, tid: int, kind: int, parent: int, fn: str, args: Any, kwargs: Any) -> None:
        self.tid = tid
        self.kind = kind
        self.parent = parent
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.node: int | None = None
        self.state = "pending"
        self.future: ClusterFuture | None = None
        self.reply: Reply | None = None
        self.attempts = 0
        self.where: set[int] | None = None
        self.inc = 0
        self.replay = True
        self.t_start = 0.0
        self.t_ckpt = 0.0
        self.joiners: list[Reply] = []
        self.digest = 0
        #: a spawned task's spawn call: (first tid, count); its siblings are consecutive tids
        self.siblings: tuple[int, int] | None = None
