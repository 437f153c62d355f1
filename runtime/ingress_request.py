"""What the ingress's routes read of a request, straight from the ASGI scope.

:class:`IngressRequest` is the one request object the message routes work on, built
alike by the raw-ASGI fast path (``runtime.fast_path``) and by the documented FastAPI
routes, so both run the same code and answer the same. It reads what Starlette's
``Request`` would (the first header of a name, the last query parameter of a name, the
decoded URL path) without building Starlette's structures for what is not asked.

:class:`Rejected` carries the answer to a request refused by a check (always JSON
``{"error", "detail"}``, see :func:`error`); nothing is appended for it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette import responses
from starlette.datastructures import URL
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope

CLUSTER_RETRY_AFTER = 1
"""Seconds a client is told to wait while the cluster's ownership of a partition changes."""


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class JSONResponse(responses.JSONResponse):
    """Starlette's JSON response, the same bytes, rendered by an encoder made once
    (``json.dumps`` with Starlette's options makes one per answer)."""

    def render(self, content: Any) -> bytes:
        return _ENCODER.encode(content).encode("utf-8")


def error(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    """The ingress's error answer: ``{"error": error, "detail": detail, **extra}``."""
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


def retry_later(error: str, detail: str) -> JSONResponse:
    """A 503 telling the client to try again once the cluster has settled."""
    return JSONResponse(
        {"error": error, "detail": detail},
        status_code=503,
        headers={"Retry-After": str(CLUSTER_RETRY_AFTER)},
    )


class Rejected(Exception):
    """A request refused by a check, with its answer."""

    def __init__(self, response: Response):
        self.response = response


def too_large(limit: int) -> Rejected:
    return Rejected(error(413, "body_too_large", f"the body is over the limit of {limit} bytes"))


_QUERIES_KEPT = 1024
_QUERY_KEPT_BYTES = 256
_QUERIES: dict[bytes, tuple[tuple[str, str], ...]] = {}
"""Short query strings parsed already (at most ``_QUERIES_KEPT``, so at most 256 KiB of
them): a busy ingress sees the same few (``?type=...``) on nearly every request, and
parsing one was ~1.5% of the event loop's time at c64."""


def _parsed_query(query: bytes) -> tuple[tuple[str, str], ...]:
    parsed = _QUERIES.get(query)
    if parsed is None:
        parsed = tuple(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        if len(query) <= _QUERY_KEPT_BYTES and len(_QUERIES) < _QUERIES_KEPT:
            _QUERIES[query] = parsed
    return parsed


class IngressRequest:
    """One HTTP request as the ingress's routes read it (see the module docstring)."""

    __slots__ = ("_query", "_receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        self._query: tuple[tuple[str, str], ...] | None = None

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def raw_path(self) -> bytes:
        """The path as the client wrote it (percent-encoded)."""
        raw: bytes | None = self.scope.get("raw_path")
        return raw or self.url_path.encode()

    @property
    def url_path(self) -> str:
        """The decoded path, as Starlette's ``request.url.path`` reads it."""
        return URL(scope=self.scope).path

    @property
    def query_string(self) -> bytes:
        query: bytes = self.scope.get("query_string", b"")
        return query

    def header(self, name: bytes) -> str | None:
        """The first header called ``name`` (lower case), decoded as Latin-1."""
        for key, value in self.scope["headers"]:
            if key == name:
                text: str = value.decode("latin-1")
                return text
        return None

    def has_header(self, name: bytes) -> bool:
        return any(key == name for key, _ in self.scope["headers"])

    def header_items(self) -> tuple[tuple[str, str], ...]:
        """Every header, in order, decoded as Latin-1."""
        return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.scope["headers"])

    def query_items(self) -> tuple[tuple[str, str], ...]:
        """Every query parameter, in order (blank values kept)."""
        if self._query is None:
            self._query = _parsed_query(self.query_string)
        return self._query

    def query(self, name: str) -> str | None:
        """The last query parameter called ``name``."""
        if not self.query_string:
            return None
        found = None
        for key, value in self.query_items():
            if key == name:
                found = value
        return found

    async def body(self, limit: int) -> bytes:
        """The whole body; 413 (:class:`Rejected`) once it is over ``limit`` bytes, declared
        or read; ``ClientDisconnect`` if the client goes away first."""
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        chunks = bytearray()
        while True:
            message = await self._receive()
            if message["type"] == "http.request":
                chunks += message.get("body", b"")
                if len(chunks) > limit:
                    raise too_large(limit)
                if not message.get("more_body", False):
                    return bytes(chunks)
            elif message["type"] == "http.disconnect":
                raise ClientDisconnect()
