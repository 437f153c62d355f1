"""Typed values and the type system.

Owns ``TypedValue`` (a type name plus bytes, or no value) and the ``Type`` objects
that turn Python values into those bytes and back: the six built-in types, which are
byte-compatible with Apache Flink StateFun's protobuf wrapper messages, JSON types
(``make_json_type``), protobuf types (``make_protobuf_type``) and any user type
(``simple_type``).

The built-in wrappers are a single protobuf field ``value = 1``; they are encoded
here with ``struct`` rather than generated protobuf classes because they sit on the
hot path of every message and need nothing of protobuf beyond that one field.
"""

from __future__ import annotations

import abc
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from statefun._protowire import WIRE_32, WIRE_64, WIRE_LEN, WIRE_VARINT, iter_fields, len_field
from statefun.address import TypeName
from statefun.errors import ValueTypeError

__all__ = [
    "BUILTIN_TYPES",
    "BoolType",
    "DoubleType",
    "FloatType",
    "IntType",
    "LongType",
    "StringType",
    "Type",
    "TypeSerializer",
    "TypedValue",
    "from_typed_value",
    "make_json_type",
    "make_protobuf_type",
    "simple_type",
    "to_typed_value",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TypedValue:
    """A value on the wire: its type name and its bytes; ``value is None`` means no value.

    What a message or a state is made of; ``Message.typed_value`` gives it.

    Example:

    ```python
    >>> from sdk import IntType, TypedValue, message_builder
    >>> message_builder("example/counter", "c1", int_value=1).typed_value
    TypedValue(typename='io.statefun.types/int', value=b'\\r\\x01\\x00\\x00\\x00')
    >>> TypedValue("io.statefun.types/int").has_value
    False

    ```
    """

    typename: str
    value: bytes | None = None

    @property
    def has_value(self) -> bool:
        return self.value is not None


class TypeSerializer(abc.ABC, Generic[T]):
    """Turns values of one type into bytes and back: what a :class:`Type`'s
    ``serializer()`` returns. Subclass it for a type of your own, or let
    :func:`simple_type` make one from two functions.

    Example:

    ```python
    >>> from sdk import Type, TypeSerializer
    >>> class Point:
    ...     def __init__(self, x: int, y: int) -> None:
    ...         self.x, self.y = x, y
    >>> class PointSerializer(TypeSerializer[Point]):
    ...     def serialize(self, value: Point) -> bytes:
    ...         return f"{value.x},{value.y}".encode()
    ...     def deserialize(self, data: bytes) -> Point:
    ...         x, y = data.split(b",")
    ...         return Point(int(x), int(y))
    >>> class PointType(Type[Point]):
    ...     def serializer(self) -> TypeSerializer[Point]:
    ...         return PointSerializer()
    >>> point = PointType("geo/Point")
    >>> point.serializer().deserialize(point.serializer().serialize(Point(1, 2))).y
    2

    ```
    """

    __slots__ = ()

    @abc.abstractmethod
    def serialize(self, value: T) -> bytes: ...

    @abc.abstractmethod
    def deserialize(self, data: bytes) -> T: ...


class Type(abc.ABC, Generic[T]):
    """A value type: a type name and a serializer, as in the StateFun SDK.

    Every state (``ValueSpec``) and every message value has one. Use the built-in
    types, :func:`make_json_type`, :func:`make_protobuf_type` or :func:`simple_type`;
    subclass it (with a :class:`TypeSerializer`) only for full control.

    Example:

    ```python
    >>> from sdk import IntType, make_json_type
    >>> IntType.typename
    'io.statefun.types/int'
    >>> make_json_type("shop/Cart").serializer().serialize({"items": []})
    b'{"items": []}'

    ```
    """

    __slots__ = ("typename",)

    def __init__(self, typename: str):
        TypeName.parse(typename)
        self.typename = typename

    @abc.abstractmethod
    def serializer(self) -> TypeSerializer[T]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.typename!r})"


class _FunctionSerializer(TypeSerializer[T]):
    __slots__ = ("_deserialize", "_serialize")

    def __init__(self, serialize: Callable[[T], bytes], deserialize: Callable[[bytes], T]):
        self._serialize = serialize
        self._deserialize = deserialize

    def serialize(self, value: T) -> bytes:
        data = self._serialize(value)
        if not isinstance(data, bytes | bytearray):
            raise ValueTypeError(f"serialize_fn returned {type(data).__name__}, not bytes")
        return bytes(data)

    def deserialize(self, data: bytes) -> T:
        return self._deserialize(data)


class SimpleType(Type[T]):
    """A user type defined by two functions."""

    __slots__ = ("_serializer",)

    def __init__(
        self,
        typename: str,
        serialize_fn: Callable[[T], bytes],
        deserialize_fn: Callable[[bytes], T],
    ):
        super().__init__(typename)
        if serialize_fn is None or deserialize_fn is None:
            raise ValueError("simple_type needs both serialize_fn and deserialize_fn")
        self._serializer = _FunctionSerializer(serialize_fn, deserialize_fn)

    def serializer(self) -> TypeSerializer[T]:
        return self._serializer


