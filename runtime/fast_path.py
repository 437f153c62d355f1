"""The ingress's hot routes served without framework overhead.

``POST /v1/messages/{namespace}/{type_}/{id_}`` and ``POST /v1/call/...`` are most of
what a busy ingress serves; through Starlette's router, FastAPI's request handling and
four middlewares they cost more than the rest of the request. :class:`IngressApp` is the
ingress's FastAPI app with a raw-ASGI front: a POST whose path those two routes match
(by the very regular expressions the documented routes compile, so exactly the requests
they would take) is served here; every other request goes through FastAPI as before.

The fast path keeps every check the middlewares make, in the same order, with the same
answers: the HTTP metrics (by route template, method and status), the access layer
(``runtime.access``: Host, Origin, token, role and function patterns; the route's rule
is known without matching), refusing POSTs while the runtime is unavailable, and the
error boundary (``runtime.ingress_errors``: a log or store failure is a 503, a client
gone mid-body is answered nothing, an unexpected exception a logged 500, a request
cancelled at shutdown a 503). The route's own logic is the same function the documented
route calls (``runtime.ingress``), on the same :class:`~runtime.ingress_request.IngressRequest`.
Each answer is written whole, in one go, where the server offers it
(``runtime.http_server.DIRECT_ANSWER``); elsewhere it is two ASGI messages: the status
with every header, then the whole body.

:meth:`IngressApp.documented` serves a request through FastAPI only, the fast path
left out: the tests compare both answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from runtime.access import ROUTES, AccessControl, Rule
from runtime.errors import LogError, StoreError
from runtime.http_server import DIRECT_ANSWER
from runtime.ingress_errors import (
    Answer,
    Availability,
    internal_answer,
    log_failed,
    send_answer,
    shutting_down_answer,
    store_failed,
    unavailable_answer,
)
from runtime.ingress_request import IngressRequest, Rejected
from runtime.metrics import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[IngressRequest], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class FastRoute:
    """A POST route served by the fast path."""

    template: str
    """The documented route's path template (the metrics' label and the access rule's key)."""
    regex: re.Pattern[str]
    """The documented route's compiled path pattern."""
    prefix: str
    """The template's literal start: a cheap test before the pattern."""
    rule: Rule
    handler: Handler


def fast_route(template: str, regex: re.Pattern[str], handler: Handler) -> FastRoute:
    return FastRoute(template, regex, template.partition("{")[0], ROUTES[template], handler)


def _answer_of(response: Response) -> Answer:
    return response.status_code, response.raw_headers, bytes(response.body)


async def _answer_now(scope: Scope, send: Send, answer: Answer) -> None:
    """Send ``answer``, in one write where the server offers it: the fast path is the
    outermost application, so no middleware's ``send`` would miss it (inside the
    middlewares, answers go through ``send``: the HTTP metrics read the status there)."""
    direct = scope.get("extensions", {}).get(DIRECT_ANSWER)
    if direct is None:
        await send_answer(send, answer)
    else:
        await direct(*answer)


class FastPath:
    """Serves the :class:`FastRoute` s with every check of the middlewares (see the module)."""

    def __init__(
        self,
        routes: Sequence[FastRoute],
        access: AccessControl,
        metrics: Metrics,
        availability: Availability,
    ) -> None:
        self.routes = tuple(routes)
        self.access = access
        self.metrics = metrics
        self.availability = availability

    def match(self, scope: Scope) -> tuple[FastRoute, dict[str, Any]] | None:
        """The route a POST goes to and its path parameters, or None for FastAPI."""
        if scope.get("root_path"):
            return None
        path: str = scope["path"]
        for route in self.routes:
            if path.startswith(route.prefix):
                found = route.regex.match(path)
                if found is not None:
                    return route, found.groupdict()
        return None

    async def serve(
        self,
        route: FastRoute,
        params: dict[str, Any],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        started = time.perf_counter()
        status = 500  # answered nothing (the client went away), as the middleware counts it
        try:
            answer = await self._answer(route, params, scope, receive)
            if answer is None:
                return
            status = answer[0]
            await _answer_now(scope, send, answer)
        except asyncio.CancelledError:
            # Cancelled at shutdown (uvicorn's grace ended) while answering: the
            # cancellation ends here, as in the error boundary.
            if status == 500:
                status = 503
                await _answer_now(scope, send, shutting_down_answer())
        finally:
            self.metrics.ingress_request(
                route.template, "POST", status, time.perf_counter() - started
            )

    async def _answer(
        self, route: FastRoute, params: dict[str, Any], scope: Scope, receive: Receive
    ) -> Answer | None:
        """The answer to send; None to send nothing (the client went away)."""
        refused = self.access.refusal(scope, route.rule, params)
        if refused is not None:
            return _answer_of(refused)
        down = unavailable_answer(self.availability)
        if down is not None:
            return down
        try:
            response = await route.handler(IngressRequest(scope, receive))
        except Rejected as e:
            response = e.response
        except LogError as e:
            response = log_failed("POST", e, self.availability)
        except StoreError as e:
            response = store_failed(e, self.availability)
        except ClientDisconnect:
            return None  # nobody to answer
        except asyncio.CancelledError:
            return shutting_down_answer()
        except Exception:
            log.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            return internal_answer()
        return _answer_of(response)


class IngressApp(FastAPI):
    """The ingress's FastAPI app, with :class:`FastPath` in front of it once set.

    The requests FastAPI serves see a trusted proxy's ``X-Forwarded-Proto`` and
    ``X-Forwarded-For`` (uvicorn's ``ProxyHeadersMiddleware``, trusting what uvicorn trusts
    by default: ``FORWARDED_ALLOW_IPS``, else the loopback addresses): the console marks its
    cookie secure behind a TLS proxy. The ingress's server leaves that middleware out for
    the fast path, whose routes read neither the scheme nor the client."""

    fast_path: FastPath | None = None
    _behind_proxy: Any = None
    """FastAPI behind uvicorn's proxy headers middleware (typed with uvicorn's ASGI types)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_path
        if fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            matched = fast.match(scope)
            if matched is not None:
                await fast.serve(matched[0], matched[1], scope, receive, send)
                return
        proxied = self._behind_proxy
        if proxied is None:
            trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
            proxied = self._behind_proxy = ProxyHeadersMiddleware(
                cast(Any, self.documented), trusted
            )
        await proxied(scope, receive, send)

    async def documented(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request through FastAPI only (the documented routes), for tests."""
        await super().__call__(scope, receive, send)
