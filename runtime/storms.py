"""Message storms: functions sending to a function type faster than anyone meant.

A function sending to itself forever, or fanning out on every message, fills the log at
thousands of records a second and nothing fails to say so. :class:`StormWatch` counts the
messages functions send per target type and logs a warning naming the type and its rate
when the rate over a window is above the threshold, at most once a minute per type. The
remedy (pausing the type) is the operator's: the warning says how. Replies to the
ingress's callers are not counted: they answer calls from outside, one per call, paced
by the callers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from runtime.routing import INGRESS_CALLER_TYPE
from statefun.address import TypeName

log = logging.getLogger(__name__)

WINDOW = 10.0
"""Seconds over which a rate is measured."""
QUIET = 60.0
"""Seconds between two warnings about one function type."""


class StormWatch:
    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic):
        self._rate = rate
        self._clock = clock
        self._counts: Counter[TypeName] = Counter()
        self._window_start = clock()
        self._warned: dict[TypeName, float] = {}
        self.storms: Counter[TypeName] = Counter()
        """Warnings given, per type."""

    def count(self, function_type: TypeName) -> None:
        """A function sent a message to ``function_type``."""
        if self._rate <= 0 or function_type == INGRESS_CALLER_TYPE:
            return
        self._counts[function_type] += 1
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW:
            return
        for name, sent in self._counts.items():
            rate = sent / elapsed
            if rate > self._rate and now - self._warned.get(name, -QUIET) >= QUIET:
                self._warned[name] = now
                self.storms[name] += 1
                log.warning(
                    "message storm: functions sent %.0f messages/s to %s over the last %.0f s "
                    "(warning above %g/s); `statefun pause %s` stops it, nothing is lost",
                    rate,
                    name,
                    elapsed,
                    self._rate,
                    name,
                )
        self._counts.clear()
        self._window_start = now
