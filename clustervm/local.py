"""What runs in the calling thread: its rank's site and task, set by the shells (node,
coordinator, runtime) and read by ``clustervm.context()`` and ``vm.Shared.get``.
``clustervm.current._tls`` is this same object."""
from __future__ import annotations

import threading
from typing import Any


class _Local(threading.local):
    """Per thread; every attribute has a class default, so a thread that never set one
    reads it without the AttributeError a ``getattr(..., default)`` would raise and
    catch (1.2 us, on every blocking receive of a spawned task)."""
    site: Any = None
    tid: int | None = None
    parent: int | None = None
    state: Any = None
    ctx: Any = None
    #: a worker thread of short tasks (a blocking wait there frees its slot)
    worker: bool = False


_tls = _Local()
