"""The cost of the runtime's metrics (``runtime.metrics``), four parts (``--part``):

* ``counting``, in process: what one batch sent to a function, one message routed, one
  message's route call and one observed append cost on the hot path;
* ``scrape``, in process: the time of a ``/metrics`` scrape against the number of
  function types;
* ``pipeline``: the pipeline of ``python -m bench`` (embedded log, call and send) with
  the runtime as users run it and with its metrics switched off
  (``bench/_without_metrics.py``), alternated ``--rounds`` times (each first every
  other round): throughput and the runtime's CPU per message, with and without;
* ``console``, in process: the web console's history (``runtime.console.history``): one
  reading of the counters (every 5 s) and what the overview derives from 10 minutes of
  readings, against the number of function types.

    .venv/bin/python -m bench.metrics    (~3 min; --part counting scrape console: ~30 s)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import __main__ as pipeline
from bench._support import format_table, percentile
from runtime.console.history import SPAN, MetricsHistory, read_counters
from runtime.console.pages import RECENT, plots
from runtime.dispatcher import Dispatcher, LoopClock, PendingInvocation
from runtime.metrics import FunctionTypeLoad, Metrics
from runtime.progress import steps
from runtime.routing import TOPIC_KINDS, Topics
from statefun.address import Address, TypeName
from statefun.module_spec import parse_module_spec
from statefun.values import TypedValue

PARTS = ("counting", "scrape", "pipeline", "console")
say = steps("bench.metrics")
"""A line per step on standard error."""
ENDPOINT = """\
kind: io.statefun.endpoints.v2/http
spec: {functions: bench/*, urlPathTemplate: "http://127.0.0.1:1/statefun"}
"""
BATCH = 8
"""Messages per batch in the counting part."""


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
    """Metrics with ``types`` function types, each called, failing, retried and routed,
    appends to every kind of topic and the read lag of 8 partitions."""
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
        for source in ("ingress", names[0]):
            metrics.route(source, name).inc()
            route = metrics.route_call(source, name)
            route.succeeded.inc()
            route.latency.observe(0.002)
    for kind in TOPIC_KINDS:
        metrics.log_append.labels(kind).observe(0.001)
    metrics.watch_load(lambda: [FunctionTypeLoad(name, 1, 10) for name in names])
    metrics.watch_read_lag(lambda: dict.fromkeys(range(8), 3))
    metrics.checkpoint_committed(12, 4096, 100)
    return metrics


async def counting() -> list[list[str]]:
    metrics = Metrics()
    meters = metrics.function_type("bench/counter")

    def batch_sent() -> None:
        # What the dispatcher counts per batch sent and per request answered.
        meters.invocations.inc(BATCH)
        meters.batches.inc()
        meters.batch_size.observe(BATCH)
        meters.call_latency.observe(0.002)

    def routed() -> None:
        metrics.route("bench/first", "bench/second").inc()

    # The dispatcher's own counting of a batch's route calls, on a mailbox of its own.
    dispatcher = Dispatcher(
        parse_module_spec(ENDPOINT),
        None,  # type: ignore[arg-type]  # no host, no invoker: nothing is sent
        None,  # type: ignore[arg-type]
        lambda a: 0,
        clock=LoopClock(),
        metrics=metrics,
    )
    kind = dispatcher._type(TypeName("bench", "second"))
    assert kind is not None
    mailbox = dispatcher._mailbox(Address("bench", "second", "a"), kind)
    caller = Address("bench", "first", "a")
    batch = [PendingInvocation(caller, TypedValue("t/int", b""), (0, i)) for i in range(BATCH)]

    def route_calls() -> None:
        dispatcher._count_routes(mailbox, batch, succeeded=True)

    return [
        [f"one batch of {BATCH} sent and answered", f"{per_call(batch_sent, 100_000):.2f}"],
        ["one message routed", f"{per_call(routed, 100_000):.2f}"],
        [
            f"one message's route call (of a batch of {BATCH})",
            f"{per_call(route_calls, 20_000) / BATCH:.2f}",
        ],
        ["one append observed until durable", f"{await append_observed(metrics, 20_000):.2f}"],
    ]


async def append_observed(metrics: Metrics, n: int) -> float:
    """Microseconds an append's observer adds (its done callback included): ``n``
    futures resolved with and without it, the best of 5 each."""
    observe = metrics.log_appends(Topics("bench").kind_of)
    loop = asyncio.get_running_loop()

    async def run(observed: bool) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                future: asyncio.Future[list[int]] = loop.create_future()
                if observed:
                    observe("bench-messages", started, future)
                future.set_result([0])
            await asyncio.sleep(0)  # the done callbacks run
            best = min(best, time.perf_counter() - started)
        return best

    return (await run(True) - await run(False)) / n * 1e6


def scrape() -> list[list[str]]:
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
    return rows


WITH, WITHOUT = "on", "off"
RUNTIMES = {WITH: "runtime.cli", WITHOUT: "bench._without_metrics"}


def pipelines(args: argparse.Namespace) -> tuple[int, list[list[str]], list[str]]:
    """The pipeline with and without metrics, alternated: (exit status, rows, summary)."""
    options = pipeline.parse_args(
        [
            "--log",
            "embedded",
            "--messages",
            str(args.messages),
            "--addresses",
            str(args.messages // 10),
        ]
    )
    interval = pipeline.DEFAULT_CHECKPOINT_INTERVAL
    results: dict[tuple[str, str], list[pipeline.Row]] = {}
    status = 0
    with tempfile.TemporaryDirectory(prefix="statefun-bench-metrics-") as work:
        for round_ in range(args.rounds):
            # Each goes first every other round: neither gets the warmer machine always.
            order = list(RUNTIMES.items())
            for metrics, module in order if round_ % 2 == 0 else reversed(order):
                say(f"pipeline, round {round_ + 1} of {args.rounds}: metrics {metrics}")
                config = pipeline.RunConfig(
                    interval, pipeline.egress_semantic(interval, None), runtime_module=module
                )
                workdir = Path(work) / f"{metrics}-{round_}"
                run_status, rows = pipeline.run_log("embedded", config, options, workdir, None)
                status = max(status, run_status)
                for row in rows:
                    results.setdefault((row.mode, metrics), []).append(row)
    table = []
    rates: dict[tuple[str, str], float] = {}
    cpu: dict[tuple[str, str], float] = {}
    for (mode, metrics), rows in sorted(results.items()):
        rate = statistics.median(r.workload.messages / r.elapsed for r in rows)
        per_message = statistics.median(r.runtime_cpu / r.workload.messages * 1000 for r in rows)
        rates[mode, metrics], cpu[mode, metrics] = rate, per_message
        table.append(
            [
                mode,
                metrics,
                str(len(rows)),
                " ".join(f"{r.workload.messages / r.elapsed:.0f}" for r in rows),
                f"{rate:.0f}",
                " ".join(f"{r.runtime_cpu / r.workload.messages * 1000:.3f}" for r in rows),
                f"{per_message:.3f}",
            ]
        )
    summary = [
        f"{mode}: metrics cost {100 * (1 - rates[mode, WITH] / rates[mode, WITHOUT]):+.1f}% "
        f"of the throughput, {1000 * (cpu[mode, WITH] - cpu[mode, WITHOUT]):+.0f} us of "
        "runtime CPU per message"
        for mode in sorted({mode for mode, _ in results})
        if (mode, WITH) in rates and (mode, WITHOUT) in rates
    ]
    return status, table, summary


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__)
    parser.add_argument("--part", choices=PARTS, nargs="+", default=list(PARTS))
    parser.add_argument(
        "--rounds", type=int, default=4, help="pipeline runs with and without (default 4)"
    )
    parser.add_argument(
        "--messages", type=int, default=6000, help="per mode of a pipeline run (default 6000)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.messages < 10:
        parser.error("--rounds must be at least 1 and --messages at least 10")
    status = 0
    if "counting" in args.part:
        say("counting on the hot path")
        hot = asyncio.run(counting())
        print(format_table(["counting (hot path)", "µs"], hot), end="\n\n", flush=True)
    if "scrape" in args.part:
        say("scrapes against the number of function types")
        headers = ["function types", "KiB", "scrape p50 ms", "scrape max ms"]
        print(format_table(headers, scrape()), end="\n\n", flush=True)
    if "pipeline" in args.part:
        status, table, summary = pipelines(args)
        headers = [
            "mode",
            "metrics",
            "runs",
            "messages/s",
            "median",
            "runtime cpu ms/msg",
            "median",
        ]
        print(format_table(headers, table, left=2))
        print("\n".join(summary), end="\n\n")
    if "console" in args.part:
        say("the console's history against the number of function types")
        print(console_history())
    return status


if __name__ == "__main__":
    sys.exit(main())
