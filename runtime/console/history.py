"""The recent history of a runtime's function-type metrics, for the console's figures
and plots: per function type, its rate, error rate and p50/p99 call latency over each
interval of the last minutes.

Prometheus keeps history by scraping; a runtime alone has nobody scraping it, so the
console keeps a little of its own. A :class:`MetricsHistory` (one per runtime, one
sampling task) reads the process's counters and call-latency histogram buckets every
few seconds (:func:`read_counters`) into a bounded ring (10 minutes by default), and
derives what changed between two readings (:class:`Interval`). The quantiles come from
the bucket deltas the way Prometheus' ``histogram_quantile`` computes them: linear
interpolation inside the bucket holding the rank, the highest finite bound when the
rank falls in ``+Inf``.

The clock is injected (``time.monotonic`` by default), and so is what is read: tests
feed counter values by hand and expect exact numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from runtime.metrics import CounterFamily, HistogramFamily, Metrics

SAMPLE_EVERY = 5.0
"""Seconds between two readings of the counters."""
SPAN = 600.0
"""Seconds of history kept (the ring holds ``SPAN / SAMPLE_EVERY`` intervals)."""


@dataclass(frozen=True, slots=True)
class TypeCounters:
    """One function type's cumulative counters at one instant."""

    invocations: float
    """Messages sent to the function, every attempt."""
    attempts: float
    """Batches sent (one address's messages in one request): what fails or succeeds."""
    failures: float
    """Failed attempts, of every kind."""
    dead_letters: float
    """Messages given up and parked."""
    latency: tuple[tuple[float, float], ...]
    """The call-latency histogram: (upper bound, cumulative count), ascending, ``inf`` last."""

    def minus(self, before: TypeCounters | None) -> TypeCounters:
        """What was counted since ``before`` (None: since nothing was)."""
        if before is None:
            return self
        latency = self.latency
        if before.latency:  # the same histogram's buckets, bound by bound
            latency = tuple(
                (le, n - b) for (le, n), (_, b) in zip(self.latency, before.latency, strict=True)
            )
        return TypeCounters(
            self.invocations - before.invocations,
            self.attempts - before.attempts,
            self.failures - before.failures,
            self.dead_letters - before.dead_letters,
            latency,
        )


NOTHING = TypeCounters(0.0, 0.0, 0.0, 0.0, ())
"""The counters of a function type not counted yet."""
Reading = tuple[float, Mapping[str, TypeCounters]]
"""The clock's time and every function type's counters then."""


def _totals(counter: CounterFamily) -> dict[str, float]:
    """A counter's values summed per function type (over its other labels)."""
    totals: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                function_type = sample.labels["function_type"]
                totals[function_type] = totals.get(function_type, 0.0) + sample.value
    return totals


def _buckets(histogram: HistogramFamily) -> dict[str, list[tuple[float, float]]]:
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])  # "+Inf" parses as inf
                buckets.setdefault(sample.labels["function_type"], []).append((bound, sample.value))
    return buckets


def read_counters(metrics: Metrics) -> dict[str, TypeCounters]:
    """Every function type's counters now, from the process's metrics."""
    invocations = _totals(metrics.invocations)
    attempts = _totals(metrics.batches)
    failures = _totals(metrics.failures)
    dead_letters = _totals(metrics.dead_letters)
    latency = _buckets(metrics.call_latency)
    return {
        function_type: TypeCounters(
            invocations.get(function_type, 0.0),
            attempts.get(function_type, 0.0),
            failures.get(function_type, 0.0),
            dead_letters.get(function_type, 0.0),
            tuple(sorted(latency.get(function_type, ()))),
        )
        for function_type in sorted(invocations.keys() | failures.keys() | latency.keys())
    }


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q``-quantile (0 < q < 1) of a histogram given as cumulative (upper bound,
    count) pairs, ascending, ``inf`` last, as Prometheus' ``histogram_quantile``
    estimates it; None if it counted nothing."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    below_bound, below_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return below_bound  # the highest finite bound: nothing better is known
            return below_bound + (bound - below_bound) * (rank - below_count) / (
                count - below_count
            )
        below_bound, below_count = bound, count
    return below_bound


