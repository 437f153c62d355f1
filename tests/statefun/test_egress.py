"""KafkaProducerRecord bytes as the official StateFun SDK writes them."""

import pytest

from statefun.egress import KafkaProducerRecord
from statefun.errors import ValueTypeError


def test_kafka_producer_record_matches_the_official_sdk() -> None:
    record = KafkaProducerRecord("topic-x", "héllo".encode(), "k1")
    assert record.encode().hex() == "0a026b31120668c3a96c6c6f1a07746f7069632d78"
    assert KafkaProducerRecord.decode(record.encode()) == record


def test_an_empty_key_is_a_null_key() -> None:
    record = KafkaProducerRecord("t", b"")
    assert record.encode().hex() == "1a0174"
    assert KafkaProducerRecord.decode(bytes.fromhex("1a0174")) == KafkaProducerRecord(
        "t", b"", None
    )


def test_a_record_without_topic_is_rejected() -> None:
    with pytest.raises(ValueTypeError, match="needs a topic"):
        KafkaProducerRecord.decode(bytes.fromhex("1203616263"))
