"""Supervising a job: restart it from its journal when a host is lost.

ULFM survives lost *processes*, but when a host's Open MPI daemon is lost
(the host crashed, or its link is cut) PRRTE ends the whole job, often with
exit status 0 (DESIGN.md, tests/test_netns.py). So ``clustervm run`` watches
for the coordinator's end-of-job marker in the checkpoint directory: a job
that ended without it did not finish. The supervisor then probes each host
with a one-rank job, leaves out those that do not answer, and runs the job
again with ``--resume`` on the rest: finished tasks are taken from the
journal and running ones restart from their checkpoints. Each restart is
reported; their number is bounded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from . import launcher, output, procs
from .config import Config
from .hostfile import Host, hostfile_lines, parse_hostfile

log = logging.getLogger(__name__)

DONE_FILE = "done.json"
#: Seconds mpiexec may take to end once the job wrote done.json (it waits for as long as
#: TCP retransmits to a cut-off host's daemon). Main's output still on its way when it
#: is stopped is printed from what rank 0 kept (clustervm.output).
FINISH_GRACE_S = 3.0
#: PRRTE's daemon keepalive for multi-host jobs (the launcher adds it to every job
#: with a hostfile): a host whose link is cut ends the job after ~5 + 3 x 2 s
#: instead of the default 300 + 9 x 20 s.
KEEPALIVE_ARGS = list(launcher.FLAVORS["openmpi"].remote_args)


def write_done(directory: str, status: int) -> None:
    """Mark the job finished (written by the coordinator when main has ended)."""
    path = Path(directory) / DONE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "time": time.time()}))
    os.replace(tmp, path)


def read_done(directory: str) -> int | None:
    try:
        return int(json.loads((Path(directory) / DONE_FILE).read_text())["status"])
    except (OSError, ValueError, KeyError):
        return None


def probe_host(mpiexec: str, host: Host, extra: Sequence[str], env: dict,
               timeout: float) -> bool:
    """Does ``host`` still run a one-rank job (through the same launcher agent) within
    ``timeout`` seconds?"""
    argv = [mpiexec, *extra, "--host", f"{host.name}:1", "-n", "1", "true"]
    try:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError:
        return False
    try:
        return proc.wait(timeout=timeout) == 0
    except subprocess.TimeoutExpired:
        launcher._stop(proc, 1.0)
        procs.remove_stale_session_dirs([proc.pid], procs.session_base(env))  # if SIGKILLed
        return False


def probe_hosts(mpiexec: str, hosts: Sequence[Host], extra: Sequence[str],
                env: dict, timeout: float) -> list[Host]:
    """The hosts that answer within ``timeout`` s, probed at the same time (a dead one
    takes that long: CLUSTERVM_PROBE_TIMEOUT_S)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        answers = list(pool.map(lambda h: probe_host(mpiexec, h, extra, env, timeout), hosts))
    return [h for h, ok in zip(hosts, answers) if ok]


def supervise(n: int | None, app: str, app_args: Sequence[str], *, hostfile: str | None,
              mpiexec: str | None, config: Config, extra: Sequence[str], restarts: int,
              timeout: float | None) -> int:
    """Run the job, restarting it (at most ``restarts`` times) after a lost host."""
    own_dir = None
    if not config.checkpoint_dir:
        own_dir = tempfile.mkdtemp(prefix="clustervm-journal-")
        config = dataclasses.replace(config, checkpoint_dir=own_dir)
    Path(config.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    # as every host sees it: rank 0 says there when it is past MPI_Init, and keeps
    # main's output there
    job_dir = os.path.abspath(config.checkpoint_dir)
    done = Path(config.checkpoint_dir) / DONE_FILE
    done.unlink(missing_ok=True)
    hosts = parse_hostfile(hostfile) if hostfile else None
    extra = list(extra)
    deadline = None if timeout is None else time.monotonic() + timeout
    current = hostfile
    attempt = 0
    try:
        while True:
            argv, env = launcher.build_command(n, app, app_args, hostfile=current,
                                               mpiexec=mpiexec, config=config,
                                               extra_mpiexec_args=extra)
            left = None if deadline is None else max(1.0, deadline - time.monotonic())
            env[output.OUTPUT_DIR_ENV] = job_dir    # rank 0 keeps main's output there
            argv = launcher.exporting(argv, output.OUTPUT_DIR_ENV, job_dir)
            relays = {name: output.Relay(getattr(sys, name).buffer) for name in output.KEPT}
            rc = launcher.run(argv, env, left,
                              finished=lambda: read_done(config.checkpoint_dir) is not None,
                              finish_grace=FINISH_GRACE_S, relays=relays,
                              watch_start=launcher.watches_start(argv, current), ranks=n,
                              init_timeout=config.init_timeout_s,
                              marker_dir=job_dir)
            status = read_done(config.checkpoint_dir)
            if status is not None:
                output.recover(job_dir, relays)
                # main ended and its result is out: a host lost afterwards (mpiexec ends
                # non-zero once PRRTE notices its daemon gone) does not fail the job.
                if rc != 0 and status == 0:
                    print(f"clustervm: the job finished; mpiexec then ended with status {rc} "
                          f"(a rank or a host was lost during the job, which it survived)",
                          file=sys.stderr)
                return status
            if rc == launcher.TIMEOUT_STATUS or attempt >= restarts:
                if attempt >= restarts and restarts:
                    print(f"clustervm: the job did not finish after {attempt} restart(s); "
                          f"its journal is in {config.checkpoint_dir} (resume with --resume)",
                          file=sys.stderr)
                return rc if rc != 0 else 1
            attempt += 1
            lost: list[str] = []
            ended = time.monotonic()
            if hosts:
                alive = probe_hosts(argv[0], hosts, extra, env, config.probe_timeout_s)
                lost = [h.name for h in hosts if h not in alive]
                if not alive:
                    print("clustervm: no host of the hostfile answers; giving up", file=sys.stderr)
                    return rc if rc != 0 else 1
                hosts = alive
                current = _write_hostfile(alive, config.checkpoint_dir, attempt)
            print(f"clustervm: the job ended without finishing (mpiexec status {rc}); "
                  + (f"lost host(s): {', '.join(lost) or 'none (every host answers)'} "
                     f"(probed in {time.monotonic() - ended:.1f} s); " if hosts else "")
                  + f"restart {attempt} of "
                  f"{restarts} from the journal in {config.checkpoint_dir}"
                  + (f" on {', '.join(h.name for h in hosts)}" if hosts else ""),
                  file=sys.stderr, flush=True)
            config = dataclasses.replace(config, resume=True)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def _write_hostfile(hosts: list[Host], directory: str, attempt: int) -> str:
    path = Path(directory) / f"hostfile.restart{attempt}"
    path.write_text(hostfile_lines(hosts, "openmpi"))
    return str(path)
