"""Copies and sizes of message values (used by the replay log, the groups, the tasks)."""
from __future__ import annotations

import copy
from sys import modules as _modules
from typing import Any

from . import wire
from .blocks import Blocks
from .errors import WireError

#: values that cannot change: a snapshot of one is the value itself
IMMUTABLE = (int, float, str, bytes, bool, type(None))

#: memory for copies of big arrays, used again (clustervm.blocks): a sender's replay log
#: keeps a copy of each message until its receiver checkpoints past it, and a copy into
#: new memory costs several times the send it is for (8 MiB: 3-13 ms here, 0.8 ms into
#: memory touched before). As much is kept as one receiver's replay log may hold by
#: default (CLUSTERVM_REPLAY_LOG_MB); blocks unused for 10 s are let go (a node does at its
#: heartbeats, any rank when it takes one).
ARRAY_COPIES = Blocks(64 << 10, 256 << 20, 256 << 20, idle_s=10.0)


def snapshot(data: Any) -> Any:
    """A copy of ``data`` that later changes by the sender cannot reach (the replay log,
    a message to a task on the same node, a group's value): what a receiver over the
    wire gets (a bytearray comes as bytes, a tuple's subclass as a tuple)."""
    return sized_snapshot(data)[0]


def sized_snapshot(data: Any) -> tuple[Any, int]:
    """:func:`snapshot` of ``data``, and the bytes it takes (roughly, as
    :func:`approx_size` says; a replay log counts them against its limit)."""
    kind = type(data)
    if kind is bytes or kind is str:
        return data, len(data)
    np = _modules.get("numpy")
    if np is not None and kind is np.ndarray and not data.dtype.hasobject:
        # what deepcopy makes of it, a fifth of the time (a halo row's first: 0.54 ->
        # 0.25 us, the replay log's copy of each one sent)
        return ARRAY_COPIES.copy(data), data.nbytes
    if isinstance(data, IMMUTABLE):
        return data, 16
    try:
        # the wire's own copy: a small dict's copy and size 4.6 -> 1.8 us (deepcopy and
        # approx_size); its arrays' buffers are views of the sender's, so copied
        payload, bufs = wire.dumps(data)
    except WireError:
        pass               # an object only pickle carries (or none): deepcopy, as before
    else:
        copies = [bytearray(b) for b in bufs]
        return wire.loads(payload, copies), len(payload) + sum(len(c) for c in copies)
    try:
        copy_ = copy.deepcopy(data)
    except Exception:
        wire.dumps(data)   # unsendable: raise the WireError that names its type and path
        raise
    return copy_, approx_size(copy_)


def approx_size(data: Any) -> int:
    """Bytes a message takes, roughly (arrays and byte strings counted exactly)."""
    nbytes = getattr(data, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    if isinstance(data, (bytes, str, bytearray)):
        return len(data)
    if isinstance(data, (list, tuple)):
        return 16 + sum(approx_size(x) for x in data)
    if isinstance(data, dict):
        return 16 + sum(approx_size(k) + approx_size(v) for k, v in data.items())
    return 16
