"""The fault suite's function app: a healthy counter, a storm type, and misbehaviours that
a message asks for and a switch turns on.

Serve it with ``uvicorn verifier.fault_functions:app``; the suite runs two of them (the
second serves ``faults/flaky``, and is stopped for an endpoint outage). Messages are
JSON of the type ``faults/Op``:

- ``faults/counter`` and ``faults/flaky``, state ``count`` (int): ``{"op": "inc"}`` adds
  one; ``{"op": "relay", "to": ID}`` adds one and sends ``{"op": "inc"}`` to ``ID`` of
  the same type (a message of the runtime's own, which a replay must not apply twice).
  ``{"op": "hot"}`` adds one too, and a request carrying one is answered
  ``slow`` seconds late while that switch is set (a hot address that is also slow).
  ``{"op": "poison", "kind": K}`` misbehaves as ``K`` while ``K`` is switched on, and
  otherwise only adds one to the state ``poisons`` (a poison healed is a no-op):

  - through the SDK: ``raise`` (the function raises), ``reply`` (``context.reply`` on a
    message from the ingress: the SDK raises), ``unknown-target`` (a send to
    ``nowhere/nosuch``, a type no endpoint serves);
  - in the answer, which ``FaultyEndpoint`` rewrites after the SDK ran the request:
    ``garbage`` (the whole answer is bytes that are not msgpack), ``truncated`` (the
    first half of the answer), ``undeclared-state`` (the batch's result also mutates a
    state ``undeclared`` the function never declared), ``missing-specs`` (the batch
    asks again for the states it was given), ``trickle`` (the answer is sent one byte
    every ``TRICKLE_INTERVAL`` seconds; switched off, the rest goes at once).

- ``faults/storm``, states ``received`` and ``sent`` (int): ``{"op": "storm-self",
  "cap": N}`` sends itself the same message, ``{"op": "storm-fanout", "cap": N}`` sends
  itself two, while the ``storm`` switch is on and fewer than ``cap`` were sent. Once
  the storm is over, ``received == 1 + sent`` for each storm started with one message:
  nothing lost, nothing twice.

A batch of a function type this app does not serve fails (the SDK's
``UnknownFunctionType``) while ``unknown_types_fail`` is on, and otherwise runs as a
no-op: an operator who deploys the missing type heals it.

``POST /faults`` with ``{"poisons": [K...], "slow": S, "storm": bool,
"unknown_types_fail": bool}`` sets the switches (fields left out keep their value);
``GET /faults`` shows them and how many times each misbehaviour happened (``hits``).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sdk import (
    Context,
    IntType,
    Message,
    RequestReplyHandler,
    StatefulFunctions,
    ValueSpec,
    make_json_type,
    message_builder,
)
from statefun.errors import ProtocolError
from statefun.native_codec import CONTENT_TYPE, decode_request, encode_response
from statefun.protocol import (
    BatchOutcome,
    FunctionResponse,
    InvocationBatch,
    InvocationResult,
    MissingStateSpecs,
    StateMutation,
    StateSpec,
)
from statefun.values import TypedValue
from verifier.asgi import Receive, Scope, Send, read_body, respond, respond_json

OP_TYPE = "faults/Op"
COUNTER = "faults/counter"
FLAKY = "faults/flaky"
STORM = "faults/storm"
UNKNOWN_TARGET = "nowhere/nosuch"
"""A function type outside every endpoint's pattern."""

SDK_POISONS = ("raise", "reply", "unknown-target")
ANSWER_POISONS = ("garbage", "truncated", "undeclared-state", "missing-specs", "trickle")
POISONS = SDK_POISONS + ANSWER_POISONS
TRICKLE_INTERVAL = 1.0
"""Seconds between the bytes of a trickling answer: under any read timeout the suite
configures, so only a deadline on the whole attempt can end it."""
GARBAGE = b"\xc1 this is not msgpack \xc1"
"""0xc1 is the one byte msgpack never uses."""

OP = make_json_type(OP_TYPE)
INT_TYPENAME = IntType.typename


