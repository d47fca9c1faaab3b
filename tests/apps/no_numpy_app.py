"""A job whose code never uses numpy: a task gets a 50 KB argument (one message of its
own, larger than a small frame) and a 50 KB message, and says whether its node has
imported numpy since (tests/test_imports.py).

    clustervm run -n 2 tests/apps/no_numpy_app.py

Prints ``no-numpy: bytes=<int> numpy_on_node=<bool> numpy_on_coordinator=<bool>``.
"""
import sys

BIG = b"x" * 50_000


def receiver(ctx, payload: bytes) -> tuple:
    got = ctx.recv(tag=1).data
    return len(payload) + len(got), "numpy" in sys.modules


def main(vm) -> None:
    [tid] = vm.spawn(receiver, BIG)
    vm.send(tid, 1, BIG)
    size, on_node = vm.join(tid)
    print(f"no-numpy: bytes={size} numpy_on_node={on_node} "
          f"numpy_on_coordinator={'numpy' in sys.modules}", flush=True)
