"""Doorbells (clustervm/doorbell.py): ranks wake each other's idle pollers.

Unit tests on real sockets in one process, then a real job: after a second of quiet
the coordinator's message to a node rings that node's bell (across hosts:
tests/test_multihost.py). (What it saves, one task
after 1 s of quiet back in ~1 ms instead of 160-210 ms, is measured by
benchmarks/idle_latency.py, not asserted here.)
"""
from __future__ import annotations

import re
import secrets
import threading
import time

import pytest

from clustervm import doorbell
from clustervm.doorbell import Doorbell, job_key, open_doorbell
from conftest import ROOT, run_job


def bells(*ranks: int) -> tuple[dict[int, Doorbell], dict[int, threading.Event]]:
    key = secrets.token_hex(8)
    rang = {r: threading.Event() for r in ranks}
    out = {r: Doorbell(key, r, rang[r].set) for r in ranks}
    for b in out.values():
        b.start()
    return out, rang


def test_a_message_after_a_quiet_spell_rings_once():
    b, rang = bells(0, 1)
    try:
        b[0].sending(1)                     # nothing sent to rank 1 before: it may sleep
        assert rang[1].wait(5) and b[0].rings == 1
        rang[1].clear()
        b[0].sending(1)                     # right after: rank 1 is polling, no ring
        assert b[0].rings == 1
        time.sleep(doorbell.RING_AFTER_S * 2)
        b[0].sending(1)
        assert rang[1].wait(5) and b[0].rings == 2
        deadline = time.monotonic() + 5
        while b[1].rung < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b[1].rung == 2 and not rang[0].is_set()
    finally:
        for x in b.values():
            x.close()


def test_a_rank_without_a_bell_is_tried_again_later(monkeypatch):
    """No bell for rank 1 yet (it has not opened it, or it is on another host): the ring
    is dropped, and tried again only after RETRY_S, when it is there."""
    monkeypatch.setattr(doorbell, "RETRY_S", 0.2)
    monkeypatch.setattr(doorbell, "RING_AFTER_S", 0.0)
    b, _ = bells(0)
    late = None
    try:
        b[0].sending(1)
        assert b[0].rings == 0
        rang = threading.Event()
        late = Doorbell(b[0]._key, 1, rang.set)
        late.start()
        b[0].sending(1)                     # within RETRY_S: not tried
        assert b[0].rings == 0
        time.sleep(0.3)
        b[0].sending(1)
        assert rang.wait(5) and b[0].rings == 1
    finally:
        for x in (*b.values(), late):
            if x is not None:
                x.close()


def test_knocks_make_ranks_known_across_hosts_and_foreign_datagrams_are_dropped():
    """Across hosts (UDP, here over loopback): a node knocks at the coordinator's port on
    its host's addresses; both keep where the other is; a ring there wakes the other,
    which knows who rang. A datagram without the job's key changes nothing."""
    b, rang = bells(0, 1)
    try:
        assert b[0].udp_port and b[1].udp_port
        b[1].knock(b[0].udp_port, ["127.0.0.1"])
        deadline = time.monotonic() + 5
        while (1 not in b[0]._udp_at or 0 not in b[1]._udp_at) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b[0]._udp_at[1][1] == b[1].udp_port and b[1]._udp_at[0][1] == b[0].udp_port
        assert b[1]._send_udp(b"ring " + b[1]._tag + b" 1", b[1]._udp_at[0])
        assert rang[0].wait(5)
        assert b[0].rung_by == {1: 1}
        rang[0].clear()
        for junk in (b"ring wrongkey 1", b"knock " + b[1]._tag + b" x", b"hello"):
            b[1]._send_udp(junk, b[1]._udp_at[0])
        assert not rang[0].wait(0.3) and b[0].rung_by == {1: 1}
    finally:
        for x in b.values():
            x.close()


