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
import sys
import threading
import time

from .core import SPAWN_HELLO_S
from .core import events as E
from .core import instructions as I

log = logging.getLogger("clustervm.coordinator")

__all__ = ["NodeSpawning", "SPAWN_HELLO_S", "SPAWN_CALL_S"]

#: Longest wait for MPI_Comm_spawn to return (measured: 0.09-1.1 s; once it never did).
SPAWN_CALL_S = 20.0


class NodeSpawning:
    """Starting node processes while the job runs."""

    def _replace_async(self, lost: int) -> None:
        """--replace-failed: start a node for lost node ``lost`` without blocking handlers
        (the core counts it as on its way, and work waits for it, until ReplacementEnded).

        MPI_Comm_spawn has no timeout, and once, after both world nodes of a job were
        SIGKILLed, it never returned: the work waited for it until the job's timeout.
        So the replacement counts as over after SPAWN_CALL_S even if the call goes on
        (a node it brings late still joins); with no node left the job then fails with
        NoNodesError instead of waiting forever."""
        ended = threading.Lock()     # ReplacementEnded is sent once, by whoever is first

        def end() -> bool:
            if not ended.acquire(blocking=False):
                return False
            with self.lock:
                self._run(E.ReplacementEnded(time.monotonic()))
            return True

        def too_slow() -> None:
            if end():
                log.warning("replacing node %d: MPI_Comm_spawn has not returned in %.0f s; "
                            "carrying on without waiting for it", lost, SPAWN_CALL_S)

        watchdog = threading.Timer(SPAWN_CALL_S, too_slow)
        watchdog.daemon = True

        def replace() -> None:
            try:
                self.spawn_node(f"replacing node {lost}")
            finally:
                watchdog.cancel()
                end()
        watchdog.start()
        threading.Thread(target=replace, name=f"cvm-replace-{lost}", daemon=True).start()

    def in_world(self, rank: int) -> bool:
        """Is ``rank`` in COMM_WORLD (not a node started later with MPI_Comm_spawn)?"""
        return rank < self.transport.world_size

    def spawn_node(self, why: str) -> int | None:
        """Start one node process with MPI_Comm_spawn; its rank, or None (logged why).

        The new node is "starting" until its hello arrives (see _on_hello).
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
        with self._spawn_lock:
            if self.stopping:
                return None
            info = MPI.Info.Create()
            info.Set("wdir", os.getcwd())
            # a lost node's slot is not handed back: without this Open MPI says
            # "All nodes which are allocated for this job are already filled"
            info.Set("map_by", ":OVERSUBSCRIBE")
            t0 = time.monotonic()
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

    def add_nodes(self, count: int, timeout: float = SPAWN_HELLO_S) -> int:
        """Bring ``count`` nodes into service: spare nodes first, then new node processes
        started with MPI_Comm_spawn. Waits for them to join; returns how many did."""
        with self.lock:
            out = self._run(E.SparesWanted(count))
            added = sum(1 for i in out if isinstance(i, I.NodeUp))
        started = [r for r in (self.spawn_node("vm.add_nodes") for _ in range(count - added))
                   if r is not None]
        self.transport.wait(lambda: all(self.nodes[r].state != "starting" for r in started),
                            timeout)
        added += sum(self.nodes[r].state == "alive" for r in started)
        if added < count:
            log.warning("add_nodes: %d of %d node(s) could not be had (see the warnings "
                        "above); carrying on with %d node(s)", count - added, count,
                        len(self._alive))
        return added

