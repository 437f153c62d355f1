"""What the ingress's OpenAPI document (``/openapi.json``) says beyond what FastAPI
derives: the error body, every status each route can answer, and the parameters and
body of the routes that read their request themselves.

Every error of the ingress is :class:`ErrorBody` (``runtime.ingress_errors``,
``runtime.access``, ``runtime.ingress``); :func:`errors` gives a route's error
statuses, each described once here. FastAPI's own ``422`` (its validation error
schema) is dropped from the document (:func:`install`): the ingress answers a
parameter it cannot read with ``400 bad_request``, and ``422`` means only an
``Idempotency-Key`` reused for another request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict


class ErrorBody(BaseModel):
    """Every error the ingress answers."""

    model_config = ConfigDict(extra="allow")  # a 503 or 504 of a call: partition, offset

    error: str
    """A stable code, e.g. ``bad_address``, ``unauthenticated``."""
    detail: str
    """What went wrong, for a person."""


_MEANINGS: dict[int, str] = {
    400: "A bad address, parameter, body or Idempotency-Key.",
    401: "With tokens: no Bearer token, or an unknown one.",
    403: "An Origin that is not allowed; with tokens, a token without the role or "
    "outside its function types.",
    404: "No such function type, egress, dead letter or retained checkpoint.",
    409: "The dead letter was discarded, replayed, or is no message to a function.",
    413: "The body is over the runtime's message size limit.",
    415: "A content type or charset the ingress cannot take (see ?type=).",
    422: "The Idempotency-Key was used before for a different request.",
    503: "The runtime cannot serve it now (unavailable, restoring, shutting down, the "
    "cluster changing); see Retry-After. Nothing was accepted unless the body says so.",
    504: "No reply within the timeout; the message was accepted and will be processed.",
}

GUARDED = (401, 403)
"""What every route but the open ones may answer with tokens (and 403 for an Origin)."""


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for these error statuses, each an :class:`ErrorBody`."""
    return {s: {"model": ErrorBody, "description": _MEANINGS[s]} for s in statuses}


_ADDRESS_PARAMETERS = [
    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    for name in ("namespace", "type_", "id_")
]
_SEND_QUERY = [
    {
        "name": "type",
        "in": "query",
        "required": False,
        "description": "The message's type, namespace/name; text/plain is a string without it.",
        "schema": {"type": "string", "pattern": "^[^/]+/[^/]+$"},
    },
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "A retry with the same key appends nothing and gets the first answer.",
        "schema": {"type": "string"},
    },
]
_CALL_QUERY = [
    {
        "name": "timeout",
        "in": "query",
        "required": False,
        "description": "Seconds to wait for the reply (default 30, at most 300).",
        "schema": {"type": "number"},
    },
    {
        "name": "consistency",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["uncommitted", "committed"]},
    },
]
_MESSAGE_BODY = {
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        "application/json": {},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}

_BATCH_MESSAGE = {
    "type": "object",
    "required": ["address", "value"],
    "additionalProperties": False,
    "properties": {
        "address": {
            "type": "string",
            "pattern": "^[^/]+/[^/]+/.+$",
            "description": "namespace/type/id (the id may contain /).",
        },
        "value": {
            "description": "Without type, a string; with type, the JSON value of that "
            'type; with "encoding": "base64", the base64 of its raw bytes.',
        },
        "type": {
            "type": "string",
            "pattern": "^[^/]+/[^/]+$",
            "description": "The message's type, namespace/name.",
        },
        "encoding": {"type": "string", "enum": ["base64"]},
    },
}
_BATCH_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["messages"],
                "additionalProperties": False,
                "properties": {
                    "messages": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 10_000,
                        "items": _BATCH_MESSAGE,
                    }
                },
            }
        }
    },
}
_POSITIONS = {
    "description": "Every message is durable: each one's partition and offset, in order.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "messages": {
                        "type": "array",
                        "items": {
                            "type": ["object", "null"],
                            "properties": {
                                "partition": {"type": "integer"},
                                "offset": {"type": "integer"},
                            },
                        },
                    }
                },
            }
        }
    },
}

ADDRESSED: dict[str, Any] = {"parameters": _ADDRESS_PARAMETERS}
"""``openapi_extra`` of a route reading its address from the raw path."""
SEND: dict[str, Any] = {
    "parameters": _ADDRESS_PARAMETERS + _SEND_QUERY,
    "requestBody": _MESSAGE_BODY,
}
"""``openapi_extra`` of ``POST /v1/messages``."""
CALL: dict[str, Any] = {
    "parameters": _ADDRESS_PARAMETERS + _SEND_QUERY + _CALL_QUERY,
    "requestBody": _MESSAGE_BODY,
}
"""``openapi_extra`` of ``POST /v1/call``."""
BATCH: dict[str, Any] = {
    "parameters": [_SEND_QUERY[1]],
    "requestBody": _BATCH_BODY,
    "responses": {
        "202": _POSITIONS,
        "413": {
            "description": "The batch is over 10,000 messages or 16 MiB, or a message's "
            "value over the runtime's message size limit."
        },
    },
}
"""``openapi_extra`` of ``POST /v1/messages`` (``runtime.ingress_batch``)."""


def install(app: FastAPI) -> None:
    """Have ``app`` serve its document without FastAPI's validation error schema."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _drop_validation_errors(generate())  # FastAPI keeps it as app.openapi_schema
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_validation_errors(document: dict[str, Any]) -> None:
    for operations in document["paths"].values():
        for operation in operations.values():
            answer = operation["responses"].get("422", {})
            if "HTTPValidationError" in str(answer.get("content")):
                del operation["responses"]["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
