"""Calls to an https function endpoint that requires a client certificate (mutual TLS):
served with the module spec's CA and client certificate, refused without the certificate,
with a wrong CA, at a host name the certificate does not name, and with the system's
trust store (no settings); served when verification is explicitly off. Then the runtime
as a whole, its module spec naming the files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import client, module_for, post_message, running_runtime, serve, state_values
from support import wait_until as wait_for
from tls_pki import Pki, make_pki

from runtime.errors import CallFailed
from runtime.function_client import FunctionClient
from sdk import Context, IntType, Message, StatefulFunctions, ValueSpec
from statefun.address import Address
from statefun.module_spec import EndpointTls, FunctionTypePattern, HttpEndpoint, HttpTimeouts
from statefun.protocol import (
    FunctionRequest,
    Invocation,
    InvocationBatch,
    InvocationResult,
    StateMutation,
)
from statefun.values import to_typed_value

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

functions = StatefulFunctions()


@functions.bind("tls/counter", specs=[ValueSpec("count", IntType)])
def counter(context: Context, message: Message) -> None:
    context.storage.count = (context.storage.count or 0) + (message.as_int() or 0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_url(pki: Pki) -> Iterator[str]:
    """Our SDK's functions over https, answering only clients with a certificate of the CA."""
    with serve(functions.asgi_app(), **pki.server_options()) as server:
        yield f"{server.url}/statefun"


def endpoint(url: str, tls: EndpointTls | None) -> HttpEndpoint:
    return HttpEndpoint(
        FunctionTypePattern.parse("tls/*"),
        url,
        timeouts=HttpTimeouts(call=5, connect=5, read=5, write=5),
        protocol="native",
        tls=tls,
    )


async def count(url: str, tls: EndpointTls | None) -> object:
    """The outcome of adding 2 to a fresh counter at ``url``."""
    batch = InvocationBatch(
        Address.of("tls/counter", "a"),
        {"count": None},
        [Invocation(None, to_typed_value(IntType, 2))],
    )
    function_client = FunctionClient(endpoint(url, tls), max_connections=2)
    try:
        (outcome,) = (await function_client.invoke(url, FunctionRequest([batch]))).outcomes
        return outcome
    finally:
        await function_client.close()


async def test_the_ca_and_a_client_certificate_are_served(pki: Pki, server_url: str) -> None:
    tls = EndpointTls(pki.ca, pki.client_cert, pki.client_key)
    assert await count(server_url, tls) == InvocationResult(
        mutations=[StateMutation("count", to_typed_value(IntType, 2))]
    )


async def test_an_encrypted_client_key_with_its_password_is_served(
    pki: Pki, server_url: str
) -> None:
    tls = EndpointTls(pki.ca, pki.client_cert, pki.client_key_encrypted, pki.key_password)
    assert isinstance(await count(server_url, tls), InvocationResult)


async def test_without_a_client_certificate_the_endpoint_refuses(pki: Pki, server_url: str) -> None:
    with pytest.raises(CallFailed, match=r"POST https://127\.0\.0\.1:\d+/statefun failed"):
        await count(server_url, EndpointTls(pki.ca))


@pytest.mark.parametrize(
    "tls",
    ["wrong CA", "system trust store"],
)
async def test_a_server_certificate_not_of_the_trusted_ca_is_refused(
    pki: Pki, server_url: str, tls: str
) -> None:
    settings = (
        EndpointTls(pki.other_ca, pki.client_cert, pki.client_key) if tls == "wrong CA" else None
    )
    with pytest.raises(CallFailed, match="certificate verify failed"):
        await count(server_url, settings)


async def test_a_host_name_the_certificate_does_not_name_is_refused(
    pki: Pki, server_url: str
) -> None:
    url = server_url.replace("127.0.0.1", "localhost")
    with pytest.raises(CallFailed, match="certificate verify failed: Hostname mismatch"):
        await count(url, EndpointTls(pki.ca, pki.client_cert, pki.client_key))


async def test_with_verification_explicitly_off_any_server_certificate_is_taken(
    pki: Pki, server_url: str
) -> None:
    tls = EndpointTls(None, pki.client_cert, pki.client_key, verify=False)
    assert isinstance(await count(server_url, tls), InvocationResult)


def test_the_runtime_calls_an_endpoint_over_mutual_tls(pki: Pki, server_url: str) -> None:
    module = module_for(
        server_url,
        functions="tls/*",
        extra=(
            "    type: io.statefun.transports.v1/async\n"
            f"    trust_cacerts: {pki.ca}\n"
            f"    client_cert: {pki.client_cert}\n"
            f"    client_key: {pki.client_key}\n"
        ),
    )
    with running_runtime(module) as rt, client(rt.url) as http:
        assert post_message(http, "tls/counter/b", 5).status_code == 202
        wait_for(lambda: state_values(http, "tls/counter/b") == {"count": 5})