def simple_type(
    typename: str, serialize_fn: Callable[[Any], bytes], deserialize_fn: Callable[[bytes], Any]
) -> Type[Any]:
    """A type named ``typename`` whose values ``serialize_fn`` and ``deserialize_fn`` convert.

    Example:

    ```python
    >>> from datetime import date
    >>> from sdk import ValueSpec, simple_type
    >>> Day = simple_type("calendar/Day", lambda d: d.isoformat().encode(), lambda b: date.fromisoformat(b.decode()))
    >>> Day.serializer().deserialize(b"2026-12-05")
    datetime.date(2026, 12, 5)
    >>> spec = ValueSpec("last_seen", Day)

    ```
    """
    return SimpleType(typename, serialize_fn, deserialize_fn)


class JsonType(SimpleType[Any]):
    """A type whose values are UTF-8 JSON text (``json.dumps(..., ensure_ascii=False)``)."""

    __slots__ = ()

    def __init__(self, typename: str):
        super().__init__(typename, _json_dumps, json.loads)


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def make_json_type(typename: str) -> Type[Any]:
    """A type named ``typename`` whose values are JSON, byte-compatible with StateFun's.

    Values are whatever ``json.dumps`` takes (dicts, lists, str, numbers, bool); the
    ingress takes them as ``application/json`` with ``?type=typename``.

    Example:

    ```python
    >>> from sdk import ValueSpec, make_json_type, message_builder
    >>> Cart = make_json_type("shop/Cart")
    >>> spec = ValueSpec("cart", Cart)
    >>> message_builder("shop/cart", "u1", value={"add": "apple"}, value_type=Cart).as_type(Cart)
    {'add': 'apple'}

    ```
    """
    return JsonType(typename)


def make_protobuf_type(cls: Any, namespace: str = "type.googleapis.com") -> Type[Any]:
    """A type for a generated protobuf message class, named ``namespace/<full message name>``.

    Example:

    ```python
    >>> from google.protobuf.wrappers_pb2 import StringValue
    >>> from sdk import make_protobuf_type
    >>> Text = make_protobuf_type(StringValue)
    >>> Text.typename
    'type.googleapis.com/google.protobuf.StringValue'
    >>> Text.serializer().deserialize(Text.serializer().serialize(StringValue(value="hi"))).value
    'hi'

    ```
    """
    name = cls.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        message = cls()
        message.ParseFromString(data)
        return message

    return simple_type(f"{namespace}/{name}", lambda m: m.SerializeToString(), deserialize)


# --- built-in types: protobuf wrapper messages with one field `value = 1` -----------------


def _wrapper_field(data: bytes, wire_type: int, typename: str) -> bytes | int | None:
    """The payload of field 1 in a wrapper message (the last one wins), None if absent."""
    found: bytes | int | None = None
    try:
        for field, wt, payload in iter_fields(data):
            if field == 1:
                if wt != wire_type:
                    raise ValueTypeError(f"field 1 has wire type {wt}, expected {wire_type}")
                found = payload
    except ValueTypeError as e:
        raise ValueTypeError(f"bytes are not a valid {typename} value: {e}") from None
    return found


class _WrapperSerializer(TypeSerializer[Any]):
    __slots__ = ("_decode", "_encode")

    def __init__(self, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]):
        self._encode = encode
        self._decode = decode

    def serialize(self, value: Any) -> bytes:
        return self._encode(value)

    def deserialize(self, data: bytes) -> Any:
        return self._decode(data)


class BuiltinType(Type[T]):
    """One of StateFun's six built-in types; ``python_type`` is the Python type of its values."""

    __slots__ = ("_serializer", "python_type")

    def __init__(
        self,
        typename: str,
        python_type: type,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
    ):
        super().__init__(typename)
        self.python_type = python_type
        self._serializer = _WrapperSerializer(encode, decode)

    def serializer(self) -> TypeSerializer[T]:
        return self._serializer


def _fixed(
    typename: str, key: bytes, fmt: str, wire: int, check: Callable[[Any], None]
) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    packer = struct.Struct(fmt)

    def encode(value: Any) -> bytes:
        check(value)
        if value == 0:
            return b""
        try:
            return key + packer.pack(value)
        except (struct.error, OverflowError) as e:
            raise ValueTypeError(f"{value!r} does not fit {typename}: {e}") from None

    def decode(data: bytes) -> Any:
        payload = _wrapper_field(data, wire, typename)
        if payload is None:
            return packer.unpack(bytes(packer.size))[0]
        assert isinstance(payload, bytes)
        return packer.unpack(payload)[0]

    return encode, decode


