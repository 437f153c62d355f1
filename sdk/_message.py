"""Messages in and out of a function: ``Message``, ``EgressMessage`` and their builders.

Owns turning Python values into typed values for messages (``message_builder``'s value
keywords, shared with ``Context.reply``) and the Kafka egress record conversions.
Names are validated when a message is built, so a bad target fails at the line that
made it and sending it costs nothing more.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, TypeVar

from statefun.address import Address, TypeName
from statefun.egress import KAFKA_PRODUCER_RECORD_TYPENAME, KafkaProducerRecord
from statefun.errors import ValueTypeError
from statefun.values import (
    BoolType,
    DoubleType,
    FloatType,
    IntType,
    LongType,
    StringType,
    Type,
    TypedValue,
    TypeSerializer,
)

__all__ = [
    "EgressMessage",
    "Message",
    "egress_message_builder",
    "incoming_message",
    "kafka_egress_message",
    "message_builder",
    "serialize",
    "typed_value_from_keywords",
]

T = TypeVar("T")

_VALUE_KEYWORDS: dict[str, Type[Any]] = {
    "int_value": IntType,
    "long_value": LongType,
    "float_value": FloatType,
    "double_value": DoubleType,
    "bool_value": BoolType,
    "str_value": StringType,
}
_KEYWORDS_USAGE = (
    "pass exactly one of int_value=, long_value=, float_value=, double_value=, "
    "bool_value=, str_value=, or value= together with value_type="
)
_KAFKA_INT = struct.Struct(">i")
_KAFKA_DOUBLE = struct.Struct(">d")


# Validating a name costs microseconds (every character is checked) while functions
# send to the same addresses and egresses over and over, so valid ones are remembered.
@functools.lru_cache(maxsize=16384)
def _address(target_typename: str, target_id: str) -> Address:
    return Address.of(target_typename, target_id)


@functools.lru_cache(maxsize=1024)
def _egress_name(typename: str) -> TypeName:
    return TypeName.parse(typename)


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


def serialize(serializer: TypeSerializer[Any], typename: str, value: Any, subject: str) -> bytes:
    """``value`` serialized, or a ValueTypeError naming ``subject``, the type and the value's type.

    Any exception of the serializer counts: for user types a failing serializer is how
    a value of the wrong type shows itself.
    """
    try:
        return serializer.serialize(value)
    except Exception as e:
        raise ValueTypeError(
            f"{subject} is of type {typename} and cannot hold a value of Python type "
            f"{type(value).__name__}: {e}"
        ) from e


def _check_type(value_type: object) -> Type[Any]:
    if not isinstance(value_type, Type):
        raise TypeError(
            f"value_type must be a Type (IntType, make_json_type(...), ...), "
            f"not {type(value_type).__name__}"
        )
    return value_type


def typed_value_from_keywords(kwargs: dict[str, Any]) -> TypedValue:
    """The typed value that ``message_builder``'s value keywords describe."""
    if len(kwargs) == 1:
        ((keyword, value),) = kwargs.items()
        value_type = _VALUE_KEYWORDS.get(keyword)
        if value_type is None:
            if keyword == "value":
                raise ValueError("value= needs value_type= to say how to serialize it")
            raise ValueError(f"unknown value keyword {keyword}=; {_KEYWORDS_USAGE}")
    elif len(kwargs) == 2 and "value" in kwargs and "value_type" in kwargs:
        value, value_type = kwargs["value"], _check_type(kwargs["value_type"])
    else:
        given = ", ".join(f"{k}=" for k in kwargs) or "none"
        raise TypeError(f"wrong value keywords (given: {given}); {_KEYWORDS_USAGE}")
    if value is None:
        raise ValueError("a message needs a value, got None")
    return TypedValue(
        value_type.typename,
        serialize(value_type.serializer(), value_type.typename, value, "the message value"),
    )


