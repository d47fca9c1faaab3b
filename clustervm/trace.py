"""``--trace FILE``: a Chrome trace-event JSON of the job (open it in Perfetto), and its Gantt chart.

What the trace shows, and how it knows it (everything is seen from the
coordinator, rank 0):

- one track (a trace "process") per node, with one row per task slot; a
  complete event (``ph: X``) per task run, named after the task's function,
  with ``args`` tid, attempt (0 = first run), outcome (ok, error, lost,
  unfinished) and the time it was handed to the node;
- the *end* of a run is when its result reached the coordinator; its *start*
  is when the node could begin it: the dispatch time, or, when the node
  already had work queued (``prefetch``), the moment a slot of that node
  freed up. Nodes do not report start times, so this is an estimate, exact
  for ``--slots 1`` up to message latency;
- instant events for each node lost (on its track, with how it was found)
  and each task re-run because of it, spare nodes taking over, and
  checkpoint restores;
- counters of the coordinator's own messages and bytes (per second, in and
  out). Messages between other nodes (task-to-task ``send``) do not pass
  through rank 0 and are not in the trace.

``clustervm timeline FILE -o run.png`` draws the trace as a Gantt chart (nodes
x time) with failures and re-runs marked; it needs matplotlib
(``pip install 'clustervm[viz]'``).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

from .core.view import TaskView, ViewSource

log = logging.getLogger(__name__)

#: Task runs kept in memory; past this the trace says how many were left out.
MAX_RUNS = 2_000_000
_SAMPLE_S = 0.1
NOTE = ("Seen from the coordinator (rank 0). A task run ends when its result reached the "
        "coordinator; it starts at its dispatch, or when a slot of its node freed up if the "
        "node had work queued (prefetch): an estimate, nodes do not report start times. "
        "Message and byte counters are rank 0's own traffic; messages between other nodes "
        "are not seen.")


def _short(fn: str) -> str:
    """``module:qualname`` -> ``qualname`` (the name shown on a bar)."""
    return fn.rpartition(":")[2] or fn


class Tracer:
    """A coordinator observer that records task runs; writes the trace when the job ends."""

    def __init__(self, source: ViewSource, path: str) -> None:
        self.source = source
        self.path = path
        self.t0 = source.t0
        self.slots = max(1, source.view(max_events=0).slots)
        self._lock = threading.Lock()     # the scheduler records while build() closes runs
        #: tid -> (rank, dispatched, fn, attempt, spawned)
        self.open: dict[int, tuple[int, float, str, int, bool]] = {}
        #: (rank, start, end, fn, tid, attempt, outcome, dispatched, spawned)
        self.runs: list[tuple] = []
        self.dropped = 0
        #: (t, rank, tid, fn)
        self.reruns: list[tuple[float, int, int, str]] = []
        #: (t, msgs_in, msgs_out, bytes_in, bytes_out)
        self.samples: list[tuple[float, int, int, int, int]] = []
        self._slot_free: dict[int, list[float]] = {}
        self._lost_at: dict[int | None, float] = {}
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @classmethod
    def attach(cls, source: ViewSource, path: str) -> Callable[[], None]:
        """Start tracing ``source`` (the coordinator); returns the function that stops and
        writes the file."""
        tracer = cls(source, path)
        source.observe(tracer)
        tracer._sample()
        tracer._sampler = threading.Thread(target=tracer._sample_loop, name="cvm-trace",
                                           daemon=True)
        tracer._sampler.start()
        return tracer.stop

    # -- recording (in the scheduler's thread, under its lock: cheap) ------------

    def __call__(self, kind: str, task: TaskView, rank: int | None, ok: bool | None) -> None:
        with self._lock:
            self._record(kind, task, rank, ok)

    def _record(self, kind: str, rec: TaskView, rank: int | None, ok: bool | None) -> None:
        if kind == "start":
            self.open[rec.tid] = (rank if rank is not None else -1, rec.t_start, rec.fn,
                                  rec.attempt, rec.spawned)
        elif kind == "end":
            self._close(rec.tid, time.monotonic(), "ok" if ok else "error")
        elif kind == "rerun":
            # one loss time per node: the tasks it had queued then never began
            now = self._lost_at.setdefault(rank, time.monotonic())
            self._close(rec.tid, now, "lost")
            self.reruns.append((now, rank if rank is not None else -1, rec.tid, rec.fn))

    def _close(self, tid: int, end: float, outcome: str) -> None:
        got = self.open.pop(tid, None)
        if got is None:
            return
        rank, dispatched, fn, attempt, spawned = got
        start = dispatched
        if not spawned:
            free = self._slot_free.get(rank)
            if free is None:
                free = self._slot_free[rank] = [0.0] * self.slots
            i = 0 if self.slots == 1 else min(range(self.slots), key=free.__getitem__)
            start = free[i] if free[i] > dispatched else dispatched
            if start >= end:                 # queued on the node, never begun
                if outcome == "lost":
                    return
                start = end
            free[i] = end
        if len(self.runs) >= MAX_RUNS:
            self.dropped += 1
            return
        self.runs.append((rank, start, end, fn, tid, attempt, outcome, dispatched, spawned))

    # -- message counters ------------------------------------------------------

    def _sample(self) -> None:
        c = self.source.traffic()
        self.samples.append((time.monotonic(), c.msgs_in, c.msgs_out, c.bytes_in, c.bytes_out))

    def _sample_loop(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            last = self.samples[-1]
            c = self.source.traffic()
            if (c.msgs_in, c.msgs_out) != last[1:3] or time.monotonic() - last[0] > 1.0:
                self._sample()

    # -- the end ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop recording and write the trace file (never raises: the job's outcome matters more)."""
        try:
            self._stop.set()
            if self._sampler is not None:
                self._sampler.join(1.0)
            self._sample()
            doc = self.build()
            tmp = f"{self.path}.tmp{os.getpid()}"
            d = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(d, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(doc, f, separators=(",", ":"))
            os.replace(tmp, self.path)
            runs = sum(1 for e in doc["traceEvents"] if e.get("ph") == "X")
            log.info("trace of %d task run(s) written to %s", runs, self.path)
            print(f"clustervm: trace written to {self.path} ({runs} task runs; open it in "
                  f"https://ui.perfetto.dev or draw it with `clustervm timeline "
                  f"{self.path}`)", file=sys.stderr, flush=True)
        except Exception:   # noqa: BLE001
            log.exception("could not write the trace to %s", self.path)

    def build(self) -> dict:
        """The trace as a dict (``{"traceEvents": [...], ...}``)."""
        view = self.source.view(max_events=None)
        end = view.now
        nodes = [(n.rank, n.host, n.pid, n.state, n.lost_at, n.how_lost) for n in view.nodes]
        lost_at = {n[0]: n[4] for n in nodes if n[3] == "dead" and n[4]}
        with self._lock:
            for tid, (rank, *_rest) in list(self.open.items()):
                self._close(tid, lost_at.get(rank, end),
                            "lost" if rank in lost_at else "unfinished")
            runs = list(self.runs)
            reruns = list(self.reruns)
        events, stats = list(view.events), view.stats
        samples = list(self.samples)
        t0 = self.t0

        def us(t: float) -> float:
            return round((t - t0) * 1e6, 1)

        ev: list[dict] = []
        host0 = view.host
        ev.append({"ph": "M", "name": "process_name", "pid": 0,
                   "args": {"name": f"coordinator (rank 0 @ {host0})"}})
        ev.append({"ph": "M", "name": "process_sort_index", "pid": 0, "args": {"sort_index": 0}})
        for rank, host, pid, state, _lost, how in nodes:
            label = f"node {rank} @ {host}" + (" (lost)" if state == "dead" else "")
            ev.append({"ph": "M", "name": "process_name", "pid": rank, "args": {"name": label}})
            ev.append({"ph": "M", "name": "process_sort_index", "pid": rank,
                       "args": {"sort_index": rank}})
        # rows per node: greedy interval colouring (runs on one row never overlap)
        by_node: dict[int, list[tuple]] = {}
        for r in runs:
            by_node.setdefault(r[0], []).append(r)
        for rank, rs in sorted(by_node.items()):
            rs.sort(key=lambda r: (r[1], r[2]))
            row_end: list[float] = []
            for (_, start, stop, fn, tid, attempt, outcome, dispatched, spawned) in rs:
                row = next((i for i, e in enumerate(row_end) if e <= start + 1e-9), None)
                if row is None:
                    row = len(row_end)
                    row_end.append(stop)
                    ev.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": row + 1,
                               "args": {"name": f"slot {row + 1}"}})
                    ev.append({"ph": "M", "name": "thread_sort_index", "pid": rank,
                               "tid": row + 1, "args": {"sort_index": row + 1}})
                row_end[row] = stop
                e = {"ph": "X", "name": _short(fn), "cat": "spawned" if spawned else "task",
                     "pid": rank, "tid": row + 1, "ts": us(start),
                     "dur": round(max(0.0, stop - start) * 1e6, 1),
                     "args": {"tid": tid, "attempt": attempt, "outcome": outcome, "fn": fn,
                              "dispatched_us": us(dispatched)}}
                if outcome in ("error", "lost"):
                    e["cname"] = "terrible"
                elif attempt:
                    e["cname"] = "bad"
                ev.append(e)
        for t, rank, tid, fn in reruns:
            ev.append({"ph": "i", "s": "p", "name": f"re-run task {tid}", "cat": "rerun",
                       "pid": rank, "tid": 1, "ts": us(t),
                       "args": {"tid": tid, "fn": fn, "lost_on_node": rank}})
        for e in events:
            t = t0 + float(e.get("t", 0.0))
            kind = e.get("kind")
            if kind == "NODE_DOWN":
                ev.append({"ph": "i", "s": "p", "name": "node lost", "cat": "failure",
                           "pid": e.get("rank", 0), "tid": 1, "ts": us(t),
                           "args": {"rank": e.get("rank"), "host": e.get("host"),
                                    "how": e.get("how")}})
            elif kind == "NODE_ADDED":
                ev.append({"ph": "i", "s": "p", "name": "node added", "cat": "node",
                           "pid": e.get("rank", 0), "tid": 1, "ts": us(t),
                           "args": {"rank": e.get("rank"), "how": e.get("how")}})
            elif kind == "RESTORE":
                ev.append({"ph": "i", "s": "t", "name": f"restore task {e.get('tid')}",
                           "cat": "checkpoint", "pid": 0, "tid": 1, "ts": us(t),
                           "args": {"tid": e.get("tid"), "seq": e.get("seq")}})
        prev = None
        for s in samples:
            if prev is not None and s[0] > prev[0]:
                dt = s[0] - prev[0]
                ev.append({"ph": "C", "name": "coordinator messages/s", "pid": 0, "ts": us(s[0]),
                           "args": {"in": round((s[1] - prev[1]) / dt, 1),
                                    "out": round((s[2] - prev[2]) / dt, 1)}})
                ev.append({"ph": "C", "name": "coordinator bytes/s", "pid": 0, "ts": us(s[0]),
                           "args": {"in": round((s[3] - prev[3]) / dt),
                                    "out": round((s[4] - prev[4]) / dt)}})
            prev = s
        last = samples[-1] if samples else (end, 0, 0, 0, 0)
        return {
            "traceEvents": ev,
            "displayTimeUnit": "ms",
            "otherData": {
                "generator": "clustervm",
                "note": NOTE,
                "duration_s": round(end - t0, 6),
                "slots": self.slots,
                "nodes": [{"rank": r, "host": h, "pid": p, "state": s,
                           "lost_at_s": round(la - t0, 6) if la else None, "how_lost": how}
                          for r, h, p, s, la, how in nodes],
                "messages": {"in": last[1], "out": last[2], "bytes_in": last[3],
                             "bytes_out": last[4]},
                "task_runs": len(runs), "task_runs_left_out": self.dropped,
                "reruns": len(reruns), "stats": stats,
            },
        }


