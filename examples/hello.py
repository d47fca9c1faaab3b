"""Every node says hello: rank, host and pid (run: clustervm run -n 4 examples/hello.py)."""
import os
import socket

import clustervm


def where_am_i() -> tuple:
    ctx = clustervm.context()
    return (ctx.node, ctx.host, os.getpid())


def main(vm):
    print(f"coordinator: rank 0 host {socket.gethostname()} pid {os.getpid()}, "
          f"{vm.workers} worker node(s)")
    futures = [vm.submit(where_am_i, where=n.rank) for n in vm.nodes if n.rank > 0]
    for f in futures:
        rank, host, pid = f.result()
        print(f"hello from node rank {rank} host {host} pid {pid}")
