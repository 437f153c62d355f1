"""The runtime's own HTTP/1.1 client (``runtime.endpoint_http.Http1``) against endpoints
scripted on the wire: kept-alive connections are reused and stale ones are not, answers
end by length, by chunks or with their connection, at most ``max_connections``
exchanges run at once, and every way an answer fails to arrive is a :class:`CallFailed`
naming it, with the connection it leaves in an unknown state closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from runtime.endpoint_http import Http1
from runtime.errors import CallFailed
from statefun.module_spec import FunctionTypePattern, HttpEndpoint, HttpTimeouts

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 2\r\n\r\nok"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Endpoint"], Awaitable[None]]


class Endpoint:
    """A loopback server: each connection is served by ``handler``; counts connections,
    and knows when a connection was closed by the client."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.client_closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request's head and body; None once the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.client_closed.set()
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        self._arrived.set()
        return head + body

    async def arrived(self, requests: int) -> None:
        """Until ``requests`` requests have arrived."""
        while len(self.requests) < requests:
            self._arrived.clear()
            await self._arrived.wait()


@asynccontextmanager
async def endpoint(handler: Handler) -> AsyncIterator[Endpoint]:
    e = Endpoint(handler)
    server = await asyncio.start_server(e.serve, "127.0.0.1", 0)
    e.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/fn"
    try:
        yield e
    finally:
        server.close()


def client(url: str, max_connections: int = 4, call: float = 10, read: float = 5) -> Http1:
    spec = HttpEndpoint(
        FunctionTypePattern.parse("t/*"),
        url,
        timeouts=HttpTimeouts(call=call, connect=5, read=read, write=5),
        protocol="native",
        max_answer_bytes=1000,
    )
    return Http1(spec, max_connections)


async def answer_each(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, e: Endpoint
) -> None:
    while await e.request(reader) is not None:
        writer.write(OK)


async def test_a_kept_alive_connection_is_reused_and_the_request_is_as_given() -> None:
    async with endpoint(answer_each) as e:
        http = client(e.url)
        try:
            for _ in range(3):
                got = await http.exchange("POST", e.url, [("content-type", "a/b")], b"body")
                assert got == (200, "text/plain", b"ok")
        finally:
            await http.aclose()
    assert e.connections == 1
    assert e.requests[0] == (
        b"POST /fn HTTP/1.1\r\nhost: " + e.url.split("/")[2].encode() + b"\r\n"
        b"content-type: a/b\r\ncontent-length: 4\r\n\r\nbody"
    )


async def test_a_connection_the_endpoint_closes_is_not_reused() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, e: Endpoint) -> None:
        await e.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()  # and close: the handler's end

    async with endpoint(once) as e:
        http = client(e.url)
        try:
            assert (await http.exchange("POST", e.url, [], b"1"))[0] == 200
            assert (await http.exchange("POST", e.url, [], b"2"))[0] == 200
        finally:
            await http.aclose()
    assert e.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nabcde",  # no length: the answer ends with the connection
    ],
    ids=["chunked", "until-close"],
)
async def test_answers_without_a_length_are_read_whole(answer: bytes) -> None:
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, e: Endpoint) -> None:
        await e.request(reader)
        writer.write(answer)

    async with endpoint(send) as e:
        http = client(e.url)
        try:
            assert await http.exchange("POST", e.url, [], b"") == (200, "", b"abcde")
        finally:
            await http.aclose()


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", "before the whole answer"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n", "larger than the endpoint's"),
    ],
    ids=["cut-short", "not-http", "declared-too-large"],
)
async def test_an_answer_that_does_not_arrive_whole_fails_the_call(answer: bytes, why: str) -> None:
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, e: Endpoint) -> None:
        await e.request(reader)
        writer.write(answer)
        await writer.drain()
        if b"content-length: 10" in answer:
            return  # cut short: closed
        await e.request(reader)  # until the client closes

    async with endpoint(send) as e:
        http = client(e.url)
        try:
            with pytest.raises(CallFailed, match=rf"POST {e.url}.*{why}"):
                await http.exchange("POST", e.url, [], b"")
            if "before" not in why:
                async with asyncio.timeout(5):
                    await e.client_closed.wait()  # the client hung up on it
        finally:
            await http.aclose()


async def test_exchanges_beyond_the_pool_wait_for_a_connection_within_the_call_timeout() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, e: Endpoint) -> None:
        while await e.request(reader) is not None:
            await release.wait()
            writer.write(OK)

    async with endpoint(held) as e:
        http = client(e.url, max_connections=2, call=0.2)
        try:
            first = [asyncio.create_task(http.exchange("POST", e.url, [], b"")) for _ in range(2)]
            async with asyncio.timeout(5):
                await e.arrived(2)
            with pytest.raises(CallFailed, match=r"no connection free within 0\.2 s"):
                await http.exchange("POST", e.url, [], b"")
            assert e.connections == 2
            release.set()
            assert [a[0] for a in await asyncio.gather(*first)] == [200, 200]
        finally:
            await http.aclose()


async def test_a_cancelled_exchange_closes_its_connection_and_frees_its_place() -> None:
    async def silent_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, e: Endpoint
    ) -> None:
        await e.request(reader)
        if e.connections == 1:
            await e.request(reader)  # never answers the first: waits for the client to close
            return
        writer.write(OK)

    async with endpoint(silent_first) as e:
        http = client(e.url, max_connections=1)
        try:
            call = asyncio.create_task(http.exchange("POST", e.url, [], b""))
            async with asyncio.timeout(5):
                await e.arrived(1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            async with asyncio.timeout(5):
                await e.client_closed.wait()
            assert (await http.exchange("POST", e.url, [], b""))[0] == 200
        finally:
            await http.aclose()
