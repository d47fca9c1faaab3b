"""Callables that travel by name plus data: what ``wire.fn_ref`` gives beyond "module:qualname".

A task's function travels as a reference string. A plain module-level function
(and a staticmethod or classmethod reached through its class) is
``"module:qualname"``. These are sent as a *compound reference*,
``"~"`` + base64 of a wire-encoded tree, rebuilt on the receiving node:

* ``functools.partial(f, *args, **kw)``: the reference of ``f`` and the bound
  arguments (which the wire must carry: msgpack types and numpy arrays);
* a method bound to an instance, ``obj.method``: the instance and the method's
  name. An instance of a builtin type the wire carries (a list, a dict, a numpy
  array, ...) travels as that value; an instance of a class importable by name
  travels as its class's reference plus its attributes (``__dict__`` and
  ``__slots__``, which the wire must carry), and is rebuilt without calling
  ``__init__`` (as pickle does);
* an instance with ``__call__`` of such a class (a callable object);
* with ``--pickle`` (``CLUSTERVM_PICKLE=1``), any other callable that pickle
  can carry. Pickle sends functions by name too, so lambdas and nested
  functions are refused either way.

The tree is rebuilt for every call (a fresh instance and fresh bound
arguments each time, as ProcessPoolExecutor unpickles per task), so a task
that changes them does not change what the next task on that node gets.
"""
from __future__ import annotations

import base64
import functools
import os
import pickle
from types import BuiltinMethodType, MethodType
from typing import Any, Callable

from .errors import WireError

#: The codec, clustervm.wire, which sets this when it imports this module: wire hands
#: compound references to this module, whose parts are encoded with wire.
wire: Any = None

PREFIX = "~"


def pickle_allowed() -> bool:
    """Whether this job runs with ``--pickle`` (CLUSTERVM_PICKLE on every rank)."""
    return os.environ.get("CLUSTERVM_PICKLE", "").strip().lower() in ("1", "true", "yes", "on")


def is_compound(fn: Any) -> bool:
    """Does ``fn`` need a compound reference (not a plain module-level name)?"""
    if isinstance(fn, functools.partial):
        return True
    owner = getattr(fn, "__self__", None)
    if isinstance(fn, (MethodType, BuiltinMethodType)) and owner is not None \
            and not isinstance(owner, type) and type(owner).__name__ != "module":
        return True
    cls = type(fn)     # a callable instance of a class written in Python
    return (callable(fn) and not isinstance(fn, type) and not hasattr(fn, "__qualname__")
            and cls.__module__.split(".")[0] not in ("builtins", "numpy")
            and (hasattr(fn, "__dict__") or hasattr(cls, "__slots__")))


def compound_ref(fn: Any, allow_pickle: bool | None = None) -> str:
    """The compound reference of ``fn`` (see the module docstring); WireError if it
    cannot travel, naming what is in the way and what to do."""
    if allow_pickle is None:
        allow_pickle = pickle_allowed()
    try:
        tree = _encode(fn)
        head, bufs = wire.dumps(tree)
    except WireError as exc:
        if not allow_pickle:
            text = str(exc)
            if "pickle" not in text and "lambda" not in text and "<locals>" not in text:
                text += "; or run with --pickle to send it with pickle"
            raise WireError(text) from None
        tree = _pickled(fn, exc)
        head, bufs = wire.dumps(tree)
    blob = wire.pack_frames([head, *bufs])
    return PREFIX + base64.b64encode(blob).decode("ascii")


def _pickled(fn: Any, why: Exception) -> list:
    try:
        return ["k", pickle.dumps(fn, protocol=5)]
    except Exception as exc:   # noqa: BLE001 - pickle raises many kinds
        raise WireError(f"{why}; pickle cannot send it either ({type(exc).__name__}: {exc})") \
            from None


