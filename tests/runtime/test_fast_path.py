"""The ingress's fast path (``runtime.fast_path``) answers exactly as the documented
FastAPI routes do: a table of good and bad requests sent to both (``ingress_app`` and
``ingress_app.documented``), without and with tokens, compared status, headers and body;
each fast answer is two ASGI messages; the HTTP metrics count both alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send
from support import module_for

from runtime.app import Runtime, RuntimeConfig
from runtime.config import AccessConfig, WorkerConfig
from runtime.errors import LogError
from runtime.log.memory import MemoryLog
from sdk import Context, IntType, Message, StatefulFunctions, ValueSpec

pytestmark = pytest.mark.timeout(60)

LIMIT = 1000
"""The runtime's max message bytes here."""
CLIENT = "client-token-0123456789"
SCOPED = "scoped-token-0123456789"
"""A client token reaching ``shop/*`` only."""
READER = "reader-token-0123456789"
TEXT = {"content-type": "text/plain"}
JSON = {"content-type": "application/json"}
FAST, DOCUMENTED = "fast1", "docs1"
"""What ``{p}`` becomes on each path: of one length, so answers are of one length too."""


def functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("test/tally", specs=[ValueSpec("count", IntType)])
    def tally(context: Context, message: Message) -> None:
        context.storage.count = (context.storage.count or 0) + 1
        if context.caller is not None:
            context.reply(int_value=context.storage.count)

    @functions.bind("test/silent")
    def silent(context: Context, message: Message) -> None:
        """Never replies: a call to it times out."""

    return functions


