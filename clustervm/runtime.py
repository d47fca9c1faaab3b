"""Starting a job on every rank: load the app, then coordinate (rank 0) or serve (others).

Convention: the application is a Python file that defines ``main(vm)``.
``python -m clustervm app.py args...`` (what ``clustervm run`` launches under
mpiexec) imports it on every rank as the module ``__clustervm_app__`` (so its
functions travel by reference), runs ``main(vm)`` on rank 0 with
``sys.argv == [app.py, *args]``, and runs the node loop on the other ranks.
A script may also call :func:`clustervm.run(main) <run>` itself and be started
with ``mpiexec -n N python app.py``.
"""
from __future__ import annotations

import ctypes
import faulthandler
import importlib.util
import logging
import os
import signal
import sys
import threading
import traceback
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from . import procs, threadpools
from .config import Config
from .errors import ClusterVMError

if TYPE_CHECKING:
    from .coordinator import Coordinator
    from .endpoint import Endpoint
    from .node import Node

log = logging.getLogger("clustervm")
APP_MODULE = "__clustervm_app__"
COORDINATOR_LOST = 3   # exit status of nodes whose coordinator died (resume with --resume)


def setup_logging(level: str, rank: int, host: str) -> None:
    fmt = f"%(asctime)s %(levelname)s rank {rank}@{host} %(name)s: %(message)s"
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
    try:
        logging.getLogger("clustervm").setLevel(level.upper())
    except ValueError:
        logging.getLogger("clustervm").setLevel(logging.WARNING)
        log.warning("CLUSTERVM_LOG_LEVEL=%r is not a logging level; using WARNING", level)


def _missing_app(path: str) -> str:
    return (f"application file {path!r} not found; give the path of a Python file that "
            f"defines main(vm)")


