"""tests/test_doorbell.py and tests/test_multihost.py: after a second of quiet, is a node's
doorbell rung by the coordinator, for the task it sends the node, and the coordinator's
by that node, for the task's result? (Reads clustervm's internals: the doorbells.)"""
import time

from clustervm import current


def rung_by_coordinator():
    bell = current._tls.site.transport._bell
    return None if bell is None else bell.rung_by.get(0, 0)


def main(vm) -> None:
    # the first node, or with "last" the last (on the last host of a multi-host job)
    where = vm.nodes[-1 if vm.argv[1:] == ["last"] else 1].rank
    for _ in range(20):
        vm.submit(rung_by_coordinator, where=where).result()
    bell0 = vm._c.transport._bell

    def by_node():
        return None if bell0 is None else bell0.rung_by.get(where, 0)
    before, before0 = vm.submit(rung_by_coordinator, where=where).result(), by_node()
    time.sleep(1.0)                 # every rank in deep idle
    after, after0 = vm.submit(rung_by_coordinator, where=where).result(), by_node()

    def said(a, b):
        return "none" if a is None else ("yes" if b > a else "no")
    print(f"rung={said(before, after)} coordinator={said(before0, after0)}")
