"""The coordinator's scheduling and failover state, without I/O.

:class:`Core` changes only through :meth:`Core.handle` (events in, instructions
out): nodes and their states, short tasks (queue, prefetch cap, load-aware
placement, ``where=`` constraints, nested submission), spawned tasks (location,
incarnation, restart elsewhere), heartbeats and hello deadlines, spares,
replacement requests, the journal records to write and the statistics of the
end-of-job report. Time comes in with the events.

Costs (the coordinator must keep up with thousands of nodes): nodes with a free
slot sit in a heap keyed by (load, rank) with lazy deletion, so placing a task
is O(log n), never a scan of every node; a dispatch runs once per
:meth:`Core.handle` call, however many events it got.
"""
from __future__ import annotations

import bisect
from collections import deque
from heapq import heapify, heappop, heappush
from typing import Any, Callable, Iterable

from ..errors import CheckpointError, NoNodesError
from . import events as E
from . import instructions as I
from .enums import LossCause, NodeState, TaskKind, TaskState
from .groups import Groups
from .view import NodeView

_MISSING = object()

#: How long a node started with MPI_Comm_spawn has to say hello.
SPAWN_HELLO_S = 30.0

_ALIVE, _SPARE, _STARTING = NodeState.ALIVE, NodeState.SPARE, NodeState.STARTING
_DEAD, _LEFT = NodeState.DEAD, NodeState.LEFT
_PENDING, _RUNNING = TaskState.PENDING, TaskState.RUNNING
_SHORT, _SPAWNED = TaskKind.SHORT, TaskKind.SPAWNED


def _buddies(alive: dict[int, "Node"]) -> dict[int, int]:
    """Every alive node's buddy (see Core._buddy_of), in one pass: O(hosts x nodes)."""
    order = sorted(alive)
    if len(order) < 2:
        return {r: 0 for r in order}
    by_host: dict[str, list[int]] = {}
    for r in order:
        by_host.setdefault(alive[r].host, []).append(r)
    if len(by_host) in (1, len(order)):     # one host, or a host each: the next node
        return {r: order[(i + 1) % len(order)] for i, r in enumerate(order)}
    out = {}
    for mine in by_host.values():
        ours = set(mine)
        apart = [r for r in order if r not in ours]
        for k, r in enumerate(mine):
            out[r] = apart[(bisect.bisect_right(apart, r) + k) % len(apart)]
    return out


class Node:
    """What the core knows of one worker rank."""
    __slots__ = ("rank", "host", "pid", "state", "in_world", "inflight", "spawned", "nwait",
                 "done", "joined_at", "last_heard", "last_done", "lost_at", "cause", "detail",
                 "ver", "lost_tids", "buddy", "untold")

    def __init__(self, rank: int, in_world: bool = True) -> None:
        self.rank = rank
        self.host = "?"
        self.pid = 0
        self.state = _STARTING
        self.in_world = in_world
        self.inflight: dict[int, Task] = {}     # short tasks sent to it, not done
        self.spawned: set[int] = set()          # spawned tasks running on it
        self.nwait = 0          # tasks in flight here that wait on tasks they submitted
        self.done = 0
        self.joined_at = 0.0
        self.last_heard = 0.0
        self.last_done = 0.0
        self.lost_at = 0.0
        self.cause: LossCause | None = None
        self.detail = ""
        self.ver = 0            # bumped on every change of its heap entry
        #: at its loss: the tasks it ran that are to run again (short, then spawned)
        self.lost_tids: tuple[int, ...] = ()
        self.buddy = 0          # the buddy it was last told of (I.TellBuddy)
        self.untold = 0         # its checkpoints not told of, as it said last

    @property
    def load(self) -> int:
        return len(self.inflight) + len(self.spawned)

    @property
    def how_lost(self) -> str:
        return self.cause.describe(self.detail) if self.cause is not None else ""

    def as_dict(self) -> dict:
        return {"rank": self.rank, "host": self.host, "pid": self.pid,
                "state": self.state.value, "running": self.load, "done": self.done}


class Task:
    """What the core knows of one task (its function and arguments stay in the shell)."""
    __slots__ = ("tid", "kind", "parent", "state", "node", "where", "attempts", "inc",
                 "replay", "t_start", "t_ckpt", "digest", "ckpt", "pend", "restoring",
                 "received", "copying", "group", "prev", "durable", "forgot", "t_disk",
                 "stored", "bases")

    def __init__(self, tid: int, kind: TaskKind, parent: int, where: set[int] | None,
                 digest: int = 0) -> None:
        self.tid = tid
        self.kind = kind
        self.parent = parent
        self.state = _PENDING
        self.node: int | None = None
        self.where = where
        self.attempts = 0
        self.inc = 0
        self.replay = True
        self.t_start = 0.0
        self.t_ckpt = 0.0
        self.digest = digest
        #: the newest acknowledged checkpoint: (seq, holders), holders node ranks and 0
        #: (the coordinator's store); None: none acknowledged in this run
        self.ckpt: tuple[int, frozenset[int]] | None = None
        self.pend: _Pending | None = None       # the checkpoint being acknowledged
        #: while a restarted incarnation waits for a node's copy: (that rank, seq)
        self.restoring: tuple[int, int] | None = None
        #: its acknowledged checkpoint counts messages it received: restarting it from
        #: the start would not get them again (their senders have forgotten them)
        self.received = False
        self.copying = 0        # the node a copy of its checkpoint is being made on
        self.group = 0          # its checkpoint group (the first tid of its spawn), or 0
        self.prev: tuple[int, frozenset[int]] | None = None   # the acknowledged one before
        #: with a journal: the newest checkpoint of this incarnation on disk, and the newest
        #: one whose received messages their senders were told to forget
        self.durable = 0
        self.forgot = 0
        self.t_disk = float("-inf")   # when its checkpoint's bytes last went to the coordinator
        #: the seqs of its checkpoints the coordinator's store holds (the newest two)
        self.stored: tuple[int, ...] = ()
        #: per incarnation, the checkpoint it started from (0: the start): a copy an
        #: older incarnation took is of this one's course only up to there (_valid_copy)
        self.bases: list[int] = [0]


class _Pending:
    """A checkpoint on its way to being acknowledged: who holds it so far, and whose
    word it still waits for (node ranks)."""
    __slots__ = ("seq", "rank", "sent", "holders", "waiting", "buddy", "received")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.rank = 0           # the node that took it (known once its call came)
        self.sent = False       # its node's call has come
        self.holders: set[int] = set()
        self.waiting: set[int] = set()
        self.buddy = 0
        self.received = True


#: how long a checkpoint group going back waits for a node's answer (I.AskHeld)
ASK_WAIT_S = 0.25
#: ... and at most, when going on without it would send the group back to its start
ASK_LONGEST_S = 10.0


class _Ask:
    """A checkpoint group's query of the nodes' copies (I.AskHeld): the nodes whose
    answer it waits for, and per member and epoch the nodes that hold a copy of it."""
    __slots__ = ("qid", "waiting", "held", "t0", "taken")

    def __init__(self, qid: int, ranks: Iterable[int], t0: float) -> None:
        self.qid = qid
        self.t0 = t0
        self.waiting = set(ranks)
        self.held: dict[int, dict[int, set[int]]] = {}
        #: tid -> seq -> when its newest copy came, as the nodes said (its age)
        self.taken: dict[int, dict[int, float]] = {}


def _valid_copy(t: Task, seq: int, inc: int) -> bool:
    """Is a copy of checkpoint ``seq`` taken by incarnation ``inc`` of ``t`` on the course
    ``t`` runs now? Its own incarnation's are; an older one's only up to where every
    incarnation since started from (what came after it there was gone back on)."""
    if inc == t.inc:
        return True
    return 0 <= inc < t.inc and all(seq <= b for b in t.bases[inc + 1:t.inc + 1])


