"""The coordinator's API: what tasks (and main) ask of it by name.

A node's ``site.call(name, *args)`` arrives as a REQ message and runs the
handler that :meth:`CoordinatorAPI._api_table` lists under ``name`` (the names
and their arguments are ``protocol.REQUESTS``; tests/test_protocol.py keeps
the two lists the same), as
``handler(reply, *args)`` under the coordinator's lock (main calls it
directly). Handlers never block: they answer through ``reply`` now or later.
A mixin of :class:`clustervm.coordinator.Coordinator`, whose state it uses.
"""
from __future__ import annotations

from typing import Any, Callable

from . import protocol as P
from . import remote
from .core import events as E
from .endpoint import QUIET
from .errors import DeadTaskError, UnknownTaskError
from .records import SHORT, SPAWNED, Reply
from .site import ENDED


class CoordinatorAPI:
    """Request handling and the ``api_*`` handlers of the coordinator."""

    def _api_table(self) -> dict[str, Callable[..., None]]:
        """The request handlers by name: an explicit table (nothing is found by name)."""
        return {
            "locate": self.api_locate, "checkpoint": self.api_checkpoint,
            "submit": self.api_submit, "spawn": self.api_spawn, "join": self.api_join,
            "tasks": self.api_tasks, "kill": self.api_kill, "notify": self.api_notify,
            "join_group": self.api_join_group, "leave_group": self.api_leave_group,
            "group_size": self.api_group_size, "group_tids": self.api_group_tids,
            "group_tid": self.api_group_tid, "group_inst": self.api_group_inst,
            "collective": self.api_collective, "frozen_shadow": self.api_frozen_shadow,
            "put_info": self.api_put_info, "get_info": self.api_get_info,
            "del_info": self.api_del_info, "node_failed": self.api_node_failed,
            "bells": self.api_bells,
        }

    def _on_req(self, src: int, msg: P.Req) -> str | None:
        reqid = msg.reqid

        def reply(ok: bool, value: Any) -> None:
            if not ok and isinstance(value, BaseException):
                value = remote.pack_exception(value, "the coordinator")
            self.transport.post(src, P.Reply(reqid, ok, value).encode())

        self._serve(msg.name, msg.args, reply, src)
        # a node posts its task's checkpoint and reads the answer at the next one
        return QUIET if msg.name == "checkpoint" else None

    def _serve(self, name: str, args: tuple, reply: Reply, src: int = 0) -> None:
        fn = self.api.get(name)
        if fn is None:
            reply(False, ValueError(f"unknown call {name!r}"))
            return
        try:
            with self.lock:
                self._src = src          # the rank that asks (api_checkpoint checks it)
                fn(reply, *args)
        except Exception as exc:   # noqa: BLE001 - the caller gets it
            reply(False, exc)

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Main's calls run here directly."""
        box: list = []
        self._serve(name, args, lambda ok, value: box.append((ok, value)))
        if not box and not self.wait(lambda: bool(box), timeout, blocking=True):
            raise TimeoutError(f"{name}: no answer within {timeout} s")
        ok, value = box[0]
        if ok:
            return value
        if isinstance(value, BaseException):
            raise value
        raise remote.unpack_exception(value)

    def api_locate(self, reply: Reply, tid: int, ended_ok: bool = False) -> None:
        if tid == P.MAIN_TID:
            reply(True, (0, 0, False))
            return
        rec = self.tasks.get(tid)
        if rec is None:
            if tid in self.exits and ended_ok:
                reply(True, (ENDED, 0, False))
                return
            if tid in self.exits:
                raise DeadTaskError(f"task {tid} has ended; a message to it cannot be delivered "
                                    f"(use vm.notify(TASK_EXIT) to learn when tasks end)")
            raise UnknownTaskError(f"no task has tid {tid}; tids come from vm.spawn or "
                                   f"vm.submit (see vm.tasks())")
        if rec.node is None or rec.state != "running":
            reply(True, (None, rec.inc, rec.replay))
        else:
            reply(True, (rec.node, rec.inc, rec.replay))

    def api_checkpoint(self, reply: Reply, tid: int, inc: int, seq: int, delivered: dict,
                       blob: bytes | None, buddy: int = 0) -> None:
        self.save_checkpoint(tid, inc, seq, delivered, blob, self._src or None, buddy, reply)

    def api_submit(self, reply: Reply, parent: int, fn_ref: str, args: tuple,
                   kwargs: dict) -> None:
        self.submit(parent, fn_ref, args, kwargs, reply=reply)

    def api_spawn(self, reply: Reply, parent: int, fn_ref: str, args: tuple, kwargs: dict,
                  count: int, where: Any, replay: bool = True, per: list | None = None,
                  checkpoint: str = "log") -> None:
        reply(True, self.spawn(parent, fn_ref, args, kwargs, count, where, replay, per,
                               checkpoint))

    def api_join(self, reply: Reply, tid: int) -> None:
        if tid in self.exits:
            ok, value = self.exits[tid]
            reply(ok, value)
            return
        rec = self.tasks.get(tid)
        if rec is None or rec.kind != SPAWNED:
            raise UnknownTaskError(f"no spawned task has tid {tid}")
        rec.joiners.append(reply)

    def api_tasks(self, reply: Reply) -> None:
        rows = [{"tid": P.MAIN_TID, "parent": None, "node": 0, "state": "running",
                 "fn": "main"}]
        for rec in self.tasks.values():
            rows.append({"tid": rec.tid, "parent": rec.parent, "node": rec.node,
                         "state": rec.state.value, "fn": rec.fn,
                         "kind": "spawned" if rec.kind == SPAWNED else "task"})
        reply(True, rows)

    def api_kill(self, reply: Reply, tid: int) -> None:
        rec = self.tasks.get(tid)
        if rec is None:
            raise UnknownTaskError(f"no live task has tid {tid}")
        if rec.kind == SHORT:
            self.cancel_task(tid, running=True)
        else:
            err = DeadTaskError(f"task {tid} was killed")
            self._run(E.TaskKilled(tid, remote.pack_exception(err, "the coordinator")))
        reply(True, None)

    def api_notify(self, reply: Reply, tid: int, kinds: list, tids: Any, tag: int) -> None:
        """Deliver matching events as messages with ``tag`` to task ``tid`` (pvm_notify)."""
        def deliver(event: dict) -> None:
            self._event_message(tid, tag, event)
        self.events.subscribe(kinds, tids, deliver)
        if "TASK_EXIT" in kinds and tids:
            for t in tids:
                if t in self.exits or (t not in self.tasks and t != P.MAIN_TID):
                    deliver({"kind": "TASK_EXIT", "tid": t, "ok": self.exits.get(t, (False,))[0]})
        reply(True, None)

    def _event_message(self, tid: int, tag: int, event: dict) -> None:
        rec_rank = 0 if tid == P.MAIN_TID else getattr(self.tasks.get(tid), "node", None)
        seq = 0   # events are not sequenced: deliver straight into the mailbox
        if rec_rank == 0:
            self.mailbox(tid).put(P.SYSTEM, tag, event, 0, seq)
            self.transport.notify()
        elif rec_rank is not None:
            self.transport.post(rec_rank, P.User.make(P.SYSTEM, tid, tag, event, 0, 0))

    # groups are the core's (clustervm.core.groups): each call is an event, answered by
    # an Answer instruction (or an error)
    def api_join_group(self, reply: Reply, name: str, tid: int) -> None:
        self._run(E.GroupJoined(name, tid, reply))

    def api_leave_group(self, reply: Reply, name: str, tid: int) -> None:
        self._run(E.GroupLeft(name, tid, reply))

    def api_group_size(self, reply: Reply, name: str) -> None:
        self._run(E.GroupAsked("size", name, None, reply))

    def api_group_tids(self, reply: Reply, name: str) -> None:
        self._run(E.GroupAsked("tids", name, None, reply))

    def api_group_tid(self, reply: Reply, name: str, inst: int) -> None:
        self._run(E.GroupAsked("tid", name, inst, reply))

    def api_group_inst(self, reply: Reply, name: str, tid: int) -> None:
        self._run(E.GroupAsked("inst", name, tid, reply))

    def api_collective(self, reply: Reply, op: str, name: str, tid: int, value: Any,
                       count: Any, root: Any, fn: Any, round_no: int | None = None,
                       envelope: bool = False) -> None:
        self._run(E.GroupCalled(op, name, tid, value, count, root, fn, round_no, envelope,
                                reply))

    def api_frozen_shadow(self, reply: Reply, name: str, tid: int, entries: list,
                          off: bool = False) -> None:
        """A member's contributions to calls of a frozen group made on MPI (never answered:
        kept so the group can go on on the hub if a member is lost; see core/groups.py);
        ``off``: the member's last, it makes no more calls on MPI."""
        self._run(E.FrozenShadows(name, tid, entries, bool(off)))

    # the VM-wide mailbox is the core's (clustervm.core: InfoPut, InfoGet, InfoDeleted)
    def api_put_info(self, reply: Reply, name: str, value: Any) -> None:
        self._run(E.InfoPut(name, value, reply))

    def api_get_info(self, reply: Reply, name: str, wait: bool) -> None:
        self._run(E.InfoGet(name, wait, reply))

    def api_del_info(self, reply: Reply, name: str) -> None:
        self._run(E.InfoDeleted(name, reply))

    def api_bells(self, reply: Reply) -> None:
        reply(True, self.transport.bells())

    def api_node_failed(self, reply: Reply, text: str) -> None:
        self.internal_error(f"clustervm's node {self._src} {text}")

