"""A hub group taken on and off MPI again and again; what it costs each member's memory.

    .venv/bin/clustervm run -n 4 benchmarks/apps/refreeze_cycle_app.py [CYCLES]

Main and one task per worker node join a group; each cycle is 20 allreduces (the
group goes on MPI by itself after 16 full rounds, ``CLUSTERVM_AUTO_FREEZE``) and a
barrier with ``count=`` (which takes it back to the coordinator). Each task reports
how much its RSS grew from cycle 10 to the end, and in how many cycles it was on MPI.
Prints ``refreeze cycles=<n> rss_growth_mb=[...] on_mpi=[...]``. Run it from a checkout
of each commit to compare (each time a group goes back on MPI its members build a new
communicator: since the twenty-second session they free the old one).
"""
G = "cycle"
WARM = 10           # cycles before the RSS is first read


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20


def member(ctx, n: int, cycles: int) -> tuple[float, int]:
    ctx.join_group(G)
    ctx.barrier(G, count=n)
    start, on_mpi = rss_mb(), 0
    for c in range(cycles):
        for _ in range(20):
            assert ctx.allreduce(G, 1) == n
        on_mpi += ctx.group_on_mpi(G)
        ctx.barrier(G, count=n)
        if c == WARM:
            start = rss_mb()
    return rss_mb() - start, on_mpi


def main(vm) -> None:
    cycles = int(vm.argv[1]) if len(vm.argv) > 1 else 300
    ranks = sorted(nd.rank for nd in vm.nodes if nd.rank > 0)
    n = len(ranks) + 1
    ctx = vm.context
    ctx.join_group(G)
    tids = [vm.spawn(member, n, cycles, where=r)[0] for r in ranks]
    ctx.barrier(G, count=n)
    for _ in range(cycles):
        for _ in range(20):
            ctx.allreduce(G, 1)
        ctx.barrier(G, count=n)
    got = [vm.join(t) for t in tids]
    print(f"refreeze cycles={cycles} rss_growth_mb={[round(g, 2) for g, _ in got]} "
          f"on_mpi={[m for _, m in got]}", flush=True)
