"""``FunctionClient`` with both protocols: negotiation and its cache, one request per batch
under StateFun's protocol, and what a failed part of a split request becomes.

Against the real thing (the official SDK's aiohttp service, our SDK's app) where the
behaviour is theirs, and against a scripted endpoint where a test needs an endpoint to
change its mind or fail on cue.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import pytest
from conftest import OfficialFunctions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from httpx_aiohttp import AiohttpTransport

from runtime.errors import CallFailed
from runtime.function_client import FunctionClient
from sdk import StatefulFunctions
from statefun import native_codec
from statefun.address import Address
from statefun.module_spec import FunctionTypePattern, HttpEndpoint, HttpTimeouts
from statefun.protobuf_codec import FromFunction, ToFunction
from statefun.protocol import (
    FunctionFailure,
    FunctionRequest,
    FunctionResponse,
    Invocation,
    InvocationBatch,
    InvocationResult,
    MissingStateSpecs,
    StateMutation,
)
from statefun.signing import SIGNATURE_HEADER
from statefun.values import IntType, TypedValue, to_typed_value

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


def endpoint(url: str, protocol: str = "auto", functions: str = "official/*") -> HttpEndpoint:
    return HttpEndpoint(
        FunctionTypePattern.parse(functions),
        url,
        timeouts=HttpTimeouts(call=5, read=5),
        protocol=protocol,
    )


def batch(
    function_type: str, id_: str, *values: int, **state: TypedValue | None
) -> InvocationBatch:
    return InvocationBatch(
        Address.of(function_type, id_),
        dict(state),
        [Invocation(None, to_typed_value(IntType, v)) for v in values],
    )


class Recording(httpx.AsyncBaseTransport):
    """A transport that records (method, url) of each request, then passes it on."""

    def __init__(self, inner: httpx.AsyncBaseTransport):
        self.inner = inner
        self.requests: list[tuple[str, str]] = []
        self.signed: list[bool] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, str(request.url)))
        self.signed.append(SIGNATURE_HEADER in request.headers)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.requests if m == method)


COUNTER_STATE: dict[str, TypedValue | None] = {"count": None, "callers": None, "note": None}


# --- against the real SDKs ----------------------------------------------------------------------


async def test_auto_negotiates_once_per_url_and_splits_batches_for_the_official_sdk(
    official: OfficialFunctions,
) -> None:
    transport = Recording(AiohttpTransport())
    client = FunctionClient(endpoint(official.url), max_connections=4, transport=transport)
    try:
        assert client.protocol_of(official.url) is None
        request = FunctionRequest(
            [batch("official/counter", i, 1, 2, **COUNTER_STATE) for i in ("a", "b", "c")]
        )
        # callers arriving together share one negotiation
        first, second = await asyncio.gather(
            client.invoke(official.url, request), client.invoke(official.url, request)
        )
        assert first == second
        assert client.protocol_of(official.url) == "statefun"
        assert transport.count("GET") == 1
        assert transport.count("POST") == 6  # StateFun's protocol: one request per batch
        for outcome in first.outcomes:
            assert isinstance(outcome, InvocationResult)
            assert outcome.mutations[0] == StateMutation("count", to_typed_value(IntType, 3))
        await client.invoke(official.url, request)
        assert transport.count("GET") == 1
        assert transport.count("POST") == 9
    finally:
        await client.close()


async def test_auto_speaks_native_to_our_sdk_with_many_batches_per_request(ours_url: str) -> None:
    transport = Recording(AiohttpTransport())
    client = FunctionClient(
        endpoint(ours_url, functions="ours/*"), max_connections=4, transport=transport
    )
    try:
        request = FunctionRequest(
            [batch("ours/counter", i, 5, count=None) for i in ("a", "b", "c")]
        )
        response = await client.invoke(ours_url, request)
        assert client.protocol_of(ours_url) == "native"
        assert transport.requests == [("GET", ours_url), ("POST", ours_url)]
        assert all(
            o == InvocationResult(mutations=[StateMutation("count", to_typed_value(IntType, 5))])
            for o in response.outcomes
        )
    finally:
        await client.close()


async def test_signed_calls_reach_the_official_sdk_which_ignores_the_signature(
    official: OfficialFunctions,
) -> None:
    signed = replace(endpoint(official.url), signing_key=Ed25519PrivateKey.generate())
    transport = Recording(AiohttpTransport())
    client = FunctionClient(signed, max_connections=4, transport=transport)
    try:
        request = FunctionRequest([batch("official/counter", "signed", 4, **COUNTER_STATE)])
        response = await client.invoke(official.url, request)
        assert client.protocol_of(official.url) == "statefun"
        assert transport.signed == [True, True]  # the GET and the POST
        [outcome] = response.outcomes
        assert isinstance(outcome, InvocationResult)
        assert outcome.mutations[0] == StateMutation("count", to_typed_value(IntType, 4))
    finally:
        await client.close()


async def test_a_500_from_the_official_sdk_fails_only_its_own_batch(
    official: OfficialFunctions,
) -> None:
    client = FunctionClient(endpoint(official.url), max_connections=4)
    official.flaky_flag.touch()
    try:
        first_contact = await client.invoke(
            official.url, FunctionRequest([batch("official/flaky", "x", 1)])
        )
        assert isinstance(first_contact.outcomes[0], MissingStateSpecs)
        mixed = await client.invoke(
            official.url,
            FunctionRequest(
                [
                    batch("official/counter", "ok", 1, **COUNTER_STATE),
                    batch("official/flaky", "x", 1, count=None),
                ]
            ),
        )
        ok, failed = mixed.outcomes
        assert isinstance(ok, InvocationResult)
        assert isinstance(failed, FunctionFailure)
        assert failed.address == Address("official", "flaky", "x")
        assert failed.error_type == "CallFailed"
        assert "answered 500" in failed.message
        # every batch failing is a failed call
        with pytest.raises(CallFailed, match="answered 500"):
            await client.invoke(
                official.url,
                FunctionRequest(
                    [
                        batch("official/flaky", "x", 1, count=None),
                        batch("official/flaky", "y", 1, count=None),
                    ]
                ),
            )
    finally:
        official.flaky_flag.unlink()
        await client.close()


# --- against a scripted endpoint ------------------------------------------------------------------


class ScriptedEndpoint:
    """An endpoint that speaks ``self.speaks`` ("native" like our SDK, "statefun" like the
    official one); batches for ids in ``self.failing`` fail with HTTP 500."""

    def __init__(self, speaks: str):
        self.speaks = speaks
        self.failing: set[str] = set()
        self.posts: list[tuple[str, list[str]]] = []  # (url, ids)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            if self.speaks == "native":
                return httpx.Response(200, json={"protocols": ["native/1"], "functions": []})
            return httpx.Response(405, text="Method Not Allowed")
        body = await request.aread()
        content_type = request.headers["content-type"]
        if self.speaks == "native":
            if content_type != native_codec.CONTENT_TYPE:
                return httpx.Response(415, json={"error": "unsupported_media_type"})
            batches = native_codec.decode_request(body).batches
            self.posts.append((str(request.url), [b.target.id for b in batches]))
            if any(b.target.id in self.failing for b in batches):
                return httpx.Response(500, text="Internal Server Error")
            outcomes = [InvocationResult() for _ in batches]
            return httpx.Response(
                200,
                content=native_codec.encode_response(FunctionResponse(list(outcomes))),
                headers={"content-type": native_codec.CONTENT_TYPE},
            )
        # the official SDK parses whatever it is sent as a ToFunction
        try:
            target = ToFunction.FromString(body).invocation.target
        except Exception:
            return httpx.Response(500, text="Internal Server Error")
        self.posts.append((str(request.url), [target.id]))
        if not target.id or target.id in self.failing:
            return httpx.Response(500, text="Internal Server Error")
        answer = FromFunction(invocation_result={"state_mutations": []})
        return httpx.Response(200, content=answer.SerializeToString())


URL = "http://functions.test/statefun"


def scripted_client(
    script: ScriptedEndpoint, protocol: str = "auto", template: str = URL
) -> tuple[FunctionClient, Recording]:
    transport = Recording(httpx.MockTransport(script))
    return FunctionClient(
        endpoint(template, protocol), max_connections=4, transport=transport
    ), transport


def two_batches(*ids: str) -> FunctionRequest:
    return FunctionRequest([batch("official/counter", i, 1) for i in ids])


async def test_an_endpoint_redeployed_with_the_other_sdk_is_negotiated_again() -> None:
    script = ScriptedEndpoint("native")
    client, transport = scripted_client(script)
    await client.invoke(URL, two_batches("a", "b"))
    assert client.protocol_of(URL) == "native"
    script.speaks = "statefun"  # native bytes make the official SDK fail
    with pytest.raises(CallFailed, match="answered 500"):
        await client.invoke(URL, two_batches("a", "b"))
    assert client.protocol_of(URL) is None
    await client.invoke(URL, two_batches("a", "b"))
    assert client.protocol_of(URL) == "statefun"
    script.speaks = "native"  # our SDK refuses protobuf with 415
    with pytest.raises(CallFailed, match="answered 415"):
        await client.invoke(URL, two_batches("a", "b"))
    await client.invoke(URL, two_batches("a", "b"))
    assert client.protocol_of(URL) == "native"
    assert transport.count("GET") == 3


async def test_a_negotiation_without_an_answer_decides_nothing() -> None:
    script = ScriptedEndpoint("statefun")
    down = True

    async def flaky_network(request: httpx.Request) -> httpx.Response:
        if down:
            raise httpx.ConnectError("connection refused", request=request)
        return await script(request)

    client = FunctionClient(
        endpoint(URL), max_connections=4, transport=httpx.MockTransport(flaky_network)
    )
    with pytest.raises(CallFailed, match=r"GET .* failed: ConnectError"):
        await client.invoke(URL, two_batches("a"))
    assert client.protocol_of(URL) is None
    down = False
    await client.invoke(URL, two_batches("a"))
    assert client.protocol_of(URL) == "statefun"


async def test_an_endpoint_advertising_only_other_protocols_is_a_protocol_violation() -> None:
    async def future_sdk(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"protocols": ["native/2"]})

    client = FunctionClient(
        endpoint(URL), max_connections=4, transport=httpx.MockTransport(future_sdk)
    )
    with pytest.raises(CallFailed, match="speaks native/2") as failed:
        await client.invoke(URL, two_batches("a"))
    assert failed.value.protocol_violation


@pytest.mark.parametrize("protocol", ["native", "statefun"])
async def test_an_explicit_protocol_is_never_negotiated(protocol: str) -> None:
    client, transport = scripted_client(ScriptedEndpoint(protocol), protocol)
    await client.invoke(URL, two_batches("a", "b"))
    assert transport.count("GET") == 0
    assert transport.count("POST") == (1 if protocol == "native" else 2)


async def test_split_statefun_requests_keep_the_order_and_fail_per_batch() -> None:
    script = ScriptedEndpoint("statefun")
    script.failing = {"b"}
    client, _ = scripted_client(script, "statefun")
    response = await client.invoke(URL, two_batches("a", "b", "c"))
    a, b, c = response.outcomes
    assert a == c == InvocationResult()
    assert isinstance(b, FunctionFailure)
    assert b.describe().startswith("official/counter at official/counter/b raised CallFailed: POST")
    script.failing = {"a", "b", "c"}
    with pytest.raises(CallFailed, match=r"answered 500.*\(and 2 more failed calls\)"):
        await client.invoke(URL, two_batches("a", "b", "c"))


@pytest.mark.parametrize("protocol", ["native", "statefun"])
async def test_batches_of_types_with_their_own_urls_go_to_their_own_urls(protocol: str) -> None:
    script = ScriptedEndpoint(protocol)
    client, _ = scripted_client(script, protocol, template="http://functions.test/{function.name}")
    request = FunctionRequest(
        [
            batch("official/counter", "a", 1),
            batch("official/notes", "b", 1),
            batch("official/counter", "c", 1),
        ]
    )
    response = await client.invoke("http://functions.test/counter", request)
    assert response.outcomes == [InvocationResult()] * 3
    by_url: dict[str, list[str]] = {}
    for url, ids in script.posts:
        by_url.setdefault(url, []).extend(ids)
    assert {u: sorted(ids) for u, ids in by_url.items()} == {
        "http://functions.test/counter": ["a", "c"],
        "http://functions.test/notes": ["b"],
    }
    if protocol == "native":
        assert len(script.posts) == 2


async def test_scripted_native_answers_are_what_our_sdk_answers() -> None:
    """The scripted endpoint's GET answer is our SDK's, so negotiating with it means something."""
    transport = httpx.ASGITransport(app=StatefulFunctions().asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://functions.test") as http:
        described = (await http.get("/statefun")).json()
    assert described["protocols"] == ["native/1"]
