"""A whole VM in one process: the real coordinator and nodes on an in-process transport.

::

    from clustervm.testing.inprocess import InProcessVM

    with InProcessVM(nodes=3) as ivm:
        result = ivm.run(main)          # main(vm) runs in this thread, as on rank 0
        ivm.coordinator.stats["rerun"]

    InProcessVM(nodes=3).run_app("app.py", ["--tasks", "8"])   # an application file

The coordinator is :class:`clustervm.coordinator.Coordinator` and each node a
:class:`clustervm.node.Node` on a thread of its own, assembled by the same
code as under mpiexec (:func:`clustervm.runtime.coordinate`,
:func:`clustervm.runtime.serve_node`); messages go through
:mod:`clustervm.inprocess` (encoded with the wire codec). ``ivm.kill(rank)``,
``ivm.stop(rank)``, ``ivm.resume(rank)`` and ``ivm.delay(rank, s)`` inject faults
(see :mod:`clustervm.inprocess`); ``main`` may call them while it runs. Killing
rank 0 freezes main's thread too (it is the coordinator's process): the nodes
leave as they would, and the run ends at its timeout with :class:`VMTimeout`.
There is no MPI_Comm_spawn here: ``--replace-failed`` and ``vm.add_nodes`` find
no way to start a node (spare nodes, ``spares=K``, work as on MPI).

:meth:`InProcessVM.run` always tears everything down: it returns main's value
or raises main's exception only after every thread of the VM has ended (a
thread that does not end within ``linger`` seconds is an error, naming it).
Past ``timeout`` the world is closed (every wait returns, every send fails), so
main ends with an error, and :class:`VMTimeout` says what the VM was doing.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

from .. import runtime
from ..config import Config, env_name
from ..coordinator import Coordinator
from ..errors import ClusterVMError
from ..inprocess import InProcessWorld
from ..local import _tls
from ..node import Node

log = logging.getLogger(__name__)

__all__ = ["InProcessVM", "VMTimeout", "run_vm", "test_config"]

#: Config fields the harness sets unless the caller gives them: no end-of-job report
#: on stderr, and a node that never hears the coordinator gives up soon.
_DEFAULTS = {"report": "never", "start_timeout_s": 10.0}
_PICKLE_ENV = env_name("pickle")


class VMTimeout(ClusterVMError):
    """An in-process VM ran past its timeout (the message tells what it was doing)."""


def test_config(**fields: Any) -> Config:
    """A Config for in-process VMs: the harness's defaults, then ``fields``."""
    return Config(**{**_DEFAULTS, **fields})


test_config.__test__ = False   # type: ignore[attr-defined] - not a pytest test


