"""The ingress's HTTP server bounds what a client may hold: an idle connection, a
request head or body that trickles in, each closes in time with a JSON answer where
a request was under way; a request it cannot parse is answered in JSON too. A direct
answer writes what uvicorn's two ASGI messages would have written, in one write."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from support import asgi_body, wait_until

from runtime import ingress_errors
from runtime.config import IngressTimeouts
from runtime.http_server import DIRECT_ANSWER, IngressServer, bind, bounded_protocol
from runtime.metrics import IngressMetrics, Metrics

TIMEOUTS = IngressTimeouts(idle=1, request_head=0.6, body=0.6)
GRACE = 2.0
"""What a test allows beyond a timeout for the server to act (a loaded machine)."""


class _Available:
    def unavailable(self) -> tuple[str, float] | None:
        return None


async def _answering(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /answer/{direct,sent}[?close][&unsized]``: 201 with the body's length, as a
    direct answer or as two ASGI messages; ``close`` adds ``Connection: close``,
    ``unsized`` leaves the content length out (a direct answer adds it)."""
    body = await asgi_body(receive)
    query = scope["query_string"].decode()
    content = json.dumps({"length": len(body)}).encode()
    headers = [(b"content-type", b"application/json"), (b"x-answered", b"yes")]
    if "unsized" not in query:
        headers.append((b"content-length", str(len(content)).encode()))
    if "close" in query:
        headers.append((b"connection", b"close"))
    if scope["path"].endswith("/direct"):
        await scope["extensions"][DIRECT_ANSWER](201, headers, content)
    else:
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _app() -> FastAPI:
    app = FastAPI()
    ingress_errors.install(app, _Available())

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"length": len(await request.body())})

    app.mount("/answer", _answering)
    return app


class Served:
    def __init__(self, app: FastAPI | None = None, timeouts: IngressTimeouts = TIMEOUTS) -> None:
        self.socket = bind("127.0.0.1", 0)
        self.port = self.socket.getsockname()[1]
        self.server = IngressServer(app or _app(), timeouts, graceful_shutdown=1)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.socket])), daemon=True
        )
        self._thread.start()
        wait_until(lambda: self.server.started)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def in_flight(self) -> int:
        return len(self.server.server_state.tasks)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)


