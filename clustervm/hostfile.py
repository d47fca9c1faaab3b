"""Hostfiles: read Open MPI and MPICH syntax, write either.

Open MPI::

    node01                      # one slot
    node02 slots=4              # four slots
    node03 slots=2 max_slots=4  # two, up to four when oversubscribed (also max-slots)

MPICH (Hydra)::

    node01                      # one slot
    node02:4                    # four slots

A host listed more than once gets the sum of its slots. Everything after ``#``
is a comment. Errors name the file and line, the problem and the fix.

Note that Open MPI 5 itself rejects a host given twice with ``slots=`` and
does not understand ``host:N``; the launcher writes a normalized copy
(:func:`hostfile_lines`) when the user's file needs one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from typing import Callable, Iterable

from .errors import HostfileError

__all__ = ["Host", "parse_hostfile", "hostfile_lines", "SYNTAXES"]

#: The syntaxes :func:`hostfile_lines` can write.
SYNTAXES = ("openmpi", "mpich")

_HOST_RE = re.compile(r"[A-Za-z0-9_.@-]+\Z")
_INT_RE = re.compile(r"[0-9]+\Z")
_KEYWORDS = {"slots": "slots", "max_slots": "max_slots", "max-slots": "max_slots"}
_EXAMPLES = "e.g. 'node01 slots=4' (Open MPI) or 'node01:4' (MPICH)"


@dataclasses.dataclass(frozen=True)
class Host:
    """One host of a hostfile: its name, slots, and Open MPI's optional hard limit."""

    name: str
    slots: int
    max_slots: int | None = None


@dataclasses.dataclass
class _Parsed:
    hosts: list[Host]
    #: "openmpi" lines (keywords), "mpich" lines (host:N), "plain" lines (host alone).
    styles: set[str]
    #: True when some host appears on more than one line.
    duplicates: bool


def parse_hostfile(path: str | os.PathLike[str]) -> list[Host]:
    """Read a hostfile in Open MPI or MPICH syntax; raise HostfileError if malformed."""
    return _parse_file(path).hosts


def hostfile_lines(hosts: Iterable[Host], syntax: str) -> str:
    """The text of a hostfile listing ``hosts`` in "openmpi" or "mpich" syntax.

    MPICH has no hard slot limit, so ``max_slots`` is left out there.
    """
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown hostfile syntax {syntax!r}; use one of {', '.join(SYNTAXES)}")
    out = []
    for h in hosts:
        if syntax == "mpich":
            out.append(f"{h.name}:{h.slots}\n")
        elif h.max_slots is None:
            out.append(f"{h.name} slots={h.slots}\n")
        else:
            out.append(f"{h.name} slots={h.slots} max_slots={h.max_slots}\n")
    return "".join(out)


def needs_rewrite(path: str | os.PathLike[str], syntax: str) -> bool:
    """Whether ``path`` must be rewritten for an mpiexec that reads ``syntax``.

    True when it has lines in the other syntax, or (Open MPI) repeats a host.
    """
    parsed = _parse_file(path)
    other = "mpich" if syntax == "openmpi" else "openmpi"
    return other in parsed.styles or (syntax == "openmpi" and parsed.duplicates)


def _parse_file(path: str | os.PathLike[str]) -> _Parsed:
    where = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise HostfileError(f"{where}: hostfile not found; check the path "
                            f"(relative paths are taken from {os.getcwd()})") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise HostfileError(f"{where}: cannot read the hostfile ({reason}); "
                            f"give a readable UTF-8 text file") from None

    merged: dict[str, Host] = {}
    styles: set[str] = set()
    duplicates = False
    lines = text.splitlines()
    for lineno, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        host, style = _parse_line(where, lineno, line)
        styles.add(style)
        old = merged.get(host.name)
        if old is not None:
            duplicates = True
            limit = (None if old.max_slots is None or host.max_slots is None
                     else old.max_slots + host.max_slots)
            host = Host(host.name, old.slots + host.slots, limit)
        merged[host.name] = host
    if not merged:
        raise HostfileError(f"{where}:{max(len(lines), 1)}: no hosts in the hostfile "
                            f"(only comments or blank lines); add one host per line, {_EXAMPLES}")
    return _Parsed(list(merged.values()), styles, duplicates)


def _parse_line(where: str, lineno: int, line: str) -> tuple[Host, str]:
    def fail(reason: str) -> HostfileError:
        return HostfileError(f"{where}:{lineno}: {reason}")

    # Allow "slots = 4" as well as "slots=4".
    words = re.sub(r"\s*=\s*", "=", line).split()
    first, rest = words[0], words[1:]

    if ":" in first:  # MPICH: host:N
        name, _, count = first.partition(":")
        _check_name(fail, name, line)
        if not _INT_RE.match(count) or int(count) < 1:
            raise fail(f"{count!r} in {first!r} is not a positive number of slots; "
                       f"write 'host:N' with N >= 1, e.g. '{name or 'node01'}:4'")
        if rest:
            raise fail(f"unexpected {' '.join(rest)!r} after {first!r}; MPICH syntax is "
                       f"'host:N' alone on a line (use '#' for a comment)")
        return Host(name, int(count)), "mpich"

    if "=" in first:
        raise fail(f"line starts with {first!r} but the host name comes first; "
                   f"write e.g. 'node01 {first}'")
    _check_name(fail, first, line)
    values: dict[str, int] = {}
    for word in rest:
        key, eq, value = word.partition("=")
        if not eq:
            raise fail(f"unexpected {word!r} after host {first!r}; Open MPI syntax is "
                       f"'host slots=N [max_slots=M]' (use '#' for a comment)")
        field = _KEYWORDS.get(key.lower())
        if field is None:
            raise fail(f"unknown keyword {key!r}; use slots=N and optionally max_slots=M")
        if field in values:
            raise fail(f"{key} given twice for {first!r}; give it once")
        if not _INT_RE.match(value) or int(value) < 1:
            raise fail(f"{key}={value!r} is not a positive integer; write e.g. {key}=4")
        values[field] = int(value)
    if "max_slots" in values and "slots" not in values:
        # Which slot count Open MPI picks then is not obvious: ask for it.
        raise fail(f"max_slots without slots for {first!r}; add slots=N (N <= max_slots)")
    slots = values.get("slots", 1)
    max_slots = values.get("max_slots")
    if max_slots is not None and max_slots < slots:
        raise fail(f"max_slots={max_slots} is less than slots={slots} for {first!r}; "
                   f"raise max_slots to at least {slots} or lower slots")
    return Host(first, slots, max_slots), ("openmpi" if values else "plain")


def _check_name(fail: Callable[[str], HostfileError], name: str, line: str) -> None:
    if not name:
        raise fail(f"no host name in {line!r}; start the line with the host name, {_EXAMPLES}")
    if not _HOST_RE.match(name):
        raise fail(f"{name!r} is not a valid host name; use letters, digits, '.', '-', '_' "
                   f"(and 'user@' in front if needed)")


def write_temp_hostfile(text: str, stem: str, syntax: str) -> str:
    """Write hostfile ``text`` to a temp file named after its content; return its path.

    Written anew each time (atomically): never trust a file found in a shared temp dir."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"{stem}-{digest}.{syntax}")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{stem}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
