"""The coordinator's scheduling and failover logic as an I/O-free state machine.

``Core.handle(*events) -> list[Instruction]``: events (a node said hello, tasks
are done, a node is lost, time passed) go in, instructions (send these tasks to
that node, kill that process, resolve that future, write that journal record)
come out. Nothing here calls MPI, threads, sockets, the clock, ``os.kill`` or
the disk; the coordinator process is the shell that carries the instructions
out, and ``benchmarks/simulate.py`` drives the same core with simulated nodes.
"""
from __future__ import annotations

from . import events, instructions
from .enums import FINAL, LossCause, NodeState, TaskKind, TaskState
from .state import SPAWN_HELLO_S, Core, Node, Task, replay_journal
from .view import NodeView, TaskView, Traffic, ViewSource, VMView

__all__ = ["Core", "Node", "Task", "NodeState", "TaskState", "TaskKind", "LossCause", "FINAL",
           "SPAWN_HELLO_S", "events", "instructions", "replay_journal", "NodeView", "TaskView",
           "Traffic", "ViewSource", "VMView"]
