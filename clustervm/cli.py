"""The ``clustervm`` command.

``clustervm run [options] app.py [args]``   launch a job with mpiexec
``clustervm info``                          what MPI is here and what it can do
``clustervm timeline FILE -o run.png``      draw a --trace file as a Gantt chart
``clustervm app.py [args]``                 run the app on this rank (what mpiexec starts)

Subcommands are registered in :data:`COMMANDS`: a name, a function that adds
its options to a parser, and a function that runs it.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

from .errors import ConfigError, HostfileError

if TYPE_CHECKING:
    import argparse

    from .config import Config

# argparse and the launcher's modules are imported where
# they are used: every rank runs `python -m clustervm app.py` through this module, and
# all of them start at once on few cores (only the launcher parses a command line).

log = logging.getLogger(__name__)

PROG = "clustervm"
#: Exit status for usage and configuration errors (as argparse).
USAGE_ERROR = 2


def _version() -> str:
    from . import __version__

    return __version__


# ------------------------------------------------------------------ run

def _positive_float(text: str) -> float:
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        import argparse
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
        return value
    return parse


def _log_level(text: str) -> str:
    import argparse
    name = text.upper()
    if not isinstance(logging.getLevelName(name), int):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a logging level; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return name


def _add_run(p: argparse.ArgumentParser) -> None:
    import argparse
    p.add_argument("-n", "--np", dest="n", type=_int_at_least(1), metavar="N",
                   help="number of ranks, coordinator included (default: every slot)")
    p.add_argument("--hostfile", metavar="FILE",
                   help="hosts to run on, in Open MPI or MPICH syntax (see hostfiles/)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the mpiexec command and its variables, run nothing")
    p.add_argument("--timeout", type=_positive_float, metavar="S",
                   help="stop the job after S seconds (exit status 124)")
    p.add_argument("--mpiexec", metavar="PATH",
                   help="mpiexec to use (default: $CLUSTERVM_MPIEXEC, this Python's, PATH's)")
    p.add_argument("--heartbeat", type=_positive_float, metavar="S",
                   help="declare a node dead after S seconds of silence")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="keep checkpoints and the job journal in DIR")
    p.add_argument("--resume", metavar="DIR",
                   help="resume the job journaled in DIR (sets --checkpoint-dir DIR)")
    p.add_argument("--resume-or-start", metavar="DIR",
                   help="resume the job journaled in DIR, or start it fresh there if DIR "
                        "holds no journal yet")
    p.add_argument("--replace-failed", action="store_true", default=None,
                   help="start a new node for each lost one")
    p.add_argument("--restarts", type=_int_at_least(0), metavar="K",
                   help="restart the job from its journal at most K times when it dies "
                        "(a lost host); default 2 with a multi-host hostfile, else 0")
    p.add_argument("--spares", type=_int_at_least(0), metavar="K",
                   help="hold K nodes back to take over for lost ones")
    p.add_argument("--slots", type=_int_at_least(1), metavar="K",
                   help="tasks one node runs at the same time")
    p.add_argument("--progress", action="store_true", default=None,
                   help="show a progress bar for vm.map")
    p.add_argument("--dashboard", metavar="[HOST:]PORT", help="serve the live dashboard")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace-event JSON file")
    p.add_argument("--log-level", type=_log_level, metavar="LEVEL",
                   help="logging level of every rank (and of this launcher)")
    p.add_argument("--pickle", action="store_true", default=None,
                   help="allow pickle on the wire for objects msgpack cannot carry")
    p.add_argument("--mpi-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to mpiexec (split like a shell; repeatable), "
                        "e.g. --mpi-arg='--map-by ppr:2:node'")
    p.add_argument("app", help="the program (a Python file with main(vm))")
    p.add_argument("app_args", nargs=argparse.REMAINDER, help="arguments for the program")


def _check_dashboard(value: str) -> None:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--dashboard {value!r}: give [HOST:]PORT with PORT 0-65535 (0: any "
                          f"free port), e.g. --dashboard 8787 or --dashboard 0.0.0.0:8787")


def config_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> Config:
    """The job's Config: CLUSTERVM_* variables, overridden by the options given."""
    from .config import Config
    changes: dict[str, object] = {
        "heartbeat_s": args.heartbeat,
        "checkpoint_dir": args.checkpoint_dir,
        "replace_failed": args.replace_failed,
        "spares": args.spares,
        "slots": args.slots,
        "progress": args.progress,
        "dashboard": args.dashboard,
        "trace": args.trace,
        "log_level": args.log_level,
        "pickle": args.pickle,
    }
    resume = args.resume
    if getattr(args, "resume_or_start", None) is not None:
        if resume is not None:
            raise ConfigError("give --resume DIR or --resume-or-start DIR, not both")
        resume = args.resume_or_start
    if resume is not None:
        if args.checkpoint_dir is not None and args.checkpoint_dir != resume:
            raise ConfigError(f"--resume {resume} and --checkpoint-dir "
                              f"{args.checkpoint_dir} differ; give only --resume DIR")
        changes["checkpoint_dir"] = resume
        changes["resume"] = True
    if args.dashboard is not None:
        _check_dashboard(args.dashboard)
    given = {k: v for k, v in changes.items() if v is not None}
    return Config.from_env(env).replace(**given)


