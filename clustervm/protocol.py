"""Op codes of the messages between coordinator and nodes.

Every message is a tuple whose first item is one of these ints; each loop has
one dispatch table keyed by them. Plain ints (not an IntEnum) keep the codec
on its fast path.
"""
from __future__ import annotations

# node -> coordinator
HELLO = 1        # (HELLO, host, pid)
DONE = 2         # (DONE, [(tid, ok, value), ...])               short tasks finished
EXITED = 3       # (EXITED, tid, inc, ok, value)                  a spawned task ended
REQ = 4          # (REQ, reqid, tid, name, args)                   an API call of a task
HEARTBEAT = 5    # (HEARTBEAT, running)
BYE = 6          # (BYE,)                                          node is leaving
# coordinator -> node
RUN = 10         # (RUN, [(tid, parent, fn, args, kwargs, state), ...])
SPAWN = 11       # (SPAWN, tid, parent, fn, args, kwargs, inc, ckpt, replay, siblings)
KILL = 12        # (KILL, tid, inc)
REPLY = 13       # (REPLY, reqid, ok, value)
LOC = 14         # (LOC, [(tid, rank, inc), ...])                  where tasks live now
SHUTDOWN = 15    # (SHUTDOWN, failures_seen)
CANCEL = 16      # (CANCEL, tid)                                   drop a queued short task
# task -> task (node to node, coordinator included)
USER = 20        # (USER, src, dst, tag, data, src_inc, seq)

COORDINATOR = 0  # rank of the coordinator
MAIN_TID = 1     # tid of the application's main on the coordinator
ANY = -1         # wildcard source / tag, as PVM's -1
SYSTEM = -2      # source of notifications (vm.notify(..., tag=)); ANY never matches it
