"""Drive the real coordinator core with simulated nodes on virtual time.

    python benchmarks/simulate.py --nodes 1000 --task-ms 100 --tasks 100000 --kill-frac 0.1

Nodes, messages and time are simulated (an event heap); the scheduling and
failover decisions are :class:`clustervm.core.Core`'s own, the same object the
coordinator runs. The coordinator is modelled as one server: it takes the
messages that have arrived (up to 256 at a time, as the transport polls), hands
them to ``Core.handle`` and is busy for the CPU time that call really took
(``time.process_time``, less the cost of reading that clock), plus
``--shell-us`` per message for the shell's own work (MPI, msgpack) if given; only then do its instructions leave. So when the
core is too slow, the virtual nodes wait for it and ``busy`` drops.

Each node runs ``--slots`` tasks at a time, each ``--task-ms`` of virtual time,
and keeps the tasks sent ahead (prefetch) in its queue. ``--kill-frac F`` stops
that fraction of the nodes between 20% and 60% of the expected run: half crash
(the coordinator hears of it ``--detect-ms`` later, as ULFM would report it),
half hang (silent; the heartbeat deadline finds them). Task ``i`` returns
``3 * i + 1`` (every 97th raises); ``exact`` says that every task was resolved
exactly once with its own outcome.

Prints one line:
``simulate nodes=<N> tasks=<K> busy=<fraction> core_us_per_task=<float> lost=<int> exact=<True|False>``
(and details on stderr: coordinator utilisation, virtual and real time).
"""
from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustervm.core import Core, LossCause  # noqa: E402
from clustervm.core import events as E  # noqa: E402
from clustervm.core import instructions as I  # noqa: E402

MAIN_TID = 1
FIRST_TID = 2
_POLL_LIMIT = 256       # messages one coordinator step takes (transport.poll's limit)


def value_of(i: int) -> tuple[bool, object]:
    """The outcome of task ``i``: every 97th raises."""
    return (False, f"task {i} failed") if i % 97 == 96 else (True, 3 * i + 1)


