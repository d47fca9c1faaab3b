"""Doorbells: ranks wake each other's idle pollers when a message comes.

MPI cannot wake a thread that sleeps: a rank learns of a message only when it
probes. So an idle rank polls with a growing back-off, and one idle for a while
(deep idle, see clustervm.transport) polls only every ``deep_idle_sleep_ms``
(250 ms): the first task sent to an idle VM waited that long. Measured here before
doorbells: a submit and its result took 0.14 ms on a busy VM, 22 ms after 0.1 s of
quiet and 200-265 ms after 0.3 s or more; 2000 tasks of 1 ms after a 0.3 s pause ran
at 65 % of the ideal rate against 87 % (the first ones waited).

A doorbell is a datagram socket in Linux's abstract namespace, named after the job
and the rank. A rank that sends a message to another it has sent nothing to for a
while (:data:`RING_AFTER_S`) also sends a one-byte datagram to the other's doorbell
(:meth:`Doorbell.ring`); a thread of the receiver, blocked on its socket (no CPU),
wakes its pollers (``on_ring``), which find the message at once. A ring is a hint:
one that cannot be delivered (the rank is on another host or in another network
namespace, where the name does not exist, or it has no doorbell) is dropped, and
the receiver finds the message at its next poll, as before. Heartbeats do not ring
(they need no prompt answer, and an idle VM must stay idle).

Across hosts, between the coordinator and the nodes: each bell also has a UDP port.
The coordinator tells each node its port and its host's IPv4 addresses (a BELL, in
answer to the node's HELLO); the node *knocks* from its own port on each address
(:meth:`Doorbell.knock`), the coordinator keeps where a knock came from and answers
it, and the node keeps where the answer came from. A ring the abstract socket cannot
deliver goes there. Between two nodes on other hosts: the first ring that finds
neither asks (``on_unknown``) where the other's port is; the node asks the coordinator
for every node's it knows from their knocks, and :meth:`Doorbell.learn` keeps them for
the rings after (to any of those nodes). Each datagram carries the job's key: others are ignored. Where no
knock gets through (a firewall), nothing changes.

The job's key comes from ``CLUSTERVM_JOB_KEY`` (set by ``clustervm run`` for each
start of mpiexec and passed to every rank) or, under a bare mpiexec, from
``PMIX_NAMESPACE`` (Open MPI); with neither there is no doorbell.
"""
from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
import zlib
from typing import Callable, Mapping

# the C module: ``socket`` itself takes 2.5 ms to import here (its enums), on every rank
import _socket

__all__ = ["Doorbell", "JOB_KEY_ENV", "RING_AFTER_S", "host_addresses", "job_key",
           "open_doorbell"]

log = logging.getLogger(__name__)

#: Set by ``clustervm run`` for every start of mpiexec (and passed to every rank): the
#: ranks' doorbells' names, and the key each datagram between them carries.
JOB_KEY_ENV = "CLUSTERVM_JOB_KEY"
#: A message to a rank this rank has sent nothing to (heartbeats aside) for this long
#: rings its doorbell: that rank's pollers may be backing off, or in deep idle. Less
#: than that, it is polling within half a millisecond (its back-off grows 5-10 % of its
#: quiet time), and a ring a message would cost both ranks CPU (a syscall here, a
#: thread's wake-up there). With 20 ms, a task submitted 10 ms after the one before
#: took 2.2 ms to come back (0.24 ms with 5 ms), 15 ms after, 3.6 ms (0.2-0.3);
#: checkpoint overheads and throughput the same (benchmarks/RESULTS.md).
RING_AFTER_S = 0.005
#: A bell that could not be rung is tried again after this long (a failed ring costs a
#: syscall; a rank on another host never has one here).
RETRY_S = 1.0
#: Where a rank's bell is (``on_unknown``) is asked again after this long at the soonest.
ASK_AGAIN_S = 5.0
_KEY_MAX = 64
_SIOCGIFADDR = 0x8915           # Linux: an interface's IPv4 address


