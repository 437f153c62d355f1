"""The SDK for writing stateful functions, in the style of Apache Flink StateFun's Python SDK.

Code written for ``apache-flink-statefun`` ports by changing ``from statefun import ...``
to ``from sdk import ...``; functions may be plain ``def`` or ``async def``::

    from sdk import Context, IntType, Message, StatefulFunctions, ValueSpec

    functions = StatefulFunctions()

    @functions.bind("example/counter", specs=[ValueSpec("count", IntType)])
    def counter(context: Context, message: Message) -> None:
        context.storage.count = (context.storage.count or 0) + 1

    app = functions.asgi_app()  # serve with any ASGI server, e.g. uvicorn
"""

from sdk._context import Context, NoCallerError, SdkAddress
from sdk._function import StatefulFunctions
from sdk._handler import RequestReplyHandler
from sdk._message import (
    EgressMessage,
    Message,
    egress_message_builder,
    kafka_egress_message,
    message_builder,
)
from sdk._spec import ValueSpec
from sdk._storage import Storage
from statefun.values import (
    BoolType,
    DoubleType,
    FloatType,
    IntType,
    LongType,
    StringType,
    Type,
    TypedValue,
    TypeSerializer,
    make_json_type,
    make_protobuf_type,
    simple_type,
)

__all__ = [
    "BoolType",
    "Context",
    "DoubleType",
    "EgressMessage",
    "FloatType",
    "IntType",
    "LongType",
    "Message",
    "NoCallerError",
    "RequestReplyHandler",
    "SdkAddress",
    "StatefulFunctions",
    "Storage",
    "StringType",
    "Type",
    "TypeSerializer",
    "TypedValue",
    "ValueSpec",
    "egress_message_builder",
    "kafka_egress_message",
    "make_json_type",
    "make_protobuf_type",
    "message_builder",
    "simple_type",
]
