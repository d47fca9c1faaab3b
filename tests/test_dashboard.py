"""Seeing the VM (issue 7): live dashboard, trace and timeline, status line, log lines.

The browser test opens the dashboard of a real job in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, driven by selenium), watches
task counts change, kills a node from outside, sees it marked dead and saves
a screenshot (also copied to /tmp/clustervm-dashboard.png). It is skipped,
with the reason, when chromium, chromedriver or selenium is missing:

    apt-get install -y chromium chromium-driver
    pip install selenium

The timeline tests need matplotlib (``pip install 'clustervm[viz]'``); the
status-line test needs tmux.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import PY, ROOT, Job, job_env

APP = str(ROOT / "tests" / "dashboard_app.py")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT_COPY = Path("/tmp/clustervm-dashboard.png")
TIMELINE_COPY = Path("/tmp/clustervm-timeline.png")


# ----------------------------------------------------------------- helpers

class Stderr:
    """Drains a job's stderr in a thread (so the job never blocks on a full pipe)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        self._t = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True)
        self._t.start()

    def _drain(self, stream) -> None:
        for line in stream:
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r} on stderr within "
                                     f"{timeout:.0f} s:\n{self.text()}")
            m = re.search(pattern, line)
            if m:
                return m

    def text(self) -> str:
        return "".join(self.lines)


def start_job(job, tmp_path: Path, app_args: list[str], run_args: list[str], n: int = 4,
              timeout: float = 150.0) -> tuple[Job, Stderr, str | None, Path]:
    """A dashboard_app job that runs until its stop file exists; returns (job, stderr, url, stop)."""
    stop = tmp_path / "stop"
    j = job([APP, "--until", str(stop), "--max-s", str(timeout - 30), *app_args], n=n,
            timeout=timeout, run_args=run_args)
    err = Stderr(j.proc)
    url = None
    if any(a.startswith("--dashboard") for a in run_args):
        url = err.wait_for(r"clustervm: dashboard at (http://\S+)", 90).group(1)
    return j, err, url, stop


def state(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=30) as r:
        return json.load(r)


