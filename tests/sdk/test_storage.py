"""context.storage: reading, writing and deleting declared state, and the mutations a batch yields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sdk import (
    Context,
    IntType,
    Message,
    StatefulFunctions,
    StringType,
    TypedValue,
    ValueSpec,
    make_json_type,
    simple_type,
)
from statefun.errors import ValueTypeError
from statefun.protocol import FunctionFailure, InvocationResult, StateMutation
from statefun.values import to_typed_value

ResultOf = Callable[..., InvocationResult]
FailureOf = Callable[..., FunctionFailure]
MakeBatch = Callable[..., Any]

LIST = make_json_type("ex/list")


def int_state(n: int) -> TypedValue:
    return to_typed_value(IntType, n)


def one_function(fun: Callable[[Context, Message], Any], *specs: ValueSpec) -> StatefulFunctions:
    functions = StatefulFunctions()
    functions.register("ex/f", fun, list(specs))
    return functions


def test_unset_state_reads_none(result_of: ResultOf, make_batch: MakeBatch) -> None:
    seen: list[Any] = []

    def fun(context: Context, message: Message) -> None:
        seen.append((context.storage.count, context.storage.name))

    functions = one_function(fun, ValueSpec("count", IntType), ValueSpec("name", StringType))
    state = {"count": None, "name": TypedValue("io.statefun.types/string", None)}
    result = result_of(functions, make_batch("ex/f/a", 1, state=state))
    assert seen == [(None, None)]
    assert result.mutations == []


def test_state_is_shared_by_the_invocations_of_a_batch(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    seen: list[int] = []

    def counter(context: Context, message: Message) -> None:
        count = (context.storage.count or 0) + (message.as_int() or 0)
        context.storage.count = count
        seen.append(context.storage.count)

    functions = one_function(counter, ValueSpec("count", IntType))
    result = result_of(functions, make_batch("ex/f/a", 1, 2, 3, state={"count": int_state(10)}))
    assert seen == [11, 13, 16]
    assert result.mutations == [StateMutation("count", int_state(16))]


def test_only_changed_states_are_mutated(result_of: ResultOf, make_batch: MakeBatch) -> None:
    def fun(context: Context, message: Message) -> None:
        assert context.storage.a == 1  # read only: no mutation
        context.storage.b = "new"

    functions = one_function(fun, ValueSpec("a", IntType), ValueSpec("b", StringType))
    result = result_of(functions, make_batch("ex/f/a", 1, state={"a": int_state(1), "b": None}))
    assert result.mutations == [StateMutation("b", to_typed_value(StringType, "new"))]


def test_del_deletes(result_of: ResultOf, make_batch: MakeBatch) -> None:
    seen: list[Any] = []

    def fun(context: Context, message: Message) -> None:
        del context.storage.count
        seen.append(context.storage.count)

    functions = one_function(fun, ValueSpec("count", IntType))
    result = result_of(functions, make_batch("ex/f/a", 1, state={"count": int_state(5)}))
    assert seen == [None]
    assert result.mutations == [StateMutation("count", None)]


def test_set_then_deleted_without_a_prior_value_yields_no_mutation(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        if message.as_int() == 1:
            context.storage.count = 3
        else:
            del context.storage.count

    functions = one_function(fun, ValueSpec("count", IntType))
    result = result_of(functions, make_batch("ex/f/a", 1, 2, state={"count": None}))
    assert result.mutations == []


def test_deleted_then_set_yields_the_final_value(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        del context.storage.count
        context.storage.count = 9

    functions = one_function(fun, ValueSpec("count", IntType))
    result = result_of(functions, make_batch("ex/f/a", 1, state={"count": int_state(5)}))
    assert result.mutations == [StateMutation("count", int_state(9))]


def test_assigning_a_value_of_the_wrong_type_fails_at_the_assignment(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    errors: list[ValueTypeError] = []

    def fun(context: Context, message: Message) -> None:
        try:
            context.storage.count = "three"
        except ValueTypeError as e:
            errors.append(e)

    functions = one_function(fun, ValueSpec("count", IntType))
    result = result_of(functions, make_batch("ex/f/a", 1, state={"count": int_state(2)}))
    (error,) = errors
    assert "state 'count'" in str(error)
    assert "io.statefun.types/int" in str(error)
    assert "Python type str" in str(error)
    assert result.mutations == []


def test_an_uncaught_wrong_type_fails_the_batch(
    failure_of: FailureOf, make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        context.storage.items = {1, 2}

    functions = one_function(fun, ValueSpec("items", LIST))
    failure = failure_of(functions, make_batch("ex/f/a", 1, state={"items": None}))
    assert failure.error_type == "ValueTypeError"
    assert "state 'items' is of type ex/list" in failure.message
    assert "Python type set" in failure.message


def test_assigning_none_is_refused(failure_of: FailureOf, make_batch: MakeBatch) -> None:
    def fun(context: Context, message: Message) -> None:
        context.storage.count = None

    functions = one_function(fun, ValueSpec("count", IntType))
    failure = failure_of(functions, make_batch("ex/f/a", 1, state={"count": None}))
    assert failure.error_type == "ValueError"
    assert "del context.storage.count" in failure.message


@pytest.mark.parametrize("operation", ["read", "write", "delete"])
def test_undeclared_names_raise_attribute_error_listing_the_declared_ones(
    operation: str, result_of: ResultOf, make_batch: MakeBatch
) -> None:
    errors: list[AttributeError] = []

    def fun(context: Context, message: Message) -> None:
        storage = context.storage
        try:
            if operation == "read":
                storage.cuont  # noqa: B018 - the read itself is under test
            elif operation == "write":
                storage.cuont = 1
            else:
                del storage.cuont
        except AttributeError as e:
            errors.append(e)

    functions = one_function(fun, ValueSpec("count", IntType), ValueSpec("name", StringType))
    result_of(functions, make_batch("ex/f/a", 1, state={"count": None, "name": None}))
    (error,) = errors
    assert "'cuont' is not a declared state of ex/f (declared: count, name)" in str(error)


def test_dir_lists_the_declared_states(result_of: ResultOf, make_batch: MakeBatch) -> None:
    seen: list[list[str]] = []

    def fun(context: Context, message: Message) -> None:
        seen.append(dir(context.storage))

    functions = one_function(fun, ValueSpec("count", IntType), ValueSpec("name", StringType))
    result_of(functions, make_batch("ex/f/a", 1, state={"count": None, "name": None}))
    assert seen == [["count", "name"]]


def test_values_are_deserialized_once_per_batch(result_of: ResultOf, make_batch: MakeBatch) -> None:
    decoded: list[bytes] = []

    def decode(data: bytes) -> str:
        decoded.append(data)
        return data.decode()

    text = simple_type("ex/text", str.encode, decode)

    def fun(context: Context, message: Message) -> None:
        assert context.storage.name == "abc"
        assert context.storage.name == "abc"

    functions = one_function(fun, ValueSpec("name", text))
    result_of(functions, make_batch("ex/f/a", 1, 2, state={"name": TypedValue("ex/text", b"abc")}))
    assert decoded == [b"abc"]


def test_a_mutable_value_is_stored_as_it_was_when_assigned(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    seen: list[Any] = []

    def fun(context: Context, message: Message) -> None:
        items = [1]
        context.storage.items = items
        items.append(2)  # after the assignment: not part of the stored value
        seen.append(context.storage.items)

    functions = one_function(fun, ValueSpec("items", LIST))
    result = result_of(functions, make_batch("ex/f/a", 1, state={"items": None}))
    assert seen == [[1]]
    assert result.mutations == [StateMutation("items", TypedValue("ex/list", b"[1]"))]


def test_changing_a_read_value_in_place_is_not_persisted(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        context.storage.items.append(3)

    functions = one_function(fun, ValueSpec("items", LIST))
    state = {"items": TypedValue("ex/list", b"[1, 2]")}
    result = result_of(functions, make_batch("ex/f/a", 1, state=state))
    assert result.mutations == []


def test_states_the_function_does_not_declare_are_ignored(
    result_of: ResultOf, make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        context.storage.count = 1

    functions = one_function(fun, ValueSpec("count", IntType))
    state = {"count": None, "old": TypedValue("ex/whatever", b"\x00")}
    result = result_of(functions, make_batch("ex/f/a", 1, state=state))
    assert result.mutations == [StateMutation("count", int_state(1))]


def test_a_state_holding_another_type_fails_the_batch_before_it_runs(
    failure_of: FailureOf, make_batch: MakeBatch
) -> None:
    ran: list[bool] = []

    def fun(context: Context, message: Message) -> None:
        ran.append(True)

    functions = one_function(fun, ValueSpec("count", IntType))
    state = {"count": to_typed_value(StringType, "7")}
    failure = failure_of(functions, make_batch("ex/f/a", 1, state=state))
    assert ran == []
    assert failure.error_type == "ValueTypeError"
    assert failure.message == (
        "state 'count' of ex/f holds a value of type io.statefun.types/string, "
        "but the function declares it as io.statefun.types/int"
    )


def test_stored_bytes_that_do_not_decode_fail_the_read(
    failure_of: FailureOf, make_batch: MakeBatch
) -> None:
    def fun(context: Context, message: Message) -> None:
        context.storage.items  # noqa: B018 - the read itself is under test

    functions = one_function(fun, ValueSpec("items", LIST))
    failure = failure_of(
        functions, make_batch("ex/f/a", 1, state={"items": TypedValue("ex/list", b"[1")})
    )
    assert failure.error_type == "ValueTypeError"
    assert "state 'items' holds bytes that are not a valid ex/list value" in failure.message