@dataclass
class Switches:
    """What misbehaves now, and how often each misbehaviour happened."""

    poisons: frozenset[str] = frozenset()
    slow: float = 0.0
    storm: bool = False
    unknown_types_fail: bool = False
    hits: Counter[str] = field(default_factory=Counter)

    def update(self, request: dict[str, Any]) -> None:
        poisons = request.get("poisons", sorted(self.poisons))
        unknown = set(poisons) - set(POISONS)
        if unknown:
            raise ValueError(f"unknown poison kinds {sorted(unknown)}; known: {POISONS}")
        self.poisons = frozenset(poisons)
        self.slow = float(request.get("slow", self.slow))
        self.storm = bool(request.get("storm", self.storm))
        self.unknown_types_fail = bool(request.get("unknown_types_fail", self.unknown_types_fail))

    def to_json(self) -> dict[str, Any]:
        return {
            "poisons": sorted(self.poisons),
            "slow": self.slow,
            "storm": self.storm,
            "unknown_types_fail": self.unknown_types_fail,
            "hits": dict(self.hits),
        }


SWITCHES = Switches()
functions = StatefulFunctions()


def _op(message: Message) -> dict[str, Any]:
    op: dict[str, Any] | None = message.as_type(OP)
    if not isinstance(op, dict):
        raise ValueError(f"expected a {OP_TYPE} object, got {op!r}")
    return op


def _count(context: Context, message: Message) -> None:
    op = _op(message)
    storage = context.storage
    if op["op"] in ("inc", "hot", "relay"):
        storage.count = (storage.count or 0) + 1
        if op["op"] == "relay":
            context.send(
                message_builder(
                    context.address.typename, op["to"], value={"op": "inc"}, value_type=OP
                )
            )
        return
    if op["op"] != "poison":
        return
    kind = op["kind"]
    if kind in SWITCHES.poisons and kind in SDK_POISONS:
        SWITCHES.hits[kind] += 1
        if kind == "raise":
            raise RuntimeError(f"poison message at {context.address.id}")
        if kind == "reply":
            context.reply(str_value="a reply to an ingress message")
        if kind == "unknown-target":
            context.send(message_builder(UNKNOWN_TARGET, context.address.id, str_value="x"))
    storage.poisons = (storage.poisons or 0) + 1


COUNTER_SPECS = [ValueSpec("count", IntType), ValueSpec("poisons", IntType)]
functions.register(COUNTER, _count, COUNTER_SPECS)
functions.register(FLAKY, _count, COUNTER_SPECS)


@functions.bind(STORM, specs=[ValueSpec("received", IntType), ValueSpec("sent", IntType)])
def storm(context: Context, message: Message) -> None:
    op = _op(message)
    storage = context.storage
    storage.received = (storage.received or 0) + 1
    sent: int = storage.sent or 0
    copies = {"storm-self": 1, "storm-fanout": 2}.get(op["op"], 0)
    if SWITCHES.storm and copies and sent < int(op.get("cap", 0)):
        for _ in range(copies):
            context.send(message_builder(STORM, context.address.id, value=op, value_type=OP))
        storage.sent = sent + copies


# --- the endpoint ---------------------------------------------------------------------

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _poisons_in(batch: InvocationBatch) -> set[str]:
    """The switched-on poison kinds among the batch's messages."""
    kinds = set()
    for invocation in batch.invocations:
        if invocation.argument.typename != OP_TYPE or invocation.argument.value is None:
            continue
        op = json.loads(invocation.argument.value)
        if op.get("op") == "poison" and op.get("kind") in SWITCHES.poisons:
            kinds.add(op["kind"])
    return kinds


def _is_hot(batch: InvocationBatch) -> bool:
    return any(
        i.argument.typename == OP_TYPE
        and i.argument.value is not None
        and json.loads(i.argument.value).get("op") == "hot"
        for i in batch.invocations
    )


