"""clustervm: a PVM-style cluster virtual machine on MPI.

Write ``def main(vm): ...`` in ``app.py`` and start it with
``clustervm run -n 4 app.py`` (or ``mpiexec -n 4 python -m clustervm app.py``).
"""
from __future__ import annotations

from .current import context
from .errors import (CheckpointError, ClusterVMError, ConfigError, CorruptCheckpointError,
                     DeadTaskError, GroupError, HostfileError, NodeLostError, NoNodesError,
                     RemoteError, RemoteTraceback, UnknownTaskError, WireError)
from .events import NODE_ADDED, NODE_DOWN, TASK_EXIT
from .protocol import ANY, SYSTEM
from .requests import Request, testall, testany, waitall, waitany, waitsome
from .task import Message, TaskContext, TaskExit

__version__ = "0.1.0"

__all__ = [
    "ANY", "SYSTEM", "Request", "waitall", "waitany", "waitsome", "testall", "testany",
    "TASK_EXIT", "NODE_DOWN", "NODE_ADDED", "Message", "TaskContext", "TaskExit",
    "context", "run", "ClusterVMError", "CheckpointError", "ConfigError",
    "CorruptCheckpointError", "DeadTaskError", "GroupError", "HostfileError", "NodeLostError",
    "NoNodesError", "RemoteError", "RemoteTraceback", "UnknownTaskError", "WireError",
]


def run(main, argv=None):  # noqa: ANN001 - thin wrapper, documented in runtime.run
    """Run ``main(vm)`` as a clustervm job from a script started by mpiexec."""
    from .runtime import run as _run
    _run(main, argv)
