"""The checkpoint benchmark: ``python -m bench.checkpoints`` from the repository root.

Owns the measurements of the global checkpoints (``runtime/checkpoints/``) that the
pipeline benchmark (``python -m bench --checkpoint-interval``, throughput) does not:

* ``capture``: the cost of one checkpoint against the number of addresses whose state
  changed since the previous one (1k, 10k, 100k), in process: a ``runtime.app.Runtime``
  on the embedded SQLite log in a temporary directory, its coordinator's timer off
  (``CheckpointConfig(interval=0)``) so only the benchmark checkpoints, each address's
  ``count`` (an ``IntType``) put straight into the worker's ``StateStore`` as applying
  a batch does. Per checkpoint: the whole ``coordinator.checkpoint()``, the synchronous
  capture step (the participants' ``capture()``, which blocks the event loop: the
  pause of processing), the longest stall of the event loop meanwhile (a 1 ms ticker),
  the bytes written and the runtime's own ``duration_ms``; then the same with nothing
  changed (an idle checkpoint: the base cost). Every checkpoint must write exactly the
  addresses changed.
* recovery, in the same part, on the same data: the time from a failure
  (``runtime._failed``, as the worker reports one; ``rollback_backoff=0``, so without
  the backoff) to the new generation's worker running with every address restored,
  and the restore's two halves timed alone (the store's query, decoding into a
  ``StateStore``); a cold restart in process (``stop``, then ``Runtime.open`` and
  ``start`` on the same data directory); and ``statefun run`` as a process on that
  directory until ``GET /health`` answers (its log must say it restored every
  address), against the same on an empty data directory. After every rollback and
  restart every address's ``count`` must be the last one written.
* ``latency``: exactly-once egress and committed-reply latency at checkpoint intervals
  of 1 s and 100 ms, with the runtime (``statefun run --checkpoint-interval``, the
  embedded log) and the bench functions as child processes, as ``python -m bench``
  runs them. Open loop at a fixed rate (each message its own request, sent on schedule
  whatever the answers do), so committed and uncommitted calls see the same load; each
  message goes to an address of its own (``bench/first`` -> ``bench/second`` ->
  ``bench/done`` or the reply). Egress latency: from the 202 of ``POST /v1/messages``
  to the answer of the ``GET /v1/egress/bench/done?wait=1`` (a long poll, from the
  last ``next``) that returns its record; every record must come, once. Call latency:
  ``POST /v1/call``, alternating ``?consistency=committed`` and the default, so both
  kinds share every checkpoint and every moment of load; every answer must be
  ``<id>:1`` with the consistency header asked for. A last run measures egress latency
  with the egress at-least-once (published at once): the pipeline's own latency, the
  baseline of the exactly-once rows.

A wrong result prints ``FAILED:`` and exits with status 1; a benchmark that could not
run, status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.__main__ import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    Processes,
    RunConfig,
    interval_text,
    start_processes,
)
from bench._kafka import HOW_TO_GET_ONE, Broker, find_broker
from bench._support import (
    HOST,
    BenchError,
    Children,
    format_table,
    free_port,
    percentile,
    runtime_command,
    thread_cpu_seconds,
)
from bench.functions import AT_LEAST_ONCE_EGRESS, BOTH_PREFIX, COUNTER, DONE_EGRESS, FIRST
from runtime.app import Runtime, RuntimeConfig
from runtime.checkpoints.coordinator import Capture, CheckpointConfig, Participant
from runtime.dispatcher import Failure
from runtime.progress import steps
from runtime.state import StateStore
from statefun.address import Address
from statefun.module_spec import parse_module_spec
from statefun.protocol import StateMutation
from statefun.values import IntType, to_typed_value

SIZES = [1_000, 10_000, 100_000]
QUICK_SIZES = [1_000, 10_000]
INTERVALS = [1.0, 0.1]
TICK = 0.001
"""Seconds between the ticks that measure the event loop's stalls."""
EGRESS_WAIT = 1.0
"""Seconds each ``GET /v1/egress`` of the latency runs may wait for the next record."""
CHECKPOINTS_POLL_INTERVAL = 0.2
"""Often enough to see every checkpoint at 0.1 s: the runtime lists the newest 3 to 12."""
PROGRESS_TIMEOUT = 60.0
CALL_TIMEOUT = 60.0
TEXT = {"content-type": "text/plain; charset=utf-8"}
say = steps("bench.checkpoints")
"""A line per step on standard error."""
CONSISTENCY_HEADER = "X-Statefun-Consistency"
UNCALLED_MODULE = """\
kind: io.statefun.endpoints.v2/http
spec:
  functions: bench/*
  urlPathTemplate: http://127.0.0.1:9/statefun
"""
"""An endpoint that is never called: the in-process measurements need function types for
their addresses, not functions."""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Failed(Exception):
    """A wrong answer: the results cannot be trusted."""


