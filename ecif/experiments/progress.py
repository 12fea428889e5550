"""Sparse progress lines for long loops (refits, cells): ``refit 12/40``, not a bar per step.

A :class:`Progress` prints a line each time the count crosses the next tenth of the total (and
at the end), so a loop of 40 refits or of 4,000 prints about ten lines. Where the stream is a
terminal it adds the elapsed time and an ETA, and also prints every ``every_s`` seconds when
the steps are slow. Elsewhere (an executed notebook, a log file) it prints **counts only**: an
executed notebook is a stage output, and a rerun with the same numbers must leave it
byte-identical (wall-clock times live only in the metrics' ``time`` groups).

The lines depend only on the count, never on the order in which steps complete, so the same
lines come out of a serial loop and of Dask tasks finishing in any order.
"""

from __future__ import annotations

import math
import sys
import time

__all__ = ["Progress"]


class Progress:
    """Counts ``step()`` calls up to ``total`` and prints ``<label> i/total`` now and then.

    ``stream``: where lines go (default ``sys.stderr`` at construction time); ``timings``:
    add elapsed time and ETA (default: only if ``stream`` is a terminal); ``fraction``: the
    cadence as a fraction of ``total``; ``every_s``: with timings, also print when that long
    has passed since the last line; ``enabled=False`` prints nothing.
    """

    def __init__(self, total: int, label: str = "refit", *, stream=None, timings: bool | None = None,
                 fraction: float = 0.1, every_s: float = 30.0, enabled: bool = True):
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}.")
        self.total, self.label, self.enabled = int(total), label, bool(enabled)
        self.stream = sys.stderr if stream is None else stream
        if timings is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                timings = bool(isatty()) if callable(isatty) else False
            except (ValueError, OSError):  # a closed stream
                timings = False
        self.timings, self.every_s = bool(timings), float(every_s)
        self.stride = max(1, math.ceil(self.total * fraction))
        self.count = 0
        self.start = self._last = time.perf_counter()
        self.lines: list[str] = []  # what was printed, for tests and callers

    def step(self, n: int = 1) -> None:
        before, self.count = self.count, min(self.total, self.count + n)
        now = time.perf_counter()
        crossed = self.count // self.stride > before // self.stride or self.count == self.total
        slow = self.timings and now - self._last >= self.every_s
        if self.count > before and (crossed or slow):
            self._print(now)

    def _print(self, now: float) -> None:
        self._last = now
        line = f"{self.label} {self.count}/{self.total}"
        if self.timings:
            elapsed = now - self.start
            eta = elapsed / self.count * (self.total - self.count) if self.count else float("nan")
            line += f", {elapsed:.1f} s elapsed, ETA {eta:.1f} s"
        self.lines.append(line)
        if self.enabled:
            print(line, file=self.stream, flush=True)
