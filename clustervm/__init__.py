"""clustervm: a PVM-style cluster virtual machine on MPI.

Write ``def main(vm): ...`` in ``app.py`` and start it with
``clustervm run -n 4 app.py`` (or ``mpiexec -n 4 python -m clustervm app.py``).
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .current import context
    from .errors import (CheckpointError, ClusterVMError, ConfigError, CorruptCheckpointError,
                         DeadTaskError, GroupError, HostfileError, InternalError, NodeLostError,
                         NoNodesError, RemoteError, RemoteTraceback, UnknownTaskError, WireError)
    from .events import NODE_ADDED, NODE_DOWN, TASK_EXIT
    from .protocol import ANY, SYSTEM
    from .requests import Request, testall, testany, waitall, waitany, waitsome
    from .task import Message, TaskContext, TaskExit

__version__ = "0.1.0"

__all__ = [
    "ANY", "SYSTEM", "Request", "waitall", "waitany", "waitsome", "testall", "testany",
    "TASK_EXIT", "NODE_DOWN", "NODE_ADDED", "Message", "TaskContext", "TaskExit",
    "context", "run", "ClusterVMError", "CheckpointError", "ConfigError",
    "CorruptCheckpointError", "DeadTaskError", "GroupError", "HostfileError", "InternalError",
    "NodeLostError", "NoNodesError", "RemoteError", "RemoteTraceback", "UnknownTaskError",
    "WireError",
]

#: Where each public name lives. They are imported when first asked for (PEP 562):
#: ``clustervm run`` and every rank's ``python -m clustervm`` start by importing this
#: package, and the launcher needs none of the task API (measured: 20-40 ms of each
#: process's start when the modules are compiled, not read from __pycache__).
_HOME = {
    "context": "current",
    **dict.fromkeys(("CheckpointError", "ClusterVMError", "ConfigError", "CorruptCheckpointError",
                     "DeadTaskError", "GroupError", "HostfileError", "InternalError",
                     "NodeLostError", "NoNodesError", "RemoteError", "RemoteTraceback", "UnknownTaskError",
                     "WireError"), "errors"),
    **dict.fromkeys(("NODE_ADDED", "NODE_DOWN", "TASK_EXIT"), "events"),
    **dict.fromkeys(("ANY", "SYSTEM"), "protocol"),
    **dict.fromkeys(("Request", "testall", "testany", "waitall", "waitany", "waitsome"),
                    "requests"),
    **dict.fromkeys(("Message", "TaskContext", "TaskExit"), "task"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value        # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def run(main, argv=None):  # noqa: ANN001 - thin wrapper, documented in runtime.run
    """Run ``main(vm)`` as a clustervm job from a script started by mpiexec."""
    from .runtime import run as _run
    _run(main, argv)
