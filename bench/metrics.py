"""The cost of the runtime's metrics (``runtime.metrics``), in-process: the counting one
batch sent to a function pays on the hot path, one message routed, and the time of a
``/metrics`` scrape against the number of function types; then the web console's
history (``runtime.console.history``): one reading of the counters (every 5 s, on the
event loop) and what the overview derives from 10 minutes of readings, against the
number of function types.

    .venv/bin/python -m bench.metrics    (~20 s)
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench._support import format_table, percentile
from runtime.console.history import SPAN, MetricsHistory, read_counters
from runtime.console.pages import RECENT, plots
from runtime.metrics import FunctionTypeLoad, Metrics


def per_call(fn: Callable[[], None], n: int) -> float:
    """Microseconds per call of ``fn``, the best of 5 runs of ``n``."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def populated(types: int) -> Metrics:
    """Metrics with ``types`` function types, each called, failing, retried and routed."""
    metrics = Metrics()
    names = [f"bench/type{i}" for i in range(types)]
    for name in names:
        meters = metrics.function_type(name)
        for size in (1, 8, 64):
            meters.invocations.inc(size)
            meters.batches.inc()
            meters.batch_size.observe(size)
            meters.call_latency.observe(size / 1000)
        meters.failed("timeout")
        meters.failed("function")
        meters.retries.inc()
        metrics.route("ingress", name).inc()
        metrics.route(name, names[0]).inc()
    metrics.watch_load(lambda: [FunctionTypeLoad(name, 1, 10) for name in names])
    metrics.checkpoint_committed(12, 4096, 100)
    return metrics


def main() -> None:
    metrics = Metrics()
    meters = metrics.function_type("bench/counter")

    def batch_sent() -> None:
        # What the dispatcher counts per batch sent and per request answered.
        meters.invocations.inc(8)
        meters.batches.inc()
        meters.batch_size.observe(8)
        meters.call_latency.observe(0.002)

    def routed() -> None:
        metrics.route("bench/first", "bench/second").inc()

    hot = [
        ["one batch sent and answered", f"{per_call(batch_sent, 100_000):.2f}"],
        ["one message routed", f"{per_call(routed, 100_000):.2f}"],
    ]
    print(format_table(["counting (hot path)", "µs"], hot))
    print()
    rows = []
    for types in (1, 10, 100, 1000):
        populated_metrics = populated(types)
        timings = []
        for _ in range(30):  # 30 scrapes each
            started = time.perf_counter()
            body = populated_metrics.exposition()
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        rows.append(
            [
                str(types),
                f"{len(body) / 1024:.0f}",
                f"{percentile(timings, 50):.2f}",
                f"{timings[-1]:.2f}",
            ]
        )
    print(format_table(["function types", "KiB", "scrape p50 ms", "scrape max ms"], rows))
    print()
    print(console_history())


def full_history(metrics: Metrics) -> tuple[MetricsHistory, list[float]]:
    """A ring of 10 minutes of readings of ``metrics``, and each reading's time in ms,
    sorted."""
    now = 0.0
    history = MetricsHistory(lambda: read_counters(metrics), clock=lambda: now)
    readings = []
    for i in range(round(SPAN / history.every) + 1):
        now = i * history.every
        started = time.perf_counter()
        history.sample()
        readings.append((time.perf_counter() - started) * 1000)
    return history, sorted(readings)


def console_history() -> str:
    """The console's cost per reading and per overview, by the number of function types."""
    rows = []
    for types in (1, 10, 100, 1000):
        history, readings = full_history(populated(types))
        started = time.perf_counter()
        for function_type in history.function_types():
            recent = history.recent(function_type, RECENT)
            assert recent is not None
            recent.latency(0.5)
            recent.latency(0.99)
            plots(history, function_type)
        overview = (time.perf_counter() - started) * 1000
        rows.append(
            [
                str(types),
                f"{percentile(readings, 50):.2f}",
                f"{readings[-1]:.2f}",
                f"{overview:.1f}",
            ]
        )
    return format_table(
        ["function types", "reading p50 ms", "reading max ms", "overview figures ms"], rows
    )


if __name__ == "__main__":
    main()
