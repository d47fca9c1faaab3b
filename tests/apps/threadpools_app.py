"""What sizes a job's numeric thread pools on its ranks (tests/test_threadpools.py).

    clustervm run -n 3 tests/apps/threadpools_app.py

Prints ``pools main=<json> task=<json>``: the pool variables (threadpools.POOL_VARS) as
main and a spawned task see them (null: not set).
"""
import json
import os

VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pools(ctx=None) -> dict:
    return {name: os.environ.get(name) for name in VARS}


def main(vm) -> None:
    task = vm.join(vm.spawn(pools)[0])
    print(f"pools main={json.dumps(pools())} task={json.dumps(task)}", flush=True)