def test_nodes_on_two_other_hosts_find_each_others_bell_through_the_coordinator(monkeypatch):
    """Ranks 1 and 2 knock at rank 0 (each on its own host: no bell of the other on
    theirs). Rank 1's first ring of rank 2 finds no bell: it asks where it is (once,
    not again within ASK_AGAIN_S; after an answer that it is not known yet, again at
    the next ring that fails after RETRY_S); with what rank 0 knows from rank 2's
    knock, its next ring wakes rank 2."""
    monkeypatch.setattr(doorbell, "RING_AFTER_S", 0.0)
    monkeypatch.setattr(doorbell, "RETRY_S", 0.2)
    b, rang = bells(0, 1, 2)
    try:
        for r in (1, 2):
            monkeypatch.setattr(b[r], "address", lambda rank: b"\0clustervm.elsewhere")
            b[r].knock(b[0].udp_port, ["127.0.0.1"])
        deadline = time.monotonic() + 5
        while (b[0].udp_at(1) is None or b[0].udp_at(2) is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        asked: list[int] = []
        b[1].on_unknown = asked.append
        b[1].sending(2)
        assert asked == [2] and b[1].rings == 0 and not rang[2].is_set()
        b[1].sending(2)                     # not asked again so soon
        assert asked == [2]
        b[1].learn(2, None)                 # "not known yet": asked again after RETRY_S
        time.sleep(0.3)
        b[1].sending(2)
        assert asked == [2, 2] and b[1].rings == 0
        known = b[0].known()                # the coordinator's answer: every knock it had
        assert set(known) == {1, 2}
        for r, addr in known.items():
            b[1].learn(r, list(addr))       # (lists, as msgpack gives them)
        b[1].sending(2)
        assert rang[2].wait(5) and b[1].rings == 1
        deadline = time.monotonic() + 5
        while 1 not in b[2].rung_by and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b[2].rung_by == {1: 1}
    finally:
        for x in b.values():
            x.close()


def test_host_addresses_are_ipv4_with_loopback_last():
    found = doorbell.host_addresses()
    assert "127.0.0.1" in found and found[-1].startswith("127.")
    assert all(len(a.split(".")) == 4 for a in found)


def test_closing_a_bell_ends_its_thread_and_frees_its_name():
    b, rang = bells(0)
    thread = b[0]._thread
    b[0].close()
    thread.join(5)
    assert not thread.is_alive() and not rang[0].is_set()
    again = Doorbell(b[0]._key, 0, lambda: None)     # the name can be bound again
    again.close()


def test_job_key_comes_from_the_launcher_or_open_mpi(monkeypatch):
    assert job_key({doorbell.JOB_KEY_ENV: "abc", "PMIX_NAMESPACE": "x"}) == "abc"
    assert job_key({"PMIX_NAMESPACE": "prterun-vm-12@1"}) == "prterun-vm-12@1"
    assert job_key({}) is None
    long = job_key({"PMIX_NAMESPACE": "n" * 200})
    assert len(long) <= 64 and long != job_key({"PMIX_NAMESPACE": "n" * 199 + "m"})
    monkeypatch.delenv(doorbell.JOB_KEY_ENV, raising=False)
    monkeypatch.delenv("PMIX_NAMESPACE", raising=False)
    assert open_doorbell(0, lambda: None) is None     # no key: no doorbell
    monkeypatch.setenv(doorbell.JOB_KEY_ENV, secrets.token_hex(8))
    first = open_doorbell(0, lambda: None)
    assert first is not None
    try:
        assert open_doorbell(0, lambda: None) is None    # its name is taken: none
    finally:
        first.close()


@pytest.mark.mpi
def test_a_node_idle_for_a_second_is_rung():
    """A real job: after a second of quiet, the task the coordinator sends a node rings
    that node's bell (the task reads the count), and the node's answer rings rank 0's;
    with CLUSTERVM_DOORBELL=0 nobody has one."""
    app = str(ROOT / "tests" / "apps" / "doorbell_app.py")
    res = run_job([app], n=3, timeout=60)
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert "rung=yes coordinator=yes" in res.out, res.out
    res = run_job([app], n=3, timeout=60, env={"CLUSTERVM_DOORBELL": "0"})
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    assert "rung=none coordinator=none" in res.out, res.out


@pytest.mark.mpi
def test_work_for_a_node_whose_task_stopped_polling_is_seen_without_a_ring():
    """A real job, no doorbells, no deep idle (its service loop would poll after a
    quarter second): a node's idle workers stay off the GIL while its task polls, and
    look again within 20 ms once it stops (or at once when it ends). Before, they waited
    5 s (with the defaults: until deep idle's next poll, 250-350 ms), so a spawn right
    after a task ended, or a submit to a node whose task had just stopped receiving,
    waited that long: no sender rings a rank it sent to within the last 20 ms (now 5 ms,
    doorbell.RING_AFTER_S)."""
    app = str(ROOT / "tests" / "apps" / "prompt_poll_app.py")
    res = run_job([app], n=2, timeout=90, env={
        "CLUSTERVM_DOORBELL": "0", "CLUSTERVM_DEEP_IDLE_SLEEP_MS": "10"})
    assert res.rc == 0, f"{res.rc}\n{res.out}\n{res.err}"
    m = re.search(r"spawn_again_ms=([0-9.]+) submit_while_computing_ms=([0-9.]+)", res.out)
    assert m, res.out
    # (not a speed test: the bound is 200x what it takes, and half the old wait)
    assert float(m.group(1)) < 2500 and float(m.group(2)) < 2500, res.out
