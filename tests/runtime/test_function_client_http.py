"""The function client's own HTTP client (aiohttp, when no transport is given) against a
real server: the endpoint's answer bound holds whether the answer declares its length or
not, what the request asks for, and failures to connect or to read in time are
:class:`CallFailed` naming what happened. An injected httpx transport keeps the bound."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from support import asgi_body, serve

from runtime.errors import CallFailed
from runtime.function_client import FunctionClient
from statefun import native_codec
from statefun.address import Address
from statefun.module_spec import FunctionTypePattern, HttpEndpoint, HttpTimeouts
from statefun.protocol import (
    FunctionRequest,
    FunctionResponse,
    Invocation,
    InvocationBatch,
    InvocationResult,
    StateMutation,
)
from statefun.values import TypedValue

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LIMIT = 4096
"""The endpoint's ``max_answer_bytes`` in these tests."""

ADDRESS = Address.of("http/fn", "a")
VALUE = TypedValue("io.statefun.types/int", b"\x00\x00\x00\x02")


def outcome(size: int) -> InvocationResult:
    """An outcome whose state value has ``size`` bytes."""
    return InvocationResult(mutations=[StateMutation("seen", TypedValue("t/bytes", b"x" * size))])


class Endpoint:
    """``/sized/N`` and ``/unsized/N``: a native answer with :func:`outcome` ``(N)`` (with
    and without a content length); ``/silent``: never answers. Keeps each request's
    headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asgi_body(receive)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        kind, _, size = scope["path"].strip("/").partition("/")
        if kind == "silent":
            await asyncio.sleep(30)
            return
        content = native_codec.encode_response(FunctionResponse([outcome(int(size))]))
        # A parameter after the media type changes nothing.
        headers = [(b"content-type", native_codec.CONTENT_TYPE.encode() + b"; x=1")]
        if kind == "sized":
            headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if kind == "sized":
            await send({"type": "http.response.body", "body": content})
            return
        for start in range(0, len(content), 1024):  # chunked, in parts
            piece = content[start : start + 1024]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def endpoint_app() -> Endpoint:
    return Endpoint()


@pytest.fixture(scope="module")
def base_url(endpoint_app: Endpoint) -> Iterator[str]:
    with serve(endpoint_app) as server:
        yield server.url


def http_endpoint(url: str, read: float = 5) -> HttpEndpoint:
    return HttpEndpoint(
        FunctionTypePattern.parse("http/*"),
        url,
        timeouts=HttpTimeouts(call=10, connect=5, read=read, write=5),
        protocol="native",
        max_answer_bytes=LIMIT,
    )


async def call(url: str, read: float = 5) -> object:
    batch = InvocationBatch(ADDRESS, {"seen": None}, [Invocation(None, VALUE)])
    client = FunctionClient(http_endpoint(url, read), max_connections=2)
    try:
        (outcome,) = (await client.invoke(url, FunctionRequest([batch]))).outcomes
        return outcome
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["sized", "unsized"])
async def test_an_answer_within_the_bound_is_decoded(base_url: str, kind: str) -> None:
    # The value a little under the bound: the answer around it stays within it.
    assert await call(f"{base_url}/{kind}/{LIMIT - 200}") == outcome(LIMIT - 200)


@pytest.mark.parametrize("kind", ["sized", "unsized"])
async def test_an_answer_over_the_bound_fails_the_call_as_a_protocol_violation(
    base_url: str, kind: str
) -> None:
    with pytest.raises(CallFailed, match=r"larger than the endpoint's payload_max_bytes") as e:
        await call(f"{base_url}/{kind}/{LIMIT}")
    assert e.value.protocol_violation


async def test_the_request_asks_for_the_native_protocol_and_no_compression(
    base_url: str, endpoint_app: Endpoint
) -> None:
    await call(f"{base_url}/sized/10")
    sent = endpoint_app.headers[-1]
    assert sent["content-type"] == native_codec.CONTENT_TYPE
    assert sent["accept"] == native_codec.CONTENT_TYPE
    # Answers are taken as they come, never decompressed: none may be asked for.
    assert "accept-encoding" not in sent


async def test_an_answer_slower_than_the_read_timeout_fails_the_call(base_url: str) -> None:
    with pytest.raises(CallFailed, match=r"POST .*/silent/0 failed: \w*Timeout\w*"):
        await call(f"{base_url}/silent/0", read=0.3)


async def test_nothing_listening_fails_the_call_naming_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{s.getsockname()[1]}/fn"
        with pytest.raises(CallFailed, match=r"POST http://127\.0\.0\.1:\d+/fn failed: \w+"):
            await call(url)


@pytest.mark.parametrize("sized", [True, False])
async def test_an_injected_transport_keeps_the_bound(sized: bool) -> None:
    """The same bound through an httpx transport (what tests and embeddings pass)."""
    url = "http://functions.test/fn"
    content = native_codec.encode_response(FunctionResponse([outcome(LIMIT)]))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 1024):
            yield content[start : start + 1024]

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": native_codec.CONTENT_TYPE}
        if sized:
            return httpx.Response(200, headers=headers, content=content)
        return httpx.Response(200, headers=headers, content=chunks())

    batch = InvocationBatch(ADDRESS, {"seen": None}, [Invocation(None, VALUE)])
    client = FunctionClient(
        http_endpoint(url), max_connections=1, transport=httpx.MockTransport(answer)
    )
    try:
        with pytest.raises(CallFailed, match=r"larger than the endpoint's payload_max_bytes"):
            await client.invoke(url, FunctionRequest([batch]))
    finally:
        await client.close()
