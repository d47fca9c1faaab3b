"""What the dashboard and the status line show: task counts and JSON snapshots.

:class:`TaskCounter` is an observer of the coordinator (``source.observe``) that
counts task starts, ends and re-runs; it does a few integer additions per call
and nothing else. :func:`snapshot` turns one :class:`~clustervm.core.VMView`
(immutable, copied by the coordinator under its lock) and the counter's numbers
into the JSON the dashboard serves. Observers never read the coordinator's
live objects: only views (tests/test_layers.py keeps them below the shells).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from .core.view import TaskView, ViewSource, VMView


class TaskCounter:
    """Counts of task runs seen since it was attached (an observer of the coordinator)."""

    def __init__(self, t0: float = 0.0) -> None:
        self.t0 = t0
        self._lock = threading.Lock()     # callers copy while the scheduler counts
        #: the last failures and re-runs: {"kind": "TASK_FAILED"|"RERUN", "t", "tid", "fn", "rank"}
        self.notes: deque[dict] = deque(maxlen=200)
        self.notes_total = 0
        self.started = 0
        self.ok = 0
        self.failed = 0
        self.rerun = 0
        self.node_ok: dict[int, int] = {}
        self.node_failed: dict[int, int] = {}

    def __call__(self, kind: str, task: TaskView, rank: int | None, ok: bool | None) -> None:
        with self._lock:
            self._count(kind, task, rank, ok)

    def _count(self, kind: str, rec: TaskView, rank: int | None, ok: bool | None) -> None:
        if kind == "start":
            self.started += 1
        elif kind == "end":
            if ok:
                self.ok += 1
                if rank is not None:
                    self.node_ok[rank] = self.node_ok.get(rank, 0) + 1
            else:
                self.failed += 1
                if rank is not None:
                    self.node_failed[rank] = self.node_failed.get(rank, 0) + 1
                self._note("TASK_FAILED", rec, rank)
        elif kind == "rerun":
            self.rerun += 1
            self._note("RERUN", rec, rank)

    def copy(self) -> "Counts":
        """The counts now (a consistent copy)."""
        with self._lock:
            return Counts(self.ok, self.failed, self.rerun, dict(self.node_ok),
                          dict(self.node_failed), list(self.notes), self.notes_total)

    def _note(self, kind: str, rec: TaskView, rank: int | None) -> None:
        self.notes_total += 1
        self.notes.append({"kind": kind, "t": round(time.monotonic() - self.t0, 6),
                           "tid": rec.tid, "fn": rec.fn.rpartition(":")[2], "rank": rank})


@dataclass(frozen=True, slots=True)
class Counts:
    """A copy of a :class:`TaskCounter`'s numbers."""
    ok: int
    failed: int
    rerun: int
    node_ok: dict[int, int]
    node_failed: dict[int, int]
    notes: list[dict]
    notes_total: int


def counter_of(source: ViewSource) -> TaskCounter:
    """The coordinator's TaskCounter, attached on first use (shared by every viewer)."""
    found = source.observers_of(TaskCounter)
    if found:
        return found[0]
    counter = TaskCounter(source.t0)
    source.observe(counter)
    return counter


def snapshot(view: VMView, counts: Counts) -> dict:
    """A JSON-ready picture of the VM from one view and the task counts."""
    now, t0 = view.now, view.t0
    running = sum(n.running for n in view.nodes if n.state in ("alive", "spare", "starting"))
    node_rows = []
    for n in view.nodes:
        last = view.heard.get(n.rank)
        node_rows.append({
            "rank": n.rank, "host": n.host, "pid": n.pid, "state": n.state,
            "running": n.running, "spawned": n.spawned,
            "done": counts.node_ok.get(n.rank, 0), "failed": counts.node_failed.get(n.rank, 0),
            "heard_s": None if last is None else round(max(0.0, now - last), 3),
            "how_lost": n.how_lost, "lost_at": round(n.lost_at - t0, 3) if n.lost_at else None,
        })
    stats, traffic = view.stats, view.traffic
    ok, failed = counts.ok, counts.failed
    return {
        "t": round(now - t0, 3),
        "pid": view.pid,
        "host": view.host,
        "slots": view.slots,
        "cap": view.cap,
        "heartbeat_s": view.heartbeat_s,
        "nodes": node_rows,
        "alive": sum(1 for r in node_rows if r["state"] == "alive"),
        "tasks": {"pending": view.pending, "running": running, "done": ok, "failed": failed,
                  "rerun": max(counts.rerun, stats.get("rerun", 0)),
                  "total": ok + failed + view.live, "reused": stats.get("reused", 0)},
        "messages": {"in": traffic.msgs_in, "out": traffic.msgs_out,
                     "bytes_in": traffic.bytes_in, "bytes_out": traffic.bytes_out},
        "checkpoints": {"written": stats.get("ckpt_written", 0),
                        "restored": stats.get("ckpt_restored", 0),
                        "corrupt": view.ckpt_corrupt, "bytes": view.ckpt_bytes},
        "redone_s": round(stats.get("redone_s", 0.0), 3),
        "events": list(view.events),
        "events_total": view.events_total,
        "task_events": counts.notes,
        "task_events_total": counts.notes_total,
        "finished": view.stopping,
        "fatal": view.fatal,
    }
