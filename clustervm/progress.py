"""A live progress bar for ``vm.map``: tqdm on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Tasks done/total, rate, ETA and failures (and nodes lost, from the coordinator)."""

    def __init__(self, total: int, coordinator: Any = None, stream: Any = None) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._c = coordinator
        self._stream = stream or sys.stderr
        self._t0 = time.monotonic()
        self._last = 0.0
        self._bar = None
        if self._stream.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, file=self._stream, unit="task", dynamic_ncols=True)

    def _lost(self) -> int:
        if self._c is None:
            return 0
        return sum(1 for n in self._c.nodes.values() if n.state == "dead")

    def update(self, n: int = 1, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        if self._bar is not None:
            self._bar.update(n)
            if failed or self._lost():
                self._bar.set_postfix(failed=self.failed, nodes_lost=self._lost())
            return
        now = time.monotonic()
        if now - self._last >= 1.0 or self.done >= self.total:
            self._last = now
            print(self.line(), file=self._stream, flush=True)

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self._t0)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta:.0f} s" if eta != float("inf") else "?"
        return (f"progress: {self.done}/{self.total} tasks, {rate:.1f}/s, ETA {eta_s}, "
                f"{self.failed} failed, {self._lost()} node(s) lost")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
