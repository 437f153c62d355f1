"""The pipeline benchmark: ``python -m bench`` from the repository root.

Owns the end-to-end measurement of the runtime. For each log (``--log``: the embedded
SQLite log, Kafka, or both in turn) it starts the bench functions (``bench/functions.py``,
uvicorn) and the runtime (``python -m runtime.cli run``, as users run it; with
``--kafka`` on a Tansu broker started for the run, see ``bench/_kafka.py``) as separate
processes on loopback, drives a fixed workload through the HTTP ingress with an aiohttp
client, verifies the results, stops every process whatever happens, and prints one
table whose rows name their log.

Modes:

* ``call``: ``POST /v1/call/bench/first/{id}``; the answer comes back after
  ingress -> first -> second -> reply, so each latency is end to end.
* ``send``: ``POST /v1/messages/bench/first/{id}`` (fire and forget: 202 once the
  message is durable). Two rows: ``send accepted`` (the ingress alone: until the last
  202, with the 202 latencies) and ``send processed`` (until every message has gone
  through both functions: its output is read from the ``bench/done`` egress).

``--checkpoint-interval`` (one or more values, each a run of its own) is passed to the
runtime; at 0 (no checkpoints) the ``bench/done`` egress is declared at-least-once,
since an exactly-once egress publishes its records only when a checkpoint commits.

Message ``i`` goes to address ``i % addresses`` (each mode has its own ids). Every run
ends by checking that each address's ``count`` state equals the messages sent to it
and that its outputs (replies or egress records) are exactly ``1..n``; otherwise it
prints a FAILED line and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop

from bench._kafka import HOW_TO_GET_ONE, Broker, find_broker, start_tansu
from bench._support import (
    HOST,
    BenchError,
    Child,
    Children,
    Workload,
    endpoint_yaml,
    format_table,
    free_port,
    percentile,
    thread_cpu_seconds,
)
from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.progress import steps

QUICK = {"messages": 1_500, "addresses": 150, "concurrency": 64}
DEFAULTS = {"messages": 20_000, "addresses": 1_000, "concurrency": 64}
KAFKA_DEFAULTS = {"messages": 5_000, "addresses": 500, "concurrency": 64}
"""Smaller: the Tansu test broker slows down as its partitions fill (every fetch walks
every stored batch), so at 20,000 messages a Kafka run measures mostly the broker."""
CALL_TIMEOUT = 120.0
PROGRESS_TIMEOUT = 60.0
"""A mode fails if no message completes for this long."""
EGRESS_POLL_INTERVAL = 0.05
STATE_CHECK_CONCURRENCY = 16
DEFAULT_CHECKPOINT_INTERVAL = CheckpointConfig().interval
"""The runtime's own default (``statefun run --checkpoint-interval``)."""
EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
TEXT = {"content-type": "text/plain; charset=utf-8"}
say = steps("bench")
"""A line per step on standard error."""


def interval_text(seconds: float) -> str:
    """A checkpoint interval for a table: ``off`` for 0, else seconds."""
    return "off" if seconds == 0 else f"{seconds:g} s"


def egress_semantic(interval: float, asked: str | None) -> str:
    """The ``bench/done`` egress's delivery semantic: the one asked for, else exactly-once
    (the runtime's default), except without checkpoints: an exactly-once egress publishes
    when a checkpoint commits, so with none its records would never come out."""
    if asked is not None:
        return asked
    return AT_LEAST_ONCE if interval == 0 else EXACTLY_ONCE


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What one log's run passes to its runtime."""

    checkpoint_interval: float
    egress: str
    """The ``bench/done`` egress's ``deliverySemantic``."""
    profile: Path | None = None
    """Run the runtime under cProfile, writing its stats here."""
    extra_module: str = ""
    """More module.yaml documents (``python -m bench.checkpoints``: a second egress)."""
    runtime_module: str = "runtime.cli"
    """The module the runtime runs as (``python -m bench.metrics``: one without metrics)."""
    runtime_args: tuple[str, ...] = ()
    """More ``statefun run`` options (``python -m bench.checkpoints --no-demand``)."""


