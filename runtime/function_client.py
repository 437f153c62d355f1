"""Calls to function endpoints: one HTTP round trip of the invocation protocol.

httpx is the client API (``httpx.Request``/``httpx.Response`` over an
``httpx.AsyncBaseTransport``); the transport is aiohttp's (``httpx-aiohttp``), chosen by
measurement (``bench/transport.py``): httpx's own pool serialises under concurrency.
Requests go straight to the transport: ``httpx.AsyncClient`` adds cookie, redirect and
header-merging work per request that a protocol call never needs (about a third of the
client's CPU here). A test or an embedding may pass any httpx transport instead
(``httpx.ASGITransport`` calls an ASGI app in-process).

Every way a call can go wrong is a :class:`CallFailed`; retrying is the caller's
business (it knows the batch's call budget).
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

from statefun import native_codec
from statefun.errors import ProtocolError
from statefun.module_spec import HttpEndpoint
from statefun.protocol import FunctionRequest, FunctionResponse

_HEADERS = (
    ("content-type", native_codec.CONTENT_TYPE),
    ("accept", native_codec.CONTENT_TYPE),
)


class CallFailed(Exception):
    """A call did not produce a valid response; ``protocol_violation`` if the endpoint
    answered with something that breaks the protocol (rather than failing to answer)."""

    def __init__(self, reason: str, *, protocol_violation: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.protocol_violation = protocol_violation


class FunctionClient:
    """Sends invocation requests to one endpoint over a pooled HTTP transport."""

    def __init__(
        self,
        endpoint: HttpEndpoint,
        *,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        t = endpoint.timeouts
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._transport = transport or AiohttpTransport(limits=limits)
        self._timeouts = {"connect": t.connect, "read": t.read, "write": t.write, "pool": t.call}
        self._urls: dict[str, httpx.URL] = {}  # parsing a URL costs more than sending a call

    async def invoke(self, url: str, request: FunctionRequest) -> FunctionResponse:
        body = native_codec.encode_request(request)
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = httpx.URL(url)
        outgoing = httpx.Request(
            "POST", parsed, content=body, headers=_HEADERS, extensions={"timeout": self._timeouts}
        )
        try:
            answer = await self._transport.handle_async_request(outgoing)
            try:
                content = await answer.aread()
            finally:
                await answer.aclose()
        except httpx.HTTPError as e:
            raise CallFailed(f"POST {url} failed: {type(e).__name__}: {e}") from None
        if answer.status_code != 200:
            raise CallFailed(f"POST {url} answered {answer.status_code}: {answer.text[:500]}")
        content_type = answer.headers.get("content-type", "").split(";")[0].strip()
        if content_type != native_codec.CONTENT_TYPE:
            raise CallFailed(
                f"POST {url} answered with content type {content_type!r}, "
                f"not {native_codec.CONTENT_TYPE}",
                protocol_violation=True,
            )
        try:
            response = native_codec.decode_response(content)
        except ProtocolError as e:
            raise CallFailed(f"POST {url}: {e}", protocol_violation=True) from None
        if len(response.outcomes) != len(request.batches):
            raise CallFailed(
                f"POST {url} answered {len(response.outcomes)} outcomes "
                f"for {len(request.batches)} batches",
                protocol_violation=True,
            )
        return response

    async def close(self) -> None:
        await self._transport.aclose()