def wait_state(url: str, pred, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    d: dict = {}
    while time.monotonic() < deadline:
        d = state(url)
        if pred(d):
            return d
        time.sleep(0.2)
    raise AssertionError(f"dashboard never showed {what} within {timeout:.0f} s; last state: "
                         f"{json.dumps(d)[:2000]}")


def finish(j: Job, err: Stderr, stop: Path, timeout: float = 90.0) -> tuple[int, str, str]:
    stop.touch()
    try:
        rc = j.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        j.kill()
        raise AssertionError(f"job did not end within {timeout:.0f} s of its stop file:\n"
                             f"{err.text()}")
    out = j.proc.stdout.read()
    err._t.join(10)
    return rc, out, err.text()


# ------------------------------------------------------------------ fakes

class FakeSource:
    """Just enough of a coordinator for the tracer and the dashboard (no MPI): a
    ``clustervm.core.ViewSource`` over nodes and events the test changes."""

    def __init__(self, ranks=(1, 2, 3)) -> None:
        from clustervm.events import EventLog

        self.t0 = time.monotonic() - 5.0
        self.lock = threading.RLock()
        self.observers: list = []
        self.nodes = {r: SimpleNamespace(rank=r, host="hostA", pid=1000 + r, state="alive",
                                         how_lost="", lost_at=0.0) for r in ranks}
        self.events = EventLog(self.t0)

    def view(self, events_from: int = 0, max_events: int | None = 500):
        from clustervm.core import NodeView, VMView

        with self.lock:
            nodes = tuple(NodeView(n.rank, n.host, n.pid, n.state, 0, 0, 0, n.how_lost,
                                   n.lost_at, self.t0) for n in self.nodes.values())
            evs = self.events.events
            start = events_from if max_events is None else max(events_from,
                                                               len(evs) - max_events)
            events = tuple(dict(e) for e in evs[start:])
        return VMView(t0=self.t0, now=time.monotonic(), host="hostA", pid=os.getpid(),
                      slots=1, cap=3, heartbeat_s=2.0, nodes=nodes, pending=0, live=0,
                      stats={"rerun": 0, "redone_s": 0.0, "ckpt_written": 2,
                             "ckpt_restored": 1, "reused": 0},
                      events=events, events_total=len(evs), traffic=self.traffic(),
                      heard={r: time.monotonic() for r in self.nodes}, ckpt_corrupt=0,
                      ckpt_bytes=4096, stopping=False, fatal=None)

    def traffic(self):
        from clustervm.core import Traffic
        return Traffic(10, 12, 900, 1000)

    def observe(self, observer) -> None:
        with self.lock:
            self.observers.append(observer)

    def observers_of(self, kind: type) -> list:
        return [o for o in self.observers if isinstance(o, kind)]


def fake_coordinator(ranks=(1, 2, 3)) -> FakeSource:
    return FakeSource(ranks)


def fake_task(tid: int, fn: str = "app:step", t_start: float | None = None,
              spawned: bool = False):
    """A task as observers are told of it (clustervm.core.TaskView, but changeable)."""
    return SimpleNamespace(tid=tid, fn=fn, spawned=spawned, attempt=0,
                           t_start=time.monotonic() if t_start is None else t_start)


def simulate_run(coord, observers) -> None:
    """Tasks on 3 nodes; node 2 is lost with tasks on it; they re-run on node 1."""
    def emit(kind, rec, rank, ok=None):
        for o in observers:
            o(kind, rec, rank, ok)

    recs = {}
    for tid in range(1, 7):
        rec = recs[tid] = fake_task(tid)
        rank = 1 + (tid - 1) % 3
        rec.node = rank
        emit("start", rec, rank)
    time.sleep(0.02)
    for tid in (1, 3):
        emit("end", recs[tid], recs[tid].node, True)
    emit("end", recs[6], 3, False)                       # a failed task
    node = coord.nodes[2]
    node.state, node.how_lost, node.lost_at = "dead", "MPI (ULFM)", time.monotonic()
    coord.events.add("NODE_DOWN", rank=2, host="hostA", how="MPI (ULFM)")
    for tid in (2, 5):
        emit("rerun", recs[tid], 2)
        recs[tid].attempt += 1
        recs[tid].t_start = time.monotonic()
        emit("start", recs[tid], 1)
    time.sleep(0.02)
    for tid in (2, 4, 5):
        emit("end", recs[tid], recs[tid].node if tid == 4 else 1, True)


# ------------------------------------------------------- tests without MPI

def test_tracer_writes_chrome_trace_with_loss_and_reruns(tmp_path):
    from clustervm.trace import Tracer

    coord = fake_coordinator()
    path = tmp_path / "run.json"
    stop = Tracer.attach(coord, str(path))
    simulate_run(coord, coord.observers)
    stop()
    doc = json.loads(path.read_text())
    evs = doc["traceEvents"]
    runs = [e for e in evs if e["ph"] == "X"]
    assert {e["pid"] for e in runs} == {1, 2, 3}
    assert all({"tid", "attempt", "outcome"} <= set(e["args"]) for e in runs)
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in runs)
    outcomes = {(e["args"]["tid"], e["args"]["attempt"]): e["args"]["outcome"] for e in runs}
    assert outcomes[(6, 0)] == "error"
    assert outcomes[(2, 0)] == "lost" and outcomes[(2, 1)] == "ok"      # cut short, re-run
    assert (5, 0) not in outcomes        # queued behind task 2 on the lost node: never began
    assert outcomes[(5, 1)] == "ok"
    lost = [e for e in evs if e["ph"] == "i" and e["cat"] == "failure"]
    assert len(lost) == 1 and lost[0]["pid"] == 2
    assert len([e for e in evs if e["ph"] == "i" and e["cat"] == "rerun"]) == 2
    names = {e["pid"]: e["args"]["name"] for e in evs if e["ph"] == "M"
             and e["name"] == "process_name"}
    assert names[2] == "node 2 @ hostA (lost)" and names[0].startswith("coordinator")
    assert any(e["ph"] == "C" for e in evs) or len(doc["otherData"]["messages"]) == 4
    # runs on one track never overlap (Perfetto nests or drops overlapping X events)
    by_track: dict = {}
    for e in runs:
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        assert all(a[1] <= b[0] + 0.5 for a, b in zip(spans, spans[1:]))