class InProcessVM:
    """A coordinator and ``nodes`` nodes in this process (see the module docstring)."""

    def __init__(self, nodes: int = 2, config: Config | None = None, *,
                 timeout: float = 30.0, linger: float = 5.0) -> None:
        if nodes < 1:
            raise ValueError(f"a VM needs at least one node, got nodes={nodes}")
        self.config = config if config is not None else test_config()
        self.timeout = timeout
        self.linger = linger
        self.world = InProcessWorld(nodes + 1, allow_pickle=self.config.pickle)
        self.coordinator: Coordinator | None = None
        self.nodes: dict[int, Node] = {}
        self.codes: dict[int, int] = {}      # rank -> exit status of its node loop
        self.code: int | None = None         # the coordinator's exit status
        self.timed_out = False
        self._threads: list[threading.Thread] = []
        self._ran = False

    def __enter__(self) -> "InProcessVM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.world.close()

    # -- faults (see clustervm.inprocess) --------------------------------------

    def kill(self, rank: int) -> None:
        self.world.kill(rank)

    def stop(self, rank: int) -> None:
        self.world.stop(rank)

    def resume(self, rank: int) -> None:
        self.world.resume(rank)

    def delay(self, rank: int, seconds: float) -> None:
        self.world.delay(rank, seconds)

    # -- running -------------------------------------------------------------------

    def run(self, main: Callable[[Any], Any], argv: list[str] | None = None) -> Any:
        """Run ``main(vm)`` on the VM in the calling thread; its value (or its exception
        raised here) once the whole VM is down."""
        if self._ran:
            raise ClusterVMError("an InProcessVM runs once; make a new one")
        self._ran = True
        before = set(threading.enumerate())
        saved = dict(vars(_tls))
        # what every rank reads from its environment under mpiexec (clustervm.refs: may a
        # callable travel pickled?) follows this VM's config while it runs
        saved_pickle = os.environ.get(_PICKLE_ENV)
        os.environ[_PICKLE_ENV] = "1" if self.config.pickle else "0"
        outcome: dict[str, Any] = {}

        def wrapped(vm: Any) -> None:
            try:
                outcome["value"] = main(vm)
            except BaseException as exc:   # noqa: BLE001 - raised again by run()
                outcome["error"] = exc
                raise

        watchdog = threading.Timer(self.timeout, self._expire)
        watchdog.daemon = True
        try:
            coord = self.coordinator = Coordinator(self.world.transport(0), self.config)
            for rank in range(1, self.world.size):
                node = self.nodes[rank] = Node(self.world.transport(rank), self.config)
                t = threading.Thread(target=self._serve, args=(node,),
                                     name=f"cvm-inproc-node-{rank}", daemon=True)
                self._threads.append(t)
                t.start()
            watchdog.start()
            self.code = runtime.coordinate(coord, wrapped, list(argv or ["inprocess"]))
        finally:
            watchdog.cancel()
            _tls.__dict__.clear()
            _tls.__dict__.update(saved)
            left = self._teardown(before)
            if saved_pickle is None:
                os.environ.pop(_PICKLE_ENV, None)
            else:
                os.environ[_PICKLE_ENV] = saved_pickle
        if self.timed_out:
            raise VMTimeout(f"the in-process VM did not finish within {self.timeout} s; "
                            f"{self.describe()}") from outcome.get("error")
        if "error" in outcome:
            raise outcome["error"]
        if self.code:
            raise ClusterVMError(f"the in-process VM ended with status {self.code} before "
                                 f"main returned (see the log); {self.describe()}")
        if left:
            raise ClusterVMError(f"the in-process VM left threads running {self.linger} s "
                                 f"after main: {left}; a task that never calls into clustervm "
                                 "cannot be stopped: make it end")
        return outcome.get("value")

    def run_app(self, path: str, args: list[str] | None = None) -> Any:
        """Run an application file's ``main(vm)`` (as ``clustervm run app.py args...``
        would: imported as ``__clustervm_app__``, ``sys.argv`` and ``vm.argv`` are
        ``[path, *args]``); main's value."""
        argv = [path, *(args or [])]
        saved_argv, saved_path = sys.argv, list(sys.path)
        sys.argv = list(argv)
        try:
            mod = runtime.load_app(path)
            main = getattr(mod, "main", None)
            if not callable(main):
                raise ClusterVMError(f"{path} defines no main(vm) function; add "
                                     "`def main(vm): ...`")
            return self.run(main, argv)
        finally:
            sys.argv = saved_argv
            sys.path[:] = saved_path
            sys.modules.pop(runtime.APP_MODULE, None)

    def _serve(self, node: Node) -> None:
        self.codes[node.rank] = runtime.serve_node(node)

    def _expire(self) -> None:
        self.timed_out = True
        log.error("in-process VM: timeout after %s s; %s", self.timeout, self.describe())
        self.world.close()

    def describe(self) -> str:
        """What the VM holds now: node states, live tasks, queued messages, faults."""
        coord = self.coordinator
        parts = []
        if coord is not None:
            parts.append("nodes " + ", ".join(f"{n.rank}:{getattr(n.state, 'value', n.state)}"
                                              for n in coord.nodes.values()))
            parts.append(f"tasks not over {sorted(coord.tasks)[:20]}")
        queued = {ep.rank: len(ep._inbox) for ep in self.world.endpoints if ep._inbox}
        parts.append(f"messages queued by rank {queued}")
        w = self.world
        parts.append(f"killed {sorted(w.dead)}, stopped {sorted(w.stopped)}")
        return "; ".join(parts)

    def _teardown(self, before: set[threading.Thread]) -> list[str]:
        """End every thread the VM started (nodes, workers, tasks, the service loop);
        the names of those still running after ``linger`` seconds."""
        deadline = time.monotonic() + self.linger
        coord = self.coordinator
        for rank, t in zip(self.nodes, self._threads):
            # nodes told to shut down leave by themselves; frozen ones and those the
            # coordinator gave up on (it tells them nothing more) are made to, below
            given_up = coord is not None and rank in coord.nodes and \
                coord.nodes[rank].state == "dead"
            if rank not in self.world._frozen and not given_up:
                t.join(max(0.0, min(1.0, deadline - time.monotonic())))
        for node in self.nodes.values():   # the rest (killed, stopped, cut off) are made to
            node.stopping = True
            for ctx in list(node.live.values()):
                ctx.aborted = True
        self.world.close()
        while True:
            left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                if left:
                    log.error("in-process VM: threads still running: %s", [t.name for t in left])
                return [t.name for t in left]
            left[0].join(min(0.05, remaining))


def run_vm(main: Callable[[Any], Any], nodes: int = 2, config: Config | None = None, *,
           timeout: float = 30.0, **fields: Any) -> tuple[Any, Coordinator]:
    """Run ``main(vm)`` on an in-process VM of ``nodes`` nodes: (main's value, the
    coordinator). ``fields`` are Config fields (on top of :func:`test_config`)."""
    if fields:
        config = dataclasses.replace(config, **fields) if config else test_config(**fields)
    ivm = InProcessVM(nodes, config, timeout=timeout)
    value = ivm.run(main)
    assert ivm.coordinator is not None
    return value, ivm.coordinator
