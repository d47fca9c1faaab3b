"""PVM dynamic groups and their collectives, kept by the coordinator's core.

Part of the I/O-free core (:class:`clustervm.core.Core` owns one ``Groups``):
answers go out through ``answer(reply, ok, value)`` and log lines through
``warn(text)``, which the core turns into ``Answer`` and ``Warn`` instructions
for its shell (standing alone, e.g. in unit tests, ``answer`` calls ``reply``).

Members call collectives through the coordinator (a hub): each member's k-th
collective on a group is round k of that group (the member's round counter
travels in its checkpoint), the round completes when every member has
contributed, and every contributor gets its answer. A member restarted from a
checkpoint after a failover calls its rounds again: a round still open takes
the new contribution, a finished round answers from its kept result. A round
that waits for a member that cannot come back fails with a GroupError naming
it; none hangs.

Frozen groups on MPI (fastgroup.py) that survive a loss send their members'
contributions here as *shadows* (in batches, see fastgroup.py); the first hub
call on such a group after a loss *thaws* it: its rounds are rebuilt from the
shadows (an ended member's included, at its instance), and from then on rounds
wait for every member of the frozen group that has not ended or left. The
first round after that to which every member contributes itself (the lost one
restarted and caught up) *re-freezes* the group: its answers carry a new plan
(the members' current ranks, a new communicator tag), every member builds the
new communicator from it, and the next rounds run on MPI again. A member
replaying that round later (restarted once more) gets the answer without it.

A hub group goes on MPI the same way by itself (*auto-frozen*, ``auto_freeze``
full rounds in a row with the same members, one per rank: ``_auto_freeze``) and
stays a dynamic group: a join waits until its members are off MPI (the shell
sends them a THAW: ``ThawGroup``), a leave asks them off, and rounds that a
member made on MPI never count a task that joined after.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Protocol

from .. import protocol as P
from ..errors import GroupError
from ..reduce import _BUILTIN, VECTOR_OPS, _reduce, combine   # noqa: F401 - importable from here too
from ..values import approx_size, snapshot

Reply = Callable[[bool, Any], None]
_KEEP_DONE = 64                 # finished rounds kept per group, at most ...
_KEEP_BYTES = 256 << 20         # ... and about this many bytes of their answers


class _Round:
    __slots__ = ("op", "parts", "count", "root", "fn", "need")

    def __init__(self, op: str, count: int | None, root: Any = None, fn: Any = None) -> None:
        self.op = op
        self.parts: dict[int, tuple[Any, Reply, Any, Any]] = {}
        self.count = count
        self.root = root
        self.fn = fn
        #: a round of a thawed frozen group: the members that must contribute (or end)
        self.need: set[int] | None = None

    def call(self) -> str:
        """How the members called this round, e.g. ``reduce(op='sum', root=0)``."""
        args = [f"{k}={v!r}" for k, v in (("op", self.fn), ("root", self.root),
                                            ("count", self.count)) if v is not None]
        return f"{self.op}({', '.join(args)})"


class Owner(Protocol):
    """What the groups read of the coordinator that owns them (coordinator.py imports
    this module, so it is named by this protocol, not imported)."""
    tasks: dict

    def in_world(self, rank: int) -> bool: ...

    def restartable(self, tid: int) -> bool: ...

    def resolve(self, ref: str) -> Any: ...

    def lost_nodes(self) -> int: ...


def _call(reply: Reply, ok: bool, value: Any) -> None:
    reply(ok, value)


class Groups:
    """Group membership and collective rounds."""

    def __init__(self, coord: Owner, *, answer: Callable[[Reply, bool, Any], None] = _call,
                 warn: Callable[[str], None] | None = None,
                 rebuild: Callable[[], bool] | None = None, auto_freeze: int = 0,
                 thaw: Callable[[str, list[int], list[int]], None] | None = None) -> None:
        self.coord = coord
        self._answer = answer
        self._warn = warn or (lambda text: None)
        #: asks members (tids, ranks) of an auto-frozen group off MPI (ThawGroup)
        self._thaw = thaw or (lambda name, tids, ranks: None)
        #: a hub group moves onto MPI by itself after this many full rounds in a row with
        #: the same members (0: never; see _auto_freeze)
        self.auto_after = auto_freeze
        self.streak: dict[str, int] = {}                        # name -> full rounds in a row
        self.auto: set[str] = set()             # groups the coordinator put on MPI itself
        #: tasks joining an auto-frozen group, answered once its members are off MPI
        self.joining: dict[str, list[tuple[int, Reply]]] = {}
        self.off: dict[str, set[int]] = {}      # members off MPI since the group thawed
        self.asked: dict[str, set[int]] = {}    # members asked off MPI (ThawGroup)
        self.mpi_done: dict[str, int] = {}      # the newest round a member made on MPI
        self.losses: dict[str, int] = {}        # nodes lost when it last went on MPI
        #: asked once: can a frozen group get a new communicator after a failure (ULFM)?
        self._can_rebuild = rebuild or (lambda: False)
        self.members: dict[str, dict[int, int]] = {}            # name -> inst -> tid
        self.rounds: dict[str, dict[int, _Round]] = {}          # name -> round -> open round
        # name -> round -> (op, {tid: answer}, error for every member or None)
        self.done: dict[str, OrderedDict[int, tuple[str, dict, Any]]] = {}
        self.done_bytes: dict[str, dict[int, int]] = {}
        self.counter: dict[tuple[str, int], int] = {}           # (name, tid) -> next round
        self.base: dict[tuple[str, int], int] = {}              # (name, tid) -> first round
        self.next_round: dict[str, int] = {}
        self.doomed: dict[str, dict[int, GroupError]] = {}     # rounds that a failed member missed
        self.frozen: dict[str, bool] = {}                       # name -> on MPI collectives?
        # frozen groups on MPI that survive a lost member: every member posts each call's
        # contribution here too (a "shadow", never waited for); when a member is lost the
        # group thaws onto the hub, whose rounds are rebuilt from the shadows
        self.shadowed: dict[str, set[int]] = {}                 # name -> members at freeze
        self.shadows: dict[str, OrderedDict[int, dict[int, tuple]]] = {}
        self.shadow_floor: dict[str, int] = {}                  # oldest round still kept
        self.thawed: dict[str, str] = {}                        # name -> why it thawed
        self.frozen_insts: dict[str, dict[int, int]] = {}       # name -> tid -> instance
        self.shadow_bytes: dict[str, dict[int, int]] = {}       # name -> round -> bytes
        # a thawed group put back on MPI: name -> (the round whose answers carry the plan,
        # the plan); and the groups that stay on the hub after a loss (said once in the log)
        self.refrozen: dict[str, tuple[int, dict]] = {}
        self.stay_on_hub: dict[str, str] = {}
        self.refreezes: dict[str, int] = {}                      # name -> times put back
        self.forced: dict[str, dict[int, Any]] = {}   # name -> round -> result MPI computed
        #: can a group get a new communicator after a failure (ULFM)? None: ask MPI
        self.rebuild: bool | None = None
        self._comm_tags = 0

    # -- membership ----------------------------------------------------------

    def join(self, name: str, tid: int) -> tuple[int, int]:
        """Join ``name``: (instance number, the first round this member takes part in)."""
        insts = self.members.setdefault(name, {})
        for inst, t in insts.items():
            if t == tid:
                return inst, self.base[(name, tid)]
        if name in self.frozen:
            raise GroupError(f"group {name!r} is frozen (freeze_group): its membership is fixed; "
                             f"task {tid} cannot join it. Join another group, or have every "
                             f"member leave_group({name!r}) first")
        inst = 0
        while inst in insts:
            inst += 1
        insts[inst] = tid
        self.counter.pop((name, tid), None)     # a member that left and came back
        open_rounds = self.rounds.get(name)
        # the oldest open round, else the next one (rounds may finish out of order); never
        # one that a member made on MPI (the others retry it here without the new member)
        base = min(open_rounds) if open_rounds else self.next_round.get(name, 0)
        base = max(base, self.mpi_done.get(name, -1) + 1)
        self.base[(name, tid)] = base
        self.streak.pop(name, None)
        if name in self.shadowed:               # a thawed group: needed from now on
            self.shadowed[name].add(tid)
            for round_no, rnd in (open_rounds or {}).items():
                if rnd.need is not None and round_no >= base:
                    rnd.need.add(tid)
        self._recheck(name)
        return inst, base

    def join_when_off(self, name: str, tid: int, reply: Reply) -> bool:
        """Task ``tid`` joins ``name``: if the coordinator put that group on MPI itself (its
        members run its collectives without the coordinator), the join waits until every
        member is off MPI (asked with a ThawGroup), so that the new member's first round
        is one no member made there; ``reply`` then gets ``[instance, first round, new]``.
        False if it need not wait (the caller joins it at once)."""
        if name not in self.auto or tid in self.members.get(name, {}).values() or \
                not self._on_mpi_yet(name):
            return False
        self.joining.setdefault(name, []).append((tid, reply))
        self._ask_off(name)
        self._settle(name)
        return True

    def _on_mpi_yet(self, name: str) -> bool:
        """Is a member of auto-frozen ``name`` maybe still on MPI (not said it is off)?"""
        if name not in self.shadowed:
            return False
        members = set(self.members.get(name, {}).values())
        off = self.off.get(name, set())
        return any(t in members and t not in off and self._rank_of(t) is not None
                   for t in self.shadowed[name])

    def _ask_off(self, name: str) -> None:
        """Ask the members of ``name`` still on MPI off it (once each)."""
        asked = self.asked.setdefault(name, set())
        off = self.off.get(name, set())
        members = set(self.members.get(name, {}).values())
        tids, ranks = [], []
        for t in sorted(self.shadowed.get(name, ())):
            rank = self._rank_of(t)
            if t in members and t not in off and t not in asked and rank is not None:
                asked.add(t)
                tids.append(t)
                ranks.append(rank)
        if tids:
            self._thaw(name, tids, ranks)

    def _settle(self, name: str) -> None:
        """Answer the joins of ``name`` that wait, once every member is off MPI."""
        if not self.joining.get(name) or self._on_mpi_yet(name):
            return
        self.thaw(name, "a task joins it")      # (no-op if a member's call thawed it)
        waiting = self.joining.pop(name)
        for tid, reply in waiting:
            try:
                new = tid not in self.tids(name)
                inst, base = self.join(name, tid)
            except Exception as exc:   # noqa: BLE001 - the joining task gets it
                self._answer(reply, False, exc)
            else:
                self._answer(reply, True, [inst, base, new])

    def leave(self, name: str, tid: int) -> None:
        insts = self.members.get(name, {})
        for inst, t in list(insts.items()):
            if t == tid:
                on_mpi = name in self.auto and self._on_mpi_yet(name)
                del insts[inst]
                self.frozen.pop(name, None)     # membership changed: not frozen any more
                self.streak.pop(name, None)
                self._not_needed(name, tid)
                if on_mpi:          # the others, on MPI, would wait for it: asked off
                    self._ask_off(name)         # (freeze_group's: revoked by the leaver)
                self._recheck(name)
                self._settle(name)
                return
        raise GroupError(f"task {tid} is not a member of group {name!r}")

    def size(self, name: str) -> int:
        return len(self.members.get(name, {}))

    def tids(self, name: str) -> list:
        insts = self.members.get(name, {})
        if not insts:
            return []
        return [insts.get(i) for i in range(max(insts) + 1)]

    def tid(self, name: str, inst: int) -> int:
        try:
            return self.members[name][inst]
        except KeyError:
            raise GroupError(f"group {name!r} has no instance {inst}") from None

    def inst(self, name: str, tid: int) -> int:
        for inst, t in self.members.get(name, {}).items():
            if t == tid:
                return inst
        raise GroupError(f"task {tid} is not a member of group {name!r}")

    def task_exit(self, tid: int, error: BaseException | None = None) -> None:
        """A member ended: it leaves its groups (as in PVM).

        If it ended with ``error``, the open rounds it has not taken part in fail
        with a GroupError naming it, rather than completing without it.
        """
        for name, insts in self.members.items():
            for inst, t in list(insts.items()):
                if t == tid:
                    if error is not None:
                        self._member_failed(name, tid, inst, error)
                    del insts[inst]
                    self.frozen.pop(name, None)
                    self.streak.pop(name, None)
                    # its shadows came before its exit; on MPI, a member that waits for
                    # it there goes on through the hub (fastgroup: an ended member)
                    self._not_needed(name, tid)
                    self._recheck(name)
                    self._settle(name)

    def _member_failed(self, name: str, tid: int, inst: int, error: BaseException) -> None:
        """A member ended with an error: the round it would have called next fails for
        everyone, open or not yet (then the group goes on without it, as after a leave).

        A member restarted from an older state (no checkpoint) has a round counter far
        behind the group's: the round it would have called next is then the group's
        oldest open round it took no part in. Seen in tools/soak.py (kmeans, a node
        SIGSTOPped): before, that round completed without its part, and the others went
        on with sums short of one part and exit status 0."""
        open_rounds = self.rounds.get(name, {})
        nxt = self.counter.get((name, tid), self.base.get((name, tid), 0))
        if nxt not in open_rounds and nxt < self.next_round.get(name, 0):
            lacking = [r for r, rnd in open_rounds.items() if tid not in rnd.parts]
            nxt = min(lacking) if lacking else self.next_round.get(name, 0)
        err = GroupError(
            f"round {nxt} of group {name!r} cannot complete: member task {tid} "
            f"(instance {inst}) ended with an error before taking part: "
            f"{type(error).__name__}: {error}")
        if nxt in open_rounds:
            self._fail_round(name, nxt, err)
        elif nxt >= self.next_round.get(name, 0):
            self.doomed.setdefault(name, {})[nxt] = err

    # -- collectives -----------------------------------------------------------

    def collective(self, reply: Reply, op: str, name: str, tid: int, value: Any, count: Any,
                   root: Any, fn: Any, round_no: int | None = None,
                   envelope: bool = False) -> None:
        """Member ``tid`` takes part in its round ``round_no`` of group ``name``.

        With ``envelope`` the answer is ``(value, plan)``: ``plan`` is None, or (in the
        round that puts a thawed frozen group back on MPI) what freeze_group gives, for
        the member to build the group's new communicator with."""
        insts = self.members.get(name)
        if not insts or tid not in insts.values():
            restored = "" if not round_no else (
                ". A task restored from a checkpoint after the job was resumed from its "
                "journal (--resume, --restarts) is not in the groups it had joined (they are "
                "not in the journal): checkpoint outside groups, or have it join again")
            raise GroupError(f"task {tid} called {op} on group {name!r} without being a member; "
                             f"call join_group({name!r}) first{restored}")
        if envelope:
            if round_no is None:
                round_no = self.counter.get((name, tid), 0)
            reply = self._enveloped(reply, name, round_no)
        hub_call = op != "freeze" or name in self.auto or (
            round_no is not None and round_no < self.next_round.get(name, 0))
        if hub_call and name in self.shadowed:
            if name not in self.thawed:
                # a member that saw a member lost, or one restarted after the loss
                self.thaw(name, f"task {tid} called {op} through the coordinator")
            self.off.setdefault(name, set()).add(tid)   # its shadows came before this
        if self.frozen.get(name) and hub_call:
            raise GroupError(
                f"group {name!r} is frozen onto MPI collectives (freeze_group(..., "
                f"survive=False)) and task {tid} called {op} through the coordinator: it "
                f"was restarted after its node was lost, and such a frozen group does "
                f"not survive that. Have every member leave_group({name!r}) and "
                f"join_group again to go on as a hub group")
        self._contribute(reply, op, name, tid, value, count, root, fn, round_no)
        self._settle(name)

    def _contribute(self, reply: Reply, op: str, name: str, tid: int, value: Any, count: Any,
                    root: Any, fn: Any, round_no: int | None) -> None:
        if round_no is None:
            round_no = self.counter.get((name, tid), 0)
        self.counter[(name, tid)] = round_no + 1
        finished = self.done.get(name, {}).get(round_no)
        if finished is not None:
            f_op, answers, error = finished
            if f_op == "freeze" and name in self.thawed and tid in answers and answers[tid][0]:
                # a member restarted from before the freeze: the group is on the hub now
                plan = dict(answers[tid][1], members=None, why=f"thawed: {self.thawed[name]}")
                self._answer(reply, True, plan)
            elif tid in answers:
                self._answer(reply, *_own(tid, answers[tid]))
            elif error is not None:
                self._answer(reply, False, error)
            elif f_op == "barrier":
                self._answer(reply, True, None)    # a barrier with count= released before this member came
            else:
                raise GroupError(f"round {round_no} of group {name!r} ({f_op}) is over and task "
                                 f"{tid} took no part in it")
            return
        rnd = self.rounds.setdefault(name, {}).get(round_no)
        if rnd is None and round_no < self.next_round.get(name, 0):
            raise GroupError(f"round {round_no} ({op}) of group {name!r} is over and its result "
                             f"is no longer kept (the coordinator keeps the last {_KEEP_DONE} "
                             f"rounds of a group, up to {_KEEP_BYTES >> 20} MiB); task {tid} "
                             f"restarted from an older state: checkpoint it more often")
        if rnd is None:
            rnd = self.rounds[name][round_no] = _Round(op, count, root, fn)
            if name in self.shadowed and name in self.thawed:
                rnd.need = set(self.shadowed[name])
        elif (rnd.op, rnd.count, rnd.root, rnd.fn) != (op, count, root, fn):
            mine = _Round(op, count, root, fn)
            first = next(iter(rnd.parts), None)
            err = GroupError(f"members of group {name!r} made different collective calls in "
                             f"round {round_no}: task {first} called {rnd.call()}, task {tid} "
                             f"called {mine.call()}; every member must make the same sequence "
                             f"of collective calls on a group, with the same op, root and count")
            self._fail_round(name, round_no, err)
            self._answer(reply, False, err)
            return
        if tid == P.MAIN_TID and not _only_read(op, fn, value):
            # main may change its object once the call returns (main's call waits for
            # its answer, or passes a copy when it may leave first: task.py)
            value = snapshot(value)
        rnd.parts[tid] = (value, reply, root, fn)
        doomed = self.doomed.get(name)
        if doomed and round_no in doomed:
            self._fail_round(name, round_no, doomed.pop(round_no))
            return
        self._try_complete(name, round_no)

    def _needed(self, name: str, rnd: _Round) -> int:
        if rnd.op == "barrier" and rnd.count:
            return int(rnd.count)
        if rnd.need is not None:     # every member of the frozen group that has not ended
            return len(rnd.parts) + len(rnd.need - set(rnd.parts))
        return len(self.members.get(name, {}))

    # -- frozen groups that survive (shadows) ------------------------------------

    def _enveloped(self, reply: Reply, name: str, round_no: int) -> Reply:
        def answer(ok: bool, value: Any) -> None:
            if not ok:
                reply(ok, value)
                return
            got = self.refrozen.get(name)
            plan = got[1] if got is not None and got[0] == round_no else None
            reply(True, (value, plan))
        return answer

    def _not_needed(self, name: str, tid: int) -> None:
        """Member ``tid`` left or ended: rounds it took no part in do not wait for it."""
        need = self.shadowed.get(name)
        if need is None:
            return
        need.discard(tid)
        for rnd in self.rounds.get(name, {}).values():
            if rnd.need is not None and tid not in rnd.parts:
                rnd.need.discard(tid)

    def shadow(self, name: str, tid: int, round_no: int, op: str, value: Any, count: Any,
               root: Any, fn: Any, failed: str | None, result: Any = None) -> None:
        """A member's contribution to round ``round_no`` of frozen group ``name``, made on
        MPI (kept until the group thaws, or passed on at once if it has); ``result``: the
        round's result as MPI computed it (an allreduce), which a replay gets as is."""
        if name not in self.shadowed:
            return
        if failed is None and round_no > self.mpi_done.get(name, -1):
            self.mpi_done[name] = round_no
        entry = (op, value, count, root, fn, failed, result)
        if name in self.thawed:
            self._replay(name, round_no, tid, entry)
            return
        kept = self.shadows.setdefault(name, OrderedDict())
        kept.setdefault(round_no, {})[tid] = entry
        sizes = self.shadow_bytes.setdefault(name, {})
        sizes[round_no] = sizes.get(round_no, 0) + approx_size(value) + approx_size(result)
        while len(kept) > _KEEP_DONE or (len(kept) > 1 and sum(sizes.values()) > _KEEP_BYTES):
            old, _ = kept.popitem(last=False)
            sizes.pop(old, None)
            self.shadow_floor[name] = next(iter(kept))

    def shadow_batch(self, name: str, tid: int, entries: list, off: bool = False) -> None:
        """Shadows of member ``tid``, in call order: ``(round, op, value, count, root, fn,
        failed)`` each (fastgroup.py sends them in batches); ``off``: its last batch, the
        member makes no more calls on MPI."""
        for round_no, op, value, count, root, fn, failed, *result in entries:
            self.shadow(name, tid, round_no, op, value, count, root, fn, failed, *result)
        if off and name in self.shadowed:
            self.off.setdefault(name, set()).add(tid)
            self._settle(name)

    def thaw(self, name: str, why: str) -> None:
        """A member of frozen group ``name`` was lost: the group goes on on the hub. Its
        rounds so far are rebuilt from the shadows, so a member restarted from an older
        checkpoint gets the answers the others got on MPI."""
        if name in self.thawed or name not in self.shadowed:
            return
        self.thawed[name] = why
        self.frozen.pop(name, None)
        again = self.refrozen.pop(name, None)
        if again is not None and not self.asked.get(name) and \
                not any(r > again[0] for r in self.shadows.get(name, {})):
            # not one call on its new communicator: the members could not build it
            self.stay_on_hub[name] = "its new communicator could not be built"
            self._warn(f"frozen group {name!r} stays on the coordinator: "
                       f"{self.stay_on_hub[name]} (see the members' logs)")
        floor = self.shadow_floor.get(name)
        if floor is not None:
            self.next_round[name] = max(self.next_round.get(name, 0), floor)
        self.shadow_bytes.pop(name, None)
        for round_no, parts in sorted(self.shadows.pop(name, {}).items()):
            for tid, entry in parts.items():
                self._replay(name, round_no, tid, entry)

    def _replay(self, name: str, round_no: int, tid: int, entry: tuple) -> None:
        op, value, count, root, fn, failed, result = entry
        if result is not None:
            self.forced.setdefault(name, {})[round_no] = result
        if failed is not None:
            if round_no not in self.done.get(name, {}):
                self._fail_round(name, round_no, GroupError(failed))
            return
        try:      # (an ended member's shadow counts: it made that call)
            self._contribute(_ignore, op, name, tid, value, count, root, fn, round_no)
        except GroupError:
            pass      # the members that call this round again get the error themselves

    def _recheck(self, name: str) -> None:
        for round_no in sorted(self.rounds.get(name, {})):
            self._try_complete(name, round_no)

    def _try_complete(self, name: str, round_no: int) -> None:
        rnd = self.rounds[name].get(round_no)
        if rnd is None or len(rnd.parts) < self._needed(name, rnd):
            return
        del self.rounds[name][round_no]
        self.next_round[name] = max(self.next_round.get(name, 0), round_no + 1)
        insts = self.members.get(name, {})
        inst_of = {t: i for i, t in insts.items()}
        for t, i in self.frozen_insts.get(name, {}).items():   # members that ended since
            inst_of.setdefault(t, i)
        forced = self.forced.get(name, {}).pop(round_no, None)
        try:
            answers = self._compute(name, rnd, inst_of, forced)
        except Exception as exc:   # noqa: BLE001 - every member gets the error
            answers = {tid: (False, exc) for tid in rnd.parts}
        if name in self.thawed and name in self.shadowed and rnd.op != "freeze":
            if self.joining.get(name):
                pass                            # (its members are asked off MPI)
            elif name in self.auto and self.coord.lost_nodes() == self.losses.get(name):
                # off MPI for a join, a leave, count= or a timeout, not a loss: back on
                # MPI as it went the first time (no build for every such call)
                self._auto_freeze(name, round_no, rnd, answers, inst_of)
            else:
                self._refreeze(name, round_no, rnd, answers, inst_of)
        elif self.auto_after and name not in self.shadowed and name not in self.frozen:
            self._auto_freeze(name, round_no, rnd, answers, inst_of)
        self._keep(name, round_no, rnd.op, answers, None)
        for tid, (value, reply, root, fn) in rnd.parts.items():
            self._answer(reply, *_own(tid, answers[tid]))

    def _keep(self, name: str, round_no: int, op: str, answers: dict, error: Any) -> None:
        """Keep a finished round's answers for members that call it again after a restart."""
        done = self.done.setdefault(name, OrderedDict())
        done[round_no] = (op, answers, error)
        sizes = self.done_bytes.setdefault(name, {})
        seen = {id(v): v for ok, v in answers.values()}
        sizes[round_no] = sum(approx_size(v) for v in seen.values())
        while len(done) > _KEEP_DONE or (len(done) > 1 and sum(sizes.values()) > _KEEP_BYTES):
            old, _ = done.popitem(last=False)
            sizes.pop(old, None)

    def _fail_round(self, name: str, round_no: int, error: GroupError) -> None:
        """End an open round with ``error`` for its members, and for any that call it later."""
        rnd = self.rounds.get(name, {}).pop(round_no, None)
        self.next_round[name] = max(self.next_round.get(name, 0), round_no + 1)
        self._keep(name, round_no, rnd.op if rnd else "?", {}, error)
        if rnd is not None:
            for value, reply, root, fn in rnd.parts.values():
                self._answer(reply, False, error)

    def _compute(self, name: str, rnd: _Round, inst_of: dict[int, int],
                 forced: Any = None) -> dict:
        parts = rnd.parts
        ordered = sorted(parts, key=lambda t: inst_of.get(t, 1 << 30))
        op = rnd.op
        any_part = parts[ordered[0]]
        root = any_part[2]
        root_tid = None
        if root is not None:
            root_tid = next((t for t, i in inst_of.items() if i == root), None)
            if root_tid is None or root_tid not in parts:
                raise GroupError(f"{op} on group {name!r}: root instance {root} is not a member; "
                                 f"root= is the instance number of a member, one of "
                                 f"{sorted(inst_of.values())} (see group_tids)")
        if op == "barrier":
            return {t: (True, None) for t in parts}
        if op == "freeze":
            return self._freeze(name, rnd, ordered, inst_of)
        if op == "bcast":
            v = parts[root_tid][0]
            return {t: (True, v) for t in parts}
        if op in ("reduce", "allreduce") and forced is not None:   # as MPI computed it
            return {t: (True, forced if op == "allreduce" or t == root_tid else None)
                    for t in parts}
        if op in ("reduce", "allreduce"):
            result = _reduce([parts[t][0] for t in ordered], any_part[3], self.coord)
            if any(result is part[0] for part in parts.values()):
                result = snapshot(result)     # one member alone: main's own object, maybe
            if op == "allreduce":
                return {t: (True, result) for t in parts}
            return {t: (True, result if t == root_tid else None) for t in parts}
        if op in ("gather", "allgather"):
            values = [parts[t][0] for t in ordered]
            if op == "allgather":
                return {t: (True, values) for t in parts}
            return {t: (True, values if t == root_tid else None) for t in parts}
        if op in VECTOR_OPS:
            answers = combine(op, name, [parts[t][0] for t in ordered],
                              [inst_of[t] for t in ordered], any_part[3], self.coord)
            return {t: (True, a) for t, a in zip(ordered, answers)}
        if op == "scatter":
            values = parts[root_tid][0]
            if values is None or len(values) < len(ordered):
                raise GroupError(f"scatter on group {name!r}: the root gave "
                                 f"{0 if values is None else len(values)} values for "
                                 f"{len(ordered)} members")
            return {t: (True, values[inst_of[t]]) for t in parts}
        raise GroupError(f"unknown collective {op!r}")

    def _freeze(self, name: str, rnd: _Round, ordered: list, inst_of: dict) -> dict:
        """Fix the membership; with ``count`` 1 (mpi=True) and one member per rank, give
        the members what they need to build an MPI communicator of their ranks."""
        size = len(ordered)
        plan: dict = {"size": size, "members": None, "tag": 0, "why": ""}
        ranks = {t: self._rank_of(t) for t in ordered}
        if not rnd.count:
            plan["why"] = "mpi=False"
        elif any(r is None for r in ranks.values()):
            plan["why"] = "a member has no node (being restarted)"
        elif len(set(ranks.values())) < size:
            plan["why"] = "some members share a node"
        elif not all(self.coord.in_world(r) for r in ranks.values()):
            plan["why"] = "a member runs on a node started by MPI_Comm_spawn (not in COMM_WORLD)"
        else:
            self._comm_tags += 1
            plan["members"] = [(inst_of[t], t, ranks[t]) for t in ordered]
            plan["tag"] = self._comm_tags
        self.frozen[name] = plan["members"] is not None
        self.auto.discard(name)       # frozen by its members now: nobody joins it
        survive = rnd.count == 1      # freeze_group(..., survive=False) asks with count 2
        plan["survive"] = bool(plan["members"] is not None and survive)
        if plan["survive"]:
            self.shadowed[name] = set(ordered)
            self.frozen_insts[name] = {t: inst_of[t] for t in ordered}
            self.thawed.pop(name, None)
            self.shadows.pop(name, None)
            self.shadow_bytes.pop(name, None)
            self.shadow_floor.pop(name, None)
            self.refrozen.pop(name, None)
        return {t: (True, plan) for t in rnd.parts}

    def _refreeze(self, name: str, round_no: int, rnd: _Round, answers: dict,
                  inst_of: dict) -> None:
        """Round ``round_no`` of thawed group ``name`` is complete: if every member took
        part in it itself (none from a shadow, none ended) and the members are one per
        rank of COMM_WORLD, its answers carry a plan that puts the group back on MPI."""
        members = set(self.members.get(name, {}).values())
        if set(rnd.parts) != members or set(self.shadowed[name]) != members or \
                any(part[1] is _ignore for part in rnd.parts.values()) or \
                not all(ok for ok, _ in answers.values()) or \
                (rnd.op == "barrier" and rnd.count):
            return
        if self.stay_on_hub.get(name) == "its new communicator could not be built":
            return
        if self.rebuild is None:
            self.rebuild = self._can_rebuild()
        ranks = {t: self._rank_of(t) for t in members}
        if any(r is None for r in ranks.values()):
            return                              # a member is being restarted: later
        why = ""
        if not self.rebuild:
            why = "this MPI has no ULFM (MPICH), so no new communicator after a failure"
        elif len(set(ranks.values())) < len(members):
            why = "two of its members now run on the same node"
        elif not all(self.coord.in_world(r) for r in ranks.values()):
            why = "a member now runs on a node started by MPI_Comm_spawn (not in COMM_WORLD)"
        if why:
            if self.stay_on_hub.get(name) != why:
                self.stay_on_hub[name] = why
                self._warn(f"frozen group {name!r} stays on the coordinator after the loss "
                           f"of a member: {why} (on MPI it needs one member per rank of "
                           f"COMM_WORLD). Its collectives give the same results, more slowly")
            return
        self._comm_tags += 1
        ordered = sorted(members, key=lambda t: inst_of[t])
        # a reduction of arrays: MPI may sum them in another order than the coordinator
        # (left to right); the members make this round again on the new communicator
        retry = rnd.op in ("reduce", "allreduce") and \
            all(hasattr(part[0], "dtype") for part in rnd.parts.values())
        plan = {"size": len(ordered), "tag": self._comm_tags, "survive": True,
                "why": f"back on MPI after round {round_no}", "retry": retry,
                "auto": name in self.auto, "after_loss": self.coord.lost_nodes() > 0,
                "members": [(inst_of[t], t, ranks[t]) for t in ordered]}
        self._on_mpi(name, round_no, plan, inst_of)
        self.refreezes[name] = self.refreezes.get(name, 0) + 1
        if name in self.auto:
            return              # (joined or left: back on MPI, as it went the first time)
        self._warn(f"frozen group {name!r} is back on MPI after the loss of a member: a new "
                   f"communicator of ranks {sorted(ranks.values())} from round {round_no + 1} "
                   f"on")

    def _on_mpi(self, name: str, round_no: int, plan: dict, inst_of: dict) -> None:
        """The answers of round ``round_no`` carry ``plan``: the group's members build its
        communicator and make its calls on MPI from the next round on, keeping shadows."""
        ordered = [t for _, t, _ in plan["members"]]
        self.frozen[name] = True
        self.shadowed[name] = set(ordered)
        self.frozen_insts[name] = {t: inst_of[t] for t in ordered}
        for d in (self.thawed, self.shadows, self.shadow_bytes, self.shadow_floor,
                  self.stay_on_hub, self.off, self.asked, self.streak):
            d.pop(name, None)
        self.refrozen[name] = (round_no, plan)
        self.losses[name] = self.coord.lost_nodes()

    def _auto_freeze(self, name: str, round_no: int, rnd: _Round, answers: dict,
                     inst_of: dict) -> None:
        """Round ``round_no`` of hub group ``name`` is complete. After ``auto_after`` such
        rounds in a row, each made by every member itself (no ``count``, no error) with
        the same members, one per rank of COMM_WORLD, its answers carry a plan that puts
        the group on MPI (as ``freeze_group`` does, surviving a lost member): member to
        member from the next round on, the coordinator only keeping the membership. A
        task that joins it, or a member that leaves, takes it back here first
        (``join_when_off``: the members are asked off MPI, fastgroup.FrozenGroup.
        thaw_request); a call with a ``count`` or a timeout goes back here too
        (FrozenGroup.call). After such a change, as many full rounds again put it back
        on MPI; after a loss, the first round every member makes itself (_refreeze)."""
        members = set(self.members.get(name, {}).values())
        if len(members) < 2 or set(rnd.parts) != members or rnd.op == "freeze" or \
                (rnd.op == "barrier" and rnd.count) or \
                any(part[1] is _ignore for part in rnd.parts.values()) or \
                not all(ok for ok, _ in answers.values()):
            self.streak.pop(name, None)
            return
        streak = self.streak[name] = self.streak.get(name, 0) + 1
        if streak < self.auto_after:
            return
        self.streak[name] = 0                   # (not possible now: asked again later)
        if self.rebuild is None:
            self.rebuild = self._can_rebuild()
        ranks = {t: self._rank_of(t) for t in members}
        if not self.rebuild or any(r is None for r in ranks.values()) or \
                len(set(ranks.values())) < len(members) or \
                not all(self.coord.in_world(r) for r in ranks.values()):
            return
        self._comm_tags += 1
        ordered = sorted(members, key=lambda t: inst_of[t])
        plan = {"size": len(ordered), "tag": self._comm_tags, "survive": True,
                "why": f"on MPI after {streak} rounds", "retry": False, "auto": True,
                "after_loss": self.coord.lost_nodes() > 0,
                "members": [(inst_of[t], t, ranks[t]) for t in ordered]}
        self.auto.add(name)
        self._on_mpi(name, round_no, plan, inst_of)

    def _rank_of(self, tid: int) -> int | None:
        if tid == P.MAIN_TID:
            return P.COORDINATOR
        rec = self.coord.tasks.get(tid)
        return None if rec is None or getattr(rec, "state", "running") != "running" \
            else rec.node

    def node_lost(self, rank: int) -> None:
        """Fail open rounds that wait on members of node ``rank`` that cannot come back.

        Members that ran elsewhere (main included) are not lost. Spawned members
        (and short tasks) of the lost node are restarted elsewhere and call their
        rounds again, so their rounds stay open.
        """
        coord = self.coord
        for name, rounds in self.rounds.items():
            gone = [t for t in self.members.get(name, {}).values()
                    if getattr(coord.tasks.get(t), "node", None) == rank
                    and not coord.restartable(t)]
            if not gone:
                continue
            for round_no, rnd in list(rounds.items()):
                lost = [t for t in gone if t not in rnd.parts]
                if lost:
                    self._fail_round(name, round_no, GroupError(
                        f"{rnd.op} on group {name!r} cannot complete: member task(s) {lost} "
                        f"were lost with node {rank} and cannot be restarted"))


def _only_read(op: str, fn: Any, value: Any) -> bool:
    """Is main's value of this call only read to compute a new result (a built-in
    reduction of numpy arrays), so that the round need not keep a copy of it?"""
    return op in ("reduce", "allreduce") and fn in _BUILTIN and \
        type(value).__module__ == "numpy" and getattr(value, "ndim", 0) > 0


def _ignore(ok: bool, value: Any) -> None:
    """The reply of a contribution replayed from a shadow: its member already has it."""


def _own(tid: int, answer: tuple[bool, Any]) -> tuple[bool, Any]:
    """Main gets its own copy of an answer: the same object is being sent to the members
    on other nodes (without a copy) and is kept for members that call the round again."""
    ok, value = answer
    return (ok, snapshot(value)) if ok and tid == P.MAIN_TID else answer