# --- capture and recovery (in process) --------------------------------------------------


class TimedParticipant:
    """A checkpoint participant whose ``capture()`` adds its duration to ``spent``."""

    def __init__(self, inner: Participant, spent: list[float]):
        self.name = inner.name
        self._inner = inner
        self._spent = spent

    def capture(self) -> Capture:
        started = time.perf_counter()
        try:
            return self._inner.capture()
        finally:
            self._spent[0] += time.perf_counter() - started


class StallMeter:
    """Ticks every :data:`TICK` on the event loop; the longest gap beyond a tick is the
    longest the loop could not run anything else."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StallMeter:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)  # let it take its first tick
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - TICK)
            last = now


@dataclass(slots=True)
class CheckpointSample:
    total: float
    capture: float
    stall: float
    size_bytes: int
    addresses: int
    duration_ms: int
    """The manifest's own ``duration_ms``."""


@dataclass(slots=True)
class SizeResult:
    """The measurements of one number of addresses."""

    addresses: int
    changed: list[CheckpointSample] = field(default_factory=list)
    idle: list[CheckpointSample] = field(default_factory=list)
    rollback: list[float] = field(default_factory=list)
    rollback_stall: list[float] = field(default_factory=list)
    read_state: list[float] = field(default_factory=list)
    """``store.load_state`` of the latest checkpoint alone (the SQLite query)."""
    load_state: list[float] = field(default_factory=list)
    """``StateStore.load`` of those rows alone (decoding them, on the event loop)."""
    stop: list[float] = field(default_factory=list)
    open: list[float] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    process_healthy: list[float] = field(default_factory=list)
    """Seconds from starting ``statefun run`` to ``GET /health`` answering 200."""


async def checkpoint(runtime: Runtime) -> CheckpointSample:
    """Take one checkpoint, timing the whole and the participants' capture."""
    assert runtime.clock is not None
    spent = [0.0]
    coordinator = runtime.coordinator
    participants = list(coordinator._participants)
    coordinator.attach(runtime.clock, [TimedParticipant(p, spent) for p in participants])
    try:
        async with StallMeter() as stalls:
            started = time.perf_counter()
            manifest = await coordinator.checkpoint()
            total = time.perf_counter() - started
    finally:
        coordinator.attach(runtime.clock, participants)
    if manifest is None:
        raise BenchError("a checkpoint was abandoned (see runtime.log in the work directory)")
    return CheckpointSample(
        total,
        spent[0],
        stalls.longest,
        manifest.size_bytes,
        manifest.addresses,
        manifest.duration_ms,
    )


def change_state(runtime: Runtime, addresses: Sequence[Address], value: int) -> None:
    """Give every address a new ``count``, as applying a batch's result does."""
    assert runtime.worker is not None
    state = runtime.worker.state
    now_ms = int(time.time() * 1000)
    typed = to_typed_value(IntType, value)
    for address in addresses:
        state.apply(address, [StateMutation("count", typed)], specs={}, now_ms=now_ms)


def check_state(runtime: Runtime, addresses: Sequence[Address], value: int, after: str) -> None:
    """Every address's ``count`` is ``value``, and no other address has state."""
    assert runtime.worker is not None
    state = runtime.worker.state
    if len(state) != len(addresses):
        raise Failed(f"{after}: {len(state)} addresses in state, not {len(addresses)}")
    expected = to_typed_value(IntType, value)
    wrong = [a for a in addresses if state.get(a).get("count") != expected]
    if wrong:
        raise Failed(
            f"{after}: {len(wrong)} of {len(addresses)} addresses lost their count "
            f"{value}, e.g. {wrong[0]}: {dict(state.get(wrong[0]))}"
        )


async def rollback(runtime: Runtime) -> tuple[float, float]:
    """Report a failure as the worker does; seconds until the new generation runs, and
    the longest stall of the event loop meanwhile."""
    assert runtime.clock is not None
    generation = runtime.clock.generation
    async with StallMeter() as stalls:
        started = time.perf_counter()
        runtime._failed(Failure("bench: a rollback on purpose"))
        task = runtime._rolling_back
        if task is None:
            raise BenchError("the runtime did not start a rollback")
        await task
        elapsed = time.perf_counter() - started
    worker = runtime.worker
    if runtime.clock.generation != generation + 1 or worker is None or worker.stopped:
        raise BenchError(f"no new generation after the rollback (generation {generation})")
    return elapsed, stalls.longest


async def time_restore(runtime: Runtime) -> tuple[float, float]:
    """The two halves of a restore, each alone: reading the latest checkpoint's state
    from the store, and loading it into a fresh ``StateStore``; seconds each."""
    latest = await runtime.store.latest()
    if latest is None:
        raise BenchError("no checkpoint to restore")
    started = time.perf_counter()
    rows = await runtime.store.load_state(latest.checkpoint)
    read = time.perf_counter() - started
    started = time.perf_counter()
    StateStore().load(rows)
    return read, time.perf_counter() - started


