"""Calls to function endpoints: the invocation protocol over HTTP, in either of its codecs.

Two protocols, one model (``statefun.protocol``):

* **native** (``statefun.native_codec``, msgpack): one HTTP request carries the batches of
  many addresses; what our SDK speaks, and the fast one.
* **statefun** (``statefun.protobuf_codec``): Apache Flink StateFun's request-reply
  protocol, what the official StateFun SDKs speak. It carries ONE address's batch per
  request, so a multi-batch :class:`FunctionRequest` is split into one HTTP request per
  batch, sent concurrently; the outcomes are put back in order.

The endpoint's ``protocol`` picks one, or ``auto`` (the default) negotiates per URL: the
first call to a URL sends ``GET <url>``; an endpoint that answers 200 with JSON listing
``native/1`` in ``protocols`` (our SDK does) is spoken to natively, any other HTTP answer
means StateFun's protocol. The decision is kept per URL; a GET that gets no HTTP answer
decides nothing (the call fails and the next one asks again). A call whose answer shows
the endpoint does not speak the chosen protocol (under native: anything but a native
200 answer; under statefun: 415 Unsupported Media Type) drops the decision, so an
endpoint redeployed with the other SDK is renegotiated on the next call.

Batches whose function types have different URLs (a ``{function.name}`` template) go to
their own URLs: one request per URL under native, one per batch under statefun.

What an endpoint serves: our SDK's answer to ``GET <url>`` also lists the function types
it serves (``functions``). The client keeps that list per URL (:meth:`FunctionClient.serves`),
so the runtime can refuse a message to a type the endpoint does not serve at the door
instead of failing it later; StateFun's SDK lists nothing, and then nothing is refused.

Signing: an endpoint with a signing key (module spec ``signing``) gets every request,
the ``GET`` included, signed (``statefun.signing``: two headers, which StateFun's SDK
ignores). An endpoint that refuses the signature answers 401, which fails the call and
says nothing of the protocol: a 401 to ``GET <url>`` decides none, one to a native call
keeps the one decided.

Bounds: an answer larger than the endpoint's ``max_answer_bytes`` fails the call as soon
as that many bytes arrived (it is never read whole); the caller bounds each attempt's
total time (a trickling answer defeats the per-read timeout).

Failures: a call that produces no valid answer at all is a :class:`CallFailed`. When a
request was split (several URLs, or several batches under statefun) and only some parts
fail, the failed batches get a :class:`~statefun.protocol.FunctionFailure` outcome
(``error_type`` ``CallFailed``) and the others keep their outcomes, so one failing
address does not make the others retry. The official SDK answers a function's exception
with HTTP 500: that is a failed call of that batch. Retrying is the caller's business (it
knows the batch's call budget).

The HTTP client is the runtime's own (:mod:`runtime.endpoint_http`: HTTP/1.1 with
httptools reading the answers), chosen by measurement (``bench/transport.py``): aiohttp
costs about four times its CPU per exchange, httpx more. A test or an embedding may pass
any httpx transport instead (``httpx.ASGITransport`` calls an ASGI app in-process); both
sit behind one seam (:class:`~runtime.endpoint_http.EndpointHttp`), with the same bounds
and the same failures.

TLS: an ``https://`` endpoint is called with the SSL context of its module spec settings
(:class:`~statefun.module_spec.EndpointTls`: its CA or else the system's trust store, a
client certificate for mutual TLS, host names checked), the default settings when it
has none. A refused handshake is a :class:`CallFailed` naming the reason (e.g.
``certificate verify failed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Sequence

import httpx

from runtime.endpoint_http import EndpointHttp, Http1, HttpxHttp
from runtime.errors import CallFailed
from statefun import native_codec, protobuf_codec
from statefun.errors import ProtocolError
from statefun.module_spec import HttpEndpoint
from statefun.protocol import (
    BatchOutcome,
    FunctionFailure,
    FunctionRequest,
    FunctionResponse,
    InvocationBatch,
)
from statefun.signing import RequestSigner

log = logging.getLogger(__name__)

NATIVE, STATEFUN, AUTO = "native", "statefun", "auto"
NATIVE_PROTOCOL_ID = f"native/{native_codec.PROTOCOL_VERSION}"
"""What an endpoint lists in ``protocols`` (``GET <url>``) to be spoken to natively."""

_NATIVE_HEADERS = (
    ("content-type", native_codec.CONTENT_TYPE),
    ("accept", native_codec.CONTENT_TYPE),
)
_STATEFUN_HEADERS = (
    ("content-type", protobuf_codec.CONTENT_TYPE),
    ("accept", protobuf_codec.CONTENT_TYPE),
)
_NEGOTIATION_HEADERS = (("accept", "application/json"),)


class FunctionClient:
    """Sends invocation requests to one endpoint over a pooled HTTP transport."""

    def __init__(
        self,
        endpoint: HttpEndpoint,
        *,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._endpoint = endpoint
        key = endpoint.signing_key
        self._signer = None if key is None else RequestSigner(key)
        self._templated = "{function.name}" in endpoint.url_path_template
        self._http: EndpointHttp = (
            Http1(endpoint, max_connections)
            if transport is None
            else HttpxHttp(endpoint, transport)
        )
        self._protocols: dict[str, str] = {}
        """The protocol decided for each URL (``auto`` endpoints only)."""
        self._served: dict[str, tuple[frozenset[str], float]] = {}
        """The function types each URL said it serves, and when (loop time)."""
        self._asked: dict[str, float] = {}
        """When each URL was last asked what it serves (loop time)."""
        self._negotiations: dict[str, asyncio.Task[str]] = {}

    def serves(self, url: str, function_type: str, *, max_age: float | None = None) -> bool | None:
        """Whether ``url`` said it serves ``function_type`` (None: it never said, or said it
        does not longer than ``max_age`` seconds ago)."""
        served = self._served.get(url)
        if served is None:
            return None
        types, at = served
        if function_type in types:
            return True
        if max_age is not None and asyncio.get_running_loop().time() - at > max_age:
            return None
        return False

    async def describe(self, url: str) -> None:
        """Ask ``url`` again what it speaks and serves (for :meth:`serves`); a failure to
        get an answer leaves what was known."""
        self._asked[url] = asyncio.get_running_loop().time()
        try:
            await self._negotiate(url, renew=True)
        except CallFailed:
            return

    async def learn_serves(self, url: str, function_type: str, *, max_age: float) -> bool | None:
        """Like :meth:`serves`, asking the endpoint first when what it said is older than
        ``max_age`` seconds (at most once per ``max_age``: an endpoint that lists nothing,
        or does not answer, is not asked on every call). A type it said it serves stays
        served; None: not known."""
        answer = self.serves(url, function_type, max_age=max_age)
        if answer is not None:
            return answer
        if asyncio.get_running_loop().time() - self._asked.get(url, -math.inf) <= max_age:
            return None
        await self.describe(url)
        return self.serves(url, function_type, max_age=max_age)

    def served(self, url: str) -> frozenset[str] | None:
        """The function types ``url`` last said it serves."""
        found = self._served.get(url)
        return None if found is None else found[0]

    def protocol_of(self, url: str) -> str | None:
        """The protocol calls to ``url`` use: fixed by the endpoint, or as negotiated so
        far (None: not yet)."""
        if self._endpoint.protocol != AUTO:
            return self._endpoint.protocol
        return self._protocols.get(url)

    async def invoke(self, url: str, request: FunctionRequest) -> FunctionResponse:
        """Send ``request``, whose first batch's function type is served at ``url``; one
        outcome per batch, in order."""
        batches = request.batches
        if (
            self._templated
            and len(batches) > 1
            and any(b.target.function_type != batches[0].target.function_type for b in batches)
        ):
            by_url: dict[str, list[int]] = {}
            for i, b in enumerate(batches):
                where = url if i == 0 else self._endpoint.url_for(b.target.function_type)
                by_url.setdefault(where, []).append(i)
            return FunctionResponse(
                await _gather(
                    batches,
                    [
                        (indices, self._call_at(where, [batches[i] for i in indices]))
                        for where, indices in by_url.items()
                    ],
                )
            )
        return FunctionResponse(await self._call_at(url, batches))

    async def _call_at(self, url: str, batches: list[InvocationBatch]) -> list[BatchOutcome]:
        protocol = self.protocol_of(url) or await self._negotiate(url)
        if protocol == NATIVE:
            return await self._call_native(url, batches)
        if len(batches) == 1:
            return [await self._call_statefun(url, batches[0])]
        return await _gather(
            batches, [([i], self._statefun_part(url, b)) for i, b in enumerate(batches)]
        )

    async def _statefun_part(self, url: str, batch: InvocationBatch) -> list[BatchOutcome]:
        return [await self._call_statefun(url, batch)]

    # --- the two protocols -------------------------------------------------------------

    async def _call_native(self, url: str, batches: list[InvocationBatch]) -> list[BatchOutcome]:
        body = native_codec.encode_request(FunctionRequest(batches))
        status, content_type, content = await self._post(url, body, _NATIVE_HEADERS)
        if status != 401 and (status != 200 or content_type != native_codec.CONTENT_TYPE):
            self._forget(url)  # a refused signature says nothing of the protocol
        if status != 200:
            raise CallFailed(f"POST {url} answered {status}: {_text(content)}")
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
        if len(response.outcomes) != len(batches):
            raise CallFailed(
                f"POST {url} answered {len(response.outcomes)} outcomes for {len(batches)} batches",
                protocol_violation=True,
            )
        return response.outcomes

    async def _call_statefun(self, url: str, batch: InvocationBatch) -> BatchOutcome:
        body = protobuf_codec.encode_batch(batch)
        status, _, content = await self._post(url, body, _STATEFUN_HEADERS)
        if not 200 <= status < 300:
            if status == 415:
                self._forget(url)
            raise CallFailed(f"POST {url} for {batch.target} answered {status}: {_text(content)}")
        try:
            return protobuf_codec.decode_outcome(content)
        except ProtocolError as e:
            raise CallFailed(
                f"POST {url} for {batch.target}: {e}", protocol_violation=True
            ) from None

    # --- HTTP --------------------------------------------------------------------------

    async def _exchange(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes = b""
    ) -> tuple[int, str, bytes]:
        """Status, media type and body of the answer to a request (signed if the endpoint
        signs); :class:`CallFailed` if no whole answer came."""
        if self._signer is not None:
            headers = (*headers, *self._signer.headers(method, body))
        return await self._http.exchange(method, url, headers, body)

    async def _post(
        self, url: str, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> tuple[int, str, bytes]:
        return await self._exchange("POST", url, headers, body)

    # --- negotiation -------------------------------------------------------------------

    async def _negotiate(self, url: str, *, renew: bool = False) -> str:
        """Ask ``url`` which protocol it speaks, once for all calls waiting on the answer."""
        task = self._negotiations.get(url)
        if task is None and not renew and self._endpoint.protocol != AUTO:
            return self._endpoint.protocol
        if task is None:
            task = self._negotiations[url] = asyncio.create_task(self._ask(url))
            task.add_done_callback(lambda _: self._negotiations.pop(url, None))
        return await asyncio.shield(task)

    async def _ask(self, url: str) -> str:
        status, media_type, content = await self._exchange("GET", url, _NEGOTIATION_HEADERS)
        if status == 401:
            raise CallFailed(f"GET {url} answered 401: {_text(content)}")
        advertised, served = _advertised(status, media_type, content)
        if served is not None:
            self._served[url] = (served, asyncio.get_running_loop().time())
        if self._endpoint.protocol != AUTO:
            return self._endpoint.protocol
        if advertised is None:
            protocol = STATEFUN
        elif NATIVE_PROTOCOL_ID in advertised:
            protocol = NATIVE
        else:
            raise CallFailed(
                f"GET {url}: the endpoint speaks {', '.join(advertised) or 'nothing'}; this "
                f"runtime speaks {NATIVE_PROTOCOL_ID} and StateFun's protocol",
                protocol_violation=True,
            )
        self._protocols[url] = protocol
        log.info("%s speaks the %s protocol (negotiated)", url, protocol)
        return protocol

    def _forget(self, url: str) -> None:
        if self._protocols.pop(url, None) is not None:
            log.warning("%s does not speak the protocol negotiated; asking again", url)

    async def close(self) -> None:
        for task in list(self._negotiations.values()):
            task.cancel()
        await self._http.aclose()


def _advertised(
    status: int, media_type: str, content: bytes
) -> tuple[list[str] | None, frozenset[str] | None]:
    """The ``protocols`` and ``functions`` an answer to ``GET <url>`` lists (each None if
    it lists none)."""
    if status != 200 or media_type != "application/json":
        return None, None
    try:
        description = json.loads(content)
    except ValueError:
        return None, None
    if not isinstance(description, dict):
        return None, None
    protocols, functions = description.get("protocols"), description.get("functions")
    return (
        [str(p) for p in protocols] if isinstance(protocols, list) else None,
        frozenset(str(f) for f in functions) if isinstance(functions, list) else None,
    )


def _text(content: bytes) -> str:
    return content[:500].decode("utf-8", "replace")


async def _gather(
    batches: list[InvocationBatch],
    parts: list[tuple[list[int], Awaitable[list[BatchOutcome]]]],
) -> list[BatchOutcome]:
    """The outcomes of ``batches`` from calls each answering for some of them (by index).

    All parts failing is one :class:`CallFailed`; a part failing while others succeed
    gives its batches a ``FunctionFailure``.
    """
    results = await asyncio.gather(*(call for _, call in parts), return_exceptions=True)
    failures: list[CallFailed] = []
    for result in results:
        if isinstance(result, CallFailed):
            failures.append(result)
        elif isinstance(result, BaseException):
            raise result
    if len(failures) == len(parts):
        more = f" (and {len(failures) - 1} more failed calls)" if len(failures) > 1 else ""
        raise CallFailed(
            failures[0].reason + more,
            protocol_violation=any(f.protocol_violation for f in failures),
        )
    outcomes: dict[int, BatchOutcome] = {}
    for (indices, _), result in zip(parts, results, strict=True):
        if isinstance(result, CallFailed):
            for i in indices:
                target = batches[i].target
                outcomes[i] = FunctionFailure(
                    str(target.function_type), target, "CallFailed", result.reason
                )
        else:
            assert not isinstance(result, BaseException)
            outcomes.update(zip(indices, result, strict=True))
    return [outcomes[i] for i in range(len(batches))]
