"""Log lines that could come by the thousand (one per failing address, one per parked
message): a few at once, then about one a second per key, and the lines left out are
counted in the next one that is written."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    refilled: float
    left_out: int = 0


class QuietLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: float = 5.0,
        per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._logger = logger
        self._burst = burst
        self._per_second = per_second
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}

    def log(self, key: Hashable, level: int, msg: str, *args: object) -> None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.refilled) * self._per_second)
        bucket.refilled = now
        if bucket.tokens < 1:
            bucket.left_out += 1
            return
        bucket.tokens -= 1
        if bucket.left_out:
            msg += " (%d more such lines left out)"
            args = (*args, bucket.left_out)
            bucket.left_out = 0
        self._logger.log(level, msg, *args)