async def measure_size(n: int, repeats: int, base: Path) -> SizeResult:
    data_dir = base / f"capture-{n}"
    module = parse_module_spec(UNCALLED_MODULE, "bench.checkpoints")
    config = RuntimeConfig(
        module=module,
        data_dir=data_dir,
        checkpoints=CheckpointConfig(interval=0),
        rollback_backoff=0.0,
    )
    result = SizeResult(n)
    addresses = [Address("bench", "first", f"a-{i}") for i in range(n)]
    runtime = await Runtime.open(config)
    running = True
    try:
        await runtime.start()
        say(f"capture: {n} addresses, {repeats} checkpoints changed and {repeats} idle")
        for r in range(repeats):
            change_state(runtime, addresses, r + 1)
            sample = await checkpoint(runtime)
            if sample.addresses != n:
                raise Failed(f"a checkpoint wrote {sample.addresses} addresses, not {n}")
            result.changed.append(sample)
        for _ in range(repeats):
            sample = await checkpoint(runtime)
            if sample.addresses != 0:
                raise Failed(f"an idle checkpoint wrote {sample.addresses} addresses, not 0")
            result.idle.append(sample)
        say(f"recovery: {n} addresses, {repeats} rollbacks, restores and restarts")
        for _ in range(repeats):
            elapsed, stall = await rollback(runtime)
            result.rollback.append(elapsed)
            result.rollback_stall.append(stall)
            check_state(runtime, addresses, repeats, "after a rollback")
        for _ in range(repeats):
            read, load = await time_restore(runtime)
            result.read_state.append(read)
            result.load_state.append(load)
        for _ in range(repeats):
            started = time.perf_counter()
            running = False
            await runtime.stop()
            result.stop.append(time.perf_counter() - started)
            started = time.perf_counter()
            runtime = await Runtime.open(config)
            running = True
            result.open.append(time.perf_counter() - started)
            started = time.perf_counter()
            await runtime.start()
            result.start.append(time.perf_counter() - started)
            check_state(runtime, addresses, repeats, "after a restart")
    finally:
        if running:
            await runtime.stop()
    say(f"recovery: {n} addresses, {repeats} processes started on the data")
    for i in range(repeats):
        result.process_healthy.append(await process_restart(data_dir, base, n, f"{n}-{i}"))
    return result


RESUMED = re.compile(r"resumed from checkpoint (\d+) in \d+ ms \((\d+) addresses in state\)")


async def process_restart(data_dir: Path, base: Path, addresses: int, name: str) -> float:
    """Seconds from starting ``statefun run`` on ``data_dir`` to ``/health`` answering 200
    (Python's start and imports included); its log must say it restored ``addresses``
    addresses. The process is stopped again (SIGTERM: a clean stop)."""
    module = base / "uncalled.yaml"
    module.write_text(UNCALLED_MODULE)
    with Children() as children:
        port = free_port()
        log_path = base / f"restart-{name}.log"
        started = time.perf_counter()
        child = children.start(
            "the runtime (restart)",
            runtime_command(
                module,
                port,
                "--data-dir",
                str(data_dir),
                "--checkpoint-interval",
                "0",
                log_level="info",
            ),
            log_path,
        )
        url = f"http://{HOST}:{port}/health"
        elapsed: float | None = None
        async with aiohttp.ClientSession() as session:
            deadline = started + PROGRESS_TIMEOUT
            while elapsed is None and time.perf_counter() < deadline:
                child.check_alive()
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            elapsed = time.perf_counter() - started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.005)
        if elapsed is None:
            raise BenchError(f"the restarted runtime did not answer {url}:\n{child.log_tail()}")
        restored = RESUMED.search(log_path.read_text(errors="replace"))
        if restored is None or int(restored.group(2)) != addresses:
            raise Failed(
                f"statefun run on {data_dir} did not restore {addresses} addresses:\n"
                f"{child.log_tail()}"
            )
        problems = child.problems()
        if problems:
            print(f"  {log_path.name}: {len(problems)} lines at WARNING or above, e.g.:")
            print(f"    {problems[0][:220]}")
    return elapsed


CAPTURE_HEADERS = [
    "addresses",
    "changed",
    "checkpoints",
    "total ms",
    "capture ms",
    "max stall ms",
    "write ms",
    "bytes",
    "total us/addr",
    "capture us/addr",
    "manifest ms",
]


