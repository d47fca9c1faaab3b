"""Does watching a job slow it down? Throughput with and without --dashboard / --trace.

    python benchmarks/dashboard_overhead.py [--reps 3] [--noop 20000] [--ms 2000]

Runs benchmarks/apps/throughput_app.py (no-op and 1 ms tasks with map and a
submit loop, and the submit-to-result latency) on 3 workers, in rounds that
alternate the variants so that load from anything else on the machine falls
on all of them alike:

    plain       no observer at all (the hot path's ``if self.observers:`` is False)
    dashboard   --dashboard 127.0.0.1:0 with a client connected to /events for the
                whole run (it reads every server-sent event, as an open page does)
    trace       --trace FILE
    both        --dashboard with a client, and --trace

Prints the median of each figure per variant and its ratio to plain.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import PY, ROOT, mpi_env  # noqa: E402

APP = str(ROOT / "benchmarks" / "apps" / "throughput_app.py")
VARIANTS = ("plain", "dashboard", "trace", "both")


def sse_client(url: str, stats: dict, stop: threading.Event) -> None:
    """Read /events like a browser page does; count the snapshots."""
    try:
        with urllib.request.urlopen(url + "events", timeout=60) as r:
            for line in r:
                if line.startswith(b"data: "):
                    stats["events"] += 1
                    stats["bytes"] += len(line)
                    if b'"finished":true' in line:
                        break
                if stop.is_set():
                    break
    except OSError as exc:
        stats["error"] = str(exc)


def run_once(variant: str, n_noop: int, n_ms: int, tmp: str, timeout: float) -> dict:
    run_args = []
    if variant in ("dashboard", "both"):
        run_args += ["--dashboard", "127.0.0.1:0"]
    if variant in ("trace", "both"):
        run_args += ["--trace", os.path.join(tmp, f"{variant}.json")]
    cmd = [PY, "-m", "clustervm", "run", "-n", "4", "--timeout", str(timeout), *run_args,
           APP, str(n_noop), str(n_ms)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=mpi_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    err_lines: list[str] = []
    client = {"events": 0, "bytes": 0}
    stop = threading.Event()
    if variant in ("dashboard", "both"):
        for line in proc.stderr:
            err_lines.append(line)
            m = re.search(r"dashboard at (http://\S+)", line)
            if m:
                threading.Thread(target=sse_client, args=(m.group(1), client, stop),
                                 daemon=True).start()
                break
    try:
        out, err = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(f"job hung: {' '.join(cmd)}")
    stop.set()
    err = "".join(err_lines) + err
    if proc.returncode != 0:
        raise SystemExit(f"job failed ({proc.returncode}): {' '.join(cmd)}\n{out}\n{err}")
    res: dict = {}
    for line in out.splitlines():
        if line.startswith("result clustervm "):
            _, _, name, how, value, cpu = line.split()
            res[f"{name} {how}"] = float(value)
            if name == "noop" and how == "map":
                res["coordinator CPU us/task (noop map)"] = float(cpu)
    if variant in ("dashboard", "both"):
        res["client events"] = client["events"]
        if client.get("error"):
            print(f"  (client error: {client['error']})", file=sys.stderr)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--noop", type=int, default=20000)
    p.add_argument("--ms", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args()
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            order = VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))
            for v in order:
                r = run_once(v, a.noop, a.ms, tmp, a.timeout)
                results[v].append(r)
                print(f"rep {rep + 1} {v:9s} " + json.dumps(r), flush=True)
    keys = [k for k in results["plain"][0]]
    print(f"\nmedians of {a.reps} run(s), 3 workers ({a.noop} no-op, {a.ms} 1 ms tasks); "
          f"tasks/s unless stated, latency in ms")
    print(f"{'':36s}" + "".join(f"{v:>18s}" for v in VARIANTS))
    for k in keys:
        base = statistics.median(r[k] for r in results["plain"])
        row = f"{k:36s}"
        for v in VARIANTS:
            m = statistics.median(r[k] for r in results[v])
            row += f"{m:11.2f} ({m / base:4.2f})" if base else f"{m:18.2f}"
        print(row)
    ev = [r.get("client events", 0) for r in results["dashboard"]]
    print(f"\nserver-sent events read by the client per dashboard run: {ev}")


if __name__ == "__main__":
    main()
