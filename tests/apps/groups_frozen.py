"""Frozen groups on MPI collectives: the same calls as groups_calls.py, and a lost member.

    clustervm run -n 4 tests/apps/groups_frozen.py [--kill-at K --markers DIR]

Main and one spawned task per worker node (``where=rank``) join group "g",
freeze it (one member per rank: its collectives run on MPI) and make the calls
of groups_calls.record. Main prints ``frozen-result=<json>``. With
``--kill-at K`` the member on the last rank creates ``DIR/ready`` before its
K-th allreduce of a loop and sleeps (the test kills its node); main then
prints ``frozen-error: none`` (or ``<type>: <message>``) and ``frozen-survived:``
(whether every allreduce of the loop was right, and the members' errors).
"""
import argparse
import json
import os
import time

import numpy as np
from groups_calls import G, record


def probe_errors(ctx, me: int) -> dict:
    """Mismatched calls: the same GroupError at every member, and the group goes on."""
    e = {}
    try:
        if me == 0:
            ctx.bcast(G, 1, root=0)
        else:
            ctx.allreduce(G, 1)
        e["mismatch"] = "no error"
    except Exception as exc:   # noqa: BLE001
        e["mismatch"] = f"{type(exc).__name__}: {exc}"
    try:
        ctx.bcast(G, 1, root=42)
        e["bad_root"] = "no error"
    except Exception as exc:   # noqa: BLE001
        e["bad_root"] = f"{type(exc).__name__}: {exc}"
    # an array at one member, lists at the others: combined as on the hub
    e["mixed"] = ctx.allreduce(G, np.arange(3) if me == 0 else [1, 1, 1]).tolist()
    try:                              # one member cannot send its value: nobody hangs
        ctx.allgather(G, object() if me == 1 else me)
        e["unsendable"] = "no error"
    except Exception as exc:   # noqa: BLE001
        e["unsendable"] = f"{type(exc).__name__}: {exc}"
    e["after"] = ctx.allreduce(G, 1)
    return e


def member(ctx, n: int, kill_at: int, markers: str, last_rank: int):
    me = ctx.join_group(G)
    ctx.barrier(G, count=n)
    ctx.freeze_group(G)
    r = record(ctx, me, n)
    r["on_mpi"] = ctx.group_on_mpi(G)
    r["errors"] = probe_errors(ctx, me)
    if kill_at >= 0:
        try:
            for step in range(kill_at + 50):
                if step == kill_at and ctx.node == last_rank:
                    open(os.path.join(markers, "ready"), "w").close()
                    time.sleep(60)
                ctx.allreduce(G, step, timeout=60)
        except Exception as exc:   # noqa: BLE001
            r["lost"] = f"{type(exc).__name__}: {exc}"
    return r


def main(vm) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kill-at", type=int, default=-1)
    p.add_argument("--markers", default="")
    a = p.parse_args(vm.argv[1:])
    ranks = [nd.rank for nd in vm.nodes if nd.rank > 0]
    n = len(ranks) + 1
    tids = [vm.spawn(member, n, a.kill_at, a.markers, max(ranks), where=r)[0] for r in ranks]
    while vm.group_size(G) < len(ranks):
        time.sleep(0.01)
    me = vm.join_group(G)
    vm.barrier(G, count=n)
    size = vm.freeze_group(G)
    mine = record(vm.context, me, n)
    mine["on_mpi"] = vm.group_on_mpi(G)
    mine["frozen_size"] = size
    mine["errors"] = probe_errors(vm.context, me)
    if a.kill_at >= 0:
        t0 = time.monotonic()
        sums = []
        try:
            for step in range(a.kill_at + 50):
                sums.append(vm.allreduce(G, step, timeout=60))
            print("frozen-error: none", flush=True)
        except Exception as exc:   # noqa: BLE001
            print(f"frozen-error: {type(exc).__name__}: {exc} "
                  f"(after {time.monotonic() - t0:.1f} s)", flush=True)
        lost = []
        for t in tids:
            try:
                lost.append(vm.join(t, timeout=60).get("lost"))
            except Exception as exc:   # noqa: BLE001
                lost.append(f"{type(exc).__name__}: {exc}")
        ok = sums == [n * s for s in range(a.kill_at + 50)]
        print(f"frozen-survived: sums_ok={ok} on_mpi={vm.group_on_mpi(G)} "
              f"task_errors={[x for x in lost if x]}", flush=True)
        return
    tasks = [vm.join(t, timeout=60) for t in tids]
    print("frozen-result=" + json.dumps({"main": mine, "tasks": tasks, "tids": tids,
                                         "main_tid": vm.tid}), flush=True)