def capture_rows(results: Sequence[SizeResult]) -> list[list[str]]:
    """One row for the checkpoints of N changed addresses, one for the idle ones (the
    medians of each)."""
    rows = []
    for r in results:
        for changed, samples in ((r.addresses, r.changed), (0, r.idle)):
            total = median([s.total for s in samples])
            capture = median([s.capture for s in samples])
            per = max(changed, 1)
            rows.append(
                [
                    f"{r.addresses}",
                    f"{changed}",
                    f"{len(samples)}",
                    ms(total),
                    ms(capture),
                    ms(median([s.stall for s in samples])),
                    ms(median([s.total - s.capture for s in samples])),
                    f"{int(median([s.size_bytes for s in samples]))}",
                    f"{total / per * 1e6:.1f}" if changed else "-",
                    f"{capture / per * 1e6:.1f}" if changed else "-",
                    f"{median([s.duration_ms for s in samples]):.0f}",
                ]
            )
    return rows


RECOVERY_HEADERS = [
    "addresses",
    "repeats",
    "rollback ms",
    "max stall ms",
    "read state ms",
    "load state ms",
    "stop ms",
    "open ms",
    "start ms",
    "process to healthy ms",
]


def recovery_rows(results: Sequence[SizeResult]) -> list[list[str]]:
    return [
        [
            f"{r.addresses}",
            f"{len(r.rollback)}",
            ms(median(r.rollback)),
            ms(median(r.rollback_stall)),
            ms(median(r.read_state)),
            ms(median(r.load_state)),
            ms(median(r.stop)),
            ms(median(r.open)),
            ms(median(r.start)),
            ms(median(r.process_healthy)),
        ]
        for r in results
    ]


async def empty_process_start(base: Path, repeats: int) -> float:
    """The median seconds from starting ``statefun run`` on an empty data directory to
    ``/health``: the fixed part of a cold restart (Python, imports, opening the logs)."""
    samples = []
    for i in range(repeats):
        data_dir = base / f"empty-{i}"
        samples.append(await process_restart(data_dir, base, 0, f"empty-{i}"))
    return median(samples)


# --- latency (child processes) ----------------------------------------------------------


AT_LEAST_ONCE_MODULE = f"""\
---
kind: statefun.v1/egress
spec:
  id: {AT_LEAST_ONCE_EGRESS}
  deliverySemantic:
    type: {AT_LEAST_ONCE}
"""
"""The second egress of the latency runs: ``bench/second`` sends the output of a
``both-`` address to it as well as to ``bench/done`` (exactly-once)."""


@dataclass(frozen=True, slots=True)
class LatencyRow:
    log: str
    interval: float
    kind: str
    latencies: list[float]
    """Seconds, sorted."""
    rate: float
    """Messages per second actually sent."""
    checkpoints: int
    """Checkpoints begun meanwhile (the epochs the checkpoint ids advanced by)."""
    checkpoint_ms: list[int]
    """``duration_ms`` of the checkpoints completed meanwhile, sorted."""
    runtime_busy: float
    """The runtime's CPU seconds per second meanwhile (all threads; 1.0 is a core)."""
    loop_busy: float
    """The same, of its event loop's thread alone."""
    reads: int | None = None
    """Egress rows: how many ``GET``s read the egress (long polls)."""
    on_demand: bool = True

    def cells(self) -> list[str]:
        lat = self.latencies
        cp = self.checkpoint_ms
        return [
            self.log,
            interval_text(self.interval),
            "on" if self.on_demand else "off",
            self.kind,
            f"{len(lat)}",
            f"{self.rate:.0f}",
            ms(percentile(lat, 50)),
            ms(percentile(lat, 90)),
            ms(percentile(lat, 99)),
            ms(lat[-1]) if lat else "-",
            f"{self.reads}" if self.reads is not None else "-",
            f"{self.runtime_busy * 100:.0f}",
            f"{self.loop_busy * 100:.0f}",
            f"{self.checkpoints}",
            f"{percentile(cp, 50):.0f}" if cp else "-",
            f"{cp[-1]}" if cp else "-",
        ]


LATENCY_HEADERS = [
    "log",
    "checkpoints",
    "on demand",
    "latency of",
    "messages",
    "msg/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "egress reads",
    "runtime cpu %",
    "loop cpu %",
    "checkpoints taken",
    "checkpoint p50 ms",
    "checkpoint max ms",
]


async def paced(
    count: int,
    rate: float,
    one: Callable[[int], Coroutine[Any, Any, None]],
    check: Callable[[], None],
) -> float:
    """Run ``one(i)`` for each i, started at ``i / rate`` seconds (an open loop: on
    schedule whatever the answers do); the rate achieved."""
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if i % 100 == 0:
            check()
        tasks.append(asyncio.create_task(one(i)))
    sent = time.perf_counter() - started
    await asyncio.gather(*tasks)
    return count / sent if sent > 0 else float("inf")


