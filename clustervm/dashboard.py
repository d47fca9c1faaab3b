"""``--dashboard [HOST:]PORT``: a live web page of the job, served by the coordinator.

One page, no build step, standard library only (``http.server`` in daemon
threads): nodes (state, host, load, tasks done, last heartbeat), tasks
(queued, running, done, failed, re-run), rank 0's message and byte counts,
checkpoints, and failures on a timeline, refreshed with server-sent events.

Routes: ``/`` the page, ``/api/state`` one JSON snapshot, ``/events`` the
stream (one ``data:`` JSON snapshot about twice a second while anyone
listens; the last one has ``"finished": true``).

The scheduler pays almost nothing: one sampler thread takes a view (the
coordinator copies a few numbers under its lock) twice a second, only while a client is connected, and
serializes them outside the lock once for every client. HOST defaults to
127.0.0.1 (the page has no login: serve it on another address only on a
network you trust); PORT 0 picks a free port. The URL is logged at INFO and
printed once to stderr.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .core.view import ViewSource
from .monitor import TaskCounter, counter_of, snapshot

log = logging.getLogger(__name__)

TICK_S = 0.5
KEEPALIVE_S = 15.0


def parse_address(text: str) -> tuple[str, int]:
    """``"8787"`` -> ("127.0.0.1", 8787); ``"0.0.0.0:0"``; ``"[::1]:8787"``."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"dashboard address {text!r}: give [HOST:]PORT with PORT 0-65535")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The sampler shared by all clients, and the HTTP server."""

    def __init__(self, source: ViewSource, counter: TaskCounter) -> None:
        self.source = source
        self.counter = counter
        self.cond = threading.Condition()
        self.version = 0
        self.payload = b"{}"
        self.clients = 0
        self.finished = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, name="cvm-dash-sampler",
                                         daemon=True)
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- snapshots -------------------------------------------------------------

    def sample(self) -> bytes:
        """Take a snapshot now and publish it to every client."""
        data = snapshot(self.source.view(max_events=200), self.counter.copy())
        if self.finished:
            data["finished"] = True
        data["url"] = self.url
        payload = json.dumps(data, separators=(",", ":")).encode()
        with self.cond:
            self.payload = payload
            self.version += 1
            self.cond.notify_all()
        return payload

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            if self.clients:
                try:
                    self.sample()
                except Exception:   # noqa: BLE001 - the page must never stop the job
                    log.exception("dashboard snapshot failed")
                self._stop.wait(TICK_S)
            else:
                self._wake.wait(1.0)
                self._wake.clear()

    # -- server ----------------------------------------------------------------

    def start(self, host: str, port: int) -> str:
        handler = _make_handler(self)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((host, port), handler)
        bound = self.server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.25},
                         name="cvm-dashboard", daemon=True).start()
        self._sampler.start()
        return self.url

    def stop(self) -> None:
        """Send the final state to the connected pages, then close the server."""
        try:
            self.finished = True
            if self.clients:
                self.sample()
                deadline = time.monotonic() + 1.0   # let the handlers write it
                while self.clients and time.monotonic() < deadline:
                    time.sleep(0.02)
            self._stop.set()
            self._wake.set()
            with self.cond:
                self.cond.notify_all()
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
        except Exception:   # noqa: BLE001
            log.exception("stopping the dashboard")


