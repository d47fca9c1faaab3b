"""The coordinator's scheduling and failover logic as an I/O-free state machine.

``Core.handle(*events) -> list[Instruction]``: events (a node said hello, tasks
are done, a node is lost, time passed) go in, instructions (send these tasks to
that node, kill that process, resolve that future, write that journal record)
come out. Nothing here calls MPI, threads, sockets, the clock, ``os.kill`` or
the disk; the coordinator process is the shell that carries the instructions
out, and ``benchmarks/simulate.py`` drives the same core with simulated nodes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

# Loaded on first use (PEP 562): a node imports only core.node, the launcher only
# core.view; the coordinator's state and its event and instruction classes cost
# tens of milliseconds to import, on every rank of a job that starts.
_WHERE = {"Core": "state", "Node": "state", "Task": "state", "replay_journal": "state",
          "cannot_go_back": "state", "ended_after": "state",
          "SPAWN_HELLO_S": "state", "FINAL": "enums", "LossCause": "enums",
          "NodeState": "enums", "TaskKind": "enums", "TaskState": "enums",
          "NodeView": "view", "TaskView": "view", "Traffic": "view", "ViewSource": "view",
          "VMView": "view"}

__all__ = ["Core", "Node", "Task", "NodeState", "TaskState", "TaskKind", "LossCause", "FINAL",
           "SPAWN_HELLO_S", "events", "instructions", "replay_journal", "cannot_go_back",
           "ended_after", "NodeView", "TaskView", "Traffic", "ViewSource", "VMView"]

if TYPE_CHECKING:
    from . import events, instructions
    from .enums import FINAL, LossCause, NodeState, TaskKind, TaskState
    from .state import (SPAWN_HELLO_S, Core, Node, Task, cannot_go_back, ended_after,
                        replay_journal)
    from .view import NodeView, TaskView, Traffic, ViewSource, VMView


def __getattr__(name: str) -> object:
    if name not in _WHERE and name not in ("events", "instructions"):
        # `from .core import node` asks here first: no loading for a submodule's name
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # importing a submodule binds it in this package's globals (no `from . import x`
    # here: it would ask this function for x first)
    from .enums import FINAL   # noqa: F401
    from .events import Event   # noqa: F401
    from .instructions import Instruction   # noqa: F401
    from .state import Core   # noqa: F401
    from .view import VMView   # noqa: F401
    g = globals()
    if name in ("events", "instructions"):
        return g[name]
    value = g[name] = getattr(g[_WHERE[name]], name)
    return value