def _integer_check(typename: str, bits: int) -> Callable[[Any], None]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueTypeError(f"{typename} needs an int, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueTypeError(f"{value} is out of range for {typename}")

    return check


def _real_check(typename: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueTypeError(f"{typename} needs a float, got {type(value).__name__}")

    return check


def _encode_bool(value: Any) -> bytes:
    if not isinstance(value, bool):
        raise ValueTypeError(f"io.statefun.types/bool needs a bool, got {type(value).__name__}")
    return b"\x08\x01" if value else b""


def _decode_bool(data: bytes) -> bool:
    payload = _wrapper_field(data, WIRE_VARINT, "io.statefun.types/bool")
    return bool(payload)


def _encode_string(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueTypeError(f"io.statefun.types/string needs a str, got {type(value).__name__}")
    return len_field(1, value.encode("utf-8"))


def _decode_string(data: bytes) -> str:
    payload = _wrapper_field(data, WIRE_LEN, "io.statefun.types/string")
    if payload is None:
        return ""
    assert isinstance(payload, bytes)
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueTypeError("io.statefun.types/string value is not UTF-8") from None


_INT = "io.statefun.types/int"
_LONG = "io.statefun.types/long"
_FLOAT = "io.statefun.types/float"
_DOUBLE = "io.statefun.types/double"

IntType: BuiltinType[int] = BuiltinType(
    _INT, int, *_fixed(_INT, b"\x0d", "<i", WIRE_32, _integer_check(_INT, 32))
)
"""32-bit signed integers (``io.statefun.types/int``); ``message_builder(..., int_value=)``. Byte-compatible with StateFun's built-in type.

Example:

```python
>>> from sdk import IntType
>>> IntType.serializer().deserialize(IntType.serializer().serialize(42))
42

```
"""
LongType: BuiltinType[int] = BuiltinType(
    _LONG, int, *_fixed(_LONG, b"\x09", "<q", WIRE_64, _integer_check(_LONG, 64))
)
"""64-bit signed integers (``io.statefun.types/long``); ``long_value=``. Byte-compatible with StateFun's built-in type.

Example:

```python
>>> from sdk import LongType
>>> LongType.serializer().deserialize(LongType.serializer().serialize(2**40))
1099511627776

```
"""
FloatType: BuiltinType[float] = BuiltinType(
    _FLOAT, float, *_fixed(_FLOAT, b"\x0d", "<f", WIRE_32, _real_check(_FLOAT))
)
"""32-bit floats (``io.statefun.types/float``); ``float_value=``. Byte-compatible with StateFun's built-in type.

Example:

```python
>>> from sdk import FloatType
>>> FloatType.serializer().deserialize(FloatType.serializer().serialize(0.5))
0.5

```
"""
DoubleType: BuiltinType[float] = BuiltinType(
    _DOUBLE, float, *_fixed(_DOUBLE, b"\x09", "<d", WIRE_64, _real_check(_DOUBLE))
)
"""64-bit floats (``io.statefun.types/double``); ``double_value=``. Byte-compatible with StateFun's built-in type.

Example:

```python
>>> from sdk import DoubleType
>>> DoubleType.serializer().deserialize(DoubleType.serializer().serialize(0.1))
0.1

```
"""
BoolType: BuiltinType[bool] = BuiltinType(
    "io.statefun.types/bool", bool, _encode_bool, _decode_bool
)
"""Booleans (``io.statefun.types/bool``); ``bool_value=``. Byte-compatible with StateFun's built-in type.

Example:

```python
>>> from sdk import BoolType
>>> BoolType.serializer().deserialize(BoolType.serializer().serialize(True))
True

```
"""
StringType: BuiltinType[str] = BuiltinType(
    "io.statefun.types/string", str, _encode_string, _decode_string
)
"""UTF-8 strings (``io.statefun.types/string``); ``str_value=``; what the ingress makes of a ``text/plain`` body. Byte-compatible with StateFun's built-in type.

Example:

```python
>>> from sdk import StringType
>>> StringType.serializer().deserialize(StringType.serializer().serialize("hé"))
'hé'

```
"""

BUILTIN_TYPES: dict[str, BuiltinType[Any]] = {
    t.typename: t for t in (IntType, LongType, FloatType, DoubleType, BoolType, StringType)
}


def to_typed_value(tpe: Type[T], value: T | None) -> TypedValue:
    """``value`` serialized as ``tpe``; ``None`` becomes "no value"."""
    if value is None:
        return TypedValue(tpe.typename, None)
    return TypedValue(tpe.typename, tpe.serializer().serialize(value))


def from_typed_value(tpe: Type[T], typed_value: TypedValue | None) -> T | None:
    """The Python value of ``typed_value`` read as ``tpe``; a different type name is an error."""
    if typed_value is None or typed_value.value is None:
        return None
    if typed_value.typename != tpe.typename:
        raise ValueTypeError(
            f"a value of type {typed_value.typename} cannot be read as {tpe.typename}"
        )
    return tpe.serializer().deserialize(typed_value.value)
