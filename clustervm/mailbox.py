"""A task's mailbox and received messages: what both the sites (below task.py) and
the tasks use. ``Message``, ``Mailbox`` and ``TaskAborted`` are importable from
:mod:`clustervm.task` too."""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, NamedTuple, Protocol

from .protocol import ANY, SYSTEM

__all__ = ["Message", "TaskAborted", "Mailbox", "TaskLike", "message"]


class Message(NamedTuple):
    """A received message: who sent it, with which tag, and what.

    A notification (``vm.notify(..., tag=...)``) has ``source == clustervm.SYSTEM``
    and its event dict as ``data``; ``kind`` names the event (None for user messages).
    """
    source: int
    tag: int
    data: Any

    @property
    def kind(self) -> str | None:
        """TASK_EXIT / NODE_DOWN / NODE_ADDED for a notification, None for a user message."""
        if self.source == SYSTEM and isinstance(self.data, dict):
            return self.data.get("kind")
        return None


_message = tuple.__new__    # Message(source, tag, data) without the Python-level __new__


def message(source: int, tag: int, data: Any) -> Message:
    """``Message(source, tag, data)``, made without NamedTuple's Python-level ``__new__``."""
    return _message(Message, (source, tag, data))


class TaskAborted(BaseException):
    """Raised inside an incarnation that the coordinator has replaced or killed."""


class Mailbox:
    """Messages delivered to one task and not yet received, in arrival order."""

    __slots__ = ("items", "delivered", "lock", "incs", "group")

    def __init__(self) -> None:
        self.items: deque[tuple[int, int, Any, int, int]] = deque()  # src, tag, data, inc, seq
        self.delivered: dict[int, int] = {}      # src tid -> highest seq delivered
        self.incs: dict[int, int] = {}           # src tid -> newest incarnation delivered
        #: its task is in a checkpoint group (rolled back with the others on a loss)
        self.group = False
        self.lock = threading.Lock()

    def put(self, src: int, tag: int, data: Any, inc: int, seq: int) -> None:
        with self.lock:
            self.items.append((src, tag, data, inc, seq))
            self._counted(src, inc, seq)

    def count(self, src: int, inc: int, seq: int) -> bool:
        """Count task message ``seq`` of ``src`` as delivered and already taken by the
        task (Site.claimer), if nothing waits in the mailbox before it; else False (it
        is :meth:`put` in, behind them). The caller holds the site's lock, under which
        every task message is put (Site.deliver) and the mailbox is rewritten
        (Node._restore); only this task takes from it. A notification put meanwhile
        (without that lock) touches its own counters only."""
        if self.items:
            return False
        self._counted(src, inc, seq)
        return True

    def _counted(self, src: int, inc: int, seq: int) -> None:
        if seq > self.delivered.get(src, 0):
            self.delivered[src] = seq
        if inc > self.incs.get(src, -1):
            self.incs[src] = inc

    def take(self, source: int, tag: int, remove: bool = True) -> Message | None:
        items = self.items
        if not items:      # nothing to look at (a put meanwhile is seen next time)
            return None
        with self.lock:
            i = 0
            for item in items:
                # ANY never matches a notification (source SYSTEM): only SYSTEM does
                if (item[0] == source or source == ANY and item[0] >= 0) and \
                        (tag == ANY or item[1] == tag):
                    if remove:
                        if i:
                            del items[i]
                        else:
                            items.popleft()
                    return _message(Message, item[:3])
                i += 1
        return None

    def snapshot(self) -> list:
        with self.lock:
            return [list(i) for i in self.items]


class TaskLike(Protocol):
    """A :class:`clustervm.task.TaskContext` as the modules below task.py (site,
    requests, fastgroup) name it in their annotations: they cannot import task.py,
    which imports them."""
    tid: int
    inc: int
