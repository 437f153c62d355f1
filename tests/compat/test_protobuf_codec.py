"""The StateFun protobuf codec: byte-level facts of StateFun's request-reply protocol, and
what the official SDK's own ``RequestReplyHandler`` makes of the requests we encode."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import sdk_root
from official_sdk import APACHE_LAST, LATEST, handle_with_official_sdk, official_sdk_python

from statefun.address import Address, TypeName
from statefun.egress import KAFKA_PRODUCER_RECORD_TYPENAME, KafkaProducerRecord
from statefun.errors import ProtocolError
from statefun.protobuf_codec import FromFunction, ToFunction, decode_outcome, encode_batch
from statefun.protocol import (
    DelayCancellation,
    DelayedMessage,
    EgressRecord,
    Expiration,
    ExpireMode,
    Invocation,
    InvocationBatch,
    InvocationResult,
    MissingStateSpecs,
    OutgoingMessage,
    StateMutation,
    StateSpec,
)
from statefun.values import IntType, StringType, TypedValue, make_json_type, to_typed_value

pytestmark = pytest.mark.timeout(180)  # the first test may install the official SDK

COUNTER = Address("official", "counter", "c1")
CALLER = Address("statefun.ingress", "caller", "abc-1")
PAYLOAD = make_json_type("compat/Payload")
INT, STRING = "io.statefun.types/int", "io.statefun.types/string"


def ints(*values: int) -> list[Invocation]:
    return [Invocation(None, to_typed_value(IntType, v)) for v in values]


def string(text: str) -> TypedValue:
    return to_typed_value(StringType, text)


# --- the request: byte-level facts ------------------------------------------------------------


def test_a_state_without_a_value_is_sent_by_its_name_only() -> None:
    batch = InvocationBatch(
        COUNTER,
        {"count": to_typed_value(IntType, 7), "note": None, "empty": TypedValue(STRING, None)},
        ints(1),
    )
    request = ToFunction.FromString(encode_batch(batch))
    assert request.WhichOneof("request") == "invocation"
    count, note, empty = request.invocation.state
    assert (count.state_name, count.state_value.typename) == ("count", INT)
    assert count.state_value.has_value
    assert count.state_value.value == b"\x0d\x07\x00\x00\x00"
    for unset in (note, empty):
        assert not unset.HasField("state_value")
        # field 1 (state_name) and nothing else
        assert unset.SerializeToString() == b"\x0a" + bytes([len(unset.state_name)]) + (
            unset.state_name.encode()
        )


def test_invocations_carry_their_caller_and_argument_in_order() -> None:
    batch = InvocationBatch(
        COUNTER,
        {},
        [
            Invocation(CALLER, to_typed_value(IntType, 5)),
            Invocation(None, to_typed_value(IntType, 0)),
            Invocation(None, TypedValue("x/nothing", None)),
        ],
    )
    request = ToFunction.FromString(encode_batch(batch)).invocation
    target = request.target
    assert (target.namespace, target.type, target.id) == ("official", "counter", "c1")
    with_caller, zero, nothing = request.invocations
    caller = with_caller.caller
    assert (caller.namespace, caller.type, caller.id) == ("statefun.ingress", "caller", "abc-1")
    assert with_caller.argument.value == b"\x0d\x05\x00\x00\x00"
    assert not zero.HasField("caller")  # no caller: the field is absent
    # zero is a value (the wrapper's default, empty bytes), not "no value"
    assert (zero.argument.typename, zero.argument.has_value, zero.argument.value) == (
        INT,
        True,
        b"",
    )
    assert (nothing.argument.typename, nothing.argument.has_value) == ("x/nothing", False)


# --- the answer -------------------------------------------------------------------------------


def test_an_empty_answer_is_a_result_without_effects() -> None:
    assert decode_outcome(b"") == InvocationResult()
    assert decode_outcome(FromFunction().SerializeToString()) == InvocationResult()


def test_a_result_decodes_to_every_effect_in_order() -> None:
    hello = {"typename": STRING, "has_value": True, "value": b"\x0a\x02hi"}
    target = {"namespace": "official", "type": "counter", "id": "c2"}
    answer = FromFunction(
        invocation_result={
            "state_mutations": [
                {"mutation_type": 1, "state_name": "a", "state_value": hello},
                {"mutation_type": 0, "state_name": "b"},
                # a MODIFY to "no value" (bytes or not) leaves the state without a value
                {
                    "mutation_type": 1,
                    "state_name": "c",
                    "state_value": {"typename": INT, "value": b"x"},
                },
            ],
            "outgoing_messages": [{"target": target, "argument": hello}],
            "delayed_invocations": [
                {
                    "delay_in_ms": 300,
                    "target": target,
                    "argument": hello,
                    "cancellation_token": "t",
                },
                {"is_cancellation_request": True, "cancellation_token": "t"},
                {"delay_in_ms": 0, "target": target, "argument": hello},
            ],
            "outgoing_egresses": [
                {
                    "egress_namespace": "io.statefun.playground",
                    "egress_type": "egress",
                    "argument": hello,
                }
            ],
        }
    ).SerializeToString()
    c2, hi = Address("official", "counter", "c2"), string("hi")
    assert decode_outcome(answer) == InvocationResult(
        [StateMutation("a", hi), StateMutation("b", None), StateMutation("c", None)],
        [OutgoingMessage(c2, hi)],
        [DelayedMessage(300, c2, hi, "t"), DelayCancellation("t"), DelayedMessage(0, c2, hi, None)],
        [EgressRecord(TypeName("io.statefun.playground", "egress"), hi)],
    )


def test_missing_state_specs_keep_type_and_expiration() -> None:
    answer = FromFunction(
        incomplete_invocation_context={
            "missing_values": [
                {"state_name": "plain", "type_typename": INT},
                {"state_name": "none", "type_typename": INT, "expiration_spec": {"mode": 0}},
                {
                    "state_name": "w",
                    "type_typename": STRING,
                    "expiration_spec": {"mode": 1, "expire_after_millis": 500},
                },
                {
                    "state_name": "c",
                    "type_typename": "compat/Payload",
                    "expiration_spec": {"mode": 2, "expire_after_millis": 60000},
                },
            ]
        }
    ).SerializeToString()
    assert decode_outcome(answer) == MissingStateSpecs(
        [
            StateSpec("plain", INT),
            StateSpec("none", INT),
            StateSpec("w", STRING, Expiration(ExpireMode.AFTER_WRITE, 500)),
            StateSpec("c", "compat/Payload", Expiration(ExpireMode.AFTER_CALL, 60000)),
        ]
    )


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"\xff\xff\xff", "not a StateFun FromFunction message"),
        (
            {"state_mutations": [{"mutation_type": 7, "state_name": "a"}]},
            "unknown mutation type 7",
        ),
        (
            {
                "outgoing_messages": [
                    {"target": {"namespace": "a", "type": "b"}, "argument": {"typename": "x/y"}}
                ]
            },
            "the id of 'a/b/' is empty",
        ),
        (
            {"outgoing_messages": [{"target": {"namespace": "a", "type": "b", "id": "c"}}]},
            "a message has no typed value",
        ),
        ({"delayed_invocations": [{"is_cancellation_request": True}]}, "no cancellation token"),
        (
            {
                "delayed_invocations": [
                    {
                        "delay_in_ms": -5,
                        "target": {"namespace": "a", "type": "b", "id": "c"},
                        "argument": {"typename": "x/y"},
                    }
                ]
            },
            "negative delay",
        ),
        (
            {"outgoing_egresses": [{"egress_type": "out", "argument": {"typename": "x/y"}}]},
            "names egress",
        ),
        (
            FromFunction(
                incomplete_invocation_context={"missing_values": [{"state_name": "a"}]}
            ).SerializeToString(),
            "needs a name and a type",
        ),
        (
            FromFunction(incomplete_invocation_context={}).SerializeToString(),
            "lists no missing state",
        ),
    ],
)
def test_answers_that_break_the_protocol_are_protocol_errors(
    answer: bytes | dict[str, object], problem: str
) -> None:
    data = (
        answer
        if isinstance(answer, bytes)
        else FromFunction(invocation_result=answer).SerializeToString()
    )
    with pytest.raises(ProtocolError, match=problem):
        decode_outcome(data)


# --- against the official SDK's RequestReplyHandler -------------------------------------------


@pytest.fixture(params=[LATEST, APACHE_LAST])
def official_sdk(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Path:
    """The python of each official SDK release we keep compatible with."""
    return official_sdk_python(sdk_root(pytestconfig), request.param)


def test_the_official_sdk_understands_our_requests_and_we_its_answers(official_sdk: Path) -> None:
    counter_state: dict[str, TypedValue | None] = {"count": None, "callers": None, "note": None}
    expiring = Address("official", "expiring", "e")
    later = Address("official", "later", "l")
    notes = Address("official", "notes", "n")
    kafka = Address("official", "to_kafka", "k")
    batches = [
        # first contact: no state registered, so the SDK asks for its specs and runs nothing
        InvocationBatch(COUNTER, {}, ints(5)),
        InvocationBatch(expiring, {}, [Invocation(None, string("touch"))]),
        # registered states without values go by name; the SDK runs the batch in order
        InvocationBatch(
            COUNTER,
            counter_state,
            [Invocation(CALLER, to_typed_value(IntType, 5)), *ints(2)],
        ),
        InvocationBatch(
            COUNTER,
            {**counter_state, "count": to_typed_value(IntType, 40)},
            [Invocation(CALLER, to_typed_value(IntType, 2))],
        ),
        InvocationBatch(
            later, {}, [Invocation(None, string(c)) for c in ("start", "cancel", "plain")]
        ),
        InvocationBatch(notes, {"note": string("old")}, [Invocation(None, string("del"))]),
        InvocationBatch(kafka, {"count": None}, [Invocation(None, string("topic-a"))]),
    ]
    answers = handle_with_official_sdk(official_sdk, [encode_batch(b) for b in batches])
    assert None not in answers
    outcomes = [decode_outcome(a) for a in answers if a is not None]
    assert outcomes[0] == MissingStateSpecs(
        [StateSpec("count", INT), StateSpec("callers", "compat/Payload"), StateSpec("note", STRING)]
    )
    assert outcomes[1] == MissingStateSpecs(
        [
            StateSpec("written", STRING, Expiration(ExpireMode.AFTER_WRITE, 600)),
            StateSpec("touched", INT, Expiration(ExpireMode.AFTER_CALL, 600)),
        ]
    )
    # one mutation per changed state, with its final value; replies only to the caller
    assert outcomes[2] == InvocationResult(
        mutations=[
            StateMutation("count", to_typed_value(IntType, 7)),
            StateMutation("callers", to_typed_value(PAYLOAD, ["statefun.ingress/caller", None])),
        ],
        messages=[OutgoingMessage(CALLER, to_typed_value(IntType, 5))],
    )
    assert outcomes[3] == InvocationResult(
        mutations=[
            StateMutation("count", to_typed_value(IntType, 42)),
            StateMutation("callers", to_typed_value(PAYLOAD, ["statefun.ingress/caller"])),
        ],
        messages=[OutgoingMessage(CALLER, to_typed_value(IntType, 42))],
    )
    c_later = Address("official", "counter", "l")
    assert outcomes[4] == InvocationResult(
        delayed=[
            DelayedMessage(300, c_later, to_typed_value(IntType, 100), "t"),
            DelayCancellation("t"),
            DelayedMessage(300, c_later, to_typed_value(IntType, 10), None),
        ]
    )
    assert outcomes[5] == InvocationResult(mutations=[StateMutation("note", None)])
    result = outcomes[6]
    assert isinstance(result, InvocationResult)
    assert result.mutations == [StateMutation("count", to_typed_value(IntType, 1))]
    (record,) = result.egress
    assert record.egress == TypeName("official", "kafka")
    assert record.argument.typename == KAFKA_PRODUCER_RECORD_TYPENAME
    assert record.argument.value is not None
    assert KafkaProducerRecord.decode(record.argument.value) == KafkaProducerRecord(
        "topic-a", b"k:1", "k"
    )
