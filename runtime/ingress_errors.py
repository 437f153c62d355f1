"""What the ingress answers when it cannot serve a request: always JSON
``{"error": code, "detail": message}``, never a plain-text page or a traceback.

* While the runtime cannot take messages (its log or checkpoint store failing, or no
  generation running while it rolls back), every POST is answered ``503 unavailable``
  with ``Retry-After``: the seconds until the runtime next tries to heal (at least 1).
  Replies other members deliver are taken still: they append nothing.
* A request whose write to the log fails is answered ``503`` too: its message may or
  may not have been accepted, which a retry with an ``Idempotency-Key`` settles.
* An unexpected exception is answered ``500 internal``, its traceback logged once.
* A client that goes away mid-request is nobody's error: nothing is answered or logged.
* A request still running when the server's shutdown grace ends is answered ``503
  shutting_down``.

This module never decides whether the runtime is available; it asks (:class:`Availability`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.cluster.peers import DEMAND_PATH, REPLIES_PATH
from runtime.errors import LogError, StoreError

log = logging.getLogger(__name__)


class Availability(Protocol):
    def unavailable(self) -> tuple[str, float] | None:
        """Why messages are refused now, and seconds until the next attempt to heal;
        None while they are taken."""


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""A whole answer: status, headers, body."""


def _json_answer(
    status: int, body: dict[str, str], headers: dict[str, str] | None = None
) -> Answer:
    content = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, raw_headers, content


def unavailable_answer(availability: Availability) -> Answer | None:
    """The answer to a POST (other than a delivered reply) while the runtime cannot take
    messages; None while it can."""
    down = availability.unavailable()
    if down is None:
        return None
    reason, retry = down
    return _json_answer(
        503,
        {"error": "unavailable", "detail": f"the runtime cannot take messages now: {reason}"},
        _retry_after(retry),
    )


def shutting_down_answer() -> Answer:
    """The answer to a request still running when the server's shutdown grace ends."""
    return _json_answer(
        503,
        {
            "error": "shutting_down",
            "detail": "the runtime stopped before this request finished: it may "
            "or may not have been accepted; retry with an Idempotency-Key",
        },
    )


def internal_answer() -> Answer:
    """The answer to a request that raised unexpectedly (its traceback is logged)."""
    return _json_answer(
        500, {"error": "internal", "detail": "an unexpected error in the runtime (logged there)"}
    )


async def send_answer(send: Send, answer: Answer) -> None:
    """Send ``answer``: its status and headers, then its whole body."""
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ErrorBoundary:
    """ASGI middleware inside the application's own error handling: refuses POSTs while
    the runtime is unavailable, and turns what escapes the routes into JSON."""

    def __init__(self, app: ASGIApp, availability: Availability) -> None:
        self.app = app
        self.availability = availability

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (
            scope["method"] == "POST"
            and scope["path"] not in (REPLIES_PATH, DEMAND_PATH)
            and (down := unavailable_answer(self.availability)) is not None
        ):
            await send_answer(send, down)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except ClientDisconnect:
            return  # the client went away mid-request: there is nobody to answer
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when its shutdown grace ends (a request
            # waiting on a stalled log): answer it, rather than let uvicorn log a
            # traceback. Nobody else awaits this task, so the cancellation ends here.
            if not started:
                await send_answer(send, shutting_down_answer())
        except Exception:
            log.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            if not started:
                await send_answer(send, internal_answer())


def log_failed(method: str, exc: LogError, availability: Availability) -> JSONResponse:
    """The answer to a request whose read or write of the log failed."""
    if method == "POST":
        detail = (
            f"the log failed while this request wrote to it ({exc}): it may or may not "
            "have been accepted; retry with an Idempotency-Key to have it taken once"
        )
    else:
        detail = f"the log failed: {exc}"
    return JSONResponse(
        {"error": "unavailable", "detail": detail},
        status_code=503,
        headers=_retry_after_now(availability),
    )


def store_failed(exc: StoreError, availability: Availability) -> JSONResponse:
    """The answer to a request whose use of the checkpoint store failed."""
    return JSONResponse(
        {"error": "unavailable", "detail": f"the checkpoint store failed: {exc}"},
        status_code=503,
        headers=_retry_after_now(availability),
    )


def _retry_after_now(availability: Availability) -> dict[str, str]:
    down = availability.unavailable()
    return _retry_after(1.0 if down is None else down[1])


def install(app: FastAPI, availability: Availability) -> None:
    """Give ``app`` these answers."""

    @app.exception_handler(LogError)
    async def on_log_error(request: Request, exc: LogError) -> JSONResponse:
        return log_failed(request.method, exc, availability)

    @app.exception_handler(StoreError)
    async def on_store_error(_: Request, exc: StoreError) -> JSONResponse:
        return store_failed(exc, availability)

    app.add_middleware(ErrorBoundary, availability=availability)
