"""RequestReplyHandler: one outcome per batch, in order, for sync and async functions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from sdk import (
    Context,
    IntType,
    Message,
    RequestReplyHandler,
    StatefulFunctions,
    StringType,
    ValueSpec,
    message_builder,
)
from statefun.address import Address
from statefun.errors import ProtocolError
from statefun.native_codec import encode_request
from statefun.protocol import (
    BatchOutcome,
    Expiration,
    ExpireMode,
    FunctionFailure,
    FunctionRequest,
    Invocation,
    InvocationBatch,
    InvocationResult,
    MissingStateSpecs,
    OutgoingMessage,
    StateMutation,
    StateSpec,
)
from statefun.values import to_typed_value

Invoke = Callable[..., list[BatchOutcome]]
MakeBatch = Callable[..., Any]
ResultOf = Callable[..., InvocationResult]
FailureOf = Callable[..., FunctionFailure]

SPECS = [
    ValueSpec("count", IntType, expire_after_write=timedelta(seconds=2)),
    ValueSpec("name", StringType),
]


def counter(context: Context, message: Message) -> None:
    context.storage.count = (context.storage.count or 0) + (message.as_int() or 0)


async def async_counter(context: Context, message: Message) -> None:
    await asyncio.sleep(0)
    context.storage.count = (context.storage.count or 0) + (message.as_int() or 0)


def test_missing_state_specs_are_listed_and_nothing_runs(
    invoke: Invoke, make_batch: MakeBatch
) -> None:
    ran: list[bool] = []
    functions = StatefulFunctions()
    functions.register("ex/f", lambda context, message: ran.append(True), SPECS)
    outcomes = invoke(
        functions,
        make_batch("ex/f/a", 1),
        make_batch("ex/f/b", 1, state={"count": None}),
        make_batch("ex/f/c", 1, state={"name": None}),
    )
    count = StateSpec("count", "io.statefun.types/int", Expiration(ExpireMode.AFTER_WRITE, 2000))
    name = StateSpec("name", "io.statefun.types/string", Expiration())
    assert outcomes == [
        MissingStateSpecs([count, name]),
        MissingStateSpecs([name]),
        MissingStateSpecs([count]),
    ]
    assert ran == []


@pytest.mark.parametrize("fun", [counter, async_counter], ids=["sync", "async"])
def test_sync_and_async_functions_run_a_batch(
    fun: Callable[..., Any], result_of: ResultOf, make_batch: MakeBatch
) -> None:
    functions = StatefulFunctions()
    functions.register("ex/counter", fun, [ValueSpec("count", IntType)])
    result = result_of(functions, make_batch("ex/counter/a", 1, 2, 3, state={"count": None}))
    assert result == InvocationResult(
        mutations=[StateMutation("count", to_typed_value(IntType, 6))]
    )


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_invocations_run_in_order_with_their_callers(
    asynchronous: bool, result_of: ResultOf
) -> None:
    seen: list[tuple[int | None, str | None, str]] = []

    def record(context: Context, message: Message) -> None:
        caller = context.caller
        seen.append((message.as_int(), None if caller is None else caller.id, message.target_id))

    async def record_async(context: Context, message: Message) -> None:
        record(context, message)

    functions = StatefulFunctions()
    functions.register("ex/f", record_async if asynchronous else record)
    ingress, caller = None, Address("ex", "g", "x")
    invocations = [
        Invocation(sender, to_typed_value(IntType, n))
        for sender, n in [(ingress, 1), (caller, 2), (ingress, 3)]
    ]
    result_of(functions, InvocationBatch(Address("ex", "f", "a"), {}, invocations))
    assert seen == [(1, None, "a"), (2, "x", "a"), (3, None, "a")]


def test_several_batches_get_their_outcomes_in_order(invoke: Invoke, make_batch: MakeBatch) -> None:
    def boom(context: Context, message: Message) -> None:
        raise KeyError("boom")

    functions = StatefulFunctions()
    functions.register("ex/sync", counter, [ValueSpec("count", IntType)])
    functions.register("ex/async", async_counter, [ValueSpec("count", IntType)])
    functions.register("ex/boom", boom)
    outcomes = invoke(
        functions,
        make_batch("ex/async/a", 1, state={"count": None}),
        make_batch("ex/sync/b", 2, state={"count": None}),
        make_batch("ex/sync/c", 3),
        make_batch("ex/boom/d", 4),
        make_batch("ex/nope/e", 5),
        make_batch("ex/async/f", 6, state={"count": None}),
    )
    assert [type(o).__name__ for o in outcomes] == [
        "InvocationResult",
        "InvocationResult",
        "MissingStateSpecs",
        "FunctionFailure",
        "FunctionFailure",
        "InvocationResult",
    ]
    counts = [o.mutations[0].value for o in outcomes if isinstance(o, InvocationResult)]
    assert counts == [to_typed_value(IntType, n) for n in (1, 2, 6)]


def test_async_batches_run_concurrently(invoke: Invoke, make_batch: MakeBatch) -> None:
    # Each batch waits for the other to start: run one after the other, both would time out.
    started: dict[str, asyncio.Event] = {}

    async def meet(context: Context, message: Message) -> None:
        me, other = context.address.id, "b" if context.address.id == "a" else "a"
        started.setdefault(me, asyncio.Event()).set()
        await asyncio.wait_for(started.setdefault(other, asyncio.Event()).wait(), timeout=2)

    functions = StatefulFunctions()
    functions.register("ex/meet", meet)
    outcomes = invoke(functions, make_batch("ex/meet/a", 1), make_batch("ex/meet/b", 1))
    assert outcomes == [InvocationResult(), InvocationResult()]


def test_a_user_exception_fails_the_batch_without_effects(
    invoke: Invoke, make_batch: MakeBatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fails_on_two(context: Context, message: Message) -> None:
        context.storage.count = 1
        context.send(message_builder("ex/g", "x", int_value=1))
        if message.as_int() == 2:
            raise ZeroDivisionError("cannot divide by two")

    functions = StatefulFunctions()
    functions.register("ex/f", fails_on_two, [ValueSpec("count", IntType)])
    with caplog.at_level(logging.ERROR, logger="sdk"):
        failed, ok = invoke(
            functions,
            make_batch("ex/f/a", 1, 2, 3, state={"count": None}),
            make_batch("ex/f/b", 1, state={"count": None}),
        )
    assert failed == FunctionFailure(
        "ex/f", Address("ex", "f", "a"), "ZeroDivisionError", "cannot divide by two"
    )
    assert isinstance(ok, InvocationResult)
    assert ok.messages == [OutgoingMessage(Address("ex", "g", "x"), to_typed_value(IntType, 1))]
    (record,) = caplog.records
    assert record.name == "sdk._handler"  # under the "sdk" logger users configure
    assert "ex/f/a" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ZeroDivisionError


def test_an_unknown_function_type_fails_naming_the_registered_ones(
    failure_of: FailureOf, make_batch: MakeBatch
) -> None:
    functions = StatefulFunctions()
    functions.register("ex/b", counter)
    functions.register("ex/a", counter)
    failure = failure_of(functions, make_batch("ex/nope/id", 1))
    assert (failure.function_type, failure.address) == ("ex/nope", Address("ex", "nope", "id"))
    assert failure.error_type == "UnknownFunctionType"
    assert "no function is registered for ex/nope" in failure.message
    assert "(registered: ex/a, ex/b)" in failure.message


def test_a_plain_function_returning_a_coroutine_fails_clearly(
    failure_of: FailureOf, make_batch: MakeBatch
) -> None:
    def wrapper(context: Context, message: Message) -> Any:
        return async_counter(context, message)

    functions = StatefulFunctions()
    functions.register("ex/f", wrapper, [ValueSpec("count", IntType)])
    failure = failure_of(functions, make_batch("ex/f/a", 1, state={"count": None}))
    assert failure.error_type == "TypeError"
    assert "returned an awaitable" in failure.message
    assert "'async def'" in failure.message


def test_handle_sync_refuses_async_functions_inside_a_running_loop(make_batch: MakeBatch) -> None:
    functions = StatefulFunctions()
    functions.register("ex/async", async_counter, [ValueSpec("count", IntType)])
    handler = RequestReplyHandler(functions)
    body = encode_request(FunctionRequest([make_batch("ex/async/a", 1, state={"count": None})]))

    async def call_sync_inside_loop() -> bytes:
        return handler.handle_sync(body)

    with pytest.raises(RuntimeError, match="await process/handle_async instead"):
        asyncio.run(call_sync_inside_loop())


def test_handle_sync_runs_sync_functions_inside_a_running_loop(make_batch: MakeBatch) -> None:
    functions = StatefulFunctions()
    functions.register("ex/sync", counter, [ValueSpec("count", IntType)])
    handler = RequestReplyHandler(functions)
    request = FunctionRequest([make_batch("ex/sync/a", 4, state={"count": None})])

    async def call_sync_inside_loop() -> Any:
        return handler.process_sync(request)

    (outcome,) = asyncio.run(call_sync_inside_loop()).outcomes
    assert outcome == InvocationResult([StateMutation("count", to_typed_value(IntType, 4))])


@pytest.mark.parametrize("body", [b"", b"not msgpack", encode_request(FunctionRequest([]))[:-1]])
def test_bytes_that_are_not_a_request_raise_protocol_error(body: bytes) -> None:
    handler = RequestReplyHandler(StatefulFunctions())
    with pytest.raises(ProtocolError):
        handler.handle_sync(body)


def test_the_handler_needs_stateful_functions() -> None:
    bad: Any = {"ex/f": counter}
    with pytest.raises(TypeError, match="expected StatefulFunctions"):
        RequestReplyHandler(bad)