def _cmd_run(args: argparse.Namespace) -> int:
    import shlex

    from . import launcher

    config = config_from_args(args)
    or_start = getattr(args, "resume_or_start", None) is not None
    if config.resume and not or_start and not os.path.isdir(config.checkpoint_dir):
        raise ConfigError(f"--resume {config.checkpoint_dir}: no such directory; give the "
                          f"checkpoint directory of the job to resume")
    if not args.dry_run:
        config = _preflight(args.app, config, or_start)
    extra = [a for arg in args.mpi_arg for a in shlex.split(arg)]
    argv, env = launcher.build_command(args.n, args.app, args.app_args, hostfile=args.hostfile,
                                       mpiexec=args.mpiexec, config=config,
                                       extra_mpiexec_args=extra)
    if args.dry_run:
        print(launcher.format_command(argv, env))
        return 0
    log.info("running %s", launcher.format_command(argv, env))
    from .status import use_terminal
    env = use_terminal(env)   # rank 0 draws the live status line on our terminal, if it is one
    restarts = args.restarts
    if restarts is None:
        restarts = DEFAULT_HOST_RESTARTS if _multi_host(args.hostfile) else 0
    if not restarts:
        # every rank on this host: a rank lost inside MPI_Init is survived by a new start
        return launcher.run(argv, env, args.timeout,
                            watch_start=launcher.watches_start(argv, args.hostfile),
                            watch_end=launcher.watches_end(args.hostfile), ranks=args.n,
                            init_timeout=config.init_timeout_s)
    from .supervisor import supervise
    return supervise(args.n, args.app, args.app_args, hostfile=args.hostfile,
                     mpiexec=args.mpiexec, config=config, extra=extra, restarts=restarts,
                     timeout=args.timeout)


def _preflight(app: str, config: Config, or_start: bool) -> Config:
    """Check before mpiexec starts what can fail the job's start (see preflight.py)."""
    from . import preflight

    preflight.check_app(app)
    if config.checkpoint_dir:
        if config.resume and not preflight.check_resume(config.checkpoint_dir, or_start):
            print(f"{PROG}: no journal in {config.checkpoint_dir} yet: starting the job fresh "
                  f"(--resume-or-start)", file=sys.stderr)
            config = config.replace(resume=False)
        preflight.check_checkpoint_dir(config.checkpoint_dir)
    return config


#: Restarts after a lost host when the job spans several hosts (--restarts overrides).
DEFAULT_HOST_RESTARTS = 2


def _multi_host(hostfile: str | None) -> bool:
    if hostfile is None:
        return False
    from .hostfile import parse_hostfile
    return len({h.name for h in parse_hostfile(hostfile)}) > 1


# ----------------------------------------------------------------- info

def _add_info(p: argparse.ArgumentParser) -> None:
    pass


def _cmd_info(args: argparse.Namespace) -> int:
    from . import launcher

    info = launcher.mpi_info()
    print(f"clustervm: {_version()}")
    for key, value in info.items():
        print(f"{key}: {value}")
    return 1 if info["mpiexec"] == "not found" or "not loadable" in info["library"] else 0


# ------------------------------------------------------------- timeline

def _add_timeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", metavar="FILE", help="a trace written by `clustervm run --trace FILE`")
    p.add_argument("-o", "--output", metavar="PNG",
                   help="image to write (default: FILE with .png; .svg and .pdf work too)")
    p.add_argument("--title", help="title of the chart (default: a summary of the run)")
    p.add_argument("--width", type=_positive_float, default=12.0, metavar="INCHES",
                   help="width of the chart (default 12)")


