"""Small immutable records for the core's events, instructions and node decisions.

``@record`` gives a class what ``@dataclass(frozen=True, slots=True)`` gave it here:
fields from its annotations (with defaults), ``__init__``, ``__repr__``, ``__eq__``,
``__hash__``, ``__match_args__``, slots, and no attribute changes after ``__init__``.
It exists for start-up time: ``dataclass`` generates and compiles five functions
per class, 0.4-0.9 ms a class on this box, and every rank of a job that starts
built ~80 of them (a node 33). ``record`` compiles one ``__init__`` and shares the rest.
"""
from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["record", "FrozenRecordError"]

T = TypeVar("T")


class FrozenRecordError(AttributeError):
    """A field of a record was assigned or deleted after ``__init__``."""


def _repr(self: Any) -> str:
    fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
    return f"{type(self).__qualname__}({fields})"


def _values(self: Any) -> tuple:
    return tuple(getattr(self, n) for n in self._fields)


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r} of {type(self).__name__}")


def _delattr(self: Any, name: str) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r} of {type(self).__name__}")


def record(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, slotted record of its annotated fields (see the module)."""
    own = tuple(cls.__dict__.get("__annotations__", {}))
    inherited = tuple(n for base in reversed(cls.__mro__[1:])
                      for n in base.__dict__.get("_fields", ()))
    fields = inherited + own
    defaults: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        defaults.update(base.__dict__.get("_defaults", {}))
    defaults.update({n: cls.__dict__[n] for n in own if n in cls.__dict__})
    ns = {k: v for k, v in cls.__dict__.items()
          if k not in own and k not in ("__dict__", "__weakref__")}
    ns.update(__slots__=own, __match_args__=fields, _fields=fields, _defaults=defaults,
              __repr__=_repr, __eq__=_eq, __hash__=_hash, __setattr__=_setattr,
              __delattr__=_delattr)
    params, seen_default = [], False
    for n in fields:
        if n in defaults:
            params.append(f"{n}=_d[{n!r}]")
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: field {n!r} without a default follows one with")
        else:
            params.append(n)
    new = type(cls)(cls.__name__, cls.__bases__, ns)
    new.__qualname__ = cls.__qualname__
    # each field set through its slot's descriptor: half the time of object.__setattr__
    # (which looks the name up first), ~0.1 us a field; records are made per message
    scope: dict[str, Any] = {"_d": defaults}
    for i, n in enumerate(fields):
        slot = next(k.__dict__[n] for k in new.__mro__ if n in k.__dict__)
        scope[f"_s{i}"] = slot.__set__
    body = "".join(f" _s{i}(self, {n})\n" for i, n in enumerate(fields)) or " pass\n"
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", scope)   # noqa: S102 - our own fields
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    new.__init__ = init      # type: ignore[misc]
    return new