@dataclass(frozen=True, slots=True)
class Row:
    log: str
    checkpoint_interval: float
    egress: str
    """The egress's delivery semantic, for the ``send`` rows; ``-`` for ``call``."""
    mode: str
    workload: Workload
    elapsed: float
    latencies: Sequence[float] | None
    """Seconds, sorted; None where there is no per-message latency to report."""
    runtime_cpu: float
    runtime_loop_cpu: float
    functions_cpu: float
    client_cpu: float
    broker_cpu: float | None
    """None without a broker process of ours (the embedded log, or an external broker)."""

    def cells(self) -> list[str]:
        w = self.workload
        if self.latencies:
            p50 = f"{percentile(self.latencies, 50) * 1000:.1f}"
            p99 = f"{percentile(self.latencies, 99) * 1000:.1f}"
        else:
            p50 = p99 = "-"
        return [
            self.log,
            interval_text(self.checkpoint_interval),
            self.mode,
            self.egress,
            f"{w.messages}",
            f"{w.addresses}",
            f"{w.concurrency}",
            f"{self.elapsed:.2f}",
            f"{w.messages / self.elapsed:.0f}",
            p50,
            p99,
            f"{self.runtime_cpu:.2f}",
            f"{self.runtime_cpu / w.messages * 1000:.2f}",
            f"{self.runtime_loop_cpu:.2f}",
            f"{self.functions_cpu:.2f}",
            "-" if self.broker_cpu is None else f"{self.broker_cpu:.2f}",
            f"{self.client_cpu:.2f}",
        ]


HEADERS = [
    "log",
    "checkpoints",
    "mode",
    "egress",
    "messages",
    "addresses",
    "concurrency",
    "elapsed s",
    "messages/s",
    "p50 ms",
    "p99 ms",
    "runtime cpu s",
    "runtime ms/msg",
    "runtime loop s",
    "functions cpu s",
    "broker cpu s",
    "client cpu s",
]


class Failed(Exception):
    """The results are wrong (as opposed to the benchmark being unable to run)."""


@dataclass(slots=True)
class Cpu:
    """CPU seconds of the runtime (all threads, and its main thread: the event loop), the
    functions, the Kafka broker (if ours) and this process at one moment."""

    runtime: float
    runtime_loop: float
    functions: float
    broker: float | None
    client: float


@dataclass(frozen=True, slots=True)
class Processes:
    """The child processes of one log's run, and where they answer."""

    log: str
    config: RunConfig
    runtime: Child
    functions: Child
    broker: Child | None
    """The Tansu broker started for a Kafka run; None for the embedded log or an external
    broker."""
    ingress: str
    functions_url: str

    def all(self) -> list[Child]:
        return [c for c in (self.runtime, self.functions, self.broker) if c is not None]


