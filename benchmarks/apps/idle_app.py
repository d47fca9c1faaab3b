"""CPU an idle VM burns: every rank's process CPU time over a quiet interval."""
import time


def cpu() -> float:
    return time.process_time()        # this node process, all its threads


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
          + " ".join(f"node{r}={v:.4f}" for r, v in per.items()))