@dataclass
class Recorder:
    """An ASGI app in front of another, keeping every message each request sent."""

    app: Callable[[Scope, Receive, Send], Any]
    sent: list[list[AsgiMessage]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[AsgiMessage] = []
        self.sent.append(messages)

        async def recording(message: AsgiMessage) -> None:
            messages.append(message)
            await send(message)

        await self.app(scope, receive, recording)


@asynccontextmanager
async def ingress(tokens: Path | None) -> AsyncIterator[tuple[Runtime, Recorder, Recorder]]:
    module = module_for("http://functions/statefun", functions="test/*")
    config = RuntimeConfig(
        module=module,
        messages_partitions=4,
        worker=WorkerConfig(max_message_bytes=LIMIT),
        access=AccessConfig(tokens_file=tokens),
    )
    transport = httpx.ASGITransport(app=functions().asgi_app())
    runtime = await Runtime.open(config, log=MemoryLog(), transport=transport)
    await runtime.start()
    try:
        yield runtime, Recorder(runtime.ingress_app), Recorder(runtime.ingress_app.documented)
    finally:
        runtime.begin_shutdown()
        await runtime.stop()


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes = b"1"
    headers: dict[str, str] = field(default_factory=lambda: dict(TEXT))
    params: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    """The status both must answer."""
    open_status: int | None = None
    """The status without tokens, where it differs."""


def cases(tokened: bool) -> list[Case]:
    """The table; ``{p}`` in a path or header is the path's name (fast or documented), so
    each path's requests have addresses and keys of their own."""
    auth = {"authorization": f"Bearer {CLIENT}"} if tokened else {}
    good = {**TEXT, **auth}
    rows = [
        Case("text", "/v1/messages/test/tally/{p}", headers=good, status=202),
        Case(
            "json int",
            "/v1/messages/test/tally/{p}",
            b"5",
            {**JSON, **auth},
            {"type": "io.statefun.types/int"},
            202,
        ),
        Case("json without type", "/v1/messages/test/tally/{p}", b"5", {**JSON, **auth}, {}, 400),
        Case("no content type", "/v1/messages/test/tally/{p}", headers=auth, status=415),
        Case(
            "charset",
            "/v1/messages/test/tally/{p}",
            headers={"content-type": "text/plain; charset=latin-1", **auth},
            status=415,
        ),
        Case(
            "bad json", "/v1/messages/test/tally/{p}", b"{", {**JSON, **auth}, {"type": "a/b"}, 400
        ),
        Case(
            "bad type",
            "/v1/messages/test/tally/{p}",
            headers=good,
            params={"type": "x"},
            status=400,
        ),
        Case(
            "unknown type", "/v1/messages/shop/cart/{p}", headers=good, status=403, open_status=404
        ),
        Case("dot segment", "/v1/messages/test/tally/%2E%2E/{p}", headers=good, status=400),
        Case("encoded slash", "/v1/messages/test/ta%2Flly/{p}", headers=good, status=400),
        Case("empty id", "/v1/messages/test/tally/", headers=good, status=400),
        Case("too large", "/v1/messages/test/tally/{p}", b"x" * (LIMIT + 1), good, status=413),
        Case(
            "bad key",
            "/v1/messages/test/tally/{p}",
            headers={**good, "idempotency-key": "k" * 300},
            status=400,
        ),
        Case(
            "keyed",
            "/v1/messages/test/tally/{p}",
            headers={**good, "idempotency-key": "key-{p}"},
            status=202,
        ),
        Case(
            "keyed again",
            "/v1/messages/test/tally/{p}",
            headers={**good, "idempotency-key": "key-{p}"},
            status=202,
        ),
        Case(
            "key reused",
            "/v1/messages/test/tally/{p}",
            b"2",
            {**good, "idempotency-key": "key-{p}"},
            status=422,
        ),
        Case("call", "/v1/call/test/tally/c-{p}", headers=good, status=200),
        Case(
            "call with parameters",
            "/v1/call/test/tally/c-{p}",
            headers=good,
            params={"consistency": "uncommitted", "timeout": "5"},
            status=200,
        ),
        Case(
            "keyed call",
            "/v1/call/test/tally/k-{p}",
            headers={**good, "idempotency-key": "call-{p}"},
            status=200,
        ),
        Case(
            "keyed call again",
            "/v1/call/test/tally/k-{p}",
            headers={**good, "idempotency-key": "call-{p}"},
            status=200,
        ),
        Case(
            "bad timeout",
            "/v1/call/test/tally/{p}",
            headers=good,
            params={"timeout": "0"},
            status=400,
        ),
        Case(
            "bad consistency",
            "/v1/call/test/tally/{p}",
            headers=good,
            params={"consistency": "maybe"},
            status=400,
        ),
        Case(
            "timeout",
            "/v1/call/test/silent/{p}",
            headers=good,
            params={"timeout": "0.2"},
            status=504,
        ),
        Case(
            "unknown type call", "/v1/call/shop/cart/{p}", headers=good, status=403, open_status=404
        ),
        Case(
            "foreign origin",
            "/v1/messages/test/tally/{p}",
            headers={**good, "origin": "http://evil.example"},
            status=403,
        ),
        Case("not the route", "/v1/messages/test/tally", headers=good, status=403, open_status=307),
    ]
    if tokened:
        rows += [
            Case("no token", "/v1/messages/test/tally/{p}", status=401),
            Case(
                "unknown token",
                "/v1/call/test/tally/{p}",
                headers={**TEXT, "authorization": "Bearer nobody-knows-this-one"},
                status=401,
            ),
            Case(
                "reader",
                "/v1/messages/test/tally/{p}",
                headers={**TEXT, "authorization": f"Bearer {READER}"},
                status=403,
            ),
            Case(
                "outside its functions",
                "/v1/call/test/tally/{p}",
                headers={**TEXT, "authorization": f"Bearer {SCOPED}"},
                status=403,
            ),
        ]
    else:
        rows += [
            Case(
                "foreign host",
                "/v1/messages/test/tally/{p}",
                headers={**TEXT, "host": "evil.example"},
                status=403,
            )
        ]
    return rows


def tokens_file(directory: Path) -> Path:
    path = directory / "tokens.yaml"
    entries = [
        {"token": CLIENT, "role": "client", "functions": ["test/*"]},
        {"token": SCOPED, "role": "client", "functions": ["shop/*"]},
        {"token": READER, "role": "reader"},
    ]
    path.write_text(yaml.safe_dump(entries))
    return path


def comparable(response: httpx.Response, name: str) -> tuple[int, list[tuple[str, str]], Any]:
    """Status, headers and body, the path's ``name`` masked; where a message was appended,
    its offset and partition (the two paths' messages are two messages) and the length
    they make."""
    body: Any = response.content.replace(name.encode(), b"{p}")
    headers = list(response.headers.items())
    try:
        parsed = json.loads(body)
    except ValueError:
        return response.status_code, headers, body
    if isinstance(parsed, dict) and "offset" in parsed:
        parsed = {**parsed, "offset": "n", "partition": "p"}
        headers = [(k, "n" if k == "content-length" else v) for k, v in headers]
    return response.status_code, headers, parsed


async def ask(app: Recorder, case: Case, path_name: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=15
    ) as client:
        headers = {k: v.replace("{p}", path_name) for k, v in case.headers.items()}
        return await client.post(
            case.path.replace("{p}", path_name),
            content=case.body,
            headers=headers,
            params=case.params,
        )


def counted(runtime: Runtime, route: str, status: int) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "statefun_ingress_requests_total", {"route": route, "method": "POST", "status": str(status)}
    )
    return value or 0.0


