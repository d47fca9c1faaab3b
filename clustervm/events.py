"""VM events (TASK_EXIT, NODE_DOWN, NODE_ADDED, ...): a log and subscriptions, as pvm_notify."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

TASK_EXIT = "TASK_EXIT"
NODE_DOWN = "NODE_DOWN"
NODE_ADDED = "NODE_ADDED"
KINDS = (TASK_EXIT, NODE_DOWN, NODE_ADDED)


class EventLog:
    """Everything that happened to the VM, with the time since the job started."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.events: list[dict] = []
        self._subs: list[tuple[frozenset, frozenset | None, Callable[[dict], None]]] = []

    def add(self, kind: str, **fields: Any) -> dict:
        event = {"kind": kind, "t": round(time.monotonic() - self.t0, 6), **fields}
        self.events.append(event)
        for kinds, tids, callback in list(self._subs):
            if kind in kinds and (tids is None or kind != TASK_EXIT or fields.get("tid") in tids):
                try:
                    callback(event)
                except Exception:   # noqa: BLE001 - a bad callback must not stop the VM
                    log.exception("notify callback for %s failed", kind)
        return event

    def subscribe(self, kinds: Iterable[str], tids: Iterable[int] | None,
                  callback: Callable[[dict], None]) -> None:
        kinds = frozenset(kinds)
        unknown = kinds - set(KINDS)
        if unknown:
            raise ValueError(f"unknown event kind(s) {sorted(unknown)}; use {list(KINDS)}")
        self._subs.append((kinds, None if tids is None else frozenset(tids), callback))
