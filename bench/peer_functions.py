"""The functions of ``python -m bench.peer``: the workload of the Restate comparison, in
our SDK, served by uvicorn in their own process.

``peer/counter`` keeps a per-address ``count`` and takes two kinds of message, told
apart by their value's type (Restate's two handlers of one virtual object):

* an ``io.statefun.types/int`` ``delta`` (``add``): ``count += delta``, and the new count
  goes back to the caller as an int (a call's reply; a one-way send has no caller and
  gets nothing);
* a ``peer/AddAndFormat`` JSON number ``delta`` (``add_and_format``): ``count += delta``,
  then ``peer/formatter`` with the id ``fmt-<id>`` is sent the count and the caller's
  address; it sends ``"<its id>: count=<count>"`` to that caller, which completes the
  waiting ``POST /v1/call`` (any message sent to the ingress's caller address does).
  Two hops, as Restate's ``add_and_format`` calling ``formatter.format``.

Serve with ``uvicorn bench.peer_functions:app`` from the repository root.
"""

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

COUNTER = "peer/counter"
FORMATTER = "peer/formatter"
ADD_AND_FORMAT = make_json_type("peer/AddAndFormat")
"""``add_and_format``'s message: a JSON number, the delta."""
FORMAT = make_json_type("peer/Format")
"""What the counter tells the formatter: ``{"count": n, "reply_to": [typename, id]}``."""

functions = StatefulFunctions()


@functions.bind(COUNTER, specs=[ValueSpec("count", IntType)])
def counter(context: Context, message: Message) -> None:
    if message.is_type(ADD_AND_FORMAT):
        delta = int(message.as_type(ADD_AND_FORMAT) or 0)
        formats = True
    else:
        delta = message.as_int() or 0
        formats = False
    count = (context.storage.count or 0) + delta
    context.storage.count = count
    caller = context.caller
    if caller is None:  # a one-way send: nobody to answer
        return
    if formats:
        request: dict[str, Any] = {"count": count, "reply_to": [caller.typename, caller.id]}
        context.send(
            message_builder(
                FORMATTER, f"fmt-{context.address.id}", value=request, value_type=FORMAT
            )
        )
    else:
        context.reply(int_value=count)


@functions.bind(FORMATTER)
def formatter(context: Context, message: Message) -> None:
    request = message.as_type(FORMAT) or {}
    typename, caller_id = request["reply_to"]
    text = f"{context.address.id}: count={request['count']}"
    context.send(message_builder(typename, caller_id, str_value=text))


app = functions.asgi_app()