class Core:
    """The coordinator's state machine: ``handle(*events) -> list[Instruction]``."""

    def __init__(self, ranks: range | list[int], *, slots: int = 1, prefetch: int = 4,
                 heartbeat_s: float = 2.0, replace_failed: bool = False,
                 journal: bool = False, resume: bool = False, t0: float = 0.0,
                 start_limit: float = 60.0, resolve: Callable[[str], Any] | None = None,
                 rebuild: Callable[[], bool] | None = None, auto_freeze: int = 0,
                 disk_every_s: float = 0.0, node_files: bool = False) -> None:
        self.slots = max(1, slots)
        self.cap = self.slots + max(0, prefetch)
        self.heartbeat_s = heartbeat_s
        self.replace_failed = replace_failed
        self.journal = journal
        #: with a journal: a task's checkpoint goes to the coordinator (and its disk) at
        #: most this often; the ones between stay with the node and its buddy
        self.disk_every_s = disk_every_s      # (a group's epochs: its nodes decide, Node._cut)
        #: with a journal: nodes may write their log-mode tasks' checkpoints to files of
        #: their own without telling (clustervm.nodefiles), so a lost task's newest copy
        #: is asked for, and the coordinator (rank 0) answers for those files
        self.node_files = journal and node_files
        self.resume = resume
        self.t0 = t0
        self.start_limit = start_limit
        self.nodes: dict[int, Node] = {r: Node(r) for r in ranks}
        self.tasks: dict[int, Task] = {}
        self.pending: deque[Task] = deque()
        self.waiting: dict[int, int] = {}       # task -> tasks it submitted, not done
        self.ended: dict[int, bool] = {}        # spawned tasks over: tid -> ok
        self.homeless: list[Task] = []          # spawned tasks waiting for a node to join
        #: checkpoint groups (spawn(checkpoint="group")): first tid -> member tids
        self.ckgroups: dict[int, list[int]] = {}
        #: a checkpoint group's members that ended while others run: group -> {tid: the
        #: last checkpoint after which it sent the other members nothing, or -1}
        self._group_ended: dict[int, dict[int, int]] = {}
        #: checkpoint groups going back: group -> the query of the nodes' copies (_Ask)
        self._asks: dict[int, _Ask] = {}
        self._qid = 0
        self._buddies_changed = False
        #: the nodes alive change: counted, and each one's buddy worked out again once
        #: asked for (_buddy_of)
        self._alive_ver = 0
        self._lost_nodes = 0                    # nodes found dead so far (lost_nodes)
        self._buddies_ver = -1
        self._buddies: dict[int, int] = {}
        self.journal_done: dict[int, tuple[int, bool, Any]] = {}
        self.spawning = 0                       # replacements asked for, not started yet
        #: the VM-wide mailbox (put_info / get_info): name -> value, and who waits for a name
        self.info: dict[str, Any] = {}
        self.info_waiters: dict[str, list[Any]] = {}
        #: PVM groups and their collective rounds (answers leave as Answer instructions)
        self._resolve = resolve
        self.groups = Groups(self, answer=self._group_answer, warn=self._group_warn,
                             rebuild=rebuild, auto_freeze=auto_freeze, thaw=self._group_thaw)
        self.stopping = False
        self.observing = False
        self.fatal: BaseException | None = None
        #: the end-of-job report's counters (the shell counts ckpt_restored, of them
        #: ckpt_from_store by the coordinator, ckpt_read_back of those from a file, and
        #: corrupt)
        self.stats: dict[str, Any] = {"rerun": 0, "redone_s": 0.0, "ckpt_written": 0,
                                      "ckpt_restored": 0, "ckpt_from_store": 0,
                                      "ckpt_read_back": 0, "reused": 0,
                                      "corrupt": 0, "spawned": 0}
        self._alive: dict[int, Node] = {}       # ALIVE nodes, by rank
        self._spares: dict[int, Node] = {}      # SPARE nodes, by rank
        self._room: list[tuple[int, int, int]] = []   # heap of (load, rank, ver)
        self._out: list[I.Instruction] = []
        self._want_dispatch = False
        self._table: dict[type, Callable[[Any], None]] = {
            E.StartBegun: self._start_begun,
            E.StartGraceOver: self._start_grace_over,
            E.NodeHello: self._hello,
            E.NodeBye: self._bye,
            E.NodeLost: self._lost_event,
            E.HeartbeatHeard: self._heard,
            E.Tick: self._tick,
            E.TaskSubmitted: self._submitted,
            E.TaskSpawned: self._spawned,
            E.TasksDone: self._done,
            E.SpawnedExited: self._exited,
            E.TaskCancelled: self._cancelled,
            E.TaskKilled: self._killed,
            E.CheckpointStored: self._checkpoint,
            E.CheckpointHeld: self._checkpoint_held,
            E.CheckpointWritten: self._checkpoint_written,
            E.HeldReported: self._held_reported,
            E.CheckpointsUntold: lambda ev: self._count_untold(ev.rank, ev.count),
            E.TaskRestored: self._restored,
            E.JournalLoaded: self._journal_loaded,
            E.ReplacementStarted: self._replacement_started,
            E.ReplacementEnded: self._replacement_ended,
            E.SparesWanted: self._spares_wanted,
            E.ObserversChanged: self._observers,
            E.ShutdownBegun: self._shutdown,
            E.JobFailed: self._job_failed,
            E.InfoPut: self._info_put,
            E.InfoGet: self._info_get,
            E.InfoDeleted: self._info_deleted,
            E.GroupJoined: self._group_joined,
            E.GroupLeft: self._group_left,
            E.GroupAsked: self._group_asked,
            E.GroupCalled: self._group_called,
            E.FrozenShadows: self._frozen_shadows,
            E.MemberEnded: self._member_ended,
        }

    # -- the one entry point ----------------------------------------------------

    def handle(self, *events: E.Event) -> list[I.Instruction]:
        """Apply ``events`` in order; the instructions that carry them out, in order."""
        table = self._table
        if len(events) > 1:
            self._out_of_reach((ev.rank, ev.cause, ev.detail) for ev in events
                               if type(ev) is E.NodeLost)
        for ev in events:
            now = getattr(ev, "now", None)
            if now is not None:
                self._now = now
            table[type(ev)](ev)
        if self._want_dispatch:
            self._want_dispatch = False
            self._dispatch()
        if self._buddies_changed:
            self._tell_buddies()
        out, self._out = self._out, []
        return out

    # -- queries (the view the shell and observers read) -------------------------

    @property
    def next_check(self) -> float:
        """No heartbeat or hello deadline falls before this time: until then a Tick does
        nothing, and a shell need not copy its last-heard times into one."""
        return self._next_check

    def alive_ranks(self) -> list[int]:
        return list(self._alive)

    def node_views(self) -> tuple[NodeView, ...]:
        """Every node as observers see it (immutable copies, by rank)."""
        return tuple(NodeView(n.rank, n.host, n.pid, n.state.value, n.load, len(n.spawned),
                              n.done, n.how_lost, n.lost_at, n.joined_at)
                     for n in self.nodes.values())

    def alive_nodes(self) -> list[Node]:
        """The nodes that take work, by rank."""
        return list(self._alive.values())

    def has_nodes(self) -> bool:
        """Can work still be placed: a node alive, or one on its way?"""
        return bool(self._alive) or self.joining()

    def joining(self) -> bool:
        """Is a node on its way: being spawned, or started and not said hello yet?

        Work waits for it rather than fail (a starting node that never says hello is
        declared lost on a deadline)."""
        return bool(self.spawning) or any(n.state is _STARTING for n in self.nodes.values())

    def location(self, tid: int) -> tuple[int | None, int, bool] | None:
        """(rank or None, incarnation, replay) of a live task; None if there is no such task."""
        t = self.tasks.get(tid)
        if t is None:
            return None
        return (t.node if t.state is _RUNNING else None), t.inc, t.replay

    def resolve_where(self, where: Any) -> frozenset[int]:
        """Ranks named by ``where``: a rank, a host name, or a list of them."""
        items = where if isinstance(where, (list, tuple, set, frozenset)) else [where]
        ranks: set[int] = set()
        for w in items:
            if isinstance(w, int) and not isinstance(w, bool):
                if w not in self.nodes:
                    raise ValueError(f"where={w!r}: no node has rank {w}; nodes are ranks "
                                     f"1..{len(self.nodes)}")
                ranks.add(w)
            elif isinstance(w, str):
                found = {n.rank for n in self.nodes.values() if n.host == w}
                if not found:
                    hosts = sorted({n.host for n in self.nodes.values()})
                    raise ValueError(f"where={w!r}: no node runs on host {w!r}; hosts: {hosts}")
                ranks |= found
            else:
                raise TypeError(f"where must be a node rank, a host name or a list of them, "
                                f"not {type(w).__name__}")
        return frozenset(ranks)

    # -- node states ------------------------------------------------------------

    def _set_state(self, n: Node, state: NodeState) -> None:
        if state is _DEAD and n.state is not _DEAD:
            self._lost_nodes += 1
        n.state = state
        if state is _ALIVE or state is _SPARE:     # its deadline may be the earliest now
            due = max(n.last_heard, n.joined_at) + self.heartbeat_s
            if due < self._next_check:
                self._next_check = due
        elif state is _STARTING:
            self._next_check = 0.0
        if state is _ALIVE:
            if n.rank not in self._alive:
                self._alive[n.rank] = n
                self._alive_ver += 1
                self._buddies_changed = True
        elif self._alive.pop(n.rank, None) is not None:
            self._alive_ver += 1
            self._buddies_changed = True
        if state is _SPARE:
            self._spares[n.rank] = n
        else:
            self._spares.pop(n.rank, None)
        self._reindex(n)

    def _reindex(self, n: Node) -> None:
        """Put ``n`` back in the heap of nodes with a free slot (if it has one)."""
        n.ver += 1
        if n.state is _ALIVE and len(n.inflight) - n.nwait < self.cap:
            room = self._room
            heappush(room, (len(n.inflight) + len(n.spawned), n.rank, n.ver))
            if len(room) > 4 * len(self.nodes) + 64:     # drop stale entries now and then
                nodes = self.nodes
                self._room = [e for e in room if nodes[e[1]].ver == e[2]]
                heapify(self._room)

    def _start_begun(self, ev: E.StartBegun) -> None:
        self.start_limit = ev.timeout
        self._next_check = 0.0

    def _start_grace_over(self, ev: E.StartGraceOver) -> None:
        self.start_limit = ev.timeout
        self._next_check = 0.0
        for n in list(self.nodes.values()):
            if n.state is _STARTING and n.in_world:
                if not self._alive or ev.now - self.t0 > ev.timeout:
                    self._lose(n.rank, LossCause.NO_HELLO, ev.now)
                else:
                    self._out.append(I.Warn(f"node {n.rank} has not said hello yet; "
                                            f"starting without it"))
        # spares: the highest ranks, and never the last alive node
        count = min(max(0, ev.spares), len(self._alive) - 1)
        for n in sorted(self._alive.values(), key=lambda n: -n.rank)[:max(0, count)]:
            self._set_state(n, _SPARE)

    def _hello(self, ev: E.NodeHello) -> None:
        n = self.nodes.get(ev.rank)
        if n is None or n.state is not _STARTING:
            return
        n.host, n.pid = ev.host, ev.pid
        n.joined_at = n.last_heard = ev.now
        self._set_state(n, _ALIVE)
        if not n.in_world:
            self._out.append(I.NodeUp(n.rank, "spawn"))
        self._tell_locations(n.rank)
        homeless, self.homeless = self.homeless, []
        for t in homeless:     # running: lost with its node; pending: never placed
            if t.state in (_RUNNING, _PENDING) and t.node is None:
                self._place_spawned(t, t.state is _RUNNING, ev.now)
        self._want_dispatch = True

    def _bye(self, ev: E.NodeBye) -> None:
        n = self.nodes.get(ev.rank)
        if n is not None and n.state is not _DEAD:
            self._set_state(n, _LEFT)

    def _heard(self, ev: E.HeartbeatHeard) -> None:
        n = self.nodes.get(ev.rank)
        if n is not None and n.last_heard < ev.now:
            n.last_heard = ev.now

    def _tick(self, ev: E.Tick) -> None:
        now = ev.now
        nodes = self.nodes
        if ev.heard:
            for rank, t in ev.heard.items():
                n = nodes.get(rank)
                if n is not None and n.last_heard < t:
                    n.last_heard = t
        if ev.stalled:     # this process was stalled: do not blame the nodes
            for n in nodes.values():
                n.last_heard = max(n.last_heard, now)
            return
        if self._asks:
            self._asks_overdue(now)
        if now < self._next_check:
            return         # no deadline can have passed (what is heard only delays them)
        # one pass over the nodes, O(n), but only when the earliest deadline of the last
        # pass has come (with beats every heartbeat_s / 4: about one pass in 7 ticks; at
        # 10,000 nodes scanning every tick cost as much as the tasks); losses come after it
        limit = self.heartbeat_s
        since = now - limit
        earliest = float("inf")
        lost: list[tuple[int, LossCause, str]] = []
        for n in nodes.values():
            state = n.state
            if state is _ALIVE or state is _SPARE:
                last = n.last_heard if n.last_heard > n.joined_at else n.joined_at
                if last < since:
                    lost.append((n.rank, LossCause.HEARTBEAT, f"{now - last:.1f} s silent"))
                elif last + limit < earliest:
                    earliest = last + limit
            elif state is _STARTING:
                if n.joined_at:
                    due = n.joined_at + SPAWN_HELLO_S
                    cause, detail = LossCause.NO_HELLO_SPAWN, f"{SPAWN_HELLO_S:.0f} s"
                else:
                    due, cause, detail = self.t0 + self.start_limit, LossCause.NO_HELLO, ""
                if now > due:
                    lost.append((n.rank, cause, detail))
                elif due < earliest:
                    earliest = due
        self._next_check = earliest
        self._out_of_reach(lost)
        for rank, cause, detail in lost:
            self._lose(rank, cause, now, detail)

    def _out_of_reach(self, lost: Iterable[tuple[int, LossCause, str]]) -> None:
        """Nodes found lost together leave the alive ones before any is failed over: a
        task of the first must not be restarted, nor a copy of its checkpoint made, on
        the next (a node told to send to a rank on a host cut off can block in MPI)."""
        for rank, cause, detail in lost:
            n = self._alive.pop(rank, None)
            if n is not None:
                self._alive_ver += 1
                self._buddies_changed = True          # (_set_state finds it gone)
                n.cause, n.detail = cause, detail     # said if no node is left

    def _lost_event(self, ev: E.NodeLost) -> None:
        self._lose(ev.rank, ev.cause, ev.now, ev.detail)

    def _lose(self, rank: int, cause: LossCause, now: float, detail: str = "") -> None:
        """Node ``rank`` is lost: re-queue its short tasks, restart its spawned ones."""
        n = self.nodes.get(rank)
        if n is None or n.state is _DEAD or n.state is _LEFT:
            return
        if self.stopping and not cause.hung and n.state is not _STARTING \
                and not n.inflight and not n.spawned:
            # told to leave with nothing left to do, and gone: it left (after failures no
            # rank calls MPI_Finalize, so ULFM may report a node that exits before its
            # goodbye is handled here)
            self._set_state(n, _LEFT)
            self.groups.node_lost(rank)
            return
        out = self._out
        was_spare = n.state is _SPARE
        n.cause, n.detail, n.lost_at = cause, detail, now
        self._set_state(n, _DEAD)
        out.append(I.NodeDown(rank, cause, detail, was_spare))
        if cause.hung:
            out.append(I.Kill(rank))     # a hung node is never trusted again
        if self.stopping:
            self.groups.node_lost(rank)
            return
        if not was_spare and not self._promote_spare() and self.replace_failed:
            self.spawning += 1
            out.append(I.RequestReplacement(rank))
        stats = self.stats
        inflight = n.inflight
        n.lost_tids = tuple(inflight) + tuple(
            tid for tid in sorted(n.spawned)
            if (t := self.tasks.get(tid)) is not None and t.state is _RUNNING)
        if inflight:
            by_start = sorted(inflight.values(), key=lambda t: t.t_start)
            # tasks queued behind the running ones (prefetch) lose no work
            for t in by_start[:self.slots]:
                stats["redone_s"] += now - max(t.t_start, t.t_ckpt, n.last_done)
            if self.observing:
                for t in by_start:
                    out.append(I.Observe("rerun", t.tid, rank))
            requeue = []
            for t in inflight.values():
                stats["rerun"] += 1
                t.node, t.state = None, _PENDING
                t.attempts += 1
                if t.where is not None:
                    t.where.discard(rank)
                    if not t.where:
                        t.where = None
                requeue.append(t)
            self.pending.extendleft(requeue)
            inflight.clear()
            n.nwait = 0     # it counts only tasks in flight on this node
        spawned, n.spawned = n.spawned, set()
        # open rounds that wait on members of this node that cannot come back fail now
        # (a spare took over, or nodes are left: its spawned members restart elsewhere)
        self.groups.node_lost(rank)
        if not self._alive and not self.joining():
            self._no_nodes_left()
            return
        self._copies_lost(rank)
        self._asks_lost(rank)
        waiting = set(self._asks)       # their queries may wait for this node no more
        groups = set()
        for tid in sorted(spawned):
            t = self.tasks.get(tid)
            if t is not None and t.state is _RUNNING:
                stats["rerun"] += 1
                stats["redone_s"] += now - max(t.t_start, t.t_ckpt)
                if self.observing:
                    out.append(I.Observe("rerun", tid, rank))
                if t.group:
                    groups.add(t.group)
                elif self.journal and not self.node_files:  # every checkpoint is told
                    self._place_spawned(t, True, now)
                else:
                    self._ask(-tid, [t], now)      # restarted once the nodes answered
        for g in sorted(groups):
            self._roll_back(g, now)
        for key in sorted(waiting - groups):
            ask = self._asks.get(key)
            if ask is not None and not ask.waiting:
                self._answered(key, now)
        self._want_dispatch = True

    def _tell_buddies(self) -> None:
        """The nodes alive changed: tell each whose buddy (_buddy_of) changed. A node
        learns it with its tasks' SPAWNs and checkpoint answers too, but a checkpoint
        group's epochs are not answered (Node.checkpoint), and its copies must go to a
        node alive."""
        self._buddies_changed = False
        for n in self._alive.values():
            b = self._buddy_of(n.rank)
            if b != n.buddy:
                n.buddy = b
                self._out.append(I.TellBuddy(n.rank, b))

    def _promote_spare(self) -> bool:
        if not self._spares:
            return False
        n = self._spares[min(self._spares)]     # the lowest rank first, as before
        self._set_state(n, _ALIVE)
        self._out.append(I.NodeUp(n.rank, "spare"))
        self._tell_locations(n.rank)
        return True

    def _tell_locations(self, rank: int) -> None:
        """Node ``rank`` joins the work after tasks were placed: it learns where they run."""
        alive = self._alive     # (a task of a node being lost is placed again, after)
        items = tuple((t.tid, t.node, t.inc, t.replay) for t in self.tasks.values()
                      if t.kind is _SPAWNED and t.state is _RUNNING and t.node in alive)
        if items:
            self._out.append(I.TellLocations(rank, items))

    def _no_nodes_left(self) -> None:
        if self.joining():
            return    # a replacement is on its way: the work waits for it
        self.homeless.clear()
        lost = ", ".join(f"node {n.rank} ({n.host}: {n.how_lost})"
                         for n in self.nodes.values() if n.state is _DEAD
                         or (n.state is _ALIVE and n.rank not in self._alive))
        err = NoNodesError(f"every worker node is lost ({lost}); the job cannot go on. "
                           "Start it with more nodes, with --spares K, or resume it with "
                           "--resume DIR if it ran with --checkpoint-dir")
        self._fail_job(err)

    def _job_failed(self, ev: E.JobFailed) -> None:
        if self.fatal is None:      # the first cause is the one told
            self._fail_job(ev.error)

    def _fail_job(self, err: BaseException) -> None:
        """The job cannot go on: every task ends with ``err``, and so does the job."""
        self.fatal = err
        self._out.append(I.Fatal(err))
        for t in list(self.tasks.values()):
            self._finish(t, False, err, packed=False)
        self.pending.clear()

    def _replacement_started(self, ev: E.ReplacementStarted) -> None:
        n = self.nodes[ev.rank] = Node(ev.rank, in_world=False)
        n.host = ev.host
        n.joined_at = ev.now      # its hello is due SPAWN_HELLO_S from now
        self.stats["spawned"] += 1
        self._next_check = 0.0

    def _replacement_ended(self, ev: E.ReplacementEnded) -> None:
        self.spawning = max(0, self.spawning - 1)
        if not self._alive and not self.joining() and self.fatal is None:
            self._no_nodes_left()

    def _spares_wanted(self, ev: E.SparesWanted) -> None:
        for _ in range(ev.count):
            if not self._promote_spare():
                break
        self._want_dispatch = True

    def _observers(self, ev: E.ObserversChanged) -> None:
        self.observing = ev.on

    def _shutdown(self, ev: E.ShutdownBegun) -> None:
        self.stopping = True

    # -- the VM-wide mailbox ------------------------------------------------------

    def _info_put(self, ev: E.InfoPut) -> None:
        self.info[ev.name] = ev.value
        out = self._out
        for waiter in self.info_waiters.pop(ev.name, ()):
            out.append(I.Answer(waiter, True, ev.value))
        out.append(I.Answer(ev.reply, True, None))

    def _info_get(self, ev: E.InfoGet) -> None:
        if ev.name in self.info:
            self._out.append(I.Answer(ev.reply, True, self.info[ev.name]))
        elif ev.wait:
            self.info_waiters.setdefault(ev.name, []).append(ev.reply)
        else:
            self._out.append(I.Answer(ev.reply, False, KeyError(
                f"no mailbox entry named {ev.name!r}; put_info it first or "
                f"get_info(..., wait=True)")))

    # -- PVM groups (clustervm.core.groups) -------------------------------------------

    def _group_answer(self, reply: Any, ok: bool, value: Any) -> None:
        self._out.append(I.Answer(reply, ok, value))

    def _group_warn(self, text: str) -> None:
        self._out.append(I.Warn(text))

    def _group_thaw(self, name: str, tids: list[int], ranks: list[int]) -> None:
        self._out.append(I.ThawGroup(name, tuple(tids), tuple(ranks)))

    def _group_joined(self, ev: E.GroupJoined) -> None:
        if self.groups.join_when_off(ev.name, ev.tid, ev.reply):
            return              # answered once the group's members are off MPI
        def join() -> list:
            new = ev.tid not in self.groups.tids(ev.name)
            return [*self.groups.join(ev.name, ev.tid), new]
        self._group_do(ev.reply, join)

    def _group_left(self, ev: E.GroupLeft) -> None:
        self._group_do(ev.reply, lambda: self.groups.leave(ev.name, ev.tid))

    def _group_asked(self, ev: E.GroupAsked) -> None:
        g = self.groups
        ask = {"size": lambda: g.size(ev.name), "tids": lambda: g.tids(ev.name),
               "tid": lambda: g.tid(ev.name, ev.arg), "inst": lambda: g.inst(ev.name, ev.arg)}
        self._group_do(ev.reply, ask[ev.what])

    def _group_called(self, ev: E.GroupCalled) -> None:
        try:
            self.groups.collective(ev.reply, ev.op, ev.name, ev.tid, ev.value, ev.count,
                                   ev.root, ev.fn, ev.round_no, envelope=ev.envelope)
        except Exception as exc:   # noqa: BLE001 - the caller gets it, as any answer
            self._out.append(I.Answer(ev.reply, False, exc))

    def _frozen_shadows(self, ev: E.FrozenShadows) -> None:
        self.groups.shadow_batch(ev.name, ev.tid, ev.entries, ev.off)

    def _member_ended(self, ev: E.MemberEnded) -> None:
        self.groups.task_exit(ev.tid, ev.error)

    def _group_do(self, reply: Any, call: Callable[[], Any]) -> None:
        try:
            value = call()
        except Exception as exc:   # noqa: BLE001 - the caller gets it
            self._out.append(I.Answer(reply, False, exc))
            return
        self._out.append(I.Answer(reply, True, value))

    # -- what the groups ask of the core (clustervm.core.groups.Owner) -----------------

    def in_world(self, rank: int) -> bool:
        """Is ``rank`` in COMM_WORLD (the coordinator, or a node not started by spawn)?"""
        n = self.nodes.get(rank)
        return n.in_world if n is not None else rank == 0

    def lost_nodes(self) -> int:
        """Nodes lost so far (once one is, MPI_Comm_create_group on COMM_WORLD fails)."""
        return self._lost_nodes

    def restartable(self, tid: int) -> bool:
        """Will task ``tid`` come back after its node is lost (a node is left to run it)?"""
        return tid in self.tasks and bool(self._alive)

    def resolve(self, ref: str) -> Any:
        """A function reference (a group's reduce function) -> the callable (the shell's)."""
        if self._resolve is None:
            raise ValueError(f"no resolver for the function reference {ref!r}")
        return self._resolve(ref)

    def _info_deleted(self, ev: E.InfoDeleted) -> None:
        if self.info.pop(ev.name, _MISSING) is _MISSING:
            self._out.append(I.Answer(ev.reply, False, KeyError(
                f"no mailbox entry named {ev.name!r}; nothing to delete")))
        else:
            self._out.append(I.Answer(ev.reply, True, None))

    # -- short tasks --------------------------------------------------------------

    def _reuse(self, tid: int, kind: TaskKind, digest: int) -> bool:
        """Resume: a task the journal says finished is answered from it, not run."""
        got = self.journal_done.get(tid)
        if got is None:
            return False
        jdigest, ok, value = got
        if jdigest != digest:
            self._out.append(I.Warn(f"resume: task {tid} differs from the journaled one "
                                    f"(other function or arguments); running it again"))
            return False
        self.stats["reused"] += 1
        if kind is _SPAWNED:
            self.ended[tid] = ok
        self._out.append(I.ResolveTask(tid, kind, ok, value, packed=True, reused=True))
        return True

    def _submitted(self, ev: E.TaskSubmitted) -> None:
        tid = ev.tid
        if self.fatal is not None:
            self._out.append(I.ResolveTask(tid, _SHORT, False, self.fatal, packed=False))
            return
        if self.journal_done and self._reuse(tid, _SHORT, ev.digest):
            return
        t = Task(tid, _SHORT, ev.parent, set(ev.where) if ev.where is not None else None,
                 ev.digest)
        self.tasks[tid] = t
        parent = ev.parent
        if parent in self.tasks:   # nested: a parent waiting on it gives up its slot
            left = self.waiting.get(parent, 0)
            self.waiting[parent] = left + 1
            if not left:
                self._wait_changed(parent, +1)
        self.pending.append(t)
        self._want_dispatch = True

    def _wait_changed(self, tid: int, delta: int) -> None:
        """Task ``tid`` starts (+1) or stops (-1) waiting on its children: its node's
        count of waiting tasks follows, if the task is in flight there."""
        t = self.tasks.get(tid)
        if t is None or t.kind is not _SHORT or t.state is not _RUNNING:
            return
        n = self.nodes.get(t.node)
        if n is not None and tid in n.inflight:
            n.nwait += delta
            self._reindex(n)

    def _dispatch(self) -> None:
        """Hand pending short tasks to the least loaded nodes with a free slot, in batches."""
        pending = self.pending
        if not pending or self.stopping or not self._alive:
            return
        room = self._room
        nodes = self.nodes
        cap = self.cap
        waiting = self.waiting
        batches: dict[int, list] = {}
        skipped: list[Task] = []
        now = self._now
        while pending and room:
            load, rank, ver = room[0]
            n = nodes[rank]
            if n.ver != ver:
                heappop(room)          # stale
                continue
            t = pending.popleft()
            if t.state is not _PENDING:
                continue               # cancelled while queued
            if t.where is not None and rank not in t.where:
                target = self._pick_room(t.where)
                if target is None:
                    if self._may_come(t.where):
                        skipped.append(t)        # its nodes are busy (or starting): wait
                        continue
                    t.where = None               # none of its nodes is left: run anywhere
                    heappop(room)
                else:
                    n = target
            else:
                heappop(room)
            t.node, t.state, t.t_start = n.rank, _RUNNING, now
            n.inflight[t.tid] = t
            if t.tid in waiting:
                n.nwait += 1
            b = batches.get(n.rank)
            if b is None:
                b = batches[n.rank] = []
            b.append((t.tid, t.attempts))
            n.ver += 1
            if len(n.inflight) - n.nwait < cap:
                heappush(room, (len(n.inflight) + len(n.spawned), n.rank, n.ver))
        if skipped:
            pending.extendleft(reversed(skipped))
        out = self._out
        if self.observing:
            for rank, items in batches.items():
                for tid, _ in items:
                    out.append(I.Observe("start", tid, rank))
        for rank, items in batches.items():
            out.append(I.Dispatch(rank, tuple(items)))

    def _pick_room(self, where: set[int]) -> Node | None:
        """The least loaded alive node of ``where`` with a free slot."""
        best = None
        cap = self.cap
        for r in where:
            n = self._alive.get(r)
            if n is not None and len(n.inflight) - n.nwait < cap:
                if best is None or (n.load, n.rank) < (best.load, best.rank):
                    best = n
        return best

    def _may_come(self, where: set[int]) -> bool:
        """Is a node of ``where`` alive or starting (so a task bound to them may wait)?"""
        nodes = self.nodes
        return any(r in nodes and nodes[r].state in (_ALIVE, _STARTING) for r in where)

    def _pick(self, where: set[int] | None) -> Node | None:
        """The least loaded alive node (of ``where``), free slot or not."""
        cands = self._alive.values() if where is None else \
            [n for n in (self._alive.get(r) for r in where) if n is not None]
        best = None
        for n in cands:
            if best is None or (n.load, n.rank) < (best.load, best.rank):
                best = n
        return best

    def _done(self, ev: E.TasksDone) -> None:
        n = self.nodes.get(ev.rank)
        if n is None or n.state is _DEAD:
            return               # a hung node's late results are never trusted
        if n.last_heard < ev.now:
            n.last_heard = ev.now
        inflight = n.inflight
        waiting = self.waiting
        for tid, ok, value in ev.results:
            t = inflight.pop(tid, None)
            if t is None:
                continue          # cancelled, or already re-run elsewhere
            if tid in waiting:
                n.nwait -= 1
            n.done += 1
            self._finish(t, ok, value)
        n.last_done = ev.now
        self._reindex(n)
        self._want_dispatch = True

    def _finish(self, t: Task, ok: bool, value: Any, packed: bool = True,
                cut: int = -1) -> None:
        """A task is over: deliver its outcome once, journal it, drop its checkpoints.
        ``cut``: see E.SpawnedExited."""
        state = t.state
        if state is not _RUNNING and state is not _PENDING:
            return            # over already (identity tests: an Enum's hash is slow)
        tid = t.tid
        t.state = TaskState.DONE if ok else TaskState.ERROR
        self.tasks.pop(tid, None)
        waiting = self.waiting
        if waiting:
            waiting.pop(tid, None)
            left = waiting.get(t.parent)
            if left is not None:
                if left > 1:
                    waiting[t.parent] = left - 1
                else:
                    del waiting[t.parent]
                    self._wait_changed(t.parent, -1)
        out = self._out
        if self.observing:
            out.append(I.Observe("end", tid, t.node, ok))
        if self.journal and packed:
            out.append(I.JournalDone(tid, t.digest, ok, value, cut))
        if t.kind is _SPAWNED or t.t_ckpt or t.attempts or self.resume:   # its checkpoints
            # a spawned task's node and its buddy may hold copies the coordinator was not
            # told of (Node.checkpoint)
            held = set(t.ckpt[1]) if t.ckpt is not None else set()
            if t.kind is _SPAWNED and t.node is not None:
                held |= {t.node, self._buddy_of(t.node)}
            if t.pend is not None:
                held |= t.pend.holders | {t.pend.buddy}
                t.pend = None
            held.discard(0)
            held.intersection_update(self._alive)
            out.append(I.DropCheckpoints(tid, tuple(sorted(held))))
        if t.kind is _SPAWNED:
            self.ended[tid] = ok
            if t.group:
                members = self.ckgroups.get(t.group)
                if members is not None and tid in members:
                    members.remove(tid)
                    if not members:
                        del self.ckgroups[t.group]
                        self._group_ended.pop(t.group, None)
                    else:
                        self._group_ended.setdefault(t.group, {})[tid] = cut
            out.append(I.BroadcastLocation(tid, -1, t.inc, False, tuple(self._alive)))
        out.append(I.ResolveTask(tid, t.kind, ok, value, packed))

    def _cancelled(self, ev: E.TaskCancelled) -> None:
        t = self.tasks.get(ev.tid)
        if t is None or t.kind is not _SHORT:
            return
        if t.state is _RUNNING:
            if not ev.running:
                return       # a node may be running it: not cancelled, as concurrent.futures
            n = self.nodes.get(t.node)
            if n is not None and n.inflight.pop(t.tid, None) is not None:
                if t.tid in self.waiting:
                    n.nwait -= 1
                self._out.append(I.CancelQueued(n.rank, t.tid))
                self._reindex(n)
                self._want_dispatch = True
        t.state = TaskState.CANCELLED
        self.tasks.pop(t.tid, None)
        self.waiting.pop(t.tid, None)
        left = self.waiting.get(t.parent)
        if left is not None:
            if left > 1:
                self.waiting[t.parent] = left - 1
            else:
                del self.waiting[t.parent]
                self._wait_changed(t.parent, -1)
        self._out.append(I.Cancelled(t.tid))

    # -- spawned tasks --------------------------------------------------------------

    def _spawned(self, ev: E.TaskSpawned) -> None:
        tid = ev.tid
        if self.fatal is not None:
            self.ended[tid] = False
            self._out.append(I.ResolveTask(tid, _SPAWNED, False, self.fatal, packed=False))
            return
        if self.journal_done and self._reuse(tid, _SPAWNED, ev.digest):
            return
        t = Task(tid, _SPAWNED, ev.parent, set(ev.where) if ev.where else None, ev.digest)
        t.replay = ev.replay
        if ev.group:
            t.group = ev.group
            self.ckgroups.setdefault(ev.group, []).append(tid)
        self.tasks[tid] = t
        self._place_spawned(t, self.resume, ev.now)

    def _place_spawned(self, t: Task, restart: bool, now: float,
                       prefer: Node | None = None) -> None:
        holders = () if not restart or t.ckpt is None else \
            sorted(r for r in t.ckpt[1] if r in self._alive)
        n = None
        if prefer is not None:       # a group member rolled back where it runs
            n = prefer
        elif holders:    # restart where a copy of its checkpoint is, if as little loaded
            best = self._pick(t.where) or self._pick(None)
            near = self._pick(set(holders) & t.where if t.where else set(holders))
            n = near if near is not None and best is not None and near.load <= best.load \
                else best
        else:
            n = self._pick(t.where) or self._pick(None)
        if n is None:
            if self.joining():
                t.node = None
                self.homeless.append(t)
            self._no_nodes_left()
            return
        source = seq = 0
        if restart and t.ckpt is not None:
            seq = t.ckpt[0]
            if n.rank in holders:
                source = n.rank
            elif holders:
                source = holders[0]
            elif 0 not in t.ckpt[1] and not self.journal and not self._copies_gone(t):
                return
        t.restoring = (source, seq) if source and source != n.rank else None
        if restart:
            t.inc += 1
            t.bases.append(seq)
            t.pend = None       # what the old incarnation had on its way is not waited for
            t.durable = t.forgot = 0
        t.node, t.state, t.t_start = n.rank, _RUNNING, now
        n.spawned.add(t.tid)
        self._reindex(n)
        if self.observing:
            self._out.append(I.Observe("start", t.tid, n.rank))
        tell = tuple(self._alive)      # every node: a first message to it need not ask
        buddy = self._buddy_of(n.rank)
        self._out.append(I.PlaceSpawned(n.rank, t.tid, t.inc, restart, t.replay, tell,
                                        source, seq, buddy, self.journal or not buddy,
                                        t.group))

    def _roll_back(self, group: int, now: float) -> None:
        """A member of checkpoint group ``group`` was lost: every member goes back to the
        group's newest epoch held for all of them (survivors too, on their own nodes,
        from their own copies; a new incarnation there aborts the old). Nobody told the
        coordinator of the epochs in memory (Node.checkpoint): it asks every node alive
        which copies it holds (I.AskHeld) and decides once all have answered or are lost
        (_go_back); a node lost meanwhile only takes its copies out of the count."""
        members = self._running_members(group)
        if not members:
            self._asks.pop(group, None)
            return
        ask = self._asks.get(group)
        if ask is None:
            self._ask(group, members, now)
        elif not ask.waiting:
            self._go_back(group, now)

    def _ask(self, key: int, tasks: list[Task], now: float) -> None:
        """Ask every node alive which copies it holds of ``tasks`` (I.AskHeld); the
        answers decide query ``key``: a checkpoint group (its first tid), or -tid for a
        log-mode task lost with its node (_answered)."""
        if key in self._asks:
            return
        self._qid += 1
        ranks = set(self._alive) | ({0} if self.node_files else set())
        ask = self._asks[key] = _Ask(self._qid, ranks, now)
        if ask.waiting:
            self._out.append(I.AskHeld(ask.qid, tuple(sorted(ask.waiting)),
                                       tuple(t.tid for t in tasks)))
        else:
            self._answered(key, now)

    def _answered(self, key: int, now: float, silent: frozenset[int] = frozenset()) -> None:
        """Query ``key`` is answered (or, ``silent``: those nodes have not answered in
        time; see _asks_overdue)."""
        if key > 0:
            self._go_back(key, now, silent)
        else:
            self._restart_held(-key, now, silent)

    def _restart_held(self, tid: int, now: float, silent: frozenset[int] = frozenset()) -> None:
        """Log-mode task ``tid`` (lost with its node) restarts from its newest checkpoint
        held on a node alive or by the coordinator, the nodes have said (its node told
        the coordinator of its checkpoints only until one counted received messages:
        Node.checkpoint). None left: from the start, unless it had received messages
        its senders may have forgotten (Core._copies_gone ends the job then)."""
        ask = self._asks[-tid]
        t = self.tasks.get(tid)
        if t is None or t.state is not _RUNNING:
            del self._asks[-tid]
            return
        alive = self._alive.keys() | {0}        # 0: the nodes' files (clustervm.nodefiles)
        held = {s: ranks & alive for s, ranks in ask.held.get(tid, {}).items()}
        stored = self._stored_epochs(t)
        best = max({s for s, ranks in held.items() if ranks} | stored | {0})
        if silent and not best and t.ckpt is not None and t.received:
            return          # only a silent node may hold its copy, or the job fails: wait
        del self._asks[-tid]
        if silent:
            self._silent(-tid, silent, now - ask.t0)
        self._redone(t, ask, best)
        if best:
            t.ckpt = (best, frozenset(held.get(best, set()) | ({0} if best in stored else set())))
        elif t.ckpt is not None:
            t.ckpt = (t.ckpt[0], frozenset())     # every copy lost: _copies_gone says so
        # (else it told of none: it had received nothing its senders may have forgotten)
        t.prev = None
        self._place_spawned(t, True, now)

    def _running_members(self, group: int) -> list[Task]:
        return [t for t in (self.tasks.get(m) for m in self.ckgroups.get(group, ()))
                if t is not None and t.state is _RUNNING]

    def _held_reported(self, ev: E.HeldReported) -> None:
        for key, ask in self._asks.items():
            if ask.qid == ev.qid:
                break
        else:
            return      # a late answer: that query is decided
        if ev.rank not in ask.waiting or ev.rank not in self._alive and ev.rank != 0:
            return
        ask.waiting.discard(ev.rank)
        for tid, seq, inc, age in ev.items:
            t = self.tasks.get(tid)
            if t is not None and (t.group == key if key > 0 else tid == -key) \
                    and _valid_copy(t, seq, inc):
                ask.held.setdefault(tid, {}).setdefault(seq, set()).add(ev.rank)
                taken = ask.taken.setdefault(tid, {})
                taken[seq] = max(taken.get(seq, float("-inf")), ev.now - age)
        if not ask.waiting:
            self._answered(key, ev.now)

    def _asks_overdue(self, now: float) -> None:
        """A node that has not answered within ASK_WAIT_S (hung, say, and not yet found
        so by its heartbeat) is not waited for (its members then go back again once it
        is found lost), unless going on without what it may hold would end the job with
        an error (then it is waited for until it answers or is lost), or send a
        checkpoint group back to its start (then for ASK_LONGEST_S at most: a node slow
        to answer on a loaded box held the group's newest epoch, seen in a full test
        run)."""
        for key, ask in list(self._asks.items()):
            if ask.waiting and now - ask.t0 >= ASK_WAIT_S:
                self._answered(key, now, frozenset(ask.waiting))

    def _silent(self, key: int, silent: frozenset[int], waited: float) -> None:
        what = f"checkpoint group {key}" if key > 0 else f"task {-key}"
        self._out.append(I.Warn(
            f"{what}: node(s) {', '.join(map(str, sorted(silent)))} did not say within "
            f"{waited:.2f} s which checkpoint copies they hold; going back to the newest "
            f"the other nodes hold"))

    def _asks_lost(self, rank: int) -> None:
        """Node ``rank`` is lost: its answer is not waited for (the queries it ends are
        decided: _lose), and its copies do not count (the decisions count the nodes
        alive only)."""
        for ask in self._asks.values():
            ask.waiting.discard(rank)

    def _redone(self, t: Task, ask: _Ask, seq: int) -> None:
        """``t``, lost with its node, goes back to its checkpoint ``seq`` (0: the start):
        correct the work redone that its loss counted from the last checkpoint the core
        was told of (_lose), with when that copy came, as its holders said."""
        n = self.nodes.get(t.node) if t.node is not None else None
        if n is None or n.state is not _DEAD:
            return          # a survivor going back with its group: not counted
        counted = max(t.t_start, t.t_ckpt)
        base = t.t_start if not seq else ask.taken.get(t.tid, {}).get(seq)
        if base is None:
            return          # at the coordinator (disk): its time is the one counted
        base = min(max(base, t.t_start), n.lost_at)
        self.stats["redone_s"] += counted - base
        t.t_ckpt = base

    def _stored_epochs(self, t: Task) -> set[int]:
        """The epochs of ``t`` the coordinator holds (on disk with a journal; else those
        of its acknowledged checkpoints it was sent, with no buddy)."""
        if self.journal:
            return set(t.stored)
        return {c[0] for c in (t.ckpt, t.prev) if c is not None and 0 in c[1]}

    def _go_back(self, group: int, now: float, silent: frozenset[int] = frozenset()) -> None:
        """Every node alive has said what it holds (or ``silent`` ones have not, in
        time): the group goes back to the newest epoch held for every running member, in
        memory on a node alive or at the coordinator (its disk), else to the start. A
        member whose every copy in memory was lost (its node and its buddy at once) is
        said to be so."""
        ask = self._asks[group]
        members = self._running_members(group)
        if not members:
            del self._asks[group]
            return
        alive = self._alive
        memory = {t.tid: {s for s, ranks in ask.held.get(t.tid, {}).items() if ranks & alive.keys()}
                  for t in members}
        # on disk: the coordinator's, and the files the nodes wrote (rank 0 answers for them)
        stored = {t.tid: self._stored_epochs(t) | {s for s, ranks in ask.held.get(t.tid, {}).items()
                                                    if 0 in ranks} for t in members}
        epoch = max(set.intersection(*({0} | memory[t.tid] | stored[t.tid]
                                       for t in members)))
        newest = max((max(s) for s in memory.values() if s), default=0)
        lost = [t.tid for t in members if not memory[t.tid]]
        gone = ended_after(self._group_ended.get(group, {}), epoch)
        if silent and (gone or not epoch and now - ask.t0 < ASK_LONGEST_S):
            return          # a silent node may hold what spares the job its end, or the
            #                 group's work since its start: wait (see _asks_overdue)
        del self._asks[group]
        if silent:
            self._silent(group, silent, now - ask.t0)
        if lost and epoch < newest:
            self._out.append(I.Warn(
                f"checkpoint group {group}: every copy in memory of checkpoint {newest} of "
                f"task(s) {', '.join(map(str, lost))} was on nodes lost at once; the group "
                + (f"goes back to its checkpoint {epoch}, the newest on disk for every "
                   f"member" if epoch else "starts again from the start (no checkpoint "
                   "of it is on disk for every member yet)")))
        for t in members:
            self._redone(t, ask, epoch)
            holders = ask.held.get(t.tid, {}).get(epoch, set()) & alive.keys()
            if epoch in stored[t.tid]:
                holders.add(0)
            t.ckpt, t.prev = ((epoch, frozenset(holders)) if epoch else None), None
        if gone:
            # what they sent the others after the epoch is needed again, and nobody can
            # send it: waiting for it would hang the job
            self._fail_job(cannot_go_back(group, epoch, gone))
            return
        self._out.append(I.GroupRolledBack(group, epoch))
        start = len(self._out)
        for t in members:
            if self.journal and any(s > epoch for s in t.stored):
                # checkpoints past the group's epoch are of a course it no longer takes:
                # the store keeps none of them (a later one with the same seq replaces it)
                t.stored = tuple(s for s in t.stored if s <= epoch)
                self._out.append(I.DropCheckpointsAfter(t.tid, epoch))
            t.pend, t.restoring = None, None
            n = self.nodes.get(t.node) if t.node is not None else None
            if n is not None and n.state is _ALIVE:
                n.spawned.discard(t.tid)
                self._reindex(n)
                self.stats["rerun"] += 1
                self._place_spawned(t, True, now, prefer=n)
            else:
                self._place_spawned(t, True, now)
        # every node learns every member's new place before any member starts again:
        # a member's first messages would otherwise go to a lost peer's old node (an
        # MPI send to a dead rank may complete, and no log sends it again)
        placed = [i for i in self._out[start:] if isinstance(i, I.PlaceSpawned)]
        told = [I.BroadcastLocation(p.tid, p.rank, p.inc, p.replay, p.tell, True)
                for p in placed]
        self._out[start:start] = told

    def _copies_gone(self, t: Task) -> bool:
        """Every copy of ``t``'s acknowledged checkpoint was on nodes now lost, and no
        directory holds one. A task that had received no message starts again from the
        start (True); one that had cannot (the senders have forgotten those messages), and
        the job ends with an error that says so (False)."""
        seq = t.ckpt[0] if t.ckpt is not None else 0
        if not t.received:
            self._out.append(I.Warn(
                f"task {t.tid}: every copy of its checkpoint {seq} was on nodes that are "
                f"lost; it starts again from the start (it had received no message)"))
            t.ckpt = None
            return True
        err = CheckpointError(
            f"task {t.tid} cannot be restarted: every copy of its checkpoint {seq} was on "
            f"nodes that are lost at once (the node that ran it and its buddy), and the "
            f"messages it had received before it are forgotten, so the job cannot go on. "
            f"Run the job with --checkpoint-dir DIR to keep a copy on disk as well")
        t.node = None
        self._fail_job(err)
        return False

    def _exited(self, ev: E.SpawnedExited) -> None:
        t = self.tasks.get(ev.tid)
        if t is None or t.inc != ev.inc or t.node != ev.rank:
            return
        n = self.nodes.get(ev.rank)
        if n is None or n.state is _DEAD:
            return
        if n.last_heard < ev.now:
            n.last_heard = ev.now
        n.spawned.discard(t.tid)
        self._reindex(n)
        self._count_untold(ev.rank, ev.ckpts)
        self._finish(t, ev.ok, ev.value, cut=ev.cut)
        self._want_dispatch = True

    def _killed(self, ev: E.TaskKilled) -> None:
        t = self.tasks.get(ev.tid)
        if t is None:
            return
        if t.kind is _SHORT:
            self._cancelled(E.TaskCancelled(ev.tid, running=True))
            return
        if t.node is not None:
            self._out.append(I.KillTask(t.node, t.tid, t.inc))
            n = self.nodes.get(t.node)
            if n is not None:
                n.spawned.discard(t.tid)
                self._reindex(n)
        self._finish(t, False, ev.value)

    # -- checkpoints and the journal ----------------------------------------------------

    def _checkpoint(self, ev: E.CheckpointStored) -> None:
        t = self.tasks.get(ev.tid)
        if t is None or t.inc != ev.inc or t.node != ev.rank or t.state is not _RUNNING:
            # over already (a late duplicate), an old incarnation, or from a lost node
            # while the task waits for a new one (same incarnation until it is placed)
            return
        t.t_ckpt = ev.now
        p = self._pending(t, ev.seq)
        if p is None:
            return
        p.sent, p.rank, p.received = True, ev.rank, ev.received
        if ev.stored:
            p.holders.add(0)
            t.t_disk = ev.now
            t.stored = (ev.seq, *t.stored[:1])
            self._out.append(I.StoreCheckpoint(ev.tid, ev.inc, ev.seq))
        buddy = ev.buddy
        if buddy:
            p.holders.add(ev.rank)          # the node keeps its own copy
            p.buddy = buddy
            if buddy in self._alive and buddy not in p.holders:
                p.waiting.add(buddy)        # until its HELD comes (or it is lost)
        self._commit_if_held(t)

    def _pending(self, t: Task, seq: int) -> _Pending | None:
        """The pending checkpoint ``seq`` of ``t`` (made if new); None if it is older
        than one already acknowledged or pending (a late duplicate)."""
        p = t.pend
        if p is not None and p.seq == seq:
            return p
        if (t.ckpt is not None and seq <= t.ckpt[0]) or (p is not None and seq < p.seq):
            return None
        t.pend = p = _Pending(seq)
        return p

    def _checkpoint_held(self, ev: E.CheckpointHeld) -> None:
        t = self.tasks.get(ev.tid)
        if ev.inc == -1 and t is not None and ev.rank in self._alive:   # a copy made again
            if t.copying == ev.rank:
                t.copying = 0
            if t.ckpt is not None and t.ckpt[0] == ev.seq:
                t.ckpt = (ev.seq, t.ckpt[1] | {ev.rank})
            return
        if t is None or t.inc != ev.inc or t.state is not _RUNNING \
                or ev.rank not in self._alive:
            return
        p = self._pending(t, ev.seq)
        if p is None:
            return
        p.holders.add(ev.rank)
        p.waiting.discard(ev.rank)
        self._commit_if_held(t)

    def _count_untold(self, rank: int, count: int) -> None:
        """Node ``rank``'s count of checkpoints the coordinator was not told of (all so
        far) is ``count``: the report's count of checkpoints written grows by what is new."""
        n = self.nodes.get(rank)
        if n is not None and count > n.untold:
            self.stats["ckpt_written"] += count - n.untold
            n.untold = count

    def _checkpoint_written(self, ev: E.CheckpointWritten) -> None:
        t = self.tasks.get(ev.tid)
        if t is None or t.inc != ev.inc or not ev.ok:
            return      # an older incarnation's, or failed (the shell tells the task)
        t.durable = max(t.durable, ev.seq)
        self._forget_durable(t)

    def _commit_if_held(self, t: Task) -> None:
        """Acknowledge ``t``'s pending checkpoint once its node's call came and every copy
        it waits for is held (a buddy lost meanwhile is not waited for).

        With a journal the acknowledgment does not wait for the disk (the coordinator
        holds a copy in memory, written behind the run); the senders of what the task
        received forget those messages only once a checkpoint at least as new is on disk
        too (``_forget_durable``), so ``--resume`` still finds them."""
        p = t.pend
        if p is None or not p.sent or p.waiting:
            return
        t.pend = None
        t.prev, t.ckpt = t.ckpt, (p.seq, frozenset(p.holders))
        t.received = t.received or p.received
        self.stats["ckpt_written"] += 1
        buddy = self._buddy_of(p.rank)
        self._out.append(I.CommitCheckpoint(p.rank, t.tid, p.seq, tuple(sorted(p.holders)),
                                            buddy, not buddy or self._to_disk(t),
                                            not self.journal))
        if self.journal:
            self._forget_durable(t)
        if p.buddy:
            self._replicate(t)

    def _to_disk(self, t: Task) -> bool:
        """With a journal, whether ``t``'s next checkpoint (after ``seq``) goes to the
        coordinator too (to be written): at most every ``disk_every_s`` (FTI's and SCR's
        levels: every one in memory on two nodes, some on disk). A checkpoint group's
        members' nodes decide that together in the cut (Node._cut): not here."""
        return bool(self.journal) and not t.group and self._now - t.t_disk >= self.disk_every_s

    def _forget_durable(self, t: Task) -> None:
        """Let the senders of what ``t`` received forget those messages up to its newest
        checkpoint that is both acknowledged and (one as new or newer) on disk."""
        seq = min(t.durable, t.ckpt[0]) if t.ckpt is not None else 0
        if seq > t.forgot:
            t.forgot = seq
            self._out.append(I.ForgetReceived(t.tid, seq))

    def _replicate(self, t: Task) -> None:
        """If ``t``'s acknowledged checkpoint is on one node only (its other copy was
        lost, or its buddy died before it held it), have that node copy it to the next
        node that holds none (Charm++'s double checkpointing does the same)."""
        if t.ckpt is None or t.restoring is not None or t.copying in self._alive:
            return
        seq, holders = t.ckpt
        alive = self._alive
        nodes = [r for r in holders if r in alive]
        if len(nodes) != 1:
            return
        src = nodes[0]
        to = self._next_alive(src, holders)
        if not to:
            return
        t.copying = to
        self._out.append(I.CopyCheckpoint(src, t.tid, seq, to))

    def _buddy_of(self, rank: int) -> int:
        """The node that keeps copies of ``rank``'s checkpoints: on another host than
        ``rank``'s if there is one (the loss of a host's nodes then takes no task's both
        copies), else the next alive node in rank order, wrapping round; 0 (none: the
        coordinator keeps them) if it is alone. Each host's nodes spread their copies
        over the other hosts' nodes: the ``k``-th node alive on a host sends its copies
        to the ``k``-th node after it, in rank order, of those on other hosts."""
        if self._buddies_ver != self._alive_ver:
            self._buddies_ver = self._alive_ver
            self._buddies = _buddies(self._alive)
        got = self._buddies.get(rank)
        return got if got is not None else self._next_alive(rank, (rank,))

    def _next_alive(self, rank: int, skip: Any) -> int:
        """The first alive node after ``rank`` in rank order, wrapping round, that is not
        in ``skip``, on another host than ``rank``'s if there is one; 0 if there is none."""
        alive = self._alive
        others = [r for r in alive if r not in skip]
        if not others:
            return 0
        me = self.nodes.get(rank)
        host = me.host if me is not None else None
        others = [r for r in others if alive[r].host != host] or others
        later = [r for r in others if r > rank]
        return min(later) if later else min(others)

    def _copies_lost(self, rank: int) -> None:
        """Node ``rank`` is lost: so are the checkpoint copies it held. A pending
        checkpoint stops waiting for it; a restart that was to get its copy from it is
        placed again with another."""
        now = self._now
        for t in list(self.tasks.values()):
            if t.kind is not _SPAWNED or t.state is not _RUNNING:
                continue
            if t.ckpt is not None and rank in t.ckpt[1]:
                t.ckpt = (t.ckpt[0], t.ckpt[1] - {rank})
            p = t.pend
            if p is not None:
                p.holders.discard(rank)
                if rank in p.waiting:
                    p.waiting.discard(rank)
                    self._commit_if_held(t)
            if t.restoring is not None and t.restoring[0] == rank and t.node != rank:
                n = self.nodes.get(t.node)
                if n is not None:
                    n.spawned.discard(t.tid)
                    self._reindex(n)
                    self._out.append(I.KillTask(n.rank, t.tid, t.inc))
                t.restoring = None
                self._place_spawned(t, True, now)
            elif t.node != rank:
                self._replicate(t)

    def _restored(self, ev: E.TaskRestored) -> None:
        t = self.tasks.get(ev.tid)
        if t is None or t.inc != ev.inc or t.node != ev.rank or t.state is not _RUNNING:
            return
        source, t.restoring = t.restoring, None
        if ev.ok:
            if t.ckpt is not None and t.ckpt[0] == ev.seq:    # it holds a copy now
                t.ckpt = (ev.seq, t.ckpt[1] | {ev.rank})
                self._replicate(t)
            return
        # the copy it was to start from was not there: try the next one
        gone = {ev.rank} if source is None else {ev.rank, source[0]}
        if t.ckpt is not None and t.ckpt[0] == ev.seq:
            t.ckpt = (ev.seq, t.ckpt[1] - gone)
        n = self.nodes.get(t.node)
        if n is not None:
            n.spawned.discard(t.tid)
            self._reindex(n)
        self._place_spawned(t, True, ev.now)

    def _journal_loaded(self, ev: E.JournalLoaded) -> None:
        for tid, digest, ok, value in ev.entries:
            self.journal_done[int(tid)] = (digest, ok, value)

    _now = 0.0      # the time of the last event that carried one (for dispatch times)
    _next_check = 0.0   # no heartbeat or hello deadline falls before this time


