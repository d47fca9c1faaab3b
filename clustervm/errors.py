"""Exceptions raised by clustervm. Every message names the problem and the fix."""
from __future__ import annotations


class ClusterVMError(Exception):
    """Base class of every clustervm error."""


class WireError(ClusterVMError, TypeError):
    """An object cannot be sent: its type is not in the wire format."""


class HostfileError(ClusterVMError, ValueError):
    """A hostfile is malformed; the message gives file, line and reason."""


class ConfigError(ClusterVMError, ValueError):
    """A CLUSTERVM_* variable or a command-line option has a bad value."""


class UnknownTaskError(ClusterVMError, LookupError):
    """A tid names no task of this VM (never existed, or already ended)."""


class DeadTaskError(ClusterVMError):
    """A message was sent to a task that has ended and will not come back."""


class NodeLostError(ClusterVMError):
    """A node died and what ran there could not be recovered."""


class NoNodesError(NodeLostError):
    """Every worker node is gone; the job cannot go on."""


class InternalError(ClusterVMError):
    """clustervm itself failed (a bug): the job cannot go on exactly, so it ends."""


class CheckpointError(ClusterVMError):
    """A checkpoint could not be written or read."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file failed its checksum or was truncated."""


class GroupError(ClusterVMError):
    """A group operation cannot complete (e.g. a member was lost)."""


class Thawed(GroupError):
    """A frozen group that survives lost a member: the call is retried on the hub
    (raised by clustervm/fastgroup.py, caught by the task's collective call)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised on another node (set as __cause__)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(ClusterVMError):
    """A task raised an exception whose type cannot be rebuilt here."""
