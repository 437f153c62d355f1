"""StatefulFunctions: registering functions, and the errors for what cannot be registered."""

from __future__ import annotations

from typing import Any

import pytest

from sdk import Context, IntType, Message, StatefulFunctions, ValueSpec
from statefun.errors import InvalidNameError


def noop(context: Context, message: Message) -> None:
    pass


async def async_noop(context: Context, message: Message) -> None:
    pass


def test_register_sync_and_async_functions() -> None:
    functions = StatefulFunctions()
    functions.register("example/sync", noop)
    functions.register("example/async", async_noop, [ValueSpec("count", IntType)])
    sync, async_ = functions.lookup("example/sync"), functions.lookup("example/async")
    assert sync is not None
    assert async_ is not None
    assert (sync.fun, sync.is_async) == (noop, False)
    assert (async_.fun, async_.is_async) == (async_noop, True)
    assert [s.name for s in async_.storage.specs] == ["count"]
    assert functions.typenames == ["example/async", "example/sync"]
    assert functions.lookup("example/other") is None


def test_bind_registers_and_returns_the_function_unchanged() -> None:
    functions = StatefulFunctions()

    @functions.bind("example/greeter", specs=[ValueSpec("seen", IntType)])
    async def greeter(context: Context, message: Message) -> None:
        pass

    registered = functions.lookup("example/greeter")
    assert registered is not None
    assert registered.fun is greeter
    assert registered.is_async


def test_a_callable_object_with_async_call_is_async() -> None:
    class Greeter:
        async def __call__(self, context: Context, message: Message) -> None:
            pass

    functions = StatefulFunctions()
    functions.register("example/greeter", Greeter())
    registered = functions.lookup("example/greeter")
    assert registered is not None
    assert registered.is_async


def test_a_typename_can_be_registered_once() -> None:
    functions = StatefulFunctions()
    functions.register("example/greeter", noop)
    with pytest.raises(ValueError, match="already registered for example/greeter"):
        functions.register("example/greeter", async_noop)


@pytest.mark.parametrize("typename", ["greeter", "example/", "/greeter", "a/b/greeter", ""])
def test_malformed_typenames_are_refused(typename: str) -> None:
    with pytest.raises(InvalidNameError):
        StatefulFunctions().register(typename, noop)


def test_a_function_must_be_callable() -> None:
    bad: Any = "noop"
    with pytest.raises(TypeError, match="must be callable"):
        StatefulFunctions().register("example/f", bad)


@pytest.mark.parametrize(
    "fun",
    [lambda: None, lambda context: None, lambda context, message, extra: None],
    ids=["no-args", "one-arg", "three-args"],
)
def test_a_function_must_take_context_and_message(fun: Any) -> None:
    with pytest.raises(TypeError, match=r"must take two arguments \(context, message\)"):
        StatefulFunctions().register("example/f", fun)


def test_generator_functions_are_refused() -> None:
    def gen(context: Context, message: Message) -> Any:
        yield

    with pytest.raises(TypeError, match="generator function"):
        StatefulFunctions().register("example/f", gen)


def test_duplicate_state_names_are_refused() -> None:
    specs = [ValueSpec("count", IntType), ValueSpec("count", IntType)]
    with pytest.raises(ValueError, match="declares state 'count' more than once"):
        StatefulFunctions().register("example/f", noop, specs)


def test_specs_must_be_value_specs() -> None:
    bad: Any = ["count"]
    with pytest.raises(TypeError, match="must be ValueSpecs, not str"):
        StatefulFunctions().register("example/f", noop, bad)


def test_a_failed_registration_registers_nothing() -> None:
    functions = StatefulFunctions()
    with pytest.raises(ValueError, match="more than once"):
        functions.register("example/f", noop, [ValueSpec("a", IntType), ValueSpec("a", IntType)])
    assert functions.typenames == []


def test_bind_reports_errors_at_decoration() -> None:
    functions = StatefulFunctions()
    with pytest.raises(TypeError, match="two arguments"):

        @functions.bind("example/f")  # type: ignore[type-var]
        def one_arg(context: Context) -> None:
            pass
