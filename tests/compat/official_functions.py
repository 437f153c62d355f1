# ruff: noqa: F403, F405 - written as StateFun's docs write functions: `from statefun import *`
"""Functions written with the official Apache Flink StateFun Python SDK, served the way
StateFun's documentation and playground serve them (an aiohttp app around
``RequestReplyHandler``).

This module runs in the official SDK's own virtualenv (see ``official_sdk.py``), never in
the project's: ``statefun`` here is the official SDK. It listens on ``$PORT``.
"""

import os
from datetime import timedelta

from aiohttp import web

from statefun import *

functions = StatefulFunctions()

PAYLOAD = make_json_type(typename="compat/Payload")
ASKER = make_json_type(typename="compat/Asker")
GREET_REQUEST = make_json_type(typename="example/GreetRequest")
EGRESS_RECORD = make_json_type(typename="io.statefun.playground/EgressRecord")


@functions.bind(
    typename="official/counter",
    specs=[
        ValueSpec(name="count", type=IntType),
        ValueSpec(name="callers", type=PAYLOAD),
        ValueSpec(name="note", type=StringType),  # never written: always sent by name only
    ],
)
def counter(context: Context, message: Message):
    """Adds up the ints it gets, remembers who sent them, answers its caller with the sum."""
    count = (context.storage.count or 0) + message.as_int()
    context.storage.count = count
    callers = context.storage.callers or []
    callers.append(context.caller.typename if context.caller else None)
    context.storage.callers = callers
    if context.caller:
        context.send(
            message_builder(
                target_typename=context.caller.typename,
                target_id=context.caller.id,
                int_value=count,
            )
        )


@functions.bind(typename="official/notes", specs=[ValueSpec(name="note", type=StringType)])
async def notes(context: Context, message: Message):
    """Keeps the last string it got; "del" deletes it."""
    text = message.as_string()
    if text == "del":
        del context.storage.note
    else:
        context.storage.note = text


@functions.bind(typename="official/forward", specs=[ValueSpec(name="count", type=IntType)])
def forward(context: Context, message: Message):
    """Counts, then sends 1 to official/counter at its own id (whose answers it ignores)."""
    if context.caller and context.caller.typename == "official/counter":
        return
    context.storage.count = (context.storage.count or 0) + 1
    context.send(
        message_builder(
            target_typename="official/counter", target_id=context.address.id, int_value=1
        )
    )


@functions.bind(typename="official/later")
def later(context: Context, message: Message):
    """ "start": +100 to official/counter in 300 ms, cancellable with token "t";
    "cancel": cancels it; "plain": +10 in 300 ms, without a token."""
    command = message.as_string()
    target = message_builder(
        target_typename="official/counter",
        target_id=context.address.id,
        int_value=100 if command == "start" else 10,
    )
    if command == "start":
        context.send_after(timedelta(milliseconds=300), target, cancellation_token="t")
    elif command == "cancel":
        context.cancel_delayed_message("t")
    elif command == "plain":
        context.send_after(timedelta(milliseconds=300), target)


@functions.bind(typename="official/flaky", specs=[ValueSpec(name="count", type=IntType)])
def flaky(context: Context, message: Message):
    """Raises while the file $FLAKY_FLAG exists, so the SDK answers HTTP 500."""
    if os.path.exists(os.environ["FLAKY_FLAG"]):
        raise RuntimeError("flaky is failing on purpose")
    context.storage.count = (context.storage.count or 0) + 1


@functions.bind(
    typename="official/expiring",
    specs=[
        ValueSpec(name="written", type=StringType, expire_after_write=timedelta(milliseconds=600)),
        ValueSpec(name="touched", type=IntType, expire_after_call=timedelta(milliseconds=600)),
    ],
)
def expiring(context: Context, message: Message):
    """ "write:<text>" sets `written`, "touch" adds 1 to `touched`; anything answers its
    caller with both values, as they were before the message."""
    answer = {"written": context.storage.written, "touched": context.storage.touched}
    command = message.as_string()
    if command.startswith("write:"):
        context.storage.written = command[len("write:") :]
    elif command == "touch":
        context.storage.touched = (context.storage.touched or 0) + 1
    if context.caller:
        context.send(
            message_builder(
                target_typename=context.caller.typename,
                target_id=context.caller.id,
                value=answer,
                value_type=PAYLOAD,
            )
        )


