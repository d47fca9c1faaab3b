"""Per-step statistics of heat2d's parts, shared by benchmarks/apps/heat2d_parts_app.py
(clustervm) and benchmarks/apps/heat2d_mpi4py.py --phases (raw mpi4py)."""
from __future__ import annotations

import statistics


def summary(steps: list[tuple[float, float, float]], names: tuple[str, ...]) -> str:
    """``steps``: per step, the seconds of its first part (and second, 0.0 if it has one
    part) and of the whole step. The medians of each part and of the rest (compute), and
    the whole step's median, mean and 90th percentile, in microseconds, as ``k=v``
    pairs (``names``: the parts')."""
    if len(steps) < 2:
        return "steps=0"
    cols = list(zip(*steps))
    out = [f"{name}_us={statistics.median(col) * 1e6:.1f}" for name, col in zip(names, cols)]
    whole = cols[2]
    rest = [w - a - b for a, b, w in steps]
    out.append(f"compute_us={statistics.median(rest) * 1e6:.1f}")
    out.append(f"step_us={statistics.median(whole) * 1e6:.1f}")
    out.append(f"step_mean_us={statistics.mean(whole) * 1e6:.1f}")
    out.append(f"step_p90_us={statistics.quantiles(whole, n=10)[-1] * 1e6:.1f}")
    return " ".join(out)
