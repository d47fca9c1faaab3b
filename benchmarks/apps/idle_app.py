"""CPU an idle VM burns, two ways.

1. ``idle ... cpu_total=``: every rank's process CPU time over a quiet interval, read
   by a task on each node before and after it (so it includes waking each node up
   for that task once, and what the start left to settle).
2. ``idle-steady ... cpu_total=``: the same interval once the VM has settled, read
   from outside the tasks: every thread of every rank process in /proc (schedstat),
   without a task or message of the benchmark's own in it. Only when every rank runs
   on this host (else ``cpu_total=nan``).
"""
import os
import socket
import time


def cpu() -> float:
    return time.process_time()        # this node process, all its threads


def _on_cpu_s(pids: list[int]) -> float:
    """Seconds on CPU so far of every thread of ``pids`` (/proc/PID/task/*/schedstat)."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError):
                continue        # a thread that ended meanwhile
    return total / 1e9


def main(vm) -> None:
    seconds = float(vm.argv[1]) if len(vm.argv) > 1 else 10.0
    ranks = [n.rank for n in vm.nodes if n.rank > 0]
    before = {r: vm.submit(cpu, where=r).result() for r in ranks}
    main0 = time.process_time()
    time.sleep(seconds)
    main1 = time.process_time()
    after = {r: vm.submit(cpu, where=r).result() for r in ranks}
    per = {r: after[r] - before[r] for r in ranks}
    total = sum(per.values()) + (main1 - main0)
    print(f"idle seconds={seconds} cpu_total={total:.4f} coordinator={main1 - main0:.4f} "
          + " ".join(f"node{r}={v:.4f}" for r, v in per.items()), flush=True)

    here = socket.gethostname()
    nodes = [n for n in vm.nodes if n.state in ("coordinator", "alive")]
    steady = float("nan")
    if all(n.host == here for n in nodes) and os.path.isdir("/proc/self/task"):
        pids = [n.pid for n in nodes]
        time.sleep(1.0)                  # the round trips above settle
        a = _on_cpu_s(pids)
        time.sleep(seconds)
        steady = _on_cpu_s(pids) - a
    print(f"idle-steady seconds={seconds} cpu_total={steady:.4f} ranks={len(nodes)}",
          flush=True)
