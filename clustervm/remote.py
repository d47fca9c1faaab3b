"""Carrying exceptions across nodes, with their remote traceback."""
from __future__ import annotations

import traceback
from typing import Any

from . import wire
from .errors import RemoteError, RemoteTraceback


def raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised, for an error message: ``file.py:12 in fn``."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return "an unknown place"
    last = tb[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


def pack_exception(exc: BaseException, where: str) -> tuple:
    """Encode ``exc`` raised on ``where`` (e.g. 'node 2 (host a, pid 7)') for the wire."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    cls = type(exc)
    try:
        type_ref = f"{cls.__module__}:{cls.__qualname__}"
        args: Any = tuple(exc.args)
        wire.dumps(args)
    except Exception:
        args = None
    return (type_ref, args, str(exc), tb, where)


def unpack_exception(packed: tuple) -> BaseException:
    """Rebuild the original exception type where possible; the remote traceback is its cause."""
    type_ref, args, text, tb, where = packed
    exc: BaseException | None = None
    try:
        cls = wire.resolve_ref(type_ref)
        if isinstance(cls, type) and issubclass(cls, BaseException) and args is not None:
            exc = cls(*args)
    except Exception:
        exc = None
    if exc is None:
        exc = RemoteError(f"{type_ref.replace(':', '.')}: {text} (raised on {where})")
    cause = RemoteTraceback(f'\n"""\nTraceback on {where}:\n{tb}"""')
    exc.__cause__ = cause
    if hasattr(exc, "add_note"):
        exc.add_note(f"raised on {where}")
    return exc
