"""The batch ingress's request body: many messages in one ``POST /v1/messages``.

The body is JSON ``{"messages": [message, ...]}``, each message an object:

- ``address``: ``"namespace/type/id"`` (the id may contain ``/``);
- ``value``: the message. Without ``type``, a JSON string: an
  ``io.statefun.types/string`` (as a ``text/plain`` body on the single route). With
  ``type``, any JSON value: a built-in type's value converted to its wire form, another
  type's JSON text taken as its bytes (as an ``application/json`` body with ``?type=``);
- ``type`` (optional): the message's type, ``namespace/name``;
- ``encoding`` (optional): ``"base64"``: ``value`` is a base64 string of the raw bytes of
  ``type`` (as an ``application/octet-stream`` body with ``?type=``).

Validation is all or nothing: :func:`read_batch` checks every message (its shape, its
address, that a token's function patterns reach its type, that an endpoint serves its
type, its value, its size) before anything is appended, and refuses the whole request
with the first problem, naming the message's index (``messages[3]: ...``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.access import Grant
from runtime.errors import BadInput
from runtime.http_values import value_from_http
from runtime.ingress_request import Rejected, error
from statefun.address import Address, TypeName
from statefun.errors import InvalidNameError
from statefun.values import TypedValue

MAX_BATCH_MESSAGES = 10_000
"""The most messages one batch may carry (more: 413)."""
MAX_BATCH_BYTES = 16 << 20
"""The largest batch body (more: 413); each message's value is bounded by
``--max-message-bytes`` besides."""
_KEYS = frozenset({"address", "value", "type", "encoding"})


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _refused(status: int, code: str, index: int, detail: str) -> Rejected:
    return Rejected(error(status, code, f"messages[{index}]: {detail}"))


def batch_address(text: str) -> Address:
    """``namespace/type/id`` as an address (``InvalidNameError`` if it is none): the
    namespace and type are one segment each, the id the rest; no segment is ``.`` or
    ``..`` (as on the single route's path)."""
    namespace, _, rest = text.partition("/")
    type_, slash, id_ = rest.partition("/")
    if not slash:
        raise InvalidNameError(f"{text!r} is not namespace/type/id")
    for segment in (namespace, type_, *id_.split("/")):
        if segment in (".", ".."):
            raise InvalidNameError(f"the segment {segment!r} names no address")
    return Address(namespace, type_, id_)


def message_value(value: Any, typename: str | None, encoding: str | None) -> TypedValue:
    """A batch message's value as the single route would make it from a body
    (``BadInput`` if it cannot be one)."""
    if encoding is not None:
        if encoding != "base64":
            raise BadInput(400, "bad_request", f"encoding must be base64, not {encoding!r}")
        if typename is None:
            raise BadInput(400, "missing_type", "a base64 value needs a type")
        if not isinstance(value, str):
            raise BadInput(400, "bad_value", "a base64 value must be a string")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(400, "bad_value", "the value is not valid base64") from None
        return value_from_http(raw, "application/octet-stream", typename)
    if typename is None:
        if not isinstance(value, str):
            raise BadInput(
                400, "missing_type", "a value other than a string needs a type naming its type"
            )
        return value_from_http(value.encode("utf-8"), "text/plain", None)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return value_from_http(text.encode("utf-8"), "application/json", typename)


async def read_batch(
    body: bytes,
    content_type: str | None,
    grant: Grant | None,
    refuses: Callable[[TypeName], Awaitable[str | None]],
    max_message_bytes: int,
) -> list[tuple[Address, TypedValue]]:
    """Every message of a batch body, checked (see the module docstring), or
    :class:`Rejected` naming the first problem; ``grant``: the caller's token's, whose
    function patterns every message's type must match (None: no tokens); ``refuses``:
    why an endpoint takes no messages of a type (``RuntimeBase.refuses``)."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise Rejected(
            error(
                415,
                "unsupported_media_type",
                f"a batch is application/json, not {content_type or '(none)'!r}",
            )
        )
    try:
        document = json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise Rejected(error(400, "bad_request", f"the body is not valid JSON: {e}")) from None
    entries = document.get("messages") if isinstance(document, dict) else None
    if not isinstance(entries, list) or set(document) != {"messages"}:
        raise Rejected(
            error(400, "bad_request", 'the body must be {"messages": [...]} and nothing else')
        )
    if not entries:
        raise Rejected(error(400, "bad_request", "the batch has no messages"))
    if len(entries) > MAX_BATCH_MESSAGES:
        raise Rejected(
            error(
                413,
                "too_many_messages",
                f"the batch has {len(entries)} messages, over the limit of {MAX_BATCH_MESSAGES}",
            )
        )
    targets: list[Address] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise _refused(400, "bad_request", index, "must be an object with an address")
        if unknown := set(entry) - _KEYS:
            raise _refused(400, "bad_request", index, f"unknown keys {sorted(unknown)}")
        if "value" not in entry:
            raise _refused(400, "bad_request", index, "has no value")
        for name in ("type", "encoding"):
            if name in entry and not isinstance(entry[name], str):
                raise _refused(400, "bad_request", index, f"its {name} must be a string")
        try:
            target = batch_address(entry["address"])
        except InvalidNameError as e:
            raise _refused(400, "bad_address", index, str(e)) from None
        if grant is not None and not grant.reaches(str(target.function_type)):
            raise _refused(
                403,
                "forbidden",
                index,
                f"this token does not reach function type {target.function_type}",
            )
        targets.append(target)
    refused: dict[TypeName, str | None] = {}
    for index, target in enumerate(targets):
        function_type = target.function_type
        if function_type not in refused:
            refused[function_type] = await refuses(function_type)
        if (why := refused[function_type]) is not None:
            raise _refused(404, "unknown_function_type", index, why)
    messages = []
    for index, (entry, target) in enumerate(zip(entries, targets, strict=True)):
        try:
            value = message_value(entry["value"], entry.get("type"), entry.get("encoding"))
        except BadInput as e:
            raise _refused(e.status, e.error, index, e.detail) from None
        except ValueError as e:  # a float JSON cannot carry
            raise _refused(400, "bad_value", index, str(e)) from None
        if value.value is not None and len(value.value) > max_message_bytes:
            raise _refused(
                413,
                "body_too_large",
                index,
                f"the value is over the limit of {max_message_bytes} bytes",
            )
        messages.append((target, value))
    return messages
