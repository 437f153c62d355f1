"""Exactly-once Kafka egress through Kafka transactions: each checkpoint's records and
its marker in one transaction; a restarted runtime reads the marker to learn what is
out (so it does not publish it again) and fences the runtime before it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from runtime.checkpoints.snapshot import EgressItem
from runtime.egress import ID_HEADER, Egresses
from runtime.kafka_clusters import KafkaClusters
from runtime.log import LogError, Record
from runtime.log.kafka import KafkaLog
from runtime.log.kafka_transactions import TransactionalPublisher
from runtime.routing import Topics
from statefun.address import TypeName
from statefun.egress import KAFKA_PRODUCER_RECORD_TYPENAME, KafkaProducerRecord
from statefun.module_spec import parse_module_spec
from statefun.values import TypedValue

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


def read_committed(
    bootstrap: str, topic: str
) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        allow_auto_create_topics=False,
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        out: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
        for _ in range(50):
            if consumer.position(tp) >= end:
                break
            for records in consumer.poll(timeout_ms=200).values():
                out += [(r.key, r.value, dict(r.headers)) for r in records]
        return out
    finally:
        consumer.close()


def test_a_publisher_commits_records_with_a_marker_and_a_new_one_learns_it(
    kafka_bootstrap: str,
) -> None:
    async def scenario() -> tuple[int, int, int, str]:
        cluster = await KafkaLog.open(kafka_bootstrap)
        try:
            await cluster.ensure_topic("out", 1)
            first = await TransactionalPublisher.open(cluster, "app-egress-0", "app-markers")
            fresh = first.published_through
            records = [("out", 0, Record(value=b"v%d" % i, key=b"k")) for i in range(3)]
            await first.publish(3, records)
            # a restart: the new publisher reads the marker, and fences the old one
            second = await TransactionalPublisher.open(cluster, "app-egress-0", "app-markers")
            learned = second.published_through
            try:
                await first.publish(4, [("out", 0, Record(value=b"zombie"))])
                fenced = "no"
            except LogError as e:
                fenced = str(e)
            await second.publish(5, [("out", 0, Record(value=b"v3"))])
            third = await TransactionalPublisher.open(cluster, "app-egress-0", "app-markers")
            for publisher in (first, second, third):
                await publisher.close()
            return fresh, learned, third.published_through, fenced
        finally:
            await cluster.close()

    fresh, learned, latest, fenced = asyncio.run(scenario())
    assert (fresh, learned, latest) == (0, 3, 5)
    assert "Fenced" in fenced
    assert [v for _, v, _ in read_committed(kafka_bootstrap, "out")] == [b"v0", b"v1", b"v2", b"v3"]
    assert [v for _, v, _ in read_committed(kafka_bootstrap, "app-markers")] == [b"3", b"5"]


def _item(egress: str, epoch: int, value: bytes) -> EgressItem:
    record = KafkaProducerRecord("numbers", value, "key")
    return EgressItem(
        f"1.{epoch}.{value.decode()}",
        TypeName.parse(egress),
        TypedValue(KAFKA_PRODUCER_RECORD_TYPENAME, record.encode()),
        epoch,
    )


def test_egresses_publish_exactly_once_kafka_records_in_transactions_and_remember_them(
    kafka_bootstrap: str,
) -> None:
    module = parse_module_spec(
        f"""
kind: io.statefun.kafka.v1/egress
spec:
  id: test/exact
  address: {kafka_bootstrap}
  deliverySemantic: {{type: exactly-once, transactionTimeout: 30s}}
"""
    )
    topics = Topics("txn-test")

    async def egresses() -> tuple[Egresses, KafkaClusters, KafkaLog]:
        own = await KafkaLog.open(kafka_bootstrap)
        clusters = KafkaClusters(own, None)
        out = Egresses(own, topics, module, clusters)
        await out.start()
        return out, clusters, own

    async def close(out: Egresses, clusters: KafkaClusters, own: KafkaLog) -> None:
        await out.close()
        await clusters.close()
        await own.close()

    async def scenario() -> list[Any]:
        out, clusters, own = await egresses()
        items = [_item("test/exact", 2, b"a"), _item("test/exact", 3, b"b")]
        assert not any(out.published_already(i) for i in items)
        await out.publish_committed(3, items)
        await close(out, clusters, own)
        # a restart after the records were out, before the checkpoint store noted it
        out, clusters, own = await egresses()
        seen = [out.published_already(i) for i in [*items, _item("test/exact", 4, b"c")]]
        await close(out, clusters, own)
        return seen

    assert asyncio.run(scenario()) == [True, True, False]
    records = read_committed(kafka_bootstrap, "numbers")
    assert [(k, v) for k, v, _ in records] == [(b"key", b"a"), (b"key", b"b")]
    assert [h[ID_HEADER] for _, _, h in records] == [b"1.2.a", b"1.3.b"]
    markers = read_committed(kafka_bootstrap, topics.egress_markers(0))
    assert [v for _, v, _ in markers] == [b"3"]
