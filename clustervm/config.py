"""Configuration: one typed object, read from CLUSTERVM_* variables.

``clustervm run`` turns its options into these variables, so a job launched by
``mpiexec ... python -m clustervm app.py`` sees the same settings on every rank.
Each field documents its variable, type and default (kept in sync with the
README by ``tests/test_config.py``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
    #: CLUSTERVM_HEARTBEAT_S: seconds of silence after which a node is declared dead.
    heartbeat_s: float = 2.0
    #: CLUSTERVM_CHECKPOINT_DIR: directory for checkpoints and the job journal ('' = memory only).
    checkpoint_dir: str = ""
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
    #: CLUSTERVM_REPLAY_LOG_MB: megabytes of messages kept per receiver for replay after a failover.
    replay_log_mb: float = 256.0
    #: CLUSTERVM_REPORT: print the end-of-job report: 'auto' (after failures), 'always', 'never'.
    report: str = "auto"
    #: CLUSTERVM_MAX_CHUNK_BYTES: largest single MPI message; bigger buffers are sent in chunks (1 to 2**31-1).
    max_chunk_bytes: int = 1 << 30
    #: CLUSTERVM_START_TIMEOUT_S: seconds a node waits for the coordinator's first word before it leaves.
    start_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Build a Config from ``CLUSTERVM_<FIELD>`` variables (defaults for the rest)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, f.default)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce this configuration (non-default fields only)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[env_name(f.name)] = _format(value)
        return out


def env_name(field: str) -> str:
    return "CLUSTERVM_" + field.upper()


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
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"{name}={raw!r} is not a valid {kind}; set it to a {kind} "
                          f"(default {default!r}) or unset it") from None


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
