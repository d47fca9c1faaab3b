"""clustervm side of benchmarks/throughput.py: tasks/s with map (one by one, and in
multiprocessing.Pool's chunks) and submit, round-trip latency."""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks import noop, pool_chunksize, sleep_ms  # noqa: E402


def rate(vm, fn, n: int, how: str, chunk: int) -> tuple[float, float]:
    """Tasks per second, and coordinator CPU microseconds per task."""
    c0, t0 = time.process_time(), time.perf_counter()
    if how == "map":
        out = list(vm.map(fn, range(n)))
    elif how == "chunked":
        out = list(vm.map(fn, range(n), chunksize=chunk))
    else:
        futs = [vm.submit(fn, i) for i in range(n)]
        out = [f.result() for f in futs]
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert out == list(range(n))
    return n / dt, dc / n * 1e6


def main(vm) -> None:
    n_noop = int(vm.argv[1]) if len(vm.argv) > 1 else 20000
    n_ms = int(vm.argv[2]) if len(vm.argv) > 2 else 2000
    workers = len(vm.nodes) - 1                          # rank 0 runs no tasks
    list(vm.map(noop, range(500)))                       # warm up, one by one
    # and in chunks of the size measured, as the peers are (their first call pays too)
    list(vm.map(noop, range(n_noop), chunksize=pool_chunksize(n_noop, workers)))
    for name, fn, n in (("noop", noop, n_noop), ("1ms", sleep_ms, n_ms)):
        for how in ("map", "chunked", "submit"):
            r, cpu = rate(vm, fn, n, how, pool_chunksize(n, workers))
            print(f"result clustervm {name} {how} {r:.1f} {cpu:.2f}")
    lat = []
    for i in range(2000):
        t0 = time.perf_counter()
        vm.submit(noop, i).result()
        lat.append(time.perf_counter() - t0)
    print(f"result clustervm latency - {statistics.median(lat) * 1e3:.4f} 0")
