"""The native codec: the invocation protocol model as msgpack.

Every message starts with the protocol version; a peer speaking another version gets
a :class:`~statefun.errors.ProtocolError` that names both versions. The layout is
positional arrays (compact and fast to pack), documented next to each function below.
This module owns the byte layout and nothing else.
"""

from __future__ import annotations

from typing import Any

import msgpack

from statefun.address import Address, TypeName
from statefun.errors import ProtocolError
from statefun.protocol import (
    BatchOutcome,
    DelayCancellation,
    DelayedMessage,
    EgressRecord,
    Expiration,
    ExpireMode,
    FunctionFailure,
    FunctionRequest,
    FunctionResponse,
    Invocation,
    InvocationBatch,
    InvocationResult,
    MissingStateSpecs,
    OutgoingMessage,
    StateMutation,
    StateSpec,
)
from statefun.values import TypedValue

__all__ = [
    "CONTENT_TYPE",
    "PROTOCOL_VERSION",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/vnd.statefun.native+msgpack"

_RESULT, _MISSING, _FAILURE = 0, 1, 2
_DELAY_SEND, _DELAY_CANCEL = 0, 1

# address: [namespace, type, id]; typed value: [typename, bytes | nil]


def _addr(a: Address) -> tuple[str, str, str]:
    return (a.namespace, a.type, a.id)


def _tv(v: TypedValue | None) -> tuple[str, bytes | None] | None:
    return None if v is None else (v.typename, v.value)


def _to_addr(raw: Any) -> Address:
    return Address(raw[0], raw[1], raw[2])


def _to_tv(raw: Any) -> TypedValue:
    typename, value = raw
    if not isinstance(typename, str) or not (value is None or isinstance(value, bytes)):
        raise ProtocolError("a typed value must be [str, bytes | nil]")
    return TypedValue(typename, value)


def _pack(version_and_body: tuple[int, Any]) -> bytes:
    data: bytes = msgpack.packb(version_and_body, use_bin_type=True)
    return data


def _unpack(data: bytes, what: str) -> Any:
    try:
        version, body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:
        raise ProtocolError(f"{what} is not a native protocol message: {e}") from None
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what} speaks native protocol version {version!r}; this side speaks {PROTOCOL_VERSION}"
        )
    return body


# request: [version, [batch...]]
# batch:   [address, {state name: typed value | nil}, [[caller address | nil, typed value]...],
#           [pending cancellation token...]]


def encode_request(request: FunctionRequest) -> bytes:
    return _pack(
        (
            PROTOCOL_VERSION,
            [
                (
                    _addr(b.target),
                    {name: _tv(v) for name, v in b.state.items()},
                    [
                        (None if i.caller is None else _addr(i.caller), _tv(i.argument))
                        for i in b.invocations
                    ],
                    b.pending_tokens,
                )
                for b in request.batches
            ],
        )
    )


def decode_request(data: bytes) -> FunctionRequest:
    body = _unpack(data, "the request")
    try:
        return FunctionRequest(
            [
                InvocationBatch(
                    _to_addr(target),
                    {name: None if v is None else _to_tv(v) for name, v in state.items()},
                    [
                        Invocation(None if caller is None else _to_addr(caller), _to_tv(arg))
                        for caller, arg in invocations
                    ],
                    tuple(str(t) for t in tokens),
                )
                for target, state, invocations, tokens in body
            ]
        )
    except ProtocolError:
        raise
    except (TypeError, ValueError, IndexError, AttributeError) as e:
        raise ProtocolError(f"malformed native request: {e}") from None


# response: [version, [outcome...]], one outcome per batch, in order:
#   [0, [mutations, messages, delayed, egress]]   mutations: [[name, typed value | nil]...]
#        messages: [[address, typed value]...]    egress: [[[namespace, name], typed value]...]
#        delayed: [[0, delay ms, address, typed value, token | nil] | [1, token]...]
#   [1, [[state name, typename, expire mode, expire after ms]...]]
#   [2, [function type, address, error type, message]]


def _encode_outcome(o: BatchOutcome) -> tuple[int, Any]:
    if isinstance(o, InvocationResult):
        return (
            _RESULT,
            (
                [(m.name, _tv(m.value)) for m in o.mutations],
                [(_addr(m.target), _tv(m.argument)) for m in o.messages],
                [
                    (_DELAY_CANCEL, d.token)
                    if isinstance(d, DelayCancellation)
                    else (
                        _DELAY_SEND,
                        d.delay_ms,
                        _addr(d.target),
                        _tv(d.argument),
                        d.cancellation_token,
                    )
                    for d in o.delayed
                ],
                [((e.egress.namespace, e.egress.name), _tv(e.argument)) for e in o.egress],
            ),
        )
    if isinstance(o, MissingStateSpecs):
        return (
            _MISSING,
            [(s.name, s.typename, int(s.expiration.mode), s.expiration.after_ms) for s in o.specs],
        )
    return (_FAILURE, (o.function_type, _addr(o.address), o.error_type, o.message))


def encode_response(response: FunctionResponse) -> bytes:
    return _pack((PROTOCOL_VERSION, [_encode_outcome(o) for o in response.outcomes]))


def _decode_delayed(raw: Any) -> DelayedMessage | DelayCancellation:
    if raw[0] == _DELAY_CANCEL:
        return DelayCancellation(str(raw[1]))
    if raw[0] != _DELAY_SEND:
        raise ProtocolError(f"unknown delayed message kind {raw[0]!r}")
    _, delay_ms, target, argument, token = raw
    if not isinstance(delay_ms, int) or delay_ms < 0:
        raise ProtocolError(f"delay must be a non-negative int of milliseconds, got {delay_ms!r}")
    return DelayedMessage(delay_ms, _to_addr(target), _to_tv(argument), token)


def _decode_outcome(raw: Any) -> BatchOutcome:
    kind, body = raw
    if kind == _RESULT:
        mutations, messages, delayed, egress = body
        return InvocationResult(
            [StateMutation(name, None if v is None else _to_tv(v)) for name, v in mutations],
            [OutgoingMessage(_to_addr(t), _to_tv(a)) for t, a in messages],
            [_decode_delayed(d) for d in delayed],
            [EgressRecord(TypeName(*e), _to_tv(a)) for e, a in egress],
        )
    if kind == _MISSING:
        return MissingStateSpecs(
            [
                StateSpec(name, typename, Expiration(ExpireMode(mode), ms))
                for name, typename, mode, ms in body
            ]
        )
    if kind == _FAILURE:
        function_type, address, error_type, message = body
        return FunctionFailure(function_type, _to_addr(address), error_type, message)
    raise ProtocolError(f"unknown outcome kind {kind!r}")


def decode_response(data: bytes) -> FunctionResponse:
    body = _unpack(data, "the response")
    try:
        return FunctionResponse([_decode_outcome(o) for o in body])
    except ProtocolError:
        raise
    except (TypeError, ValueError, IndexError, AttributeError) as e:
        raise ProtocolError(f"malformed native response: {e}") from None
