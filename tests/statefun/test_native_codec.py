import msgpack
import pytest

from statefun import native_codec
from statefun.address import Address, TypeName
from statefun.errors import ProtocolError
from statefun.protocol import (
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

GREETER = Address("example", "greeter", "alice")
CALLER = Address("statefun.ingress", "caller", "abc-1")
HELLO = TypedValue("io.statefun.types/string", b"\x0a\x05hello")


def test_request_round_trip() -> None:
    request = FunctionRequest(
        [
            InvocationBatch(
                GREETER,
                {
                    "visits": TypedValue("io.statefun.types/int", b"\x0d\x01\x00\x00\x00"),
                    "seen": None,
                },
                [Invocation(None, HELLO), Invocation(CALLER, HELLO)],
            ),
            InvocationBatch(Address("example", "greeter", "bob"), {}, [Invocation(None, HELLO)]),
        ]
    )
    assert native_codec.decode_request(native_codec.encode_request(request)) == request


def test_response_round_trip_keeps_every_outcome_kind_and_the_order_of_delays() -> None:
    response = FunctionResponse(
        [
            InvocationResult(
                mutations=[StateMutation("visits", HELLO), StateMutation("gone", None)],
                messages=[OutgoingMessage(CALLER, HELLO)],
                delayed=[
                    DelayedMessage(1500, GREETER, HELLO, "t1"),
                    DelayCancellation("t1"),
                    DelayedMessage(10, GREETER, TypedValue("x/y", None)),
                ],
                egress=[EgressRecord(TypeName("example", "greetings"), HELLO)],
            ),
            MissingStateSpecs(
                [
                    StateSpec("visits", "io.statefun.types/int"),
                    StateSpec("seen", "com.x/Seen", Expiration(ExpireMode.AFTER_CALL, 60_000)),
                ]
            ),
            FunctionFailure("example/greeter", GREETER, "KeyError", "'name'"),
        ]
    )
    assert native_codec.decode_response(native_codec.encode_response(response)) == response


def test_another_protocol_version_is_named_in_the_error() -> None:
    data = msgpack.packb((99, []))
    with pytest.raises(ProtocolError, match="version 99; this side speaks 1"):
        native_codec.decode_request(data)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1not msgpack",
        msgpack.packb([1]),
        msgpack.packb((1, [[["ns", "t"], {}, []]])),
        msgpack.packb((1, [[["ns", "t", ""], {}, []]])),
        msgpack.packb((1, [[["ns", "t", "i"], {}, [[None, [1, b""]]]]])),
    ],
)
def test_malformed_requests_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        native_codec.decode_request(body)


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb((1, [[7, []]])),
        msgpack.packb((1, [[0, [[], [], [[0, -5, ["a", "b", "c"], ["x/y", b""], None]], []]]])),
        msgpack.packb((1, [[0, [[], [], [[3, "t"]], []]]])),
        msgpack.packb((1, [[1, [["s", "x/y", 9, 0]]]])),
    ],
)
def test_malformed_responses_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        native_codec.decode_response(body)
