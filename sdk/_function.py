"""The function registry: ``StatefulFunctions`` and what it knows about each function.

Owns the checks a function must pass to be registered (a valid function type, a
callable taking ``(context, message)``, distinct state names), done once so that
running a batch can trust them, and whether the function is async.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from sdk._spec import ValueSpec
from sdk._storage import StorageLayout
from statefun.address import TypeName
from statefun.errors import InvalidNameError
from statefun.signing import DEFAULT_REPLAY_WINDOW

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sdk._context import Context
    from sdk._message import Message
    from statefun.signing import PublicKeys

__all__ = ["RegisteredFunction", "StatefulFunctions", "UserFunction"]

UserFunction = Callable[["Context", "Message"], Awaitable[None] | None]
"""A stateful function: ``def f(context, message)`` or ``async def f(context, message)``."""

F = TypeVar("F", bound=UserFunction)


def _check_function_type(typename: str) -> None:
    parsed = TypeName.parse(typename)
    if "/" in parsed.namespace:
        raise InvalidNameError(
            f"function type {typename!r} must be 'namespace/name' with no '/' in the namespace"
        )


def _is_async(fun: UserFunction) -> bool:
    # An object whose __call__ is ``async def`` is as async as an ``async def`` function.
    return inspect.iscoroutinefunction(fun) or inspect.iscoroutinefunction(type(fun).__call__)


def _check_callable(typename: str, fun: object) -> None:
    if not callable(fun):
        raise TypeError(f"the function for {typename} must be callable, got {type(fun).__name__}")
    if inspect.isgeneratorfunction(fun) or inspect.isasyncgenfunction(fun):
        raise TypeError(
            f"the function for {typename} is a generator function; it must be a plain "
            "'def' or 'async def' function that returns nothing"
        )
    try:
        signature = inspect.signature(fun)
    except ValueError:  # some builtins have no signature to inspect; trust them
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(
            f"the function for {typename} must take two arguments (context, message); "
            f"its signature is {signature}"
        ) from None


class RegisteredFunction:
    """A function as registered: its type, code, declared states and whether it is async."""

    __slots__ = ("fun", "is_async", "storage", "typename")

    def __init__(self, typename: str, fun: UserFunction, specs: Sequence[ValueSpec]) -> None:
        self.typename = typename
        self.fun = fun
        self.is_async = _is_async(fun)
        self.storage = StorageLayout(typename, specs)


class StatefulFunctions:
    """The functions an endpoint serves, by function type (``namespace/name``).

    Register each function with :meth:`bind` (a decorator) or :meth:`register`, then
    serve them all with :meth:`asgi_app` under any ASGI server. The runtime finds them
    through the module spec's endpoint (``urlPathTemplate``).

    Example:

    ```python
    >>> from sdk import Context, IntType, Message, StatefulFunctions, ValueSpec
    >>> functions = StatefulFunctions()
    >>> @functions.bind("example/counter", specs=[ValueSpec("count", IntType)])
    ... def counter(context: Context, message: Message) -> None:
    ...     context.storage.count = (context.storage.count or 0) + 1
    >>> functions.typenames
    ['example/counter']
    >>> app = functions.asgi_app()  # uvicorn mymodule:app --port 8000

    ```
    """

    __slots__ = ("_functions",)

    def __init__(self) -> None:
        self._functions: dict[str, RegisteredFunction] = {}

    def register(
        self, typename: str, fun: UserFunction, specs: Sequence[ValueSpec] | None = None
    ) -> None:
        """Serve ``fun`` as function type ``typename``, with the states ``specs`` declares."""
        _check_function_type(typename)
        if typename in self._functions:
            raise ValueError(f"a function is already registered for {typename}")
        _check_callable(typename, fun)
        if specs is not None and not isinstance(specs, Sequence):
            raise TypeError(f"the specs of {typename} must be a list of ValueSpecs")
        self._functions[typename] = RegisteredFunction(typename, fun, specs or ())

    def bind(self, typename: str, specs: Sequence[ValueSpec] | None = None) -> Callable[[F], F]:
        """A decorator that registers the decorated function as ``typename``."""

        def decorate(fun: F) -> F:
            self.register(typename, fun, specs)
            return fun

        return decorate

    def lookup(self, typename: str) -> RegisteredFunction | None:
        """The function registered as ``typename``, or None."""
        return self._functions.get(typename)

    @property
    def typenames(self) -> list[str]:
        """The registered function types, sorted."""
        return sorted(self._functions)

    def asgi_app(
        self,
        path: str = "/statefun",
        *,
        verify_key: PublicKeys | None = None,
        replay_window: float = DEFAULT_REPLAY_WINDOW,
    ) -> FastAPI:
        """A FastAPI app serving these functions at ``path`` (see ``sdk._app``).

        With ``verify_key`` (the runtime's public key: a PEM file's path, PEM text, a key,
        or several while rotating) the app serves only requests the runtime signed with
        a timestamp within ``replay_window`` seconds of this host's clock, and answers
        any other with 401 (see ``statefun.signing``).
        """
        # Imported here: the app module builds on the handler, which builds on this one.
        from sdk._app import create_app

        return create_app(self, path, verify_key=verify_key, replay_window=replay_window)
