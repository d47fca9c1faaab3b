"""Tasks: the context a task runs with, and the mailboxes that hold its messages."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, NoReturn, Sequence

from .errors import GroupError, Thawed
# Message, Mailbox and TaskAborted live in mailbox.py (site.py, below this module, uses them);
# they stay importable from here
from .mailbox import Mailbox, Message, TaskAborted   # noqa: F401 - Mailbox too
from .protocol import ANY, MAIN_TID
from .values import snapshot

if TYPE_CHECKING:
    from .requests import Request
    from .site import Site


class TaskExit(BaseException):
    """Raised by ``TaskContext.exit`` to end a task early with a value."""

    def __init__(self, value: Any = None) -> None:
        super().__init__(value)
        self.value = value


class TaskContext:
    """What a running task sees: its tid, PVM-style messaging, checkpoints, groups.

    The application's ``main(vm)`` gets a ``VM``, which offers
    the same calls with the tid of main.
    """

    def __init__(self, site: "Site", tid: int, parent: int | None, *, inc: int = 0,
                 state: Any = None, seqs: dict | None = None,
                 siblings: Sequence[int] | None = None) -> None:
        self._site = site
        self.tid = tid
        self.parent = parent
        # (first tid, count) of the spawn call that started this task: tids are consecutive
        self._sib = (int(siblings[0]), int(siblings[1])) if siblings else (tid, 1)
        self.inc = inc
        self._state = state
        self._ckpt_seq = 0 if seqs is None else seqs.get("ckpt", 0)
        self._sent: dict[int, int] = {} if seqs is None else dict(seqs.get("sent", {}))
        self._coll: dict[str, int] = {} if seqs is None else dict(seqs.get("coll", {}))
        self.aborted = False
        self.mailbox = site.mailbox(tid)
        #: (source, tag) -> what recv waits with (see _waiter)
        self._waiters: dict[tuple[int, int], tuple[Callable[[], bool], Any, list]] = {}

    # -- identity ------------------------------------------------------------

    @property
    def node(self) -> int:
        """Rank of the node this task runs on."""
        return self._site.rank

    @property
    def host(self) -> str:
        """Host name of the node this task runs on."""
        return self._site.host

    @property
    def siblings(self) -> list[int]:
        """The tids of the tasks started by the same spawn call, in order (pvm_siblings);
        ``[tid]`` for main and for short tasks. The same after a failover."""
        first, count = self._sib
        return list(range(first, first + count))

    @property
    def rank(self) -> int:
        """This task's index among its siblings (0 for main and short tasks)."""
        return self.tid - self._sib[0]

    @property
    def size(self) -> int:
        """How many tasks the spawn call that started this one started (1 for main)."""
        return self._sib[1]

    def _check(self) -> None:
        if self.aborted:
            raise TaskAborted(self.tid)

    # -- messages ------------------------------------------------------------

    def send(self, tid: int, tag: int, obj: Any) -> None:
        """Send ``obj`` to task ``tid`` with ``tag`` (an int >= 0). Asynchronous, ordered per pair and tag."""
        if self.aborted:      # (_check inlined: one call less a message)
            raise TaskAborted(self.tid)
        if tag < 0:
            raise ValueError(f"tag must be >= 0, got {tag}; -1 is the wildcard of recv only")
        seq = self._sent.get(tid, 0) + 1
        self._site.send_user(self.tid, self.inc, tid, tag, obj, seq)
        self._sent[tid] = seq      # only once sent: a failed send must leave no gap

    def mcast(self, tids: Iterable[int], tag: int, obj: Any) -> None:
        """Send ``obj`` to each of ``tids`` (never to the caller itself, as pvm_mcast)."""
        for t in tids:
            if t != self.tid:
                self.send(t, tag, obj)

    def recv(self, source: int = ANY, tag: int = ANY, timeout: float | None = None) -> Message:
        """Wait for a message matching ``source`` and ``tag`` (-1 matches any).

        ``source=ANY`` matches messages of tasks only: notifications (``vm.notify(...,
        tag=)``) match ``source=clustervm.SYSTEM`` alone. Receive requests posted
        earlier (``irecv``) take their messages first. Raises TimeoutError if none
        arrives within ``timeout`` seconds.
        """
        if self.aborted:      # (_check inlined)
            raise TaskAborted(self.tid)
        if self.__dict__.get("_posted"):    # receives posted earlier match first
            ready, claim, got = self._waiter(source, tag, posted=True)
        else:
            m = self.mailbox.take(source, tag)
            if m is not None:       # already here: no waiting
                return m
            try:
                ready, claim, got = self._waiters[source, tag]
            except KeyError:
                ready, claim, got = self._waiter(source, tag)
        if not self._site.wait(ready, timeout, blocking=True, claim=claim):
            raise TimeoutError(f"task {self.tid}: no message from source {source} with tag {tag} "
                               f"within {timeout} s")
        if self.aborted:
            got.clear()
            raise TaskAborted(self.tid)
        return got.pop()

    def _waiter(self, source: int, tag: int,
                posted: bool = False) -> tuple[Callable[[], bool], Any, list]:
        """What ``recv(source, tag)`` waits with: the wait's predicate, the claim of what
        this thread's own polls receive (Site.claimer: the message waited for is taken at
        once, not through the mailbox), and the list the message goes into. Made once
        and kept (made at each call, they cost ~0.4 us a message); with ``posted``
        (receive requests posted earlier, which match first) made for this call only,
        without a claim."""
        box = self.mailbox
        got: list[Message] = []

        def ready() -> bool:
            if got or self.aborted:
                return True
            if posted:
                self._match_posted()
            m = box.take(source, tag)
            if m is not None:
                got.append(m)
                return True
            return False

        if posted:
            return ready, None, got
        waiter = ready, self._site.claimer(self.tid, box, source, tag, got), got
        self._waiters[source, tag] = waiter
        return waiter

    def nrecv(self, source: int = ANY, tag: int = ANY) -> Message | None:
        """Receive a matching message if one is there; None otherwise (pvm_nrecv)."""
        self._check()
        self._site.progress()
        self._match_posted()
        return self.mailbox.take(source, tag)

    def probe(self, source: int = ANY, tag: int = ANY) -> bool:
        """True if a matching message is waiting (it stays in the mailbox)."""
        self._check()
        self._site.progress()
        self._match_posted()
        return self.mailbox.take(source, tag, remove=False) is not None

    # -- non-blocking messages (clustervm.requests) -----------------------------

    def isend(self, tid: int, tag: int, obj: Any) -> "Request":
        """Post ``obj`` to task ``tid`` without waiting for it to leave; a Request.

        With message logging (the default) the message sent is a copy taken now:
        change ``obj`` freely once this returns. For tasks spawned with
        ``replay=False`` the arrays of ``obj`` are sent in place: as with MPI's
        Isend, leave them unchanged until the request is done."""
        from .requests import isend
        return isend(self, tid, tag, obj)

    def irecv(self, source: int = ANY, tag: int = ANY) -> "Request":
        """Post a receive; ``req.wait()`` gives the Message. Receives are matched in
        the order they were posted (blocking ``recv`` included)."""
        from .requests import irecv
        return irecv(self, source, tag)

    def sendrecv(self, dest: int, sendtag: int, obj: Any, source: int = ANY,
                 recvtag: int = ANY, timeout: float | None = None) -> Message:
        """Send ``obj`` to ``dest`` and receive a message from ``source`` at the same time
        (a shift on a ring cannot deadlock); the received Message."""
        from .requests import isend
        req = isend(self, dest, sendtag, obj)
        msg = self.recv(source, recvtag, timeout)
        req.wait(timeout)
        return msg

    def _match_posted(self) -> None:
        """Let the posted receive requests take their messages, in posting order."""
        posted = self.__dict__.get("_posted")
        if posted:
            posted[:] = [r for r in posted if not r._done and not r._match()]

    def exit(self, value: Any = None) -> NoReturn:
        """End this task now, reporting ``value`` to its parent."""
        raise TaskExit(value)

    # -- checkpoints ---------------------------------------------------------

    def checkpoint(self, state: Any) -> bool:
        """Save ``state`` (msgpack + numpy, never pickle): after a failover the task
        restarts from it, with the messages it had received but not consumed.

        Returns once the state is encoded (a copy: change ``state`` freely after);
        the coordinator stores it in order with everything the task sends next, so
        no later message or result overtakes it. It never waits for the copies of
        the one before: if that one is still on its way (a big state), this call
        returns at once without a new checkpoint (the task then restarts from the
        one before, as exactly). A spawned task's first checkpoint of a big state
        (32 MB of arrays and more) is skipped the same way while memory for it is
        made ready behind the task (a copy into new memory would stop the task for
        its page faults: 180-250 ms for 200 MB here); a later call copies into it.
        Members of a checkpoint group (``spawn(..., checkpoint="group")``) take it,
        or skip it, together. A failure to store one (an unwritable
        ``--checkpoint-dir``) is raised by a later ``checkpoint`` call. Returns
        whether a checkpoint was taken.
        """
        self._check()
        self._ckpt_seq += 1
        taken = self._site.checkpoint(self, self._ckpt_seq, state)
        if not taken and not self.__dict__.get("_group"):
            self._ckpt_seq -= 1     # a group's members skip a number together (Node._cut)
        self._state = state
        return taken

    def restore(self) -> Any:
        """The last checkpointed state after a failover (None on a first run)."""
        return self._state

    def _seqs(self) -> dict:
        return {"ckpt": self._ckpt_seq, "sent": dict(self._sent), "coll": dict(self._coll)}

    # -- tasks ---------------------------------------------------------------

    def spawn(self, fn: Callable, /, *common: Any, count: int | None = None, where: Any = None,
              replay: bool = True, args: Sequence | None = None, checkpoint: str = "log",
              **kwargs: Any) -> list[int]:
        """Start long-lived tasks running ``fn(ctx, *common, **kwargs)``; returns their tids.

        ``count`` instances (default 1), or one per item of ``args``: instance ``i`` runs
        ``fn(ctx, *common, *args[i], **kwargs)`` (an item that is not a tuple is one
        argument). Inside, ``ctx.siblings``, ``ctx.rank`` and ``ctx.size`` say which it is.
        ``replay`` and ``checkpoint`` ("log" or "group") as for :meth:`clustervm.vm.VM.spawn`.
        """
        self._check()
        count, per = spawn_args(count, args)
        return self._site.call("spawn", self.tid, self._site.ref(fn), common, kwargs, count,
                               where, replay, per, checkpoint)

    def submit(self, fn: Callable, *args: Any, **kwargs: Any):
        """Run ``fn(*args, **kwargs)`` somewhere on the VM; returns a Future."""
        self._check()
        return self._site.submit(self.tid, fn, args, kwargs)

    def join(self, tid: int, timeout: float | None = None) -> Any:
        """Wait for spawned task ``tid`` to end; its return value, or its exception raised here."""
        return self._site.call("join", tid, timeout=timeout)

    def tasks(self) -> list[dict]:
        """Live tasks: tid, parent, node, state, fn (as pvm_tasks)."""
        return self._site.call("tasks")

    def kill(self, tid: int) -> None:
        """End task ``tid`` (as pvm_kill)."""
        self._site.call("kill", tid)

    # -- groups (PVM dynamic groups) -----------------------------------------

    def join_group(self, name: str) -> int:
        """Join group ``name``; returns this task's instance number in it."""
        inst, base, new = self._site.call("join_group", name, self.tid)
        if new:     # its rounds are the group's from here, whatever a checkpoint said
            self._coll[name] = base
        else:       # still a member (restarted on a lost node): its own count goes on
            self._coll.setdefault(name, base)
        return inst

    def leave_group(self, name: str) -> None:
        """Leave group ``name`` (pvm_lvgroup); its instance number becomes free."""
        frozen = self.__dict__.get("_frozen", {}).pop(name, None)
        if frozen is not None:
            frozen.close()
            frozen.retire()
        self._site.call("leave_group", name, self.tid)
        self._coll.pop(name, None)      # a later join_group starts at the group's next round

    def freeze_group(self, name: str, mpi: bool = True, timeout: float | None = None,
                     survive: bool = True) -> int:
        """Make group ``name`` static (pvm_freezegroup); every member calls it. Returns the size.

        With ``mpi`` (the default) and members on distinct nodes (main counts as rank 0),
        the group's collectives then run on an MPI communicator of those ranks, member to
        member, instead of through the coordinator. With ``survive`` (the default) each
        member keeps a copy of its last calls, sent to the coordinator when needed; if a
        member is lost the group goes on through the coordinator until the member has
        restarted, then on a new communicator, with the undisturbed results (see
        clustervm/fastgroup.py). With ``survive=False`` (no such copies) the loss of a
        member makes its collectives raise GroupError naming it (never hang).
        After freezing, no task can join. On a transport without MPI (clustervm.inprocess)
        the group is frozen but its collectives stay on the coordinator. (A hub group of
        one member per node goes on MPI by itself after ``CLUSTERVM_AUTO_FREEZE`` calls
        and stays open to joins, which take it back to the coordinator for a while;
        ``freeze_group`` fixes the membership, and puts it on MPI from its call on.)
        """
        if not self._site.transport.mpi_world:
            mpi = False         # no MPI communicators to build: the hub, as with mpi=False
        count = 0 if not mpi else (1 if survive else 2)
        plan = self._collective("freeze", name, None, count, None, None, timeout)
        if plan["members"]:
            from .fastgroup import FrozenGroup
            frozen = self.__dict__.setdefault("_frozen", {})
            _retire(frozen.get(name))
            frozen[name] = FrozenGroup(self, name, plan["members"], plan["tag"],
                                       bool(plan.get("survive")))
        return plan["size"]

    def group_on_mpi(self, name: str) -> bool:
        """Whether this member runs the collectives of ``name`` on MPI (see freeze_group)."""
        frozen = self.__dict__.get("_frozen", {}).get(name)
        return frozen is not None and frozen.broken is None

    def group_size(self, name: str) -> int:
        """Number of members of group ``name`` now (pvm_gsize)."""
        return self._site.call("group_size", name)

    def group_tids(self, name: str) -> list[int]:
        """Tids of the members, indexed by instance number (None for a free instance)."""
        return self._site.call("group_tids", name)

    def group_tid(self, name: str, inst: int) -> int:
        """Tid of the member with instance ``inst`` (pvm_gettid)."""
        return self._site.call("group_tid", name, inst)

    def group_inst(self, name: str, tid: int | None = None) -> int:
        """Instance number of ``tid`` (default: this task) in group ``name`` (pvm_getinst)."""
        return self._site.call("group_inst", name, self.tid if tid is None else tid)

    def barrier(self, name: str, count: int | None = None, timeout: float | None = None) -> None:
        """Wait until ``count`` members (default: the whole group) reach the barrier."""
        self._collective("barrier", name, None, count, None, None, timeout)

    def bcast(self, name: str, obj: Any = None, root: int = 0, timeout: float | None = None) -> Any:
        """Every member gets the object of the member with instance ``root``."""
        return self._collective("bcast", name, obj, None, root, None, timeout)

    def reduce(self, name: str, value: Any, op: Any = "sum", root: int = 0,
               timeout: float | None = None) -> Any:
        """Combine the members' values with ``op`` (sum/prod/min/max or a function); root gets it."""
        return self._collective("reduce", name, value, None, root, op, timeout)

    def allreduce(self, name: str, value: Any, op: Any = "sum", timeout: float | None = None) -> Any:
        """As reduce, and every member gets the result."""
        return self._collective("allreduce", name, value, None, None, op, timeout)

    def gather(self, name: str, value: Any, root: int = 0, timeout: float | None = None) -> Any:
        """Root gets the list of values by instance; others get None."""
        return self._collective("gather", name, value, None, root, None, timeout)

    def allgather(self, name: str, value: Any, timeout: float | None = None) -> list:
        """Every member gets the list of values by instance."""
        return self._collective("allgather", name, value, None, None, None, timeout)

    def scatter(self, name: str, values: Sequence | None = None, root: int = 0,
                timeout: float | None = None) -> Any:
        """Member ``i`` gets ``values[i]`` of the root's list."""
        return self._collective("scatter", name, values, None, root, None, timeout)

    def alltoall(self, name: str, values: Sequence, timeout: float | None = None) -> list:
        """Member ``i`` sends ``values[j]`` to the member with instance ``j`` and gets the
        list (by instance) of what each member sent it. Items may differ in size and
        kind from member to member and destination to destination (MPI's alltoallv)."""
        return self._collective("alltoall", name, list(values), None, None, None, timeout)

    def reduce_scatter(self, name: str, values: Sequence, op: Any = "sum",
                       timeout: float | None = None) -> Any:
        """Item ``i`` of every member's ``values``, combined with ``op``, goes to instance
        ``i`` (MPI_Reduce_scatter_block; an item may be a numpy array)."""
        if not isinstance(values, list):
            values = list(values)
        return self._collective("reduce_scatter", name, values, None, None, op, timeout)

    def scan(self, name: str, value: Any, op: Any = "sum", timeout: float | None = None) -> Any:
        """Inclusive prefix: the values of instances up to and including this one,
        combined with ``op`` in instance order."""
        return self._collective("scan", name, value, None, None, op, timeout)

    def exscan(self, name: str, value: Any, op: Any = "sum",
               timeout: float | None = None) -> Any:
        """Exclusive prefix: the values of the instances before this one combined with
        ``op``; None for the first instance."""
        return self._collective("exscan", name, value, None, None, op, timeout)

    def _collective(self, op: str, name: str, value: Any, count: Any, root: Any, fn: Any,
                    timeout: float | None) -> Any:
        self._check()
        fn_ref = None if fn is None else _op_ref(self._site, fn)
        round_no = self._coll.get(name)
        if round_no is None:
            raise GroupError(f"task {self.tid} called {op} on group {name!r} without being a "
                             f"member; call join_group({name!r}) first")
        self._coll[name] = round_no + 1       # frozen calls count too: a restart resumes here
        frozen = self.__dict__.get("_frozen")
        if frozen and name in frozen:
            try:
                return frozen[name].call(op, value, count, root, fn_ref, timeout, round_no)
            except Thawed:               # off MPI (or a member was lost): this call
                _retire(frozen.pop(name, None))         # again, on the hub
        if timeout is not None and self.tid == MAIN_TID:
            # main's value goes to the coordinator's groups without a copy when main waits
            # for the answer; it may leave first (TimeoutError) and change it then
            value = snapshot(value)
        try:
            answer, plan = self._site.call("collective", op, name, self.tid, value, count,
                                           root, fn_ref, round_no, True, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"{op} on group {name!r}: not every member took part within "
                               f"{timeout} s (task {self.tid}, round {round_no})") from None
        if plan is not None:             # a frozen group that lost a member goes back on MPI
            from .fastgroup import refreeze
            fg = refreeze(self, name, plan)
            if fg is not None and plan.get("retry"):
                # a reduction MPI computes in its own order: made again on the new
                # communicator, it gives what the undisturbed run gave, bit for bit
                try:
                    return fg.call(op, value, count, root, fn_ref, timeout, round_no)
                except Thawed:
                    _retire(self.__dict__.get("_frozen", {}).pop(name, None))   # the hub's
        return answer

    # -- VM-wide mailbox (pvm_putinfo / pvm_recvinfo) -------------------------

    def put_info(self, name: str, value: Any) -> None:
        """Store ``value`` under ``name`` in the VM-wide mailbox (pvm_putinfo); replaces an older one."""
        self._site.call("put_info", name, value)

    def get_info(self, name: str, wait: bool = False, timeout: float | None = None) -> Any:
        """The value stored under ``name``; with ``wait``, block until one is put. KeyError if absent."""
        try:
            return self._site.call("get_info", name, wait, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"get_info: no mailbox entry named {name!r} was put within "
                               f"{timeout} s") from None

    def del_info(self, name: str) -> None:
        """Delete the mailbox entry ``name`` (KeyError if there is none)."""
        self._site.call("del_info", name)