def job_key(env: Mapping[str, str] | None = None) -> str | None:
    """What names this job's doorbells on this host, or None (no doorbells)."""
    env = os.environ if env is None else env
    key = env.get(JOB_KEY_ENV) or env.get("PMIX_NAMESPACE")
    if not key:
        return None
    key = "_".join(key.split())     # a datagram's fields are separated by spaces
    if len(key) > _KEY_MAX:         # an abstract socket name holds 107 bytes
        key = f"{key[:_KEY_MAX - 9]}~{zlib.crc32(key.encode()):08x}"
    return key


class Doorbell:
    """This rank's doorbell (bound at once; :meth:`start` the thread that answers it),
    and the ringing of other ranks' bells."""

    def __init__(self, key: str, rank: int, on_ring: Callable[[], None]) -> None:
        self._key = key
        self._rank = rank
        self._on_ring = on_ring
        self._out = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self._in = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        self._in.bind(self.address(rank))      # OSError: the caller goes without one
        # across hosts: a UDP port (None if it cannot be had), and where other ranks'
        # are, as knocks and their answers said
        self._udp: _socket.socket | None = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            self._udp.bind(("0.0.0.0", 0))
            self._udp.setblocking(False)
            self.udp_port = self._udp.getsockname()[1]
        except OSError:
            self._udp.close()
            self._udp, self.udp_port = None, 0
        self._udp_at: dict[int, tuple[str, int]] = {}
        self._tag = key.encode()
        self._me = str(rank).encode()
        self._last: dict[int, float] = {}      # rank -> when it was last sent a message
        #: rank -> when to try again its bell, which could not be rung (none here: another
        #: host; or not yet: a rank that sends before the other has opened its bell)
        self._none: dict[int, float] = {}
        self.rings = 0                         # rung by this rank
        self.rung = 0                          # rung by others
        self.rung_by: dict[int, int] = {}      # ... by rank
        #: called (with the rank) when a ring finds neither a bell on this host nor a UDP
        #: address for it: someone may know where it is (:meth:`learn` takes the answer)
        self.on_unknown: Callable[[int], None] | None = None
        self._asked: dict[int, float] = {}     # rank -> when on_unknown may be called again
        self.closed = False
        self._thread: threading.Thread | None = None

    def address(self, rank: int) -> bytes:
        """The name of ``rank``'s bell on this host (Linux's abstract namespace)."""
        return f"\0clustervm.{self._key}.{rank}".encode()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._answer, name="cvm-doorbell", daemon=True)
        self._thread.start()

    def _answer(self) -> None:
        waiting = select.poll()
        waiting.register(self._in.fileno(), select.POLLIN)
        if self._udp is not None:
            waiting.register(self._udp.fileno(), select.POLLIN)
        unix = self._in.fileno()
        try:
            while True:
                ready = waiting.poll()
                if self.closed:
                    return
                rang = -1
                for fd, _ in ready:
                    if fd == unix:
                        data = self._in.recv(64)
                        rang = int(data) if data.isdigit() else rang
                    else:
                        rang = max(rang, self._udp_datagram())
                if rang >= 0:
                    self.rung += 1
                    self.rung_by[rang] = self.rung_by.get(rang, 0) + 1
                    self._on_ring()
        except (OSError, ValueError):
            return
        finally:
            self._in.close()
            if self._udp is not None:
                self._udp.close()

    def _udp_datagram(self) -> int:
        """Handle what came to the UDP port: ``ring <key> <rank>`` (that rank is
        returned), ``knock <key> <rank>`` (answered, and where it came from kept) or
        ``answer <key> <rank>`` (the same, kept); anything else is dropped (-1)."""
        assert self._udp is not None
        try:
            data, addr = self._udp.recvfrom(256)
        except BlockingIOError:
            return -1
        kind, key, rank = (data.split(b" ") + [b"", b""])[:3]
        if key != self._tag or not rank.isdigit():
            return -1
        if kind == b"ring":
            return int(rank)
        if kind == b"knock":
            self._send_udp(b"answer " + self._tag + b" " + self._me, addr)
        elif kind != b"answer":
            return -1
        self._udp_at[int(rank)] = addr
        self._none.pop(int(rank), None)     # rung in vain before it knocked: ring now
        return -1

    def _send_udp(self, data: bytes, addr: tuple[str, int]) -> bool:
        try:
            assert self._udp is not None
            self._udp.sendto(data, addr)
            return True
        except OSError:
            return False

    def udp_at(self, rank: int) -> tuple[str, int] | None:
        """Where ``rank``'s UDP port is, as its knock (or the answer to ours) said."""
        return self._udp_at.get(rank)

    def known(self) -> dict[int, tuple[str, int]]:
        """Every rank's UDP port known here (rank -> host, port)."""
        return dict(self._udp_at)

    def learn(self, rank: int, addr: tuple[str, int] | list | None) -> None:
        """``rank``'s bell is at ``addr`` (host, port), as another rank said: ring it there.
        None: not known there (yet: that rank may not have knocked when this one asked,
        at the job's start); asked again at the next ring that fails after RETRY_S."""
        if addr is None:
            self._asked[rank] = time.perf_counter() + RETRY_S
        elif rank not in self._udp_at:
            self._udp_at[rank] = (str(addr[0]), int(addr[1]))
            self._none.pop(rank, None)

    def knock(self, port: int, addrs: list[str]) -> None:
        """Make this rank known to the bell at ``port`` on one of ``addrs`` (the
        coordinator's host): a knock from this rank's UDP port to each, answered by the
        one that gets it."""
        if self._udp is None or not 0 < port < 65536:
            return
        knock = b"knock " + self._tag + b" " + self._me
        for a in addrs:
            self._send_udp(knock, (a, port))

    def sending(self, rank: int) -> None:
        """A message goes to ``rank`` now: ring its bell if it has had none for a while."""
        now = time.perf_counter()
        last = self._last.get(rank, 0.0)
        self._last[rank] = now
        if now - last > RING_AFTER_S and now >= self._none.get(rank, 0.0):
            self.ring(rank, now)

    def ring(self, rank: int, now: float = 0.0) -> None:
        """Ring ``rank``'s bell: on this host, else where its knock came from; if neither
        can be rung, not again for :data:`RETRY_S`."""
        try:
            self._out.sendto(self._me, self.address(rank))
            self.rings += 1
            return
        except BlockingIOError:
            return                      # its queue is full: it has been rung already
        except OSError:                 # no such bell on this host (yet)
            pass
        at = self._udp_at.get(rank)
        if at is not None and self._send_udp(b"ring " + self._tag + b" " + self._me, at):
            self.rings += 1
            return
        now = now or time.perf_counter()
        self._none[rank] = now + RETRY_S
        ask = self.on_unknown
        if at is None and ask is not None and now >= self._asked.get(rank, 0.0):
            self._asked[rank] = now + ASK_AGAIN_S
            try:
                ask(rank)
            except Exception:   # noqa: BLE001 - a ring is a hint: never fail a send for it
                log.debug("rank %d: asking where rank %d's bell is failed", self._rank, rank,
                          exc_info=True)

    def close(self) -> None:
        """Stop answering (the thread sees a last ring of its own) and let go of both
        sockets."""
        self.closed = True
        try:
            self._out.sendto(b"", self._in.getsockname())
        except OSError:
            pass
        self._out.close()
        if self._thread is None:
            self._in.close()
            if self._udp is not None:
                self._udp.close()


def open_doorbell(rank: int, on_ring: Callable[[], None]) -> Doorbell | None:
    """This rank's doorbell, or None: no job key, not Linux, or the name is taken."""
    key = job_key()
    if key is None or not sys.platform.startswith("linux"):
        return None
    try:
        bell = Doorbell(key, rank, on_ring)
    except OSError as exc:
        log.debug("rank %d: no doorbell (%s): idle pollers find messages at their next poll",
                  rank, exc)
        return None
    bell.start()
    return bell


def host_addresses() -> list[str]:
    """This host's IPv4 addresses, loopback last (Linux: each interface's, by ioctl)."""
    import fcntl
    import struct
    found: list[str] = []
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        for _, name in _socket.if_nameindex():
            try:
                got = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR,
                                  struct.pack("256s", name[:15].encode()))
            except OSError:
                continue            # no IPv4 address
            found.append(_socket.inet_ntoa(got[20:24]))
    except OSError:
        pass
    finally:
        sock.close()
    return sorted(set(found), key=lambda a: (a.startswith("127."), a))
