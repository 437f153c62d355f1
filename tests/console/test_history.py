"""The console's metrics history: readings at an injected clock, fed by hand, and the
rates, error rates and quantiles derived from them, exactly."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping

import pytest

from runtime.console.history import (
    MetricsHistory,
    TypeCounters,
    histogram_quantile,
    read_counters,
)
from runtime.metrics import LATENCY_BUCKETS, Metrics

INF = math.inf


def test_quantiles_interpolate_inside_the_bucket_holding_the_rank() -> None:
    buckets = [(0.001, 0.0), (0.005, 10.0), (0.01, 20.0), (INF, 20.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.005)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.003)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.0099)
    # The first bucket starts at 0.
    assert histogram_quantile(0.5, [(0.1, 4.0), (INF, 4.0)]) == pytest.approx(0.05)


def test_a_rank_in_the_infinite_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.5, [(0.1, 1.0), (1.0, 1.0), (INF, 10.0)]) == 1.0


def test_nothing_counted_has_no_quantile() -> None:
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None


def counters(
    invocations: float,
    attempts: float,
    failures: float,
    dead_letters: float,
    fast: float,
    slow: float,
) -> TypeCounters:
    """Counters with ``fast`` calls under 10 ms and ``slow`` more under 100 ms."""
    return TypeCounters(
        invocations,
        attempts,
        failures,
        dead_letters,
        ((0.01, fast), (0.1, fast + slow), (INF, fast + slow)),
    )


class Feed:
    """The readings a test hands the history, at the times it says."""

    def __init__(self) -> None:
        self.now = 0.0
        self.next: Mapping[str, TypeCounters] = {}

    def clock(self) -> float:
        return self.now

    def read(self) -> Mapping[str, TypeCounters]:
        return self.next

    def at(self, now: float, readings: Mapping[str, TypeCounters], history: MetricsHistory) -> None:
        self.now, self.next = now, readings
        history.sample()


@pytest.fixture
def feed() -> Feed:
    return Feed()


@pytest.fixture
def history(feed: Feed) -> MetricsHistory:
    return MetricsHistory(feed.read, every=5.0, span=600.0, clock=feed.clock)


def test_each_interval_has_its_rate_error_rate_and_latencies(
    feed: Feed, history: MetricsHistory
) -> None:
    feed.at(100.0, {"a/b": counters(0, 0, 0, 0, 0, 0)}, history)
    feed.at(105.0, {"a/b": counters(50, 40, 4, 1, 30, 10)}, history)
    feed.at(110.0, {"a/b": counters(60, 50, 4, 1, 30, 20)}, history)

    first, second = history.intervals("a/b")
    assert (first.end, first.seconds) == (105.0, 5.0)
    assert first.rate == 10.0
    assert first.error_rate == 0.1
    assert first.counted.dead_letters == 1
    # p50: rank 20 of 40, in the first bucket (30 calls under 10 ms).
    assert first.latency(0.5) == pytest.approx(0.01 * 20 / 30)
    # p99: rank 39.6, the 9.6th of the 10 calls between 10 and 100 ms.
    assert first.latency(0.99) == pytest.approx(0.01 + 0.09 * 9.6 / 10)

    assert second.rate == 2.0
    assert second.error_rate == 0.0
    assert second.counted.dead_letters == 0
    # Only the 10 slower calls in this interval: the buckets' deltas.
    assert second.latency(0.5) == pytest.approx(0.01 + 0.09 * 5 / 10)


def test_recent_spans_the_readings_within_its_window(feed: Feed, history: MetricsHistory) -> None:
    assert history.recent("a/b", 60) is None  # nothing read yet
    feed.at(100.0, {"a/b": counters(0, 0, 0, 0, 0, 0)}, history)
    assert history.recent("a/b", 60) is None  # one reading: no interval
    feed.at(105.0, {"a/b": counters(50, 40, 4, 1, 30, 10)}, history)
    feed.at(110.0, {"a/b": counters(60, 50, 4, 1, 30, 20)}, history)

    minute = history.recent("a/b", 60)
    assert minute is not None
    assert (minute.seconds, minute.rate, minute.error_rate) == (10.0, 6.0, 4 / 50)
    last = history.recent("a/b", 5)
    assert last is not None
    assert (last.seconds, last.rate) == (5.0, 2.0)
    # A window shorter than one interval still spans the last one.
    assert history.recent("a/b", 1) == last


def test_a_type_first_counted_later_did_nothing_before(feed: Feed, history: MetricsHistory) -> None:
    feed.at(0.0, {}, history)
    feed.at(5.0, {}, history)
    feed.at(10.0, {"c/d": counters(20, 20, 0, 0, 20, 0)}, history)

    before, after = history.intervals("c/d")
    assert (before.rate, before.error_rate, before.latency(0.5)) == (0.0, None, None)
    assert (after.rate, after.error_rate) == (4.0, 0.0)
    assert history.function_types() == ["c/d"]
    assert history.latest("c/d") == counters(20, 20, 0, 0, 20, 0)


def test_the_ring_keeps_only_its_span(feed: Feed) -> None:
    history = MetricsHistory(feed.read, every=5.0, span=10.0, clock=feed.clock)
    for i in range(5):
        feed.at(5.0 * i, {"a/b": counters(10 * i, 10 * i, 0, 0, 10 * i, 0)}, history)
    assert [i.end for i in history.intervals("a/b")] == [15.0, 20.0]


def test_counters_are_read_from_the_metrics() -> None:
    metrics = Metrics()
    meters = metrics.function_type("a/b")
    meters.invocations.inc(3)
    meters.batches.inc(2)
    meters.failed("call")
    meters.failed("function")
    meters.dead_letters.inc()
    meters.call_latency.observe(0.003)
    metrics.function_type("e/f")  # labelled, never used

    read = read_counters(metrics)
    assert sorted(read) == ["a/b", "e/f"]
    a = read["a/b"]
    assert (a.invocations, a.attempts, a.failures, a.dead_letters) == (3, 2, 2, 1)
    assert [bound for bound, _ in a.latency] == [*LATENCY_BUCKETS, INF]
    assert dict(a.latency)[0.0025] == 0
    assert dict(a.latency)[0.005] == 1
    assert dict(a.latency)[INF] == 1
    assert read["e/f"].invocations == 0


@pytest.mark.anyio
async def test_the_sampler_reads_at_once_and_stops(feed: Feed) -> None:
    read = asyncio.Event()
    loop = asyncio.get_running_loop()

    def reading() -> Mapping[str, TypeCounters]:  # on a thread of its own
        loop.call_soon_threadsafe(read.set)
        return {"a/b": counters(1, 1, 0, 0, 1, 0)}

    history = MetricsHistory(reading, every=3600.0, clock=feed.clock)
    history.start()
    try:
        async with asyncio.timeout(5):
            await read.wait()
            while not history.function_types():  # noqa: ASYNC110 - recorded back on the loop, no event
                await asyncio.sleep(0)
    finally:
        await history.stop()
    assert history.function_types() == ["a/b"]