class Message:
    """A message for a function: the target function type and id, and a typed value.

    Arriving messages are read with ``is_int()``/``as_int()`` and friends, or
    ``is_type(tpe)``/``as_type(tpe)`` for any type; reading a value as a type it is not
    raises :class:`~statefun.errors.ValueTypeError`. Build messages to send with
    :func:`message_builder`.

    Example:

    ```python
    >>> from sdk import IntType, message_builder
    >>> message = message_builder("example/counter", "c1", int_value=5)
    >>> message.target_typename, message.target_id
    ('example/counter', 'c1')
    >>> message.is_int(), message.as_int(), message.is_string()
    (True, 5, False)
    >>> message.is_type(IntType)
    True

    ```

    In a function, test before reading when several types may arrive:
    ``if message.is_string(): name = message.as_string()``.
    """

    __slots__ = ("_target", "_typed_value")

    _target: Address
    _typed_value: TypedValue

    def __init__(self, target_typename: str, target_id: str, typed_value: TypedValue) -> None:
        if not isinstance(typed_value, TypedValue):
            raise TypeError(f"typed_value must be a TypedValue, not {type(typed_value).__name__}")
        self._target = _address(
            _check_str(target_typename, "target_typename"), _check_str(target_id, "target_id")
        )
        self._typed_value = typed_value

    @property
    def target_typename(self) -> str:
        """The target function type, ``namespace/name``."""
        return self._target.typename

    @property
    def target_id(self) -> str:
        """The target function id."""
        return self._target.id

    @property
    def target(self) -> Address:
        """The target address."""
        return self._target

    @property
    def typed_value(self) -> TypedValue:
        """The value with its type name, as it travels."""
        return self._typed_value

    def is_int(self) -> bool:
        """Whether the value is an ``IntType``."""
        return self._typed_value.typename == IntType.typename

    def as_int(self) -> int | None:
        """The value as an ``IntType`` (ValueTypeError if it is another type)."""
        return self.as_type(IntType)

    def is_long(self) -> bool:
        """Whether the value is a ``LongType``."""
        return self._typed_value.typename == LongType.typename

    def as_long(self) -> int | None:
        """The value as a ``LongType`` (ValueTypeError if it is another type)."""
        return self.as_type(LongType)

    def is_float(self) -> bool:
        """Whether the value is a ``FloatType``."""
        return self._typed_value.typename == FloatType.typename

    def as_float(self) -> float | None:
        """The value as a ``FloatType`` (ValueTypeError if it is another type)."""
        return self.as_type(FloatType)

    def is_double(self) -> bool:
        """Whether the value is a ``DoubleType``."""
        return self._typed_value.typename == DoubleType.typename

    def as_double(self) -> float | None:
        """The value as a ``DoubleType`` (ValueTypeError if it is another type)."""
        return self.as_type(DoubleType)

    def is_bool(self) -> bool:
        """Whether the value is a ``BoolType``."""
        return self._typed_value.typename == BoolType.typename

    def as_bool(self) -> bool | None:
        """The value as a ``BoolType`` (ValueTypeError if it is another type)."""
        return self.as_type(BoolType)

    def is_string(self) -> bool:
        """Whether the value is a ``StringType`` (what a ``text/plain`` ingress body is)."""
        return self._typed_value.typename == StringType.typename

    def as_string(self) -> str | None:
        """The value as a ``StringType`` (ValueTypeError if it is another type)."""
        return self.as_type(StringType)

    def is_type(self, tpe: Type[Any]) -> bool:
        """Whether the value is of type ``tpe`` (compared by type name)."""
        return self._typed_value.typename == tpe.typename

    def as_type(self, tpe: Type[T]) -> T | None:
        """The value read as ``tpe``; None if the message carries no value."""
        typed_value = self._typed_value
        if typed_value.typename != tpe.typename:
            raise ValueTypeError(
                f"the message holds a value of type {typed_value.typename}, which cannot be "
                f"read as {tpe.typename}; check is_type() first"
            )
        data = typed_value.value
        if data is None:
            return None
        return tpe.serializer().deserialize(data)

    def value_typename(self) -> str:
        """The type name of the value, e.g. ``io.statefun.types/int``."""
        return self._typed_value.typename

    def raw_value(self) -> bytes | None:
        """The serialized value; None if there is none."""
        return self._typed_value.value

    def __repr__(self) -> str:
        return f"Message({self._target.typename!r}, {self._target.id!r}, {self._typed_value!r})"


def incoming_message(target: Address, typed_value: TypedValue) -> Message:
    """A message the runtime delivered; its parts are already valid, so nothing is checked."""
    message = Message.__new__(Message)
    message._target = target
    message._typed_value = typed_value
    return message


def message_builder(target_typename: str, target_id: str, **kwargs: Any) -> Message:
    """A message for function ``target_typename`` with id ``target_id``.

    The value is one keyword: ``int_value=``, ``long_value=``, ``float_value=``,
    ``double_value=``, ``bool_value=``, ``str_value=``, or ``value=`` with ``value_type=``.
    ``Context.reply`` takes the same keywords.

    Example:

    ```python
    >>> from sdk import make_json_type, message_builder
    >>> message_builder("example/greeter", "Alice", str_value="hi").as_string()
    'hi'
    >>> Order = make_json_type("shop/Order")
    >>> message_builder("shop/orders", "o-1", value={"sku": "x", "n": 2}, value_type=Order).as_type(Order)
    {'sku': 'x', 'n': 2}

    ```
    """
    return Message(target_typename, target_id, typed_value_from_keywords(kwargs))


