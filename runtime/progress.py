"""Progress of long work, told while it lasts: the one way the runtime's restores and the
benchmarks say how far they got.

A :class:`Progress` counts work of a known size done piece by piece and reports a line
(``what: done of total unit (percent) after N s``) every ``interval`` seconds while it
lasts; work that ends within the first interval says nothing, so short restores stay
quiet. Where the lines go is a *report* function: a logger's (:func:`logged`, the
runtime) or standard error with the time since a run began (:func:`steps`, the
benchmarks, which also report each step as it begins).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

Report = Callable[[str], None]
"""Where a line of progress goes."""

INTERVAL = 5.0
"""Seconds between two lines of one piece of work."""


class Progress:
    """``total`` pieces of ``what`` to do (``unit``: what a piece is)."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        report: Report,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``interval``: seconds between lines (None: ``INTERVAL``)."""
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self._report = report
        self._interval = INTERVAL if interval is None else interval
        self._clock = clock
        self._started = clock()
        self._next = self._started + self._interval
        self.reported = 0
        """Lines reported so far."""

    def advance(self, pieces: int = 1) -> None:
        """``pieces`` more are done; a line if the interval since the last one is over."""
        self.done += pieces
        now = self._clock()
        if now >= self._next:
            self._next = now + self._interval
            self._line(now, "")

    def finish(self) -> None:
        """The work is over: a last line if it said anything before (else it was short)."""
        if self.reported:
            self._line(self._clock(), ", done")

    def _line(self, now: float, suffix: str) -> None:
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        self._report(
            f"{self.what}: {self.done} of {self.total} {self.unit}{share} after "
            f"{now - self._started:.0f} s{suffix}"
        )
        self.reported += 1


def logged(logger: logging.Logger, level: int = logging.INFO) -> Report:
    """A report to ``logger`` at ``level``."""
    return lambda line: logger.log(level, "%s", line)


def steps(program: str, clock: Callable[[], float] = time.monotonic) -> Report:
    """A report on standard error, each line naming ``program`` and the seconds since
    this call: ``program [12.3 s]: line``."""
    started = clock()

    def report(line: str) -> None:
        print(f"{program} [{clock() - started:.1f} s]: {line}", file=sys.stderr, flush=True)

    return report
