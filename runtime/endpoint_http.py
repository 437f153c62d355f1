"""One HTTP exchange with a function endpoint: the seam (:class:`EndpointHttp`), the
runtime's own HTTP/1.1 client (:class:`Http1`), and any httpx transport in its place
(:class:`HttpxHttp`: a test's, an embedding's).

Either way the same bounds and the same failures: an answer larger than the endpoint's
``max_answer_bytes`` fails as soon as that many bytes arrived (or its declared length
says so), never read whole; anything that keeps a whole answer from arriving (no
connection, a reset, a read that timed out, an answer that is not HTTP) is a
:class:`~runtime.errors.CallFailed` naming the request and what happened.

**Why a client of our own.** A call to a function is one POST of a body we have whole,
answered by one body the endpoint sends whole: no redirects, cookies, proxies or
compression. aiohttp, the client before this one, spent 0.20-0.38 ms of CPU per
exchange on this machine; this one, with httptools (the parser uvicorn uses) reading the
answers, 0.10-0.13 ms (``python -m bench.transport``). At concurrency 1 every call pays
one exchange; busy, one exchange carries several addresses' batches.

What it does:

* **A pool per origin** (scheme, host, port), kept-alive connections reused newest
  first, at most ``max_connections`` exchanges at once over all origins: a call beyond
  that waits for one to end, within the endpoint's ``call`` timeout. A connection the
  endpoint closed, or one unused for ``KEEPALIVE`` seconds, is not reused; a connection
  whose exchange did not end cleanly (a timeout, a cancelled call, an answer too large)
  is closed.
* **Timeouts as the endpoint's**: ``connect`` for the TCP (and TLS) connection, ``read``
  for each wait for data from the endpoint (the first byte of the answer included). The
  caller bounds each attempt's total time.
* **TLS** for ``https://`` endpoints, with the SSL context of the endpoint's module spec
  settings (:class:`~statefun.module_spec.EndpointTls`), built on the first such call.
* **Answers** with a ``content-length``, chunked, or (HTTP/1.0 style) ending with the
  connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools
import httpx

from runtime.errors import CallFailed
from statefun.module_spec import EndpointTls, HttpEndpoint

KEEPALIVE = 4.0
"""Seconds a pooled connection to an endpoint stays open unused: under uvicorn's own
5 s, so the client, not the server, ends an idle connection (a server that closes one as
a request is sent on it fails that request)."""


CLOSE_WAIT = 1.0
"""Seconds closing the client waits for its connections to be gone (a TLS connection
says goodbye first)."""


class EndpointHttp(Protocol):
    """One HTTP exchange with an endpoint: status, media type and a body of at most the
    endpoint's ``max_answer_bytes`` (else :class:`CallFailed`, as soon as that many bytes
    arrived); any failure to get a whole answer is a :class:`CallFailed` naming it."""

    async def exchange(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> tuple[int, str, bytes]: ...

    async def aclose(self) -> None: ...


def media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return content_type.split(";")[0].strip().lower()


def too_large(method: str, url: object, limit: int) -> CallFailed:
    return CallFailed(
        f"{method} {url}: the answer is larger than the endpoint's "
        f"payload_max_bytes ({limit} bytes)",
        protocol_violation=True,
    )


# --- the runtime's own client --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """What a URL takes to be requested: its origin, and the request line's target and
    ``host`` header, encoded once."""

    origin: tuple[bool, str, int]
    """(TLS, host, port)"""
    path: bytes
    host: bytes


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallFailed(f"{url}: not an http:// or https:// URL")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.netloc.rpartition("@")[2]
    return _Target((tls, parts.hostname, port), path.encode("ascii"), host.encode("ascii"))


class _Answer:
    """One answer as the parser reads it."""

    __slots__ = ("body", "chunked", "content_type", "declared", "size", "status")

    def __init__(self) -> None:
        self.status = 0
        """Set once the head is read (no answer has status 0)."""
        self.content_type = b""
        self.declared: int | None = None
        self.chunked = False
        self.body: list[bytes] = []
        self.size = 0


class _Connection(asyncio.Protocol):
    """One kept-alive connection to an endpoint: one exchange at a time."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.lost: asyncio.Future[None] = self._loop.create_future()
        """Done once the connection is gone."""
        self.idle_since = 0.0
        self._answer = _Answer()
        self._done: asyncio.Future[_Answer] | None = None
        self._keep_alive = True
        self._read_timeout = 0.0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        """Fires at or before the deadline: a deadline moved later re-arms it then, so an
        exchange costs no timer of its own."""
        self._method = ""
        self._url = ""

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance here.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            self.close()  # nothing was asked: an endpoint out of step
            return
        self._deadline = self._loop.time() + self._read_timeout
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(self._failed("the endpoint upgraded the connection"))
        except httptools.HttpParserError as e:
            self._fail(self._failed(f"not an HTTP answer: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        if not self.lost.done():
            self.lost.set_result(None)
        done = self._done
        if done is None or done.done():
            return
        answer = self._answer
        if answer.status and answer.declared is None and not answer.chunked:
            done.set_result(answer)  # an answer that ends with its connection
            return
        why = f"{type(exc).__name__}: {exc}" if exc else "the endpoint closed the connection"
        self._fail(self._failed(f"{why} before the whole answer"))

    # the parser's callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        answer = self._answer
        if name == b"content-type":
            answer.content_type = value
        elif name == b"content-length":
            if value.strip().isdigit():
                answer.declared = int(value)
                if answer.declared > self._limit:
                    self._fail(too_large(self._method, self._url, self._limit))
        elif name == b"transfer-encoding":
            answer.chunked = b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        self._answer.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        answer = self._answer
        answer.size += len(body)
        if answer.size > self._limit:
            self._fail(too_large(self._method, self._url, self._limit))
            return
        answer.body.append(body)

    def on_message_complete(self) -> None:
        done = self._done
        if done is not None and not done.done():
            self._keep_alive = self._parser.should_keep_alive()
            done.set_result(self._answer)

    # the exchange

    async def exchange(self, request: bytes, read_timeout: float, method: str, url: str) -> _Answer:
        """Send ``request`` (``method`` to ``url``) and wait for its whole answer."""
        assert self.transport is not None
        self._answer = _Answer()
        self._method, self._url = method, url
        self._read_timeout = read_timeout
        self._deadline = self._loop.time() + read_timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
        done: asyncio.Future[_Answer] = self._loop.create_future()
        self._done = done
        self.transport.write(request)
        try:
            return await done
        finally:
            self._done = None

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _check_deadline(self) -> None:
        self._timer = None
        if self._done is None or self._done.done():
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._fail(self._failed(f"TimeoutError: no data for {self._read_timeout:g} s"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _failed(self, why: str) -> CallFailed:
        return CallFailed(f"{self._method} {self._url} failed: {why}")

    def _fail(self, error: CallFailed) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_exception(error)
        self.close()


class Http1:
    """The runtime's HTTP/1.1 client for one endpoint (see the module docstring)."""

    def __init__(self, endpoint: HttpEndpoint, max_connections: int) -> None:
        t = endpoint.timeouts
        self._limit = endpoint.max_answer_bytes
        self._connect_timeout = t.connect
        self._read_timeout = t.read
        self._wait_timeout = t.call
        self._tls = endpoint.tls or EndpointTls()
        self._ssl: ssl.SSLContext | None = None
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[bool, str, int], deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}  # parsing a URL costs more than a call

    async def exchange(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> tuple[int, str, bytes]:
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _target(url)
        request = _request(method, target, headers, body)
        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout(self._wait_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise CallFailed(
                    f"{method} {url} failed: TimeoutError: no connection free "
                    f"within {self._wait_timeout:g} s"
                ) from None
        else:
            await slots.acquire()
        connection: _Connection | None = None
        try:
            connection = self._pooled(target.origin) or await self._connect(target, method, url)
            self._busy.add(connection)
            answer = await connection.exchange(request, self._read_timeout, method, url)
        except BaseException:
            if connection is not None:
                connection.close()  # mid-exchange: its state is unknown
            raise
        finally:
            if connection is not None:
                self._busy.discard(connection)
            slots.release()
        if connection.reusable:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(target.origin, deque()).append(connection)
        else:
            connection.close()
        content = answer.body[0] if len(answer.body) == 1 else b"".join(answer.body)
        return answer.status, media_type(answer.content_type.decode("latin-1")), content

    def _pooled(self, origin: tuple[bool, str, int]) -> _Connection | None:
        """The newest idle connection to ``origin`` still open (older expired ones closed)."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest = time.monotonic() - KEEPALIVE
        while idle and idle[0].idle_since < oldest:
            idle.popleft().close()
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self, target: _Target, method: str, url: str) -> _Connection:
        tls, host, port = target.origin
        context = None
        if tls:
            context = self._ssl
            if context is None:
                context = self._ssl = self._tls.context
        loop = asyncio.get_running_loop()
        limit = self._limit
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(limit),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            raise CallFailed(
                f"{method} {url} failed: TimeoutError: no connection "
                f"within {self._connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as e:
            raise CallFailed(f"{method} {url} failed: {type(e).__name__}: {e}") from None
        return connection

    async def aclose(self) -> None:
        """Close every connection, and wait (a little) until they are gone."""
        connections = [c for idle in self._idle.values() for c in idle] + list(self._busy)
        self._idle.clear()
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=CLOSE_WAIT)


def _request(
    method: str, target: _Target, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """The request's bytes: its head and its body, for one write."""
    lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode("ascii"), target.path, target.host)]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"a header may not hold a line break: {name!r}")
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if body or method != "GET":
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


# --- an httpx transport instead ------------------------------------------------------------


class HttpxHttp:
    """Any httpx transport instead (a test's or an embedding's: ``httpx.ASGITransport``
    calls an ASGI app in-process, ``httpx.MockTransport`` a function)."""

    def __init__(self, endpoint: HttpEndpoint, transport: httpx.AsyncBaseTransport) -> None:
        t = endpoint.timeouts
        self._limit = endpoint.max_answer_bytes
        self._timeouts = {"connect": t.connect, "read": t.read, "write": t.write, "pool": t.call}
        self._transport = transport

    async def exchange(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> tuple[int, str, bytes]:
        limit = self._limit
        request = httpx.Request(
            method, url, content=body, headers=headers, extensions={"timeout": self._timeouts}
        )
        try:
            answer = await self._transport.handle_async_request(request)
            try:
                length = answer.headers.get("content-length", "")
                declared = int(length) if length.isdigit() else None
                chunks = answer.aiter_bytes()
                content = await _read_within(limit, declared, chunks, method, request.url)
            finally:
                await answer.aclose()
        except httpx.HTTPError as e:
            raise CallFailed(f"{method} {request.url} failed: {type(e).__name__}: {e}") from None
        return answer.status_code, media_type(answer.headers.get("content-type", "")), content

    async def aclose(self) -> None:
        await self._transport.aclose()


async def _read_within(
    limit: int, declared: int | None, chunks: AsyncIterator[bytes], method: str, url: object
) -> bytes:
    """An answer's body from its chunks, failing as soon as it is known to be larger than
    ``limit`` bytes (its declared length, else the bytes arrived)."""
    if declared is not None and declared > limit:
        raise too_large(method, url, limit)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise too_large(method, url, limit)
    return bytes(body)
