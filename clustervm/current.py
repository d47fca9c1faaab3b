"""The task running in this thread: ``clustervm.context()``."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .task import TaskContext

from .local import _tls   # noqa: F401 - current._tls: the shells set it


def context() -> "TaskContext":
    """The context of the task running in the calling thread.

    Short tasks (``vm.submit``/``vm.map``) take plain arguments and reach their
    context, to checkpoint or send messages, through this call; spawned tasks
    get it as their first argument.
    """
    ctx = _tls.ctx
    if ctx is not None:
        return ctx
    tid = _tls.tid
    if tid is None:
        raise RuntimeError("clustervm.context() was called outside a clustervm task; call it "
                           "inside a function run by vm.submit/vm.map/vm.spawn")
    ctx = _tls.site.make_context(tid, _tls.parent, _tls.state)
    _tls.ctx = ctx
    return ctx
