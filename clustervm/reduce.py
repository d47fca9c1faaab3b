"""Reductions of a group's values, shared by the coordinator's groups (groups.py) and
frozen groups (fastgroup.py): the same results on the hub and at MPI speed.
``VECTOR_OPS`` and ``combine`` are importable from :mod:`clustervm.core.groups` too."""
from __future__ import annotations

import functools
import operator
from typing import Any

from .errors import GroupError

_BUILTIN = {"sum": (operator.add, "add"), "prod": (operator.mul, "multiply"),
            "min": (min, "minimum"), "max": (max, "maximum")}


#: Collectives where every member gets its own answer computed from everyone's value
#: (the hub computes them; a frozen group gathers the values and computes them locally).
VECTOR_OPS = ("alltoall", "reduce_scatter", "scan", "exscan")


def combine(op: str, name: str, values: list, insts: list[int], fn: Any, resolver: Any) -> list:
    """Each member's answer to ``op`` given every member's value, both in instance order
    (``insts`` are the members' instance numbers): alltoall, reduce_scatter, scan, exscan.

    For alltoall and reduce_scatter a member's value is a sequence indexed by instance
    number (item ``i`` goes to instance ``i``); alltoall gives each member a list indexed
    by instance number (None for a free instance)."""
    width = max(insts) + 1
    if op in ("alltoall", "reduce_scatter"):
        for inst, v in zip(insts, values):
            try:
                size = len(v)
            except TypeError:
                size = -1
            if size < width:
                raise GroupError(
                    f"{op} on group {name!r}: instance {inst} gave "
                    f"{'a ' + type(v).__name__ if size < 0 else f'{size} item(s)'}; every "
                    f"member gives a list with one item per instance ({width}: item i goes to "
                    f"instance i)")
    if op == "alltoall":
        out = []
        for me in insts:
            row: list = [None] * width
            for inst, v in zip(insts, values):
                row[inst] = v[me]
            out.append(row)
        return out
    if op == "reduce_scatter":
        return [_reduce([v[me] for v in values], fn, resolver) for me in insts]
    # scan / exscan: prefix reductions in instance order
    prefix: list = []
    acc: Any = None
    for i, v in enumerate(values):
        acc = v if i == 0 else _reduce([acc, v], fn, resolver)
        prefix.append(acc)
    if op == "scan":
        return prefix
    return [None] + prefix[:-1]


def _reduce(values: list, fn: Any, resolver: Any, plain: bool = False) -> Any:
    """``values`` combined left to right by ``fn``: a builtin name (sum, prod, min, max;
    element-wise on numpy values), a function reference (``resolver.resolve``) or a callable.
    ``plain``: the caller knows no value is numpy's (ints, floats, bytes, str)."""
    if isinstance(fn, str) and fn in _BUILTIN:
        py_op, np_name = _BUILTIN[fn]
        if not plain and any(type(v).__module__ == "numpy" for v in values):
            import numpy as np
            ufunc = getattr(np, np_name)
            acc = values[0]
            fresh = False           # acc is a large array made here (no caller holds it)
            for v in values[1:]:
                if fresh and _fits(np, acc, v):
                    ufunc(acc, v, out=acc)      # the same sums in the same order, in place
                else:
                    acc = ufunc(acc, v)
                    fresh = isinstance(acc, np.ndarray) and acc.nbytes >= _IN_PLACE_BYTES
            return acc
        return functools.reduce(py_op, values)
    f = resolver.resolve(fn) if isinstance(fn, str) else fn
    return functools.reduce(f, values)


#: arrays from this size on are summed in place (smaller ones: checking costs more than
#: a new array)
_IN_PLACE_BYTES = 1 << 16


def _fits(np: Any, acc: Any, v: Any) -> bool:
    """Can ``ufunc(acc, v)`` be written into ``acc``: the result has acc's dtype and
    shape, and ``v`` does not share acc's memory (then it is what a new array holds)."""
    try:
        return (np.result_type(acc, v) == acc.dtype
                and np.broadcast_shapes(acc.shape, np.shape(v)) == acc.shape
                and not np.may_share_memory(acc, v))
    except (TypeError, ValueError):
        return False