@pytest.fixture
def served() -> Iterator[Served]:
    server = Served()
    try:
        yield server
    finally:
        server.stop()


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def json_body(answer: bytes) -> dict[str, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer
    parsed: dict[str, str] = json.loads(body)
    return parsed


def complaints(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Warnings and errors of the server and the application (other tests' leftover
    Kafka clients may log meanwhile)."""
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("runtime", "uvicorn", "fastapi"))
    ]


def trickle(conn: socket.socket, data: bytes, every: float) -> float:
    """Send ``data`` a byte at a time until the server answers or closes; when it did
    (monotonic). It stops at the answer: a byte that reached the server after it closed
    would be answered with a reset, which can discard the answer before it is read."""
    for byte in data:
        try:
            conn.sendall(bytes([byte]))
            answered, _, _ = select.select([conn], [], [], every)
        except (OSError, ValueError):  # closed, here or by the server
            break
        if answered:
            break
    return time.monotonic()


@pytest.mark.timeout(30)
def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(
    served: Served,
) -> None:
    with served.connect() as conn:
        started = time.monotonic()
        assert read_until_closed(conn) == b""
        assert time.monotonic() - started < TIMEOUTS.idle + GRACE


@pytest.mark.timeout(30)
def test_a_keep_alive_connection_is_closed_after_the_idle_timeout(served: Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        started = time.monotonic()
        answer = read_until_closed(conn)
        assert answer.startswith(b"HTTP/1.1 200")
        assert json_body(answer) == {"length": 2}
        assert time.monotonic() - started < TIMEOUTS.idle + GRACE


@pytest.mark.timeout(30)
def test_requests_sooner_than_the_idle_timeout_keep_a_connection_until_it_idles() -> None:
    """The wait after each response is a deadline of the connection, like the request's:
    the next request within it is served on the connection, and once idle the
    connection closes in time, though the longer bound of the body before was armed
    later."""
    timeouts = IngressTimeouts(idle=1, request_head=8, body=8)
    server = Served(timeouts=timeouts)
    try:
        with server.connect() as conn:
            for _ in range(3):
                conn.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
                assert read_response(conn).startswith(b"HTTP/1.1 200")
                time.sleep(timeouts.idle / 2)  # the connection waits half its idle bound
            started = time.monotonic()
            assert read_until_closed(conn) == b""
            assert time.monotonic() - started < timeouts.idle + GRACE
    finally:
        server.stop()


@pytest.mark.timeout(30)
def test_a_request_head_that_trickles_in_gets_408_and_is_closed(served: Served) -> None:
    head = b"POST /echo HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 200 + b"\r\n\r\n"
    with served.connect() as conn:
        started = time.monotonic()
        sending = threading.Thread(target=trickle, args=(conn, head, 0.05), daemon=True)
        sending.start()
        answer = read_until_closed(conn)
        assert time.monotonic() - started < TIMEOUTS.request_head + GRACE
    assert answer.startswith(b"HTTP/1.1 408")
    assert json_body(answer)["error"] == "request_timeout"
    assert "request head" in json_body(answer)["detail"]


@pytest.mark.timeout(30)
def test_a_head_trickling_after_a_slow_body_gets_408_in_time() -> None:
    """The deadline of a request's head is kept even when the connection last waited for
    a later one (a body's, under a longer bound): the connection's timer is moved earlier."""
    timeouts = IngressTimeouts(idle=30, request_head=0.6, body=8)
    served = Served(timeouts=timeouts)
    try:
        with served.connect() as conn:
            conn.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n")
            time.sleep(timeouts.request_head + 0.2)  # past the head's bound, within the body's
            conn.sendall(b"hi")
            first = conn.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first
            started = time.monotonic()
            head = b"POST /echo HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 200 + b"\r\n\r\n"
            sending = threading.Thread(target=trickle, args=(conn, head, 0.05), daemon=True)
            sending.start()
            answer = read_until_closed(conn)
            assert time.monotonic() - started < timeouts.request_head + GRACE
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert "request head" in json_body(answer)["detail"]
    finally:
        served.stop()


@pytest.mark.timeout(30)
def test_a_body_that_trickles_in_gets_408_and_nothing_is_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with served.connect() as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        started = time.monotonic()
        sending = threading.Thread(target=trickle, args=(conn, b"b" * 100, 0.05), daemon=True)
        sending.start()
        answer = read_until_closed(conn)
        assert time.monotonic() - started < TIMEOUTS.body + GRACE
    assert answer.startswith(b"HTTP/1.1 408")
    assert json_body(answer)["error"] == "request_timeout"
    wait_until(lambda: served.in_flight() == 0)  # the application saw the client go
    assert complaints(caplog) == []


@pytest.mark.timeout(30)
def test_a_client_that_goes_away_mid_body_leaves_no_traceback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with served.connect() as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\npartial")
        wait_until(lambda: served.in_flight() == 1)
    wait_until(lambda: served.in_flight() == 0)
    assert complaints(caplog) == []


@pytest.mark.timeout(30)
def test_a_request_that_cannot_be_parsed_gets_400_json(served: Served) -> None:
    with served.connect() as conn:
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 400")
    assert json_body(answer)["error"] == "bad_request"


def test_the_bound_socket_lets_asyncio_turn_nagle_off() -> None:
    # asyncio sets TCP_NODELAY on the connections it accepts only when the listening
    # socket says it is TCP (its proto); without it every answer waited 40 ms for the
    # client's delayed ACK.
    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.type == socket.SOCK_STREAM


class _Recorder:
    """A connection's transport, keeping what is written to it."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


@pytest.fixture
def recorded() -> Iterator[tuple[Served, list[bytes]]]:
    """A server whose connections keep every write (on the server's thread)."""
    writes: list[bytes] = []
    base = bounded_protocol(TIMEOUTS)

    class Recording(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(_Recorder(transport, writes))  # type: ignore[arg-type]

    original = IngressServer.__init__

    def recording_server(self: IngressServer, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        self.config.http = Recording

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IngressServer, "__init__", recording_server)
        server = Served()
    try:
        yield server, writes
    finally:
        server.stop()


def read_response(conn: socket.socket) -> bytes:
    """One response with a content-length, whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
        ).split(b":")[1]
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.timeout(30)
def test_a_response_goes_out_in_one_write(recorded: tuple[Served, list[bytes]]) -> None:
    served, writes = recorded
    with served.connect() as conn:
        for _ in range(2):  # twice on one keep-alive connection
            before = len(writes)
            conn.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
            answer = read_response(conn)
            assert answer.endswith(b'{"length":3}')
            wait_until(lambda before=before: len(writes) > before)
            assert writes[before:] == [answer]  # head and body in one write


@pytest.mark.timeout(30)
def test_a_head_request_and_100_continue_are_not_held(recorded: tuple[Served, list[bytes]]) -> None:
    served, _ = recorded
    with served.connect() as conn:
        conn.sendall(b"HEAD /echo HTTP/1.1\r\nhost: x\r\n\r\n")  # 405, a head without a body
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        assert data.startswith(b"HTTP/1.1 405")
    with served.connect() as conn:
        conn.sendall(
            b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
        )
        assert conn.recv(65536).startswith(b"HTTP/1.1 100 Continue")  # before the body
        conn.sendall(b"ab")
        assert read_response(conn).endswith(b'{"length":2}')


def _without_date(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"date:"))


@pytest.mark.timeout(30)
def test_a_direct_answer_is_what_two_asgi_messages_write_in_one_write(
    recorded: tuple[Served, list[bytes]],
) -> None:
    served, writes = recorded
    request = b"POST /answer/%s HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
    with served.connect() as conn:
        answers = {}
        for how in (b"sent", b"direct", b"direct"):  # on one keep-alive connection
            before = len(writes)
            conn.sendall(request % how)
            answers[how] = read_response(conn)
            wait_until(lambda before=before: len(writes) > before)
            assert writes[before:] == [answers[how]]
    assert answers[b"direct"].startswith(b"HTTP/1.1 201 Created\r\n")
    assert answers[b"direct"].endswith(b'{"length": 3}')
    assert _without_date(answers[b"direct"]) == _without_date(answers[b"sent"])
    assert b"\r\nserver:" not in answers[b"direct"].lower()  # not told what runs here


@pytest.mark.timeout(30)
def test_a_direct_answer_closes_the_connection_as_send_would(served: Served) -> None:
    # The answer says Connection: close.
    with served.connect() as conn:
        conn.sendall(b"POST /answer/direct?close HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        answer = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 201")
    assert b"connection: close\r\n" in answer
    # An HTTP/1.0 client without keep-alive is told, and the connection closed.
    with served.connect() as conn:
        conn.sendall(b"POST /answer/direct HTTP/1.0\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        answer = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 201")
    assert b"connection: close\r\n" in answer


@pytest.mark.timeout(30)
def test_a_direct_answer_without_a_length_is_given_one(served: Served) -> None:
    with served.connect() as conn:
        conn.sendall(
            b"POST /answer/direct?unsized HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab"
        )
        answer = read_response(conn)
        assert b"content-length: 13\r\n" in answer
        assert answer.endswith(b'{"length": 2}')
        # and the connection serves the next request
        conn.sendall(b"POST /answer/direct HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        assert read_response(conn).endswith(b'{"length": 0}')


@pytest.mark.timeout(30)
def test_a_served_request_leaves_no_reference_cycle(served: Served) -> None:
    """What a request makes is freed as soon as it is answered, not left to the garbage
    collector: at thousands of requests a second each collection of such cycles held
    the event loop ~10 ms."""
    request = b"POST /answer/%s HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
    gc.collect()
    gc.disable()  # no collection may free a cycle before the one below finds it
    try:
        with served.connect() as conn:
            for how in (b"direct", b"sent", b"direct"):
                conn.sendall(request % how)
                assert read_response(conn).startswith(b"HTTP/1.1 201")
        wait_until(lambda: not served.server.server_state.connections)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted(
            {
                type(o).__qualname__
                for o in gc.garbage
                if type(o).__module__.startswith(("uvicorn", "runtime.http_server"))
            }
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


class _Unavailable:
    def unavailable(self) -> tuple[str, float] | None:
        return "the log is stalled", 1.0


@pytest.mark.timeout(30)
def test_an_error_answer_inside_the_app_passes_through_its_middleware() -> None:
    # The direct answer is for the outermost application only: the error boundary, deep
    # in the middleware stack, answers through ``send``, so that the HTTP metrics
    # around it see the status it answered.
    metrics = Metrics()
    app = FastAPI()
    ingress_errors.install(app, _Unavailable())
    app.add_middleware(IngressMetrics, metrics=metrics)

    @app.post("/echo")
    async def echo() -> JSONResponse:
        return JSONResponse({})

    served = Served(app)
    try:
        with served.connect() as conn:
            conn.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            answer = read_response(conn)
        assert answer.startswith(b"HTTP/1.1 503")
        assert json_body(answer)["error"] == "unavailable"
        # counted once the answer is out: wait for it, then it must say 503
        labels = {"route": "unmatched", "method": "other"}

        def counted(status: str) -> float | None:
            return metrics.registry.get_sample_value(
                "statefun_ingress_requests_total", {**labels, "status": status}
            )

        wait_until(lambda: counted("503") is not None or counted("500") is not None)
        assert counted("503") == 1.0
        assert counted("500") is None
    finally:
        served.stop()
