"""The greeter example: two function types and an egress.

``example/greeter`` counts the visits of each name in its state and asks
``example/formatter`` for a greeting, passing along who is waiting for it;
``example/formatter`` writes the greeting, replies to that original caller and
records the greeting in the ``example/greetings`` egress.

Serve it from the repository root with ``uvicorn examples.greeter.functions:app``. With
``$GREETER_VERIFY_KEY_FILE`` (the runtime's public key, as docker-compose.yml gives it)
the app serves only calls the runtime signed; without it (the demo), any call.
"""

from __future__ import annotations

import os

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

GREET_REQUEST = make_json_type("example/GreetRequest")

functions = StatefulFunctions()


@functions.bind("example/greeter", specs=[ValueSpec("visits", IntType)])
async def greeter(context: Context, message: Message) -> None:
    name = message.as_string() or "stranger"
    visits = (context.storage.visits or 0) + 1
    context.storage.visits = visits
    request = {"name": name, "visits": visits}
    if context.caller is not None:
        # Whoever asked (an HTTP call through the ingress, say) gets the formatter's answer.
        request["reply_to"] = [context.caller.typename, context.caller.id]
    context.send(
        message_builder("example/formatter", name, value=request, value_type=GREET_REQUEST)
    )


@functions.bind("example/formatter")
def formatter(context: Context, message: Message) -> None:
    request = message.as_type(GREET_REQUEST) or {}
    name, visits = request["name"], request["visits"]
    if visits == 1:
        greeting = f"Hello {name}! Nice to meet you."
    else:
        greeting = f"Hello again {name}! This is visit number {visits}."
    if "reply_to" in request:
        typename, caller_id = request["reply_to"]
        context.send(message_builder(typename, caller_id, str_value=greeting))
    context.send_egress(egress_message_builder("example/greetings", greeting, StringType))


app = functions.asgi_app(verify_key=os.environ.get("GREETER_VERIFY_KEY_FILE") or None)
