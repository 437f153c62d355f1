"""The runtime's Prometheus metrics: every metric's name, labels and meaning, in one place.

One :class:`Metrics` per runtime process, with its own registry (not the client's global
default: tests run several runtimes in one process), exposed at ``GET /metrics`` on the
ingress port. Labels stay bounded: a function type, a route template, a status, a
cause; never an address id.

Counters and histograms are incremented where the event happens (the dispatcher, the
ingress middleware, the checkpoint hooks, the log's appends), always on the event loop:
they are this module's :class:`CounterFamily` and :class:`HistogramFamily`, whose
children count without a lock (prometheus-client's take one per increment, a
measurable share of a busy runtime's CPU), and which the registry collects like any
other collector: the exposition is prometheus-client's. Values the runtime keeps
anyway (messages waiting in mailboxes, requests in flight, the time of the last
checkpoint, how far the worker has read) are read at scrape time by a collector, so the
hot path pays nothing for them.

A *route* is where a message comes from and which function type it goes to. Its source
is the sending function's type, ``ingress`` (the HTTP ingress: messages and calls) or
``kafka:<ingress id>`` (a Kafka ingress; its records carry it in a header, see
``runtime.envelope``); messages restored from a checkpoint's pending ones without a
caller count as ``ingress`` (the checkpoint does not keep the header).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.log.base import AppendObserver
from runtime.routing import INGRESS_CALLER_TYPE
from statefun.address import Address

FailureKind = Literal["timeout", "call", "protocol", "function", "refused", "unserved"]
"""Why an attempt failed: no complete answer in time; the HTTP call failed; the answer
broke the protocol; the function raised; the runtime refused its result; the endpoint
serves no such function type."""
RollbackCause = Literal["function", "log", "member", "membership", "other"]
"""Why a generation was rolled back: a function failed under policy ``fail`` (or broke
the protocol); the log could not be read or appended to; a member could not begin; the
members of a cluster changed; unknown (a record of an older runtime)."""
ROLLBACK_CAUSES: frozenset[str] = frozenset(get_args(RollbackCause))

INGRESS_SOURCE = "ingress"
"""The source of the routes of messages from outside, through the HTTP ingress."""
KAFKA_SOURCE_PREFIX = "kafka:"
"""Before a Kafka ingress's id, the source of the routes of its records."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROUTE_LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10)
"""Coarser: routes may be many (up to sources times targets), and every one of them is a
histogram; a function type's call latency has the fine buckets."""
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def kafka_source(ingress_id: object) -> str:
    """The route source of a Kafka ingress's records."""
    return f"{KAFKA_SOURCE_PREFIX}{ingress_id}"


def route_source(caller: Address | None, ingress: str | None) -> str:
    """The source of a message's route, from its caller and the Kafka ingress it came from
    (None: not from one)."""
    if caller is None:
        return ingress or INGRESS_SOURCE
    if (
        caller.namespace == INGRESS_CALLER_TYPE.namespace
        and caller.type == INGRESS_CALLER_TYPE.name
    ):
        return INGRESS_SOURCE
    return caller.typename


# --- counting on the event loop ---------------------------------------------------------


class Count:
    """One counter's value (one label set of a :class:`CounterFamily`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Distribution:
    """One histogram's buckets and sum (one label set of a :class:`HistogramFamily`)."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Per bucket, the observations in it alone (the last: above every bound)."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


C = TypeVar("C", Count, Distribution)


class _Family(Collector, Generic[C]):
    """A metric's children by label values, registered as a collector. Counted on the
    event loop only; a scrape from another thread reads a copy (``list`` of a dict or
    a list is one step under the GIL), so it may miss an observation under way, never
    break."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        if not self.labelnames:
            self._children[()] = self._child()
        registry.register(self)

    def labels(self, *values: object) -> C:
        """The child of these label values (made on first use)."""
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes the labels {self.labelnames}, not {key}")
            child = self._children[key] = self._child()
        return child

    def _child(self) -> C:
        raise NotImplementedError

    def _snapshot(self) -> list[tuple[list[str], C]]:
        """Every child with its label values, as of now."""
        return [(list(labels), child) for labels, child in list(self._children.items())]

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class CounterFamily(_Family[Count]):
    """A Prometheus counter (exposed as ``<name>_total``)."""

    def _child(self) -> Count:
        return Count()

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in self._snapshot():
            family.add_metric(labels, child.value)
        return [family]

    def inc(self, amount: float = 1.0) -> None:
        """Count on the counter of no labels."""
        self._children[()].inc(amount)


class HistogramFamily(_Family[Distribution]):
    """A Prometheus histogram (``<name>_bucket``, ``_count``, ``_sum``)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry,
        buckets: tuple[float, ...],
    ) -> None:
        self.buckets = tuple(sorted(buckets))
        self._les: list[str] = [floatToGoString(b) for b in self.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry=registry)

    def _child(self) -> Distribution:
        return Distribution(self.buckets)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in self._snapshot():
            counts, total = list(child.counts), child.sum
            cumulative, running = [], 0
            for le, n in zip(self._les, counts, strict=True):
                running += n
                cumulative.append((le, float(running)))
            family.add_metric(labels, cumulative, total)
        return [family]

    def observe(self, value: float) -> None:
        """Observe on the histogram of no labels."""
        self._children[()].observe(value)