class LatencyRun:
    """One runtime's latency measurements (one log, one checkpoint interval)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        processes: Processes,
        check: Callable[[], None],
    ):
        self.session = session
        self.log = processes.log
        self.ingress = processes.ingress
        self.runtime_pid = processes.runtime.pid
        self.check = check
        self.egress_next: dict[str, int] = {}
        """Per egress, the offset after the last record read."""
        self.reads: dict[str, int] = {}
        """Per egress, how long each ``GET`` took."""
        self.checkpoints: dict[int, int] = {}
        """Checkpoint id -> duration_ms, of those seen by :meth:`note_checkpoints`."""
        self.sizes: dict[int, int] = {}
        """Checkpoint id -> size_bytes, of the same."""

    async def send(self, id_: str) -> float:
        """POST a message to ``bench/first/<id_>``; when its 202 came."""
        url = f"{self.ingress}/v1/messages/bench/first/{id_}"
        async with self.session.post(url, data=b"x", headers=TEXT) as response:
            body = await response.read()
            accepted = time.perf_counter()
        if response.status != 202:
            raise Failed(f"POST {url}: {response.status} {body[:300]!r}")
        return accepted

    async def call(self, id_: str, committed: bool, function: str = FIRST) -> float:
        """POST a call to ``<function>/<id_>`` (``bench/first``: 2 hops, ``bench/counter``:
        1); its latency (the answer checked)."""
        url = f"{self.ingress}/v1/call/{function}/{id_}"
        params = {"timeout": f"{CALL_TIMEOUT:g}"}
        if committed:
            params["consistency"] = "committed"
        started = time.perf_counter()
        async with self.session.post(url, data=b"x", headers=TEXT, params=params) as response:
            body = await response.read()
            elapsed = time.perf_counter() - started
        if response.status != 200:
            raise Failed(f"POST {url}: {response.status} {body[:300]!r}")
        value = json.loads(body).get("value")
        consistency = response.headers.get(CONSISTENCY_HEADER)
        expected = "committed" if committed else "uncommitted"
        if value != f"{id_}:1" or consistency != expected:
            raise Failed(f"POST {url}: {value!r} ({CONSISTENCY_HEADER}: {consistency})")
        return elapsed

    async def read_egress(self, egress: str, wanted: set[str], seen: dict[str, float]) -> None:
        """Poll the egress ``egress`` until every value in ``wanted`` is in ``seen``
        (value -> when the poll that returned it answered); a value twice is a failure."""
        url = f"{self.ingress}/v1/egress/{egress}"
        last_progress = time.perf_counter()
        while not wanted.issubset(seen):
            params = {
                "from": str(self.egress_next.get(egress, 0)),
                "limit": "10000",
                "wait": str(EGRESS_WAIT),
            }
            async with self.session.get(url, params=params) as response:
                page: dict[str, Any] = await response.json()
                now = time.perf_counter()
            self.reads[egress] = self.reads.get(egress, 0) + 1
            if response.status != 200:
                raise Failed(f"GET {url}: {response.status} {page}")
            for record in page["records"]:
                value = str(record["value"])
                if value in seen:
                    raise Failed(f"{egress}: record {value!r} came twice")
                seen[value] = now
            self.egress_next[egress] = page["next"]
            if page["records"]:
                last_progress = now
            elif now - last_progress > PROGRESS_TIMEOUT:
                missing = len(wanted - seen.keys())
                raise Failed(f"{egress}: {missing} records missing after {PROGRESS_TIMEOUT:g} s")
            self.check()

    async def read_both(self, wanted: set[str]) -> tuple[dict[str, float], dict[str, float]]:
        """Read ``wanted`` from both egresses; (exactly-once, at-least-once) arrivals."""
        exactly: dict[str, float] = {}
        at_least: dict[str, float] = {}
        await asyncio.gather(
            self.read_egress(DONE_EGRESS, wanted, exactly),
            self.read_egress(AT_LEAST_ONCE_EGRESS, wanted, at_least),
        )
        return exactly, at_least

    async def note_checkpoints(self) -> None:
        """Note the duration of every checkpoint the runtime lists (it keeps the newest
        3 to 12: pruned every 10)."""
        async with self.session.get(f"{self.ingress}/v1/checkpoints") as response:
            answer = await response.json()
        for c in answer["checkpoints"]:
            self.checkpoints[int(c["id"])] = int(c["duration_ms"])
            self.sizes[int(c["id"])] = int(c["size_bytes"])

    async def watch_checkpoints(self) -> None:
        while True:
            await self.note_checkpoints()
            await asyncio.sleep(CHECKPOINTS_POLL_INTERVAL)

    def cpu(self) -> tuple[float, float, float]:
        """(now, the runtime's CPU seconds, its event loop thread's)."""
        loop, others = thread_cpu_seconds(self.runtime_pid)
        return time.perf_counter(), loop + others, loop

    def busy(self, before: tuple[float, float, float]) -> tuple[float, float]:
        """The runtime's CPU seconds per second since ``before`` (all threads, the loop)."""
        now, total, loop = self.cpu()
        elapsed = now - before[0]
        return (total - before[1]) / elapsed, (loop - before[2]) / elapsed

    def checkpoints_since(self, first: int) -> tuple[int, list[int]]:
        """Checkpoints since id ``first`` (a count from the ids: polls may miss some
        that were pruned meanwhile), and the durations of those seen, sorted."""
        seen = [c for c in self.checkpoints if c >= first]
        taken = max(seen) - first + 1 if seen else 0
        return taken, sorted(self.checkpoints[c] for c in seen)

    async def warm_up(self, count: int) -> None:
        """Calls and sends on addresses of their own: connections, state registration."""
        for i in range(0, count, 16):
            batch = range(i, min(count, i + 16))
            await asyncio.gather(*(self.call(f"warm-call-{j}", j % 2 == 0) for j in batch))
        ids = [f"{BOTH_PREFIX}warm-{j}" for j in range(count)]
        await asyncio.gather(*(self.send(id_) for id_ in ids))
        await self.read_both({f"{id_}:1" for id_ in ids})

    async def egress_latency(self, interval: float, count: int, rate: float) -> list[LatencyRow]:
        """Messages whose output goes to both egresses: the latency of each."""
        accepted: dict[str, float] = {}
        ids = [f"{BOTH_PREFIX}egress-{i}" for i in range(count)]

        async def one(i: int) -> None:
            accepted[f"{ids[i]}:1"] = await self.send(ids[i])

        await self.note_checkpoints()
        first = max(self.checkpoints, default=0) + 1
        self.reads.clear()
        cpu0 = self.cpu()
        reader = asyncio.create_task(self.read_both({f"{id_}:1" for id_ in ids}))
        try:
            achieved = await paced(count, rate, one, self.check)
            exactly, at_least = await reader
        finally:
            reader.cancel()
        busy = self.busy(cpu0)
        await self.note_checkpoints()
        taken, durations = self.checkpoints_since(first)
        return [
            LatencyRow(
                self.log,
                interval,
                label,
                sorted(seen[v] - accepted[v] for v in accepted),
                achieved,
                taken,
                durations,
                *busy,
                self.reads[egress],
            )
            for label, egress, seen in (
                (f"egress {EXACTLY_ONCE}", DONE_EGRESS, exactly),
                (f"egress {AT_LEAST_ONCE}", AT_LEAST_ONCE_EGRESS, at_least),
            )
        ]

    async def call_latency(self, interval: float, count: int, rate: float) -> list[LatencyRow]:
        """Calls alternating committed and uncommitted: the latency of each kind."""
        by_kind: dict[bool, list[float]] = {True: [], False: []}

        async def one(i: int) -> None:
            committed = i % 2 == 0
            by_kind[committed].append(await self.call(f"call-{i}", committed))

        await self.note_checkpoints()
        first = max(self.checkpoints, default=0) + 1
        cpu0 = self.cpu()
        achieved = await paced(count, rate, one, self.check)
        busy = self.busy(cpu0)
        await self.note_checkpoints()
        taken, durations = self.checkpoints_since(first)
        return [
            LatencyRow(
                self.log,
                interval,
                label,
                sorted(by_kind[kind]),
                achieved / 2,
                taken,
                durations,
                *busy,
            )
            for kind, label in ((True, "call committed"), (False, "call uncommitted"))
        ]

    async def closed_loop(
        self, interval: float, case: ClosedCase, committed: bool, count: int
    ) -> ClosedRow:
        """``count`` calls on fresh addresses, ``case.concurrency`` at a time (each
        worker sends its next call when the last is answered): latency and throughput."""
        latencies: list[float] = []
        numbers = iter(range(count))
        prefix = f"closed-{case.hops}h-c{case.concurrency}-{'c' if committed else 'u'}"

        async def worker() -> None:
            for i in numbers:
                latencies.append(await self.call(f"{prefix}-{i}", committed, case.function))

        await self.note_checkpoints()
        first = max(self.checkpoints, default=0) + 1
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(case.concurrency)))
        elapsed = time.perf_counter() - started
        self.check()
        await self.note_checkpoints()
        taken, durations = self.checkpoints_since(first)
        sizes = sorted(self.sizes[c] for c in self.sizes if c >= first)
        return ClosedRow(
            self.log, interval, case, committed, sorted(latencies), elapsed, taken, durations, sizes
        )


