"""The few pieces of the protobuf wire format the contract needs by hand.

Used for StateFun's built-in wrapper types and its ``KafkaProducerRecord``: single
messages of a handful of scalar fields, on the hot path. Full protobuf messages (the
StateFun request-reply protocol) use the ``protobuf`` library instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from statefun.errors import ValueTypeError

WIRE_VARINT, WIRE_64, WIRE_LEN, WIRE_32 = 0, 1, 2, 5


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def len_field(field: int, payload: bytes) -> bytes:
    """A length-delimited field, omitted when empty (proto3 default)."""
    if not payload:
        return b""
    return encode_varint(field << 3 | WIRE_LEN) + encode_varint(len(payload)) + payload


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueTypeError("malformed protobuf varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def iter_fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """``(field number, wire type, payload)`` for every field of a serialized message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        payload: bytes | int
        if wire_type == WIRE_VARINT:
            payload, pos = _read_varint(data, pos)
        elif wire_type == WIRE_64:
            payload, pos = data[pos : pos + 8], pos + 8
        elif wire_type == WIRE_32:
            payload, pos = data[pos : pos + 4], pos + 4
        elif wire_type == WIRE_LEN:
            size, pos = _read_varint(data, pos)
            payload, pos = data[pos : pos + size], pos + size
        else:
            raise ValueTypeError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(data):
            raise ValueTypeError("truncated protobuf field")
        yield field, wire_type, payload