class Pipeline:
    """The child processes and the ingress client of one log's run."""

    def __init__(self, processes: Processes, session: aiohttp.ClientSession):
        self.processes = processes
        self.ingress = processes.ingress
        self.session = session
        self.egress_next = 0
        """The ``bench/done`` egress offset after the last record read."""

    def cpu(self) -> Cpu:
        p = self.processes
        loop, others = thread_cpu_seconds(p.runtime.pid)
        broker = None if p.broker is None else p.broker.cpu_seconds()
        return Cpu(loop + others, loop, p.functions.cpu_seconds(), broker, time.process_time())

    def row(self, mode: str, w: Workload, start: float, cpu0: Cpu, lat: list[float] | None) -> Row:
        elapsed = time.perf_counter() - start
        cpu = self.cpu()
        return Row(
            self.processes.log,
            self.processes.config.checkpoint_interval,
            self.processes.config.egress if mode.startswith("send") else "-",
            mode,
            w,
            elapsed,
            sorted(lat) if lat is not None else None,
            cpu.runtime - cpu0.runtime,
            cpu.runtime_loop - cpu0.runtime_loop,
            cpu.functions - cpu0.functions,
            cpu.client - cpu0.client,
            None if cpu.broker is None or cpu0.broker is None else cpu.broker - cpu0.broker,
        )

    def check_alive(self) -> None:
        for child in self.processes.all():
            child.check_alive()

    # --- driving the ingress -----------------------------------------------------------

    async def drive(
        self, w: Workload, ids: list[str], kind: str, expected_status: int
    ) -> tuple[list[float], list[tuple[str, bytes]]]:
        """POST message ``i`` to ``/v1/{kind}/bench/first/{ids[i % len(ids)]}`` for every i,
        ``w.concurrency`` at a time; the latency (seconds) and (id, body) of each answer."""
        latencies: list[float] = []
        answers: list[tuple[str, bytes]] = []
        errors: list[str] = []
        numbers = iter(range(w.messages))
        base = f"{self.ingress}/v1/{kind}/bench/first/"
        params = {"timeout": f"{CALL_TIMEOUT:g}"} if kind == "call" else None

        async def one_worker() -> None:
            for i in numbers:  # shared: each message is taken by exactly one worker
                id_ = ids[i % len(ids)]
                started = time.perf_counter()
                async with self.session.post(
                    base + id_, data=str(i).encode(), headers=TEXT, params=params
                ) as response:
                    body = await response.read()
                if response.status != expected_status:
                    errors.append(f"{id_}: {response.status} {body[:300]!r}")
                    continue
                latencies.append(time.perf_counter() - started)
                answers.append((id_, body))

        await asyncio.gather(*(one_worker() for _ in range(w.concurrency)))
        if errors:
            raise Failed(f"{w.mode}: {len(errors)} requests were refused, e.g. {errors[0]}")
        return latencies, answers

    async def run_call(self, w: Workload, prefix: str = "call") -> list[Row]:
        ids = w.ids(prefix)
        cpu0, start = self.cpu(), time.perf_counter()
        latencies, answers = await self.drive(w, ids, "call", 200)
        row = self.row("call", w, start, cpu0, latencies)
        outputs: dict[str, list[int]] = defaultdict(list)
        for _, body in answers:
            id_, count = str(json.loads(body)["value"]).rsplit(":", 1)
            outputs[id_].append(int(count))
        await self.verify(w, ids, outputs)
        return [row]

    async def run_send(self, w: Workload, prefix: str = "send") -> list[Row]:
        ids = w.ids(prefix)
        outputs: dict[str, list[int]] = defaultdict(list)
        cpu0, start = self.cpu(), time.perf_counter()
        reader = asyncio.create_task(self.read_egress(w.messages, outputs))
        try:
            latencies, _ = await self.drive(w, ids, "messages", 202)
            accepted = self.row("send accepted", w, start, cpu0, latencies)
            await reader
        finally:
            reader.cancel()
        processed = self.row("send processed", w, start, cpu0, None)
        await self.verify(w, ids, outputs)
        return [accepted, processed]

    async def read_egress(self, count: int, outputs: dict[str, list[int]]) -> None:
        """Read ``count`` new records of the ``bench/done`` egress into ``outputs``."""
        url = f"{self.ingress}/v1/egress/bench/done"
        seen, last_progress = 0, time.monotonic()
        while seen < count:
            params = {"from": str(self.egress_next), "limit": "10000"}
            async with self.session.get(url, params=params) as response:
                if response.status != 200:
                    raise Failed(f"GET {url} answered {response.status}: {await response.text()}")
                page = await response.json()
            for record in page["records"]:
                id_, n = str(record["value"]).rsplit(":", 1)
                outputs[id_].append(int(n))
            seen += len(page["records"])
            self.egress_next = page["next"]
            if page["records"]:
                last_progress = time.monotonic()
                continue
            if time.monotonic() - last_progress > PROGRESS_TIMEOUT:
                raise Failed(
                    f"only {seen} of {count} messages came out of the pipeline "
                    f"(nothing new for {PROGRESS_TIMEOUT:g} s)"
                )
            self.check_alive()
            await asyncio.sleep(EGRESS_POLL_INTERVAL)
        if seen > count:
            raise Failed(f"{seen} egress records for {count} messages")

    # --- correctness -------------------------------------------------------------------

    async def verify(self, w: Workload, ids: list[str], outputs: dict[str, list[int]]) -> None:
        """Each address's ``count`` equals the messages sent to it, and its outputs are 1..n."""
        counts = await self.counts(ids)
        wrong: list[str] = []
        for id_, expected in zip(ids, w.expected(), strict=True):
            if counts[id_] != expected:
                wrong.append(f"{id_}: count {counts[id_]}, sent {expected}")
            elif sorted(outputs.get(id_, [])) != list(range(1, expected + 1)):
                got = sorted(outputs.get(id_, []))
                wrong.append(f"{id_}: outputs {got[:5]}... ({len(got)}), expected 1..{expected}")
        if wrong:
            raise Failed(
                f"{w.mode}: {len(wrong)} of {len(ids)} addresses are wrong, e.g. {'; '.join(wrong[:3])}"
            )

    async def counts(self, ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        queue = iter(ids)

        async def one_worker() -> None:
            for id_ in queue:
                url = f"{self.ingress}/v1/state/bench/first/{id_}"
                async with self.session.get(url) as response:
                    if response.status != 200:
                        raise Failed(
                            f"GET {url} answered {response.status}: {await response.text()}"
                        )
                    state = (await response.json())["state"]
                out[id_] = int(state["count"]["value"]) if "count" in state else 0

        await asyncio.gather(*(one_worker() for _ in range(STATE_CHECK_CONCURRENCY)))
        return out


# --- the run ---------------------------------------------------------------------------


def module_yaml(functions_port: int, egress: str = EXACTLY_ONCE, extra: str = "") -> str:
    """The bench functions' endpoint and the ``bench/done`` egress, ``egress`` its
    delivery semantic; then ``extra`` (more documents, each starting with ``---``)."""
    delivery = "" if egress == EXACTLY_ONCE else f"  deliverySemantic:\n    type: {egress}\n"
    return f"""{endpoint_yaml("bench/*", functions_port)}---
kind: statefun.v1/egress
spec:
  id: bench/done
{delivery}{extra}"""


def start_processes(
    children: Children, log: str, workdir: Path, config: RunConfig, broker: Broker | None
) -> Processes:
    """Start the Kafka broker (for a Kafka run without an external one), the functions
    and the runtime, in that order: :class:`Children` stops them in reverse."""
    broker_child: Child | None = None
    log_args = ["--data-dir", str(workdir / "data")]
    if log == "kafka":
        if broker is None:
            raise BenchError("no Kafka broker for the Kafka run")
        if broker.tansu is not None:
            broker_child, bootstrap = start_tansu(children, broker.tansu, workdir / "kafka.log")
        elif broker.external is not None:
            bootstrap = broker.external
        else:
            raise BenchError(f"no Kafka broker in {broker}")
        # A fresh app id: fresh topics and consumer group, also on a shared broker.
        app_id = f"bench-{uuid.uuid4().hex[:12]}"
        # A member of an application of one, its checkpoints in Kafka; a short session
        # timeout, since the test broker makes a join wait half of it.
        log_args = ["--kafka", bootstrap, "--app-id", app_id, "--session-timeout", "2"]
    functions_port, ingress_port = free_port(), free_port()
    module = workdir / "module.yaml"
    module.write_text(module_yaml(functions_port, config.egress, config.extra_module))
    functions = children.start_functions(functions_port, workdir, HOST)
    profiler = [] if config.profile is None else ["-m", "cProfile", "-o", str(config.profile)]
    runtime = children.start(
        "the runtime",
        [
            sys.executable,
            *profiler,
            "-m",
            config.runtime_module,
            "run",
            "--module",
            str(module),
            *log_args,
            "--checkpoint-interval",
            f"{config.checkpoint_interval:g}",
            "--ingress-host",
            HOST,
            "--ingress-port",
            str(ingress_port),
            "--log-level",
            "warning",
            *config.runtime_args,
        ],
        workdir / "runtime.log",
    )
    return Processes(
        log,
        config,
        runtime,
        functions,
        broker_child,
        f"http://{HOST}:{ingress_port}",
        f"http://{HOST}:{functions_port}",
    )


async def measure(processes: Processes, modes: list[Workload]) -> list[Row]:
    connector = aiohttp.TCPConnector(limit=max(w.concurrency for w in modes) + 4)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await processes.functions.wait_healthy(session, f"{processes.functions_url}/health")
        await processes.runtime.wait_healthy(session, f"{processes.ingress}/health")
        pipeline = Pipeline(processes, session)
        say(f"{processes.log}: warming up")
        # Warm up (connections, state spec registration, code paths); checked, not shown.
        await pipeline.run_call(Workload(200, 50, 16, "warm-up call"), prefix="warmup-call")
        await pipeline.run_send(Workload(200, 50, 16, "warm-up send"), prefix="warmup-send")
        rows: list[Row] = []
        for w in modes:
            say(f"{processes.log}: {w.mode}, {w.messages} messages to {w.addresses} addresses")
            run = pipeline.run_call if w.mode == "call" else pipeline.run_send
            rows += await run(w)
        return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="End-to-end benchmark: ingress -> bench/first -> bench/second -> reply, "
        "through the runtime on the embedded log, on Kafka, or both in turn.",
    )
    parser.add_argument(
        "--messages",
        type=int,
        help=f"messages per mode (default {DEFAULTS['messages']}; "
        f"{KAFKA_DEFAULTS['messages']} on Kafka)",
    )
    parser.add_argument(
        "--addresses",
        type=int,
        help=f"addresses they are spread over (default {DEFAULTS['addresses']}; "
        f"{KAFKA_DEFAULTS['addresses']} on Kafka)",
    )
    parser.add_argument(
        "--concurrency", type=int, help=f"requests in flight (default {DEFAULTS['concurrency']})"
    )
    parser.add_argument("--mode", choices=["call", "send", "both"], default="both")
    parser.add_argument(
        "--log",
        choices=["embedded", "kafka", "both"],
        default="both",
        help="the runtime's log: embedded (SQLite), kafka (a Tansu broker started for the "
        "run, or $STATEFUN_BENCH_KAFKA), or both in turn (default)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small run: {QUICK['messages']} messages over {QUICK['addresses']} addresses",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=_interval,
        nargs="+",
        default=[DEFAULT_CHECKPOINT_INTERVAL],
        metavar="SECONDS",
        help="the runtime's --checkpoint-interval; 0 turns checkpoints off. Several values: "
        "one run each, in the order given, per log "
        f"(default: the runtime's default, {DEFAULT_CHECKPOINT_INTERVAL:g})",
    )
    parser.add_argument(
        "--egress",
        choices=[EXACTLY_ONCE, AT_LEAST_ONCE],
        help="the bench/done egress's deliverySemantic (default: exactly-once, the "
        "runtime's default; at-least-once where checkpoints are off, since exactly-once "
        "records are published only when a checkpoint commits)",
    )
    parser.add_argument(
        "--profile-runtime",
        type=Path,
        metavar="FILE",
        help="run the runtime under cProfile and write its stats to FILE (FILE-<log> with "
        "--log both, FILE-<log>-<interval>s with several intervals; slows it down)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args(argv)
    if args.egress == EXACTLY_ONCE and 0 in args.checkpoint_interval:
        parser.error(
            "--egress exactly-once needs checkpoints: its records are published when a "
            "checkpoint commits, so with --checkpoint-interval 0 none would come out"
        )
    for name in DEFAULTS:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return seconds


def workloads(args: argparse.Namespace, log: str) -> list[Workload]:
    """The measured workloads of one log: the sizes given, else the preset's."""
    preset = QUICK if args.quick else KAFKA_DEFAULTS if log == "kafka" else DEFAULTS
    size = {
        name: preset[name] if getattr(args, name) is None else getattr(args, name)
        for name in preset
    }
    modes = ["call", "send"] if args.mode == "both" else [args.mode]
    return [Workload(size["messages"], size["addresses"], size["concurrency"], m) for m in modes]


def choose_logs(args: argparse.Namespace) -> tuple[list[str], Broker | None]:
    """The logs to run and the Kafka broker to use; a BenchError if ``--log kafka`` has no
    broker. ``--log both`` without one runs the embedded log alone, with a note."""
    broker = find_broker() if args.log in ("kafka", "both") else None
    if args.log == "embedded":
        return ["embedded"], None
    if broker is None:
        if args.log == "kafka":
            raise BenchError(f"--log kafka needs a Kafka broker: {HOW_TO_GET_ONE}")
        print(f"note: no Kafka broker, so the embedded log only: {HOW_TO_GET_ONE}", flush=True)
        return ["embedded"], None
    return (["kafka"] if args.log == "kafka" else ["embedded", "kafka"]), broker


def run_log(
    log: str, config: RunConfig, args: argparse.Namespace, workdir: Path, broker: Broker | None
) -> tuple[int, list[Row]]:
    """One log's run: start its processes, measure, verify; (exit status, rows)."""
    measured = workloads(args, log)
    workdir.mkdir()
    status = 0
    rows: list[Row] = []
    label = log  # names the run in what it prints
    if len(args.checkpoint_interval) > 1:
        label = f"{log} (checkpoints {interval_text(config.checkpoint_interval)})"
    with Children() as children:
        started: list[Child] = []
        try:
            processes = start_processes(children, log, workdir, config, broker)
            started = processes.all()
            # The load generator runs on uvloop, to take as little CPU from the runtime as it can.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                rows = runner.run(measure(processes, measured))
        except Failed as e:
            print(f"{label}: FAILED: {e}", flush=True)
            status = 1
        except (BenchError, aiohttp.ClientError, TimeoutError) as e:
            print(f"{label}: bench: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            for child in started:  # the output of each that the error does not show
                tail = child.log_tail()
                if tail and tail not in str(e):
                    print(f"--- {child.name}, {child.log_path}:\n{tail}", file=sys.stderr)
            status = 2
        else:
            print(
                f"{label}: OK: every address's count equals the messages sent to it "
                f"({', '.join(w.mode for w in measured)})",
                flush=True,
            )
        problems = [(c, line) for c in started for line in c.problems()]
    if problems:
        print(f"{label}: {len(problems)} lines at WARNING or above in the children's logs, e.g.:")
        for child, line in problems[:3]:
            print(f"  {child.log_path.name}: {line[:220]}")
    return status, rows


def run(args: argparse.Namespace, workdir: Path, logs: list[str], broker: Broker | None) -> int:
    """Run each log in turn, print the table; the exit status (the worst of the logs')."""
    status = 0
    rows: list[Row] = []
    several = len(args.checkpoint_interval) > 1
    for log in logs:
        for interval in args.checkpoint_interval:
            name = f"{log}-{interval:g}s" if several else log
            profile: Path | None = args.profile_runtime
            if profile is not None and (several or len(logs) > 1):  # one file per run
                profile = profile.with_name(f"{profile.stem}-{name}{profile.suffix}")
            config = RunConfig(interval, egress_semantic(interval, args.egress), profile)
            say(f"{name}: starting the processes (checkpoints {interval_text(interval)})")
            log_status, log_rows = run_log(log, config, args, workdir / name, broker)
            status = max(status, log_status)
            rows += log_rows
    if rows:
        print(format_table(HEADERS, [r.cells() for r in rows], left=4))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        logs, broker = choose_logs(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr, flush=True)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="statefun-bench-"))
    kafka = "" if broker is None else f" (Kafka: {broker.describe()})"
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, logs: {', '.join(logs)}"
        f"{kafka}, work directory {workdir}",
        flush=True,
    )
    try:
        status = run(args, workdir, logs, broker)
    except KeyboardInterrupt as e:
        print(
            f"bench: interrupted ({str(e) or 'SIGINT'}); the processes were stopped",
            file=sys.stderr,
        )
        status = 130
    if args.keep or status not in (0, 130):
        print(f"kept {workdir} (per log: module.yaml, the children's logs, the runtime's data)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
