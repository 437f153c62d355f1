"""The transport benchmark: ``python -m bench.transport`` from the repository root.

Owns the measurement behind the HTTP transport of the runtime's function client
(``runtime/function_client.py``). A uvicorn subprocess serves our SDK app with one
trivial function (``bench/noop``, defined here and served as ``bench.transport:app``);
this process sends it native-protocol requests (``statefun.native_codec``: one batch of
1 invocation, and one batch of 10) through each client, at concurrency 1, 8 and 64, a
fixed number of requests per configuration, and prints requests/s, p50/p99 latency and
the client's CPU time:

* ``httpx``: ``httpx.AsyncClient()``, its default transport and default pool limits;
* ``httpx pool=64``: the same transport with the pool sized as the runtime sizes it;
* ``httpx+aiohttp``: ``httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(...))``,
  the runtime's former transport, with ``FunctionClient``'s limits, timeouts and headers;
* ``aiohttp``: an ``aiohttp.ClientSession`` without httpx, the runtime's client until
  2026-12-08;
* ``runtime``: ``runtime.endpoint_http.Http1``, the runtime's own HTTP/1.1 client (httptools
  reading the answers), with ``FunctionClient``'s pool size, timeouts and headers: what the
  runtime uses now.

Each response must be 200 with the native content type; the first one of each
configuration is decoded. Anything else prints FAILED and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from bench._support import (
    HOST,
    BenchError,
    Child,
    Children,
    cpu_seconds,
    format_table,
    free_port,
    percentile,
)
from runtime.endpoint_http import Http1
from runtime.progress import steps
from sdk import Context, Message, StatefulFunctions
from statefun import native_codec
from statefun.address import Address
from statefun.module_spec import FunctionTypePattern, HttpEndpoint, HttpTimeouts
from statefun.protocol import FunctionRequest, Invocation, InvocationBatch, InvocationResult
from statefun.values import TypedValue

NOOP = "bench/noop"

functions = StatefulFunctions()


@functions.bind(NOOP)
def noop(context: Context, message: Message) -> None:
    """Does nothing: the response is an empty result, so the request is all transport."""


app = functions.asgi_app()

CLIENTS = ["httpx", "httpx pool=64", "httpx+aiohttp", "aiohttp", "runtime"]
MEASURED = "runtime"
"""The client the summary compares with the others."""
CONCURRENCIES = [1, 8, 64]
BATCH_SIZES = [1, 10]
POOL = 64
"""Connections the runtime's client may hold (its ``max_concurrent_requests`` is 16 by
default; 64 covers every concurrency measured here)."""
HEADERS = {"content-type": native_codec.CONTENT_TYPE, "accept": native_codec.CONTENT_TYPE}
TIMEOUT = httpx.Timeout(connect=10.0, read=10.0, write=10.0, pool=60.0)

Post = Callable[[bytes], Awaitable[tuple[int, str, bytes]]]
"""Send one request body; (status, content type, body)."""


class Failed(Exception):
    """A response was not a valid native-protocol answer."""


@dataclass(frozen=True, slots=True)
class Result:
    client: str
    invocations: int
    concurrency: int
    requests: int
    elapsed: float
    latencies: list[float]
    client_cpu: float
    server_cpu: float

    def cells(self) -> list[str]:
        return [
            self.client,
            f"{self.invocations}",
            f"{self.concurrency}",
            f"{self.requests}",
            f"{self.elapsed:.2f}",
            f"{self.requests / self.elapsed:.0f}",
            f"{percentile(self.latencies, 50) * 1000:.2f}",
            f"{percentile(self.latencies, 99) * 1000:.2f}",
            f"{self.client_cpu:.2f}",
            f"{self.client_cpu / self.requests * 1e6:.0f}",
            f"{self.server_cpu / self.requests * 1e6:.0f}",
        ]


TABLE_HEADERS = [
    "client",
    "invocations",
    "concurrency",
    "requests",
    "elapsed s",
    "requests/s",
    "p50 ms",
    "p99 ms",
    "client cpu s",
    "client us/req",
    "server us/req",
]


def request_body(invocations: int) -> bytes:
    """A native request: one batch of ``invocations`` messages for ``bench/noop/a``."""
    argument = TypedValue("io.statefun.types/string", b"hello, transport")
    batch = InvocationBatch(
        Address("bench", "noop", "a"), {}, [Invocation(None, argument)] * invocations
    )
    return native_codec.encode_request(FunctionRequest([batch]))


async def open_client(name: str, url: str, stack: AsyncExitStack) -> Post:
    """A ``Post`` through the client ``name``; closed with ``stack``."""
    if name == "runtime":
        endpoint = HttpEndpoint(
            FunctionTypePattern.parse("bench/*"),
            url,
            timeouts=HttpTimeouts(call=60, connect=10, read=10, write=10),
            protocol="native",
        )
        http = Http1(endpoint, POOL)
        stack.push_async_callback(http.aclose)
        headers = tuple(HEADERS.items())

        async def post_runtime(body: bytes) -> tuple[int, str, bytes]:
            return await http.exchange("POST", url, headers, body)

        return post_runtime
    if name == "aiohttp":
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL),
                headers=HEADERS,
                timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=10, connect=60),
            )
        )

        async def post_aiohttp(body: bytes) -> tuple[int, str, bytes]:
            async with session.post(url, data=body) as response:
                return (
                    response.status,
                    response.headers.get("content-type", ""),
                    await response.read(),
                )

        return post_aiohttp
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    if name == "httpx":
        client = httpx.AsyncClient()  # its defaults: 100 connections, 20 kept alive
    elif name == "httpx pool=64":
        client = httpx.AsyncClient(limits=limits, timeout=TIMEOUT, headers=HEADERS)
    elif name == "httpx+aiohttp":
        client = httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits), timeout=TIMEOUT, headers=HEADERS
        )
    else:
        raise ValueError(f"unknown client {name}")
    await stack.enter_async_context(client)

    async def post_httpx(body: bytes) -> tuple[int, str, bytes]:
        response = await client.post(url, content=body, headers=HEADERS)
        return response.status_code, response.headers.get("content-type", ""), response.content

    return post_httpx


async def measure_one(
    name: str,
    url: str,
    body: bytes,
    invocations: int,
    concurrency: int,
    requests: int,
    server: Child,
) -> Result:
    async with AsyncExitStack() as stack:
        post = await open_client(name, url, stack)
        first: list[bytes] = []

        async def run(count: int, latencies: list[float]) -> None:
            numbers = iter(range(count))

            async def one_worker() -> None:
                for _ in numbers:  # shared: each request is sent by exactly one worker
                    started = time.perf_counter()
                    status, content_type, answer = await post(body)
                    latencies.append(time.perf_counter() - started)
                    if status != 200 or not content_type.startswith(native_codec.CONTENT_TYPE):
                        raise Failed(f"{name}: answered {status} {content_type}: {answer[:200]!r}")
                    if not first:
                        first.append(answer)

            await asyncio.gather(*(one_worker() for _ in range(min(concurrency, count))))

        await run(max(concurrency * 2, 50), [])  # warm up: open the connections
        response = native_codec.decode_response(first[0])
        if len(response.outcomes) != 1 or not isinstance(response.outcomes[0], InvocationResult):
            raise Failed(f"{name}: unexpected response {response}")
        latencies: list[float] = []
        server0, client0, start = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
        await run(requests, latencies)
        elapsed = time.perf_counter() - start
        client_cpu, server_cpu = time.process_time() - client0, cpu_seconds(server.pid) - server0
    latencies.sort()
    return Result(
        name, invocations, concurrency, requests, elapsed, latencies, client_cpu, server_cpu
    )


async def measure(server: Child, url: str, args: argparse.Namespace) -> list[Result]:
    async with aiohttp.ClientSession() as session:
        await server.wait_healthy(session, url.rsplit("/", 1)[0] + "/health")
    results: list[Result] = []
    say = steps("bench.transport")
    for invocations in BATCH_SIZES:
        body = request_body(invocations)
        for concurrency in args.concurrency:
            for name in args.clients:
                result = await measure_one(
                    name, url, body, invocations, concurrency, args.requests, server
                )
                say(
                    f"{name} x{invocations} c={concurrency}: "
                    f"{result.requests / result.elapsed:.0f} requests/s"
                )
                results.append(result)
    return results


def summary(results: Sequence[Result]) -> list[str]:
    """The runtime's client's requests/s and client CPU per request relative to the
    others'."""
    by_key = {(r.client, r.invocations, r.concurrency): r for r in results}
    lines = []
    for r in results:
        if r.client != MEASURED:
            continue
        parts = []
        for other in CLIENTS:
            o = by_key.get((other, r.invocations, r.concurrency))
            if o is None or o is r:
                continue
            speed = (r.requests / r.elapsed) / (o.requests / o.elapsed)
            cpu = (r.client_cpu / r.requests) / (o.client_cpu / o.requests)
            parts.append(f"{speed:.2f}x the requests/s of {other} at {cpu:.2f}x its CPU")
        if parts:
            lines.append(f"x{r.invocations} c={r.concurrency}: {MEASURED} " + "; ".join(parts))
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transport",
        description="HTTP clients for the function client: httpx, aiohttp and the runtime's own.",
    )
    parser.add_argument("--requests", type=int, help="requests per configuration (default 2000)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=CONCURRENCIES,
        help=f"requests in flight (default {' '.join(map(str, CONCURRENCIES))})",
    )
    parser.add_argument(
        "--clients", nargs="+", choices=CLIENTS, default=CLIENTS, help="clients to measure"
    )
    parser.add_argument("--quick", action="store_true", help="150 requests per configuration")
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = 150 if args.quick else 2000
    if args.requests < 1 or min(args.concurrency) < 1:
        parser.error("--requests and --concurrency must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt as e:
        print(f"bench: interrupted ({str(e) or 'SIGINT'}); the server was stopped", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    """Start the server, measure, print; the exit status."""
    port = free_port()
    url = f"http://{HOST}:{port}/statefun"
    print(
        f"python {sys.version.split()[0]}, {args.requests} requests per configuration", flush=True
    )
    with (
        tempfile.TemporaryDirectory(prefix="statefun-bench-transport-") as workdir,
        Children() as children,
    ):
        server = children.start(
            "the function server",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.transport:app",
                "--host",
                HOST,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            Path(workdir) / "server.log",
        )
        try:
            results = asyncio.run(measure(server, url, args))
        except Failed as e:
            print(f"FAILED: {e}", flush=True)
            return 1
        except BenchError as e:
            print(f"bench: error: {e}", file=sys.stderr, flush=True)
            return 2
    print(format_table(TABLE_HEADERS, [r.cells() for r in results]))
    for line in summary(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
