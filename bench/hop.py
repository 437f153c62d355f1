"""One hop, closed loop: ``POST /v1/call/bench/counter/{id}`` at concurrency 64 and 1,
on the embedded log (or Kafka): calls/s, p50/p99, the runtime's CPU per call and the
invocations each function request carried (``python -m bench.hop``).

The workload of issue 12's side-by-side table (a counter object: state += 1, reply with
the new value), driven by an aiohttp client on uvloop. Counts are checked: every call's
answer is ``<id>:<n>`` and each address's answers are exactly ``1..n``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import uvloop

from bench.__main__ import EXACTLY_ONCE, TEXT, RunConfig, start_processes
from bench._kafka import find_broker
from bench._support import Children, format_table, percentile, thread_cpu_seconds

HEADERS = [
    "log",
    "concurrency",
    "calls",
    "calls/s",
    "p50 ms",
    "p99 ms",
    "runtime ms/call",
    "loop ms/call",
    "functions ms/call",
    "invocations/request",
]


def _metric(text: str, name: str) -> float:
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M):
        total += float(match.group(1))
    return total


async def _requests(session: aiohttp.ClientSession, ingress: str) -> tuple[float, float]:
    """(invocations, function requests) sent so far, from ``/metrics``."""
    async with session.get(f"{ingress}/metrics") as response:
        text = await response.text()
    return (
        _metric(text, "statefun_function_invocations_total"),
        _metric(text, "statefun_function_call_latency_seconds_count"),
    )


async def _drive(
    session: aiohttp.ClientSession, ingress: str, calls: int, concurrency: int, prefix: str
) -> list[float]:
    ids = [f"{prefix}-{a}" for a in range(max(1, min(1000, calls // 4)))]
    numbers = iter(range(calls))
    latencies: list[float] = []
    seen: dict[str, list[int]] = defaultdict(list)

    async def worker() -> None:
        for i in numbers:
            id_ = ids[i % len(ids)]
            started = time.perf_counter()
            async with session.post(
                f"{ingress}/v1/call/bench/counter/{id_}", data=b"x", headers=TEXT
            ) as response:
                body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{id_}: {response.status} {body[:200]!r}")
            latencies.append(time.perf_counter() - started)
            got_id, n = str(json.loads(body)["value"]).rsplit(":", 1)
            seen[got_id].append(int(n))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for id_, values in seen.items():
        if sorted(values) != list(range(1, len(values) + 1)):
            raise RuntimeError(f"{id_}: answers {sorted(values)[:10]}... are not 1..n")
    return sorted(latencies)


async def _measure(processes: object, args: argparse.Namespace, log: str) -> list[list[str]]:
    from bench.__main__ import Processes

    assert isinstance(processes, Processes)
    rows = []
    connector = aiohttp.TCPConnector(limit=80)
    async with aiohttp.ClientSession(connector=connector) as session:
        await processes.functions.wait_healthy(session, f"{processes.functions_url}/health")
        await processes.runtime.wait_healthy(session, f"{processes.ingress}/health")
        await _drive(session, processes.ingress, 400, 16, "warm")
        levels = [(c, args.calls if c > 1 else args.calls_c1) for c in args.concurrency]
        for concurrency, calls in levels:
            inv0, req0 = await _requests(session, processes.ingress)
            loop0, others0 = thread_cpu_seconds(processes.runtime.pid)
            functions0 = processes.functions.cpu_seconds()
            start = time.perf_counter()
            latencies = await _drive(
                session, processes.ingress, calls, concurrency, f"c{concurrency}"
            )
            elapsed = time.perf_counter() - start
            loop1, others1 = thread_cpu_seconds(processes.runtime.pid)
            functions1 = processes.functions.cpu_seconds()
            inv1, req1 = await _requests(session, processes.ingress)
            cpu = loop1 + others1 - loop0 - others0
            rows.append(
                [
                    log,
                    str(concurrency),
                    str(calls),
                    f"{calls / elapsed:,.0f}",
                    f"{percentile(latencies, 0.5) * 1000:.2f}",
                    f"{percentile(latencies, 0.99) * 1000:.2f}",
                    f"{cpu / calls * 1000:.3f}",
                    f"{(loop1 - loop0) / calls * 1000:.3f}",
                    f"{(functions1 - functions0) / calls * 1000:.3f}",
                    f"{(inv1 - inv0) / max(1.0, req1 - req0):.2f}",
                ]
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hop", description=__doc__)
    parser.add_argument("--log", choices=["embedded", "kafka"], default="embedded")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[64, 1], help="levels, in turn (64 1)"
    )
    parser.add_argument("--calls", type=int, default=10_000, help="calls per level above 1")
    parser.add_argument("--calls-c1", type=int, default=1_000, help="calls at concurrency 1")
    parser.add_argument("--checkpoint-interval", type=float, default=1.0)
    parser.add_argument("--profile-runtime", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    broker = None
    if args.log == "kafka":
        broker = find_broker()
    workdir = Path(tempfile.mkdtemp(prefix="statefun-hop-"))
    try:
        config = RunConfig(args.checkpoint_interval, EXACTLY_ONCE, args.profile_runtime)
        (workdir / args.log).mkdir()
        with Children() as children:
            processes = start_processes(children, args.log, workdir / args.log, config, broker)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                rows = runner.run(_measure(processes, args, args.log))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(format_table(HEADERS, rows, left=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
