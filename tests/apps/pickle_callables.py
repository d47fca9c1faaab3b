"""What the executor carries with --pickle that msgpack cannot: run with --pickle.

    clustervm run -n 2 --pickle tests/apps/pickle_callables.py

Prints ``pickled=<json>``.
"""
import functools
import json
from fractions import Fraction


class Rational:
    def __init__(self, q):
        self.q = q                    # a Fraction: not wire data, but picklable

    def times(self, x):
        return str(self.q * x)


def add(a, b):
    return str(a + b)


def main(vm):
    ex = vm.executor()
    out = {"bound": ex.submit(Rational(Fraction(1, 3)).times, 2).result(timeout=30),
           "partial": ex.submit(functools.partial(add, Fraction(1, 2)), 1).result(timeout=30)}
    print("pickled=" + json.dumps(out), flush=True)
