"""Egress records with a shape the runtime understands: StateFun's ``KafkaProducerRecord``.

A function sends ``TypedValue(KAFKA_PRODUCER_RECORD_TYPENAME, bytes)`` to a Kafka egress;
the bytes are the protobuf message ``KafkaProducerRecord { string key = 1; bytes
value_bytes = 2; string topic = 3; }`` (an empty key means a null Kafka key), byte for
byte as StateFun's SDK writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from statefun._protowire import WIRE_LEN, iter_fields, len_field
from statefun.errors import ValueTypeError

__all__ = ["KAFKA_PRODUCER_RECORD_TYPENAME", "KafkaProducerRecord"]

KAFKA_PRODUCER_RECORD_TYPENAME = "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord"


@dataclass(frozen=True, slots=True)
class KafkaProducerRecord:
    topic: str
    value: bytes
    key: str | None = None

    def encode(self) -> bytes:
        return (
            len_field(1, (self.key or "").encode("utf-8"))
            + len_field(2, self.value)
            + len_field(3, self.topic.encode("utf-8"))
        )

    @classmethod
    def decode(cls, data: bytes) -> KafkaProducerRecord:
        fields: dict[int, bytes] = {}
        try:
            for field, wire_type, payload in iter_fields(data):
                if field in (1, 2, 3):
                    if wire_type != WIRE_LEN or not isinstance(payload, bytes):
                        raise ValueTypeError(f"field {field} is not length-delimited")
                    fields[field] = payload
            key = fields.get(1, b"").decode("utf-8")
            topic = fields.get(3, b"").decode("utf-8")
        except (ValueTypeError, UnicodeDecodeError) as e:
            raise ValueTypeError(f"not a valid KafkaProducerRecord: {e}") from None
        if not topic:
            raise ValueTypeError("a KafkaProducerRecord needs a topic")
        return cls(topic, fields.get(2, b""), key or None)
