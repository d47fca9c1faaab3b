"""2-D heat diffusion (Jacobi) over k spawned tasks that exchange halo rows.

    clustervm run -n 4 examples/heat2d.py --size 256 --steps 500 --tasks 4 --checkpoint-every 50

The grid is cut into k horizontal strips, one per task. Every step each task
sends its edge rows to its neighbours, receives theirs, and updates its strip.
Every ``--checkpoint-every`` steps each task checkpoints its strip; after a
node is lost its tasks restart from their checkpoints and the messages they
had not received are replayed, so the final checksum is identical with and
without failures. Prints ``checksum=<hex> total=<float> steps=<int>``.
"""
import argparse
import hashlib
import time

import numpy as np

UP, DOWN = 1, 2          # tags: a row travelling up / down the grid
ALPHA = 0.24


def strip_bounds(size: int, k: int, i: int) -> tuple[int, int]:
    per, extra = divmod(size, k)
    lo = i * per + min(i, extra)
    return lo, lo + per + (i < extra)


def initial(size: int, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of the start grid with one ghost row above and below."""
    u = np.zeros((hi - lo + 2, size))
    if lo == 0:
        u[0, :] = 100.0                   # the hot top edge (a fixed boundary)
    yy, xx = np.mgrid[lo:hi, 0:size]
    c = size / 2
    u[1:-1] += 50.0 * np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (size * 2.0))
    return u


def solver(ctx, tasks: int, size: int, steps: int, every: int, step_ms: float,
           final: bool = False) -> dict:
    state = ctx.restore()
    if state is None:
        # the strips in spawn order: this task's index and its siblings' tids are known
        # from the start, as an MPI rank's are (a group's join, barrier and member list
        # were three calls to the coordinator, 1-18 ms at a job's start here)
        me, tids = ctx.rank, ctx.siblings
        lo, hi = strip_bounds(size, len(tids), me)
        u, step = initial(size, lo, hi), 0
    else:
        me, tids, u, step = state["me"], state["tids"], state["u"], state["step"]
    k = len(tids)
    up = tids[me - 1] if me > 0 else None
    down = tids[me + 1] if me < k - 1 else None
    while step < steps:
        if up is not None:
            ctx.send(up, UP, u[1])
        if down is not None:
            ctx.send(down, DOWN, u[-2])
        if up is not None:
            u[0] = ctx.recv(up, DOWN).data
        if down is not None:
            u[-1] = ctx.recv(down, UP).data
        inner = u[1:-1, 1:-1]
        lap = u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4.0 * inner
        u[1:-1, 1:-1] = inner + ALPHA * lap
        if down is None:
            u[-2, :] = 0.0                # the cold bottom edge
        step += 1
        if step_ms:
            time.sleep(step_ms / 1000.0)
        if every and (step % every == 0 and step < steps or final and step == steps):
            # final (a checkpoint group): one more after the last exchange, so that a
            # member lost after another has returned goes back to it, not to a checkpoint
            # before messages the returned one cannot send again
            ctx.checkpoint({"me": me, "tids": tids, "u": u, "step": step})
    return {"me": me, "rows": u[1:-1]}


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS")
    p.add_argument("--step-ms", type=float, default=0.0, help="extra time per step (drills)")
    p.add_argument("--checkpoint-mode", choices=("log", "group"), default="log",
                   help="log: each strip on its own, messages logged for replay (default); "
                        "group: the strips checkpoint together and roll back together")
    a = p.parse_args(vm.argv[1:])
    if a.tasks < 1 or a.size < a.tasks:
        p.error("need 1 <= --tasks <= --size")
    t0 = time.perf_counter()
    tids = vm.spawn(solver, a.tasks, a.size, a.steps, a.checkpoint_every, a.step_ms,
                    a.checkpoint_mode == "group", count=a.tasks, checkpoint=a.checkpoint_mode)
    parts = sorted((vm.join(t) for t in tids), key=lambda r: r["me"])
    grid = np.vstack([p["rows"] for p in parts])
    digest = hashlib.sha256(np.ascontiguousarray(grid).tobytes()).hexdigest()[:16]
    print(f"checksum={digest} total={float(grid.sum())!r} steps={a.steps}")
    print(f"heat2d: {a.size}x{a.size}, {a.tasks} tasks, {time.perf_counter() - t0:.3f} s",
          flush=True)
