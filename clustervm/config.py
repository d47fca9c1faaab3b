"""Configuration: one typed object, read from CLUSTERVM_* variables.

``clustervm run`` turns its options into these variables, so a job launched by
``mpiexec ... python -m clustervm app.py`` sees the same settings on every rank.
Each field documents its variable, type and default (kept in sync with the
README by ``tests/test_config.py``).

:class:`Config` behaves as a frozen dataclass (``dataclasses.fields``,
``dataclasses.replace``, ``==``, ``hash``, ``repr`` all work) without importing
``dataclasses`` here: that module loads ``inspect`` (and ``ast``, ``dis``,
``tokenize``), 7-9 ms of CPU in each of the launcher and every node, which all start
at once on few cores. :data:`FIELDS`, :meth:`Config.replace` and :meth:`Config.defaults`
serve this package's own needs.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, TypeVar

from .errors import ConfigError

_T = TypeVar("_T")


class _DataclassFields:
    """``Config.__dataclass_fields__``, built (importing ``dataclasses``) on first use:
    what ``dataclasses.fields``/``replace``/``is_dataclass`` look for."""

    def __get__(self, obj: Any, cls: type) -> dict[str, Any]:
        import dataclasses
        out = {}
        for name, default in cls._defaults.items():   # noqa: SLF001
            f = dataclasses.field(default=default)
            f.name, f.type = name, cls.__annotations__[name]
            f._field_type = dataclasses._FIELD   # noqa: SLF001 - a plain field, as @dataclass makes
            out[name] = f
        type.__setattr__(cls, "__dataclass_fields__", out)   # once: a plain attribute now
        return out


def _frozen_fields(cls: type[_T]) -> type[_T]:
    """Make ``cls`` a frozen record of its annotated fields with defaults (see module)."""
    names = tuple(n for n in cls.__annotations__ if not n.startswith("_"))
    defaults = {n: cls.__dict__[n] for n in names}
    params = ", ".join(f"{n}=_d[{n!r}]" for n in names)
    body = "".join(f" _set(self, {n!r}, {n})\n" for n in names)
    scope: dict[str, Any] = {"_set": object.__setattr__, "_d": defaults}
    exec(f"def __init__(self, {params}):\n{body}", scope)   # noqa: S102 - our own fields
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init   # type: ignore[misc]
    cls._fields = names   # type: ignore[attr-defined]
    cls._defaults = defaults   # type: ignore[attr-defined]
    cls.__dataclass_fields__ = _DataclassFields()   # type: ignore[attr-defined]
    cls.__match_args__ = names   # type: ignore[attr-defined]
    return cls


def _frozen_error(name: str) -> AttributeError:
    import dataclasses
    return dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


@_frozen_fields
class Config:
    #: CLUSTERVM_HEARTBEAT_S: seconds of silence after which a node is declared dead.
    heartbeat_s: float = 2.0
    #: CLUSTERVM_CHECKPOINT_DIR: directory for checkpoints and the job journal ('' = memory only).
    checkpoint_dir: str = ""
    #: CLUSTERVM_CHECKPOINT_DISK_S: with checkpoint_dir, the shortest time between two disk copies of one task's checkpoints, in seconds (the ones between stay in memory on two nodes; 0: every one).
    checkpoint_disk_s: float = 0.0
    #: CLUSTERVM_CHECKPOINT_GROUP_DISK_S: with checkpoint_dir, the shortest time between two epochs of a checkpoint group that go to disk, in seconds (every epoch is held in memory on two nodes; 0: every one).
    checkpoint_group_disk_s: float = 0.25
    #: CLUSTERVM_CHECKPOINT_SYNC_S: with checkpoint_dir, how often what was written there is synced to the disk, in seconds: a power cut of rank 0's machine goes back at most about that far (a killed job: not at all); 0: every checkpoint is synced before it counts (slower).
    checkpoint_sync_s: float = 0.5
    #: CLUSTERVM_NODE_FILES: with checkpoint_dir, nodes that see the directory write their tasks' checkpoints there themselves, rank 0 not told of each (1/0; 0: every one goes to the coordinator, which writes it).
    node_files: bool = True
    #: CLUSTERVM_SHM_COPIES: a checkpoint's copy for a buddy node on the same host goes through a file in /dev/shm that the buddy reads only to restore, not over MPI (1/0; 0: every copy over MPI).
    shm_copies: bool = True
    #: CLUSTERVM_RESUME: resume the job journaled in checkpoint_dir (1/0).
    resume: bool = False
    #: CLUSTERVM_SLOTS: tasks run at the same time by one node.
    slots: int = 1
    #: CLUSTERVM_PREFETCH: extra tasks queued on a node so the next is there when one ends.
    prefetch: int = 4
    #: CLUSTERVM_PICKLE: allow pickle on the wire for objects msgpack cannot carry (1/0).
    pickle: bool = False
    #: CLUSTERVM_REPLACE_FAILED: start a new node (MPI Comm_spawn) for each lost one (1/0).
    replace_failed: bool = False
    #: CLUSTERVM_SPARES: nodes held back at start to take over for lost ones.
    spares: int = 0
    #: CLUSTERVM_AUTO_FREEZE: a hub group whose members (one a rank) made this many collective calls in a row together, membership unchanged, moves onto MPI by itself, member to member, as with freeze_group (0: never); a join, leave or end takes it back to the coordinator first.
    auto_freeze: int = 16
    #: CLUSTERVM_PROGRESS: show a progress bar for vm.map (1/0).
    progress: bool = False
    #: CLUSTERVM_DASHBOARD: [HOST:]PORT to serve the live dashboard on ('' = off).
    dashboard: str = ""
    #: CLUSTERVM_TRACE: file to write a Chrome trace-event JSON to ('' = off).
    trace: str = ""
    #: CLUSTERVM_LOG_LEVEL: logging level name for every rank.
    log_level: str = "WARNING"
    #: CLUSTERVM_SPIN_MS: milliseconds a waiting loop polls MPI after the last message before it backs off.
    spin_ms: float = 5.0
    #: CLUSTERVM_IDLE_SLEEP_MS: longest sleep between polls of an idle loop, in milliseconds.
    idle_sleep_ms: float = 10.0
    #: CLUSTERVM_DEEP_IDLE_SLEEP_MS: longest sleep between background polls of a rank without traffic for a quarter second, in milliseconds (at most heartbeat_s / 8).
    deep_idle_sleep_ms: float = 250.0
    #: CLUSTERVM_DOORBELL: ranks wake each other's idle pollers with a datagram when a message comes after a quiet spell (on one host over Linux's abstract sockets, across hosts over UDP), instead of waiting for their next poll (up to deep_idle_sleep_ms) (1/0).
    doorbell: bool = True
    #: CLUSTERVM_REPLAY_LOG_MB: megabytes of messages kept per receiver for replay after a failover.
    replay_log_mb: float = 256.0
    #: CLUSTERVM_REPORT: print the end-of-job report: 'auto' (after failures), 'always', 'never'.
    report: str = "auto"
    #: CLUSTERVM_MAX_CHUNK_BYTES: largest single MPI message; bigger buffers are sent in chunks (1 to 2**31-1).
    #: 16 MiB: the receiver's poller is back between chunks (it beats, it takes other
    #: frames); one 200 MB message into new memory kept a node silent past its heartbeat.
    max_chunk_bytes: int = 16 << 20
    #: CLUSTERVM_START_TIMEOUT_S: seconds a node waits for the coordinator's first word before it leaves.
    start_timeout_s: float = 60.0
    #: CLUSTERVM_INIT_TIMEOUT_S: seconds the launcher waits for rank 0 to get past MPI_Init before it stops the job (one rank hung before or in MPI_Init holds every rank there); 0: no limit.
    init_timeout_s: float = 60.0
    #: CLUSTERVM_PROBE_TIMEOUT_S: with several hosts, seconds the supervisor waits for each host's one-rank probe job after a lost host before it leaves that host out of the restart.
    probe_timeout_s: float = 10.0

    _fields: tuple[str, ...]
    _defaults: dict[str, Any]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Build a Config from ``CLUSTERVM_<FIELD>`` variables (defaults for the rest)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field, default in cls._defaults.items():
            name = env_name(field)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field] = _parse(name, raw, default)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce this configuration (non-default fields only)."""
        out = {}
        for field, default in self._defaults.items():
            value = getattr(self, field)
            if value != default:
                out[env_name(field)] = _format(value)
        return out

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` (as ``dataclasses.replace``)."""
        unknown = set(changes) - set(self._fields)
        if unknown:
            raise TypeError(f"Config has no field(s) {', '.join(sorted(unknown))}")
        return type(self)(**{**{n: getattr(self, n) for n in self._fields}, **changes})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's name and default, in order."""
        return dict(cls._defaults)

    def _values(self) -> tuple:
        return tuple(getattr(self, n) for n in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()   # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields) + ")"

    def __setattr__(self, name: str, value: Any) -> None:
        raise _frozen_error(name)

    def __delattr__(self, name: str) -> None:
        raise _frozen_error(name)


#: The names of Config's fields, in order.
FIELDS: tuple[str, ...] = Config._fields


def env_name(field: str) -> str:
    return "CLUSTERVM_" + field.upper()


#: Numeric settings that must be above 0 (the others must be 0 or more).
_ABOVE_ZERO = frozenset({"CLUSTERVM_HEARTBEAT_S", "CLUSTERVM_SLOTS", "CLUSTERVM_MAX_CHUNK_BYTES",
                         "CLUSTERVM_START_TIMEOUT_S", "CLUSTERVM_PROBE_TIMEOUT_S"})


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            value: Any = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            return raw
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"{name}={raw!r} is not a valid {kind}; set it to a {kind} "
                          f"(default {default!r}) or unset it") from None
    above_zero = name in _ABOVE_ZERO
    if not (value > 0 if above_zero else value >= 0):     # nan too
        raise ConfigError(f"{name}={raw!r} is out of range: it must be "
                          f"{'above 0' if above_zero else '0 or more'} (default {default!r}); "
                          f"set it so or unset it")
    return value


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
