"""What the ingress's access layer (``runtime.access``) costs per request, in process:

* ``check``: the access check alone (finding the route's rule, the Origin check, the
  token's digest compared with every token's), in microseconds per request, the best of
  5 runs: without tokens, and with 5 and 100 tokens in the file, for ``POST
  /v1/messages`` (a typed route: the function pattern is matched too) and ``GET
  /health``;
* ``request``: ``POST /v1/messages`` through the whole ingress app (httpx's ASGI
  transport, no sockets), appended to an in-memory log, without tokens and with a
  client token among 5, alternated ``--rounds`` times: microseconds per request.

    .venv/bin/python -m bench.access    (~20 s)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench._support import format_table
from runtime.access import AccessControl, rule_for
from runtime.app import Runtime
from runtime.config import AccessConfig, RuntimeConfig
from sdk import Context, Message, StatefulFunctions
from statefun.module_spec import parse_module_spec

MODULE = """\
kind: io.statefun.endpoints.v2/http
spec: {functions: bench/*, urlPathTemplate: "http://functions/statefun"}
"""
CHECKS = 20_000
"""Access checks per run of the ``check`` part."""
TOKEN = "bench-client-token-0000"


def tokens_file(directory: Path, count: int) -> Path:
    """``count`` tokens, the client token the benchmark sends last (every digest is
    compared whichever matches, so its place changes nothing)."""
    entries: list[dict[str, Any]] = [
        {"token": f"bench-admin-token-{i:06d}", "role": "admin"} for i in range(count - 1)
    ]
    entries.append({"token": TOKEN, "role": "client", "functions": ["bench/*"]})
    path = directory / f"tokens-{count}.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def scope(method: str, path: str, token: str | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8090"), (b"content-type", b"text/plain")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": headers,
    }


def sink() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("bench/sink")
    def take(context: Context, message: Message) -> None:
        """Takes every message, keeps nothing."""

    return functions


async def open_runtime(access: AccessConfig) -> Runtime:
    functions = httpx.ASGITransport(app=sink().asgi_app())
    config = RuntimeConfig(module=parse_module_spec(MODULE), access=access)
    runtime = await Runtime.open(config, transport=functions)
    await runtime.start()
    return runtime


async def check_part(directory: Path) -> list[list[str]]:
    runtime = await open_runtime(AccessConfig())
    routes = runtime.ingress_app.state.routes
    rows = []
    try:
        for tokens in (None, 5, 100):
            config = AccessConfig(
                tokens_file=None if tokens is None else tokens_file(directory, tokens)
            )
            access = AccessControl(config)
            token = None if tokens is None else TOKEN
            for method, path in (("POST", "/v1/messages/bench/sink/a"), ("GET", "/health")):
                best = float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(CHECKS):
                        request = scope(method, path, token)
                        rule, params = rule_for(routes, request)
                        assert access.refusal(request, rule, params) is None
                    best = min(best, time.perf_counter() - start)
                rows.append(
                    [
                        "none" if tokens is None else str(tokens),
                        f"{method} {path}",
                        f"{best / CHECKS * 1e6:.2f}",
                    ]
                )
    finally:
        runtime.begin_shutdown()
        await runtime.stop()
    return rows


async def requests_per_config(access: AccessConfig, token: str | None, count: int) -> float:
    """Microseconds per ``POST /v1/messages`` through the ingress app."""
    runtime = await open_runtime(access)
    headers = {"content-type": "text/plain"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=runtime.ingress_app), base_url="http://127.0.0.1"
        ) as http:
            for i in range(50):  # warm up
                await http.post(f"/v1/messages/bench/sink/w{i}", content="x", headers=headers)
            start = time.perf_counter()
            for i in range(count):
                answer = await http.post(
                    f"/v1/messages/bench/sink/a{i % 100}", content="x", headers=headers
                )
                assert answer.status_code == 202, answer.text
            return (time.perf_counter() - start) / count * 1e6
    finally:
        runtime.begin_shutdown()
        await runtime.stop()


async def request_part(directory: Path, rounds: int, count: int) -> list[list[str]]:
    configs = {
        "no tokens": (AccessConfig(), None),
        "client token of 5": (AccessConfig(tokens_file=tokens_file(directory, 5)), TOKEN),
    }
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(rounds):
        order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
        for name in order:
            runs[name].append(await requests_per_config(*configs[name], count))
    return [
        [name, " ".join(f"{r:.0f}" for r in values), f"{statistics.median(values):.0f}"]
        for name, values in runs.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.access", description=__doc__)
    parser.add_argument("--part", nargs="+", choices=("check", "request"), default=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000, help="per run (default 2000)")
    args = parser.parse_args(argv)
    parts = args.part or ["check", "request"]
    with tempfile.TemporaryDirectory() as directory:
        if "check" in parts:
            rows = asyncio.run(check_part(Path(directory)))
            print(format_table(["tokens", "request", "µs per check"], rows, left=2))
            print()
        if "request" in parts:
            rows = asyncio.run(request_part(Path(directory), args.rounds, args.requests))
            print(format_table(["ingress", "µs per POST (each run)", "median"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