# ---------------------------------------------------------------- timeline

def load(path: str) -> dict:
    """Read a trace file: a ``{"traceEvents": [...]}`` object or a bare event list."""
    with open(path) as f:
        doc = json.load(f)
    if isinstance(doc, list):
        doc = {"traceEvents": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise ValueError(f"{path} is not a Chrome trace-event file (no traceEvents list)")
    return doc


def draw_timeline(trace_path: str, out_path: str, title: str | None = None,
                  width: float = 12.0) -> dict:
    """Draw the trace as a Gantt chart (nodes x time) to ``out_path``; returns a summary.

    Bars are task runs (one colour per function); a failed run is red, a run
    cut short by a lost node is hatched grey with a red edge, a re-run (attempt
    > 0) is orange; a red line and a shaded band mark a lost node from
    the moment it was lost, orange triangles the tasks re-queued from it.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    doc = load(trace_path)
    evs = doc["traceEvents"]
    other = doc.get("otherData") or {}
    names: dict[int, str] = {}
    rows: dict[int, int] = {}
    runs: list[dict] = []
    instants: list[dict] = []
    counters: list[dict] = []
    for e in evs:
        ph = e.get("ph")
        if ph == "M" and e.get("name") == "process_name":
            names[e.get("pid", 0)] = e.get("args", {}).get("name", "")
        elif ph == "X":
            runs.append(e)
            pid, tid = e.get("pid", 0), int(e.get("tid", 1) or 1)
            rows[pid] = max(rows.get(pid, 0), tid)
        elif ph in ("i", "I"):
            instants.append(e)
        elif ph == "C":
            counters.append(e)
    lost = {e.get("pid"): e["ts"] / 1e6 for e in instants if e.get("cat") == "failure"}
    pids = sorted(set(rows) | set(lost) | {p for p in names if p != 0})
    if not pids:
        pids = [0]
    # y layout: each node gets its rows, top to bottom by rank
    base: dict[int, float] = {}
    y = 0.0
    for pid in pids:
        base[pid] = y
        y += max(1, rows.get(pid, 1)) + 0.6
    total_h = y
    end_s = max([(e["ts"] + e.get("dur", 0)) / 1e6 for e in runs] +
                [e["ts"] / 1e6 for e in instants] + [float(other.get("duration_s") or 0.0),
                                                     1e-3])
    fns = sorted({e.get("name", "?") for e in runs})
    from matplotlib.colors import to_hex
    palette = plt.get_cmap("tab10")
    colour = {fn: to_hex(palette(i % 10)) for i, fn in enumerate(fns)}
    has_counters = any(c.get("name", "").endswith("messages/s") for c in counters)
    height = min(14.0, 1.6 + 0.42 * total_h) + (1.3 if has_counters else 0.0)
    fig = plt.figure(figsize=(width, height), dpi=110)
    if has_counters:
        gs = fig.add_gridspec(2, 1, height_ratios=[max(2.0, total_h * 0.42), 1.0], hspace=0.3)
        ax = fig.add_subplot(gs[0])
        axc = fig.add_subplot(gs[1], sharex=ax)
    else:
        ax = fig.add_subplot(1, 1, 1)
        axc = None

    def ypos(pid: int, tid: Any) -> float:
        return base.get(pid, 0.0) + (int(tid or 1) - 1)

    by_style: dict[tuple, list[tuple[float, float]]] = {}
    ys: dict[tuple, float] = {}
    n_err = n_lost = n_rerun = 0
    for e in runs:
        a = e.get("args") or {}
        outcome = a.get("outcome", "ok")
        attempt = int(a.get("attempt", 0) or 0)
        n_err += outcome == "error"
        n_lost += outcome == "lost"
        n_rerun += attempt > 0 and outcome != "lost"
        key = (e.get("pid", 0), e.get("tid", 1), e.get("name", "?"), outcome, attempt > 0)
        by_style.setdefault(key, []).append((e["ts"] / 1e6, max(e.get("dur", 0) / 1e6,
                                                                 end_s * 1e-4)))
        ys[key] = ypos(e.get("pid", 0), e.get("tid", 1))
    for key, spans in by_style.items():
        pid, tid, fn, outcome, rerun = key
        face = colour.get(fn, "C0")
        # separators between bars while they are wide enough to see
        kw: dict[str, Any] = {"facecolors": face, "edgecolors": "white",
                              "linewidth": 0.4 if len(runs) < 1500 else 0.0}
        if outcome == "error":
            kw.update(facecolors="#d62728", edgecolors="#7f0000", linewidth=0.8)
        elif outcome == "lost":
            kw.update(facecolors="#bbbbbb", edgecolors="#d62728", linewidth=1.0, hatch="xxx")
        elif outcome == "unfinished":
            kw.update(facecolors="#dddddd", edgecolors="#888888", hatch="..")
        if rerun and outcome == "ok":
            kw.update(facecolors="#ffa94d", edgecolors="#c45a00", linewidth=1.2)
        elif rerun and outcome != "lost":
            kw.update(edgecolors="#ff7f0e", linewidth=1.6)
        ax.broken_barh(spans, (ys[key] + 0.1, 0.8), **kw)
    for pid, t in lost.items():
        if pid not in base:
            continue
        top = base[pid] - 0.15
        h = max(1, rows.get(pid, 1)) + 0.3
        ax.add_patch(plt.Rectangle((t, top), end_s * 1.02 - t, h, facecolor="#d62728",
                                   alpha=0.08, edgecolor="none"))
        ax.plot([t, t], [top, top + h], color="#d62728", linewidth=2.2)
        ax.annotate("node lost", (t, top), xytext=(4, -2), textcoords="offset points",
                    color="#d62728", fontsize=8, fontweight="bold", va="bottom")
    reruns = [e for e in instants if e.get("cat") == "rerun"]
    for e in reruns:
        pid = e.get("pid", 0)
        if pid in base:
            ax.plot(e["ts"] / 1e6, base[pid] + max(1, rows.get(pid, 1)) + 0.05, marker="v",
                    color="#ff7f0e", markersize=7, markeredgecolor="#a04000", zorder=5)
    ax.set_yticks([base[p] + max(1, rows.get(p, 1)) / 2 for p in pids])
    ax.set_yticklabels([names.get(p, f"node {p}") for p in pids])
    ax.set_ylim(total_h - 0.4, -0.4)
    ax.set_xlim(0, end_s * 1.02)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if axc is None:
        ax.set_xlabel("seconds since the job started")
    n_nodes_lost = len(lost)
    ax.set_title(title or f"{os.path.basename(trace_path)}: {len(runs)} task runs on "
                 f"{len([p for p in pids if p])} nodes, {n_nodes_lost} node(s) lost, "
                 f"{len(reruns)} re-run(s), {n_err} failed", fontsize=10, loc="left")
    handles = [Patch(facecolor=colour[f], label=f) for f in fns[:8]]
    if n_err:
        handles.append(Patch(facecolor="#d62728", edgecolor="#7f0000", label="failed"))
    if n_lost:
        handles.append(Patch(facecolor="#bbbbbb", edgecolor="#d62728", hatch="xxx",
                             label="cut short (node lost)"))
    if n_rerun:
        handles.append(Patch(facecolor="#ffa94d", edgecolor="#c45a00", linewidth=1.2,
                             label="re-run (after a node was lost)"))
    if n_nodes_lost:
        handles.append(Line2D([0], [0], color="#d62728", linewidth=2.2, label="node lost"))
    if reruns:
        handles.append(Line2D([0], [0], marker="v", color="#ff7f0e", linestyle="none",
                              label="task re-queued"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8,
              frameon=False)
    if axc is not None:
        for name, style in (("in", "-"), ("out", "--")):
            pts = [(c["ts"] / 1e6, c["args"].get(name, 0)) for c in counters
                   if c.get("name", "").endswith("messages/s")]
            if pts:
                axc.step([p[0] for p in pts], [p[1] for p in pts], where="pre",
                         linestyle=style, linewidth=1.0, color="#555555",
                         label=f"messages/s {name}")
        axc.set_ylabel("rank 0\nmsgs/s", fontsize=8)
        axc.set_xlabel("seconds since the job started")
        axc.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
        axc.grid(axis="x", color="#e5e5e5", linewidth=0.6)
        for side in ("top", "right"):
            axc.spines[side].set_visible(False)
        for t in lost.values():
            axc.axvline(t, color="#d62728", linewidth=1.0, alpha=0.6)
    fig.savefig(out_path, bbox_inches="tight")
    plt.close(fig)
    return {"runs": len(runs), "nodes": len(pids), "nodes_lost": n_nodes_lost,
            "reruns": len(reruns), "failed": n_err}
