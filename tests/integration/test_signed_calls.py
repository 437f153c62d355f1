"""Signed function calls end to end: a runtime whose module spec gives an endpoint a
signing key calls an SDK app that verifies with the public key; a request signed with
another key, an unsigned one and a stale one are refused with 401 over real HTTP; and
``statefun keys new``."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from functions import make_test_functions
from httpx_aiohttp import AiohttpTransport
from support import ServerThread, client, module_for, running_runtime, serve

from runtime import cli
from runtime.errors import CallFailed
from runtime.function_client import FunctionClient
from statefun.address import Address
from statefun.module_spec import HttpEndpoint
from statefun.native_codec import CONTENT_TYPE, decode_request, encode_request
from statefun.protocol import FunctionRequest, Invocation, InvocationBatch
from statefun.signing import (
    DEFAULT_REPLAY_WINDOW,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    SIGNATURE_HEADER,
    RequestSigner,
    load_private_key,
    public_keys,
    write_key_pair,
)
from statefun.values import StringType, to_typed_value

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def verifying(key_files: tuple[Path, Path]) -> Iterator[ServerThread]:
    """The test functions, served only to requests signed with the key pair's private key."""
    _, public = key_files
    with serve(make_test_functions().asgi_app(verify_key=public)) as server:
        yield server


def test_a_runtime_with_the_key_is_served(
    verifying: ServerThread, key_files: tuple[Path, Path]
) -> None:
    private, _ = key_files
    module = module_for(
        f"{verifying.url}/statefun",
        functions="test/*",
        extra=f"  signing: {{keyFile: '{private}'}}\n",
    )
    with running_runtime(module) as rt, client(rt.url) as http:
        answer = http.post(
            "/v1/call/test/echo/a", content="signed", headers={"content-type": "text/plain"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["value"] == "echo: signed"


def echo_request() -> bytes:
    batch = InvocationBatch(
        Address("test", "echo", "a"),
        {},
        [Invocation(Address("test", "caller", "c"), to_typed_value(StringType, "x"))],
    )
    return encode_request(FunctionRequest([batch]))


def post_signed(http: httpx.Client, url: str, key: Ed25519PrivateKey, ago: float) -> httpx.Response:
    """An echo call signed by ``key`` ``ago`` seconds ago."""
    body = echo_request()
    signer = RequestSigner(key, clock=lambda: time.time() - ago)
    headers = {"content-type": CONTENT_TYPE, **dict(signer.headers("POST", body))}
    return http.post(url, content=body, headers=headers)


def test_a_stale_request_is_refused(verifying: ServerThread, key_files: tuple[Path, Path]) -> None:
    key = load_private_key(key_files[0])
    url = f"{verifying.url}/statefun"
    with httpx.Client(timeout=10) as http:
        stale = post_signed(http, url, key, ago=DEFAULT_REPLAY_WINDOW + 30)
        assert stale.status_code == 401
        assert stale.json()["error"] == "stale_signature"
        fresh = post_signed(http, url, key, ago=0)  # the same request, signed now
        assert fresh.status_code == 200, fresh.text
        assert fresh.headers["content-type"] == CONTENT_TYPE


@pytest.mark.parametrize(
    ("key", "error"), [(Ed25519PrivateKey.generate(), "bad_signature"), (None, "missing_signature")]
)
def test_a_runtime_with_another_key_or_none_is_refused(
    verifying: ServerThread, key: Ed25519PrivateKey | None, error: str
) -> None:
    url = f"{verifying.url}/statefun"
    spec = module_for(url, functions="test/*").endpoints[0]
    endpoint: HttpEndpoint = replace(spec, signing_key=key)

    async def call() -> str:
        function_client = FunctionClient(endpoint, max_connections=1)
        try:
            with pytest.raises(CallFailed) as info:
                await function_client.invoke(url, FunctionRequest([]))
            assert function_client.protocol_of(url) is None  # a 401 decides no protocol
            return info.value.reason
        finally:
            await function_client.close()

    reason = asyncio.run(call())
    assert f"GET {url} answered 401" in reason
    assert error in reason


class UnsignedPosts(httpx.AsyncBaseTransport):
    """The runtime's transport, with the signature of every POST taken off."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            del request.headers[SIGNATURE_HEADER]
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_refused_call_keeps_the_negotiated_protocol(
    verifying: ServerThread, key_files: tuple[Path, Path]
) -> None:
    url = f"{verifying.url}/statefun"
    spec = module_for(url, functions="test/*").endpoints[0]
    endpoint = replace(spec, signing_key=load_private_key(key_files[0]))

    async def call() -> str:
        function_client = FunctionClient(endpoint, max_connections=1, transport=UnsignedPosts())
        try:
            with pytest.raises(CallFailed) as info:
                await function_client.invoke(url, decode_request(echo_request()))
            assert function_client.protocol_of(url) == "native"  # the signed GET decided it
            return info.value.reason
        finally:
            await function_client.close()

    reason = asyncio.run(call())
    assert f"POST {url} answered 401" in reason
    assert "missing_signature" in reason


def test_statefun_keys_new_writes_a_pair_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "keys"
    assert cli.main(["keys", "new", str(folder)]) == 0
    private, public = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    assert f"{private}\n" in capsys.readouterr().out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_private_key(private)
    assert public_keys(public) == (key.public_key(),)
    assert cli.main(["keys", "new", str(folder)]) == 1
    assert f"{private} exists already" in capsys.readouterr().err
    assert load_private_key(private).public_key() == key.public_key()  # kept
