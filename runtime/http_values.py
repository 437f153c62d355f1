"""Values as HTTP clients see them: request bodies in, JSON out.

In: ``text/plain`` is a ``io.statefun.types/string``; with ``?type=T``, a JSON or text
body for a built-in ``T`` is converted to its wire form, a JSON body for another ``T``
is taken as that JSON type's bytes, and any other body is taken as raw bytes of ``T``.

Out: built-in values as their JSON value; other values as parsed JSON when their bytes
are UTF-8 JSON text, otherwise base64 with ``"encoding": "base64"``.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from runtime.errors import BadInput
from statefun.address import TypeName
from statefun.errors import InvalidNameError, ValueTypeError
from statefun.values import BUILTIN_TYPES, StringType, TypedValue

_TEXT_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")


def _media_type(content_type: str | None) -> tuple[str, str | None]:
    if not content_type:
        return "", None
    media, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media.strip().lower(), charset


def _text(body: bytes, charset: str | None) -> str:
    if charset is not None and charset not in _TEXT_CHARSETS:
        raise BadInput(
            415, "unsupported_media_type", f"charset {charset} is not supported; use utf-8"
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(400, "bad_value", "the body is not valid UTF-8 text") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)
"""``json.loads`` with these options, made once (``loads`` makes a decoder per call)."""


_MAYBE_NOT_UTF8 = (b"\xef", b"\xfe", b"\xff")
"""First bytes of the byte-order marks of UTF-8 (EF), UTF-16 big-endian (FE) and UTF-16 or
UTF-32 little-endian (FF); UTF-32 big-endian's starts with a NUL."""


def _json_encoding(body: bytes) -> str:
    """``json.detect_encoding``, answering the common case first: without a byte-order
    mark (which starts with one of these bytes) or a NUL among the first four bytes
    (UTF-16 and UTF-32 text has one), JSON is UTF-8."""
    if body[:1] not in _MAYBE_NOT_UTF8 and b"\x00" not in body[:4]:
        return "utf-8"
    return json.detect_encoding(body)


def _json(body: bytes) -> Any:
    try:
        return _DECODER.decode(body.decode(_json_encoding(body), "surrogatepass"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(400, "bad_value", f"the body is not valid JSON: {e}") from None


_TYPE_NAMES_KEPT = 1024
_TYPE_NAME_KEPT_CHARS = 256
_VALID_TYPE_NAMES: set[str] = set()
"""``?type=`` names that passed their checks (a name once valid stays valid): the same
few come with nearly every request."""


def value_from_http(body: bytes, content_type: str | None, typename: str | None) -> TypedValue:
    media, charset = _media_type(content_type)
    if typename is None:
        if media == "text/plain":
            return TypedValue(
                StringType.typename, StringType.serializer().serialize(_text(body, charset))
            )
        if media == "application/json":
            raise BadInput(
                400,
                "missing_type",
                "an application/json body needs ?type=<namespace/name> naming its type",
            )
        raise BadInput(
            415,
            "unsupported_media_type",
            f"content type {content_type or '(none)'!r} needs ?type=<namespace/name>; "
            "send text/plain for a string, or application/json with ?type=",
        )
    if typename not in _VALID_TYPE_NAMES:
        try:
            TypeName.parse(typename)
        except InvalidNameError as e:
            raise BadInput(400, "bad_type", str(e)) from None
        if len(typename) <= _TYPE_NAME_KEPT_CHARS and len(_VALID_TYPE_NAMES) < _TYPE_NAMES_KEPT:
            _VALID_TYPE_NAMES.add(typename)
    builtin = BUILTIN_TYPES.get(typename)
    if builtin is not None and media in ("application/json", "text/plain"):
        if media == "text/plain" and builtin is StringType:
            value: Any = _text(body, charset)
        else:
            value = _json(body)
        if builtin.python_type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            return TypedValue(typename, builtin.serializer().serialize(value))
        except ValueTypeError as e:
            raise BadInput(400, "bad_value", str(e)) from None
    if media == "application/json":
        _json(body)
    return TypedValue(typename, body)


def value_to_json(value: TypedValue) -> dict[str, Any]:
    """``{"type": ..., "value": ...}``, plus ``"encoding": "base64"`` for opaque bytes."""
    if value.value is None:
        return {"type": value.typename, "value": None}
    builtin = BUILTIN_TYPES.get(value.typename)
    if builtin is not None:
        try:
            decoded = builtin.serializer().deserialize(value.value)
        except ValueTypeError:
            pass
        else:
            if isinstance(decoded, float) and not math.isfinite(decoded):
                decoded = str(decoded)
            return {"type": value.typename, "value": decoded}
    else:
        try:
            parsed = _DECODER.decode(value.value.decode("utf-8"))
            return {"type": value.typename, "value": parsed}
        except (ValueError, UnicodeDecodeError):
            pass
    return {
        "type": value.typename,
        "value": base64.b64encode(value.value).decode("ascii"),
        "encoding": "base64",
    }