@pytest.mark.parametrize("tokened", [False, True], ids=["open", "tokens"])
def test_the_fast_path_answers_as_the_documented_routes(tokened: bool, tmp_path: Path) -> None:
    async def scenario() -> None:
        tokens = tokens_file(tmp_path) if tokened else None
        async with ingress(tokens) as (runtime, fast, documented):
            table = cases(tokened)
            for case in table:
                expected = case.open_status if not tokened and case.open_status else case.status
                answers = [await ask(fast, case, FAST), await ask(documented, case, DOCUMENTED)]
                for answer in answers:
                    assert answer.status_code == expected, (case.name, answer.text)
                assert comparable(answers[0], FAST) == comparable(answers[1], DOCUMENTED), case.name
                if case.name.endswith("again"):
                    assert answers[0].headers["idempotent-replayed"] == "true"
                if case.path.startswith("/v1/messages/test/tally/{p}") or case.name == "call":
                    # Served by the fast path: two ASGI messages, the whole body in one.
                    start, body = fast.sent[-1]
                    assert start["type"] == "http.response.start"
                    assert body["type"] == "http.response.body"
                    assert not body.get("more_body", False)
            # The metrics counted every request of both paths by its route template.
            for template in (
                "/v1/messages/{namespace}/{type_}/{id_:path}",
                "/v1/call/{namespace}/{type_}/{id_:path}",
            ):
                prefix = template.partition("{")[0]
                for status in (200, 202, 400, 403, 404, 413, 415, 422, 504):
                    rows = [
                        c
                        for c in table
                        if c.path.startswith(prefix)
                        and c.path != "/v1/messages/test/tally"
                        and (c.open_status if not tokened and c.open_status else c.status) == status
                    ]
                    assert counted(runtime, template, status) == 2 * len(rows), (template, status)

    asyncio.run(scenario())


def test_failures_inside_are_answered_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unavailable, a failed append and an unexpected exception: the same 503 and 500."""

    async def scenario() -> None:
        async with ingress(None) as (runtime, fast, documented):
            case = Case("send", "/v1/messages/test/tally/{p}")

            async def both() -> list[httpx.Response]:
                return [await ask(fast, case, "x"), await ask(documented, case, "x")]

            with monkeypatch.context() as m:
                m.setattr(runtime, "unavailable", lambda: ("log: the disk is full", 2.5))
                answers = await both()
                assert answers[0].status_code == 503
                assert answers[0].headers["retry-after"] == "3"
                assert comparable(answers[0], "x") == comparable(answers[1], "x")

            async def failing_append(*_: Any, **__: Any) -> tuple[int, int]:
                raise LogError("the disk is full")

            with monkeypatch.context() as m:
                m.setattr(runtime, "append_message", failing_append)
                answers = await both()
                assert answers[0].status_code == 503
                assert "may or may not have been accepted" in answers[0].json()["detail"]
                assert comparable(answers[0], "x") == comparable(answers[1], "x")

            async def broken_append(*_: Any, **__: Any) -> tuple[int, int]:
                raise RuntimeError("a bug")

            with monkeypatch.context() as m:
                m.setattr(runtime, "append_message", broken_append)
                answers = await both()
                assert answers[0].status_code == 500
                assert answers[0].json()["error"] == "internal"
                assert comparable(answers[0], "x") == comparable(answers[1], "x")

    asyncio.run(scenario())
