"""New nodes started with MPI_Comm_spawn: ``--replace-failed`` and ``vm.add_nodes``.

The coordinator spawns one process at a time on COMM_SELF (no survivor takes
part) and links it to the transport as a rank after COMM_WORLD's; the node says
hello like any other and gets work. Open MPI only (MPICH's Hydra failed the
whole job on a spawn here, docs/mpis.md). A mixin of
:class:`clustervm.coordinator.Coordinator`, whose state it uses.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from . import procs
from .core import SPAWN_HELLO_S
from .core import events as E
from .core import instructions as I

log = logging.getLogger("clustervm.coordinator")

__all__ = ["NodeSpawning", "SPAWN_HELLO_S", "SPAWN_CALL_S", "SPAWN_RETRY_S", "SPAWN_ATTEMPTS"]

#: Longest wait for a replacement's MPI_Comm_spawn (all its attempts) to return.
SPAWN_CALL_S = 20.0
#: A spawn not back after this long is tried again beside it (measured: 0.09-1.2 s).
SPAWN_RETRY_S = 6.0
#: Most MPI_Comm_spawn calls made for one new node (each one a process).
SPAWN_ATTEMPTS = 3


class NodeSpawning:
    """Starting node processes while the job runs."""

    #: MPI_Comm_spawn calls given up on (still hanging): their processes end at shutdown
    _spawns_given_up = 0

    def _replace_async(self, lost: int) -> None:
        """--replace-failed: start a node for lost node ``lost`` without blocking handlers
        (the core counts it as on its way, and work waits for it, until ReplacementEnded).

        The spawn is tried again beside a call that hangs (:meth:`_spawn_retrying`). After
        SPAWN_CALL_S the replacement counts as over even if calls go on (a node one of them
        brings late still joins); with no node left the job then fails with NoNodesError
        instead of waiting forever."""
        def replace() -> None:
            try:
                self._spawn_retrying(f"replacing node {lost}", SPAWN_CALL_S)
            finally:
                with self.lock:
                    self._run(E.ReplacementEnded(time.monotonic()))
        threading.Thread(target=replace, name=f"cvm-replace-{lost}", daemon=True).start()

    def _spawn_retrying(self, why: str, timeout: float) -> int | None:
        """:meth:`spawn_node`, started again beside a call not back after SPAWN_RETRY_S
        (at most SPAWN_ATTEMPTS calls); the rank of the first call to return, or None.

        Why: Open MPI 5.0.11's PMIx server (inside mpiexec) can make the socket number of
        a rank that died deaf. When mpiexec deregisters the dead rank before the server
        has read the end of its socket, the server closes the socket but keeps its read
        event (the rank is still referenced), so epoll never watches the next socket that
        gets the same number. mpiexec's next connection is the spawned process's: its
        first request in MPI_Init is never read, and MPI_Comm_spawn waits for it (the
        coordinator's call blocked in PMIx_Lookup, the new process in PMIx_Init, both
        until the job ended; seen in 2 of 4 CI runs with both world nodes SIGKILLed, and
        every time when a dead rank's socket is held open past its end). The hung process
        keeps that number, so the next spawn's socket gets another one and works. A call
        that was only slow brings one node more, which joins like any other."""
        returned = threading.Event()
        ranks: list[int | None] = []

        def attempt(entered: threading.Event, wait_turn: float) -> None:
            rank = None
            try:
                rank = self.spawn_node(why, entered, wait_turn)
            finally:
                ranks.append(rank)
                returned.set()
                entered.set()        # a call that ended before MPI_Comm_spawn: no wait

        deadline = time.monotonic() + timeout
        for n in range(1, SPAWN_ATTEMPTS + 1):
            entered = threading.Event()
            # a retry does not queue behind the call that hangs
            threading.Thread(target=attempt, args=(entered, SPAWN_RETRY_S if n == 1 else 0.0),
                             name="cvm-spawn", daemon=True).start()
            # the retry clock starts in the call, not while waiting for another spawn's turn
            entered.wait(min(SPAWN_RETRY_S + 1.0, max(0.0, deadline - time.monotonic())))
            left = deadline - time.monotonic()
            if returned.wait(max(0.0, left if n == SPAWN_ATTEMPTS else
                                 min(SPAWN_RETRY_S, left))):
                return ranks[0]
            if time.monotonic() >= deadline:
                break
            self._spawns_given_up += 1
            log.warning("%s: MPI_Comm_spawn has not returned in %.0f s; starting another node "
                        "beside it (a spawned process can hang in MPI_Init on a socket Open MPI "
                        "left deaf after a rank died)", why, SPAWN_RETRY_S)
        log.warning("%s: MPI_Comm_spawn has not returned in %.0f s; carrying on without "
                    "waiting for it", why, timeout)
        return None

    def end_hung_spawns(self) -> None:
        """At shutdown: end this host's processes of MPI_Comm_spawn calls given up on
        (_spawn_retrying). One left alive keeps mpiexec from ending after the job (measured:
        10 s, then the launcher stopped it); one ended earlier would hand its deaf socket
        number on to the next spawn, so they are ended only now."""
        if not self._spawns_given_up:
            return
        known = {n.pid for n in self.nodes.values() if n.pid} | {os.getpid()}
        for pid in procs.children(os.getppid()):       # mpiexec's (or its daemon's)
            if pid in known:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            spawned = any(item.startswith(b"PMIX_NAMESPACE=") and not item.endswith(b"@1")
                          for item in env)
            if spawned:
                log.info("ending pid %d: a spawned process that never joined", pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def in_world(self, rank: int) -> bool:
        """Is ``rank`` in COMM_WORLD (not a node started later with MPI_Comm_spawn)?"""
        return rank < self.transport.world_size

    def spawn_node(self, why: str, entered: threading.Event | None = None,
                   wait_turn: float = SPAWN_RETRY_S) -> int | None:
        """Start one node process with MPI_Comm_spawn; its rank, or None (logged why).

        The new node is "starting" until its hello arrives (see _on_hello). One call at a
        time: this one waits up to ``wait_turn`` seconds for another to return, then goes
        ahead anyway (that one may hang, see _spawn_retrying). ``entered`` is set just
        before the MPI_Comm_spawn call.
        """
        from mpi4py import MPI
        if not self.spawn_command or self.stopping:
            return None
        if "Open MPI" not in MPI.Get_library_version():
            # MPICH 5.0.2's Hydra failed the whole job on MPI_Comm_spawn here (docs/mpis.md)
            log.warning("cannot start a node (%s): MPI_Comm_spawn is used with Open MPI only; "
                        "carrying on with %d node(s). Start the job with --spares K",
                        why, len(self._alive))
            return None
        locked = self._spawn_lock.acquire(timeout=wait_turn) if wait_turn > 0 else \
            self._spawn_lock.acquire(blocking=False)
        try:
            if self.stopping:
                return None
            info = MPI.Info.Create()
            info.Set("wdir", os.getcwd())
            # a lost node's slot is not handed back: without this Open MPI says
            # "All nodes which are allocated for this job are already filled"
            info.Set("map_by", ":OVERSUBSCRIBE")
            t0 = time.monotonic()
            if entered is not None:
                entered.set()
            try:
                inter = MPI.COMM_SELF.Spawn(sys.executable, args=self.spawn_command,
                                            maxprocs=1, root=0, info=info)
            except MPI.Exception as exc:
                log.warning("cannot start a node with MPI_Comm_spawn (%s): %s; carrying on "
                            "with %d node(s). Start the job with --spares K for nodes that "
                            "need no spawn", why, exc.Get_error_string().strip(),
                            len(self._alive))
                return None
            finally:
                info.Free()
            with self.lock:
                rank = self._next_rank
                self._next_rank += 1
                # a node "starting" in the core: its hello is due SPAWN_HELLO_S from now
                self._run(E.ReplacementStarted(rank, "?", time.monotonic()))
                self.transport.add_link(rank, inter, {"rank": rank,
                                                      "env": self.config.to_env()})
            log.info("node %d spawned in %.2f s (%s)", rank, time.monotonic() - t0, why)
            return rank
        finally:
            if locked:
                self._spawn_lock.release()

    def add_nodes(self, count: int, timeout: float = SPAWN_HELLO_S) -> int:
        """Bring ``count`` nodes into service: spare nodes first, then new node processes
        started with MPI_Comm_spawn. Waits for them to join; returns how many did."""
        with self.lock:
            out = self._run(E.SparesWanted(count))
            added = sum(1 for i in out if isinstance(i, I.NodeUp))
        started = [r for r in (self._spawn_retrying("vm.add_nodes", SPAWN_CALL_S)
                               for _ in range(count - added)) if r is not None]
        self.transport.wait(lambda: all(self.nodes[r].state != "starting" for r in started),
                            timeout)
        added += sum(self.nodes[r].state == "alive" for r in started)
        if added < count:
            log.warning("add_nodes: %d of %d node(s) could not be had (see the warnings "
                        "above); carrying on with %d node(s)", count - added, count,
                        len(self._alive))
        return added

