"""The pipeline benchmark: ``python -m bench`` from the repository root.

Owns the end-to-end measurement of the runtime. It starts the bench functions
(``bench/functions.py``, uvicorn) and the runtime (``python -m runtime.cli run`` on the
embedded SQLite log) as separate processes on loopback, drives a fixed workload through
the HTTP ingress with an aiohttp client, prints a table, verifies the results and stops
both processes whatever happens.

Modes:

* ``call``: ``POST /v1/call/bench/first/{id}``; the answer comes back after
  ingress -> first -> second -> reply, so each latency is end to end.
* ``send``: ``POST /v1/messages/bench/first/{id}`` (fire and forget: 202 once the
  message is durable). Two rows: ``send accepted`` (the ingress alone: until the last
  202, with the 202 latencies) and ``send processed`` (until every message has gone
  through both functions: its output is read from the ``bench/done`` egress).

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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop

from bench._support import (
    HOST,
    BenchError,
    Child,
    Children,
    format_table,
    free_port,
    percentile,
    thread_cpu_seconds,
)

QUICK = {"messages": 1_500, "addresses": 150, "concurrency": 64}
DEFAULTS = {"messages": 20_000, "addresses": 1_000, "concurrency": 64}
CALL_TIMEOUT = 120.0
PROGRESS_TIMEOUT = 60.0
"""A mode fails if no message completes for this long."""
EGRESS_POLL_INTERVAL = 0.05
STATE_CHECK_CONCURRENCY = 16
TEXT = {"content-type": "text/plain; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Workload:
    mode: str
    messages: int
    addresses: int
    concurrency: int

    def ids(self, prefix: str) -> list[str]:
        return [f"{prefix}-{a}" for a in range(self.addresses)]

    def expected(self) -> list[int]:
        """Messages per address: address ``a`` gets messages ``a, a + A, a + 2A, ...``."""
        base, extra = divmod(self.messages, self.addresses)
        return [base + (1 if a < extra else 0) for a in range(self.addresses)]


@dataclass(frozen=True, slots=True)
class Row:
    mode: str
    workload: Workload
    elapsed: float
    latencies: Sequence[float] | None
    """Seconds, sorted; None where there is no per-message latency to report."""
    runtime_cpu: float
    runtime_loop_cpu: float
    functions_cpu: float
    client_cpu: float

    def cells(self) -> list[str]:
        w = self.workload
        if self.latencies:
            p50 = f"{percentile(self.latencies, 50) * 1000:.1f}"
            p99 = f"{percentile(self.latencies, 99) * 1000:.1f}"
        else:
            p50 = p99 = "-"
        return [
            self.mode,
            f"{w.messages}",
            f"{w.addresses}",
            f"{w.concurrency}",
            f"{self.elapsed:.2f}",
            f"{w.messages / self.elapsed:.0f}",
            p50,
            p99,
            f"{self.runtime_cpu:.2f}",
            f"{self.runtime_loop_cpu:.2f}",
            f"{self.functions_cpu:.2f}",
            f"{self.client_cpu:.2f}",
        ]


HEADERS = [
    "mode",
    "messages",
    "addresses",
    "concurrency",
    "elapsed s",
    "messages/s",
    "p50 ms",
    "p99 ms",
    "runtime cpu s",
    "runtime loop s",
    "functions cpu s",
    "client cpu s",
]


class Failed(Exception):
    """The results are wrong (as opposed to the benchmark being unable to run)."""


@dataclass(slots=True)
class Cpu:
    """CPU seconds of the runtime (all threads, and its main thread: the event loop), the
    functions and this process at one moment."""

    runtime: float
    runtime_loop: float
    functions: float
    client: float


class Pipeline:
    """The two child processes and the ingress client of one benchmark run."""

    def __init__(
        self, runtime: Child, functions: Child, ingress: str, session: aiohttp.ClientSession
    ):
        self.runtime = runtime
        self.functions = functions
        self.ingress = ingress
        self.session = session
        self.egress_next = 0
        """The ``bench/done`` egress offset after the last record read."""

    def cpu(self) -> Cpu:
        loop, others = thread_cpu_seconds(self.runtime.pid)
        return Cpu(loop + others, loop, self.functions.cpu_seconds(), time.process_time())

    def row(self, mode: str, w: Workload, start: float, cpu0: Cpu, lat: list[float] | None) -> Row:
        elapsed = time.perf_counter() - start
        cpu = self.cpu()
        return Row(
            mode,
            w,
            elapsed,
            sorted(lat) if lat is not None else None,
            cpu.runtime - cpu0.runtime,
            cpu.runtime_loop - cpu0.runtime_loop,
            cpu.functions - cpu0.functions,
            cpu.client - cpu0.client,
        )

    def check_alive(self) -> None:
        self.runtime.check_alive()
        self.functions.check_alive()

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


def module_yaml(functions_port: int) -> str:
    # Every timeout is spelled out: statefun/module_spec.py's ``_duration`` reads an omitted
    # one's default (10.0 seconds) as 10.0 milliseconds once a ``timeouts`` block exists.
    return f"""\