@dataclass(frozen=True, slots=True)
class ClosedCase:
    hops: int
    concurrency: int

    @property
    def function(self) -> str:
        return COUNTER if self.hops == 1 else FIRST


CLOSED_CASES = (ClosedCase(1, 1), ClosedCase(2, 1), ClosedCase(1, 64))
"""The closed-loop cases: issue 12's workload (a counter: 1 hop; through a second
function: 2 hops)."""


@dataclass(slots=True)
class ClosedRow:
    log: str
    interval: float
    case: ClosedCase
    committed: bool
    latencies: list[float]
    """Seconds, sorted."""
    elapsed: float
    checkpoints: int
    checkpoint_ms: list[int]
    """``duration_ms`` of the checkpoints seen meanwhile, sorted."""
    checkpoint_bytes: list[int]
    """``size_bytes`` of the same, sorted."""
    on_demand: bool = True

    def cells(self) -> list[str]:
        lat = self.latencies
        return [
            self.log,
            interval_text(self.interval),
            "on" if self.on_demand else "off",
            f"{self.case.hops}",
            f"{self.case.concurrency}",
            "committed" if self.committed else "default",
            f"{len(lat)}",
            f"{len(lat) / self.elapsed:.0f}",
            ms(percentile(lat, 50)),
            ms(percentile(lat, 99)),
            f"{self.checkpoints}",
            f"{percentile(self.checkpoint_ms, 50):.0f}" if self.checkpoint_ms else "-",
            f"{percentile(self.checkpoint_bytes, 50):.0f}" if self.checkpoint_bytes else "-",
        ]


