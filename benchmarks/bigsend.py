"""One numpy array of 2.1 GiB (above MPI's 32-bit count) between two tasks.

    python benchmarks/bigsend.py [--gib 2.1] [--no-replay] [--timeout 300]

Runs ``clustervm run -n 3 benchmarks/apps/bigsend_app.py`` once (a coordinator
and two nodes on this host): task to task, one message, checked on arrival.
Prints the size, the time from the send to the whole array received, and GB/s
(1 GB = 10**9 bytes), next to raw mpi4py sending the same bytes between the
same two ranks. Needs about 2 x the array in free memory. Before issue 11
the send failed with MPI_ERR_ARG; it now goes in chunks of
CLUSTERVM_MAX_CHUNK_BYTES (1 GiB by default).
"""
from __future__ import annotations

import argparse
import sys

from _util import clustervm, parse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.1, help="array size in GiB (default 2.1)")
    p.add_argument("--no-replay", action="store_true",
                   help="spawn the sender with replay=False (no copy kept for failover)")
    p.add_argument("--timeout", type=float, default=300.0, help="job timeout, seconds")
    a = p.parse_args()
    rc, out, err, wall = clustervm(3, "benchmarks/apps/bigsend_app.py", str(a.gib),
                                   *(["--no-replay"] if a.no_replay else []), timeout=a.timeout)
    if rc != 0:
        sys.exit(f"bigsend job failed ({rc}):\n{out}\n{err}")
    r = parse(out, "result ")
    nbytes = int(r["bytes"])
    print(f"one numpy array of {nbytes / (1 << 30):.2f} GiB ({nbytes / 1e9:.2f} GB) task to task, "
          f"chunks of {int(r['chunk']) >> 20} MiB")
    print(f"   clustervm send to received: {float(r['seconds']):.2f} s = "
          f"{float(r['gbps']):.2f} GB/s (replay log {'on' if r['replay'] == 'True' else 'off'}); "
          f"arrived intact: {r['ok']}; whole job {wall:.1f} s")
    print(f"   raw mpi4py Send/Recv, 64 MiB pieces: {float(r['raw_seconds']):.2f} s = "
          f"{float(r['raw_gbps']):.2f} GB/s (same ranks, fresh receive buffer)")


if __name__ == "__main__":
    main()
