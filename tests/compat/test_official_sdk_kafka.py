"""StateFun's Kafka ingress and egress kinds driving official-SDK functions, with the
runtime's own log embedded and on Kafka."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import OfficialFunctions
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from statefun_app import state, statefun_module
from support import client, running_runtime, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def create_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": 2, "replication_factor": 1}})
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(10)
    finally:
        producer.close()


def consume(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list[tuple[bytes, bytes]] = []

        def enough() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((r.key, r.value) for r in records)
            return len(out) >= count

        wait_until(enough, timeout=20)
        return out
    finally:
        consumer.close()


def int_bytes(n: int) -> bytes:
    return b"\x0d" + n.to_bytes(4, "little")  # io.statefun.types/int


def string_bytes(text: str) -> bytes:
    data = text.encode()
    return b"\x0a" + bytes([len(data)]) + data  # io.statefun.types/string


def test_kafka_ingress_and_egress_with_official_sdk_functions(
    official: OfficialFunctions, ours_url: str, kafka_bootstrap: str, own_log: dict[str, Any]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    numbers, commands, out = f"numbers-{suffix}", f"commands-{suffix}", f"out-{suffix}"
    create_topic(kafka_bootstrap, numbers)
    create_topic(kafka_bootstrap, commands)
    # StateFun's Kafka kinds, unchanged; the address is left out when the runtime's own
    # log is on Kafka (then it is the runtime's cluster, as in StateFun)
    address = "" if "kafka" in own_log else f"\n  address: {kafka_bootstrap}"
    module = statefun_module(
        official.url,
        ours_url,
        extra=f"""---
kind: io.statefun.kafka.v1/ingress
spec:
  id: official/in{address}
  consumerGroupId: compat
  startupPosition:
    type: earliest
  topics:
    - topic: {numbers}
      valueType: io.statefun.types/int
      targets: [official/counter]
    - topic: {commands}
      valueType: io.statefun.types/string
      targets: [official/to_kafka]
---
kind: io.statefun.kafka.v1/egress
spec:
  id: official/kafka{address}
  deliverySemantic:
    type: at-least-once
""",
    )
    produce(
        kafka_bootstrap, numbers, [(b"a", int_bytes(5)), (b"b", int_bytes(1)), (b"a", int_bytes(2))]
    )
    produce(kafka_bootstrap, commands, [(b"x", string_bytes(out)), (b"y", string_bytes(out))])
    with running_runtime(module, **own_log) as rt, client(rt.url) as http:
        wait_until(lambda: state(http, "official/counter/a").get("count") == 7)
        assert state(http, "official/counter/b") == {"count": 1, "callers": [None]}
        produce(kafka_bootstrap, commands, [(b"x", string_bytes(out))])
        records = consume(kafka_bootstrap, out, 3)
    # the official SDK's KafkaProducerRecords: keyed by the function's id
    assert sorted(records) == [(b"x", b"x:1"), (b"x", b"x:2"), (b"y", b"y:1")]
