"""tests/test_doorbell.py and tests/test_multihost.py: after a second of quiet, is a node's
doorbell rung by the coordinator, for the task it sends the node, and the coordinator's
by that node, for the task's result? (Reads clustervm's internals: the doorbells.)

With ``pair`` (a job on three hosts): is a node's bell rung by a node of another host
(neither on the coordinator's), for a task's message after a second of quiet? Prints
``pair rung=yes|no|none round_trip_ms=<float>`` (that message and its answer)."""
import time

from clustervm import ANY, current


def rung_by_coordinator():
    bell = current._tls.site.transport._bell
    return None if bell is None else bell.rung_by.get(0, 0)


def rung_by(rank: int):
    bell = current._tls.site.transport._bell
    return None if bell is None else bell.rung_by.get(rank, 0)


def answer(ctx, pinger_rank: int):
    """Answer 40 pings at once, then one after the pinger's quiet spell: how often this
    node's bell was rung by the pinger's node before and after that last one."""
    for _ in range(40):
        m = ctx.recv(ANY, 1)
        ctx.send(m.source, 2, m.data)
    before = rung_by(pinger_rank)
    m = ctx.recv(ANY, 1)
    after = rung_by(pinger_rank)
    ctx.send(m.source, 2, m.data)
    return before, after


def ping(ctx, peer: int):
    for i in range(40):
        if i == 20:
            # the first ring may have asked before the peer's node knocked at the
            # coordinator (at the job's start): the next that fails asks again
            time.sleep(1.2)
        ctx.send(peer, 1, i)
        ctx.recv(peer, 2)
    time.sleep(1.0)                 # both nodes in deep idle
    t0 = time.perf_counter()
    ctx.send(peer, 1, "after")
    assert ctx.recv(peer, 2).data == "after"
    return time.perf_counter() - t0


def pair(vm) -> None:
    host0 = vm.nodes[0].host
    first: dict = {}
    for n in vm.nodes[1:]:
        if n.host != host0:
            first.setdefault(n.host, n.rank)
    a, b = list(first.values())[:2]
    [peer] = vm.spawn(answer, a, where=b)
    [pinger] = vm.spawn(ping, peer, where=a)
    rt = vm.join(pinger, timeout=60)
    before, after = vm.join(peer, timeout=60)
    said = "none" if before is None else ("yes" if after > before else "no")
    print(f"pair rung={said} round_trip_ms={rt * 1e3:.2f}")


def main(vm) -> None:
    if vm.argv[1:] == ["pair"]:
        pair(vm)
        return
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
