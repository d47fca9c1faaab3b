"""A long loop of hub-group barriers (main and 3 tasks, one a node), to profile rank 0.

    clustervm run -n 4 benchmarks/apps/hub_barrier_app.py [count]

Prints ``hub barrier <us> us`` (`benchmarks/collectives.py` runs it beside raw
mpi4py). While it runs, ``py-spy record --pid <rank 0> --threads --idle`` shows
where rank 0's share of a barrier goes.
"""
import time

MEMBERS = 4


def member(ctx, n: int) -> None:
    ctx.join_group("g")
    ctx.barrier("g", count=MEMBERS)
    for _ in range(n):
        ctx.barrier("g")


def main(vm) -> None:
    n = int(vm.argv[1]) if len(vm.argv) > 1 else 5000
    tids = vm.spawn(member, n, count=MEMBERS - 1)
    vm.join_group("g")
    vm.barrier("g", count=MEMBERS)
    t0 = time.perf_counter()
    for _ in range(n):
        vm.barrier("g")
    dt = (time.perf_counter() - t0) / n
    for t in tids:
        vm.join(t)
    print(f"hub barrier {dt * 1e6:.1f} us")