def _retire(frozen: Any) -> None:
    """A frozen group this member is done with lets go of its communicator."""
    if frozen is not None:
        frozen.retire()


def spawn_args(count: int | None, args: Sequence | None) -> tuple[int, list | None]:
    """Check ``spawn``'s count= and args=: (the count, one argument list per instance)."""
    if args is None:
        return (1 if count is None else count), None
    if isinstance(args, (str, bytes, dict)) or not hasattr(args, "__len__"):
        raise TypeError(f"spawn(args=...) takes a list with one item per instance (a tuple of "
                        f"arguments, or one argument), not {type(args).__name__}")
    if count is not None and count != len(args):
        raise ValueError(f"spawn got count={count} and {len(args)} argument tuples in args=; "
                         f"give one of them (count is len(args))")
    if not args:
        raise ValueError("spawn(args=[]) starts no task: give at least one argument tuple")
    return len(args), [list(a) if isinstance(a, tuple) else [a] for a in args]


_OPS = ("sum", "prod", "min", "max")


def _op_ref(site: "Site", op: Any) -> str:
    """The name of a built-in reduce op, or the module:qualname of a user function."""
    if isinstance(op, str):
        if op not in _OPS and ":" not in op:
            raise ValueError(f"unknown reduce op {op!r}: use one of {', '.join(_OPS)} or a "
                             f"module-level function f(a, b) returning the combined value")
        return op
    name = _builtin_op(op)
    if name is not None:
        return name
    if not callable(op):
        raise TypeError(f"reduce op must be one of {', '.join(_OPS)} or a function, "
                        f"not {type(op).__name__}")
    return site.ref(op)


def _builtin_op(op: Any) -> str | None:
    """sum/min/max, operator.add/mul, math.prod and numpy's ufuncs are the built-in ops
    (element-wise on arrays); ``functools.reduce(sum, ...)`` would not work."""
    import builtins
    import math
    import operator
    import sys
    table = [(builtins.sum, "sum"), (operator.add, "sum"), (operator.mul, "prod"),
             (math.prod, "prod"), (builtins.min, "min"), (builtins.max, "max")]
    np = sys.modules.get("numpy")
    if np is not None:
        table += [(np.add, "sum"), (np.sum, "sum"), (np.multiply, "prod"), (np.prod, "prod"),
                  (np.minimum, "min"), (np.min, "min"), (np.maximum, "max"), (np.max, "max")]
    for f, name in table:
        if op is f:
            return name
    return None


def main_context(site: "Site") -> TaskContext:
    return TaskContext(site, MAIN_TID, None)


def now() -> float:
    return time.monotonic()
