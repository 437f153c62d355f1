"""The ingress fuzzed against its own OpenAPI document, with schemathesis.

A runtime on the embedded log, its ingress on a loopback port and a functions app
(``fuzz/echo``: replies to a call with the message's type name, keeps nothing) through
httpx's ASGI transport. ``/openapi.json`` is loaded from the ingress itself (with an
admin token when tokens are on) and every operation is sent ``--examples`` generated
requests valid by the document and as many invalid ones (schemathesis's positive and
negative modes), half of them aimed at the served function type or the declared
egress (a valid ``wait`` of a long poll cut to 10 ms). Twice: without
tokens, and with a tokens file, each request then carrying an admin token, a client
token (for ``fuzz/*``), an unknown token or none.

Each answer is checked:

* no 500, and a 5xx only where the document lists it (503, 504);
* its status, content type and body as the document says (schemathesis's
  ``status_code_conformance``, ``content_type_conformance`` and
  ``response_schema_conformance``);
* a 4xx is JSON ``{"error": code, "detail": text}``;
* a 4xx appended nothing: the messages topic's end offsets, summed, are the same
  before and after it (nothing else appends while the fuzz runs: the function sends
  no messages and a call's reply is not logged).

Prints, per run, the requests tried and the statuses seen per operation, then every
failure; the exit status is 1 if there was one.

    .venv/bin/python -m bench.fuzz [--examples N]    (~25 s at the default 50)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import requests
import schemathesis
import yaml
from hypothesis import strategies as st
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench._support import HOST, format_table, free_port
from runtime.app import Runtime
from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.config import AccessConfig, RuntimeConfig
from runtime.http_server import IngressServer, bind
from runtime.ingress import MAX_EGRESS_WAIT
from sdk import Context, Message, StatefulFunctions
from statefun.module_spec import parse_module_spec

FUNCTION = "fuzz/echo"
AIMED = ({"namespace": "fuzz", "type_": "echo"}, {"namespace": "fuzz", "name": "out"})
"""Path parameters naming the served function type and the declared egress: half of
the requests to a route with them use them, the rest are left to chance."""
MODULE = """\
kind: io.statefun.endpoints.v2/http
spec: {functions: fuzz/*, urlPathTemplate: "http://functions/statefun"}
---
kind: statefun.v1/egress
spec: {id: fuzz/out}
"""
ADMIN_TOKEN = "fuzz-admin-token-0000"
CLIENT_TOKEN = "fuzz-client-token-0000"
OPEN: Mapping[str, str | None] = {"none": None}
"""Who sends, without tokens."""
WITH_TOKENS: Mapping[str, str | None] = {
    "admin": ADMIN_TOKEN,
    "client": CLIENT_TOKEN,
    "wrong": "fuzz-unknown-token-0000",
    "none": None,
}
"""Who sends, with the tokens file: each request one of them."""
SCHEMA_CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def echo_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind(FUNCTION)
    def echo(context: Context, message: Message) -> None:
        """Answers a call with the message's type name; sends nothing else."""
        if context.caller is not None:
            context.reply(str_value=message.value_typename())

    return functions


@dataclass
class Tally:
    """What one run saw."""

    requests: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def tokens_file(directory: Path) -> Path:
    path = directory / "tokens.yaml"
    entries = [
        {"token": ADMIN_TOKEN, "role": "admin"},
        {"token": CLIENT_TOKEN, "role": "client", "functions": ["fuzz/*"]},
    ]
    path.write_text(yaml.safe_dump(entries))
    return path


def problems(status: int, body: bytes, appended: int, documented: Mapping[str, Any]) -> list[str]:
    """What is wrong with an answer beyond the document's own checks: ``appended``
    records were appended while it was served, ``documented`` the operation's responses."""
    found = []
    text = body[:300].decode(errors="replace")
    if status >= 500 and str(status) not in documented:
        found.append(f"{status}, which the document does not list: {text}")
    if 400 <= status < 500:
        try:
            error = json.loads(body)
        except ValueError:
            error = None
        if not (
            isinstance(error, dict)
            and isinstance(error.get("error"), str)
            and isinstance(error.get("detail"), str)
        ):
            found.append(f"{status} without a JSON error body: {text!r}")
        if appended:
            found.append(f"{status} but {appended} records were appended")
    return found


@dataclass(frozen=True)
class Target:
    """The ingress under fuzz: its URL, who may send (name: token), and the messages
    topic's end offsets summed (callable from any thread)."""

    url: str
    who: Mapping[str, str | None]
    end_offset: Callable[[], int]


SETTINGS = hypothesis.settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    suppress_health_check=list(hypothesis.HealthCheck),
)


def short_wait(wait: Any) -> Any:
    """A long poll's ``wait`` as sent: a valid one cut to 10 ms (an egress the fuzz leaves
    empty would hold every answer for all of it), anything else as generated."""
    try:
        valid = 0 < float(wait) <= MAX_EGRESS_WAIT
    except (TypeError, ValueError):
        return wait
    return 0.01 if valid else wait


def fuzz_operation(
    target: Target,
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: schemathesis.GenerationMode,
    examples: int,
    tally: Tally,
) -> None:
    """``examples`` requests to ``operation``, half of them :data:`AIMED` if it names
    a function type or an egress, each checked; what is seen goes into ``tally``."""
    label = f"{operation.method.upper()} {operation.path}"
    documented = operation.definition.raw.get("responses", {})
    names = {p.name for p in operation.path_parameters}
    strategies = [operation.as_strategy(generation_mode=mode)]
    strategies += [
        operation.as_strategy(generation_mode=mode, path_parameters=aimed)
        for aimed in AIMED
        if aimed.keys() <= names
    ]
    session = requests.Session()

    @hypothesis.settings(SETTINGS, max_examples=examples)
    @hypothesis.given(case=st.one_of(strategies), name=st.sampled_from(sorted(target.who)))
    def run(case: schemathesis.Case[Any], name: str) -> None:
        token = target.who[name]
        sent = {} if token is None else {"Authorization": f"Bearer {token}"}
        if isinstance(case.query, dict) and "wait" in case.query:
            case.query["wait"] = short_wait(case.query["wait"])
        before = target.end_offset()
        response = case.call(base_url=target.url, session=session, headers=sent, timeout=30)
        appended = target.end_offset() - before
        tally.requests += 1
        tally.statuses[label, response.status_code] += 1
        found = problems(response.status_code, response.content, appended, documented)
        try:
            case.validate_response(response, checks=SCHEMA_CHECKS, headers=sent)
        except FailureGroup as e:
            found += [f.title for f in e.exceptions]
        curl = case.as_curl_command(headers=sent)
        tally.failures += [f"{label} ({name}): {p}\n    {curl}" for p in found]

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()  # unsatisfiable: an operation without parameters has no invalid requests


def fuzz_operations(target: Target, examples: int) -> Tally:
    """Every operation of the ingress's document, ``examples`` valid and as many
    invalid requests each; blocking (requests), so run off the runtime's loop."""
    admin = target.who.get("admin")
    headers = {} if admin is None else {"Authorization": f"Bearer {admin}"}
    schema = schemathesis.openapi.from_url(f"{target.url}/openapi.json", headers=headers)
    tally = Tally()
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            tally.failures.append(f"an operation the document spells wrong: {result.err()}")
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz_operation(target, result.ok(), mode, examples, tally)
    return tally


async def fuzz(examples: int, tokens: Path | None) -> Tally:
    """One run against a runtime of its own; ``tokens``: its tokens file."""
    port = free_port()
    config = RuntimeConfig(
        module=parse_module_spec(MODULE),
        ingress_port=port,
        access=AccessConfig(tokens_file=tokens),
        # A committed call waits for a checkpoint: soon.
        checkpoints=CheckpointConfig(interval=0.1),
    )
    functions = httpx.ASGITransport(app=echo_functions().asgi_app())
    runtime = await Runtime.open(config, transport=functions)
    await runtime.start()
    started = asyncio.Event()
    server = IngressServer(
        runtime.ingress_app,
        config.ingress_timeouts,
        graceful_shutdown=config.ingress_shutdown_grace,
        on_started=started.set,
    )
    serving = asyncio.create_task(server.serve(sockets=[bind(HOST, port)]))
    loop = asyncio.get_running_loop()

    def end_offset() -> int:
        ends = runtime.log.end_offsets(runtime.topics.messages)
        return sum(asyncio.run_coroutine_threadsafe(ends, loop).result(10))

    try:
        await started.wait()
        target = Target(
            f"http://{HOST}:{port}", OPEN if tokens is None else WITH_TOKENS, end_offset
        )
        return await asyncio.to_thread(fuzz_operations, target, examples)
    finally:
        server.should_exit = True
        await serving
        runtime.begin_shutdown()
        await runtime.stop()


def report(name: str, tally: Tally, seconds: float) -> str:
    operations = sorted({label for label, _ in tally.statuses})
    rows = [
        [
            label,
            str(sum(n for (lb, _), n in tally.statuses.items() if lb == label)),
            " ".join(
                f"{status}x{n}" for (lb, status), n in sorted(tally.statuses.items()) if lb == label
            ),
        ]
        for label in operations
    ]
    table = format_table(["operation", "requests", "statuses (status x count)"], rows, left=3)
    return (
        f"{name}: {tally.requests} requests in {seconds:.0f} s, "
        f"{len(tally.failures)} failures\n{table}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument(
        "--examples", type=int, default=50, help="per operation and mode (default 50)"
    )
    args = parser.parse_args(argv)
    # The runtime logs each refused request's cause at warning level; the table says it.
    logging.basicConfig(level=logging.ERROR)
    failures = []
    with tempfile.TemporaryDirectory() as directory:
        for name, tokens in (("no tokens", None), ("tokens", tokens_file(Path(directory)))):
            start = time.monotonic()
            tally = asyncio.run(fuzz(args.examples, tokens))
            print(report(name, tally, time.monotonic() - start), end="\n\n")
            failures += tally.failures
    for failure in failures:
        print(failure)
    print(json.dumps({"failures": len(failures)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