EgressCounter = Count
"""An egress's published counter, labelled."""


@dataclass(frozen=True, slots=True)
class FunctionTypeLoad:
    """What a function type has under way now, read at scrape time."""

    function_type: str
    requests_in_flight: int
    backlog: int
    """Messages read for its addresses and waiting in memory for their turn."""


@dataclass(slots=True)
class FunctionTypeMeters:
    """One function type's counters and histograms, labelled once (the dispatcher keeps
    it with the type, so counting costs no label lookup)."""

    invocations: Count
    batches: Count
    batch_size: Distribution
    call_latency: Distribution
    retries: Count
    dead_letters: Count
    _failures: CounterFamily
    _label: str
    _by_kind: dict[str, Count] = field(default_factory=dict)

    def failed(self, kind: FailureKind) -> None:
        counter = self._by_kind.get(kind)
        if counter is None:
            counter = self._by_kind[kind] = self._failures.labels(self._label, kind)
        counter.inc()


@dataclass(frozen=True, slots=True)
class RouteCallMeters:
    """One route's calls, labelled once: per message delivered to the target, the outcome
    of its attempt and the time from sending its batch to the batch's result."""

    succeeded: Count
    failed: Count
    latency: Distribution


class Metrics:
    """Every metric of one runtime process, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        per_type = ["function_type"]
        self.invocations = CounterFamily(
            "statefun_function_invocations",
            "Messages sent to a function, counting every attempt (a retry, or the batch sent "
            "again with the states the function declared).",
            per_type,
            registry=r,
        )
        self.batches = CounterFamily(
            "statefun_function_batches",
            "Batches (one address's messages in one request) sent to a function.",
            per_type,
            registry=r,
        )
        self.batch_size = HistogramFamily(
            "statefun_function_batch_size_messages",
            "Messages per batch sent to a function.",
            per_type,
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.call_latency = HistogramFamily(
            "statefun_function_call_latency_seconds",
            "Time from sending a request to a function endpoint to its complete answer, "
            "or its failure.",
            per_type,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.failures = CounterFamily(
            "statefun_function_failures",
            "Failed attempts per address, by kind.",
            ["function_type", "kind"],
            registry=r,
        )
        self.retries = CounterFamily(
            "statefun_function_retries",
            "Attempts sent again after a failure.",
            per_type,
            registry=r,
        )
        self.dead_letters = CounterFamily(
            "statefun_function_dead_letters",
            "Messages to a function given up and parked in the dead letters.",
            per_type,
            registry=r,
        )
        self.route_messages = CounterFamily(
            "statefun_route_messages",
            "Messages sent along a route: from a function type (as its result is applied; "
            "a replay after a rollback counts again) or from the HTTP ingress, to a "
            "function type.",
            ["source", "target"],
            registry=r,
        )
        self.route_calls = CounterFamily(
            "statefun_route_calls",
            "Messages of a route delivered to their function, per attempt, by outcome: "
            "success (the result was applied) or failure (the attempt failed; see "
            "statefun_function_failures_total). An answer asking for state specs is neither: "
            "the batch goes again.",
            ["source", "target", "outcome"],
            registry=r,
        )
        self.route_call_latency = HistogramFamily(
            "statefun_route_call_seconds",
            "Per message of a route delivered to its function, the time from sending its "
            "batch to the batch's result.",
            ["source", "target"],
            buckets=ROUTE_LATENCY_BUCKETS,
            registry=r,
        )
        self.log_append = HistogramFamily(
            "statefun_log_append_seconds",
            "Time from an append to the log until its records are durable, by kind of topic "
            "(runtime.routing.TOPIC_KINDS, or other); failed appends are not observed.",
            ["topic_kind"],
            buckets=APPEND_BUCKETS,
            registry=r,
        )
        self.egress_published = CounterFamily(
            "statefun_egress_published",
            "Records out to an egress (exactly-once ones once their checkpoint committed; "
            "one published again after a crash counts again).",
            ["egress"],
            registry=r,
        )
        self.ingress_requests = CounterFamily(
            "statefun_ingress_requests",
            "HTTP requests to the ingress, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self._ingress_meters: dict[tuple[str, str, int], tuple[Count, Distribution]] = {}
        self.ingress_latency = HistogramFamily(
            "statefun_ingress_request_latency_seconds",
            "Time to answer an HTTP request to the ingress, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.checkpoint_duration = HistogramFamily(
            "statefun_checkpoint_duration_seconds",
            "Time from a checkpoint's start to its commit.",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoints = CounterFamily(
            "statefun_checkpoints", "Checkpoints committed.", registry=r
        )
        self.checkpoint_bytes = CounterFamily(
            "statefun_checkpoint_size_bytes",
            "Bytes of the committed checkpoints (each writes what changed since the last).",
            registry=r,
        )
        self.checkpoint_addresses = CounterFamily(
            "statefun_checkpoint_changed_addresses",
            "Addresses whose state the committed checkpoints wrote.",
            registry=r,
        )
        self.checkpoints_abandoned = CounterFamily(
            "statefun_checkpoints_abandoned",
            "Checkpoints that did not complete in time (their changes go into the next).",
            registry=r,
        )
        self.rollbacks = CounterFamily(
            "statefun_rollbacks",
            "Generations rolled back to the last completed checkpoint, by cause.",
            ["cause"],
            registry=r,
        )
        self.recovery = HistogramFamily(
            "statefun_recovery_seconds",
            "Time to begin a generation in this process: restore the last completed "
            "checkpoint and resume (at a start, and after every rollback).",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self._load: Callable[[], Iterable[FunctionTypeLoad]] = tuple
        self._last_checkpoint: float | None = None
        self._wall: Callable[[], float] = time.time
        r.register(_Gauges(self))
        self._types: dict[str, FunctionTypeMeters] = {}
        self._routes: dict[tuple[object, object], Count] = {}
        self._route_calls: dict[tuple[str, str], RouteCallMeters] = {}
        self._egresses: dict[object, Count] = {}
        self._pending: Callable[[], Mapping[str, int]] = dict
        self._read_lag: Callable[[], Mapping[int, int]] = dict

    def function_type(self, function_type: str) -> FunctionTypeMeters:
        """The meters of ``function_type`` (one object per type, shared by generations)."""
        meters = self._types.get(function_type)
        if meters is None:
            label = function_type
            meters = self._types[function_type] = FunctionTypeMeters(
                self.invocations.labels(label),
                self.batches.labels(label),
                self.batch_size.labels(label),
                self.call_latency.labels(label),
                self.retries.labels(label),
                self.dead_letters.labels(label),
                self.failures,
                label,
            )
        return meters

    def ingress_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request answered by the ingress: its route template (never the raw path),
        method and status, and how long it took. The labelled children are kept, so a
        request costs two dictionary look-ups."""
        meters = self._ingress_meters.get((route, method, status))
        if meters is None:
            meters = self._ingress_meters[(route, method, status)] = (
                self.ingress_requests.labels(route, method, str(status)),
                self.ingress_latency.labels(route, method),
            )
        meters[0].inc()
        meters[1].observe(seconds)

    def route(self, source: object, target: object) -> Count:
        """The messages counter of the route from ``source`` (a function type, or
        ``INGRESS_SOURCE``) to ``target`` (a function type that an endpoint serves: the
        label set stays bounded), labelled once per route."""
        counter = self._routes.get((source, target))
        if counter is None:
            counter = self._routes[(source, target)] = self.route_messages.labels(
                str(source), str(target)
            )
        return counter

    def route_call(self, source: str, target: str) -> RouteCallMeters:
        """The calls meters of the route from ``source`` (see :func:`route_source`) to
        ``target`` (a function type an endpoint serves)."""
        meters = self._route_calls.get((source, target))
        if meters is None:
            meters = self._route_calls[(source, target)] = RouteCallMeters(
                self.route_calls.labels(source, target, "success"),
                self.route_calls.labels(source, target, "failure"),
                self.route_call_latency.labels(source, target),
            )
        return meters

    def log_appends(self, kind_of: Callable[[str], str]) -> AppendObserver:
        """An observer for ``Log.observe_appends`` timing every append until its records
        are durable, by the kind of its topic (``kind_of``: a few kinds)."""
        by_topic: dict[str, Distribution] = {}

        def observe(topic: str, asked: float, future: asyncio.Future[list[int]]) -> None:
            child = by_topic.get(topic)
            if child is None:
                child = by_topic[topic] = self.log_append.labels(kind_of(topic))

            def durable(done: asyncio.Future[list[int]]) -> None:
                if not done.cancelled() and done.exception() is None:
                    child.observe(time.perf_counter() - asked)

            future.add_done_callback(durable)

        return observe

    def watch_read_lag(self, lag: Callable[[], Mapping[int, int]]) -> None:
        """Read, at scrape time, per messages partition the worker reads, how many records
        it has still to read (the end it knows minus its read position)."""
        self._read_lag = lag

    def egress(self, egress: object) -> EgressCounter:
        """The published counter of ``egress`` (an egress id the module declares)."""
        counter = self._egresses.get(egress)
        if counter is None:
            counter = self._egresses[egress] = self.egress_published.labels(str(egress))
        return counter

    def watch_pending(self, pending: Callable[[], Mapping[str, int]]) -> None:
        """Read the egress records held for a commit, per egress, at scrape time."""
        self._pending = pending

    def watch_load(self, load: Callable[[], Iterable[FunctionTypeLoad]]) -> None:
        """Read the function types' load from ``load`` at scrape time."""
        self._load = load

    def load(self) -> Iterable[FunctionTypeLoad]:
        """Every function type's load now (what the gauges show)."""
        return self._load()

    def checkpoint_committed(self, duration_ms: int, size_bytes: int, addresses: int) -> None:
        self.checkpoints.inc()
        self.checkpoint_duration.observe(duration_ms / 1000)
        self.checkpoint_bytes.inc(size_bytes)
        self.checkpoint_addresses.inc(addresses)
        self._last_checkpoint = self._wall()

    def checkpoint_abandoned(self) -> None:
        self.checkpoints_abandoned.inc()

    def rolled_back(self, cause: str) -> None:
        """One rollback; a cause not in ``ROLLBACK_CAUSES`` counts as "other" (bounded)."""
        self.rollbacks.labels(cause if cause in ROLLBACK_CAUSES else "other").inc()

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _Gauges(Collector):
    """The gauges read at scrape time."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily(
            "statefun_function_requests_in_flight",
            "Requests to a function endpoint carrying batches of the type, not yet answered.",
            labels=["function_type"],
        )
        backlog = GaugeMetricFamily(
            "statefun_function_backlog_messages",
            "Messages read for a function type's addresses, waiting in memory for their turn.",
            labels=["function_type"],
        )
        for load in self._metrics.load():
            in_flight.add_metric([load.function_type], load.requests_in_flight)
            backlog.add_metric([load.function_type], load.backlog)
        yield in_flight
        yield backlog
        pending = GaugeMetricFamily(
            "statefun_egress_pending_records",
            "Exactly-once egress records held until their checkpoint commits and they are out.",
            labels=["egress"],
        )
        for egress, held in sorted(self._metrics._pending().items()):
            pending.add_metric([egress], held)
        yield pending
        lag = GaugeMetricFamily(
            "statefun_log_read_lag_records",
            "Per messages partition this process reads, the records between its read "
            "position and the partition's end as last seen by its consumer.",
            labels=["partition"],
        )
        for partition, behind in sorted(self._metrics._read_lag().items()):
            lag.add_metric([str(partition)], behind)
        yield lag
        last = self._metrics._last_checkpoint
        if last is not None:
            yield GaugeMetricFamily(
                "statefun_checkpoint_last_completed_age_seconds",
                "Seconds since the last checkpoint this process saw commit.",
                value=max(0.0, self._metrics._wall() - last),
            )


class IngressMetrics:
    """ASGI middleware: every request counted by its route template (``/v1/messages/
    {namespace}/{type_}/{id_:path}``, never the raw path: ids stay out of the labels),
    method and status, and timed."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if template != "unmatched" else "other"
            self._metrics.ingress_request(template, method, status, time.perf_counter() - started)
