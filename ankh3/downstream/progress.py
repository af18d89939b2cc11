"""Progress of a long downstream phase: a tqdm bar on a terminal, plain `N/M ... ETA` lines otherwise.

    bar = Progress(total=120, desc="gb1/model probes (3 seeds)")
    for _ in range(120):
        bar.update()
    bar.close()

Without a terminal (a log file, a grid's pipe) a line is printed at the start, at most every
`every_s` seconds, and at the end, so a redirected run shows what it is doing and for how long.
"""
from __future__ import annotations

import sys
import time


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, total: int, desc: str, *, unit: str = "step", every_s: float = 10.0, stream=None,
                 enabled: bool = True, bar: bool | None = None):
        self.total, self.desc, self.unit, self.every_s = max(int(total), 0), desc, unit, every_s
        self.stream = stream or sys.stderr
        self.enabled, self.n = enabled, 0
        self.start = self.last = time.monotonic()
        self.tqdm = None
        if not enabled:
            return
        if bar if bar is not None else self.stream.isatty():
            from tqdm.auto import tqdm

            self.tqdm = tqdm(total=self.total, desc=desc, unit=unit, leave=False, file=self.stream)
        else:
            self.line()

    def update(self, n: int = 1, done: int | None = None) -> None:
        """Advance by `n`, or to `done` when given."""
        if not self.enabled:
            return
        step = (done - self.n) if done is not None else n
        self.n += step
        if self.tqdm is not None:
            self.tqdm.update(step)
        elif time.monotonic() - self.last >= self.every_s and self.n < self.total:
            self.line()

    def line(self) -> None:
        elapsed = time.monotonic() - self.start
        eta = f", ETA {fmt_seconds(elapsed / self.n * (self.total - self.n))}" if 0 < self.n < self.total else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {fmt_seconds(elapsed)}{eta}",
              file=self.stream, flush=True)
        self.last = time.monotonic()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tqdm is not None:
            self.tqdm.close()
        else:
            self.line()
        self.enabled = False
