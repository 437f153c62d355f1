"""The FastAPI app: the native protocol over HTTP, discovery and health."""

from __future__ import annotations

import time
import warnings

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

with warnings.catch_warnings():
    # Starlette 1.x deprecates its TestClient on httpx in favour of httpx2, which the
    # project does not depend on; the warning fires once, at import.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from sdk import Context, IntType, Message, StatefulFunctions, ValueSpec, message_builder
from statefun.address import Address
from statefun.native_codec import CONTENT_TYPE, decode_response, encode_request
from statefun.protocol import (
    FunctionRequest,
    Invocation,
    InvocationBatch,
    InvocationResult,
    OutgoingMessage,
    StateMutation,
)
from statefun.signing import DEFAULT_REPLAY_WINDOW, RequestSigner
from statefun.values import to_typed_value


def make_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("ex/counter", specs=[ValueSpec("count", IntType)])
    async def counter(context: Context, message: Message) -> None:
        context.storage.count = (context.storage.count or 0) + (message.as_int() or 0)
        context.send(
            message_builder("ex/sink", context.address.id, int_value=context.storage.count)
        )

    @functions.bind("ex/echo")
    def echo(context: Context, message: Message) -> None:
        context.reply(int_value=message.as_int() or 0)

    return functions


@pytest.fixture
def client() -> TestClient:
    return TestClient(make_functions().asgi_app())


def request_body(*batches: InvocationBatch) -> bytes:
    return encode_request(FunctionRequest(list(batches)))


def test_post_runs_the_batches(client: TestClient) -> None:
    one, two = to_typed_value(IntType, 1), to_typed_value(IntType, 2)
    body = request_body(
        InvocationBatch(Address("ex", "counter", "a"), {"count": one}, [Invocation(None, two)]),
        InvocationBatch(Address("ex", "echo", "b"), {}, [Invocation(Address("ex", "x", "y"), one)]),
    )
    response = client.post("/statefun", content=body, headers={"content-type": CONTENT_TYPE})
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    three = to_typed_value(IntType, 3)
    assert decode_response(response.content).outcomes == [
        InvocationResult(
            mutations=[StateMutation("count", three)],
            messages=[OutgoingMessage(Address("ex", "sink", "a"), three)],
        ),
        InvocationResult(messages=[OutgoingMessage(Address("ex", "x", "y"), one)]),
    ]


def test_a_content_type_with_parameters_is_accepted(client: TestClient) -> None:
    response = client.post(
        "/statefun", content=request_body(), headers={"content-type": f"{CONTENT_TYPE}; v=1"}
    )
    assert response.status_code == 200
    assert decode_response(response.content).outcomes == []


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream", None])
def test_another_content_type_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post("/statefun", content=request_body(), headers=headers)
    assert response.status_code == 415
    assert response.json() == {
        "error": "unsupported_media_type",
        "detail": f"expected Content-Type {CONTENT_TYPE}, got {content_type or 'none'}",
    }


@pytest.mark.parametrize("body", [b"", b"\x93garbage", b"\x92\x02\x90"])
def test_a_body_that_is_not_a_native_request_is_400(client: TestClient, body: bytes) -> None:
    response = client.post("/statefun", content=body, headers={"content-type": CONTENT_TYPE})
    assert response.status_code == 400
    payload = response.json()
    assert payload["error"] == "invalid_request"
    assert payload["detail"]


def test_another_protocol_version_is_400_naming_it(client: TestClient) -> None:
    response = client.post(
        "/statefun", content=b"\x92\x02\x90", headers={"content-type": CONTENT_TYPE}
    )
    assert "version 2" in response.json()["detail"]


def test_get_path_describes_the_endpoint(client: TestClient) -> None:
    response = client.get("/statefun")
    assert response.status_code == 200
    assert response.json() == {"protocols": ["native/1"], "functions": ["ex/counter", "ex/echo"]}


def test_health(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "functions": ["ex/counter", "ex/echo"]}


def test_a_custom_path_and_late_registrations() -> None:
    functions = make_functions()
    client = TestClient(functions.asgi_app("/fn"))
    functions.register("ex/late", lambda context, message: None)
    assert client.get("/fn").json()["functions"] == ["ex/counter", "ex/echo", "ex/late"]
    assert client.get("/statefun").status_code == 404