CLOSED_HEADERS = [
    "log",
    "checkpoints",
    "on demand",
    "hops",
    "concurrency",
    "reply",
    "calls",
    "calls/s",
    "p50 ms",
    "p99 ms",
    "checkpoints taken",
    "checkpoint p50 ms",
    "checkpoint p50 bytes",
]


async def measure_latency(
    log: str,
    interval: float,
    args: argparse.Namespace,
    base: Path,
    broker: Broker | None,
    on_demand: bool = True,
) -> tuple[list[LatencyRow], list[ClosedRow]]:
    """One runtime on ``log``, checkpoints every ``interval``: egress latency, then call
    latency."""
    with Children() as children:
        return await _measure_latency(children, log, interval, args, base, broker, on_demand)


async def _measure_latency(
    children: Children,
    log: str,
    interval: float,
    args: argparse.Namespace,
    base: Path,
    broker: Broker | None,
    on_demand: bool,
) -> tuple[list[LatencyRow], list[ClosedRow]]:
    workdir = base / f"latency-{log}-{interval:g}s-{'demand' if on_demand else 'interval'}"
    workdir.mkdir()
    config = RunConfig(
        interval,
        EXACTLY_ONCE,
        extra_module=AT_LEAST_ONCE_MODULE,
        runtime_args=() if on_demand else ("--no-checkpoint-on-demand",),
    )
    processes = start_processes(children, log, workdir, config, broker)

    def check() -> None:
        for child in processes.all():
            child.check_alive()

    # Idle connections dropped well before the ingress closes them (5 s): reusing one the
    # server is closing at that moment is a connection reset.
    connector = aiohttp.TCPConnector(limit=args.max_in_flight, keepalive_timeout=2)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await processes.functions.wait_healthy(session, f"{processes.functions_url}/health")
        await processes.runtime.wait_healthy(session, f"{processes.ingress}/health")
        run = LatencyRun(session, processes, check)
        watcher = asyncio.create_task(run.watch_checkpoints())
        try:
            name = f"latency: {log}, checkpoints every {interval:g} s"
            say(f"{name}: warming up")
            await run.warm_up(100)
            say(f"{name}: {args.egress_messages} messages to the egresses")
            rows = await run.egress_latency(interval, args.egress_messages, args.rate)
            say(f"{name}: {args.call_messages} calls")
            rows += await run.call_latency(interval, args.call_messages, args.rate)
            closed: list[ClosedRow] = []
            for case in CLOSED_CASES:
                count = args.closed_calls * (4 if case.concurrency > 1 else 1)
                for committed in (False, True):
                    say(
                        f"{name}: {count} {'committed' if committed else 'default'} calls, "
                        f"{case.hops} hops, concurrency {case.concurrency}"
                    )
                    closed.append(await run.closed_loop(interval, case, committed, count))
        finally:
            watcher.cancel()
        rows = [dataclasses.replace(row, on_demand=on_demand) for row in rows]
        for closed_row in closed:
            closed_row.on_demand = on_demand
    problems = [(c, line) for c in processes.all() for line in c.problems()]
    if problems:
        print(f"  {len(problems)} lines at WARNING or above in the children's logs, e.g.:")
        for child, line in problems[:3]:
            print(f"    {child.log_path.name}: {line[:220]}")
    return rows, closed


