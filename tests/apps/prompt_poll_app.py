"""Work for a node whose task has just stopped polling is seen at once (tests/test_doorbell.py).

A node's idle workers keep off the GIL while its task polls for the rank. Run with
doorbells off and deep idle's polls far apart, so that nobody but those workers can
see the work. Prints, in milliseconds::

    spawn_again_ms=<f> submit_while_computing_ms=<f>

``spawn_again_ms``: the slowest of three spawns of a task right after the one before
ended, to its result. ``submit_while_computing_ms``: a task submitted to a node whose
spawned task has just answered its last message and computes, to its result.
"""
import time


def noop(ctx) -> int:
    return 1


def answer_then_compute(ctx, rounds: int, seconds: float) -> int:
    for _ in range(rounds):
        m = ctx.recv()
        ctx.send(m.source, 2, m.data)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        sum(range(10000))
    return rounds


def short(x: int) -> int:
    return x


def main(vm) -> None:
    vm.join(vm.spawn(noop, where=[1])[0])
    again = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        vm.join(vm.spawn(noop, where=[1])[0])
        again = max(again, time.perf_counter() - t0)
    tid = vm.spawn(answer_then_compute, 200, 4.0, where=[1])[0]
    for i in range(200):
        vm.send(tid, 1, i)
        vm.recv(tid, 2)
    t0 = time.perf_counter()
    assert vm.submit(short, 7, where=[1]).result() == 7
    submitted = time.perf_counter() - t0
    assert vm.join(tid) == 200
    print(f"spawn_again_ms={again * 1e3:.1f} submit_while_computing_ms={submitted * 1e3:.1f}",
          flush=True)