def _make_handler(dash: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "clustervm-dashboard"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:   # noqa: D102 - quiet
            log.debug("dashboard %s: " + fmt, self.address_string(), *args)

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:   # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:   # noqa: N802
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", PAGE.encode())
            elif path == "/api/state":
                self._send(200, "application/json", dash.sample())
            elif path == "/events":
                self._stream()
            elif path == "/favicon.ico":
                self._send(204, "image/x-icon", b"")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /\n")

        def _stream(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.close_connection = True
            with dash.cond:
                dash.clients += 1
            dash._wake.set()
            try:
                self.wfile.write(b"retry: 2000\n\n")
                seen = -1
                if dash.version:
                    payload, seen = dash.payload, dash.version
                    self.wfile.write(b"data: " + payload + b"\n\n")
                else:
                    self.wfile.write(b"data: " + dash.sample() + b"\n\n")
                    seen = dash.version
                self.wfile.flush()
                while True:
                    with dash.cond:
                        dash.cond.wait_for(lambda: dash.version != seen or dash._stop.is_set(),
                                           KEEPALIVE_S)
                        payload, version = dash.payload, dash.version
                    if version != seen:
                        seen = version
                        self.wfile.write(b"data: " + payload + b"\n\n")
                    elif dash._stop.is_set():
                        break
                    else:
                        self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    if dash.finished and b'"finished":true' in payload:
                        break
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            finally:
                with dash.cond:
                    dash.clients -= 1

    return Handler


def serve(source: ViewSource, address: str) -> Callable[[], None]:
    """Serve the dashboard of ``source`` (the coordinator) on ``[HOST:]PORT``; returns
    the stop function.

    A dashboard that cannot start (address in use, bad host) is reported and
    the job goes on without it.
    """
    try:
        host, port = parse_address(address)
        dash = Dashboard(source, counter_of(source))
        url = dash.start(host, port)
    except (OSError, ValueError) as exc:
        log.error("dashboard not started on %s: %s", address, exc)
        print(f"clustervm: error: dashboard not started on {address}: {exc}; the job goes on "
              f"without it", file=sys.stderr, flush=True)
        return lambda: None
    log.info("dashboard at %s", url)
    note = "" if _is_loopback(host) else " (no login: anyone who can reach this address sees it)"
    print(f"clustervm: dashboard at {url}{note}", file=sys.stderr, flush=True)
    return dash.stop


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clustervm dashboard</title>
<style>
  :root { --ok:#2e9d5b; --bad:#d64545; --warn:#e08a00; --info:#3b78c2; --mute:#8a8f98;
          --bg:#f6f7f9; --card:#fff; --line:#e3e6ea; --text:#1d2330; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         background:var(--bg); color:var(--text); }
  header { display:flex; align-items:center; gap:16px; padding:12px 22px; background:#1d2330;
           color:#fff; }
  header h1 { font-size:18px; margin:0; font-weight:600; letter-spacing:.3px; }
  header .meta { color:#b8c0cc; font-size:13px; }
  header .conn { margin-left:auto; font-size:13px; padding:3px 10px; border-radius:12px;
                 background:#3a4252; }
  header .conn.live { background:var(--ok); }
  header .conn.done { background:var(--info); }
  header .conn.lost { background:var(--bad); }
  main { padding:16px 22px 30px; max-width:1400px; }
  .cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(170px, 1fr)); gap:12px; }
  .card { background:var(--card); border:1px solid var(--line); border-radius:8px;
          padding:10px 14px; }
  .card .k { color:var(--mute); font-size:12px; text-transform:uppercase; letter-spacing:.5px; }
  .card .v { font-size:26px; font-weight:600; margin-top:2px; font-variant-numeric:tabular-nums; }
  .card .s { color:var(--mute); font-size:12px; font-variant-numeric:tabular-nums; }
  .bar { height:6px; background:#edf0f3; border-radius:3px; margin-top:6px; overflow:hidden; }
  .bar > div { height:100%; background:var(--ok); width:0; transition:width .3s; }
  .bad { color:var(--bad); } .warn { color:var(--warn); }
  section { margin-top:18px; background:var(--card); border:1px solid var(--line);
            border-radius:8px; padding:12px 16px; }
  section h2 { font-size:14px; margin:0 0 10px; font-weight:600; }
  section h2 small { color:var(--mute); font-weight:400; margin-left:6px; }
  table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
  th { text-align:left; color:var(--mute); font-weight:500; font-size:12px;
       border-bottom:1px solid var(--line); padding:5px 8px; }
  td { padding:6px 8px; border-bottom:1px solid #f0f2f4; }
  tr.dead td { background:#fdf1f1; }
  .badge { display:inline-block; padding:1px 9px; border-radius:10px; font-size:12px;
           font-weight:600; color:#fff; background:var(--mute); }
  .badge.alive { background:var(--ok); } .badge.dead { background:var(--bad); }
  .badge.starting { background:var(--warn); } .badge.spare { background:#6b7a90; }
  .badge.coordinator { background:#1d2330; }
  .load { display:inline-block; width:70px; height:8px; background:#edf0f3; border-radius:4px;
          vertical-align:middle; margin-right:6px; overflow:hidden; }
  .load > div { height:100%; background:var(--info); }
  .grid2 { display:grid; grid-template-columns: 1fr 1fr; gap:18px; }
  @media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
  svg text { font:11px system-ui, sans-serif; fill:#4a5160; }
  #events td.t { color:var(--mute); width:80px; white-space:nowrap; }
  #events td.k { width:120px; }
  .kind { font-size:11px; font-weight:700; padding:1px 6px; border-radius:4px; color:#fff; }
  .kind.NODE_DOWN, .kind.TASK_FAILED { background:var(--bad); }
  .kind.NODE_ADDED { background:var(--ok); } .kind.RESTORE { background:var(--info); }
  .kind.RERUN { background:var(--warn); } .kind.TASK_EXIT { background:var(--mute); }
  .empty { color:var(--mute); padding:6px 0; }
  #fatal { display:none; margin-top:14px; padding:10px 14px; border-radius:8px;
           background:#fdf1f1; border:1px solid #f2c4c4; color:#8c1d1d; }
</style>
</head>
<body>
<header>
  <h1>clustervm</h1>
  <span class="meta" id="meta">connecting&hellip;</span>
  <span class="conn" id="conn">connecting</span>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="k">Nodes alive</div><div class="v" id="alive">&ndash;</div>
      <div class="s" id="alive-sub">&nbsp;</div></div>
    <div class="card"><div class="k">Tasks done</div><div class="v"><span id="tasks-done">0</span><span class="s"> / <span id="tasks-total">0</span></span></div>
      <div class="bar"><div id="tasks-bar"></div></div></div>
    <div class="card"><div class="k">Running</div><div class="v" id="tasks-running">0</div>
      <div class="s"><span id="tasks-pending">0</span> queued</div></div>
    <div class="card"><div class="k">Failed</div><div class="v" id="tasks-failed">0</div>
      <div class="s"><span id="tasks-rerun">0</span> re-run, <span id="redone">0</span> s redone</div></div>
    <div class="card"><div class="k">Rank 0 messages</div><div class="v" id="msgs">0</div>
      <div class="s" id="msgs-sub">&nbsp;</div></div>
    <div class="card"><div class="k">Checkpoints</div><div class="v" id="ckpt">0</div>
      <div class="s" id="ckpt-sub">&nbsp;</div></div>
  </div>
  <div id="fatal"></div>
  <section>
    <h2>Nodes <small id="nodes-sub"></small></h2>
    <table><thead><tr><th>rank</th><th>host</th><th>pid</th><th>state</th><th title="tasks handed to the node: running and queued (slots + prefetch)">load</th>
      <th>done</th><th>failed</th><th>last heard</th><th>notes</th></tr></thead>
      <tbody id="nodes"></tbody></table>
  </section>
  <div class="grid2">
    <section>
      <h2>Failures and events <small>node lifetimes, losses, re-runs, restores</small></h2>
      <svg id="timeline" width="100%" height="120"></svg>
    </section>
    <section>
      <h2>Throughput <small>tasks finished per second (this page's view)</small></h2>
      <svg id="rate" width="100%" height="120"></svg>
    </section>
  </div>
  <section>
    <h2>Events <small id="events-sub"></small></h2>
    <table><tbody id="events"></tbody></table>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";
const history = [];
let last = null;

function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
function fmtBytes(n) {
  const u = ["B", "kB", "MB", "GB", "TB"]; let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function fmtAge(s) {
  if (s === null || s === undefined) return "\u2013";
  return s < 1 ? Math.round(s * 1000) + " ms ago" : s.toFixed(1) + " s ago";
}
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

function render(d) {
  const prev = last; last = d;
  history.push({t: d.t, done: d.tasks.done + d.tasks.failed, msgs: d.messages.in + d.messages.out});
  if (history.length > 600) history.shift();
  $("meta").textContent = `coordinator ${d.host} (pid ${d.pid}) \u00b7 ${d.t.toFixed(1)} s \u00b7 ` +
    `${d.nodes.length} node(s), ${d.slots} slot(s) each, heartbeat ${d.heartbeat_s} s`;
  const lost = d.nodes.filter(n => n.state === "dead").length;
  $("alive").textContent = `${d.alive} / ${d.nodes.length}`;
  $("alive").className = "v" + (lost ? " bad" : "");
  $("alive-sub").textContent = lost ? `${lost} lost` : "none lost";
  const t = d.tasks, finished = t.done + t.failed;
  $("tasks-done").textContent = fmtInt(t.done);
  $("tasks-total").textContent = fmtInt(t.total);
  $("tasks-bar").style.width = (t.total ? 100 * finished / t.total : 0) + "%";
  $("tasks-running").textContent = fmtInt(t.running);
  $("tasks-pending").textContent = fmtInt(t.pending);
  $("tasks-failed").textContent = fmtInt(t.failed);
  $("tasks-failed").className = "v" + (t.failed ? " bad" : "");
  $("tasks-rerun").textContent = fmtInt(t.rerun);
  $("redone").textContent = d.redone_s.toFixed(2);
  const m = d.messages;
  $("msgs").textContent = fmtInt(m.in + m.out);
  let rate = "";
  if (prev && d.t > prev.t) {
    const dm = (m.in + m.out) - (prev.messages.in + prev.messages.out);
    rate = ` \u00b7 ${Math.round(dm / (d.t - prev.t))}/s`;
  }
  $("msgs-sub").textContent = `${fmtInt(m.in)} in, ${fmtInt(m.out)} out \u00b7 ` +
    `${fmtBytes(m.bytes_in + m.bytes_out)}${rate}`;
  const c = d.checkpoints;
  $("ckpt").textContent = fmtInt(c.written);
  $("ckpt-sub").textContent = `${fmtInt(c.restored)} restored` +
    (c.corrupt ? `, ${c.corrupt} corrupt skipped` : "") + (c.bytes ? ` \u00b7 ${fmtBytes(c.bytes)} on disk` : "");
  $("fatal").style.display = d.fatal ? "block" : "none";
  $("fatal").textContent = d.fatal || "";
  renderNodes(d); renderTimeline(d); renderRate(); renderEvents(d);
  const conn = $("conn");
  if (d.finished) { conn.textContent = "job finished"; conn.className = "conn done"; }
  else { conn.textContent = "live"; conn.className = "conn live"; }
}

function renderNodes(d) {
  const body = $("nodes"); body.textContent = "";
  const row0 = el("tr", {"data-rank": "0", "data-state": "coordinator"});
  row0.append(el("td", {}, "0"), el("td", {}, d.host), el("td", {}, String(d.pid)));
  const b0 = el("td"); b0.append(el("span", {class: "badge coordinator"}, "coordinator")); row0.append(b0);
  row0.append(el("td", {}, "\u2013"), el("td", {}, "\u2013"), el("td", {}, "\u2013"), el("td", {}, "\u2013"),
              el("td", {}, "schedules; serves this page"));
  body.append(row0);
  const cap = Math.max(1, d.cap || d.slots);
  for (const n of d.nodes) {
    const tr = el("tr", {"data-rank": String(n.rank), "data-state": n.state, class: n.state});
    tr.append(el("td", {}, String(n.rank)), el("td", {}, n.host), el("td", {}, String(n.pid || "")));
    const st = el("td"); st.append(el("span", {class: "badge " + n.state, "data-testid": "state"}, n.state));
    tr.append(st);
    const ld = el("td"); const bar = el("span", {class: "load"}); const fill = el("div");
    fill.style.width = Math.min(100, 100 * n.running / cap) + "%"; bar.append(fill);
    ld.append(bar, document.createTextNode(n.state === "dead" ? "\u2013" :
      `${n.running}/${cap} assigned` + (n.spawned ? ` (${n.spawned} spawned)` : "")));
    tr.append(ld, el("td", {}, fmtInt(n.done)));
    tr.append(el("td", {class: n.failed ? "bad" : ""}, fmtInt(n.failed)));
    const age = n.state === "dead" ? "\u2013" : fmtAge(n.heard_s);
    tr.append(el("td", {class: (n.heard_s > d.heartbeat_s / 2 && n.state !== "dead") ? "warn" : ""}, age));
    tr.append(el("td", {}, n.state === "dead" ? `lost at ${n.lost_at.toFixed(2)} s: ${n.how_lost}` : ""));
    body.append(tr);
  }
  $("nodes-sub").textContent = `${d.alive} alive of ${d.nodes.length}`;
}

function allEvents(d) {
  const evs = d.events.map(e => Object.assign({}, e));
  for (const e of d.task_events) evs.push(Object.assign({}, e));
  evs.sort((a, b) => a.t - b.t);
  return evs;
}

function renderTimeline(d) {
  const svg = $("timeline"); svg.textContent = "";
  const W = svg.clientWidth || 600, left = 64, right = 12, top = 8, lane = 18;
  const lanes = d.nodes.length + 1;
  const H = top + lanes * lane + 26; svg.setAttribute("height", H);
  const T = Math.max(d.t, 1), x = (t) => left + (W - left - right) * Math.min(t, T) / T;
  const yOf = {}; d.nodes.forEach((n, i) => yOf[n.rank] = top + i * lane + lane / 2);
  const yTasks = top + d.nodes.length * lane + lane / 2;
  for (const n of d.nodes) {
    const y = yOf[n.rank];
    svg.append(svgEl("text", {x: 4, y: y + 4}, `node ${n.rank}`));
    const end = n.state === "dead" ? n.lost_at : d.t;
    svg.append(svgEl("line", {x1: x(0), x2: x(end), y1: y, y2: y, stroke: n.state === "dead" ? "#9fcfb2" : "#2e9d5b", "stroke-width": 6, "stroke-linecap": "round"}));
    if (n.state === "dead") {
      svg.append(svgEl("line", {x1: x(end), x2: x(d.t), y1: y, y2: y, stroke: "#f0c2c2", "stroke-width": 6}));
      const cx = x(end);
      svg.append(svgEl("path", {d: `M${cx-5},${y-5}L${cx+5},${y+5}M${cx-5},${y+5}L${cx+5},${y-5}`, stroke: "#d64545", "stroke-width": 2.5}));
    }
  }
  svg.append(svgEl("text", {x: 4, y: yTasks + 4}, "tasks"));
  svg.append(svgEl("line", {x1: x(0), x2: x(T), y1: yTasks, y2: yTasks, stroke: "#e3e6ea", "stroke-width": 1}));
  for (const e of allEvents(d)) {
    const cx = x(e.t);
    if (e.kind === "NODE_ADDED" && yOf[e.rank] !== undefined) {
      svg.append(svgEl("circle", {cx, cy: yOf[e.rank], r: 5, fill: "#2e9d5b", stroke: "#fff"}));
    } else if (e.kind === "RERUN") {
      const y = yOf[e.rank] !== undefined ? yOf[e.rank] : yTasks;
      svg.append(svgEl("path", {d: `M${cx},${y+4}l-4,7h8z`, fill: "#e08a00"}));
    } else if (e.kind === "RESTORE") {
      svg.append(svgEl("rect", {x: cx - 3, y: yTasks - 3, width: 6, height: 6, fill: "#3b78c2"}));
    } else if (e.kind === "TASK_FAILED") {
      svg.append(svgEl("circle", {cx, cy: yTasks, r: 3.5, fill: "#d64545"}));
    }
  }
  const ay = H - 12;
  svg.append(svgEl("line", {x1: x(0), x2: x(T), y1: ay - 8, y2: ay - 8, stroke: "#c9ced6"}));
  for (let i = 0; i <= 4; i++) {
    const tt = T * i / 4;
    svg.append(svgEl("text", {x: x(tt), y: ay + 2, "text-anchor": i === 0 ? "start" : (i === 4 ? "end" : "middle")}, tt.toFixed(tt < 10 ? 1 : 0) + " s"));
  }
}

function renderRate() {
  const svg = $("rate"); svg.textContent = "";
  const W = svg.clientWidth || 600, H = 120, left = 44, right = 8, top = 10, bottom = 22;
  const pts = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1], b = history[i];
    if (b.t > a.t) pts.push({t: b.t, r: (b.done - a.done) / (b.t - a.t)});
  }
  if (pts.length < 2) { svg.append(svgEl("text", {x: left, y: 40}, "waiting for data\u2026")); return; }
  const t0 = pts[0].t, t1 = pts[pts.length - 1].t, maxR = Math.max(1, ...pts.map(p => p.r));
  const x = (t) => left + (W - left - right) * (t - t0) / Math.max(1e-9, t1 - t0);
  const y = (r) => top + (H - top - bottom) * (1 - r / maxR);
  const line = pts.map(p => `${x(p.t).toFixed(1)},${y(p.r).toFixed(1)}`).join(" ");
  svg.append(svgEl("polygon", {points: `${x(t0)},${y(0)} ${line} ${x(t1)},${y(0)}`, fill: "#e4eefb"}));
  svg.append(svgEl("polyline", {points: line, fill: "none", stroke: "#3b78c2", "stroke-width": 1.8}));
  svg.append(svgEl("text", {x: 4, y: top + 8}, Math.round(maxR) + "/s"));
  svg.append(svgEl("text", {x: 4, y: H - bottom}, "0"));
  svg.append(svgEl("text", {x: left, y: H - 6}, t0.toFixed(1) + " s"));
  svg.append(svgEl("text", {x: W - right, y: H - 6, "text-anchor": "end"}, t1.toFixed(1) + " s"));
}

function describe(e) {
  switch (e.kind) {
    case "NODE_DOWN": return `node ${e.rank} (${e.host}) lost: ${e.how}`;
    case "NODE_ADDED": return `node ${e.rank} joined (${e.how})`;
    case "RESTORE": return `task ${e.tid} restored from checkpoint ${e.seq}`;
    case "TASK_EXIT": return `spawned task ${e.tid} ended` + (e.ok ? "" : " with an error");
    case "TASK_FAILED": return `task ${e.tid} (${e.fn}) failed on node ${e.rank}`;
    case "RERUN": return `task ${e.tid} (${e.fn}) re-queued: node ${e.rank} lost`;
    default: return JSON.stringify(e);
  }
}

function renderEvents(d) {
  const body = $("events"); body.textContent = "";
  const evs = allEvents(d).reverse().slice(0, 60);
  $("events-sub").textContent = `${d.events_total + d.task_events_total} in all, newest first`;
  if (!evs.length) { const tr = el("tr"); tr.append(el("td", {class: "empty"}, "no events yet: no node lost, no task failed")); body.append(tr); return; }
  for (const e of evs) {
    const tr = el("tr");
    tr.append(el("td", {class: "t"}, e.t.toFixed(2) + " s"));
    const k = el("td", {class: "k"}); k.append(el("span", {class: "kind " + e.kind}, e.kind)); tr.append(k);
    tr.append(el("td", {}, describe(e)));
    body.append(tr);
  }
}

function connect() {
  const es = new EventSource("events");
  es.onmessage = (msg) => {
    const d = JSON.parse(msg.data);
    render(d);
    if (d.finished) es.close();
  };
  es.onerror = () => {
    if (last && last.finished) { es.close(); return; }
    const conn = $("conn"); conn.textContent = "connection lost \u2013 retrying"; conn.className = "conn lost";
  };
}
window.addEventListener("resize", () => { if (last) { renderTimeline(last); renderRate(); } });
connect();
</script>
</body>
</html>
"""
