"""Progress lines for long phases (evaluations, importance-sampled bounds, sample scoring, tokenizer training)."""

from __future__ import annotations

import operator
import time
from typing import Callable, Iterable, Iterator, TypeVar

import jax

T = TypeVar("T")

EVERY_S = 10.0  # seconds between two lines of one phase: a phase shorter than this prints nothing


class Progress:
    """Counts the units of one phase and prints `what: done/total units  rate/s  ETA` at most every `every_s`
    seconds (process 0 only). Without a known `total` the line has the count and rate but no ETA."""

    def __init__(self, what: str, total: int | None = None, unit: str = "batches", every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.perf_counter, emit: Callable[[str], None] | None = None):
        self.what, self.total, self.unit, self.every_s, self.clock = what, total, unit, every_s, clock
        self.emit = emit or (lambda line: print(line, flush=True))
        self.done = 0
        self.started = self.last = clock()

    def update(self, units: int = 1) -> None:
        """Adds `units` done; prints a line when `every_s` has passed since the phase began or since the last line."""
        self.done += units
        now = self.clock()
        if now - self.last >= self.every_s and jax.process_index() == 0:
            self.last = now
            self.emit(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = f"  ETA {(self.total - self.done) / max(rate, 1e-9):.0f} s" if self.total else ""
        return f"{self.what}: {count} {self.unit}  {rate:.1f} {self.unit}/s{eta}"


def track(items: Iterable[T], what: str, total: int | None = None, unit: str = "batches", **kwargs) -> Iterator[T]:
    """Yields `items`, counting each one with a `Progress`; `total` defaults to `len(items)` when it has one."""
    total = total if total is not None else (operator.length_hint(items) or None)
    progress = Progress(what, total, unit, **kwargs)
    for item in items:
        yield item
        progress.update()
