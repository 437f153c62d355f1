"""The Restate comparison: ``python -m bench.peer`` from the repository root.

Owns the workload that the project is measured against Restate with (issue 12), run
against this runtime: the same six cases, the same accounting, one column per mode.
The functions are ``bench/peer_functions.py`` (``peer/counter``, ``peer/formatter``;
our SDK under uvicorn with uvloop and httptools), the runtime runs as users run it
(``python -m runtime.cli run``), the load generator is this process (aiohttp on uvloop).

Cases, interleaved per repetition (rep 1 of every case, then rep 2, ...), each on 1,000
fresh keys (``--keys``) taken round-robin from one shared sequence, so that concurrent
requests hit distinct keys:

* ``lat_add_c1``, ``rr_add_c8``, ``rr_add_c64``: ``POST /v1/call/peer/counter/{key}``
  with the int ``1`` (``add``: count += 1, reply with the count), closed loop at
  concurrency 1, 8 and 64;
* ``lat_fmt_c1``, ``rr_fmt_c64``: the same with a ``peer/AddAndFormat`` ``1``
  (``add_and_format``: the counter adds, then the formatter formats and sends the text
  to the original caller: 2 hops), concurrency 1 and 64;
* ``send_c64``: ``--sends`` one-way ``POST /v1/messages/peer/counter/{key}`` (202) at
  concurrency 64, then a bounded wait until all are applied;
* ``send_batch_c4``: the same sends, 100 to a ``POST /v1/messages`` (the batch endpoint:
  one request, one append per partition) at concurrency 4. Ours only: Restate's
  ingress takes one message per request.

Request-reply cases: a warm-up (``--warmup-s``, latencies not kept), then a measured
window (``--window-s``; at concurrency 1 at most ``--lat-max-requests`` requests);
p50/p90/p99 of the requests that started and ended inside it, req/s of those that ended
inside it. Sends: accepted/s (202s over the send phase) and processed/s: accepted /
(the time the last was applied - the time the first was accepted). That the last was
applied is seen by polling ``GET /metrics`` of every runtime process after the send
phase (when the rate seen so far would have applied the rest: every 5-100 ms, see
``DRAIN_POLL``) for ``statefun_route_calls_total{source="ingress",
target="peer/counter", outcome="success"}`` against its value before the case: one
scrape per poll, no state reads; the time is that of the first poll that saw them all
(an upper bound, by at most one poll). After every case each key's ``count``
(``GET /v1/state``) must equal its acknowledged adds: "counts exact".

CPU seconds (utime + stime from ``/proc``) of the runtime process(es), the function
server, the Kafka broker (if ours) and this load generator, taken at the start and the
end of each measured window: cores, and CPU ms per request.

Modes (``--mode``, repeatable; default all):

* ``embedded``: ``statefun run`` on the embedded log; replies as soon as produced;
* ``committed``: the same, every call with ``?consistency=committed``, checkpoints
  every ``--committed-interval`` s (default 0.1);
* ``kafka``: ``statefun run --kafka``, one process (a member of an application of one)
  on a Tansu broker started for the run (``bench/_kafka.py``), or
  ``$STATEFUN_BENCH_KAFKA``;
* ``kafka-committed``: the same, every call with ``?consistency=committed``, checkpoints
  every ``--committed-interval`` s;
* ``kafka3``: three processes of one application on one broker (as ``bench.cluster``
  starts them), the load spread round-robin over their ingresses. Reported, not gated.

Each mode has its own processes, started fresh and stopped after its repetitions; on a
Tansu broker of our own, a Kafka mode starts everything afresh (the broker too) for
every case run, as a broker that served earlier cases is slower (see :func:`plans`).
A case with errors or inexact counts prints ``FAILED`` and makes the exit status 1; a
mode that could not run, 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench._kafka import HOW_TO_GET_ONE, Broker, find_broker, start_tansu
from bench._support import (
    HOST,
    BenchError,
    Child,
    Children,
    cpu_seconds,
    endpoint_yaml,
    free_port,
    percentile,
    runtime_command,
)
from bench.peer_functions import ADD_AND_FORMAT, COUNTER
from runtime.progress import steps
from statefun.values import IntType

MODES = ["embedded", "committed", "kafka", "kafka-committed", "kafka3"]
KAFKA_MODES = ("kafka", "kafka-committed", "kafka3")
COMMITTED_MODES = ("committed", "kafka-committed")
MEMBERS = {"embedded": 1, "committed": 1, "kafka": 1, "kafka-committed": 1, "kafka3": 3}
PARTITIONS = 8
"""Partitions of the messages topic on Kafka (the runtime's default, as bench.cluster)."""
SESSION_TIMEOUT = 2.0
"""The members' ``--session-timeout`` (the test broker makes a join wait half of it)."""
COMMITTED_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class Case:
    kind: str
    """``rr`` (request-reply, closed loop) or ``send`` (one-way)."""
    handler: str
    """``add`` or ``add_and_format``."""
    concurrency: int
    what: str
    """The case as the table names it."""
    batch: int = 0
    """One-way sends: messages per batch request (``POST /v1/messages``); 0: one per
    request, to the address's own route."""


CASES = {
    "lat_add_c1": Case("rr", "add", 1, "1 hop, concurrency 1"),
    "lat_fmt_c1": Case("rr", "add_and_format", 1, "2 hops, concurrency 1"),
    "rr_add_c8": Case("rr", "add", 8, "1 hop, concurrency 8"),
    "rr_add_c64": Case("rr", "add", 64, "1 hop, concurrency 64"),
    "rr_fmt_c64": Case("rr", "add_and_format", 64, "2 hops, concurrency 64"),
    "send_c64": Case("send", "add", 64, "one-way sends, concurrency 64: accepted / processed"),
    "send_batch_c4": Case(
        "send", "add", 4, "one-way sends, 100 per request, concurrency 4: accepted / processed", 100
    ),
}
TYPE_OF = {"add": IntType.typename, "add_and_format": ADD_AND_FORMAT.typename}
"""The ``?type=`` of each handler's message (the body is the JSON number ``1``)."""
JSON = {"content-type": "application/json"}
DEFAULTS: dict[str, Any] = {
    "reps": 3,
    "warmup_s": 1.0,
    "window_s": 10.0,
    "sends": 20_000,
}
QUICK: dict[str, Any] = {"reps": 1, "warmup_s": 1.0, "window_s": 3.0, "sends": 3_000}
REQUEST_TIMEOUT = 30.0
"""Seconds the load generator waits for one answer (the ingress's own call timeout)."""
START_TIMEOUT = 60.0
DRAIN_POLL = (0.005, 0.1)
"""Least and most seconds between two reads of ``/metrics`` while waiting for sends to be
applied: a scrape costs the runtime a few ms, so it is read when the rate seen so far
would have applied the rest (:func:`poll_delay`), often where it is far, finely near the
end."""
VERIFY_CONCURRENCY = 16
PAUSE_S = 0.5
"""Seconds of quiet between two cases."""
APPLIED = re.compile(
    r'^statefun_route_calls_total\{(?=[^}]*source="ingress")(?=[^}]*target="peer/counter")'
    r'(?=[^}]*outcome="success")[^}]*\}\s+(\S+)$',
    re.MULTILINE,
)
FUNCTION_BATCHES = re.compile(r"^statefun_function_batches_total\{[^}]*\}\s+(\S+)$", re.MULTILINE)
FUNCTION_REQUESTS = re.compile(
    r"^statefun_function_call_latency_seconds_count\{[^}]*\}\s+(\S+)$", re.MULTILINE
)
"""Addresses sent to functions, and HTTP requests that carried them (all function types)."""
say = steps("bench.peer")
"""A line per step on standard error."""


class Failed(Exception):
    """Wrong results: errors or counts that are not exact."""


# --- processes ---------------------------------------------------------------------------


def module_yaml(functions_port: int) -> str:
    """The peer functions' endpoint."""
    return endpoint_yaml("peer/*", functions_port)


@dataclass(slots=True)
class Deployment:
    """The processes of one mode: the broker (if ours), the functions, the runtime(s)."""

    mode: str
    functions: Child
    functions_url: str
    broker: Child | None
    runtimes: list[Child] = field(default_factory=list)
    ingresses: list[str] = field(default_factory=list)

    def check_alive(self) -> None:
        for child in self.all():
            child.check_alive()

    def all(self) -> list[Child]:
        return [c for c in (self.broker, self.functions, *self.runtimes) if c is not None]

    def cpu(self) -> dict[str, float]:
        """CPU seconds now of each role: ``runtime`` (all its processes; with several, also
        ``runtime N`` each), ``functions``, ``broker`` (only ours), ``loadgen`` (this
        process); ``clock``: when."""
        t = os.times()
        out = {
            "clock": time.perf_counter(),
            "runtime": sum(cpu_seconds(c.pid) for c in self.runtimes),
            "functions": cpu_seconds(self.functions.pid),
            "loadgen": t.user + t.system,
        }
        if self.broker is not None:
            out["broker"] = cpu_seconds(self.broker.pid)
        if len(self.runtimes) > 1:
            out |= {f"runtime {n}": cpu_seconds(c.pid) for n, c in enumerate(self.runtimes, 1)}
        return out


def start(
    children: Children,
    mode: str,
    workdir: Path,
    broker: Broker | None,
    interval: float,
    log_level: str = "warning",
) -> Deployment:
    """Start the broker (Kafka modes, unless external), the functions and the runtime
    process(es), in that order (:class:`Children` stops them in reverse)."""
    broker_child: Child | None = None
    bootstrap = ""
    if mode in KAFKA_MODES:
        if broker is None:
            raise BenchError(f"--mode {mode} needs a Kafka broker: {HOW_TO_GET_ONE}")
        if broker.tansu is not None:
            broker_child, bootstrap = start_tansu(children, broker.tansu, workdir / "kafka.log")
        elif broker.external is not None:
            bootstrap = broker.external
    functions_port = free_port()
    module = workdir / "module.yaml"
    module.write_text(module_yaml(functions_port))
    functions = children.start_functions(
        functions_port, workdir, HOST, app="bench.peer_functions:app"
    )
    deployment = Deployment(mode, functions, f"http://{HOST}:{functions_port}", broker_child)
    app_id = f"peer-{uuid.uuid4().hex[:12]}"  # fresh topics and group, also on a shared broker
    for n in range(1, MEMBERS[mode] + 1):
        port = free_port()
        if mode in KAFKA_MODES:
            log_args = ["--kafka", bootstrap, "--app-id", app_id]
            log_args += ["--session-timeout", f"{SESSION_TIMEOUT:g}"]
            log_args += ["--partitions", str(PARTITIONS), "--data-dir", str(workdir / f"data-{n}")]
        else:
            log_args = ["--data-dir", str(workdir / "data")]
        if mode in COMMITTED_MODES:
            log_args += ["--checkpoint-interval", f"{interval:g}"]
        name = "the runtime" if MEMBERS[mode] == 1 else f"runtime {n}"
        runtime = children.start(
            name,
            runtime_command(module, port, *log_args, log_level=log_level),
            workdir / f"runtime-{n}.log",
        )
        deployment.runtimes.append(runtime)
        deployment.ingresses.append(f"http://{HOST}:{port}")
    return deployment


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    """The JSON of a 200 answer; None for anything else (not up yet)."""
    try:
        async with session.get(url) as response:
            return await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def wait_ready(d: Deployment, session: aiohttp.ClientSession) -> None:
    """Until the functions answer and every runtime is ready; with several, until they
    hold one generation of all of them, each owning partitions."""
    await d.functions.wait_healthy(session, f"{d.functions_url}/health")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        d.check_alive()
        ready = [await get_json(session, f"{url}/ready") for url in d.ingresses]
        if all(r is not None for r in ready):
            if len(d.ingresses) == 1:
                return
            views = [await get_json(session, f"{url}/v1/cluster") for url in d.ingresses]
            if all(v is not None for v in views) and all(
                {m["url"] for m in v["members"]} == set(d.ingresses)
                and all(m["partitions"] for m in v["members"])
                and not v["unowned"]
                and v["generation"] == views[0]["generation"]
                for v in views
            ):
                return
        await asyncio.sleep(0.05)
    raise BenchError(f"{d.mode}: the runtime was not ready within {START_TIMEOUT:g} s")


def poll_delay(remaining: int, speed: float) -> float:
    """Seconds until the next read of ``/metrics``: until ``remaining`` sends would be
    applied at ``speed`` per second, within :data:`DRAIN_POLL`."""
    least, most = DRAIN_POLL
    return most if speed <= 0 else min(most, max(least, remaining / speed))


# --- the load generator --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    reps: int
    keys: int
    warmup_s: float
    window_s: float
    lat_max_requests: int
    tput_max_requests: int
    sends: int
    send_cap_s: float
    drain_cap_s: float
    committed_interval: float
    cases: list[str]
    profile: str | None
    profile_dir: Path
    log_level: str = "warning"
    """The runtime processes' ``--log-level``."""
    profile_gil: bool = False
    """Profile only the threads holding the GIL (py-spy ``--gil``)."""


def cores(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Cores each role used between the CPU readings ``a`` and ``b`` (``Deployment.cpu``),
    and the seconds between them (``wall_s``)."""
    wall = b["clock"] - a["clock"]
    return {role: (b[role] - a[role]) / wall for role in a if role != "clock"} | {"wall_s": wall}


class Driver:
    """The load generator of one mode: runs the cases against its deployment."""

    def __init__(self, d: Deployment, session: aiohttp.ClientSession, s: Settings):
        self.d = d
        self.session = session
        self.s = s
        self.query = "&consistency=committed" if d.mode in COMMITTED_MODES else ""
        self._profile_now: str | None = None
        """The case to profile now, if any."""

    async def post_one(self, url: str, body: bytes = b"1") -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``url``: the status and body, or -1 and the error."""
        try:
            async with self.session.post(url, data=body, headers=JSON) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            return -1, repr(e).encode()

    def ingress(self, seq: int) -> str:
        """The ingress the ``seq``-th request goes to (round robin over the processes)."""
        return self.d.ingresses[seq % len(self.d.ingresses)]

    def batch(self, handler: str, seq: int, keys: list[str]) -> tuple[str, bytes]:
        """The batch request sending ``1`` to each of ``keys``: its URL and body."""
        messages = [
            {"address": f"{COUNTER}/{k}", "type": TYPE_OF[handler], "value": 1} for k in keys
        ]
        return f"{self.ingress(seq)}/v1/messages", json.dumps({"messages": messages}).encode()

    def url(self, kind: str, handler: str, seq: int, key: str) -> str:
        ingress = self.ingress(seq)
        return f"{ingress}/v1/{kind}/{COUNTER}/{key}?type={TYPE_OF[handler]}" + (
            self.query if kind == "call" else ""
        )

    async def run_rr(self, case: Case, prefix: str) -> tuple[dict[str, Any], dict[str, int]]:
        """Closed loop: ``case.concurrency`` workers, each awaiting its reply before sending
        the next; keys round-robin from one sequence."""
        s = self.s
        lat_case = case.concurrency == 1
        max_requests = s.lat_max_requests if lat_case else s.tput_max_requests
        seq = issued = errors = done_in_window = 0
        latencies: list[float] = []
        ok: dict[str, int] = {}
        samples: list[str] = []
        t_start = time.perf_counter()
        t_meas = t_start + s.warmup_s
        t_stop = t_meas + s.window_s
        cpu_a: dict[str, float] | None = None
        profiler: Profiler | None = None

        async def window_start() -> None:
            nonlocal cpu_a, profiler
            await asyncio.sleep(max(0.0, t_meas - time.perf_counter()))
            cpu_a = self.d.cpu()
            profiler = self.profiler()

        async def worker() -> None:
            nonlocal seq, issued, errors, done_in_window
            while time.perf_counter() < t_stop and issued < max_requests:
                issued += 1
                key = f"{prefix}{seq % s.keys}"
                url = self.url("call", case.handler, seq, key)
                seq += 1
                t0 = time.perf_counter()
                status, body = await self.post_one(url)
                t1 = time.perf_counter()
                if status == 200:
                    ok[key] = ok.get(key, 0) + 1
                    if t0 >= t_meas and t1 <= t_stop:
                        latencies.append(t1 - t0)
                    if t_meas <= t1 <= t_stop:
                        done_in_window += 1
                else:
                    errors += 1
                    if len(samples) < 3:
                        samples.append(f"{status} {body[:200]!r}")

        starter = asyncio.create_task(window_start())
        try:
            await asyncio.gather(*(worker() for _ in range(case.concurrency)))
        finally:
            await starter
        cpu_b = self.d.cpu()
        profiled = None if profiler is None else profiler.stop()
        latencies.sort()
        window = min(s.window_s, time.perf_counter() - t_meas)
        result: dict[str, Any] = {
            "issued": issued,
            "ok": sum(ok.values()),
            "errors": errors,
            "error_samples": samples,
            "measured": len(latencies),
            "rps": done_in_window / window if window > 0 else None,
            "cpu": None if cpu_a is None else cores(cpu_a, cpu_b),
            "profile": profiled,
        }
        for q in (50, 90, 99):
            result[f"p{q}_ms"] = percentile(latencies, q) * 1e3 if latencies else None
        return result, ok

    async def applied(self) -> int:
        """Messages from the ingress to ``peer/counter`` applied so far, all processes."""
        return int(sum(await self.counted(APPLIED)))

    async def counted(self, *patterns: re.Pattern[str]) -> list[float]:
        """Per pattern, the sum of the metric values it finds, over every process."""
        totals = [0.0] * len(patterns)
        for url in self.d.ingresses:
            async with self.session.get(f"{url}/metrics") as r:
                text = await r.text()
            for i, pattern in enumerate(patterns):
                totals[i] += sum(float(v) for v in pattern.findall(text))
        return totals

    async def run_send(self, case: Case, prefix: str) -> tuple[dict[str, Any], dict[str, int]]:
        """``--sends`` one-way sends, ``case.concurrency`` at a time; then wait (at most
        ``--drain-cap-s``) until every accepted one was applied."""
        s = self.s
        before = await self.applied()
        seq = errors = 0
        accepted: dict[str, int] = {}
        latencies: list[float] = []
        samples: list[str] = []
        first_accepted: float | None = None
        cpu_a = self.d.cpu()
        profiler = self.profiler()
        t0 = time.perf_counter()
        t_cap = t0 + s.send_cap_s

        async def worker() -> None:
            nonlocal seq, errors, first_accepted
            while seq < s.sends and time.perf_counter() < t_cap:
                count = max(1, min(case.batch, s.sends - seq))
                keys = [f"{prefix}{(seq + i) % s.keys}" for i in range(count)]
                if case.batch:
                    url, request = self.batch(case.handler, seq, keys)
                else:
                    url, request = self.url("messages", case.handler, seq, keys[0]), b"1"
                seq += count
                ts = time.perf_counter()
                status, body = await self.post_one(url, request)
                if status == 202:
                    done = time.perf_counter()
                    if first_accepted is None:
                        first_accepted = done
                    for key in keys:
                        accepted[key] = accepted.get(key, 0) + 1
                    latencies.append(done - ts)
                else:
                    errors += 1
                    if len(samples) < 3:
                        samples.append(f"{status} {body[:200]!r}")

        await asyncio.gather(*(worker() for _ in range(case.concurrency)))
        t_sent = time.perf_counter()
        cpu_sent = self.d.cpu()
        n = sum(accepted.values())
        applied, polls = 0, 0
        t_applied: float | None = None
        last = (time.perf_counter(), 0)
        while time.perf_counter() < t_sent + s.drain_cap_s:
            applied = await self.applied() - before
            polls += 1
            now = time.perf_counter()
            if applied >= n:
                t_applied = now
                break
            self.d.check_alive()
            # Poll again when the rate seen since the last poll would apply the rest.
            speed = (applied - last[1]) / (now - last[0]) if now > last[0] else 0.0
            last = (now, applied)
            await asyncio.sleep(poll_delay(n - applied, speed))
        cpu_b = self.d.cpu()
        profiled = None if profiler is None else profiler.stop()
        latencies.sort()
        send_wall = t_sent - t0
        span = None if t_applied is None or first_accepted is None else t_applied - first_accepted
        result: dict[str, Any] = {
            "accepted": n,
            "errors": errors,
            "error_samples": samples,
            "applied": applied,
            "drained": t_applied is not None,
            "accept_rps": n / send_wall,
            "send_wall_s": send_wall,
            "accept_p50_ms": percentile(latencies, 50) * 1e3 if latencies else None,
            "accept_p99_ms": percentile(latencies, 99) * 1e3 if latencies else None,
            "processed_rps": n / span if span else None,
            "end_to_end_s": None if t_applied is None else t_applied - t0,
            "metrics_polls": polls,
            "cpu_send_phase": cores(cpu_a, cpu_sent),
            "cpu": cores(cpu_a, cpu_b),
            "profile": profiled,
        }
        if t_applied is None:
            errors += n - applied
            result["errors"] = errors
            result["error_samples"].append(
                f"only {applied} of {n} sends applied within {s.drain_cap_s:g} s"
            )
        return result, accepted

    async def verify(self, expected: dict[str, int]) -> dict[str, Any]:
        """Read every key's count back (``GET /v1/state``, through the ingresses in turn)."""
        keys = list(expected)
        got: dict[str, int | None] = {}
        queue = iter(enumerate(keys))

        async def worker() -> None:
            for n, key in queue:
                ingress = self.ingress(n)
                async with self.session.get(f"{ingress}/v1/state/{COUNTER}/{key}") as r:
                    if r.status != 200:
                        got[key] = None
                        continue
                    state = (await r.json())["state"]
                got[key] = int(state["count"]["value"]) if "count" in state else 0

        await asyncio.gather(*(worker() for _ in range(VERIFY_CONCURRENCY)))
        bad = [k for k in keys if got.get(k) != expected[k]]
        return {
            "keys": len(keys),
            "mismatches": len(bad),
            "sum_expected": sum(expected.values()),
            "sum_read": sum(v for v in got.values() if v is not None),
            "examples": [(k, expected[k], got.get(k)) for k in bad[:3]],
            "exact": not bad,
        }

    def profiler(self) -> Profiler | None:
        """A py-spy profile of the (first) runtime process, if asked for this case now."""
        if self._profile_now is None:
            return None
        self.s.profile_dir.mkdir(parents=True, exist_ok=True)
        path = self.s.profile_dir / f"peer-profile-{self.d.mode}-{self._profile_now}.folded"
        return Profiler(self.d.runtimes[0].pid, path, gil=self.s.profile_gil)

    async def case(self, name: str, rep: int, tag: str) -> dict[str, Any]:
        case = CASES[name]
        prefix = f"{tag}-{name}-r{rep}-"
        self._profile_now = name if self.s.profile == name and rep == 1 else None
        before = await self.counted(FUNCTION_BATCHES, FUNCTION_REQUESTS)
        if case.kind == "rr":
            result, expected = await self.run_rr(case, prefix)
        else:
            result, expected = await self.run_send(case, prefix)
        self._profile_now = None
        after = await self.counted(FUNCTION_BATCHES, FUNCTION_REQUESTS)
        batches, requests = (b - a for a, b in zip(before, after, strict=True))
        result["addresses_per_request"] = batches / requests if requests else None
        result["verify"] = await self.verify(expected)
        result["case"], result["rep"] = name, rep
        return result


# --- the profile -------------------------------------------------------------------------

CATEGORIES = {
    "ingress HTTP server and framework (uvicorn, starlette, fastapi)": (
        "(uvicorn/",
        "(starlette/",
        "(fastapi/",
        "(httptools/",
    ),
    "function client (httpx, aiohttp)": ("(httpx/", "(httpcore/", "(aiohttp/", "(httpx_aiohttp/"),
    "worker (runtime/worker.py)": ("(runtime/worker.py",),
    "sqlite (the embedded log and the checkpoint store)": (
        "(runtime/log/sqlite.py",
        "(runtime/checkpoints/store.py",
        "(sqlite3/",
    ),
    "kafka client (kafka-python, runtime/log/kafka.py)": ("(kafka/", "(runtime/log/kafka.py"),
}
"""What the profile's summary gives the share of: a sample is inside if any frame of its
stack is in one of these files (py-spy names a frame ``function (path:line)``)."""
MAIN_THREAD = "MainThread"


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` of one process, raw (folded stacks) to ``path``, until stopped."""

    def __init__(self, pid: int, path: Path, gil: bool = False):
        binary = py_spy()
        if binary is None:
            raise BenchError("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
        self.path = path
        self.gil = gil
        self.process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--output",
                str(path),
                "--rate",
                "100",
                "--nonblocking",
                "--threads",
                *(["--gil"] if gil else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> dict[str, Any]:
        """Stop recording; a summary of what it recorded."""
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        if not self.path.exists():
            return {"file": str(self.path), "error": err.decode(errors="replace")[-500:]}
        return summarize(self.path) | {"gil": self.gil}


def frames_of(line: str) -> tuple[list[str], int]:
    """A folded stack line ``a;b;c N``: its frames (outermost first) and its count."""
    stack, _, count = line.rpartition(" ")
    return stack.split(";"), int(count)


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """Top frames by their own share, and the share of the samples (inclusive) in each
    of :data:`CATEGORIES`, of all threads and of the main thread (the event loop)."""
    total = main = 0
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    inside_main: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        frames, count = frames_of(line)
        total += count
        thread = frames[0] if frames[0].startswith("thread") else "?"
        threads[thread] += count
        in_main = thread.endswith(MAIN_THREAD)
        main += count if in_main else 0
        code = [f for f in frames if not f.startswith(("thread", "process"))]
        if code:
            own[code[-1]] += count
        for category, needles in CATEGORIES.items():
            if any(n in f for f in code for n in needles):
                inside[category] += count
                inside_main[category] += count if in_main else 0
    return {
        "file": str(path),
        "samples": total,
        "main_thread_samples": main,
        "threads": {t: n / total for t, n in threads.most_common(6)} if total else {},
        "categories": {c: inside[c] / total if total else 0.0 for c in CATEGORIES},
        "categories_main": {c: inside_main[c] / main if main else 0.0 for c in CATEGORIES},
        "top_own": [(f, n / total) for f, n in own.most_common(top)],
    }


def profile_text(mode: str, case: str, p: dict[str, Any]) -> str:
    if "error" in p:
        return f"profile of {mode} {case}: py-spy wrote nothing: {p['error']}"
    lines = [
        f"profile of the runtime (its first process), {mode}, {case}: {p['samples']} samples "
        f"(100 Hz, {'the thread holding the GIL' if p.get('gil') else 'all threads'}, "
        f"idle excluded), raw stacks in {p['file']}",
        "  samples per thread:",
    ]
    lines += [f"  {share:6.1%}  {thread}" for thread, share in p["threads"].items()]
    lines.append("  share of the samples inside (inclusive), all threads / the main thread:")
    lines += [
        f"  {share:6.1%} / {p['categories_main'][c]:6.1%}  {c}"
        for c, share in p["categories"].items()
    ]
    lines.append(
        "  top frames by their own share (Runner.run: the event loop's own C code, uvloop):"
    )
    lines += [f"  {share:6.1%}  {frame[:140]}" for frame, share in p["top_own"]]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------


async def measure(
    d: Deployment, s: Settings, tag: str, plan: Sequence[tuple[int, str]]
) -> dict[str, Any]:
    """Run the ``(rep, case)`` runs of ``plan`` against ``d``, in order."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await wait_ready(d, session)
        a = d.cpu()
        await asyncio.sleep(1.0)
        idle = cores(a, d.cpu())
        driver = Driver(d, session, s)
        runs: list[dict[str, Any]] = []
        for rep, name in plan:
            say(f"{d.mode}: {name}, rep {rep} of {s.reps}")
            d.check_alive()
            result = await driver.case(name, rep, tag)
            runs.append(result)
            await asyncio.sleep(PAUSE_S)
        return {"idle": idle, "runs": runs}


def plans(mode: str, s: Settings, broker: Broker | None) -> list[list[tuple[int, str]]]:
    """The runs of a mode, grouped by the deployment they share: one for all of them,
    except on a Tansu broker of our own, which gets a fresh one (and fresh processes) per
    run: Tansu keeps every record and each fetch walks a partition's batches, so a broker
    that served earlier cases slows the later ones (a Kafka broker finds an offset by its
    index and deletes by retention)."""
    runs = [(rep, name) for rep in range(1, s.reps + 1) for name in s.cases]
    if mode in KAFKA_MODES and broker is not None and broker.tansu is not None:
        return [[run] for run in runs]
    return [runs]


def problems_of(run: dict[str, Any]) -> list[str]:
    out = []
    if run["errors"]:
        out.append(f"{run['errors']} errors, e.g. {run['error_samples'][:2]}")
    v = run["verify"]
    if not v["exact"]:
        out.append(
            f"{v['mismatches']} of {v['keys']} keys wrong (sum read {v['sum_read']}, "
            f"acknowledged {v['sum_expected']}), e.g. {v['examples']}"
        )
    return out


def run_mode(
    mode: str, s: Settings, workdir: Path, broker: Broker | None, tag: str
) -> tuple[int, dict[str, Any] | None]:
    """One mode: per deployment of :func:`plans`, start its processes, run its cases and
    stop them; (status, results)."""
    workdir.mkdir()
    status = 0
    idle: dict[str, float] | None = None
    runs: list[dict[str, Any]] = []
    problems: list[tuple[Child, str]] = []
    groups = plans(mode, s, broker)
    for plan in groups:
        where = workdir if len(groups) == 1 else workdir / "-".join(map(str, plan[0]))
        where.mkdir(exist_ok=True)
        with Children() as children:
            started: list[Child] = []
            try:
                say(f"{mode}: starting the processes")
                d = start(children, mode, where, broker, s.committed_interval, s.log_level)
                started = d.all()
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    found = runner.run(measure(d, s, tag, plan))
            except (BenchError, aiohttp.ClientError, TimeoutError) as e:
                print(f"{mode}: bench: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                for child in started:
                    print(
                        f"--- {child.name}, {child.log_path}:\n{child.log_tail()}", file=sys.stderr
                    )
                return 2, None
            problems += [(c, line) for c in started for line in c.problems()]
        idle = idle or found["idle"]
        runs += found["runs"]
    for run in runs:
        for problem in problems_of(run):
            print(f"{mode}: {run['case']} rep {run['rep']}: FAILED: {problem}", flush=True)
            status = 1
    if problems:
        print(f"{mode}: {len(problems)} lines at WARNING or above in the children's logs, e.g.:")
        for child, line in problems[:3]:
            print(f"  {child.log_path.name}: {line[:220]}")
    return status, {"idle": idle, "runs": runs}


# --- the tables ----------------------------------------------------------------------------


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def number(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}/s"


def per_request(run: dict[str, Any], role: str) -> float | None:
    """CPU ms per request of a role in a run (per accepted send for the send case)."""
    cpu = run.get("cpu")
    if not cpu or role not in cpu:
        return None
    n = run.get("rps") if "rps" in run else run["accepted"] / cpu["wall_s"]
    return cpu[role] / n * 1e3 if n else None


def main_table(results: dict[str, dict[str, Any]], s: Settings) -> str:
    modes = list(results)
    header = "| case | " + " | ".join(modes) + " |"
    lines = [header, "|---|" + "---|" * len(modes)]
    by = {m: _by_case(results[m]["runs"]) for m in modes}
    for name in s.cases:
        case = CASES[name]
        cells = []
        for m in modes:
            runs = by[m].get(name, [])
            if not runs:
                cells.append("-")
            elif case.kind == "rr":
                p50 = median([r["p50_ms"] for r in runs])
                p99 = median([r["p99_ms"] for r in runs])
                rps = median([r["rps"] for r in runs])
                cells.append(f"{number(p50)} / {number(p99)} ms, {rate(rps)}")
            else:
                acc = median([r["accept_rps"] for r in runs])
                done = median([r["processed_rps"] for r in runs])
                cells.append(f"{rate(acc)} / {rate(done)}")
        what = case.what if case.kind == "send" else f"{case.what}: p50 / p99, req/s"
        lines.append(f"| {what} (`{name}`) | " + " | ".join(cells) + " |")
    if "rr_add_c64" in s.cases:
        cells = []
        for m in modes:
            runs = by[m].get("rr_add_c64", [])
            runtime = median([per_request(r, "runtime") for r in runs])
            broker = median([per_request(r, "broker") for r in runs])
            extra = "" if broker is None else f" + {number(broker)} broker"
            cells.append(f"{number(runtime)} ms{extra}")
        lines.append("| runtime CPU per 1-hop call at c64 | " + " | ".join(cells) + " |")
    cells = []
    for m in modes:
        runs = results[m]["runs"]
        exact = all(r["verify"]["exact"] for r in runs)
        errors = sum(r["errors"] for r in runs)
        cells.append(f"{'yes' if exact else 'NO'} ({len(runs)} runs, {errors} errors)")
    lines.append("| counts exact | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(results: dict[str, dict[str, Any]], s: Settings) -> str:
    roles = ["runtime", "functions", "broker", "loadgen"]
    lines = [
        "| mode | case | req/s | "
        + " | ".join(f"{r} cores" for r in roles)
        + " | "
        + " | ".join(f"{r} ms/req" for r in roles)
        + " | addresses per function request |",
        "|---|---|" + "---:|" * (2 + 2 * len(roles)),
    ]
    for m, result in results.items():
        by = _by_case(result["runs"])
        for name in s.cases:
            runs = by.get(name, [])
            if not runs:
                continue
            rps = median(
                [r["rps"] if "rps" in r else r.get("processed_rps") for r in runs],
            )
            core = [median([(r["cpu"] or {}).get(role) for r in runs]) for role in roles]
            ms = [median([per_request(r, role) for r in runs]) for role in roles]
            cells = ["-" if c is None else number(c) for c in core]
            each = [median([(r["cpu"] or {}).get(f"runtime {n}") for r in runs]) for n in (1, 2, 3)]
            if each[0] is not None:  # several runtime processes: each one's share too
                cells[0] += " (" + " ".join(number(c) for c in each if c is not None) + ")"
            lines.append(
                f"| {m} | {name} | {number(rps, 0)} | "
                + " | ".join(cells)
                + " | "
                + " | ".join("-" if v is None else number(v) for v in ms)
                + f" | {number(median([r.get('addresses_per_request') for r in runs]), 1)} |"
            )
    return "\n".join(lines)


def _by_case(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["case"], []).append(r)
    return by


# --- command line --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer",
        description="The Restate comparison's six cases against this runtime, per mode.",
    )
    parser.add_argument(
        "--mode",
        action="append",
        choices=MODES,
        help="embedded, committed, kafka, kafka-committed, kafka3; repeatable (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK['reps']} rep, {QUICK['window_s']:g} s windows, "
        f"{QUICK['sends']} sends",
    )
    parser.add_argument("--reps", type=int, help=f"repetitions (default {DEFAULTS['reps']})")
    parser.add_argument(
        "--only", help="comma-separated case names (default all: " + ",".join(CASES) + ")"
    )
    parser.add_argument("--keys", type=int, default=1000, help="fresh keys per case and rep")
    parser.add_argument("--warmup-s", type=float, help="warm-up per case (default 1)")
    parser.add_argument("--window-s", type=float, help="measured window per case (default 10)")
    parser.add_argument("--lat-max-requests", type=int, default=5000, help="cap at c1")
    parser.add_argument("--tput-max-requests", type=int, default=200_000, help="cap at c8/c64")
    parser.add_argument("--sends", type=int, help="one-way sends (default 20000)")
    parser.add_argument("--send-cap-s", type=float, default=30.0)
    parser.add_argument("--drain-cap-s", type=float, default=120.0)
    parser.add_argument(
        "--committed-interval",
        type=float,
        default=COMMITTED_INTERVAL,
        metavar="SECONDS",
        help="the committed mode's --checkpoint-interval (default 0.1)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="save the raw results")
    parser.add_argument(
        "--profile",
        choices=list(CASES),
        metavar="CASE",
        help="record a py-spy profile of the runtime during this case's first rep, per mode",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="profile only the threads holding the GIL (what costs Python time), not all",
    )
    parser.add_argument(
        "--profile-dir", type=Path, default=Path("."), help="where profiles go (default .)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="the runtime processes' log level, in their logs (default warning)",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("reps", "keys", "sends", "lat_max_requests", "tput_max_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup_s", "window_s", "send_cap_s", "drain_cap_s", "committed_interval"):
        if not getattr(args, name) > 0 and not (name == "warmup_s" and args.warmup_s == 0):
            parser.error(f"--{name.replace('_', '-')} must be more than 0 seconds")
    args.cases = list(CASES) if not args.only else args.only.split(",")
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"--only: unknown cases {unknown}; the cases are {', '.join(CASES)}")
    if args.profile is not None:
        if py_spy() is None:
            parser.error("--profile needs py-spy: .venv/bin/pip install -e '.[bench]'")
        if args.profile not in args.cases:
            parser.error(f"--profile {args.profile}: that case is not run (--only)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes: list[str] = args.mode or MODES
    broker = find_broker() if any(m in KAFKA_MODES for m in modes) else None
    if broker is None and any(m in KAFKA_MODES for m in modes):
        if args.mode:
            print(f"bench: error: the Kafka modes need a broker: {HOW_TO_GET_ONE}", file=sys.stderr)
            return 2
        print(f"note: no Kafka broker, so no Kafka modes: {HOW_TO_GET_ONE}", flush=True)
        modes = [m for m in modes if m not in KAFKA_MODES]
    s = Settings(
        args.reps,
        args.keys,
        args.warmup_s,
        args.window_s,
        args.lat_max_requests,
        args.tput_max_requests,
        args.sends,
        args.send_cap_s,
        args.drain_cap_s,
        args.committed_interval,
        args.cases,
        args.profile,
        args.profile_dir.resolve(),
        args.log_level,
        args.profile_gil,
    )
    workdir = Path(tempfile.mkdtemp(prefix="statefun-bench-peer-"))
    kafka = "" if broker is None else f" (Kafka: {broker.describe()})"
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, modes: {', '.join(modes)}"
        f"{kafka}, work directory {workdir}",
        flush=True,
    )
    tag = f"t{int(time.time()) % 100000}"
    status = 0
    results: dict[str, dict[str, Any]] = {}
    try:
        for mode in modes:
            mode_status, found = run_mode(mode, s, workdir / mode, broker, tag)
            status = max(status, mode_status)
            if found is not None:
                results[mode] = found
    except KeyboardInterrupt as e:
        print(f"bench: interrupted ({str(e) or 'SIGINT'}); the processes were stopped")
        status = 130
    if results:
        print_results(results, s)
    if args.json is not None:
        settings = asdict(s) | {"profile_dir": str(s.profile_dir), "modes": modes}
        args.json.write_text(json.dumps({"settings": settings, "modes": results}, indent=1))
    if args.keep or status not in (0, 130):
        print(f"kept {workdir} (per mode: module.yaml, the children's logs, the data)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


def print_results(results: dict[str, dict[str, Any]], s: Settings) -> None:
    print(
        f"\nMedians of {s.reps} interleaved run(s) per case; {s.keys} fresh keys per case and "
        f"run; {s.warmup_s:g} s warm-up, {s.window_s:g} s measured (c1 at most "
        f"{s.lat_max_requests} requests); {s.sends} sends at concurrency 64; committed: "
        f"checkpoints every {s.committed_interval:g} s. Sends processed: accepted / (the last "
        f"applied - the first accepted), seen on /metrics every {DRAIN_POLL[0] * 1000:g}-"
        f"{DRAIN_POLL[1] * 1000:g} ms.\n"
    )
    print(main_table(results, s))
    print(
        "\nCPU (cores in the measured window; ms of CPU per request; sends: per accepted "
        "send, over sending and applying):\n"
    )
    print(cpu_table(results, s))
    idle = " ".join(
        f"{m}: runtime {r['idle']['runtime']:.3f}"
        + (f", broker {r['idle']['broker']:.3f}" if "broker" in r["idle"] else "")
        for m, r in results.items()
    )
    print(f"\nIdle cores (1 s before the first case): {idle}")
    for m, r in results.items():
        for run in r["runs"]:
            if run.get("profile"):
                print("\n" + profile_text(m, run["case"], run["profile"]))


if __name__ == "__main__":
    sys.exit(main())
