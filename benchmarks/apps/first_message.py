"""The smallest job: start, one task to a node and back, end."""


def one() -> int:
    return 1


def main(vm) -> None:
    assert vm.submit(one).result() == 1
