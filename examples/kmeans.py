"""Distributed k-means (Lloyd's algorithm) over points partitioned among k tasks.

    clustervm run -n 4 examples/kmeans.py --points 200000 --clusters 5 --dim 3 --tasks 4 --seed 1

The points depend only on the seed and the sizes: Gaussian blobs around
``--clusters`` random centres, made in fixed-size chunks (chunk c from
``default_rng([seed, c])``); task i of k makes chunks i, i+k, ... itself.
Main picks the initial centroids (distinct points of chunk 0) and passes them
to the tasks. Every iteration each task assigns its points to the nearest
centroid and computes per-cluster sums and counts; one ``allreduce`` of
numpy arrays (sums, counts, inertia, points that changed cluster) gives every
task the same new centroids. It stops when no point changes cluster (or
after ``--max-iter``). With ``--mpi`` the tasks freeze the group first: when
they run one per node, its allreduce then goes over MPI between the tasks
instead of through the coordinator. Every 10 iterations each task checkpoints
its centroids and labels: a task restarted after its node is lost goes on from
there (the coordinator keeps only a group's last 64 rounds for members that
call them again).

Prints ``kmeans: clusters=K iters=I inertia=<float> centroids=[[...], ...]``
(inertia and centroids rounded to 6 decimals, identical for any k and node count).
"""
import argparse
import time

import numpy as np

import clustervm

GROUP = "kmeans"
CHUNK = 1 << 14
CHECKPOINT_EVERY = 10     # iterations


def n_chunks(n: int) -> int:
    return -(-n // CHUNK)


def centres(seed: int, clusters: int, dim: int) -> np.ndarray:
    return np.random.default_rng([seed, 1 << 30]).uniform(-10, 10, size=(clusters, dim))


def chunk(seed: int, n: int, clusters: int, dim: int, c: int) -> np.ndarray:
    """Points of chunk ``c``: each near a random one of the true centres."""
    size = min(CHUNK, n - c * CHUNK)
    rng = np.random.default_rng([seed, c])
    label = rng.integers(0, clusters, size=size)
    return centres(seed, clusters, dim)[label] + rng.normal(0.0, 1.5, size=(size, dim))


def initial_centroids(seed: int, n: int, clusters: int, dim: int) -> np.ndarray:
    first = chunk(seed, n, clusters, dim, 0)
    pick = np.random.default_rng([seed, 1 << 31]).choice(len(first), clusters, replace=False)
    return first[np.sort(pick)]


def nearest(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid of each point, and the squared distance to it."""
    d2 = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    label = d2.argmin(axis=1)
    return label, d2[np.arange(len(points)), label]


def is_member(ctx) -> bool:
    try:
        ctx.group_inst(GROUP)
        return True
    except clustervm.GroupError:
        return False


def worker(ctx, k: int, n: int, clusters: int, dim: int, seed: int, centroids: np.ndarray,
           max_iter: int, mpi: bool = False, every: int = CHECKPOINT_EVERY) -> dict | None:
    state = ctx.restore()
    if state is not None and not is_member(ctx):
        # the coordinator itself was restarted (--resume): groups live in its memory, not
        # in the job's journal, so the group is new and every member starts over
        state = None
    if state is None:
        me = ctx.join_group(GROUP)
        ctx.barrier(GROUP, count=k)
        if mpi:
            ctx.freeze_group(GROUP)
        done = 0
    else:     # restarted after a lost node: on from the last checkpoint's iteration
        me, done, centroids = state["me"], state["it"], state["centroids"]
    parts = [chunk(seed, n, clusters, dim, c) for c in range(me, n_chunks(n), k)]
    points = np.concatenate(parts) if parts else np.empty((0, dim))
    label = np.full(len(points), -1) if state is None else state["label"]
    for it in range(done + 1, max_iter + 1):
        new, d2 = nearest(points, centroids)
        changed = int((new != label).sum())
        label = new
        sums = np.zeros((clusters, dim))
        np.add.at(sums, label, points)
        counts = np.bincount(label, minlength=clusters).astype(np.int64)
        # one allreduce: per-cluster sums, counts, inertia and changes of every task
        packed = np.concatenate([sums.ravel(), counts, [d2.sum(), changed]])
        total = ctx.allreduce(GROUP, packed, op="sum")
        sums = total[:clusters * dim].reshape(clusters, dim)
        counts = total[clusters * dim:clusters * dim + clusters]
        inertia, changed = float(total[-2]), int(total[-1])
        if changed == 0:
            break
        empty = counts == 0                         # an empty cluster keeps its centroid
        centroids = np.where(empty[:, None], centroids,
                             sums / np.maximum(counts, 1)[:, None])
        if every and it % every == 0:
            # the coordinator keeps a group's last 64 rounds: a member restarted from
            # further back could not call its old rounds again
            ctx.checkpoint({"me": me, "it": it, "centroids": centroids, "label": label})
    if me != 0:
        return None
    return {"iters": it, "inertia": inertia, "centroids": centroids,
            "on_mpi": ctx.group_on_mpi(GROUP)}


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--clusters", type=int, default=5)
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--mpi", action="store_true",
                   help="freeze the group: MPI collectives when the tasks run one per node")
    a = p.parse_args(vm.argv[1:])
    if a.tasks < 1 or a.clusters < 1 or a.points < a.clusters or a.dim < 1:
        p.error("need --tasks >= 1, --dim >= 1 and --points >= --clusters >= 1")
    if a.clusters > min(a.points, CHUNK):
        p.error(f"--clusters must be at most {CHUNK} (initial centroids come from chunk 0)")
    t0 = time.perf_counter()
    init = initial_centroids(a.seed, a.points, a.clusters, a.dim)
    tids = vm.spawn(worker, a.tasks, a.points, a.clusters, a.dim, a.seed, init, a.max_iter,
                    a.mpi, count=a.tasks)
    r = next(r for r in [vm.join(t) for t in tids] if r is not None)    # (every one joined)
    cents = np.round(r["centroids"], 6) + 0.0          # + 0.0: no "-0.0"
    print(f"kmeans: clusters={a.clusters} iters={r['iters']} inertia={r['inertia']:.6f} "
          f"centroids={cents.tolist()}")
    print(f"kmeans: {a.points} points, {a.tasks} tasks, {time.perf_counter() - t0:.2f} s, "
          f"allreduce {'over MPI' if r['on_mpi'] else 'through the coordinator'}", flush=True)
