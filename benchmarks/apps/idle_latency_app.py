"""One task's submit-and-result time after the pool was idle a while (benchmarks/idle_latency.py).

clustervm: ``main(vm)`` under ``clustervm run``; mpi4py.futures: run as a script under
``mpiexec -m mpi4py.futures``. Prints ``result <pause s> <median ms>`` per pause.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tasks import noop  # noqa: E402

PAUSES = (0.0, 0.01, 0.1, 0.3, 1.0)


def measure(submit, reps: int) -> None:
    for _ in range(50):                         # warm: every worker has run tasks
        submit(noop, 0)
    for pause in PAUSES:
        took = []
        for i in range(reps):
            time.sleep(pause)
            t0 = time.perf_counter()
            assert submit(noop, i) == i
            took.append(time.perf_counter() - t0)
        print(f"result {pause} {statistics.median(took) * 1e3:.3f}", flush=True)


def main(vm) -> None:
    measure(lambda fn, x: vm.submit(fn, x).result(), int(vm.argv[1]))


if __name__ == "__main__":
    from mpi4py.futures import MPIPoolExecutor
    with MPIPoolExecutor() as ex:
        measure(lambda fn, x: ex.submit(fn, x).result(), int(sys.argv[1]))