def load_app(path: str) -> ModuleType:
    """Import the application file as module ``__clustervm_app__`` (same on every rank)."""
    if not os.path.isfile(path):
        raise ClusterVMError(_missing_app(path))
    path = os.path.abspath(path)
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(APP_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[APP_MODULE] = module
    spec.loader.exec_module(module)
    return module


def run_app(path: str, args: list[str]) -> int:
    """Entry point of ``python -m clustervm app.py args...`` on every rank."""
    sys.argv = [path, *args]
    faulthandler.register(signal.SIGUSR1, all_threads=True)   # stacks on demand
    try:
        config = Config.from_env()
    except ClusterVMError as exc:
        print(f"clustervm: error: {exc}", file=sys.stderr)
        return _exit(2)
    threadpools.size_pools()        # before anything imports numpy (the app, as a rule)
    _import_role()
    shm_before = procs.shm_files()
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    if MPI.COMM_WORLD.Get_size() == 1 and MPI.Comm.Get_parent() == MPI.COMM_NULL:
        # alone (`clustervm app.py` typed without a launcher, as a rule): Open MPI 5 leaves
        # this process's 16 MiB shared-memory segment behind even after MPI_Finalize
        global _own_shm_before
        _own_shm_before = shm_before
    _leave_with_launcher()
    _mark_started(MPI, rank)
    from .site import hostname
    setup_logging(config.log_level, rank, hostname())
    if not os.path.isfile(path):    # no traceback to show (load_app's own check)
        if rank == 0:
            print(f"clustervm: error: {_missing_app(path)}", file=sys.stderr)
        return _fail_start(1, rank)
    try:
        module = load_app(path)
    except BaseException as exc:   # noqa: BLE001 - the app cannot be loaded on this rank
        if rank == 0:
            traceback.print_exc()
            print(f"clustervm: error: cannot load {path}: {type(exc).__name__}: {exc}; fix the "
                  f"error above and run the job again", file=sys.stderr)
        return _fail_start(1, rank)
    main = getattr(module, "main", None)
    if not callable(main):
        # every rank loaded the same file, so every rank knows: all leave at once
        if rank == 0:
            print(f"clustervm: error: {path} defines no main(vm) function; add "
                  f"`def main(vm): ...` (it runs on the coordinator)", file=sys.stderr)
        return _fail_start(2, rank)
    return _exit(_start_or_fail(main, config, [path, *args]))


def _import_role() -> None:
    """Import this rank's side of the VM (the coordinator's or a node's) before MPI_Init.

    The launcher starts rank 0 first and the ranks meet in MPI_Init, where the first
    ones wait for the last: rank 0 spent that wait idle, then built the coordinator
    alone while every node waited for it (measured: 30 ms of CPU with bytecode
    cached, 90 ms without, on the start's critical path). Imported here, that work
    is done while the other ranks still start, on cores they share. The rank comes
    from the launcher's environment; without one, nothing is imported early."""
    from .procs import world_rank
    rank = world_rank([f"{k}={v}".encode() for k, v in os.environ.items()
                       if k in ("PMIX_NAMESPACE", "OMPI_COMM_WORLD_RANK", "PMI_RANK")])
    if rank == 0:
        from . import coordinator, vm   # noqa: F401 - loaded now, used after MPI_Init
    elif rank is not None:
        from . import node   # noqa: F401


def run(main: Callable, argv: list[str] | None = None) -> None:
    """Run ``main(vm)`` as a clustervm job from a script started by mpiexec; never returns."""
    config = Config.from_env()
    from mpi4py import MPI
    from .site import hostname
    _leave_with_launcher()
    _mark_started(MPI, MPI.COMM_WORLD.Get_rank())
    setup_logging(config.log_level, MPI.COMM_WORLD.Get_rank(), hostname())
    _exit(_start_or_fail(main, config, list(sys.argv if argv is None else argv)))


def _start_or_fail(main: Callable, config: Config, argv: list[str]) -> int:
    """:func:`start`, with any exception that escapes it ending this rank at once (never
    an interpreter exit that would wait in MPI_Finalize for ranks that are not there)."""
    try:
        return start(main, config, argv)
    except BaseException as exc:   # noqa: BLE001
        traceback.print_exc()
        print(f"clustervm: error: rank failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        _note_failures(True)
        return 1


def _leave_with_launcher() -> None:
    """No rank outlives its job: when the process that started this rank (mpiexec, or its
    daemon on this host) ends, the kernel ends this rank too. Measured with Open MPI 5 +
    ULFM: after the nodes of a job exited non-zero, mpiexec returned and a rank 0 stuck
    in the app's import lived on, re-parented to init."""
    if os.environ.get("CLUSTERVM_KEEP_ORPHANS"):
        return
    from . import procs
    if not procs.die_with_parent(signal.SIGKILL):
        log.debug("cannot tie this rank's life to its launcher's")


def _mark_started(MPI, rank: int) -> None:
    """Rank 0 of a job the launcher watches, just past MPI_Init: say so (the launcher
    stops a job whose rank 0 is not past it within CLUSTERVM_INIT_TIMEOUT_S), and
    remember the start marker, written by :func:`mark_started` once every node is known
    to be past MPI_Init."""
    global _marker, _watched
    if rank != 0 or MPI.Comm.Get_parent() != MPI.COMM_NULL:
        return
    init = os.environ.get("CLUSTERVM_INIT_FILE")
    if init:
        _write_marker(init, "")
    token = os.environ.get("CLUSTERVM_INIT_TOKEN")
    if token:           # a line of its own, which the launcher's relay takes out
        try:
            os.write(2, f"{token}\n".encode())
        except OSError:
            log.debug("cannot say on stderr that rank 0 is past MPI_Init")
    kept = os.environ.get("CLUSTERVM_OUTPUT_DIR")
    if kept:
        from . import output
        output.keep(kept)
    path = os.environ.get("CLUSTERVM_STARTED_FILE")
    if path:
        _marker = path
        _watched = os.environ.get("CLUSTERVM_START_WATCHED") == "1"


def lose_start(reason: str) -> bool:
    """A rank was lost before ``main`` ran, in a start the launcher watches: leave word
    for it (it starts the job again, as for a loss inside MPI_Init) and write no start
    marker or status on the way out. False when no launcher watches this start (its
    last attempt, MPICH, ranks on other hosts): the VM goes on without the node."""
    global _marker
    if not _watched or _started:
        return False
    _write_marker(_marker + ".lost", reason)
    _marker = ""
    return True


def mark_started() -> None:
    """Tell the launcher that the start is over: it starts the job again if a rank is
    lost before this. Called when every node has said hello (each is past MPI_Init),
    before ``main`` runs, and on any way out. Rank 0 being past MPI_Init is not
    enough: measured (soak, seed 77), a rank killed while another was still in
    MPI_Init crashed that one, after rank 0's marker, and the job was lost."""
    global _started
    if _marker and not _started:
        _started = True
        _write_marker(_marker, "")


def _write_marker(path: str, text: str) -> None:
    try:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        log.debug("cannot write the marker %s: %s", path, exc)


def start(main: Callable | None, config: Config, argv: list[str]) -> int:
    """Build the VM on this rank and run its role; returns the exit status."""
    from mpi4py import MPI
    from .transport import Transport
    _hydra_signals(MPI)
    parent = MPI.Comm.Get_parent()
    if parent != MPI.COMM_NULL:
        return _serve_spawned(parent, config)
    world = MPI.COMM_WORLD
    if world.Get_size() < 2:
        print("clustervm: error: a VM needs at least 2 ranks (a coordinator and one node); "
              "run with `clustervm run -n 2` or more", file=sys.stderr)
        return 2
    # COMM_WORLD itself, not a Dup: a collective at start would fail the whole
    # job if a rank died during it. Our tags (1, and >= 2**16 for buffers) are ours.
    comm = world
    transport = Transport(comm, spin_ms=config.spin_ms, idle_sleep_ms=config.idle_sleep_ms,
                          deep_idle_sleep_ms=deep_idle_sleep_ms(config),
                          allow_pickle=config.pickle, doorbell=config.doorbell)
    if transport.rank != 0:
        return _serve(transport, config)
    from .coordinator import Coordinator
    try:
        coord = Coordinator(transport, config)
        coord.spawn_command = _spawn_command(argv)
    except BaseException as exc:   # noqa: BLE001 - a failed start ends the whole job now
        return _abort_start(transport, exc)
    return coordinate(coord, main, argv)


def deep_idle_sleep_ms(config: Config) -> float:
    """The longest sleep of a rank in deep idle: CLUSTERVM_DEEP_IDLE_SLEEP_MS, but at most an
    eighth of the heartbeat period. A node in deep idle ticks (and so beats) that often,
    and the coordinator checks the heartbeats and polls MPI for failures that often: a
    beat is at most 3/8 of the period apart, and a dead node is noticed at most 1/8 of
    the period later than when the transport is busy."""
    return min(config.deep_idle_sleep_ms, config.heartbeat_s * 1000.0 / 8)


def coordinate(coord: "Coordinator", main: Callable | None, argv: list[str]) -> int:
    """Rank 0 on any transport: run ``main(vm)`` in the calling thread with the service
    loop beside it, then shut the VM down; returns the exit status. A VM that cannot
    start tells every node to leave (status 2)."""
    from . import current
    from .vm import VM
    transport, config = coord.transport, coord.config
    try:
        tls = current._tls
        tls.site, tls.tid, tls.ctx, tls.parent = coord, coord.main_ctx.tid, coord.main_ctx, None
        vm = VM(coord, argv)
        coord.wait_for_nodes(config.start_timeout_s)
    except BaseException as exc:   # noqa: BLE001 - a failed start ends the whole job now
        return _abort_start(transport, exc)
    lost = sorted(r for r, n in coord.nodes.items() if n.state == "dead")
    if lost and lose_start(f"node(s) {', '.join(map(str, lost))} lost"):
        return _end_start(transport, 1)     # the launcher starts the job again
    mark_started()
    service = threading.Thread(target=coord.service_loop, name="cvm-service", daemon=True)
    service.start()
    extras = _start_extras(coord, config)
    code = 0
    try:
        assert main is not None
        main(vm)
        vm.warn_unwaited()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:   # noqa: BLE001 - main failed: the job fails, cleanly
        traceback.print_exc()
        code = 1
    finally:
        coord.shutdown()
        transport.notify_background()   # the service loop may sleep up to deep_idle_sleep_ms
        service.join(2.0)   # it sends (heartbeats) without the poller token: out before Finalize
        transport.close()
        _note_failures(transport.failed or transport.links)
        for stop in extras:
            stop()
        lost = any(n.state == "dead" for n in coord.nodes.values())
        if config.report == "always" or (config.report == "auto" and
                                         (lost or coord.stats["rerun"] or config.resume)):
            print(coord.report(), file=sys.stderr, flush=True)
        if config.checkpoint_dir:
            from .output import sync_kept
            from .supervisor import write_done
            # done.json says the result is out: main's output must not wait in our
            # buffer (a pipe to Open MPI's daemon) when a lost host makes PRRTE end
            # the job, or the supervisor stops it, right after (seen in CI); what is
            # still on its way then, the supervisor prints from what rank 0 kept
            sync_kept()
            write_done(config.checkpoint_dir, code)
    return code


def _serve(transport: "Endpoint", config: Config) -> int:
    """A worker rank: run the node loop until the coordinator says shut down."""
    from .node import Node
    return serve_node(Node(transport, config))


def serve_node(node: "Node") -> int:
    """Run a node's loop in the calling thread (on any transport) until the coordinator
    says shut down or is lost; returns the rank's exit status."""
    from . import current
    transport = node.transport
    current._tls.site = node
    try:
        node.serve()
    except BaseException:   # noqa: BLE001 - a node never exits non-zero by itself
        log.exception("node %d failed; leaving the VM", transport.rank)
    transport.close()
    if not transport.spawned:
        # a spawned node always finalizes: Open MPI counts one that does not as an
        # abnormal end and fails the job (measured); its own MPI_Finalize waits on nobody
        _note_failures(transport.failed or node.failures_seen or node.coordinator_lost)
    # the job is over without its coordinator: say so with a status mpiexec passes on
    return COORDINATOR_LOST if node.coordinator_lost else 0


def _serve_spawned(parent, config: Config) -> int:
    """A node started by the coordinator with MPI_Comm_spawn (a replacement, or added)."""
    from .site import hostname
    from .transport import Transport
    try:
        init = Transport.spawned_init(parent)
    except Exception:   # noqa: BLE001 - the coordinator died before it told us who we are
        log.exception("spawned node: no word from the coordinator; leaving")
        return 0
    rank = int(init["rank"])
    os.environ.update(init.get("env", {}))
    config = Config.from_env()
    logging.getLogger().handlers.clear()
    setup_logging(config.log_level, rank, hostname())
    transport = Transport(parent, spin_ms=config.spin_ms, idle_sleep_ms=config.idle_sleep_ms,
                          deep_idle_sleep_ms=deep_idle_sleep_ms(config),
                          allow_pickle=config.pickle, rank=rank)
    log.info("spawned node %d joins the VM", rank)
    return _serve(transport, config)


def _spawn_command(argv: list[str]) -> list[str]:
    """The arguments that start this program again on a spawned node."""
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None and main.__spec__.name.startswith("clustervm"):
        return ["-m", "clustervm", *argv]          # python -m clustervm app.py ...
    return list(argv)                               # a script that calls clustervm.run(main)


def _hydra_signals(MPI) -> None:
    """MPICH's mpiexec (Hydra) with -disable-auto-cleanup sends SIGUSR1 to the other ranks
    of a host when one ends, killed or not. Its default action, or a handler set before
    MPI_Init (our stack dumper), ends them: measured with MPICH 5.0.2, docs/mpis.md. So
    with an MPICH-family library SIGUSR1 is ignored (after MPI_Init) and the stacks on
    demand move to SIGUSR2. Failures are found by heartbeats there anyway."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        library = MPI.Get_library_version()
    except Exception:   # noqa: BLE001
        return
    if not any(name in library for name in ("MPICH", "MVAPICH", "Intel(R) MPI")):
        return
    faulthandler.unregister(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    faulthandler.register(signal.SIGUSR2, all_threads=True)


def _start_extras(coord, config: Config) -> list[Callable[[], None]]:
    """Optional observers (trace file, dashboard); each returns its stop function."""
    stops: list[Callable[[], None]] = []
    if config.trace:
        from .trace import Tracer
        stops.append(Tracer.attach(coord, config.trace))
    if config.dashboard:
        from .dashboard import serve
        stops.append(serve(coord, config.dashboard))
    from . import status
    stop_status = status.start(coord, config)   # only on a terminal (see status.py)
    if stop_status is not None:
        stops.append(stop_status)
    return stops


def _abort_start(transport, exc: BaseException) -> int:
    """Rank 0 could not start the VM: say why in one line, tell every node to leave, and
    end without MPI_Finalize (a non-zero exit makes mpiexec end the other ranks too)."""
    if isinstance(exc, ClusterVMError):
        print(f"clustervm: error: {exc}", file=sys.stderr, flush=True)
    else:
        traceback.print_exc()
        print(f"clustervm: error: the coordinator failed to start: {type(exc).__name__}: "
              f"{exc}", file=sys.stderr, flush=True)
    return _end_start(transport, 2)


def _end_start(transport, code: int) -> int:
    """Rank 0 ends a start (failed, or lost: :func:`lose_start`): every node leaves, and
    so does this rank, with ``code`` and without MPI_Finalize."""
    from . import protocol as P
    for rank in range(1, transport.size):
        transport.post(rank, P.Shutdown(True).encode())
    transport.flush(1.0)
    transport.closed = True
    _note_failures(True)
    return code


#: Seconds the other ranks give rank 0 to say why a start failed before they end: the
#: first rank to exit non-zero makes mpiexec kill the rest, rank 0 mid-sentence included.
_FAIL_START_GRACE_S = 2.0


def _fail_start(code: int, rank: int) -> int:
    """Leave at once, before any node loop ran: no MPI_Finalize (the other ranks may never
    reach it), a non-zero status that makes mpiexec end the job."""
    _note_failures(True)
    if rank != 0:
        import time
        time.sleep(_FAIL_START_GRACE_S)
    return _exit(code)


_FINALIZE_S = 3.0
_marker = ""      # rank 0: the launcher's start marker (its ".done" gets the exit status)
_started = False  # the marker is written
_watched = False  # the launcher watches this start (and starts the job again on a loss)
_clean = True     # no failure seen: MPI_Finalize is safe (it can hang after failures)
_own_shm_before: set[str] | None = None   # a one-rank job: /dev/shm before MPI_Init


def _note_failures(failed: object) -> None:
    global _clean
    if failed:
        _clean = False


def _exit(code: int) -> int:
    """Leave the job: MPI_Finalize under a watchdog, then ``os._exit``.

    After failures MPI_Finalize can hang (DESIGN.md, two lost hosts); the
    watchdog ends the process with the same status after a few seconds, which
    mpiexec accepts. ``os._exit`` also skips interpreter teardown while task
    threads may still run.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        if _marker:    # the result is out: the launcher need not wait for stragglers
            mark_started()
            _write_marker(_marker + ".done", str(code))
        if "mpi4py.MPI" in sys.modules and _clean:
            from mpi4py import MPI
            if MPI.Is_initialized() and not MPI.Is_finalized():
                timer = threading.Timer(_FINALIZE_S, os._exit, (code,))
                timer.daemon = True
                timer.start()
                _finalize(MPI)
        if _own_shm_before is not None:
            procs.remove_stale_shm(_own_shm_before, ours=True)
    finally:
        os._exit(code)


def _finalize(MPI: Any) -> None:
    """MPI_Finalize with the GIL released, so that the watchdog thread can run.

    mpi4py's ``MPI.Finalize()`` keeps the GIL while it blocks (measured with MPICH: a
    peer that ended without finalizing left every other rank in the PMI barrier of
    MPI_Finalize, watchdog and all, until the job's timeout). Called through ctypes
    (which lets go of the GIL), the same call is ended by the watchdog on time.
    """
    try:
        call = ctypes.CDLL(MPI.__file__).MPI_Finalize   # libmpi is a dependency of it
    except (OSError, AttributeError):
        MPI.Finalize()
        return
    call.restype = ctypes.c_int
    call.argtypes = []
    call()