def ended_after(cuts: dict[int, int], epoch: int) -> list[int]:
    """The checkpoint group members among ``cuts`` (tid -> its cut, see E.SpawnedExited:
    they have ended) that sent the others something after ``epoch``, which they cannot
    send again: the group cannot go back to ``epoch``."""
    return sorted(tid for tid, cut in cuts.items() if not 0 <= cut <= epoch)


def cannot_go_back(group: int, epoch: int, gone: list[int],
                   resumed: bool = False) -> CheckpointError:
    """The error that ends a job whose checkpoint group ``group`` would have to go back
    to ``epoch`` (on ``--resume``: ``resumed``, its newest epoch on disk) without what
    its ended members ``gone`` sent after it (see :func:`ended_after`)."""
    tids = ", ".join(map(str, gone))
    what = (f"cannot be resumed: task(s) {tids} of it had finished after its checkpoint "
            f"{epoch} on disk (the newest every unfinished member has)" if resumed else
            f"cannot go back to its checkpoint {epoch}: task(s) {tids} of it ended after "
            f"that checkpoint")
    return CheckpointError(
        f"checkpoint group {group} {what}, and what they sent the other members since is "
        f"not kept (a checkpoint group logs no messages). Have every member checkpoint "
        f"after its last message to the others, just before it returns, or spawn with "
        f"checkpoint='log'")


def replay_journal(instructions: list[I.Instruction]) -> dict[int, tuple[int, bool, Any]]:
    """The finished tasks that the JournalDone records among ``instructions`` describe,
    as a resumed coordinator loads them (tid -> (digest, ok, value))."""
    return {i.tid: (i.digest, i.ok, i.value) for i in instructions
            if isinstance(i, I.JournalDone)}


__all__ = ["Core", "Node", "Task", "SPAWN_HELLO_S", "cannot_go_back", "ended_after",
           "replay_journal"]
