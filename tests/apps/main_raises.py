"""Test app: main fails (or exits with a status) after using the VM.

    clustervm run -n 3 tests/apps/main_raises.py            # main raises
    clustervm run -n 3 tests/apps/main_raises.py exit 3     # main calls sys.exit(3)
"""
import sys


def double(x):
    return 2 * x


def waits_forever(ctx):
    return ctx.recv(tag=99).data


def fail_in_main(value):
    raise RuntimeError(f"boom from main after {value}")


def main(vm):
    value = vm.submit(double, 21).result(60)
    vm.spawn(waits_forever, count=2)      # still running when main ends
    if vm.argv[1:2] == ["exit"]:
        sys.exit(int(vm.argv[2]))
    fail_in_main(value)
