"""Cannon's matrix multiplication C = A @ B on a q x q grid of spawned tasks.

    clustervm run -n 4 examples/cannon.py --n 192 --grid 3

Main cuts A and B into q x q blocks and spawns q*q tasks with
``vm.spawn(..., args=[...])``, giving each its blocks already skewed (task
(i, j) starts with A[i, i+j] and B[i+j, j]). A task finds its place in the
grid from ``ctx.rank`` and its neighbours from ``ctx.siblings``. Each of the q
steps multiplies the two blocks it holds into its block of C while B's block
travels one row up with non-blocking ``isend``/``irecv``, then shifts A's block
one column left with ``sendrecv``, and checkpoints (step, A, B, C). After a lost
node its tasks restart from their checkpoints and the messages they had not
received are replayed, so the result is the same as without failures.

Main assembles C and compares it with numpy's ``A @ B``; prints
``cannon ok=<bool> n=<int> grid=<int> maxdiff=<float>`` (exit status 1 if not ok).
"""
import argparse
import time

import numpy as np

import clustervm

TAG_A, TAG_B = 1, 2      # a block of A travelling left, a block of B travelling up
WAIT_S = 120.0           # longest wait for a neighbour's block (it may be restarting)


def cannon_task(ctx, q: int, a: np.ndarray, b: np.ndarray, step_ms: float) -> dict:
    """Task (i, j) of the grid, i = rank // q, j = rank % q."""
    i, j = divmod(ctx.rank, q)
    grid = ctx.siblings
    left, right = grid[i * q + (j - 1) % q], grid[i * q + (j + 1) % q]
    up, down = grid[((i - 1) % q) * q + j], grid[((i + 1) % q) * q + j]
    state = ctx.restore()
    if state is None:
        step, c = 0, np.zeros((a.shape[0], b.shape[1]))
    else:
        step, a, b, c = state["step"], state["a"], state["b"], state["c"]
    while step < q:
        last = step == q - 1
        if not last:            # B's next block is on its way while this one is used
            rb = ctx.irecv(down, TAG_B)
            sb = ctx.isend(up, TAG_B, b)
        c = c + a @ b
        if not last:
            a = ctx.sendrecv(left, TAG_A, a, source=right, recvtag=TAG_A, timeout=WAIT_S).data
            b = rb.wait(timeout=WAIT_S).data
            sb.wait(timeout=WAIT_S)
        step += 1
        if step_ms:
            time.sleep(step_ms / 1000.0)
        if not last:
            ctx.checkpoint({"step": step, "a": a, "b": b, "c": c})
    return {"rank": ctx.rank, "c": c}


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=192, help="matrix size (a multiple of --grid)")
    p.add_argument("--grid", type=int, default=3, help="q: q*q tasks on a q x q grid")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--step-ms", type=float, default=0.0, help="extra time per step (drills)")
    a = p.parse_args(vm.argv[1:])
    q, n = a.grid, a.n
    if q < 1 or n < q or n % q:
        p.error(f"--n must be a positive multiple of --grid (got n={n}, grid={q})")
    rng = np.random.default_rng(a.seed)
    A, B = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    s = n // q

    def block(m: np.ndarray, r: int, c: int) -> np.ndarray:
        return np.ascontiguousarray(m[r * s:(r + 1) * s, c * s:(c + 1) * s])

    t0 = time.perf_counter()
    tids = vm.spawn(cannon_task, args=[(q, block(A, i, (i + j) % q), block(B, (i + j) % q, j),
                                        a.step_ms) for i in range(q) for j in range(q)])
    C = np.empty((n, n))
    for t in tids:
        r = vm.join(t)
        i, j = divmod(r["rank"], q)
        C[i * s:(i + 1) * s, j * s:(j + 1) * s] = r["c"]
    maxdiff = float(np.abs(C - A @ B).max())
    ok = bool(np.allclose(C, A @ B, rtol=1e-12, atol=1e-9))
    print(f"cannon ok={ok} n={n} grid={q} maxdiff={maxdiff:.3e}", flush=True)
    print(f"cannon: {q * q} tasks, {time.perf_counter() - t0:.2f} s", flush=True)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    clustervm.run(main)
