"""tests/test_doorbell.py: after a second of quiet, is a node's doorbell rung by the task
the coordinator sends it, and rank 0's by the node's answer? (Reads clustervm's
internals: the transports' doorbells.)"""
import time

from clustervm import current


def rung_here():
    bell = current._tls.site.transport._bell
    return None if bell is None else bell.rung


def main(vm) -> None:
    where = vm.nodes[1].rank
    for _ in range(20):
        vm.submit(rung_here, where=where).result()
    bell0 = vm._c.transport._bell
    before = vm.submit(rung_here, where=where).result()
    before0 = None if bell0 is None else bell0.rung
    time.sleep(1.0)                 # every rank in deep idle
    after = vm.submit(rung_here, where=where).result()
    after0 = None if bell0 is None else bell0.rung

    def said(a, b):
        return "none" if a is None else ("yes" if b > a else "no")
    print(f"rung={said(before, after)} coordinator={said(before0, after0)}")
