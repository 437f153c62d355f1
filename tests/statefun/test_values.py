"""The built-in types are byte-compatible with StateFun's protobuf wrappers.

The expected bytes are facts of StateFun's wire format (STATEFUN-PROTOCOL.md), taken
from the official apache-flink-statefun 3.3.0 SDK's serializers.
"""

from typing import Any

import pytest

from statefun.errors import InvalidNameError, ValueTypeError
from statefun.values import (
    BUILTIN_TYPES,
    BoolType,
    DoubleType,
    FloatType,
    IntType,
    LongType,
    StringType,
    Type,
    TypedValue,
    from_typed_value,
    make_json_type,
    simple_type,
    to_typed_value,
)

OFFICIAL_SDK_BYTES = [
    (IntType, 0, ""),
    (IntType, 1, "0d01000000"),
    (IntType, -1, "0dffffffff"),
    (IntType, 2**31 - 1, "0dffffff7f"),
    (IntType, -(2**31), "0d00000080"),
    (IntType, 300, "0d2c010000"),
    (LongType, 0, ""),
    (LongType, 1, "090100000000000000"),
    (LongType, -1, "09ffffffffffffffff"),
    (LongType, 2**63 - 1, "09ffffffffffffff7f"),
    (LongType, -(2**63), "090000000000000080"),
    (FloatType, 0.0, ""),
    (FloatType, 1.5, "0d0000c03f"),
    (FloatType, -2.25, "0d000010c0"),
    (DoubleType, 0.0, ""),
    (DoubleType, 3.141592653589793, "09182d4454fb210940"),
    (DoubleType, -1e300, "099c7500883ce437fe"),
    (BoolType, False, ""),
    (BoolType, True, "0801"),
    (StringType, "", ""),
    (StringType, "hello", "0a0568656c6c6f"),
    (StringType, "héllo ✓", "0a0a68c3a96c6c6f20e29c93"),
]


@pytest.mark.parametrize(("tpe", "value", "hex_bytes"), OFFICIAL_SDK_BYTES)
def test_builtin_types_match_statefun_bytes(tpe: Type[Any], value: Any, hex_bytes: str) -> None:
    assert tpe.serializer().serialize(value).hex() == hex_bytes
    assert tpe.serializer().deserialize(bytes.fromhex(hex_bytes)) == value


def test_builtin_typenames_are_statefuns() -> None:
    assert sorted(BUILTIN_TYPES) == [
        "io.statefun.types/bool",
        "io.statefun.types/double",
        "io.statefun.types/float",
        "io.statefun.types/int",
        "io.statefun.types/long",
        "io.statefun.types/string",
    ]


def test_negative_zero_is_omitted_like_protobuf_does() -> None:
    assert FloatType.serializer().serialize(-0.0) == b""
    assert DoubleType.serializer().serialize(-0.0) == b""


def test_decoding_skips_unknown_fields_and_takes_the_last_value() -> None:
    # field 2 (varint 5), then field 1 twice: protobuf keeps the last scalar
    data = bytes.fromhex("1005") + bytes.fromhex("0d01000000") + bytes.fromhex("0d02000000")
    assert IntType.serializer().deserialize(data) == 2


@pytest.mark.parametrize(
    ("tpe", "value", "problem"),
    [
        (IntType, 2**31, "out of range"),
        (IntType, "1", "needs an int"),
        (IntType, True, "needs an int"),
        (LongType, 2**63, "out of range"),
        (FloatType, "x", "needs a float"),
        (FloatType, 1e300, "does not fit"),
        (BoolType, 1, "needs a bool"),
        (StringType, b"x", "needs a str"),
    ],
)
def test_values_of_the_wrong_python_type_are_rejected(
    tpe: Type[Any], value: Any, problem: str
) -> None:
    with pytest.raises(ValueTypeError, match=problem):
        tpe.serializer().serialize(value)


@pytest.mark.parametrize(
    ("tpe", "hex_bytes"),
    [(IntType, "0801"), (StringType, "0a05ff"), (IntType, "0d0100"), (StringType, "0a02ffff")],
)
def test_malformed_wire_bytes_are_rejected(tpe: Type[Any], hex_bytes: str) -> None:
    with pytest.raises(ValueTypeError):
        tpe.serializer().deserialize(bytes.fromhex(hex_bytes))


def test_json_types_are_utf8_json_without_ascii_escapes() -> None:
    user = make_json_type("com.example/User")
    data = user.serializer().serialize({"name": "Zoë", "n": 1})
    assert data == b'{"name": "Zo\xc3\xab", "n": 1}'
    assert user.serializer().deserialize(data) == {"name": "Zoë", "n": 1}


def test_simple_type_uses_the_given_functions_and_checks_bytes() -> None:
    upper = simple_type("com.example/Upper", lambda s: s.upper().encode(), lambda b: b.decode())
    assert upper.serializer().serialize("abc") == b"ABC"
    broken = simple_type("com.example/Broken", lambda s: s, lambda b: b)
    with pytest.raises(ValueTypeError, match="not bytes"):
        broken.serializer().serialize("text")


def test_type_names_are_validated() -> None:
    with pytest.raises(InvalidNameError):
        make_json_type("no-namespace")


def test_typed_values_round_trip_and_check_their_type() -> None:
    tv = to_typed_value(IntType, 7)
    assert tv == TypedValue("io.statefun.types/int", bytes.fromhex("0d07000000"))
    assert tv.has_value
    assert from_typed_value(IntType, tv) == 7
    assert to_typed_value(IntType, None) == TypedValue("io.statefun.types/int", None)
    assert from_typed_value(IntType, TypedValue("io.statefun.types/int", None)) is None
    with pytest.raises(ValueTypeError, match=r"cannot be read as io\.statefun\.types/string"):
        from_typed_value(StringType, tv)
