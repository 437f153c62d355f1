import json
import random
from typing import Any

import pytest

from runtime import http_values
from runtime.errors import BadInput
from runtime.http_values import value_from_http, value_to_json
from statefun.values import (
    DoubleType,
    IntType,
    StringType,
    TypedValue,
    make_json_type,
    to_typed_value,
)


def test_text_plain_is_a_statefun_string() -> None:
    tv = value_from_http("Zoë".encode(), "text/plain; charset=utf-8", None)
    assert tv == to_typed_value(StringType, "Zoë")


@pytest.mark.parametrize(
    ("body", "content_type", "typename", "expected"),
    [
        (b"42", "application/json", "io.statefun.types/int", to_typed_value(IntType, 42)),
        (b"2", "text/plain", "io.statefun.types/double", to_typed_value(DoubleType, 2.0)),
        (b'"hi"', "application/json", "io.statefun.types/string", to_typed_value(StringType, "hi")),
        (b"hi", "text/plain", "io.statefun.types/string", to_typed_value(StringType, "hi")),
        (
            b'{"a": 1}',
            "application/json",
            "com.example/Thing",
            TypedValue("com.example/Thing", b'{"a": 1}'),
        ),
        (
            b"\x00\x01",
            "application/octet-stream",
            "com.example/Blob",
            TypedValue("com.example/Blob", b"\x00\x01"),
        ),
        (
            b"\x0d\x07\x00\x00\x00",
            "application/octet-stream",
            "io.statefun.types/int",
            to_typed_value(IntType, 7),
        ),
    ],
)
def test_typed_bodies(body: bytes, content_type: str, typename: str, expected: TypedValue) -> None:
    assert value_from_http(body, content_type, typename) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "typename", "status", "error"),
    [
        (b"{}", "application/json", None, 400, "missing_type"),
        (b"x", "application/x-www-form-urlencoded", None, 415, "unsupported_media_type"),
        (b"x", None, None, 415, "unsupported_media_type"),
        (b"x", "text/plain; charset=latin-1", None, 415, "unsupported_media_type"),
        (b"\xff", "text/plain", None, 400, "bad_value"),
        (b"{nope", "application/json", "com.example/Thing", 400, "bad_value"),
        (b"NaN", "application/json", "com.example/Thing", 400, "bad_value"),
        (b"1", "application/json", "no-slash", 400, "bad_type"),
        (b'"x"', "application/json", "io.statefun.types/int", 400, "bad_value"),
        (b"99999999999", "application/json", "io.statefun.types/int", 400, "bad_value"),
    ],
)
def test_bad_bodies(
    body: bytes, content_type: str | None, typename: str | None, status: int, error: str
) -> None:
    with pytest.raises(BadInput) as info:
        value_from_http(body, content_type, typename)
    assert (info.value.status, info.value.error) == (status, error)
    assert info.value.detail


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (to_typed_value(IntType, 3), {"type": "io.statefun.types/int", "value": 3}),
        (to_typed_value(StringType, "hé"), {"type": "io.statefun.types/string", "value": "hé"}),
        (
            to_typed_value(DoubleType, float("inf")),
            {"type": "io.statefun.types/double", "value": "inf"},
        ),
        (to_typed_value(make_json_type("a/B"), {"x": [1]}), {"type": "a/B", "value": {"x": [1]}}),
        (
            TypedValue("a/Bin", b"\xff\x00"),
            {"type": "a/Bin", "value": "/wA=", "encoding": "base64"},
        ),
        (
            TypedValue("a/Text", b"plain words"),
            {"type": "a/Text", "value": "cGxhaW4gd29yZHM=", "encoding": "base64"},
        ),
        (TypedValue("a/None", None), {"type": "a/None", "value": None}),
    ],
)
def test_values_as_json(value: TypedValue, shown: dict[str, Any]) -> None:
    assert value_to_json(value) == shown


def test_a_bad_type_name_is_refused_every_time_and_a_good_one_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_values, "_VALID_TYPE_NAMES", set())
    for _ in range(2):
        with pytest.raises(BadInput) as refused:
            value_from_http(b"1", "application/json", "no-slash")
        assert refused.value.error == "bad_type"
    assert not http_values._VALID_TYPE_NAMES
    for _ in range(2):
        assert value_from_http(b"1", "application/json", "io.statefun.types/int").typename == (
            "io.statefun.types/int"
        )
    assert sorted(http_values._VALID_TYPE_NAMES) == ["io.statefun.types/int"]


def test_json_bodies_are_decoded_in_the_encoding_json_detects() -> None:
    texts = ["1", "[1,2]", '{"a":"\u00e9"}']
    encodings = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"]
    bodies = [t.encode(e) for t in texts for e in [*encodings, "utf-32-le", "utf-32-be"]]
    alphabet = [0x00, 0x01, 0x31, 0x7B, 0xBB, 0xBF, 0xEF, 0xFE, 0xFF]
    rng = random.Random(12)
    bodies += [bytes(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(5000)]
    assert [http_values._json_encoding(b) for b in bodies] == [
        json.detect_encoding(b) for b in bodies
    ]
    for e in encodings:
        assert value_from_http('{"a":"\u00e9"}'.encode(e), "application/json", "x/y").value == (
            '{"a":"\u00e9"}'.encode(e)
        )