class EgressMessage:
    """A record for the egress ``typename``, as :func:`egress_message_builder` and
    :func:`kafka_egress_message` build it; send it with ``context.send_egress``.

    Example:

    ```python
    >>> from sdk import StringType, egress_message_builder
    >>> record = egress_message_builder("example/greetings", "Hello Alice", StringType)
    >>> record.typename, record.value_typename()
    ('example/greetings', 'io.statefun.types/string')

    ```
    """

    __slots__ = ("_egress", "_typed_value")

    def __init__(self, typename: str, typed_value: TypedValue) -> None:
        if not isinstance(typed_value, TypedValue):
            raise TypeError(f"typed_value must be a TypedValue, not {type(typed_value).__name__}")
        self._egress = _egress_name(_check_str(typename, "the egress typename"))
        self._typed_value = typed_value

    @property
    def typename(self) -> str:
        """The egress id, ``namespace/name``."""
        return str(self._egress)

    @property
    def egress(self) -> TypeName:
        """The egress id, parsed."""
        return self._egress

    @property
    def typed_value(self) -> TypedValue:
        """The value with its type name, as it travels."""
        return self._typed_value

    def value_typename(self) -> str:
        """The type name of the value, e.g. ``io.statefun.types/int``."""
        return self._typed_value.typename

    def raw_value(self) -> bytes | None:
        """The serialized value; None if there is none."""
        return self._typed_value.value

    def __repr__(self) -> str:
        return f"EgressMessage({str(self._egress)!r}, {self._typed_value!r})"


def egress_message_builder(
    target_typename: str, value: Any, value_type: Type[Any]
) -> EgressMessage:
    """A record of ``value`` serialized as ``value_type`` for the egress ``target_typename``.

    The egress is declared in the module spec (``kind: statefun.v1/egress``, readable at
    ``GET /v1/egress/{namespace}/{name}``).

    Example:

    ```python
    def formatter(context: Context, message: Message) -> None:
        greeting = f"Hello {message.as_string()}"
        context.send_egress(egress_message_builder("example/greetings", greeting, StringType))
    ```
    """
    if value is None:
        raise ValueError("an egress message needs a value, got None")
    value_type = _check_type(value_type)
    data = serialize(value_type.serializer(), value_type.typename, value, "the egress value")
    return EgressMessage(target_typename, TypedValue(value_type.typename, data))


def _kafka_value_bytes(value: Any, value_type: Type[Any] | None) -> bytes:
    if value_type is not None:
        value_type = _check_type(value_type)
        return serialize(value_type.serializer(), value_type.typename, value, "the Kafka value")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    # Kafka's IntegerSerializer and DoubleSerializer: big-endian int32 and float64.
    if isinstance(value, int):
        try:
            return _KAFKA_INT.pack(value)
        except struct.error:
            raise ValueTypeError(
                f"{value} does not fit a Kafka integer (32 bits); pass value_type= to "
                "serialize it another way"
            ) from None
    if isinstance(value, float):
        return _KAFKA_DOUBLE.pack(value)
    raise ValueTypeError(
        f"cannot convert a {type(value).__name__} to Kafka bytes: pass a str, bytes, int or "
        "float, or give value_type="
    )


def kafka_egress_message(
    typename: str,
    topic: str,
    value: Any,
    value_type: Type[Any] | None = None,
    key: str | None = None,
) -> EgressMessage:
    """A record for the Kafka egress ``typename``, to be written to ``topic``.

    ``value`` is serialized with ``value_type`` if given; otherwise a str becomes UTF-8,
    bytes stay as they are, an int becomes a big-endian int32 and a float a big-endian
    double, as Kafka's own serializers write them. ``key`` is a UTF-8 string or None.
    The egress is declared in the module spec (``kind: io.statefun.kafka.v1/egress``).

    Example:

    ```python
    >>> from sdk import kafka_egress_message
    >>> record = kafka_egress_message("example/kafka-out", "greetings", "Hello Alice", key="Alice")
    >>> record.typename
    'example/kafka-out'

    ```
    """
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"a Kafka egress message needs a topic, got {topic!r}")
    if value is None:
        raise ValueError("a Kafka egress message needs a value, got None")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"a Kafka key must be a str or None, not {type(key).__name__}")
    record = KafkaProducerRecord(topic, _kafka_value_bytes(value, value_type), key)
    return EgressMessage(typename, TypedValue(KAFKA_PRODUCER_RECORD_TYPENAME, record.encode()))