# --- the run ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.checkpoints",
        description="Checkpoint costs: capture and commit against changed addresses, "
        "recovery time, and exactly-once egress and committed-reply latency.",
    )
    parser.add_argument(
        "--part",
        choices=["capture", "latency", "all"],
        default="all",
        help="capture: checkpoint cost and recovery (in process); latency: egress and "
        "committed replies (child processes); all (default)",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        metavar="N",
        help=f"changed addresses per checkpoint (default {' '.join(map(str, SIZES))}; "
        f"--quick: {' '.join(map(str, QUICK_SIZES))})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="checkpoints, rollbacks and restarts per size; the tables show medians "
        "(default 5; --quick: 2)",
    )
    parser.add_argument(
        "--intervals",
        type=float,
        nargs="+",
        metavar="SECONDS",
        default=INTERVALS,
        help="checkpoint intervals of the latency part (default 1 0.1)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="messages per second the latency part sends, open loop (default 100)",
    )
    parser.add_argument(
        "--log",
        choices=["embedded", "kafka", "both"],
        default="embedded",
        help="the latency part's log (default embedded; kafka: a Tansu broker started "
        "for each run, or $STATEFUN_BENCH_KAFKA, as python -m bench does)",
    )
    parser.add_argument(
        "--egress-messages",
        type=int,
        help="messages for egress latency, each timed on both egresses (default 3000; "
        "--quick: 500)",
    )
    parser.add_argument(
        "--call-messages",
        type=int,
        help="calls, half of them committed (default 2000; --quick: 400)",
    )
    parser.add_argument(
        "--closed-calls",
        type=int,
        help="calls per closed-loop case at concurrency 1, four times as many at 64 "
        "(default 1000; --quick: 200)",
    )
    parser.add_argument(
        "--demand",
        choices=["on", "off", "both"],
        default="on",
        help="checkpoints on demand in the latency part (statefun run "
        "--checkpoint-on-demand): on (default), off (every interval only), or both",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=1000,
        help="connections the latency part may open (default 1000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run: 1k and 10k addresses, 2 repeats, fewer messages (about 1 min)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = QUICK_SIZES if args.quick else SIZES
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.egress_messages is None:
        args.egress_messages = 500 if args.quick else 3000
    if args.call_messages is None:
        args.call_messages = 400 if args.quick else 2000
    if args.closed_calls is None:
        args.closed_calls = 200 if args.quick else 1000
    if min(args.sizes) < 1 or args.repeats < 1 or args.rate <= 0:
        parser.error("--sizes and --repeats must be at least 1, --rate more than 0")
    if min(args.egress_messages, args.call_messages, args.closed_calls, args.max_in_flight) < 1:
        parser.error(
            "--egress-messages, --call-messages, --closed-calls and --max-in-flight must be "
            "at least 1"
        )
    if min(args.intervals) <= 0:
        parser.error("--intervals must be more than 0: exactly-once egress needs checkpoints")
    return args


async def run(args: argparse.Namespace, base: Path, tables: list[str]) -> None:
    """Measure, appending each table to ``tables`` as it is done."""
    if args.part in ("capture", "all"):
        results = []
        for n in args.sizes:
            print(f"capture and recovery: {n} addresses ...", flush=True)
            results.append(await measure_size(n, args.repeats, base))
        tables.append(format_table(CAPTURE_HEADERS, capture_rows(results)))
        empty = await empty_process_start(base, args.repeats)
        tables.append(
            format_table(RECOVERY_HEADERS, recovery_rows(results))
            + f"\n(statefun run on an empty data directory: {ms(empty)} ms to /health, "
            f"median of {args.repeats})"
        )
    if args.part in ("latency", "all"):
        logs = ["embedded", "kafka"] if args.log == "both" else [args.log]
        broker = find_broker() if "kafka" in logs else None
        if "kafka" in logs and broker is None:
            raise BenchError(f"no Kafka broker for --log {args.log}: {HOW_TO_GET_ONE}")
        demands = {"on": [True], "off": [False], "both": [False, True]}[args.demand]
        rows: list[LatencyRow] = []
        closed: list[ClosedRow] = []
        for log in logs:
            for interval in args.intervals:
                for on_demand in demands:
                    print(
                        f"latency: {log} log, checkpoints every {interval:g} s"
                        f"{'' if on_demand else ' (not on demand)'} ...",
                        flush=True,
                    )
                    open_rows, closed_rows = await measure_latency(
                        log, interval, args, base, broker, on_demand
                    )
                    rows += open_rows
                    closed += closed_rows
        tables.append(format_table(LATENCY_HEADERS, [r.cells() for r in rows], left=4))
        tables.append(format_table(CLOSED_HEADERS, [r.cells() for r in closed], left=6))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="statefun-bench-checkpoints-"))
    print(f"python {sys.version.split()[0]}, work directory {base}", flush=True)
    # The in-process runtimes log here (their rollbacks log at ERROR, on purpose).
    logging.basicConfig(
        filename=base / "runtime.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    status = 0
    tables: list[str] = []
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(args, base, tables))
    except Failed as e:
        print(f"FAILED: {e}", flush=True)
        status = 1
    except (BenchError, aiohttp.ClientError, TimeoutError) as e:
        print(f"bench: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        status = 2
    except KeyboardInterrupt as e:
        print(f"bench: interrupted ({str(e) or 'SIGINT'})", file=sys.stderr)
        status = 130
    if tables:  # those done, also after a failure
        print("\n\n".join(["", *tables]), flush=True)
    if args.keep or status not in (0, 130):
        print(f"kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
