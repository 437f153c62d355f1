"""The ingress's HTTP server: uvicorn, bounded.

uvicorn closes a keep-alive connection that stays idle, but has no bound on how long a
request's head or body may take to arrive: a client trickling one byte every few
seconds holds a connection, and the memory of its request, forever. The protocol here
(uvicorn's httptools protocol, which ``uvicorn[standard]`` brings) adds both bounds
(:class:`~runtime.config.IngressTimeouts`) and answers ``408`` as JSON; it also
answers a request uvicorn cannot parse with JSON rather than uvicorn's plain text, and
writes each response's head together with its body (one system call, one segment,
where uvicorn writes the two apart).

**Direct answers.** An application that has its whole answer at once (the ingress's fast
path) need not pass it through two ASGI messages: each request's scope carries, under
``scope["extensions"][DIRECT_ANSWER]``, a coroutine function taking the status, the
headers and the body, which checks and writes them as uvicorn's ``send`` would (the
same header checks, ``Connection: close`` and keep-alive), in one write. Only the
outermost application may use it: a middleware's ``send`` would not see the answer.
Under another ASGI server the application uses ``send``.

:class:`IngressServer` serves on a socket bound beforehand (:func:`bind`), so that a
port in use is one clear error before anything starts, and leaves signals to the
runtime, which owns shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from runtime.config import IngressTimeouts


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``OSError`` if it cannot be had), made as
    asyncio makes its own: with the protocol number, without which asyncio leaves
    Nagle's algorithm on for the connections it accepts (40 ms per request, measured)."""
    family, type_, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _json_response(status: int, reason: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class _HeadWithBody:
    """The connection's transport as one response sees it: the response head waits for
    the response's first body write and goes out with it, in one write (one system
    call, one segment), rather than uvicorn's two. Anything written before the head
    (``100 Continue``) passes at once; closing, or the response completing without a
    body write (``HEAD``), writes a held head first."""

    __slots__ = ("_cycle", "_head", "_headed", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = weakref.ref(cycle)  # the cycle holds this: no reference cycle
        self._head: bytes | None = None
        self._headed = False

    def write(self, data: bytes) -> None:
        cycle = self._cycle()
        if not self._headed and cycle is not None and cycle.response_started:
            self._headed = True
            self._head = data  # the head: wait for the body
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


DIRECT_ANSWER = "statefun.direct_answer"
"""The scope extension under which a request's :class:`DirectAnswer` is found."""


class DirectAnswer:
    """Answers one request whole, in one write: what uvicorn's ``send`` does with a
    response start and then its one body message, without the two messages."""

    __slots__ = ("_cycle", "_transport")

    def __init__(self, cycle: RequestResponseCycle, transport: asyncio.Transport) -> None:
        # The cycle's scope holds this: a strong reference back would make every request
        # a reference cycle, garbage only the collector frees (each collection then held
        # the event loop ~8 ms at c64: bench/README.md).
        self._cycle = weakref.ref(cycle)
        self._transport = transport  # the connection's own, not the cycle's wrapper

    async def __call__(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> None:
        cycle = self._cycle()
        if cycle is None:
            return  # the request's connection is gone, and uvicorn with it
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return
        if cycle.response_started:
            raise RuntimeError("the response has started already")
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        content = [STATUS_LINE[status]]
        length: bytes | None = None
        close = False
        for name, value in (*cycle.default_headers, *headers):
            if HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = name.lower()
            if name == b"content-length":
                length = value
            elif name == b"connection" and b"close" in (
                token.strip().lower() for token in value.split(b",")
            ):
                close = True
            content += (name, b": ", value, b"\r\n")
        if length is None:
            content += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        elif int(length) != len(body):
            raise RuntimeError("Response content length differs from Content-Length")
        if cycle.scope["method"] == "HEAD":
            body = b""
        if close:
            cycle.keep_alive = False
        elif not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        self._transport.write(b"".join(content))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self._transport.close()
        cycle.on_response()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on how long a connection may sit idle
    (before its first request, and between requests), and on how long a request's head
    and body take."""

    timeouts: ClassVar[IngressTimeouts] = IngressTimeouts()
    _deadline: float | None = None
    """When the request's head or body must have arrived (the loop's time), if armed."""
    _expired: Callable[[], None] | None = None
    _kept_alive = False
    """Whether the deadline armed is the keep-alive wait after a response."""
    _timer: asyncio.TimerHandle | None = None
    """Fires at or before the deadline: a deadline moved later re-arms it then, and one
    disarmed leaves it to fire for nothing, so a request costs no timer of its own (a
    timer made and cancelled per request was a measurable share of a busy ingress)."""

    def _arm(self, seconds: float, expired: Callable[[], None]) -> None:
        self._deadline = deadline = self.loop.time() + seconds
        self._expired = expired
        timer = self._timer
        if timer is not None and timer.when() > deadline:
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        deadline, expired = self._deadline, self._expired
        if deadline is None or expired is None:
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._check_deadline)
            return
        self._disarm()
        expired()

    def _disarm(self) -> None:
        self._deadline = self._expired = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Idle until its first byte, as between two requests (uvicorn's keep-alive
        # timer, cancelled by the first data received).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeouts.idle, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.timeouts.request_head, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._arm(self.timeouts.body, self._body_timed_out)
        super().on_headers_complete()
        cycle = self.cycle  # the request's, created just now (its task not yet run)
        if cycle is not None:
            extensions: dict[str, Any] = {DIRECT_ANSWER: DirectAnswer(cycle, self.transport)}
            cycle.scope["extensions"] = extensions
            transport = _HeadWithBody(self.transport, cycle)
            cycle.transport = transport  # type: ignore[assignment]
            completed = cycle.on_response

            def on_response() -> None:
                transport.flush()
                completed()

            cycle.on_response = on_response

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, but the keep-alive wait that follows a response is a deadline like
        # the others, rather than a timer made here and cancelled by the next request.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._arm(self.timeout_keep_alive, self.timeout_keep_alive_handler)
            self._kept_alive = True

    def _unset_keepalive_if_required(self) -> None:
        super()._unset_keepalive_if_required()  # the timer before a first request
        if self._kept_alive:
            self._kept_alive = False
            self._disarm()

    def _head_timed_out(self) -> None:
        self._refuse(f"the request head did not arrive within {self.timeouts.request_head:g} s")

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        if cycle is not None and (cycle.response_started or cycle.disconnected):
            # Answered already (say, refused before its body was read): just hang up.
            self.transport.close()
            return
        if cycle is not None:
            # The application waiting for the body sees the client gone, and what it
            # may still send goes nowhere: the 408 below is the answer.
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(f"the request body did not arrive within {self.timeouts.body:g} s")

    def _refuse(self, detail: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_json_response(408, "Request Timeout", "request_timeout", detail))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_json_response(400, "Bad Request", "bad_request", msg))
            self.transport.close()


def bounded_protocol(timeouts: IngressTimeouts) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with these timeouts (uvicorn instantiates it per connection)."""
    return type("IngressHttpProtocol", (BoundedHttpToolsProtocol,), {"timeouts": timeouts})


class IngressServer(uvicorn.Server):
    """uvicorn serving ``app`` on bounded connections, without signal handling of its
    own; ``on_started`` runs once it listens."""

    def __init__(
        self,
        app: Any,
        timeouts: IngressTimeouts,
        *,
        graceful_shutdown: float,
        on_started: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                http=bounded_protocol(timeouts),
                log_level="warning",
                # No access log: uvicorn formats a line for every response whenever any
                # handler exists (the root's), at a level that drops it. The HTTP metrics
                # count requests.
                access_log=False,
                server_header=False,  # no "server: uvicorn" to tell a caller what runs here
                # The app reads a trusted proxy's headers where it needs them (the
                # ingress's IngressApp: not on its hot routes, which read neither).
                proxy_headers=False,
                # uvicorn's loggers pass their records on to the root logger's handler
                # (the format `statefun run --log-format` chose), not to uvicorn's own.
                log_config=None,
                lifespan="off",
                timeout_keep_alive=timeouts.idle,
                timeout_graceful_shutdown=max(1, round(graceful_shutdown)),
            )
        )
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
