"""The HTTP ingress's throughput (``python -m bench.ingress``): single-message sends and
calls at concurrency 64, a call's latency at concurrency 1, and the batch endpoint.

It starts the bench functions (``bench/functions.py``, one-hop ``bench/counter``) and a
runtime as users run it (``python -m runtime.cli run``, embedded log, an at-least-once
``bench/done`` egress so that "processed" means applied, not checkpointed), then, with an
aiohttp client in this process:

- ``send c64``: ``POST /v1/messages/bench/counter/<id>``, 64 in flight: answers (202) per
  second, and messages processed per second (until the egress holds every output);
- ``call c64``: ``POST /v1/call/bench/counter/<id>``, 64 in flight: replies per second;
- ``call c1``: one call at a time: p50 and p99;
- ``batch``: ``POST /v1/messages`` with ``--batch`` messages per request, 4 requests in
  flight: messages accepted per second and processed per second.

The runtime's CPU seconds per phase are read from ``/proc``. The client shares the
machine with the runtime: on 2 cores its own CPU caps what can be shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.__main__ import AT_LEAST_ONCE, module_yaml
from bench._support import (
    BenchError,
    Child,
    Children,
    format_table,
    free_port,
    percentile,
    runtime_command,
)
from runtime.app import Runtime, RuntimeConfig
from runtime.log.memory import MemoryLog
from statefun.address import TypeName
from statefun.module_spec import parse_module_spec

HOST = "127.0.0.1"
PROGRESS_TIMEOUT = 30.0


async def _egress_count(session: aiohttp.ClientSession, url: str, start: int, count: int) -> int:
    """Wait until ``count`` records follow ``start`` in the ``bench/done`` egress; its end."""
    position, seen, last = start, 0, time.monotonic()
    while seen < count:
        params = {"from": str(position), "limit": "10000"}
        async with session.get(f"{url}/v1/egress/bench/done", params=params) as response:
            page = await response.json()
        seen += len(page["records"])
        position = page["next"]
        if page["records"]:
            last = time.monotonic()
        elif time.monotonic() - last > PROGRESS_TIMEOUT:
            raise BenchError(f"only {seen} of {count} outputs came out of the egress")
        else:
            await asyncio.sleep(0.02)
    return int(position)


async def _run(
    jobs: list[tuple[str, bytes, str]],
    session: aiohttp.ClientSession,
    concurrency: int,
    expect: int,
) -> list[float]:
    """POST every (url, body, content type), ``concurrency`` at a time; each one's seconds."""
    latencies: list[float] = []
    queue = iter(jobs)

    async def worker() -> None:
        for url, body, content_type in queue:
            started = time.perf_counter()
            async with session.post(
                url, data=body, headers={"content-type": content_type}
            ) as response:
                await response.read()
                if response.status != expect:
                    raise BenchError(f"{url} answered {response.status}: {await response.text()}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def measure(url: str, runtime: Child, args: argparse.Namespace) -> list[list[str]]:
    rows: list[list[str]] = []
    # Idle connections closed before the ingress closes them (5 s): no reuse of a dead one.
    connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=3)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = await _egress_count(session, url, 0, 0)

        def sends(n: int, prefix: str) -> list[tuple[str, bytes, str]]:
            return [
                (f"{url}/v1/messages/bench/counter/{prefix}-{i % 1000}", b"x", "text/plain")
                for i in range(n)
            ]

        # Warm up: connections, the endpoint's served types, the first addresses.
        await _run(sends(500, "warm"), session, 64, 202)
        end = await _egress_count(session, url, end, 500)

        cpu, started = runtime.cpu_seconds(), time.perf_counter()
        await _run(sends(args.messages, "send"), session, 64, 202)
        answered = time.perf_counter() - started
        end = await _egress_count(session, url, end, args.messages)
        processed = time.perf_counter() - started
        rows.append(
            [
                "send c64",
                f"{args.messages / answered:,.0f}/s",
                f"{args.messages / processed:,.0f}/s",
                "",
                f"{(runtime.cpu_seconds() - cpu) / args.messages * 1000:.3f}",
            ]
        )

        calls = [
            (f"{url}/v1/call/bench/counter/call-{i % 1000}", b"x", "text/plain")
            for i in range(args.messages)
        ]
        cpu, started = runtime.cpu_seconds(), time.perf_counter()
        await _run(calls, session, 64, 200)
        elapsed = time.perf_counter() - started
        rows.append(
            [
                "call c64",
                f"{args.messages / elapsed:,.0f}/s",
                "",
                "",
                f"{(runtime.cpu_seconds() - cpu) / args.messages * 1000:.3f}",
            ]
        )
        end = await _egress_count(session, url, end, 0)

        one = [(f"{url}/v1/call/bench/counter/one-{i}", b"x", "text/plain") for i in range(300)]
        latencies = sorted(await _run(one, session, 1, 200))
        rows.append(
            [
                "call c1",
                f"{len(one) / sum(latencies):,.0f}/s",
                "",
                f"{percentile(latencies, 50) * 1000:.2f} / {percentile(latencies, 99) * 1000:.2f}",
                "",
            ]
        )

        async with session.post(f"{url}/v1/messages", json={"messages": []}) as probe:
            if probe.status == 404:
                rows.append(["batch", "(no batch endpoint)", "", "", ""])
                return rows
        size = args.batch
        total = args.batch_messages - args.batch_messages % size
        batches = [
            (
                f"{url}/v1/messages",
                json.dumps(
                    {
                        "messages": [
                            {
                                "address": f"bench/counter/batch-{(b * size + i) % 1000}",
                                "value": "x",
                            }
                            for i in range(size)
                        ]
                    }
                ).encode(),
                "application/json",
            )
            for b in range(total // size)
        ]
        cpu, started = runtime.cpu_seconds(), time.perf_counter()
        await _run(batches, session, 4, 202)
        answered = time.perf_counter() - started
        await _egress_count(session, url, end, total)
        processed = time.perf_counter() - started
        rows.append(
            [
                f"batch of {size}",
                f"{total / answered:,.0f}/s",
                f"{total / processed:,.0f}/s",
                "",
                f"{(runtime.cpu_seconds() - cpu) / total * 1000:.3f}",
            ]
        )
    return rows


async def in_process(requests: int) -> list[list[str]]:
    """The ingress's own CPU per send, in process: ``POST /v1/messages`` straight into
    the ASGI app, through the fast path and through the documented FastAPI route, with
    the append (and the endpoint's served-types check) stubbed out: what is left is
    the HTTP framework and the route's checks."""
    config = RuntimeConfig(module=parse_module_spec(module_yaml(1)))
    runtime = await Runtime.open(config, log=MemoryLog())

    async def appended(*_: object, **__: object) -> tuple[int, int]:
        return 0, 0

    async def served(_: TypeName) -> str | None:
        return None

    runtime.append_message = appended  # type: ignore[method-assign]
    runtime.refuses = served  # type: ignore[method-assign,assignment]
    runtime.unavailable = lambda: None  # type: ignore[method-assign]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/messages/bench/counter/a",
        "raw_path": b"/v1/messages/bench/counter/a",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8090"),
            (b"content-type", b"text/plain"),
            (b"content-length", b"1"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8090),
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"1", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(str(message["status"])))

    app = runtime.ingress_app
    rows = []
    try:
        for name, serve in (("fast path", app), ("documented route", app.documented)):
            started = time.process_time()
            for _ in range(requests):
                await serve(dict(scope), receive, send)  # type: ignore[arg-type]
            cpu = time.process_time() - started
            if set(statuses) != {202}:
                raise BenchError(f"the {name} answered {sorted(set(statuses))}")
            rows.append([f"in process, {name}", "", "", "", f"{cpu / requests * 1000:.3f}"])
    finally:
        await runtime.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="per c64 phase")
    parser.add_argument("--batch", type=int, default=500, help="messages per batch request")
    parser.add_argument("--batch-messages", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="3,000 messages, 20,000 batched")
    parser.add_argument("--hold", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.messages, args.batch_messages = 3_000, 20_000
    with tempfile.TemporaryDirectory() as tmp, Children() as children:
        workdir = Path(tmp)
        functions_port, port = free_port(), free_port()
        module = workdir / "module.yaml"
        module.write_text(module_yaml(functions_port, AT_LEAST_ONCE))
        functions = children.start_functions(functions_port, workdir, HOST)
        runtime = children.start(
            "the runtime",
            runtime_command(module, port, "--data-dir", str(workdir / "data")),
            workdir / "runtime.log",
        )
        url = f"http://{HOST}:{port}"

        async def run() -> list[list[str]]:
            async with aiohttp.ClientSession() as session:
                await runtime.wait_healthy(session, f"{url}/ready")
            functions.check_alive()
            print(f"bench.ingress: runtime pid {runtime.pid}", file=sys.stderr)
            await asyncio.sleep(args.hold)
            return await measure(url, runtime, args)

        rows = asyncio.run(in_process(args.messages)) + asyncio.run(run())
        print(
            format_table(
                ["case", "answered", "processed", "p50 / p99 ms", "runtime CPU ms/msg"], rows
            )
        )


if __name__ == "__main__":
    main()