@dataclass(frozen=True, slots=True)
class Interval:
    """What one function type did between two readings."""

    end: float
    """The clock's time at the later reading."""
    seconds: float
    counted: TypeCounters
    """The counts of the interval (not cumulative over time; the buckets still are
    cumulative over bounds)."""

    @property
    def rate(self) -> float:
        """Messages sent to the function per second."""
        return self.counted.invocations / self.seconds

    @property
    def error_rate(self) -> float | None:
        """The share of attempts that failed; None if none was made."""
        if self.counted.attempts <= 0:
            return None
        return self.counted.failures / self.counted.attempts

    def latency(self, q: float) -> float | None:
        """The ``q``-quantile of the call latency, in seconds; None if no call ended."""
        return histogram_quantile(q, self.counted.latency)


class MetricsHistory:
    """The last ``span`` seconds of readings, one every ``every`` seconds."""

    def __init__(
        self,
        read: Callable[[], Mapping[str, TypeCounters]],
        *,
        every: float = SAMPLE_EVERY,
        span: float = SPAN,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every = every
        self.span = span
        self._read = read
        self._clock = clock
        slots = round(span / every)
        self._readings: deque[Reading] = deque(maxlen=slots + 1)
        self._intervals: deque[tuple[float, float, dict[str, TypeCounters]]] = deque(maxlen=slots)
        """Per interval between consecutive readings: its end, its length, and what each
        function type counted in it (derived once, as the later reading is taken)."""
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, metrics: Metrics) -> MetricsHistory:
        """The history of a process's metrics."""
        return cls(lambda: read_counters(metrics))

    def sample(self) -> None:
        """Read the counters now."""
        self._record((self._clock(), self._read()))

    def _record(self, reading: Reading) -> None:
        if self._readings:
            before = self._readings[-1]
            self._intervals.append(
                (
                    reading[0],
                    reading[0] - before[0],
                    {t: c.minus(before[1].get(t)) for t, c in reading[1].items()},
                )
            )
        self._readings.append(reading)

    def function_types(self) -> list[str]:
        """The function types the last reading knows."""
        return sorted(self._readings[-1][1]) if self._readings else []

    def latest(self, function_type: str) -> TypeCounters | None:
        """The counters of ``function_type`` at the last reading."""
        return self._readings[-1][1].get(function_type) if self._readings else None

    def intervals(self, function_type: str) -> list[Interval]:
        """Every interval between two consecutive readings kept, oldest first."""
        return [
            Interval(end, seconds, counted.get(function_type, NOTHING))
            for end, seconds, counted in self._intervals
        ]

    def recent(self, function_type: str, seconds: float) -> Interval | None:
        """One interval: from the oldest reading at most ``seconds`` before the last one
        to the last one; None until there are two readings."""
        if len(self._readings) < 2:
            return None
        last = self._readings[-1]
        first = next(r for r in self._readings if r[0] >= last[0] - seconds)
        if first is last:
            first = self._readings[-2]
        return self._between(function_type, first, last)

    @staticmethod
    def _between(function_type: str, before: Reading, after: Reading) -> Interval:
        earlier = before[1].get(function_type)
        now = after[1].get(function_type, earlier or NOTHING)
        return Interval(after[0], after[0] - before[0], now.minus(earlier))

    def start(self) -> None:
        """Read now, then every ``every`` seconds until :meth:`stop` (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._sample_forever(), name="metrics-history")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample_forever(self) -> None:
        while True:
            # Read on a thread (the client's metrics are thread-safe): with hundreds of
            # function types a reading takes milliseconds the event loop need not wait.
            at = self._clock()
            self._record((at, await asyncio.to_thread(self._read)))
            await asyncio.sleep(max(0.0, self.every - (self._clock() - at)))