def test_timeline_command_draws_png(tmp_path):
    pytest.importorskip("matplotlib", reason="clustervm timeline needs matplotlib "
                                             "(pip install 'clustervm[viz]')")
    from clustervm.cli import main
    from clustervm.trace import Tracer

    coord = fake_coordinator()
    path = tmp_path / "run.json"
    stop = Tracer.attach(coord, str(path))
    simulate_run(coord, coord.observers)
    stop()
    png = tmp_path / "run.png"
    assert main(["timeline", str(path), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert main(["timeline", str(tmp_path / "missing.json")]) == 1


def test_dashboard_page_api_and_event_stream(capsys):
    from clustervm.dashboard import serve
    from clustervm.monitor import counter_of

    coord = fake_coordinator()
    stop = serve(coord, "127.0.0.1:0")
    try:
        url = re.search(r"dashboard at (http://\S+)", capsys.readouterr().err).group(1)
        with urllib.request.urlopen(url, timeout=10) as r:
            page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html") and "EventSource" in page
        counter = counter_of(coord)
        rec = fake_task(1)
        counter("start", rec, 1, None)
        counter("end", rec, 1, True)
        d = state(url)
        assert [n["state"] for n in d["nodes"]] == ["alive"] * 3
        assert d["tasks"]["done"] == 1 and d["nodes"][0]["done"] == 1
        assert d["messages"]["out"] == 12 and d["checkpoints"]["written"] == 2
        stream = urllib.request.urlopen(url + "events", timeout=10)
        assert stream.headers["Content-Type"] == "text/event-stream"

        def next_data() -> dict:
            while True:
                line = stream.readline().decode()
                assert line, "event stream ended early"
                if line.startswith("data: "):
                    return json.loads(line[6:])

        assert next_data()["alive"] == 3
        with coord.lock:
            coord.nodes[2].state, coord.nodes[2].lost_at = "dead", time.monotonic()
            coord.nodes[2].how_lost = "heartbeat"
            coord.events.add("NODE_DOWN", rank=2, host="hostA", how="heartbeat")
        deadline = time.monotonic() + 20
        while True:
            d = next_data()
            if d["alive"] == 2 or time.monotonic() > deadline:
                break
        assert d["nodes"][1]["state"] == "dead" and d["events"][-1]["kind"] == "NODE_DOWN"
    finally:
        stop()
    last = None
    while True:        # the stream ends with the final state
        line = stream.readline().decode()
        if not line:
            break
        if line.startswith("data: "):
            last = json.loads(line[6:])
    assert last is None or last["finished"] is True


def test_dashboard_address_in_use_does_not_stop_the_job(capsys):
    import socket

    from clustervm.dashboard import parse_address, serve

    assert parse_address("8787") == ("127.0.0.1", 8787)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        stop = serve(fake_coordinator(), f"127.0.0.1:{s.getsockname()[1]}")
        stop()
    assert "dashboard not started" in capsys.readouterr().err


# ---------------------------------------------------------- tests with MPI

def _chrome(tmp_path: Path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium chromium-driver)")
    if CHROMEDRIVER is None:
        pytest.skip("chromedriver not installed (apt-get install -y chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path)}",
                "--window-size=1400,1250", "--hide-scrollbars"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


@pytest.mark.mpi
def test_dashboard_in_chromium(job, tmp_path):
    browser = _chrome(tmp_path)
    try:
        from selenium.webdriver.common.by import By

        j, err, url, stop = start_job(job, tmp_path, ["--ms", "60", "--fail-every", "25"],
                                      ["--dashboard", "127.0.0.1:0", "--heartbeat", "5"])
        browser.set_page_load_timeout(60)
        browser.get(url)

        def wait(pred, what: str, timeout: float = 60.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    got = pred()
                except Exception:   # noqa: BLE001 - the page is being re-rendered
                    got = None
                if got:
                    return got
                time.sleep(0.2)
            browser.save_screenshot(str(tmp_path / "failed.png"))
            raise AssertionError(f"the page never showed {what} within {timeout:.0f} s "
                                 f"(screenshot {tmp_path / 'failed.png'}); stderr:\n{err.text()}")

        def rows() -> dict[str, str]:
            return {tr.get_attribute("data-rank"): tr.get_attribute("data-state")
                    for tr in browser.find_elements(By.CSS_SELECTOR, "#nodes tr")}

        def done() -> int:
            return int(browser.find_element(By.ID, "tasks-done").text.replace(",", ""))

        wait(lambda: rows() == {"0": "coordinator", "1": "alive", "2": "alive", "3": "alive"},
             "three alive nodes and the coordinator")
        # (every read below waits: the page re-renders twice a second, so an element
        # found a moment ago may be gone: "stale")
        wait(lambda: browser.find_element(By.ID, "alive").text == "3 / 3", "3 / 3 alive")
        first = wait(lambda: done() >= 5 and done(), "tasks done")
        wait(lambda: done() >= first + 10, "the task count rising")
        wait(lambda: browser.find_element(By.ID, "conn").text == "live", "the stream live")
        wait(lambda: int(browser.find_element(By.ID, "tasks-total").text.replace(",", ""))
             >= done(), "a total at least the tasks done")

        j.kill_rank(2)
        wait(lambda: rows().get("2") == "dead", "node 2 marked dead")
        wait(lambda: "dead" in (t := browser.find_element(
            By.CSS_SELECTOR, '#nodes tr[data-rank="2"]').text) and "lost at" in t,
             "node 2's row: dead, lost at")
        wait(lambda: browser.find_element(By.ID, "alive").text == "2 / 3", "2 / 3 alive")
        wait(lambda: "NODE_DOWN" in browser.find_element(By.ID, "events").text,
             "NODE_DOWN in the events")
        after = done()
        wait(lambda: done() >= after + 10, "tasks still finishing on the survivors")
        wait(lambda: int(browser.find_element(By.ID, "tasks-failed").text) >= 1,
             "a failed task counted")
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shutil.copyfile(shot, SCREENSHOT_COPY)

        rc, out, text = finish(j, err, stop)
        assert rc == 0, text
        assert re.search(r"dashboard-app: tasks=\d+ ok=\d+ failed=\d+", out), out
        wait(lambda: browser.find_element(By.ID, "conn").text == "job finished",
             "the job finished", timeout=20)
        final_done = done()
        tasks = int(re.search(r"ok=(\d+)", out).group(1))
        assert final_done == tasks, (final_done, out)
    finally:
        browser.quit()


@pytest.mark.mpi
def test_trace_with_lost_node_and_timeline(job, tmp_path):
    trace = tmp_path / "run.json"
    j, err, url, stop = start_job(job, tmp_path, ["--ms", "40"],
                                  ["--dashboard", "127.0.0.1:0", "--trace", str(trace)])
    wait_state(url, lambda d: d["tasks"]["done"] >= 30, 90, "30 tasks done")
    j.kill_rank(2)
    d = wait_state(url, lambda d: d["nodes"][1]["state"] == "dead", 60, "node 2 dead")
    wait_state(url, lambda s: s["tasks"]["done"] >= d["tasks"]["done"] + 20, 60,
               "20 more tasks done")
    rc, out, text = finish(j, err, stop)
    assert rc == 0, text
    assert f"trace written to {trace}" in text
    doc = json.loads(trace.read_text())
    evs = doc["traceEvents"]
    runs = [e for e in evs if e["ph"] == "X"]
    ok = int(re.search(r"ok=(\d+)", out).group(1))
    assert sum(1 for e in runs if e["args"]["outcome"] == "ok") == ok
    assert {e["pid"] for e in runs} == {1, 2, 3}
    assert not [e for e in runs if e["pid"] == 2 and
                e["ts"] > doc["otherData"]["nodes"][1]["lost_at_s"] * 1e6 + 1]
    lost = [e for e in evs if e["ph"] == "i" and e.get("cat") == "failure"]
    assert [e["pid"] for e in lost] == [2]
    reruns = [e for e in evs if e["ph"] == "i" and e.get("cat") == "rerun"]
    m = re.search(r"(\d+) task\(s\) re-run", text)
    assert m, text
    assert len(reruns) == int(m.group(1))
    assert len([e for e in runs if e["args"]["attempt"] > 0]) == len(reruns)
    assert any(e["ph"] == "C" and e["name"] == "coordinator messages/s" for e in evs)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    png = tmp_path / "run.png"
    r = subprocess.run([PY, "-m", "clustervm", "timeline", str(trace), "-o", str(png)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "1 lost" in r.stdout and png.read_bytes()[:4] == b"\x89PNG"
    shutil.copyfile(png, TIMELINE_COPY)


@pytest.mark.mpi
def test_log_lines_carry_rank_and_host(job, tmp_path):
    j, err, _, stop = start_job(job, tmp_path, ["--tasks", "12", "--fail-every", "3", "--ms", "5"],
                                ["--log-level", "INFO", "--trace", str(tmp_path / "t.json")])
    rc, out, text = finish(j, err, stop)
    assert rc == 0, text
    assert "dashboard-app: tasks=12 ok=8 failed=4" in out
    nodes = re.findall(r" WARNING rank ([1-9]\d*)@(\S+) dashboard_app: task \d+ fails on purpose",
                       text)
    assert len(nodes) == 4, text
    assert re.search(r" INFO rank 0@\S+ clustervm\.trace: trace of \d+ task run", text), text


@pytest.mark.mpi
def test_status_line_on_a_terminal(tmp_path):
    """In a real terminal (tmux), the bottom row shows the live status; it is gone at the end."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux not installed")
    sock = f"cvm-test-{os.getpid()}"
    stop = tmp_path / "stop"
    out = tmp_path / "out.txt"
    cmd = (f"{PY} -m clustervm run -n 4 --timeout 120 {APP} --until {stop} --ms 30 "
           f"--max-s 90; echo EXIT=$? > {out}; sleep 60")
    env = job_env({"TERM": "xterm"})
    subprocess.run([tmux, "-L", sock, "new-session", "-d", "-x", "110", "-y", "20", cmd],
                   env=env, cwd=ROOT, check=True)

    def screen() -> list[str]:
        r = subprocess.run([tmux, "-L", sock, "capture-pane", "-p", "-t", "0"],
                           capture_output=True, text=True)
        return r.stdout.rstrip("\n").split("\n")

    try:
        deadline = time.monotonic() + 90
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = screen()
            if len(lines) == 20 and re.search(r"nodes 3/3 alive \| tasks \d+/\d+ done",
                                              lines[-1]):
                break
            time.sleep(0.3)
        else:
            raise AssertionError("no status line on the last row:\n" + "\n".join(lines))
        assert lines[-1].startswith("clustervm ")
        stop.touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not out.exists():
            time.sleep(0.3)
        time.sleep(0.5)
        assert out.read_text().strip() == "EXIT=0"
        text = "\n".join(screen())
        assert "dashboard-app: tasks=" in text
        assert "nodes 3/3 alive" not in text, text
    finally:
        subprocess.run([tmux, "-L", sock, "kill-server"], capture_output=True)
