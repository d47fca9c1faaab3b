"""What survival costs a frozen group per call and member, measured in one process.

    python benchmarks/frozen_shadow_cost.py

No MPI (mpi4py is not initialized). "before": what the previous design did per
call and member (encode a request carrying the contribution, then, at the
coordinator, decode it and keep it in ``Groups.shadow``), not counting the MPI
send and the coordinator's wake-up. "now": what ``FrozenGroup._shadow`` does
(keep a tuple; nothing is sent unless a member is lost). docs/messages.md
quotes the figures.
"""
import threading
import time
from collections import deque
import numpy as np
import mpi4py; mpi4py.rc.initialize = False
from clustervm import wire, fastgroup
from clustervm.core.groups import Groups

class Rec:
    def __init__(s, n): s.node = n; s.state = "running"
class C:
    tasks = {10: Rec(1), 11: Rec(2), 12: Rec(3)}
    def in_world(s, r): return True
    def restartable(s, t): return True
    def resolve(s, r): return wire.resolve_ref(r)

def per_call(f, n=20000):
    t0 = time.perf_counter()
    for i in range(n): f(i)
    return (time.perf_counter() - t0) / n * 1e6

g = Groups(C())
for t in (10, 11, 12): g.join("g", t)
for t in (10, 11, 12): g.collective(lambda ok, v: None, "freeze", "g", t, None, 1, None, None, 0)
assert "g" in g.shadowed
CALLS = (("barrier", None), ("bcast 8 B", b"8 bytes!"), ("allreduce 8 B numpy", np.ones(1)))
for name, val in CALLS:
    op = name.split()[0]
    # before: each call, each member: a REQ frame encoded and sent; the coordinator decodes
    # it and keeps it (Groups.shadow)
    def msg(i, op=op, val=val):
        return fastgroup._request("frozen_shadow",
                                  ("g", 10, i + 1, op, val, None, None, "sum", None))

    enc = per_call(lambda i: wire.dumps(msg(i)))
    head, bufs = wire.dumps(msg(0))
    dec = per_call(lambda i: wire.loads(head, bufs))
    keep = per_call(lambda i: g.shadow("g", 10, i + 1, op, val, None, None, "sum", None))
    # now: the member keeps a tuple (FrozenGroup._shadow without MPI)
    fg = fastgroup.FrozenGroup.__new__(fastgroup.FrozenGroup)
    fg._lock = threading.Lock(); fg._pending = deque(); fg._pending_bytes = 0; fg._last_call = 0.0
    fg.name = "g"; fg.insts = [0]; fg.me = 0; fg._spare = []; fg._main_keeps = False
    fastgroup._FLUSHER.kick.set()       # no flusher thread in this measurement
    now = per_call(lambda i: fg._shadow(i + 1, op, val, None, None, "sum", None))
    print(f"{name:22} before: encode {enc:5.1f} us + coordinator decode {dec:5.1f} us + "
          f"keep {keep:5.1f} us (per member, plus the MPI send); now: {now:5.1f} us, "
          f"nothing sent")
