"""The pipeline benchmark's functions, served by uvicorn in their own process.

``bench/first`` counts the messages of each address in its state and forwards each
message to ``bench/second`` with the same id, carrying the count and the original
caller. ``bench/second`` sends ``"<id>:<count>"`` to that caller (an ingress call
waiting on ``POST /v1/call``); a message without a caller (``POST /v1/messages``)
goes to the ``bench/done`` egress instead, so the benchmark can tell when the whole
pipeline has processed it. Either way each message leaves exactly one output, and
the outputs of an address are ``1..n``: the benchmark checks that.

``bench/counter`` is one hop, for ``python -m bench.cluster``: it counts the messages of
each address and answers ``"<id>:<count>"`` itself, to its caller or, without one, to
the ``bench/done`` egress.

For ``python -m bench.checkpoints``, whose module also declares the at-least-once
egress ``bench/done-at-least-once``: the output of an address whose id starts with
``both-`` goes to both egresses, so one message times both delivery semantics.

Serve with ``uvicorn bench.functions:app`` from the repository root.
"""

from __future__ import annotations

from typing import Any

from sdk import (
    Context,
    IntType,
    Message,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    make_json_type,
    message_builder,
)

FIRST = "bench/first"
SECOND = "bench/second"
COUNTER = "bench/counter"
DONE_EGRESS = "bench/done"
BOTH_PREFIX = "both-"
AT_LEAST_ONCE_EGRESS = "bench/done-at-least-once"
FORWARD = make_json_type("bench/Forward")
"""What ``bench/first`` tells ``bench/second``: ``{"count": n, "reply_to": [typename, id]}``
(``reply_to`` only when the message had a caller)."""

functions = StatefulFunctions()


@functions.bind(FIRST, specs=[ValueSpec("count", IntType)])
def first(context: Context, message: Message) -> None:
    count = (context.storage.count or 0) + 1
    context.storage.count = count
    forward: dict[str, Any] = {"count": count}
    caller = context.caller
    if caller is not None:
        forward["reply_to"] = [caller.typename, caller.id]
    context.send(message_builder(SECOND, context.address.id, value=forward, value_type=FORWARD))


@functions.bind(SECOND)
def second(context: Context, message: Message) -> None:
    forward = message.as_type(FORWARD) or {}
    output = f"{context.address.id}:{forward['count']}"
    reply_to = forward.get("reply_to")
    if reply_to is not None:
        typename, caller_id = reply_to
        context.send(message_builder(typename, caller_id, str_value=output))
    else:
        context.send_egress(egress_message_builder(DONE_EGRESS, output, StringType))
        if context.address.id.startswith(BOTH_PREFIX):
            context.send_egress(egress_message_builder(AT_LEAST_ONCE_EGRESS, output, StringType))


@functions.bind(COUNTER, specs=[ValueSpec("count", IntType)])
def counter(context: Context, message: Message) -> None:
    count = (context.storage.count or 0) + 1
    context.storage.count = count
    output = f"{context.address.id}:{count}"
    caller = context.caller
    if caller is not None:
        context.send(message_builder(caller.typename, caller.id, str_value=output))
    else:
        context.send_egress(egress_message_builder(DONE_EGRESS, output, StringType))


app = functions.asgi_app()
