"""What one member's call on a frozen group costs in Python, measured in one process.

    python benchmarks/frozen_call_cost.py [--repeat 7]

No MPI (mpi4py is not initialized): the group's communicator is a stand-in whose
``Iallgather`` gives every member the caller's slot at once, so what is timed is
the member's own work per call (its slot, the look at everyone's slots, the
result, the shadow kept for survival), not the exchange. On a box with more
ranks than cores every member's Python time is paid more than once on the
critical path (the others spin meanwhile), so it is what a frozen group can cut
of its small calls. Prints ``call <op> us=<median> min=<min>`` per operation:
per call, over ``--repeat`` runs of 20000 calls. Run it from another checkout
(``PYTHONPATH=<its root>``) to compare two versions in the same conditions.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
import types
from collections import deque

import mpi4py

mpi4py.rc.initialize = False          # no MPI_Init: nothing here calls MPI
import numpy as np                    # noqa: E402

from clustervm import fastgroup       # noqa: E402

MEMBERS = 4


class _Done:
    def Test(self) -> bool:             # noqa: N802 - mpi4py's name
        return True


class _Comm:
    """Every member made the same call as this one, and it completed at once."""

    def Iallgather(self, slot, slots):  # noqa: N802 - mpi4py's name
        n = len(slot)
        for p in range(len(slots) // n):
            slots[p * n:(p + 1) * n] = slot
        return _Done()


def group() -> "fastgroup.FrozenGroup":
    """A member (instance 0) of a frozen group of MEMBERS that survives a loss, built
    without MPI: the fields ``FrozenGroup.__init__`` sets, old and new."""
    fg = fastgroup.FrozenGroup.__new__(fastgroup.FrozenGroup)
    members = [(i, 10 + i, i) for i in range(MEMBERS)]
    site = types.SimpleNamespace(transport=types.SimpleNamespace(allow_pickle=False),
                                 rank=0, locations={}, _serve=lambda *a: None)
    site.transport.failed = set()
    fields = dict(ctx=types.SimpleNamespace(tid=10, aborted=False, _site=site), survive=True,
                  site=site, name="g", members=members, insts=list(range(MEMBERS)),
                  pos_of_inst={i: i for i in range(MEMBERS)}, me=0, broken=None, calls=0,
                  _lock=threading.Lock(), _pending=deque(), _pending_bytes=0,
                  _last_call=0.0, _own_error=None, _mpi_result=None, deadline=None,
                  comm=_Comm(), watch={})
    slot = np.zeros(fastgroup.SLOT, np.uint8)
    slots = np.empty(MEMBERS * fastgroup.SLOT, np.uint8)
    fields.update(_slot=slot, _slots=slots, _slot_mv=memoryview(slot),
                  _slots_mv=memoryview(slots), _rows=slots.reshape(MEMBERS, fastgroup.SLOT),
                  _raw_metas={}, _raw_views={}, _spare=[],   # (fields of newer versions)
                  auto=False, _in_call=False, _thaw_asked=False, _thaw_t=0.0, _off=None,
                  _saw_off=False, _revoked=False, _main_keeps=False)
    for k, v in fields.items():
        setattr(fg, k, v)
    return fg


CALLS = (("barrier", None, None, None), ("bcast_8B", b"8 bytes!", 0, None),
         ("allreduce_8B", np.ones(1), None, "sum"), ("allreduce_8B_pickled", 1.0, None, "sum"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--calls", type=int, default=20000)
    a = p.parse_args()
    fastgroup._FLUSHER.kick.set()         # no flusher thread: nothing is sent here
    print(f"# {fastgroup.__file__}; {MEMBERS} members; per call, median of {a.repeat} runs")
    for name, value, root, fn in CALLS:
        op = name.split("_")[0]
        fg = group()
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            for r in range(a.calls):
                fg.call(op, value, None, root, fn, None, r)
            times.append((time.perf_counter() - t0) / a.calls * 1e6)
        print(f"call {name} us={statistics.median(times):.2f} min={min(times):.2f}")


if __name__ == "__main__":
    main()
