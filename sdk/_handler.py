"""Running batches: ``RequestReplyHandler`` answers a native-protocol request.

Owns batch execution. Each batch of a request gets one outcome, in order:

* ``FunctionFailure`` (error type ``UnknownFunctionType``) if its function type is not
  registered;
* ``MissingStateSpecs`` if the runtime lacks declared states (nothing runs);
* ``FunctionFailure`` if a state holds a value of another type than declared, or if the
  function raised (the traceback goes to the ``sdk`` logger; the batch's effects are
  dropped);
* otherwise the ``InvocationResult`` of running its invocations in order over one
  context and one storage.

Sync functions run inline as soon as their batch is reached; batches of async
functions run concurrently with one another (different addresses share nothing).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

from sdk._context import BatchContext
from sdk._function import StatefulFunctions, UserFunction
from sdk._message import incoming_message
from statefun.address import Address
from statefun.errors import ValueTypeError
from statefun.native_codec import decode_request, encode_response
from statefun.protocol import (
    BatchOutcome,
    FunctionFailure,
    FunctionRequest,
    FunctionResponse,
    InvocationBatch,
    MissingStateSpecs,
)

__all__ = ["RequestReplyHandler"]

_log = logging.getLogger(__name__)

_Started = BatchOutcome | Coroutine[Any, Any, BatchOutcome]


def _failure(target: Address, error: Exception) -> FunctionFailure:
    _log.error("function %s raised %s: %s", target, type(error).__name__, error, exc_info=error)
    return FunctionFailure(target.typename, target, type(error).__name__, str(error))


def _run_sync(fun: UserFunction, context: BatchContext, batch: InvocationBatch) -> BatchOutcome:
    target = batch.target
    try:
        for invocation in batch.invocations:
            context._caller = invocation.caller
            result = fun(context, incoming_message(target, invocation.argument))
            if result is not None and inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it rather than leak a warning
                raise TypeError(
                    f"the function for {target.typename} returned an awaitable, but it was "
                    "registered as a plain function; declare it 'async def'"
                )
    except Exception as e:
        return _failure(target, e)
    return context.result()


async def _run_async(
    fun: UserFunction, context: BatchContext, batch: InvocationBatch
) -> BatchOutcome:
    target = batch.target
    try:
        for invocation in batch.invocations:
            context._caller = invocation.caller
            result = fun(context, incoming_message(target, invocation.argument))
            if result is not None:
                await result
    except Exception as e:
        return _failure(target, e)
    return context.result()


async def _gather(pending: list[Coroutine[Any, Any, BatchOutcome]]) -> list[BatchOutcome]:
    if len(pending) == 1:  # no task needed to run a lone batch
        return [await pending[0]]
    return list(await asyncio.gather(*pending))


def _in_order(started: list[_Started], finished: Iterator[BatchOutcome]) -> FunctionResponse:
    return FunctionResponse([next(finished) if isinstance(s, Coroutine) else s for s in started])


class RequestReplyHandler:
    """Runs the functions of a ``StatefulFunctions`` for native-protocol requests.

    :meth:`StatefulFunctions.asgi_app` wraps one in a FastAPI app; use it directly to
    serve the functions from another web framework: hand it each request's body and
    answer with what it returns (Content-Type ``application/vnd.statefun.native+msgpack``);
    say ``protocol: native`` in the module spec's endpoint, since such an app does not
    answer the runtime's ``GET`` asking which protocol it speaks.

    Example (aiohttp):

    ```python
    from aiohttp import web

    from sdk import RequestReplyHandler

    handler = RequestReplyHandler(functions)

    async def statefun(request: web.Request) -> web.Response:
        answer = await handler.handle_async(await request.read())
        return web.Response(body=answer, content_type="application/vnd.statefun.native+msgpack")

    app = web.Application()
    app.add_routes([web.post("/statefun", statefun)])
    ```
    """

    __slots__ = ("_functions",)

    def __init__(self, functions: StatefulFunctions) -> None:
        if not isinstance(functions, StatefulFunctions):
            raise TypeError(f"expected StatefulFunctions, got {type(functions).__name__}")
        self._functions = functions

    async def handle_async(self, body: bytes) -> bytes:
        """The encoded response to an encoded request; raises ProtocolError for bad bytes."""
        return encode_response(await self.process(decode_request(body)))

    def handle_sync(self, body: bytes) -> bytes:
        """Like ``handle_async``, without an event loop (see ``process_sync``)."""
        return encode_response(self.process_sync(decode_request(body)))

    async def process(self, request: FunctionRequest) -> FunctionResponse:
        """The response to ``request``: one outcome per batch, in order."""
        started = [self._start(batch) for batch in request.batches]
        pending = [s for s in started if isinstance(s, Coroutine)]
        return _in_order(started, iter(await _gather(pending)))

    def process_sync(self, request: FunctionRequest) -> FunctionResponse:
        """Like ``process``, for callers without an event loop.

        Batches of async functions run in an event loop of their own, so this cannot be
        called from a running loop when any are involved: await ``process`` there.
        """
        started = [self._start(batch) for batch in request.batches]
        pending = [s for s in started if isinstance(s, Coroutine)]
        if not pending:
            return _in_order(started, iter(()))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return _in_order(started, iter(asyncio.run(_gather(pending))))
        for coroutine in pending:
            coroutine.close()
        raise RuntimeError(
            "process_sync/handle_sync cannot run async functions inside a running event "
            "loop; await process/handle_async instead"
        )

    def _start(self, batch: InvocationBatch) -> _Started:
        """The outcome of a batch that needs no awaiting, else the coroutine computing it."""
        target = batch.target
        function = self._functions.lookup(target.typename)
        if function is None:
            registered = ", ".join(self._functions.typenames) or "none"
            _log.warning("no function registered for %s (batch for %s)", target.typename, target)
            return FunctionFailure(
                target.typename,
                target,
                "UnknownFunctionType",
                f"no function is registered for {target.typename} at this endpoint "
                f"(registered: {registered})",
            )
        missing = function.storage.missing(batch.state)
        if missing:
            return MissingStateSpecs(missing)
        try:
            storage = function.storage.open(batch.state)
        except ValueTypeError as e:
            return _failure(target, e)
        context = BatchContext(target, storage, batch.pending_tokens)
        if function.is_async:
            return _run_async(function.fun, context, batch)
        return _run_sync(function.fun, context, batch)
