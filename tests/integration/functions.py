"""Function apps the integration tests serve, and a recorder of what reaches them."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import timedelta
from typing import Any

from sdk import (
    Context,
    IntType,
    Message,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    kafka_egress_message,
    make_json_type,
    message_builder,
)
from statefun.native_codec import decode_request

SEEN = make_json_type("test/Seen")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class RecordingApp:
    """Wraps an ASGI app and records every invocation request that reaches it."""

    def __init__(self, app: Any):
        self.app = app
        self.requests: list[list[tuple[str, int]]] = []  # per request: (address, invocations)
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            request = decode_request(body)
            with self._lock:
                self.requests.append([(str(b.target), len(b.invocations)) for b in request.batches])
        except Exception:
            pass
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def make_test_functions(control: dict[str, Any] | None = None) -> StatefulFunctions:
    """``test/*`` function types; ``control`` lets a test steer them while they run."""
    control = control if control is not None else {}
    functions = StatefulFunctions()

    @functions.bind("test/log", specs=[ValueSpec("seen", SEEN)])
    def log_messages(context: Context, message: Message) -> None:
        """Appends each int it gets to its state: the order it saw them in."""
        seen = context.storage.seen or []
        seen.append(message.as_int())
        context.storage.seen = seen

    @functions.bind("test/slow", specs=[ValueSpec("count", IntType)])
    async def slow(context: Context, message: Message) -> None:
        """Slow on the first message of each address only: ``slow_seconds``, or until the
        test sets the ``slow_gate`` event when it gives one."""
        if not context.storage.count:
            gate: threading.Event | None = control.get("slow_gate")
            if gate is None:
                await asyncio.sleep(control.get("slow_seconds", 0.2))
            else:
                await asyncio.to_thread(gate.wait, 30)
        context.storage.count = (context.storage.count or 0) + 1

    @functions.bind("test/echo")
    def echo(context: Context, message: Message) -> None:
        context.reply(str_value=f"echo: {message.as_string()}")

    @functions.bind("test/silent")
    def silent(context: Context, message: Message) -> None:
        """Never answers its caller."""

    @functions.bind("test/flaky", specs=[ValueSpec("count", IntType)])
    def flaky(context: Context, message: Message) -> None:
        if control.get("fail") or control.get("fail_address") == context.address.id:
            raise RuntimeError("flaky is failing on purpose")
        context.storage.count = (context.storage.count or 0) + 1
        context.send_egress(
            egress_message_builder("test/out", f"flaky {context.address.id}", StringType)
        )

    @functions.bind("test/forward", specs=[ValueSpec("count", IntType)])
    def forward(context: Context, message: Message) -> None:
        """Counts, then forwards to test/counter at the same id."""
        context.storage.count = (context.storage.count or 0) + 1
        context.send(message_builder("test/counter", context.address.id, int_value=1))

    @functions.bind("test/counter", specs=[ValueSpec("count", IntType)])
    def counter(context: Context, message: Message) -> None:
        context.storage.count = (context.storage.count or 0) + (message.as_int() or 1)
        context.send_egress(
            egress_message_builder(
                "test/out", f"{context.address.id}={context.storage.count}", StringType
            )
        )

    @functions.bind("test/tally", specs=[ValueSpec("count", IntType)])
    def tally(context: Context, message: Message) -> None:
        """Adds the int it gets to its count; 0 erases the count (no state left)."""
        value = message.as_int() or 0
        if value == 0:
            del context.storage.count
        else:
            context.storage.count = (context.storage.count or 0) + value

    @functions.bind("test/later")
    def later(context: Context, message: Message) -> None:
        """ "start" schedules a delayed ping to test/counter; "cancel" cancels it."""
        from datetime import timedelta

        command = message.as_string()
        if command == "start":
            context.send_after(
                timedelta(milliseconds=300),
                message_builder("test/counter", context.address.id, int_value=100),
                cancellation_token="t",
            )
        elif command == "cancel":
            context.cancel_delayed_message("t")

    @functions.bind(
        "test/expiring",
        specs=[
            ValueSpec("written", IntType, expire_after_write=timedelta(milliseconds=1500)),
            ValueSpec("called", IntType, expire_after_call=timedelta(milliseconds=1500)),
        ],
    )
    def expiring(context: Context, message: Message) -> None:
        """ "write" sets both values to 1; anything else only invokes the address."""
        if message.as_string() == "write":
            context.storage.written = 1
            context.storage.called = 1

    @functions.bind("test/nonce", specs=[ValueSpec("nonce", StringType)])
    def nonce(context: Context, message: Message) -> None:
        """Draws a fresh random nonce, keeps it in state and replies with it: a replay
        answers differently from the work it replays."""
        drawn = uuid.uuid4().hex
        context.storage.nonce = drawn
        context.reply(str_value=drawn)

    @functions.bind("test/poison", specs=[ValueSpec("count", IntType)])
    def poison(context: Context, message: Message) -> None:
        """Adds the int it gets to its count; 13 is poison: it always raises."""
        value = message.as_int() or 0
        if value == 13:
            raise ValueError("13 is poison")
        context.storage.count = (context.storage.count or 0) + value

    @functions.bind("test/sender", specs=[ValueSpec("count", IntType)])
    def sender(context: Context, message: Message) -> None:
        """Counts, and sends 1 to the address its message names ("ns/type/id")."""
        context.storage.count = (context.storage.count or 0) + 1
        namespace, type_, id_ = message.as_string().split("/", 2)
        context.send(message_builder(f"{namespace}/{type_}", id_, int_value=1))

    @functions.bind("test/gate", specs=[ValueSpec("seen", SEEN)])
    async def gate(context: Context, message: Message) -> None:
        """Records the ints it gets in order; address "stuck" waits while the gate is shut."""
        if context.address.id == "stuck":
            shut = control.get("gate")
            if isinstance(shut, threading.Event):
                await asyncio.to_thread(shut.wait, 30)
        seen = context.storage.seen or []
        seen.append(message.as_int())
        context.storage.seen = seen

    @functions.bind("test/big", specs=[ValueSpec("blob", StringType), ValueSpec("count", IntType)])
    def big(context: Context, message: Message) -> None:
        """Counts; "state N" writes N bytes of state, "send N" sends N bytes to test/counter."""
        context.storage.count = (context.storage.count or 0) + 1
        command, _, size = message.as_string().partition(" ")
        if command == "state":
            context.storage.blob = "x" * int(size)
        elif command == "send":
            context.send(message_builder("test/echo", "big", str_value="x" * int(size)))

    @functions.bind("test/storm", specs=[ValueSpec("count", IntType)])
    def storm(context: Context, message: Message) -> None:
        """Counts, and sends itself another message: forever."""
        context.storage.count = (context.storage.count or 0) + 1
        context.send(message_builder("test/storm", context.address.id, int_value=1))

    @functions.bind("test/to_kafka", specs=[ValueSpec("count", IntType)])
    def to_kafka(context: Context, message: Message) -> None:
        """Counts, and produces "<id>:<count>" keyed by its id to the test/kafka egress."""
        context.storage.count = (context.storage.count or 0) + 1
        context.send_egress(
            kafka_egress_message(
                "test/kafka",
                control.get("egress_topic", "egress-out"),
                f"{context.address.id}:{context.storage.count}",
                key=context.address.id,
            )
        )

    return functions