def clock_cost(samples: int = 5001) -> float:
    """What reading the CPU clock adds to a measured interval (the median of empty ones).

    ``time.process_time`` is a system call (2.3 us here under load, against 0.15 us for
    perf_counter); at 10,000 nodes the core is called twice per task, so left in, the
    clock would be a third of the figure."""
    pt = time.process_time
    d = []
    for _ in range(samples):
        c0 = pt()
        d.append(pt() - c0)
    d.sort()
    return d[len(d) // 2]


class SimNode:
    __slots__ = ("rank", "queue", "running", "up", "hung", "busy_s", "born", "died")

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.queue: deque[int] = deque()
        self.running = 0
        self.up = True          # runs and talks
        self.hung = False       # stopped without a word
        self.busy_s = 0.0
        self.born = 0.0
        self.died: float | None = None


class Simulation:
    def __init__(self, nodes: int, task_ms: float, tasks: int, kill_frac: float = 0.0,
                 slots: int = 1, prefetch: int = 4, heartbeat_s: float = 2.0,
                 latency_us: float = 50.0, detect_ms: float = 200.0, shell_us: float = 0.0,
                 seed: int = 1) -> None:
        self.n, self.k = nodes, tasks
        self.task_s = task_ms / 1e3
        self.slots = slots
        self.lat = latency_us / 1e6
        self.detect_s = detect_ms / 1e3
        self.shell_s = shell_us / 1e6
        self.heartbeat_s = heartbeat_s
        self.rng = random.Random(seed)
        self.core = Core(range(1, nodes + 1), slots=slots, prefetch=prefetch,
                         heartbeat_s=heartbeat_s)
        self.nodes = {r: SimNode(r) for r in range(1, nodes + 1)}
        self.heap: list = []
        self.seq = 0
        self.inbox: deque = deque()
        self.coord_free = 0.0
        self.coord_scheduled = False
        self.next_tick = 0.1
        self.heard: dict[int, float] = {}
        self.coord_busy_s = 0.0
        self.core_cpu = 0.0
        self.clock_s = clock_cost()
        self.resolved: dict[int, list] = {}
        self.lost = 0
        self.end = 0.0
        self.kills = int(round(kill_frac * nodes))

    # -- the event heap ------------------------------------------------------------

    def at(self, t: float, fn, *args) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, fn, args))

    def to_coord(self, t: float, ev_fn, *args) -> None:
        """A message (or the shell's own stimulus) reaches the coordinator at ``t``."""
        self.at(t, self._arrive, ev_fn, args)

    def _arrive(self, t: float, ev_fn, args) -> None:
        self.inbox.append((t, ev_fn, args))
        if not self.coord_scheduled:
            self.coord_scheduled = True
            self.at(max(t, self.coord_free), self._coord_step)

    # -- the coordinator: one server ----------------------------------------------

    def _coord_step(self, t: float) -> None:
        inbox = self.inbox
        batch = [inbox.popleft() for _ in range(min(len(inbox), _POLL_LIMIT))]
        events = []
        heard = self.heard
        for _, fn, args in batch:
            if fn is None:          # a heartbeat: the transport notes when, as MPI's does
                heard[args[0]] = t
            else:
                events.append(fn(*args, t))
        if t >= self.next_tick:
            # the shell checks deadlines 10 times a second, but judges silence only up to
            # what it has read: a message still unread (arrived at inbox[0][0]) may be the
            # heartbeat it waits for, so an overloaded coordinator blames no node
            self.next_tick = t + 0.1
            now = min(t, inbox[0][0]) if inbox else t
            # the last-heard times go in only when a deadline may have passed
            events.append(E.Tick(now, dict(heard) if now >= self.core.next_check else None))
        if events:       # (heartbeats alone need no call: the transport noted them)
            c0 = time.process_time()
            out = self.core.handle(*events)
            cpu = max(0.0, time.process_time() - c0 - self.clock_s)
        else:
            out, cpu = [], 0.0
        self.core_cpu += cpu
        cost = cpu + self.shell_s * (len(batch) + len(out))
        self.coord_busy_s += cost
        done = t + cost
        self.coord_free = done
        for ins in out:
            self._execute(ins, done)
        if inbox:
            self.at(done, self._coord_step)
        else:
            self.coord_scheduled = False

    def _execute(self, ins: I.Instruction, t: float) -> None:
        kind = type(ins)
        if kind is I.Dispatch:
            self.at(t + self.lat, self._node_run, ins.rank, ins.items)
        elif kind is I.ResolveTask:
            self.resolved.setdefault(ins.tid, []).append((ins.ok, ins.value))
            self.end = max(self.end, t)
        elif kind is I.NodeDown:
            self.lost += 1
        elif kind is I.Kill:
            self._stop(self.nodes[ins.rank], t)
        elif kind is I.Fatal:
            print(f"simulate: {ins.error}", file=sys.stderr)

    # -- nodes -----------------------------------------------------------------------

    def _node_run(self, t: float, rank: int, items: tuple) -> None:
        node = self.nodes[rank]
        if not node.up:
            return
        node.queue.extend(tid for tid, _ in items)
        self._start(node, t)

    def _start(self, node: SimNode, t: float) -> None:
        while node.running < self.slots and node.queue:
            tid = node.queue.popleft()
            node.running += 1
            self.at(t + self.task_s, self._node_done, node.rank, tid, t)

    def _node_done(self, t: float, rank: int, tid: int, started: float) -> None:
        node = self.nodes[rank]
        if not node.up:
            return
        node.running -= 1
        node.busy_s += t - started
        ok, value = value_of(tid - FIRST_TID)
        self.to_coord(t + self.lat, E.TasksDone, rank, [(tid, ok, value)])
        self._start(node, t)

    def _beat(self, t: float, rank: int) -> None:
        node = self.nodes[rank]
        if node.up and not self._finished():
            self.to_coord(t + self.lat, None, rank)
            self.at(t + self.heartbeat_s / 4, self._beat, rank)

    def _stop(self, node: SimNode, t: float) -> None:
        if node.up:
            node.up = False
            node.died = t
            node.running = 0
            node.queue.clear()

    def _kill(self, t: float, rank: int, hang: bool) -> None:
        node = self.nodes[rank]
        if not node.up:
            return
        self._stop(node, t)
        node.hung = hang
        if not hang:   # a crash: the MPI library reports it a little later
            self.to_coord(t + self.detect_s, E.NodeLost, rank, LossCause.ULFM)

    def _wake(self, t: float) -> None:
        """The coordinator's service loop wakes up even when no message comes."""
        if not self._finished():
            if not self.coord_scheduled:
                self.coord_scheduled = True
                self.at(max(t, self.coord_free), self._coord_step)
            self.at(t + 0.1, self._wake)

    def _finished(self) -> bool:
        return len(self.resolved) >= self.k

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict:
        t0 = time.perf_counter()
        for r in self.nodes:
            self.to_coord(0.0, lambda rank, now: E.NodeHello(rank, f"sim{rank % 64}", rank, now),
                          r)
            self.at(self.rng.random() * self.heartbeat_s / 4, self._beat, r)
        # main submits its tasks in order, as fast as the coordinator takes them
        for i in range(self.k):
            self.to_coord(0.0, lambda tid, now: E.TaskSubmitted(tid, MAIN_TID, now),
                          FIRST_TID + i)
        self.at(0.1, self._wake)
        expected = self.k / (self.n * self.slots) * self.task_s
        for j, rank in enumerate(self.rng.sample(sorted(self.nodes), self.kills)):
            when = expected * (0.2 + 0.4 * self.rng.random())
            self.at(when, self._kill, rank, j % 2 == 1)
        heap = self.heap
        while heap:
            t, _, fn, args = heapq.heappop(heap)
            fn(t, *args)
            if self._finished() and not self.inbox:
                break
        wall = time.perf_counter() - t0
        end = self.end or 1e-9
        capacity = sum(self.slots * ((n.died if n.died is not None else end) - n.born)
                       for n in self.nodes.values())
        work = sum(n.busy_s for n in self.nodes.values())
        exact = len(self.resolved) == self.k and all(
            got == [value_of(tid - FIRST_TID)] for tid, got in self.resolved.items())
        return {"nodes": self.n, "tasks": self.k, "busy": work / capacity if capacity else 0.0,
                "core_us_per_task": self.core_cpu / max(1, self.k) * 1e6, "lost": self.lost,
                "exact": exact, "virtual_s": end, "ideal_s": self.k / (self.n * self.slots)
                * self.task_s, "coord_util": self.coord_busy_s / end, "wall_s": wall,
                "rerun": self.core.stats["rerun"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--task-ms", type=float, required=True)
    ap.add_argument("--tasks", type=int, required=True)
    ap.add_argument("--kill-frac", type=float, default=0.0)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--prefetch", type=int, default=4)
    ap.add_argument("--heartbeat-s", type=float, default=2.0)
    ap.add_argument("--latency-us", type=float, default=50.0,
                    help="one-way message latency (virtual)")
    ap.add_argument("--detect-ms", type=float, default=200.0,
                    help="how long after a crash the coordinator hears of it")
    ap.add_argument("--shell-us", type=float, default=0.0,
                    help="coordinator time per message outside the core (MPI, msgpack)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.nodes < 1 or a.tasks < 1 or a.task_ms <= 0 or not 0 <= a.kill_frac < 1:
        ap.error("need --nodes >= 1, --tasks >= 1, --task-ms > 0 and 0 <= --kill-frac < 1")
    sim = Simulation(a.nodes, a.task_ms, a.tasks, a.kill_frac, a.slots, a.prefetch,
                     a.heartbeat_s, a.latency_us, a.detect_ms, a.shell_us, a.seed)
    r = sim.run()
    print(f"simulate nodes={r['nodes']} tasks={r['tasks']} busy={r['busy']:.4f} "
          f"core_us_per_task={r['core_us_per_task']:.2f} lost={r['lost']} exact={r['exact']}",
          flush=True)
    print(f"  virtual {r['virtual_s']:.3f} s (ideal {r['ideal_s']:.3f} s), coordinator busy "
          f"{100 * r['coord_util']:.1f}% of it, {r['rerun']} task(s) re-run, "
          f"{r['wall_s']:.1f} s real", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
