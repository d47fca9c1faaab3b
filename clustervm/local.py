"""What runs in the calling thread: its rank's site and task, set by the shells (node,
coordinator, runtime) and read by ``clustervm.context()`` and ``vm.Shared.get``.
``clustervm.current._tls`` is this same object."""
from __future__ import annotations

import threading

_tls = threading.local()