@functions.bind(typename="official/to_kafka", specs=[ValueSpec(name="count", type=IntType)])
def to_kafka(context: Context, message: Message):
    """Counts, and produces "<id>:<count>", keyed by its id, to the topic the message names."""
    count = (context.storage.count or 0) + 1
    context.storage.count = count
    context.send_egress(
        kafka_egress_message(
            typename="official/kafka",
            topic=message.as_string(),
            key=context.address.id,
            value=f"{context.address.id}:{count}",
        )
    )


def same_value(message: Message) -> dict:
    """The message's value as message_builder keywords, of the same type."""
    if message.is_int():
        return {"int_value": message.as_int()}
    if message.is_string():
        return {"str_value": message.as_string()}
    if message.is_type(PAYLOAD):
        return {"value": message.as_type(PAYLOAD), "value_type": PAYLOAD}
    raise ValueError(f"unexpected value of type {message.value_typename()}")


@functions.bind(typename="official/echo")
def echo(context: Context, message: Message):
    """Answers its caller: an int plus one, a string in capitals, a Payload marked."""
    if message.is_int():
        answer = {"int_value": message.as_int() + 1}
    elif message.is_string():
        answer = {"str_value": message.as_string().upper()}
    else:
        payload = message.as_type(PAYLOAD)
        payload["echoed_by"] = "official"
        answer = {"value": payload, "value_type": PAYLOAD}
    context.send(
        message_builder(
            target_typename=context.caller.typename, target_id=context.caller.id, **answer
        )
    )


@functions.bind(typename="official/relay", specs=[ValueSpec(name="asker", type=ASKER)])
def relay(context: Context, message: Message):
    """A message from ours/echo is an answer: it goes to whoever asked. Any other message
    is a question: remember who asked, and ask ours/echo."""
    if context.caller and context.caller.typename == "ours/echo":
        asker = context.storage.asker
        del context.storage.asker
        context.send(
            message_builder(
                target_typename=asker["typename"], target_id=asker["id"], **same_value(message)
            )
        )
        return
    context.storage.asker = {"typename": context.caller.typename, "id": context.caller.id}
    context.send(
        message_builder(
            target_typename="ours/echo", target_id=context.address.id, **same_value(message)
        )
    )


# --- the StateFun playground's greeter, as its module.yaml drives it ---------------------


@functions.bind(typename="example/person", specs=[ValueSpec(name="visits", type=IntType)])
async def person(context: Context, message: Message):
    visits = (context.storage.visits or 0) + 1
    context.storage.visits = visits
    request = message.as_type(GREET_REQUEST)
    request["visits"] = visits
    context.send(
        message_builder(
            target_typename="example/greeter",
            target_id=request["name"],
            value=request,
            value_type=GREET_REQUEST,
        )
    )


@functions.bind(typename="example/greeter")
async def greeter(context: Context, message: Message):
    request = message.as_type(GREET_REQUEST)
    greeting = "Hello" if request["visits"] == 1 else "Hello again"
    context.send_egress(
        egress_message_builder(
            target_typename="io.statefun.playground/egress",
            value={"topic": "greetings", "payload": f"{greeting} {request['name']}"},
            value_type=EGRESS_RECORD,
        )
    )


handler = RequestReplyHandler(functions)


async def handle(request):
    req = await request.read()
    res = await handler.handle_async(req)
    return web.Response(body=res, content_type="application/octet-stream")


app = web.Application()
app.add_routes([web.post("/statefun", handle)])

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]))
