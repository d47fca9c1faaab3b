"""The ``wildcards`` check of tests/apps/foundation_app.py when messages of two
senders arrive in the other order, on an in-process VM.

Order is kept per sender, receiver and tag only: a poke that a task sends after
main's messages to the same receiver may still be handled first (seen under
mpiexec on a loaded box: node 3 took both pokes before main's three messages).
The check took main's third message with ``recv(-1, -1)``; when a poke had come
first it took the poke instead, and the target then waited for ever for the poke
it had taken (the job hung until its timeout). Here node 3 holds main's messages
back until both pokes are in, or for ``HOLD_S``: the check must end with the same
result in both orders.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from clustervm import protocol as P
from clustervm.site import Site
from clustervm.testing.inprocess import run_vm

APPS = Path(__file__).resolve().parent / "apps"
HOLD_S = 1.0          # longest hold of main's messages (then they go in, late)
TARGET_RANK = 3       # check_wildcards spawns its target there


def test_wildcards_check_ends_when_pokes_overtake_mains_messages(monkeypatch):
    monkeypatch.syspath_prepend(str(APPS))
    import foundation_app as app

    original = Site.deliver
    lock = threading.Lock()
    held: list[tuple] = []
    state = {"held": 0, "pings": 0, "released": False}

    def release(site: Site) -> None:
        with lock:
            if state["released"]:
                return
            state["released"] = True
            items = list(held)
            held.clear()
        for args in items:
            original(site, *args)

    def deliver(self: Site, src: int, dst: int, tag: int, data: Any, inc: int,
                seq: int) -> None:
        if self.rank == TARGET_RANK and src == P.MAIN_TID and tag in (5, 7, 9):
            with lock:
                hold = not state["released"]
                if hold:
                    held.append((src, dst, tag, data, inc, seq))
                    state["held"] += 1
                    if state["held"] == 1:
                        threading.Timer(HOLD_S, release, (self,)).start()
            if hold:
                return
        original(self, src, dst, tag, data, inc, seq)
        if self.rank == TARGET_RANK and tag == app.PING:
            with lock:
                state["pings"] += 1
                both = state["pings"] == 2
            if both:
                release(self)

    monkeypatch.setattr(Site, "deliver", deliver)
    value, _ = run_vm(app.check_wildcards, nodes=3, timeout=20)
    main = value["main"]
    assert state["held"] == 3, state          # the order was really changed
    assert value["got"][:3] == [[main, 7, "second"], [main, 5, "first"], [main, 9, "third"]]
    assert value["got"][3] == value["pokers"]
