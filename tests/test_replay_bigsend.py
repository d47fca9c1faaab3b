"""Big messages and the replay log: what is replayed is what was sent, not what the sender
wrote into its array after ``send`` returned; a received buffer is freed as soon as it
is dropped."""
from __future__ import annotations

import gc
import os
import re
import signal
import time
import weakref

import numpy as np
import pytest

from clustervm import wire

from conftest import ROOT

APP = str(ROOT / "tests" / "apps" / "replay_mutate_app.py")


def test_loads_keeps_no_reference_to_its_buffers():
    """Without the cyclic GC, a decoded array's buffer goes when the array goes (a
    reference cycle in loads kept every received 8 MiB buffer until the GC ran, so
    each message got fresh memory)."""
    was = gc.isenabled()
    gc.disable()
    try:
        payload, bufs = wire.dumps({"a": (np.arange(1000.0), 1)})
        buf = np.frombuffer(bytes(bufs[0]), np.uint8).copy()
        ref = weakref.ref(buf)
        out = wire.loads(payload, [buf])
        del buf
        assert ref() is not None and out["a"][0][999] == 999.0
        del out
        assert ref() is None
    finally:
        if was:
            gc.enable()


@pytest.mark.mpi
def test_replayed_big_message_has_the_content_sent_not_the_later_one(job, tmp_path):
    j = job([APP, str(tmp_path)], n=4, timeout=90)
    deadline = time.monotonic() + 60
    found = []
    while not found:
        assert time.monotonic() < deadline, "the receiver never got its messages"
        assert j.proc.poll() is None, j.wait()
        found = [p.name for p in tmp_path.iterdir() if p.name.startswith("got-")]
        time.sleep(0.01)
    _, rank, pid = found[0].split("-")
    assert j.rank_pids(count=4)[int(rank)] == int(pid)
    os.kill(int(pid), signal.SIGKILL)
    res = j.wait()
    assert res.rc == 0, res.err
    line = res.line("replay-mutate:")
    assert re.search(r"inc=[1-9]", line), line
    assert "[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]" in line, line
