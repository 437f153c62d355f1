"""The verifier's function app: ``verify/counter`` on our SDK, behind a fault injector.

``verify/counter`` runs command trees (see :mod:`verifier.commands`). Its state:

- ``count`` (int): the sum of the ``inc`` ops applied here;
- ``applied`` (JSON list): the id of every command applied here, once;
- ``duplicates`` (JSON list): the id of every command that arrived again after it was
  applied (exactly-once is broken; the command still runs, as a naive function would);
- ``violations`` (JSON list): failed causal checks (``verify`` ops) and refused
  delayed sends;
- ``emitted`` (JSON object): command id -> the nonce of the egress record it emitted.
  Each execution draws a fresh random nonce, so a record delivered with another nonce
  than the state kept came from an execution that was rolled back (the egress auditor,
  :mod:`verifier.egress_audit`, checks this).

A command that came through ``POST /v1/call`` (its caller is the ingress) is answered
with ``{"cmd", "at"}`` (type ``verify/Reply``) once its ops have run: the verifier's
calls across runtime processes check that each reply reaches its HTTP request.

Every ``egress`` op emits ``{"cmd", "at", "n", "nonce"}`` to the embedded egress
``verify/out`` and, when ``$VERIFIER_KAFKA_EGRESS_TOPIC`` names a topic, the same record
(JSON, keyed by the address id) to the Kafka egress ``verify/kafka-out``.

Serve it with ``uvicorn verifier.functions:app``. ``POST /faults`` with
``{"mode": "none" | "error500" | "timeout" | "slow", "seconds": S}`` makes the protocol
route answer 500, hang (so that the runtime's read timeout fires), or answer after a
random delay of up to ``max_delay`` seconds (default 1; responses then arrive across
checkpoints), for ``S`` seconds;
``GET /faults`` shows the current fault and how many requests were faulted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sdk import (
    Context,
    IntType,
    Message,
    StatefulFunctions,
    ValueSpec,
    egress_message_builder,
    kafka_egress_message,
    make_json_type,
    message_builder,
)
from verifier.asgi import Receive, Scope, Send, read_body, respond_json
from verifier.commands import (
    COMMAND_TYPE,
    EGRESS_ID,
    FUNCTION_TYPE,
    INGRESS_CALLER_TYPE,
    KAFKA_EGRESS_ID,
    RECORD_TYPE,
    REPLY_TYPE,
    Command,
)

COMMAND = make_json_type(COMMAND_TYPE)
RECORD = make_json_type(RECORD_TYPE)
REPLY = make_json_type(REPLY_TYPE)
IDS = make_json_type("verify/Ids")
VIOLATIONS = make_json_type("verify/Violations")
EMITTED = make_json_type("verify/Emitted")

functions = StatefulFunctions()

SABOTAGE = os.environ.get("VERIFIER_SABOTAGE", "")
"""To check the verifier itself, for the root command of every 50th tree:
``overcount`` counts it twice; ``lose`` drops it (no count, not applied);
``egress-twice`` emits its egress record twice; ``egress-stale`` emits its egress record
with another nonce than the one it keeps in state (as rolled-back work would)."""

KAFKA_EGRESS_TOPIC = os.environ.get("VERIFIER_KAFKA_EGRESS_TOPIC", "")


def _sabotaged(command_id: str) -> bool:
    tree, _, node = command_id.partition(".")
    return bool(SABOTAGE) and node == "0" and int(tree) % 50 == 7


def _message(to: str, command: Command) -> Message:
    return message_builder(FUNCTION_TYPE, to, value=command, value_type=COMMAND)


@functions.bind(
    FUNCTION_TYPE,
    specs=[
        ValueSpec("count", IntType),
        ValueSpec("applied", IDS),
        ValueSpec("duplicates", IDS),
        ValueSpec("violations", VIOLATIONS),
        ValueSpec("emitted", EMITTED),
    ],
)
def counter(context: Context, message: Message) -> None:
    command: Command | None = message.as_type(COMMAND)
    if command is None:
        raise ValueError("a command must not be empty")
    command_id: str = command["id"]
    storage = context.storage
    if SABOTAGE == "lose" and _sabotaged(command_id):
        return
    applied: list[str] = storage.applied or []
    if command_id in applied:
        storage.duplicates = [*(storage.duplicates or []), command_id]
    else:
        applied.append(command_id)
        storage.applied = applied
    violations: list[dict[str, Any]] = []
    count: int = storage.count or 0
    if SABOTAGE == "overcount" and _sabotaged(command_id):
        count += 1
    for op in command["ops"]:
        kind = op["op"]
        if kind == "inc":
            count += 1
        elif kind == "send":
            context.send(_message(op["to"], op["cmd"]))
        elif kind == "send_after":
            try:
                context.send_after(
                    timedelta(milliseconds=op["delay_ms"]),
                    _message(op["to"], op["cmd"]),
                    cancellation_token=op.get("token") or "",
                )
            except ValueError as e:  # the token is pending: this command ran twice
                violations.append({"cmd": command_id, "refused": str(e)})
        elif kind == "cancel":
            context.cancel_delayed_message(op["token"])
        elif kind == "egress":
            _emit(context, command_id, op["n"])
        elif kind == "verify":
            missing = [e for e in op["expect"] if e not in applied]
            if missing:
                violations.append({"cmd": command_id, "missing": missing})
        else:
            violations.append({"cmd": command_id, "unknown_op": kind})
    storage.count = count
    if violations:
        storage.violations = [*(storage.violations or []), *violations]
    caller = context.caller
    if caller is not None and caller.typename == INGRESS_CALLER_TYPE:
        context.reply(value={"cmd": command_id, "at": context.address.id}, value_type=REPLY)


def _emit(context: Context, command_id: str, n: int) -> None:
    nonce = secrets.token_hex(8)
    context.storage.emitted = {**(context.storage.emitted or {}), command_id: nonce}
    if SABOTAGE == "egress-stale" and _sabotaged(command_id):
        nonce = secrets.token_hex(8)
    record = {"cmd": command_id, "at": context.address.id, "n": n, "nonce": nonce}
    for _ in range(2 if SABOTAGE == "egress-twice" and _sabotaged(command_id) else 1):
        context.send_egress(egress_message_builder(EGRESS_ID, record, RECORD))
        if KAFKA_EGRESS_TOPIC:
            context.send_egress(
                kafka_egress_message(
                    KAFKA_EGRESS_ID,
                    KAFKA_EGRESS_TOPIC,
                    json.dumps(record, separators=(",", ":")),
                    key=context.address.id,
                )
            )


# --- fault injection ------------------------------------------------------------------

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FAULT_MODES = ("none", "error500", "timeout", "slow")
HANG_AFTER_SPELL = 10.0
"""A request caught by a timeout spell hangs until the spell ends and this much longer
(more than any read timeout the verifier configures), then answers 503."""


class FaultInjector:
    """ASGI middleware: the fault controls, and faults on the protocol POST route."""

    def __init__(self, app: ASGIApp, path: str = "/statefun"):
        self.app = app
        self.path = path
        self.mode = "none"
        self.until = 0.0
        self.max_delay = 1.0
        self.faulted = {"error500": 0, "timeout": 0, "slow": 0}

    def active(self) -> str:
        if self.mode != "none" and time.monotonic() >= self.until:
            self.mode = "none"
        return self.mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/faults":
                await self._controls(scope, receive, send)
                return
            if scope["method"] == "POST" and scope["path"] == self.path:
                mode = self.active()
                if mode == "slow":
                    self.faulted[mode] += 1
                    await asyncio.sleep(random.uniform(0.0, self.max_delay))
                elif mode != "none":
                    self.faulted[mode] += 1
                    await read_body(receive)
                    if mode == "timeout":
                        await asyncio.sleep(self.until - time.monotonic() + HANG_AFTER_SPELL)
                        await respond_json(send, 503, {"error": "injected timeout"})
                    else:
                        await respond_json(send, 500, {"error": "injected error"})
                    return
        await self.app(scope, receive, send)

    async def _controls(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST":
            try:
                request = json.loads(await read_body(receive))
                mode, seconds = request["mode"], float(request.get("seconds", 0))
                max_delay = float(request.get("max_delay", 1.0))
            except (ValueError, KeyError, TypeError) as e:
                await respond_json(send, 400, {"error": f"bad fault request: {e}"})
                return
            if mode not in FAULT_MODES:
                await respond_json(send, 400, {"error": f"mode must be one of {FAULT_MODES}"})
                return
            self.mode = mode
            self.until = time.monotonic() + seconds
            self.max_delay = max_delay
        mode = self.active()
        await respond_json(
            send,
            200,
            {
                "mode": mode,
                "remaining": max(0.0, self.until - time.monotonic()) if mode != "none" else 0.0,
                "faulted": self.faulted,
            },
        )


app = FaultInjector(functions.asgi_app())
