"""Messages and egress messages: the builders, the accessors and the Kafka records.

Expected bytes were produced by the official SDK (apache-flink-statefun 3.3.0), so
these tests pin byte compatibility with it.
"""

from __future__ import annotations

from typing import Any

import pytest

from sdk import (
    EgressMessage,
    IntType,
    Message,
    StringType,
    Type,
    TypedValue,
    egress_message_builder,
    kafka_egress_message,
    make_json_type,
    message_builder,
    simple_type,
)
from statefun.address import Address, TypeName
from statefun.egress import KAFKA_PRODUCER_RECORD_TYPENAME, KafkaProducerRecord
from statefun.errors import InvalidNameError, ValueTypeError

JSON = make_json_type("ex/json")


@pytest.mark.parametrize(
    ("kwargs", "typename", "hex_value"),
    [
        ({"int_value": 7}, "io.statefun.types/int", "0d07000000"),
        ({"long_value": -2}, "io.statefun.types/long", "09feffffffffffffff"),
        ({"float_value": 1.5}, "io.statefun.types/float", "0d0000c03f"),
        ({"double_value": 2.25}, "io.statefun.types/double", "090000000000000240"),
        ({"bool_value": True}, "io.statefun.types/bool", "0801"),
        ({"str_value": "héllo"}, "io.statefun.types/string", "0a0668c3a96c6c6f"),
        (
            {"value": {"a": [1, "é"]}, "value_type": JSON},
            "ex/json",
            "7b2261223a205b312c2022c3a9225d7d",
        ),
    ],
    ids=["int", "long", "float", "double", "bool", "str", "value+type"],
)
def test_message_builder_matches_the_official_sdk(
    kwargs: dict[str, Any], typename: str, hex_value: str
) -> None:
    message = message_builder("ex/f", "id-1", **kwargs)
    assert (message.target_typename, message.target_id) == ("ex/f", "id-1")
    assert message.target == Address("ex", "f", "id-1")
    assert message.typed_value == TypedValue(typename, bytes.fromhex(hex_value))


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({}, TypeError, "given: none"),
        ({"int_value": 1, "str_value": "x"}, TypeError, "given: int_value=, str_value="),
        ({"value": 1, "value_type": IntType, "extra": 2}, TypeError, "wrong value keywords"),
        ({"number": 1}, ValueError, "unknown value keyword number="),
        ({"value": 1}, ValueError, "value= needs value_type="),
        ({"int_value": None}, ValueError, "needs a value, got None"),
        ({"value": 1, "value_type": int}, TypeError, "value_type must be a Type"),
        (
            {"int_value": "seven"},
            ValueTypeError,
            "io.statefun.types/int and cannot hold a value of Python type str",
        ),
        ({"int_value": 2**40}, ValueTypeError, "out of range"),
        (
            {"value": {1, 2}, "value_type": JSON},
            ValueTypeError,
            "ex/json and cannot hold a value of Python type set",
        ),
    ],
)
def test_message_builder_errors(
    kwargs: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        message_builder("ex/f", "id", **kwargs)


@pytest.mark.parametrize(
    ("typename", "target_id"), [("no-slash", "id"), ("a/b/c", "id"), ("ex/f", ""), ("ex/f", "a\nb")]
)
def test_message_targets_are_validated(typename: str, target_id: str) -> None:
    with pytest.raises(InvalidNameError):
        message_builder(typename, target_id, int_value=1)


def test_message_target_parts_must_be_strings() -> None:
    bad_id: Any = 7
    with pytest.raises(TypeError, match="target_id must be a str, not int"):
        message_builder("ex/f", bad_id, int_value=1)


def test_message_needs_a_typed_value() -> None:
    bad: Any = b"raw"
    with pytest.raises(TypeError, match="must be a TypedValue"):
        Message("ex/f", "id", bad)


@pytest.mark.parametrize(
    ("kwargs", "check", "read", "expected"),
    [
        ({"int_value": -7}, "is_int", "as_int", -7),
        ({"long_value": 2**40}, "is_long", "as_long", 2**40),
        ({"float_value": 0.5}, "is_float", "as_float", 0.5),
        ({"double_value": 1e300}, "is_double", "as_double", 1e300),
        ({"bool_value": False}, "is_bool", "as_bool", False),
        ({"str_value": "héllo"}, "is_string", "as_string", "héllo"),
    ],
)
def test_message_accessors(kwargs: dict[str, Any], check: str, read: str, expected: Any) -> None:
    message = message_builder("ex/f", "id", **kwargs)
    checks = ["is_int", "is_long", "is_float", "is_double", "is_bool", "is_string"]
    assert [c for c in checks if getattr(message, c)()] == [check]
    assert getattr(message, read)() == expected


def test_message_of_any_type() -> None:
    message = message_builder("ex/f", "id", value={"k": [1, 2]}, value_type=JSON)
    assert message.is_type(JSON)
    assert not message.is_type(make_json_type("ex/other"))
    assert message.as_type(JSON) == {"k": [1, 2]}
    assert message.value_typename() == "ex/json"
    assert message.raw_value() == b'{"k": [1, 2]}'


def test_reading_a_message_as_another_type_names_both_types() -> None:
    message = message_builder("ex/f", "id", long_value=5)
    with pytest.raises(
        ValueTypeError, match=r"io\.statefun\.types/long.*read as io\.statefun\.types/int"
    ):
        message.as_int()
    with pytest.raises(ValueTypeError, match=r"io\.statefun\.types/long.*read as ex/json"):
        message.as_type(JSON)


def test_a_message_without_a_value_reads_as_none() -> None:
    message = Message("ex/f", "id", TypedValue("io.statefun.types/string", None))
    assert message.is_string()
    assert message.as_string() is None
    assert message.raw_value() is None


def test_a_message_is_read_only() -> None:
    message = message_builder("ex/f", "id", int_value=1)
    with pytest.raises(AttributeError):
        message.target_id = "other"  # type: ignore[misc]


def test_egress_message_builder() -> None:
    egress = egress_message_builder("ex/out", "x", StringType)
    assert egress.typename == "ex/out"
    assert egress.egress == TypeName("ex", "out")
    assert egress.typed_value == TypedValue("io.statefun.types/string", bytes.fromhex("0a0178"))
    assert egress.value_typename() == "io.statefun.types/string"
    assert egress.raw_value() == bytes.fromhex("0a0178")


@pytest.mark.parametrize(
    ("typename", "value", "value_type", "error", "fragment"),
    [
        ("ex/out", None, StringType, ValueError, "needs a value"),
        ("ex/out", "x", str, TypeError, "value_type must be a Type"),
        (
            "ex/out",
            1.5,
            IntType,
            ValueTypeError,
            "io.statefun.types/int and cannot hold a value of Python type float",
        ),
        ("no-slash", "x", StringType, InvalidNameError, "namespace/name"),
    ],
)
def test_egress_message_builder_errors(
    typename: str, value: Any, value_type: Any, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        egress_message_builder(typename, value, value_type)


def test_egress_message_needs_a_typed_value() -> None:
    bad: Any = "x"
    with pytest.raises(TypeError, match="must be a TypedValue"):
        EgressMessage("ex/out", bad)


@pytest.mark.parametrize(
    ("args", "kwargs", "hex_record"),
    [
        (("topic-x", "héllo"), {"key": "k1"}, "0a026b31120668c3a96c6c6f1a07746f7069632d78"),
        (("t", b""), {}, "1a0174"),
        (("t", bytearray(b"\x01")), {}, "1201011a0174"),
        (("t", 7), {}, "1204000000071a0174"),
        (("t", 2.5), {}, "120840040000000000001a0174"),
        (("t", {"x": 1}), {"value_type": make_json_type("ex/j")}, "12087b2278223a20317d1a0174"),
    ],
    ids=["str+key", "empty-bytes", "bytearray", "int", "float", "value_type"],
)
def test_kafka_egress_message_matches_the_official_sdk(
    args: tuple[str, Any], kwargs: dict[str, Any], hex_record: str
) -> None:
    egress = kafka_egress_message("a/b", *args, **kwargs)
    assert egress.typename == "a/b"
    assert egress.typed_value == TypedValue(
        KAFKA_PRODUCER_RECORD_TYPENAME, bytes.fromhex(hex_record)
    )


def test_kafka_int_is_a_big_endian_int32() -> None:
    egress = kafka_egress_message("a/b", "t", 7)
    assert egress.raw_value() is not None
    assert KafkaProducerRecord.decode(egress.raw_value() or b"").value == bytes.fromhex("00000007")


@pytest.mark.parametrize(
    ("topic", "value", "kwargs", "error", "fragment"),
    [
        ("", "x", {}, ValueError, "needs a topic"),
        ("t", None, {}, ValueError, "needs a value"),
        ("t", [1], {}, ValueTypeError, "cannot convert a list"),
        ("t", 2**31, {}, ValueTypeError, "does not fit a Kafka integer"),
        ("t", "x", {"key": 5}, TypeError, "key must be a str"),
        (
            "t",
            "x",
            {"value_type": IntType},
            ValueTypeError,
            "cannot hold a value of Python type str",
        ),
    ],
)
def test_kafka_egress_message_errors(
    topic: str, value: Any, kwargs: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        kafka_egress_message("a/b", topic, value, **kwargs)


def test_a_failing_user_serializer_is_reported_as_a_type_error() -> None:
    def serialize(value: Any) -> bytes:
        encoded: bytes = value.encode()  # AttributeError for anything but a str
        return encoded

    tpe: Type[Any] = simple_type("ex/text", serialize, bytes.decode)
    with pytest.raises(
        ValueTypeError, match=r"ex/text and cannot hold a value of Python type int: .*encode"
    ):
        message_builder("ex/f", "id", value=3, value_type=tpe)
