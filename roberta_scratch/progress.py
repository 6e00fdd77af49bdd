"""Progress for long work: a tqdm bar on a terminal, a readable line every few seconds elsewhere.

A bar redraws itself with carriage returns, which is right on a terminal and wrong in a log
file or CI (a demo's log was 380 KB of them). `progress()` gives the bar when stderr is a
terminal and otherwise prints lines like

    pretraining: 1,200/4,000 steps (30%), 21.4 steps/s, 2m11s left, loss=4.123, lr=9.80e-04

every ROBERTA_SCRATCH_PROGRESS_SECONDS seconds (default 10), and a last one when it closes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    initial: int = 0,
):
    """A tqdm bar (on a terminal) or a LineProgress (anywhere else), with the same methods used here:
    iteration, update(n), set_postfix(**values), close()."""
    if disable or sys.stderr.isatty():
        # imported here: tqdm.auto brings asyncio and importlib.metadata, 40 ms of every command
        # that shows no bar (prepare's whole command is 2-5 s)
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=" " + unit.strip(), disable=disable, initial=initial)
    every = float(os.environ.get("ROBERTA_SCRATCH_PROGRESS_SECONDS", "10"))
    return LineProgress(iterable, total=total, desc=desc, unit=unit.strip(), initial=initial, every=every)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
        if seconds >= 60
        else f"{seconds}s"
    )


class LineProgress:
    """Counts like tqdm, but prints one plain line at most every `every` seconds."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", initial=0, every=10.0, file=None):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.start_n = initial
        self.every, self.file = every, file or sys.stderr
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start_n:
                self._print()

    def _print(self) -> None:
        self.last = now = time.monotonic()
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        done = f"{self.n:,}/{self.total:,} {self.unit}" if self.total else f"{self.n:,} {self.unit}"
        one = self.unit[:-1] if self.unit.endswith("s") and len(self.unit) > 2 else self.unit  # "steps" -> "step"
        speed = f"{rate:,.1f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:,.1f} s/{one}"  # as tqdm
        parts = [done + (f" ({self.n / self.total:.0%})" if self.total else ""), speed]
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        print(f"{self.desc}: " + ", ".join(parts), file=self.file, flush=True)