def _rewrite(batch: InvocationBatch, outcome: BatchOutcome, kinds: set[str]) -> BatchOutcome:
    """The outcome the poisons of ``kinds`` turn the SDK's ``outcome`` into."""
    if "missing-specs" in kinds and batch.state:
        SWITCHES.hits["missing-specs"] += 1
        return MissingStateSpecs([StateSpec(name, INT_TYPENAME) for name in batch.state])
    if "undeclared-state" in kinds and isinstance(outcome, InvocationResult):
        SWITCHES.hits["undeclared-state"] += 1
        value = TypedValue(INT_TYPENAME, IntType.serializer().serialize(1))
        return InvocationResult(
            [*outcome.mutations, StateMutation("undeclared", value)],
            outcome.messages,
            outcome.delayed,
            outcome.egress,
        )
    return outcome


class FaultyEndpoint:
    """ASGI app: the switches, and the protocol route with its misbehaviours; the rest
    (``GET /statefun``, ``/health``) is the SDK's app."""

    def __init__(self, app: ASGIApp, path: str = "/statefun"):
        self.app = app
        self.path = path
        self.handler = RequestReplyHandler(functions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/faults":
                await self._switches(scope, receive, send)
                return
            if scope["method"] == "POST" and scope["path"] == self.path:
                await self._invoke(receive, send)
                return
        await self.app(scope, receive, send)

    async def _invoke(self, receive: Receive, send: Send) -> None:
        try:
            request = decode_request(await read_body(receive))
        except ProtocolError as e:
            await respond_json(send, 400, {"error": "invalid_request", "detail": str(e)})
            return
        kinds = [_poisons_in(batch) for batch in request.batches]
        everywhere = set().union(*kinds)
        if SWITCHES.slow > 0 and any(_is_hot(b) for b in request.batches):
            SWITCHES.hits["slow"] += 1
            await asyncio.sleep(SWITCHES.slow)
        if "garbage" in everywhere:
            SWITCHES.hits["garbage"] += 1
            await respond(send, 200, CONTENT_TYPE, GARBAGE)
            return
        response = await self.handler.process(request)
        outcomes = [
            self._unknown_type(batch, outcome)
            for batch, outcome in zip(request.batches, response.outcomes, strict=True)
        ]
        outcomes = [
            _rewrite(b, o, k) for b, o, k in zip(request.batches, outcomes, kinds, strict=True)
        ]
        data = encode_response(FunctionResponse(outcomes))
        if "truncated" in everywhere:
            SWITCHES.hits["truncated"] += 1
            data = data[: len(data) // 2]
        if "trickle" in everywhere:
            SWITCHES.hits["trickle"] += 1
            await _trickle(receive, send, data)
            return
        await respond(send, 200, CONTENT_TYPE, data)

    def _unknown_type(self, batch: InvocationBatch, outcome: BatchOutcome) -> BatchOutcome:
        if functions.lookup(batch.target.typename) is not None:
            return outcome
        SWITCHES.hits["unknown-type"] += 1
        return outcome if SWITCHES.unknown_types_fail else InvocationResult()

    async def _switches(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST":
            try:
                request = json.loads(await read_body(receive))
                if not isinstance(request, dict):
                    raise ValueError("the body must be a JSON object")
                SWITCHES.update(request)
            except (ValueError, TypeError) as e:
                await respond_json(send, 400, {"error": "bad_switches", "detail": str(e)})
                return
        await respond_json(send, 200, SWITCHES.to_json())


async def _trickle(receive: Receive, send: Send, data: bytes) -> None:
    """Send ``data`` one byte every ``TRICKLE_INTERVAL`` seconds while the switch is on
    (the rest at once after), until the client goes away."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", CONTENT_TYPE.encode()),
                (b"content-length", b"%d" % len(data)),
            ],
        }
    )
    gone = asyncio.ensure_future(receive())  # the next event is the client's disconnect
    try:
        sent = 0
        while sent < len(data) - 1 and "trickle" in SWITCHES.poisons:
            await send(
                {"type": "http.response.body", "body": data[sent : sent + 1], "more_body": True}
            )
            sent += 1
            done, _ = await asyncio.wait({gone}, timeout=TRICKLE_INTERVAL)
            if done:
                return
        await send({"type": "http.response.body", "body": data[sent:]})
    finally:
        gone.cancel()


app = FaultyEndpoint(functions.asgi_app())