def _cmd_timeline(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"{PROG}: error: timeline needs matplotlib; install it with "
              f"`pip install 'clustervm[viz]'` (or `pip install matplotlib`)", file=sys.stderr)
        return 1
    from .trace import draw_timeline

    out = args.output or os.path.splitext(args.trace)[0] + ".png"
    try:
        summary = draw_timeline(args.trace, out, title=args.title, width=args.width)
    except (OSError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(f"{out}: {summary['runs']} task runs on {summary['nodes']} node(s), "
          f"{summary['nodes_lost']} lost, {summary['reruns']} re-run(s), "
          f"{summary['failed']} failed")
    return 0


# ------------------------------------------------------------- registry

class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    #: Ends with "app [app args...]": everything after the app goes to it untouched.
    takes_app: bool = False


#: Subcommands by name; add new ones here.
COMMANDS: dict[str, Command] = {
    "run": Command("launch a job: mpiexec ... python -m clustervm app.py", _add_run, _cmd_run,
                   takes_app=True),
    "info": Command("show the MPI library, ULFM, thread level and mpiexec", _add_info, _cmd_info),
    "timeline": Command("draw a --trace file as a Gantt chart of nodes x time (PNG)",
                        _add_timeline, _cmd_timeline),
}


def make_parser(only: str | None = None
                ) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and the parser of each subcommand; with ``only``, the options
    of that subcommand alone are added (the others are listed, not built: argparse
    costs ~0.1 ms an option, at the start of every job)."""
    import argparse
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A PVM-style cluster virtual machine on MPI.",
        epilog=f"'{PROG} app.py [args]' (no subcommand) runs the app on this rank; "
               f"that is what mpiexec starts on every rank.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}
    for name, cmd in COMMANDS.items():
        subs[name] = sub.add_parser(name, help=cmd.help, description=cmd.help, allow_abbrev=False)
        if only is None or name == only:
            cmd.add_arguments(subs[name])
    return parser, subs


def _split_at_app(parser: argparse.ArgumentParser,
                  tokens: list[str]) -> tuple[list[str], list[str]]:
    """Split ``[options] app [app args]`` after the app, leaving the app's args untouched.

    argparse's REMAINDER would drop a '--' meant for the app, and argparse takes
    "--mpi-arg --display-map" for two options: the head comes back with
    "--opt VALUE" joined as "--opt=VALUE".
    """
    options = parser._option_string_actions  # noqa: SLF001 - which options take a value
    head: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            return head + tokens[i:i + 2], tokens[i + 2:]
        if not tok.startswith("-") or tok == "-":
            return head + [tok], tokens[i + 1:]
        action = options.get(tok)
        if action is not None and action.nargs != 0 and i + 1 < len(tokens):
            # "--opt VALUE" or "-n VALUE" (not "--opt=VALUE" or "-n4")
            head.append(f"{tok}={tokens[i + 1]}" if tok.startswith("--") else tok)
            if not tok.startswith("--"):
                head.append(tokens[i + 1])
            i += 2
            continue
        head.append(tok)
        i += 1
    return head, []


def _setup_logging(name: str) -> None:
    level = logging.getLevelName(name.upper())
    logging.basicConfig(level=level if isinstance(level, int) else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s")


#: Set in every rank by the launchers clustervm knows (Open MPI, MPICH's Hydra, Slurm,
#: Cray PALS): an app started without any of them runs alone (an MPI "singleton").
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
                  "SLURM_STEP_ID", "MPI_LOCALNRANKS", "PALS_RANKID")


def _run_app(path: str, args: list[str]) -> int:
    if not os.path.isfile(path) and not any(v in os.environ for v in _LAUNCHER_VARS):
        # typed in a shell, most likely: say so without starting MPI (under a launcher,
        # rank 0 says it once, after MPI_Init)
        print(f"{PROG}: error: {path!r} is neither a command ({', '.join(COMMANDS)}) nor an "
              f"application file; run an app with `{PROG} run -n 3 app.py`", file=sys.stderr)
        return USAGE_ERROR
    if "SLURM_STEP_ID" in os.environ:   # started by srun (only then is the module needed)
        from .slurm import direct_launch_error
        problem = direct_launch_error()   # srun without a PMI: every task would run alone
        if problem:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
            return USAGE_ERROR
    try:
        from .runtime import run_app
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.runtime":
            raise
        print(f"{PROG}: error: this clustervm has no runtime module; reinstall clustervm",
              file=sys.stderr)
        return USAGE_ERROR
    return run_app(path, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clustervm`` and ``python -m clustervm``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        return _run_app(argv[0], argv[1:])

    parser, subs = make_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    tail: list[str] = []
    if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].takes_app:
        head, tail = _split_at_app(subs[argv[0]], argv[1:])
        argv = [argv[0], *head]
    args = parser.parse_args(argv)
    if tail:
        args.app_args = tail
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: give a command ({', '.join(COMMANDS)}) or an app.py to run",
              file=sys.stderr)
        return USAGE_ERROR
    _setup_logging(getattr(args, "log_level", None)
                   or os.environ.get("CLUSTERVM_LOG_LEVEL") or "WARNING")
    try:
        return COMMANDS[args.command].run(args)
    except (ConfigError, HostfileError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
