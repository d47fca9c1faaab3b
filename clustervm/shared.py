"""``vm.scatter`` handles: an object stored once by the coordinator, fetched once per
node. Importable as :class:`clustervm.vm.Shared`; below the wire codec, which
carries a handle as its key (ext type 9)."""
from __future__ import annotations

import threading
from typing import Any

from .local import _tls

__all__ = ["Shared"]


class Shared:
    """A handle on an object stored once by the coordinator (``vm.scatter``).

    Pass the handle to many tasks; ``handle.get()`` inside a task fetches the
    object once per node and caches it there.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def get(self) -> Any:
        """The stored object (fetched once per node, then cached there)."""
        site = _tls.site
        if site is None:
            raise RuntimeError("Shared.get() works inside a task or main")
        cache = site.__dict__.setdefault("_shared", {})
        if self.key not in cache:
            with _fetching:       # tasks asking at once on one node: one fetch, not one each
                if self.key not in cache:
                    cache[self.key] = site.call("get_info", self.key, False)
        return cache[self.key]

    def __repr__(self) -> str:
        return f"Shared({self.key!r})"


_fetching = threading.Lock()