kind: io.statefun.endpoints.v2/http
spec:
  functions: bench/*
  urlPathTemplate: http://{HOST}:{functions_port}/statefun
  transport:
    timeouts:
      call: 2 min
      connect: 10 s
      read: 10 s
      write: 10 s
---
kind: statefun.v1/egress
spec:
  id: bench/done
"""


def start_pipeline(
    children: Children, workdir: Path, args: argparse.Namespace
) -> tuple[Child, Child, str, str]:
    """Start the functions and the runtime; (runtime, functions, ingress URL, functions URL)."""
    functions_port, ingress_port = free_port(), free_port()
    module = workdir / "module.yaml"
    module.write_text(module_yaml(functions_port))
    functions = children.start(
        "the function server",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.functions:app",
            "--host",
            HOST,
            "--port",
            str(functions_port),
            "--log-level",
            "warning",
        ],
        workdir / "functions.log",
    )
    # The real command, unless an experiment asks for ``bench._runtime_variant``.
    entry = ["-m", "runtime.cli"]
    if args.runtime_loop != "asyncio" or args.function_client != "httpx":
        entry = ["-m", "bench._runtime_variant", "--loop", args.runtime_loop]
        entry += ["--function-client", args.function_client, "--"]
    profiler = (
        [] if args.profile_runtime is None else ["-m", "cProfile", "-o", str(args.profile_runtime)]
    )
    runtime = children.start(
        "the runtime",
        [
            sys.executable,
            *profiler,
            *entry,
            "run",
            "--module",
            str(module),
            "--data-dir",
            str(workdir / "data"),
            "--ingress-host",
            HOST,
            "--ingress-port",
            str(ingress_port),
            "--log-level",
            "warning",
        ],
        workdir / "runtime.log",
    )
    return runtime, functions, f"http://{HOST}:{ingress_port}", f"http://{HOST}:{functions_port}"


async def measure(
    runtime: Child, functions: Child, ingress: str, functions_url: str, modes: list[Workload]
) -> list[Row]:
    connector = aiohttp.TCPConnector(limit=max(w.concurrency for w in modes) + 4)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await functions.wait_healthy(session, f"{functions_url}/health")
        await runtime.wait_healthy(session, f"{ingress}/health")
        pipeline = Pipeline(runtime, functions, ingress, session)
        # Warm up (connections, state spec registration, code paths); checked, not shown.
        await pipeline.run_call(Workload("warm-up call", 200, 50, 16), prefix="warmup-call")
        await pipeline.run_send(Workload("warm-up send", 200, 50, 16), prefix="warmup-send")
        rows: list[Row] = []
        for w in modes:
            run = pipeline.run_call if w.mode == "call" else pipeline.run_send
            rows += await run(w)
        return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="End-to-end benchmark: ingress -> bench/first -> bench/second -> reply, "
        "through the runtime on the embedded log.",
    )
    parser.add_argument(
        "--messages", type=int, help=f"messages per mode (default {DEFAULTS['messages']})"
    )
    parser.add_argument(
        "--addresses",
        type=int,
        help=f"addresses they are spread over (default {DEFAULTS['addresses']})",
    )
    parser.add_argument(
        "--concurrency", type=int, help=f"requests in flight (default {DEFAULTS['concurrency']})"
    )
    parser.add_argument("--mode", choices=["call", "send", "both"], default="both")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small run (~10 s): {QUICK['messages']} messages over {QUICK['addresses']} addresses",
    )
    parser.add_argument(
        "--runtime-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the runtime process (default asyncio, what `statefun run` uses)",
    )
    parser.add_argument(
        "--function-client",
        choices=["httpx", "aiohttp"],
        default="httpx",
        help="experiment: the runtime's function client on aiohttp without httpx "
        "(default httpx, what the runtime uses; see bench/_runtime_variant.py)",
    )
    parser.add_argument(
        "--profile-runtime",
        type=Path,
        metavar="FILE",
        help="run the runtime under cProfile and write its stats to FILE (slows it down)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in preset:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def run(args: argparse.Namespace, workdir: Path) -> int:
    """Start the pipeline, measure, verify, print; the exit status."""
    modes = ["call", "send"] if args.mode == "both" else [args.mode]
    workloads = [Workload(m, args.messages, args.addresses, args.concurrency) for m in modes]
    status = 0
    with Children() as children:
        runtime, functions, ingress, functions_url = start_pipeline(children, workdir, args)
        try:
            # The load generator runs on uvloop, to take as little CPU from the runtime as it can.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                rows = runner.run(measure(runtime, functions, ingress, functions_url, workloads))
        except Failed as e:
            print(f"FAILED: {e}", flush=True)
            status = 1
        except (BenchError, aiohttp.ClientError, TimeoutError) as e:
            print(f"bench: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            for child in (runtime, functions):
                print(f"--- {child.name}, {child.log_path}:\n{child.log_tail()}", file=sys.stderr)
            status = 2
        else:
            print(format_table(HEADERS, [r.cells() for r in rows]))
            print(f"OK: every address's count equals the messages sent to it ({', '.join(modes)})")
        problems = runtime.problems() + functions.problems()
    if problems:
        print(f"{len(problems)} lines at WARNING or above in the children's logs, e.g.:")
        print("\n".join(f"  {line[:220]}" for line in problems[:3]))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="statefun-bench-"))
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, runtime loop "
        f"{args.runtime_loop}, function client {args.function_client}, work directory {workdir}",
        flush=True,
    )
    try:
        status = run(args, workdir)
    except KeyboardInterrupt as e:
        print(
            f"bench: interrupted ({str(e) or 'SIGINT'}); the processes were stopped",
            file=sys.stderr,
        )
        status = 130
    if args.keep or status not in (0, 130):
        print(f"kept {workdir} (module.yaml, the children's logs, the runtime's data)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
