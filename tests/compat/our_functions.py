"""Functions written with our SDK (``sdk``) that talk to the official-SDK functions of
``official_functions.py`` in one application: the same JSON types, built-in types both
ways."""

from __future__ import annotations

from typing import Any

from sdk import (
    Context,
    IntType,
    Message,
    StatefulFunctions,
    ValueSpec,
    make_json_type,
    message_builder,
)

PAYLOAD = make_json_type("compat/Payload")
ASKER = make_json_type("compat/Asker")

functions = StatefulFunctions()


def same_value(message: Message) -> dict[str, Any]:
    """The message's value as ``message_builder`` keywords, of the same type."""
    if message.is_int():
        return {"int_value": message.as_int()}
    if message.is_string():
        return {"str_value": message.as_string()}
    return {"value": message.as_type(PAYLOAD), "value_type": PAYLOAD}


@functions.bind("ours/echo")
def echo(context: Context, message: Message) -> None:
    """Answers its caller: an int plus one, a string in capitals, a Payload marked."""
    if message.is_int():
        context.reply(int_value=(message.as_int() or 0) + 1)
    elif message.is_string():
        context.reply(str_value=(message.as_string() or "").upper())
    else:
        payload = message.as_type(PAYLOAD)
        payload["echoed_by"] = "ours"
        context.reply(value=payload, value_type=PAYLOAD)


@functions.bind("ours/relay", specs=[ValueSpec("asker", ASKER)])
def relay(context: Context, message: Message) -> None:
    """A message from official/echo is an answer: it goes to whoever asked. Any other
    message is a question: remember who asked, and ask official/echo."""
    caller = context.caller
    assert caller is not None
    if caller.typename == "official/echo":
        asker = context.storage.asker
        del context.storage.asker
        context.send(message_builder(asker["typename"], asker["id"], **same_value(message)))
        return
    context.storage.asker = {"typename": caller.typename, "id": caller.id}
    context.send(message_builder("official/echo", context.address.id, **same_value(message)))


@functions.bind("ours/counter", specs=[ValueSpec("count", IntType)])
def counter(context: Context, message: Message) -> None:
    """Adds up the ints it gets and answers its caller, if any, with the sum."""
    context.storage.count = (context.storage.count or 0) + (message.as_int() or 0)
    if context.caller is not None:
        context.reply(int_value=context.storage.count)


app = functions.asgi_app()
