"""Context: addresses, and the messages, delayed messages, cancellations and egress it collects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from sdk import (
    Context,
    IntType,
    Message,
    NoCallerError,
    SdkAddress,
    StatefulFunctions,
    StringType,
    egress_message_builder,
    kafka_egress_message,
    message_builder,
)
from statefun.address import Address, TypeName
from statefun.egress import KAFKA_PRODUCER_RECORD_TYPENAME, KafkaProducerRecord
from statefun.protocol import (
    DelayCancellation,
    DelayedMessage,
    EgressRecord,
    FunctionFailure,
    InvocationResult,
    OutgoingMessage,
)
from statefun.values import TypedValue, to_typed_value

ResultOf = Callable[..., InvocationResult]
FailureOf = Callable[..., FunctionFailure]
MakeBatch = Callable[..., Any]


def one_function(fun: Callable[[Context, Message], Any]) -> StatefulFunctions:
    functions = StatefulFunctions()
    functions.register("ex/f", fun)
    return functions


def msg(target: str, n: int) -> OutgoingMessage:
    return OutgoingMessage(Address.parse(target), to_typed_value(IntType, n))


def test_address_and_caller(result_of: ResultOf, make_batch: MakeBatch) -> None:
    seen: list[tuple[SdkAddress, SdkAddress | None]] = []

    def fun(context: Context, message: Message) -> None:
        seen.append((context.address, context.caller))

    result_of(one_function(fun), make_batch("ex/f/id-1", 1, caller="other.ns/g/x/y"))
    result_of(one_function(fun), make_batch("ex/f/id-2", 1))
    assert seen == [
        (SdkAddress("ex", "f", "id-1", "ex/f"), SdkAddress("other.ns", "g", "x/y", "other.ns/g")),
        (SdkAddress("ex", "f", "id-2", "ex/f"), None),
    ]


def test_effects_are_collected_in_the_order_they_were_made(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        n = message.as_int() or 0
        context.send(message_builder("ex/g", "a", int_value=n))
        context.send_after(
            timedelta(seconds=1.5), message_builder("ex/g", "b", int_value=n), f"t{n}"
        )
        context.send_egress(egress_message_builder("ex/out", f"e{n}", StringType))
        context.reply(int_value=n * 10)
        context.cancel_delayed_message(f"t{n}")
        context.send_after(timedelta(0), message_builder("ex/g", "c", int_value=n))
        context.send_egress(kafka_egress_message("ex/kafka", "topic", f"k{n}"))
        context.send(message_builder("ex/g", "d", int_value=n))

    result = result_of(one_function(fun), make_batch("ex/f/id", 1, 2, caller="ex/caller/c"))
    assert result.messages == [
        msg("ex/g/a", 1),
        msg("ex/caller/c", 10),
        msg("ex/g/d", 1),
        msg("ex/g/a", 2),
        msg("ex/caller/c", 20),
        msg("ex/g/d", 2),
    ]
    delayed: list[DelayedMessage | DelayCancellation] = []
    for n in (1, 2):
        delayed += [
            DelayedMessage(1500, Address("ex", "g", "b"), to_typed_value(IntType, n), f"t{n}"),
            DelayCancellation(f"t{n}"),
            DelayedMessage(0, Address("ex", "g", "c"), to_typed_value(IntType, n), None),
        ]
    assert result.delayed == delayed
    kafka = [
        TypedValue(
            KAFKA_PRODUCER_RECORD_TYPENAME, KafkaProducerRecord("topic", f"k{n}".encode()).encode()
        )
        for n in (1, 2)
    ]
    assert result.egress == [
        EgressRecord(TypeName("ex", "out"), to_typed_value(StringType, "e1")),
        EgressRecord(TypeName("ex", "kafka"), kafka[0]),
        EgressRecord(TypeName("ex", "out"), to_typed_value(StringType, "e2")),
        EgressRecord(TypeName("ex", "kafka"), kafka[1]),
    ]
    assert result.mutations == []


def test_reply_goes_to_the_caller_of_each_invocation(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    def echo(context: Context, message: Message) -> None:
        context.reply(str_value=f"hi {context.caller.id if context.caller else '?'}")

    result = result_of(one_function(echo), make_batch("ex/f/id", 1, caller="ex/caller/c1"))
    assert result.messages == [
        OutgoingMessage(Address("ex", "caller", "c1"), to_typed_value(StringType, "hi c1"))
    ]


def test_reply_without_a_caller_fails(failure_of: FailureOf, make_batch: MakeBatch) -> None:
    def fun(context: Context, message: Message) -> None:
        context.reply(int_value=1)

    failure = failure_of(one_function(fun), make_batch("ex/f/id", 1))
    assert failure.error_type == "NoCallerError"
    assert "ex/f/id cannot reply" in failure.message
    # The message names the fix: where a reply can go, and how to guard against none.
    assert "POST /v1/call" in failure.message
    assert "context.caller is not None" in failure.message
    assert issubclass(NoCallerError, RuntimeError)


def test_reply_takes_message_builder_keywords(failure_of: FailureOf, make_batch: MakeBatch) -> None:
    def fun(context: Context, message: Message) -> None:
        context.reply(number=1)

    failure = failure_of(one_function(fun), make_batch("ex/f/id", 1, caller="ex/g/x"))
    assert failure.error_type == "ValueError"
    assert "unknown value keyword number=" in failure.message


def test_a_pending_token_cannot_be_reused_in_the_batch(
    failure_of: FailureOf, make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        context.send_after(timedelta(seconds=1), message_builder("ex/g", "a", int_value=1), "tok")

    # The second invocation of the batch reuses the token of the first.
    failure = failure_of(one_function(fun), make_batch("ex/f/id", 1, 2))
    assert failure.error_type == "ValueError"
    assert "cancellation token 'tok' is already pending for this address" in failure.message


def test_a_token_the_runtime_says_is_pending_cannot_be_reused(
    failure_of: FailureOf, invoke: Callable[..., list[Any]], make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        if message.as_int() == 2:
            context.cancel_delayed_message("tok")
        context.send_after(timedelta(seconds=1), message_builder("ex/g", "a", int_value=1), "tok")

    pending = dataclasses.replace(make_batch("ex/f/id", 1), pending_tokens=("tok",))
    failure = failure_of(one_function(fun), pending)
    assert failure.error_type == "ValueError"
    assert "'tok' is already pending" in failure.message
    # cancelling it first makes the token free again
    cancelled_first = dataclasses.replace(make_batch("ex/f/id", 2), pending_tokens=("tok",))
    (outcome,) = invoke(one_function(fun), cancelled_first)
    assert isinstance(outcome, InvocationResult)
    assert len(outcome.delayed) == 2


def test_a_token_can_be_reused_once_cancelled_or_in_another_batch(
    invoke: Callable[..., list[Any]], make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        later = message_builder("ex/g", "a", int_value=1)
        context.send_after(timedelta(seconds=1), later, "tok")
        context.cancel_delayed_message("tok")
        context.send_after(timedelta(seconds=2), later, "tok")

    outcomes = invoke(one_function(fun), make_batch("ex/f/a", 1), make_batch("ex/f/b", 1))
    assert all(isinstance(o, InvocationResult) and len(o.delayed) == 3 for o in outcomes)


@pytest.mark.parametrize(
    ("action", "error_type", "fragment"),
    [
        (
            lambda c, m: c.send_after(timedelta(milliseconds=-1), m),
            "ValueError",
            "must not be negative",
        ),
        (lambda c, m: c.send_after(1000, m), "TypeError", "must be a datetime.timedelta"),
        (lambda c, m: c.send_after(timedelta(1), m, None), "TypeError", "token must be a str"),
        (lambda c, m: c.cancel_delayed_message(""), "ValueError", "empty cancellation token"),
        (lambda c, m: c.send("ex/g/a"), "TypeError", "send() takes a Message"),
        (
            lambda c, m: c.send_after(timedelta(1), "ex/g/a"),
            "TypeError",
            "send_after() takes a Message",
        ),
        (lambda c, m: c.send_egress(m), "TypeError", "send_egress() takes an EgressMessage"),
    ],
    ids=[
        "negative-delay",
        "delay-type",
        "token-type",
        "empty-cancel",
        "send",
        "send-after",
        "egress",
    ],
)
def test_misuse_fails_the_batch(
    action: Callable[[Context, Message], None],
    error_type: str,
    fragment: str,
    failure_of: FailureOf,
    make_batch: MakeBatch,
) -> None:
    def fun(context: Context, message: Message) -> None:
        action(context, message_builder("ex/g", "a", int_value=1))

    failure = failure_of(one_function(fun), make_batch("ex/f/id", 1))
    assert failure.error_type == error_type
    assert fragment in failure.message


def test_context_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Context()  # type: ignore[abstract]
