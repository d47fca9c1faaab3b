"""What the dashboard and the status line show: task counts and snapshots of the coordinator.

:class:`TaskCounter` is a coordinator observer (see ``Coordinator.observers``)
that counts task starts, ends and re-runs; it does a few integer additions per
call and nothing else. :func:`snapshot` copies what a viewer needs from the
coordinator under its lock (plain numbers and short strings only) so that
serializing and sending happen outside the lock.
"""
from __future__ import annotations

import os
import time
from collections import deque
from typing import Any, Protocol


class CoordinatorView(Protocol):
    """What the observers (dashboard, status line, tracer) read of the coordinator: its
    public state, copied under ``lock``, never its private attributes
    (tests/test_layers.py checks). The coordinator's shell provides it."""
    lock: Any                       # held while copying
    t0: float                       # time.monotonic() at the start of the job
    config: Any                     # clustervm.config.Config
    nodes: dict                     # rank -> clustervm.core.Node
    pending: Any                    # the queued tasks (len)
    tasks: dict                     # tid -> records.TaskRecord, not finished yet
    stats: dict                     # the core's counters (rerun, ckpt_written, ...)
    events: Any                     # events.EventLog
    observers: list                 # callables (kind, rec, rank, ok), called under lock
    transport: Any                  # .counters and .last_heard
    store: Any                      # the checkpoint store (.stats)
    stopping: bool
    fatal: BaseException | None


class TaskCounter:
    """Counts of task runs seen since it was attached (an observer of the coordinator)."""

    def __init__(self, t0: float = 0.0) -> None:
        self.t0 = t0
        #: the last failures and re-runs: {"kind": "TASK_FAILED"|"RERUN", "t", "tid", "fn", "rank"}
        self.notes: deque[dict] = deque(maxlen=200)
        self.notes_total = 0
        self.started = 0
        self.ok = 0
        self.failed = 0
        self.rerun = 0
        self.node_ok: dict[int, int] = {}
        self.node_failed: dict[int, int] = {}

    def __call__(self, kind: str, rec: Any, rank: int | None, ok: bool | None) -> None:
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

    def _note(self, kind: str, rec: Any, rank: int | None) -> None:
        self.notes_total += 1
        self.notes.append({"kind": kind, "t": round(time.monotonic() - self.t0, 6),
                           "tid": rec.tid, "fn": rec.fn.rpartition(":")[2], "rank": rank})


def counter_of(coord: CoordinatorView) -> TaskCounter:
    """The coordinator's TaskCounter, attached on first use (shared by every viewer)."""
    with coord.lock:
        for obs in coord.observers:
            if isinstance(obs, TaskCounter):
                return obs
        counter = TaskCounter(coord.t0)
        coord.observers.append(counter)
        return counter


def snapshot(coord: CoordinatorView, counter: TaskCounter, events_from: int = 0,
             max_events: int = 500) -> dict:
    """A JSON-ready picture of the VM now; takes ``coord.lock`` only to copy numbers."""
    now = time.monotonic()
    tr = coord.transport
    with coord.lock:
        nodes = []
        running = 0
        for n in coord.nodes.values():
            busy = len(n.inflight) + len(n.spawned)
            if n.state in ("alive", "spare", "starting"):
                running += busy
            nodes.append((n.rank, n.host, n.pid, n.state, busy, len(n.spawned), n.done,
                          n.how_lost, n.lost_at, n.joined_at))
        pending = len(coord.pending)
        live = len(coord.tasks)
        stats = dict(coord.stats)
        events = coord.events.events
        n_events = len(events)
        start = max(events_from, n_events - max_events)
        new_events = [dict(e) for e in events[start:n_events]]
        notes = list(counter.notes)
        notes_total = counter.notes_total
        ok, failed, rerun = counter.ok, counter.failed, counter.rerun
        node_ok, node_failed = dict(counter.node_ok), dict(counter.node_failed)
        stopping = coord.stopping
        fatal = None if coord.fatal is None else str(coord.fatal)
    heard = dict(tr.last_heard)
    c = tr.counters
    st = coord.store.stats
    t0 = coord.t0
    node_rows = []
    for rank, host, pid, state, busy, spawned, done, how, lost_at, joined_at in nodes:
        last = heard.get(rank)
        node_rows.append({
            "rank": rank, "host": host, "pid": pid, "state": state, "running": busy,
            "spawned": spawned, "done": node_ok.get(rank, 0), "failed": node_failed.get(rank, 0),
            "heard_s": None if last is None else round(max(0.0, now - last), 3),
            "how_lost": how, "lost_at": round(lost_at - t0, 3) if lost_at else None,
        })
    return {
        "t": round(now - t0, 3),
        "pid": os.getpid(),
        "host": getattr(coord, "host", "?"),
        "slots": coord.config.slots,
        "cap": getattr(coord, "cap", coord.config.slots),
        "heartbeat_s": coord.config.heartbeat_s,
        "nodes": node_rows,
        "alive": sum(1 for r in node_rows if r["state"] == "alive"),
        "tasks": {"pending": pending, "running": running, "done": ok, "failed": failed,
                  "rerun": max(rerun, stats.get("rerun", 0)), "total": ok + failed + live,
                  "reused": stats.get("reused", 0)},
        "messages": {"in": c.msgs_in, "out": c.msgs_out, "bytes_in": c.bytes_in,
                     "bytes_out": c.bytes_out},
        "checkpoints": {"written": stats.get("ckpt_written", 0),
                        "restored": stats.get("ckpt_restored", 0),
                        "corrupt": st.corrupt, "bytes": st.bytes_written},
        "redone_s": round(stats.get("redone_s", 0.0), 3),
        "events": new_events,
        "events_total": n_events,
        "task_events": notes,
        "task_events_total": notes_total,
        "finished": stopping,
        "fatal": fatal,
    }