def test_a_post_elsewhere_is_not_an_invocation() -> None:
    client = TestClient(make_functions().asgi_app("/fn"))
    body = request_body()
    assert (
        client.post("/fn", content=body, headers={"content-type": CONTENT_TYPE}).status_code == 200
    )
    assert (
        client.post("/fn/x", content=body, headers={"content-type": CONTENT_TYPE}).status_code
        == 404
    )
    assert client.post("/statefun", content=body).status_code == 404


def test_an_app_mounted_under_a_prefix_serves_its_path_there() -> None:
    outer = FastAPI()
    outer.mount("/functions", make_functions().asgi_app())
    client = TestClient(outer)
    one = to_typed_value(IntType, 1)
    caller = Address("ex", "x", "y")
    body = request_body(InvocationBatch(Address("ex", "echo", "b"), {}, [Invocation(caller, one)]))
    response = client.post(
        "/functions/statefun", content=body, headers={"content-type": CONTENT_TYPE}
    )
    assert response.status_code == 200
    assert decode_response(response.content).outcomes == [
        InvocationResult(messages=[OutgoingMessage(caller, one)])
    ]
    assert client.get("/functions/health").json()["status"] == "ok"


@pytest.mark.anyio
async def test_a_body_sent_in_parts_is_read_whole() -> None:
    app = make_functions().asgi_app()
    one = to_typed_value(IntType, 1)
    body = request_body(
        InvocationBatch(Address("ex", "counter", "a"), {"count": None}, [Invocation(None, one)])
    )
    parts = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.request", "body": body[5:], "more_body": False},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return parts.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/statefun",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", CONTENT_TYPE.encode())],
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()
    (outcome,) = decode_response(sent[1]["body"]).outcomes
    assert isinstance(outcome, InvocationResult)
    assert [m.name for m in outcome.mutations] == ["count"]


@pytest.mark.parametrize("path", ["statefun", "", "/health"])
def test_invalid_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        StatefulFunctions().asgi_app(path)


# --- signed calls -------------------------------------------------------------------------

RUNTIME_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def verifying() -> TestClient:
    return TestClient(make_functions().asgi_app(verify_key=RUNTIME_KEY.public_key()))


ONE, CALLER = to_typed_value(IntType, 1), Address("ex", "x", "y")


def echo_call() -> bytes:
    return request_body(InvocationBatch(Address("ex", "echo", "b"), {}, [Invocation(CALLER, ONE)]))


def signed_post(client: TestClient, key: Ed25519PrivateKey, *, ago: float = 0.0) -> httpx.Response:
    """Post an echo call signed by ``key`` ``ago`` seconds ago."""
    body = echo_call()
    clock = lambda: time.time() - ago  # noqa: E731
    headers = {
        "content-type": CONTENT_TYPE,
        **dict(RequestSigner(key, clock).headers("POST", body)),
    }
    return client.post("/statefun", content=body, headers=headers)


def test_a_verifying_app_serves_a_request_the_runtime_signed(verifying: TestClient) -> None:
    response = signed_post(verifying, RUNTIME_KEY)
    assert response.status_code == 200
    assert decode_response(response.content).outcomes == [
        InvocationResult(messages=[OutgoingMessage(CALLER, ONE)])
    ]


def test_a_forged_request_is_401(verifying: TestClient) -> None:
    response = signed_post(verifying, Ed25519PrivateKey.generate())
    assert response.status_code == 401
    assert response.json() == {
        "error": "bad_signature",
        "detail": "the signature does not match the request",
    }


def test_a_replayed_stale_request_is_401(verifying: TestClient) -> None:
    response = signed_post(verifying, RUNTIME_KEY, ago=DEFAULT_REPLAY_WINDOW + 60)
    assert response.status_code == 401
    assert response.json()["error"] == "stale_signature"


def test_an_unsigned_request_is_401_even_when_it_is_not_a_request(
    verifying: TestClient,
) -> None:
    for content_type in (CONTENT_TYPE, "text/plain"):
        response = verifying.post("/statefun", content=b"x", headers={"content-type": content_type})
        assert response.status_code == 401
        assert response.json()["error"] == "missing_signature"


def test_a_verifying_app_describes_itself_to_the_runtime_only(verifying: TestClient) -> None:
    assert verifying.get("/statefun").status_code == 401
    headers = dict(RequestSigner(RUNTIME_KEY).headers("GET", b""))
    assert verifying.get("/statefun", headers=headers).json()["protocols"] == ["native/1"]
    assert verifying.get("/health").status_code == 200
