"""The coordinator core under random faults (Hypothesis): submits, nested submits, spawns,
results, checkpoints, cancels, crashes, hangs, spares, replacements, coordinator
restarts from the journal, the VM mailbox and group rounds, in random order. After
every step and at the end:

- every task submitted to a coordinator resolves exactly once there, with its own value;
- a result a live node reported (acknowledged) is never lost;
- a node declared lost is never trusted again (no work sent to it, what it sends ignored);
- the journal replays to the same set of finished tasks (and a resumed coordinator
  answers them from it, with the same outcome, without running them);
- every request to the mailbox or a group is answered once, with what a plain dict
  and a plain sum give (a get_info that waits, once the name is put).
"""
from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from clustervm.core import Core, LossCause, NodeState, TaskKind, replay_journal
from clustervm.core import events as E
from clustervm.core import instructions as I

MAIN = 1
HEARTBEAT_S = 2.0


def short_value(tid: int) -> tuple[bool, object]:
    return (False, f"err{tid}") if tid % 5 == 0 else (True, tid * 3)


def spawned_value(tid: int) -> tuple[bool, object]:
    return True, ("spawned", tid)


class World:
    """What the simulated nodes really hold and do."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.short: list[int] = []          # short tasks received, not reported
        self.spawned: dict[int, int] = {}   # spawned tid -> incarnation it runs
        self.crashed = False                # gone (the core is told: ULFM)
        self.hung = False                   # silent, may wake up
        self.declared = False               # the core declared it lost
        self.stale: list[int] = []          # short tasks it held when declared lost
        self.stale_spawned: dict[int, int] = {}   # and spawned ones (tid -> incarnation)


class CoreMachine(RuleBasedStateMachine):

    @initialize(n=st.integers(1, 4), spares=st.integers(0, 2), replace=st.booleans(),
                slots=st.integers(1, 2), prefetch=st.integers(0, 2))
    def start(self, n: int, spares: int, replace: bool, slots: int, prefetch: int) -> None:
        self.n, self.spares, self.replace = n, spares, replace
        self.slots, self.prefetch = slots, prefetch
        self.now = 0.0
        self.next_tid = MAIN + 1
        self.journal: dict[int, tuple[int, bool, object]] = {}
        self.finished_by_nodes: set[int] = set()    # resolved by a node (or vm.kill)
        self.history: list[tuple[int, TaskKind, int]] = []   # every submit: tid, kind, parent
        self._boot(resume=False)

    def _boot(self, resume: bool) -> None:
        """A coordinator (re)starts; its nodes say hello."""
        self.core = Core(range(1, self.n + 1), slots=self.slots, prefetch=self.prefetch,
                         heartbeat_s=HEARTBEAT_S, replace_failed=self.replace, journal=True,
                         resume=resume, t0=self.now)
        self.world = {r: World(r) for r in range(1, self.n + 1)}
        self.ckpt_seq: dict[int, int] = {}      # tid -> newest checkpoint acknowledged
        self.submitted: dict[int, TaskKind] = {}
        self.resolved: dict[int, int] = {}
        self.requests = 0
        self.next_rank = self.n + 1
        # the mailbox and the groups are not in the journal: a restarted coordinator
        # starts them empty (requests still waiting on the old one die with it)
        self.answers: dict[str, list] = {}
        self.info: dict[str, int] = {}
        self.info_waiting: dict[str, list[str]] = {}
        self.groups = 0
        self.feed(*(E.NodeHello(r, f"h{r}", r, self.now) for r in self.world))
        self.feed(E.StartGraceOver(self.now, 60.0, self.spares))
        if resume:
            self.feed(E.JournalLoaded([(t, *v) for t, v in self.journal.items()]))

    # -- feeding the core and checking what comes out ---------------------------------

    def feed(self, *events: E.Event) -> list:
        out = self.core.handle(*events)
        for ins in out:
            self.apply(ins)
            if isinstance(ins, I.Dispatch):   # never beyond slots + prefetch when sent
                n = self.core.nodes[ins.rank]  # (a parent that stops waiting may exceed it)
                assert len(n.inflight) - n.nwait <= self.core.cap
        return out

    def apply(self, ins: I.Instruction) -> None:
        kind = type(ins)
        if kind in (I.Dispatch, I.PlaceSpawned, I.CancelQueued, I.KillTask):
            w = self.world[ins.rank]
            assert not w.declared, f"{ins} sent to node {ins.rank}, declared lost before"
        if kind is I.Dispatch:
            self.world[ins.rank].short.extend(tid for tid, _ in ins.items)
        elif kind is I.PlaceSpawned:
            self.world[ins.rank].spawned[ins.tid] = ins.inc
        elif kind is I.CancelQueued:
            self.world[ins.rank].short.remove(ins.tid)
        elif kind is I.KillTask:
            self.world[ins.rank].spawned.pop(ins.tid, None)
        elif kind is I.NodeDown:
            w = self.world[ins.rank]
            assert not w.declared, f"node {ins.rank} declared lost twice"
            w.declared = True
            w.stale, w.stale_spawned = list(w.short), dict(w.spawned)
            w.short, w.spawned = [], {}
            if not ins.cause.hung:
                assert w.crashed, f"node {ins.rank} lost by {ins.cause} but it did not crash"
        elif kind is I.Kill:
            self.world[ins.rank].crashed = True
        elif kind is I.RequestReplacement:
            self.requests += 1
        elif kind is I.ResolveTask:
            tid = ins.tid
            assert tid in self.submitted, f"task {tid} resolved but never submitted"
            self.resolved[tid] = self.resolved.get(tid, 0) + 1
            assert self.resolved[tid] == 1, f"task {tid} resolved twice"
            if ins.reused:
                assert (ins.ok, ins.value) == self.journal[tid][1:]
            elif ins.packed:
                want = short_value(tid) if ins.kind is TaskKind.SHORT else spawned_value(tid)
                assert (ins.ok, ins.value) == want or ins.value == "killed"
                self.finished_by_nodes.add(tid)
        elif kind is I.Answer:
            got = self.answers.setdefault(ins.reply, [])
            got.append((ins.ok, ins.value))
            assert len(got) == 1, f"request {ins.reply} answered twice: {got}"
        elif kind is I.JournalDone:
            assert ins.tid not in self.journal
            self.journal[ins.tid] = (ins.digest, ins.ok, ins.value)

    def live(self) -> list[World]:
        return [w for w in self.world.values() if not (w.crashed or w.hung or w.declared)]

    # -- the application ------------------------------------------------------------------

    @rule(where=st.none() | st.sets(st.integers(1, 4), min_size=1, max_size=2),
          nested=st.booleans(), count=st.integers(1, 4))
    def submit(self, where, nested: bool, count: int) -> None:
        parents = [t for w in self.live() for t in w.short]
        parent = parents[0] if nested and parents else MAIN
        ranks = frozenset(r for r in (where or ()) if r in self.core.nodes) or None
        evs = []
        for _ in range(count):
            tid = self.next_tid
            self.next_tid += 1
            self.submitted[tid] = TaskKind.SHORT
            self.history.append((tid, TaskKind.SHORT, parent))
            evs.append(E.TaskSubmitted(tid, parent, self.now, ranks, digest=tid * 31))
        self.feed(*evs)

    @rule()
    def spawn(self) -> None:
        tid = self.next_tid
        self.next_tid += 1
        self.submitted[tid] = TaskKind.SPAWNED
        self.history.append((tid, TaskKind.SPAWNED, MAIN))
        self.feed(E.TaskSpawned(tid, MAIN, self.now, digest=tid * 31))

    @rule(pick=st.integers(0, 50), running=st.booleans())
    def cancel(self, pick: int, running: bool) -> None:
        open_ = [t for t, k in self.submitted.items()
                 if k is TaskKind.SHORT and t not in self.resolved]
        if open_:
            tid = open_[pick % len(open_)]
            out = self.feed(E.TaskCancelled(tid, running))
            if any(isinstance(i, I.Cancelled) for i in out):
                # a cancelled future is resolved (cancelled), once
                self.resolved[tid] = self.resolved.get(tid, 0) + 1
                assert self.resolved[tid] == 1

    @rule(pick=st.integers(0, 50))
    def kill_spawned(self, pick: int) -> None:
        open_ = [t for t, k in self.submitted.items()
                 if k is TaskKind.SPAWNED and t not in self.resolved]
        if open_:
            self.feed(E.TaskKilled(open_[pick % len(open_)], "killed"))

    # -- the nodes -------------------------------------------------------------------------

    @rule(pick=st.integers(0, 50), count=st.integers(1, 3))
    def report(self, pick: int, count: int) -> None:
        live = [w for w in self.live() if w.short]
        if not live:
            return
        w = live[pick % len(live)]
        tids, w.short = w.short[:count], w.short[count:]
        out = self.feed(E.TasksDone(w.rank, [(t, *short_value(t)) for t in tids], self.now))
        done = {i.tid for i in out if isinstance(i, I.ResolveTask)}
        for t in tids:   # acknowledged: resolved now (or before, if cancelled)
            assert t in done or self.resolved.get(t), f"result of task {t} lost"

    @rule(pick=st.integers(0, 50))
    def spawned_exit(self, pick: int) -> None:
        live = [w for w in self.live() if w.spawned]
        if not live:
            return
        w = live[pick % len(live)]
        tid, inc = next(iter(w.spawned.items()))
        del w.spawned[tid]
        out = self.feed(E.SpawnedExited(w.rank, tid, inc, *spawned_value(tid), self.now))
        assert [i.tid for i in out if isinstance(i, I.ResolveTask)] == [tid]

    @rule(pick=st.integers(0, 50), seq=st.integers(1, 5), stale=st.booleans())
    def checkpoint(self, pick: int, seq: int, stale: bool) -> None:
        live = [w for w in self.live() if w.spawned]
        if not live:
            return
        w = live[pick % len(live)]
        tid, inc = next(iter(w.spawned.items()))
        sent_inc = inc - 1 if stale else inc
        out = self.feed(E.CheckpointStored(w.rank, tid, sent_inc, seq, self.now))
        stored = [i for i in out if isinstance(i, I.StoreCheckpoint)]
        commits = [i for i in out if isinstance(i, I.CommitCheckpoint)]
        newer = not stale and seq > self.ckpt_seq.get(tid, 0)
        assert stored == ([I.StoreCheckpoint(tid, inc, seq)] if newer else [])
        # no buddy copy: acknowledged at once, held by the coordinator's store; with a
        # journal its senders forget what it received only once it is on disk
        assert [(c.tid, c.seq, c.holders, c.rank, c.to_store, c.forget) for c in commits] \
            == ([(tid, seq, (0,), w.rank, True, False)] if newer else [])
        if newer:
            out = self.feed(E.CheckpointWritten(tid, inc, seq, True, self.now))
            assert [i for i in out if isinstance(i, I.ForgetReceived)] == \
                [I.ForgetReceived(tid, seq)]
            self.ckpt_seq[tid] = seq

    @rule(pick=st.integers(0, 10))
    def crash(self, pick: int) -> None:
        live = self.live()
        if live:
            w = live[pick % len(live)]
            w.crashed = True
            self.feed(E.NodeLost(w.rank, LossCause.ULFM, self.now))

    @rule(pick=st.integers(0, 10))
    def hang(self, pick: int) -> None:
        live = self.live()
        if live:
            live[pick % len(live)].hung = True

    @rule(pick=st.integers(0, 10))
    def hung_node_wakes(self, pick: int) -> None:
        """A node declared lost on a deadline speaks again: it is ignored."""
        ghosts = [w for w in self.world.values() if w.declared and w.hung]
        if not ghosts:
            return
        w = ghosts[pick % len(ghosts)]
        evs = [E.HeartbeatHeard(w.rank, self.now), E.NodeHello(w.rank, "h", 1, self.now)]
        if w.stale:
            evs.append(E.TasksDone(w.rank, [(t, True, "stale") for t in w.stale], self.now))
        evs += [E.SpawnedExited(w.rank, t, inc, True, "stale", self.now)
                for t, inc in w.stale_spawned.items()]
        evs += [E.CheckpointStored(w.rank, t, inc, 9, self.now)
                for t, inc in w.stale_spawned.items()]
        out = self.feed(*evs)
        assert out == [], f"node {w.rank} was declared lost, yet {out}"
        assert self.core.nodes[w.rank].state is NodeState.DEAD

    @rule(dt=st.floats(0.05, 3.0), beat=st.booleans())
    def time_passes(self, dt: float, beat: bool) -> None:
        self.now += dt
        if beat:
            self.feed(*(E.HeartbeatHeard(w.rank, self.now) for w in self.live()))
        self.feed(E.Tick(self.now))

    @precondition(lambda self: self.requests > 0)
    @rule(starts=st.booleans())
    def replacement(self, starts: bool) -> None:
        self.requests -= 1
        evs: list[E.Event] = [E.ReplacementEnded(self.now)]
        if starts:
            r = self.next_rank
            self.next_rank += 1
            self.world[r] = World(r)
            evs = [E.ReplacementStarted(r, "h", self.now), E.ReplacementEnded(self.now),
                   E.NodeHello(r, "h", r, self.now)]
        self.feed(*evs)

    def _request(self, what: str) -> str:
        self.requests_made = getattr(self, "requests_made", 0) + 1
        return f"{what}#{self.requests_made}"

    @rule(name=st.sampled_from("abc"), value=st.integers(0, 9))
    def put_info(self, name: str, value: int) -> None:
        r = self._request("put")
        waiting = self.info_waiting.pop(name, [])
        self.feed(E.InfoPut(name, value, r))
        assert self.answers[r] == [(True, None)]
        for w in waiting:
            assert self.answers[w] == [(True, value)], (w, self.answers.get(w))
        self.info[name] = value

    @rule(name=st.sampled_from("abc"), wait=st.booleans())
    def get_info(self, name: str, wait: bool) -> None:
        r = self._request("get")
        self.feed(E.InfoGet(name, wait, r))
        if name in self.info:
            assert self.answers[r] == [(True, self.info[name])]
        elif wait:
            assert r not in self.answers
            self.info_waiting.setdefault(name, []).append(r)
        else:
            [(ok, err)] = self.answers[r]
            assert not ok and isinstance(err, KeyError)

    @rule(name=st.sampled_from("abc"))
    def del_info(self, name: str) -> None:
        r = self._request("del")
        self.feed(E.InfoDeleted(name, r))
        [(ok, _)] = self.answers[r]
        assert ok == (name in self.info)
        self.info.pop(name, None)

    @rule(members=st.integers(1, 4), order=st.randoms(use_true_random=False))
    def group_round(self, members: int, order) -> None:
        """A new group: main and members join, each makes an allreduce (in any order)."""
        self.groups += 1
        name = f"g{self.groups}"
        tids = [MAIN] + [100_000 + 10 * self.groups + i for i in range(members)]
        for t in tids:
            r = self._request("join")
            self.feed(E.GroupJoined(name, t, r))
            assert self.answers[r][0][0] is True
        calls = {t: self._request("allreduce") for t in tids}
        shuffled = list(tids)
        order.shuffle(shuffled)
        for i, t in enumerate(shuffled):
            self.feed(E.GroupCalled("allreduce", name, t, t, None, None, "sum", None, False,
                                    calls[t]))
            done = [c for c in calls.values() if c in self.answers]
            assert len(done) == (len(tids) if i == len(tids) - 1 else 0)
        assert all(self.answers[c] == [(True, sum(tids))] for c in calls.values())

    @rule()
    def add_nodes(self) -> None:
        self.feed(E.SparesWanted(1))

    @rule()
    def coordinator_restarts_from_the_journal(self) -> None:
        """The job is run again with --resume: main submits the same tasks again."""
        assert set(replay_journal_dict(self.journal)) == self.finished_by_nodes
        self._boot(resume=True)
        for tid, kind, _ in self.history:
            self.submitted[tid] = kind
            if kind is TaskKind.SHORT:
                out = self.feed(E.TaskSubmitted(tid, MAIN, self.now, digest=tid * 31))
            else:
                out = self.feed(E.TaskSpawned(tid, MAIN, self.now, digest=tid * 31))
            reused = [i for i in out if isinstance(i, I.ResolveTask) and i.reused]
            if tid in self.journal:     # finished before: answered from the journal
                assert [i.tid for i in reused] == [tid]
            else:
                assert not reused

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def bookkeeping_is_consistent(self) -> None:
        core = self.core
        for n in core.nodes.values():
            if n.state is NodeState.DEAD:
                assert not n.inflight and not n.spawned
            assert n.nwait == sum(1 for t in n.inflight if t in core.waiting)
            for tid, t in n.inflight.items():
                assert t.node == n.rank and core.tasks.get(tid) is t
        for t in core.pending:
            assert t.node is None

    def teardown(self) -> None:
        """Let every node left finish everything: each task resolves exactly once."""
        if not hasattr(self, "core"):
            return
        for _ in range(60):
            if not self.core.tasks and not self.core.homeless:
                break
            while self.requests:
                self.replacement(starts=True)
            for w in self.live():
                while w.short:
                    t = w.short.pop(0)
                    self.feed(E.TasksDone(w.rank, [(t, *short_value(t))], self.now))
                for tid, inc in list(w.spawned.items()):
                    del w.spawned[tid]
                    self.feed(E.SpawnedExited(w.rank, tid, inc, *spawned_value(tid), self.now))
            self.time_passes(HEARTBEAT_S + 0.5, beat=True)
        missing = [t for t in self.submitted if self.resolved.get(t) != 1]
        assert not missing, f"tasks never resolved: {missing}; core tasks {list(self.core.tasks)}"


def replay_journal_dict(journal: dict) -> dict:
    """The journal as a resumed coordinator reads it back (through JournalDone records)."""
    return replay_journal([I.JournalDone(t, *v) for t, v in journal.items()])


CoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                         deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestCoreProperties = CoreMachine.TestCase
