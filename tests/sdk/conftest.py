"""Shared fixtures for the SDK tests: building batches and running them through the handler.

Requests go through the native codec both ways, so every handler test also checks
that what the SDK answers survives encoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sdk import IntType, RequestReplyHandler, StatefulFunctions, StringType
from statefun.address import Address
from statefun.native_codec import decode_response, encode_request
from statefun.protocol import (
    BatchOutcome,
    FunctionFailure,
    FunctionRequest,
    Invocation,
    InvocationBatch,
    InvocationResult,
)
from statefun.values import TypedValue, to_typed_value

MakeBatch = Callable[..., InvocationBatch]
Invoke = Callable[..., list[BatchOutcome]]


def int_value(n: int) -> TypedValue:
    return to_typed_value(IntType, n)


def str_value(s: str) -> TypedValue:
    return to_typed_value(StringType, s)


@pytest.fixture
def make_batch() -> MakeBatch:
    """``make_batch(address, *args, state=..., caller=...)``: args are ints, strs or TypedValues."""

    def make(
        address: str,
        *args: int | str | TypedValue,
        state: dict[str, TypedValue | None] | None = None,
        caller: str | None = None,
    ) -> InvocationBatch:
        sender = None if caller is None else Address.parse(caller)
        arguments = [
            a if isinstance(a, TypedValue) else int_value(a) if isinstance(a, int) else str_value(a)
            for a in args
        ]
        return InvocationBatch(
            Address.parse(address), state or {}, [Invocation(sender, a) for a in arguments]
        )

    return make


@pytest.fixture(params=["handle_sync", "handle_async"])
def invoke(request: pytest.FixtureRequest) -> Invoke:
    """``invoke(functions, *batches)``: the outcomes, through ``handle_sync`` or ``handle_async``."""

    def run(functions: StatefulFunctions, *batches: InvocationBatch) -> list[BatchOutcome]:
        handler = RequestReplyHandler(functions)
        body = encode_request(FunctionRequest(list(batches)))
        if request.param == "handle_sync":
            answer = handler.handle_sync(body)
        else:
            answer = asyncio.run(handler.handle_async(body))
        return decode_response(answer).outcomes

    return run


@pytest.fixture
def result_of(invoke: Invoke) -> Callable[..., InvocationResult]:
    """``result_of(functions, batch)``: the InvocationResult of one batch (asserting it ran)."""

    def run(functions: StatefulFunctions, batch: InvocationBatch) -> InvocationResult:
        (outcome,) = invoke(functions, batch)
        assert isinstance(outcome, InvocationResult), outcome
        return outcome

    return run


@pytest.fixture
def failure_of(invoke: Invoke) -> Callable[..., FunctionFailure]:
    """``failure_of(functions, batch)``: the FunctionFailure of one batch (asserting it failed)."""

    def run(functions: StatefulFunctions, batch: InvocationBatch) -> FunctionFailure:
        (outcome,) = invoke(functions, batch)
        assert isinstance(outcome, FunctionFailure), outcome
        return outcome

    return run
