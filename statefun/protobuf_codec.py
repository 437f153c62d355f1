"""The StateFun codec: the invocation protocol model as Apache Flink StateFun's protobuf
request-reply protocol (``io.statefun.sdk.reqreply``), the wire format of the official
``apache-flink-statefun`` / ``flink-statefun`` Python SDK.

That protocol carries ONE address's batch per HTTP request: :func:`encode_batch` turns
an :class:`~statefun.protocol.InvocationBatch` into ``ToFunction`` bytes and
:func:`decode_outcome` turns the ``FromFunction`` answer into its
:class:`~statefun.protocol.BatchOutcome`. Splitting a multi-batch request into HTTP
calls is the caller's business.

The message classes are built at import time from the descriptor below (our own
definition of StateFun's messages, field numbers as StateFun's ``request-reply.proto``)
in a private descriptor pool, so they never clash with generated classes of the same
names and need no generated code. ``ToFunction`` and ``FromFunction`` are exported for
tools and tests that build or inspect messages by hand.

Wire facts the codec keeps (see the StateFun protocol notes):

* a typed value with ``has_value = false`` is "no value", whatever bytes it carries;
* a registered state without a value is sent by its name only (no ``state_value``);
* an ``Invocation.caller`` that is absent or empty means the message has no caller;
* a ``DelayedInvocation`` with ``is_cancellation_request`` carries only its token; an
  empty token on a delayed message means it has none;
* ``MutationType`` DELETE = 0, MODIFY = 1; ``ExpireMode`` NONE = 0, AFTER_WRITE = 1,
  AFTER_INVOKE = 2 (our ``ExpireMode.AFTER_CALL``);
* an empty body (or a ``FromFunction`` with no response set) is a result with no effects.

This module owns the byte layout and nothing else; it never does I/O.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from statefun.address import Address, TypeName
from statefun.errors import InvalidNameError, ProtocolError
from statefun.protocol import (
    NO_EXPIRATION,
    BatchOutcome,
    DelayCancellation,
    DelayedMessage,
    EgressRecord,
    Expiration,
    ExpireMode,
    InvocationBatch,
    InvocationResult,
    MissingStateSpecs,
    OutgoingMessage,
    StateMutation,
    StateSpec,
)
from statefun.values import TypedValue

__all__ = ["CONTENT_TYPE", "FromFunction", "ToFunction", "decode_outcome", "encode_batch"]

CONTENT_TYPE = "application/octet-stream"

_PACKAGE = "io.statefun.sdk.reqreply"

# --- the messages --------------------------------------------------------------------------

_Field = descriptor_pb2.FieldDescriptorProto
_STRING, _BYTES, _BOOL = _Field.TYPE_STRING, _Field.TYPE_BYTES, _Field.TYPE_BOOL
_INT64, _ENUM, _MESSAGE = _Field.TYPE_INT64, _Field.TYPE_ENUM, _Field.TYPE_MESSAGE


def _field(
    name: str,
    number: int,
    kind: int,
    type_name: str = "",
    *,
    repeated: bool = False,
    oneof: int | None = None,
) -> Any:
    field = _Field(
        name=name,
        number=number,
        type=kind,
        label=_Field.LABEL_REPEATED if repeated else _Field.LABEL_OPTIONAL,
    )
    if type_name:
        field.type_name = f".{_PACKAGE}.{type_name}"
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _message(
    name: str,
    fields: list[Any],
    *,
    nested: tuple[Any, ...] = (),
    enum: tuple[str, tuple[str, ...]] | None = None,
    oneof: str | None = None,
) -> Any:
    message = descriptor_pb2.DescriptorProto(name=name, field=fields, nested_type=nested)
    if enum is not None:
        enum_name, values = enum
        message.enum_type.add(name=enum_name).value.extend(
            descriptor_pb2.EnumValueDescriptorProto(name=v, number=i) for i, v in enumerate(values)
        )
    if oneof is not None:
        message.oneof_decl.add(name=oneof)
    return message


def _file() -> Any:
    address = _message(
        "Address",
        [_field("namespace", 1, _STRING), _field("type", 2, _STRING), _field("id", 3, _STRING)],
    )
    typed_value = _message(
        "TypedValue",
        [_field("typename", 1, _STRING), _field("has_value", 2, _BOOL), _field("value", 3, _BYTES)],
    )
    to_function = _message(
        "ToFunction",
        [_field("invocation", 100, _MESSAGE, "ToFunction.InvocationBatchRequest", oneof=0)],
        oneof="request",
        nested=(
            _message(
                "PersistedValue",
                [
                    _field("state_name", 1, _STRING),
                    _field("state_value", 2, _MESSAGE, "TypedValue"),
                ],
            ),
            _message(
                "Invocation",
                [
                    _field("caller", 1, _MESSAGE, "Address"),
                    _field("argument", 2, _MESSAGE, "TypedValue"),
                ],
            ),
            _message(
                "InvocationBatchRequest",
                [
                    _field("target", 1, _MESSAGE, "Address"),
                    _field("state", 2, _MESSAGE, "ToFunction.PersistedValue", repeated=True),
                    _field("invocations", 3, _MESSAGE, "ToFunction.Invocation", repeated=True),
                ],
            ),
        ),
    )
    from_function = _message(
        "FromFunction",
        [
            _field("invocation_result", 100, _MESSAGE, "FromFunction.InvocationResponse", oneof=0),
            _field(
                "incomplete_invocation_context",
                101,
                _MESSAGE,
                "FromFunction.IncompleteInvocationContext",
                oneof=0,
            ),
        ],
        oneof="response",
        nested=(
            _message(
                "PersistedValueMutation",
                [
                    _field(
                        "mutation_type",
                        1,
                        _ENUM,
                        "FromFunction.PersistedValueMutation.MutationType",
                    ),
                    _field("state_name", 2, _STRING),
                    _field("state_value", 3, _MESSAGE, "TypedValue"),
                ],
                enum=("MutationType", ("DELETE", "MODIFY")),
            ),
            _message(
                "Invocation",
                [
                    _field("target", 1, _MESSAGE, "Address"),
                    _field("argument", 2, _MESSAGE, "TypedValue"),
                ],
            ),
            _message(
                "DelayedInvocation",
                [
                    _field("delay_in_ms", 1, _INT64),
                    _field("target", 2, _MESSAGE, "Address"),
                    _field("argument", 3, _MESSAGE, "TypedValue"),
                    _field("is_cancellation_request", 10, _BOOL),
                    _field("cancellation_token", 11, _STRING),
                ],
            ),
            _message(
                "EgressMessage",
                [
                    _field("egress_namespace", 1, _STRING),
                    _field("egress_type", 2, _STRING),
                    _field("argument", 3, _MESSAGE, "TypedValue"),
                ],
            ),
            _message(
                "InvocationResponse",
                [
                    _field(
                        "state_mutations",
                        1,
                        _MESSAGE,
                        "FromFunction.PersistedValueMutation",
                        repeated=True,
                    ),
                    _field(
                        "outgoing_messages", 2, _MESSAGE, "FromFunction.Invocation", repeated=True
                    ),
                    _field(
                        "delayed_invocations",
                        3,
                        _MESSAGE,
                        "FromFunction.DelayedInvocation",
                        repeated=True,
                    ),
                    _field(
                        "outgoing_egresses",
                        4,
                        _MESSAGE,
                        "FromFunction.EgressMessage",
                        repeated=True,
                    ),
                ],
            ),
            _message(
                "ExpirationSpec",
                [
                    _field("mode", 1, _ENUM, "FromFunction.ExpirationSpec.ExpireMode"),
                    _field("expire_after_millis", 2, _INT64),
                ],
                enum=("ExpireMode", ("NONE", "AFTER_WRITE", "AFTER_INVOKE")),
            ),
            _message(
                "PersistedValueSpec",
                [
                    _field("state_name", 1, _STRING),
                    _field("expiration_spec", 2, _MESSAGE, "FromFunction.ExpirationSpec"),
                    _field("type_typename", 3, _STRING),
                ],
            ),
            _message(
                "IncompleteInvocationContext",
                [
                    _field(
                        "missing_values",
                        1,
                        _MESSAGE,
                        "FromFunction.PersistedValueSpec",
                        repeated=True,
                    )
                ],
            ),
        ),
    )
    return descriptor_pb2.FileDescriptorProto(
        name="statefun/request-reply.proto",
        package=_PACKAGE,
        syntax="proto3",
        message_type=[address, typed_value, to_function, from_function],
    )


# The classes refer to descriptors of this pool: it lives as long as the process.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def _class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


ToFunction, FromFunction = _class("ToFunction"), _class("FromFunction")

_DELETE, _MODIFY = 0, 1
_EXPIRE_MODES = {int(m): m for m in ExpireMode}

# --- the runtime's side: batch out, outcome in ----------------------------------------------


def _set_value(pb: Any, value: TypedValue) -> None:
    pb.typename = value.typename
    if value.value is not None:
        pb.has_value = True
        pb.value = value.value


def encode_batch(batch: InvocationBatch) -> bytes:
    """The batch as a serialized ``ToFunction``."""
    message = ToFunction()
    request = message.invocation
    pb_target, target = request.target, batch.target
    pb_target.namespace, pb_target.type, pb_target.id = target.namespace, target.type, target.id
    state = request.state
    for name, value in batch.state.items():
        persisted = state.add()
        persisted.state_name = name
        if value is not None and value.value is not None:
            _set_value(persisted.state_value, value)
    invocations = request.invocations
    for invocation in batch.invocations:
        pb_invocation = invocations.add()
        caller = invocation.caller
        if caller is not None:
            pb_caller = pb_invocation.caller
            pb_caller.namespace, pb_caller.type, pb_caller.id = (
                caller.namespace,
                caller.type,
                caller.id,
            )
        _set_value(pb_invocation.argument, invocation.argument)
    data: bytes = message.SerializeToString()
    return data


def _value(pb: Any, what: str) -> TypedValue:
    if not pb.typename:
        raise ProtocolError(f"{what} has no typed value")
    return TypedValue(pb.typename, pb.value if pb.has_value else None)


_addresses: dict[tuple[str, str, str], Address] = {}
_ADDRESS_CACHE_SIZE = 4096
# Answers name the same few addresses again and again; validating a name costs more than
# the rest of decoding it.


def _address(pb: Any, what: str) -> Address:
    key = (pb.namespace, pb.type, pb.id)
    address = _addresses.get(key)
    if address is None:
        try:
            address = Address(*key)
        except InvalidNameError as e:
            raise ProtocolError(f"{what}: {e}") from None
        if len(_addresses) >= _ADDRESS_CACHE_SIZE:
            _addresses.clear()
        _addresses[key] = address
    return address


def _mutation(pb: Any) -> StateMutation:
    kind = pb.mutation_type
    if kind == _DELETE:
        return StateMutation(pb.state_name, None)
    if kind != _MODIFY:
        raise ProtocolError(f"state {pb.state_name!r}: unknown mutation type {kind}")
    value = pb.state_value
    # A MODIFY to "no value" leaves the state without a value, as a DELETE does.
    return StateMutation(
        pb.state_name, TypedValue(value.typename, value.value) if value.has_value else None
    )


def _delayed(pb: Any) -> DelayedMessage | DelayCancellation:
    token: str = pb.cancellation_token
    if pb.is_cancellation_request:
        if not token:
            raise ProtocolError("a delayed message cancellation has no cancellation token")
        return DelayCancellation(token)
    if pb.delay_in_ms < 0:
        raise ProtocolError(f"a delayed message has a negative delay of {pb.delay_in_ms} ms")
    return DelayedMessage(
        pb.delay_in_ms,
        _address(pb.target, "a delayed message's target"),
        _value(pb.argument, "a delayed message"),
        token or None,
    )


def _egress(pb: Any) -> EgressRecord:
    if not pb.egress_namespace or not pb.egress_type:
        raise ProtocolError(
            f"an egress message names egress {pb.egress_namespace!r}/{pb.egress_type!r}"
        )
    return EgressRecord(
        TypeName(pb.egress_namespace, pb.egress_type), _value(pb.argument, "an egress message")
    )


def _spec(pb: Any) -> StateSpec:
    if not pb.state_name or not pb.type_typename:
        raise ProtocolError(
            f"a missing state spec needs a name and a type, got {pb.state_name!r}: {pb.type_typename!r}"
        )
    if not pb.HasField("expiration_spec"):
        return StateSpec(pb.state_name, pb.type_typename)
    expiration = pb.expiration_spec
    mode = _EXPIRE_MODES.get(expiration.mode)
    if mode is None:
        raise ProtocolError(f"state {pb.state_name!r}: unknown expire mode {expiration.mode}")
    if mode is ExpireMode.NONE:
        return StateSpec(pb.state_name, pb.type_typename, NO_EXPIRATION)
    if expiration.expire_after_millis <= 0:
        raise ProtocolError(
            f"state {pb.state_name!r} expires after {expiration.expire_after_millis} ms"
        )
    return StateSpec(
        pb.state_name, pb.type_typename, Expiration(mode, expiration.expire_after_millis)
    )


def decode_outcome(data: bytes) -> BatchOutcome:
    """The outcome of a batch from a serialized ``FromFunction``; empty bytes are a result
    with no effects."""
    try:
        message = FromFunction.FromString(data)
    except DecodeError as e:
        raise ProtocolError(f"the answer is not a StateFun FromFunction message: {e}") from None
    if message.WhichOneof("response") == "incomplete_invocation_context":
        missing = message.incomplete_invocation_context.missing_values
        if not missing:
            raise ProtocolError("an incomplete invocation context lists no missing state")
        return MissingStateSpecs([_spec(s) for s in missing])
    result = message.invocation_result
    return InvocationResult(
        [_mutation(m) for m in result.state_mutations],
        [
            OutgoingMessage(
                _address(m.target, "a message's target"), _value(m.argument, "a message")
            )
            for m in result.outgoing_messages
        ],
        [_delayed(d) for d in result.delayed_invocations],
        [_egress(e) for e in result.outgoing_egresses],
    )