def _encode(fn: Any) -> list:
    if isinstance(fn, functools.partial):
        inner = fn.func
        ref = compound_ref(inner, False) if is_compound(inner) else wire.fn_ref(inner)
        args, kw = tuple(fn.args), dict(fn.keywords)
        _check(args, f"the arguments bound by functools.partial({ref.split(':')[-1]}, ...)")
        _check(kw, "the keyword arguments bound by functools.partial")
        return ["p", ref, args, kw]
    owner = getattr(fn, "__self__", None)
    if isinstance(fn, (MethodType, BuiltinMethodType)) and owner is not None:
        return ["m", _instance(owner, fn), fn.__name__]
    return ["c", _instance(fn, fn)]


def _instance(obj: Any, fn: Any) -> list:
    """An instance as data: the value itself when the wire carries it, else its class
    (by name) and its attributes."""
    try:
        wire.dumps(obj)
        if type(obj).__module__ in ("builtins", "numpy"):
            return ["v", obj]
    except WireError:
        pass
    cls = type(obj)
    try:
        cls_ref = wire.fn_ref(cls)
    except WireError as exc:
        raise WireError(f"cannot send {fn!r}: its instance's class cannot be found by name "
                        f"({exc})") from None
    state: dict = dict(getattr(obj, "__dict__", {}))
    for klass in cls.__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                state[slot] = getattr(obj, slot)
    _check(state, f"the attributes of the {cls.__qualname__} instance that {fn!r} needs")
    return ["o", cls_ref, state]


def _check(value: Any, what: str) -> None:
    try:
        wire.dumps(value)
    except WireError as exc:
        raise WireError(f"cannot send {what}: {exc}") from None


def resolve_compound(ref: str) -> Callable:
    """A callable for a compound reference: rebuilds the object at each call."""
    try:
        frames = wire.unpack_frames(base64.b64decode(ref[len(PREFIX):]))
        tree = wire.loads(frames[0], frames[1:])
    except Exception as exc:   # noqa: BLE001 - a damaged reference
        raise WireError(f"bad compound function reference ({type(exc).__name__}: {exc})") \
            from None
    if tree[0] == "k" and not pickle_allowed():
        raise WireError("a function was sent with pickle, but this node does not allow "
                        "pickle: run the whole job with --pickle")
    return Rebuilt(ref, describe(tree))


def describe(tree: list) -> str:
    kind = tree[0]
    if kind == "p":
        return f"functools.partial({tree[1] if not tree[1].startswith(PREFIX) else '...'}, ...)"
    if kind == "m":
        inst = tree[1]
        owner = inst[1] if inst[0] == "o" else type(inst[1]).__name__
        return f"bound method {owner}.{tree[2]}"
    if kind == "c":
        return "callable instance"
    return "pickled callable"


class Rebuilt:
    """What a compound reference resolves to: calls a freshly rebuilt callable."""

    def __init__(self, ref: str, text: str) -> None:
        self.ref = ref
        self.text = text

    def build(self) -> Callable:
        frames = wire.unpack_frames(base64.b64decode(self.ref[len(PREFIX):]))
        return _build(wire.loads(frames[0], frames[1:]))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.build()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<clustervm {self.text}>"


def _build(tree: list) -> Callable:
    kind = tree[0]
    if kind == "p":
        ref = tree[1]
        fn = _build(_decode(ref)) if ref.startswith(PREFIX) else wire.resolve_ref(ref)
        return functools.partial(fn, *tree[2], **tree[3])
    if kind == "m":
        return getattr(_rebuild(tree[1]), tree[2])
    if kind == "c":
        return _rebuild(tree[1])
    if kind == "k":
        return pickle.loads(tree[1])
    raise WireError(f"unknown compound reference kind {kind!r}")


def _decode(ref: str) -> list:
    frames = wire.unpack_frames(base64.b64decode(ref[len(PREFIX):]))
    return wire.loads(frames[0], frames[1:])


def _rebuild(inst: list) -> Any:
    if inst[0] == "v":
        return inst[1]
    cls = wire.resolve_ref(inst[1])
    obj = cls.__new__(cls)
    for k, v in inst[2].items():
        object.__setattr__(obj, k, v)
    return obj
