"""mpi4py.futures side of benchmarks/throughput.py (run under mpiexec -m mpi4py.futures)."""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mpi4py.futures import MPIPoolExecutor  # noqa: E402
from tasks import noop, pool_chunksize, sleep_ms  # noqa: E402


def main() -> None:
    n_noop, n_ms = int(sys.argv[1]), int(sys.argv[2])
    with MPIPoolExecutor() as ex:
        list(ex.map(noop, range(500)))
        list(ex.map(noop, range(n_noop), chunksize=pool_chunksize(n_noop, ex.num_workers)))
        for name, fn, n in (("noop", noop, n_noop), ("1ms", sleep_ms, n_ms)):
            t0 = time.perf_counter()
            assert list(ex.map(fn, range(n))) == list(range(n))
            print(f"result mpipool {name} map {n / (time.perf_counter() - t0):.1f} 0")
            t0 = time.perf_counter()
            chunk = pool_chunksize(n, ex.num_workers)
            assert list(ex.map(fn, range(n), chunksize=chunk)) == list(range(n))
            print(f"result mpipool {name} chunked {n / (time.perf_counter() - t0):.1f} 0")
            t0 = time.perf_counter()
            futs = [ex.submit(fn, i) for i in range(n)]
            assert [f.result() for f in futs] == list(range(n))
            print(f"result mpipool {name} submit {n / (time.perf_counter() - t0):.1f} 0")
        lat = []
        for i in range(1000):
            t0 = time.perf_counter()
            ex.submit(noop, i).result()
            lat.append(time.perf_counter() - t0)
        print(f"result mpipool latency - {statistics.median(lat) * 1e3:.4f} 0", flush=True)


if __name__ == "__main__":
    main()
