"""The selector the runtime's kafka-python clients wait on (runtime.log.kafka_selector)."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable, Iterator

import pytest

from runtime.log import Record
from runtime.log.kafka import KafkaLog
from runtime.log.kafka_selector import CLIENT_CONFIG, QuietSelector


class _NoRepr:
    """A file object that fails the test if anything formats it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def __repr__(self) -> str:
        raise AssertionError("the selector formatted the file object")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_miss_raises_key_error_holding_the_file_object_unformatted(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    fileobj = _NoRepr(pair[0])
    with QuietSelector() as selector:
        with pytest.raises(KeyError) as raised:
            selector.get_key(fileobj)
        assert raised.value.args == (fileobj,)


def test_registered_file_objects_are_found_modified_and_unregistered_as_by_the_default(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    with QuietSelector() as selector:
        key = selector.register(a, selectors.EVENT_READ, "reader")
        assert selector.get_key(a) == key
        assert selector.get_key(a.fileno()) == key  # by descriptor too
        selector.modify(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "both")
        assert selector.get_key(a).events == selectors.EVENT_READ | selectors.EVENT_WRITE
        assert selector.get_key(a).data == "both"
        b.send(b"x")
        ready = selector.select(timeout=5)
        assert [(k.fileobj, events & selectors.EVENT_READ) for k, events in ready] == [
            (a, selectors.EVENT_READ)
        ]
        selector.unregister(a)
        with pytest.raises(KeyError):
            selector.get_key(a)


def test_a_closed_socket_is_refused_as_by_the_default_selector(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    closed = socket.socket()
    closed.close()
    for make in (selectors.DefaultSelector, QuietSelector):
        with make() as selector, pytest.raises(ValueError, match="Invalid file descriptor"):
            selector.get_key(closed)


@pytest.mark.kafka
@pytest.mark.anyio
async def test_the_kafka_logs_clients_wait_on_it(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []

    class Counted(QuietSelector):
        def __init__(self) -> None:
            super().__init__()
            made.append("selector")

    monkeypatch.setitem(CLIENT_CONFIG, "selector", Counted)
    log = await KafkaLog.open(kafka_bootstrap)
    try:
        topic = unique_topic("t")
        await log.ensure_topic(topic, 1)
        opened = len(made)
        assert opened >= 1  # the admin client (appends go through librdkafka's producer)
        await log.append(topic, 0, [Record(b"v")])
        # The reader is kafka-python's too (the consumers are librdkafka's).
        read = await log.read(topic, 0, 0)
        assert [r.value for r in read] == [b"v"]
        assert len(made) > opened  # the reader's client too
    finally:
        await log.close()
