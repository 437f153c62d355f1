"""Kafka transactions for exactly-once egress: one transaction per publication.

A :class:`TransactionalPublisher` owns a transactional producer on one Kafka cluster
(``transactional.id`` fixed per application and cluster, so a restarted runtime fences
the one before it and aborts its open transaction). Publishing the egress records of a
committed checkpoint writes them and a marker record (the checkpoint id, to a one-
partition marker topic) in one transaction: a ``read_committed`` reader sees all of them
or none, and after a crash the runtime reads the last committed marker to learn what is
out already, so nothing is published twice. On a broker that does not honour
transactions (the Tansu test broker shows aborted records to ``read_committed``
readers), a crash in the middle of a publication can still leave a partial one visible;
its records are published again with the same ids, which readers drop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from kafka import TopicPartition as KafkaTopicPartition

from runtime.log.base import Record
from runtime.log.kafka import KafkaLog, _call, _ClientThread, _close_producer

logger = logging.getLogger(__name__)

MARKER_KEY = b"published"
MARKER_LOOKBACK = 100
"""Offsets read back from the marker topic's end to find the last marker (transaction
control records take offsets too)."""


class TransactionalPublisher:
    """Publishes record batches on one cluster, each in a Kafka transaction with a marker.
    Use :meth:`open`."""

    def __init__(
        self, cluster: KafkaLog, thread: _ClientThread, producer: Any, marker_topic: str
    ) -> None:
        self._cluster = cluster
        self._thread = thread
        self._producer = producer
        self._marker_topic = marker_topic
        self._timeout = cluster.request_timeout
        self.published_through = 0
        """The checkpoint of the last committed publication (0: none)."""

    @classmethod
    async def open(
        cls,
        cluster: KafkaLog,
        transactional_id: str,
        marker_topic: str,
        transaction_timeout: float | None = None,
    ) -> TransactionalPublisher:
        """Create the producer, fence any earlier one with the same id (aborting its
        open transaction) and read the last committed marker. ``transaction_timeout``
        (seconds; None: the client's default of 60 s) bounds how long the broker keeps a
        transaction open before it aborts it."""
        timeout = (
            {}
            if transaction_timeout is None
            else {"transaction_timeout_ms": int(transaction_timeout * 1000)}
        )
        # Kept forever (a marker per publication, tiny): a marker expiring would make the
        # runtime believe nothing was published and publish it all again.
        await cluster.ensure_topic(marker_topic, 1, {"retention.ms": "-1"})
        thread = _ClientThread(f"{transactional_id}-producer", cluster.loop)

        def connect() -> Any:
            producer = cluster.new_producer(
                transactional_id=transactional_id, client_id=transactional_id, **timeout
            )
            try:
                producer.init_transactions()
            except Exception:
                _close_producer(producer, 0)
                raise
            return producer

        try:
            producer = await _call(
                thread,
                f"starting Kafka transactions ({transactional_id})",
                connect,
                3 * cluster.request_timeout,
            )
        except BaseException:
            thread.stop()
            raise
        publisher = cls(cluster, thread, producer, marker_topic)
        publisher.published_through = await _call(
            thread,
            f"reading the last marker of {marker_topic}",
            publisher._last_marker,
            3 * cluster.request_timeout,
        )
        return publisher

    def _last_marker(self) -> int:
        consumer = self._cluster.new_consumer("markers", isolation_level="read_committed")
        try:
            tp = KafkaTopicPartition(self._marker_topic, 0)
            consumer.assign([tp])
            end = consumer.end_offsets([tp], timeout_ms=int(self._timeout * 1000))[tp]
            if end == 0:
                return 0
            consumer.seek(tp, max(0, end - MARKER_LOOKBACK))
            last = 0
            deadline = time.monotonic() + self._timeout
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {self._marker_topic} to offset {end}")
                for record in consumer.poll(timeout_ms=200).get(tp, []):
                    last = max(last, int(record.value))
            return last
        finally:
            consumer.close()

    async def publish(self, checkpoint: int, records: Sequence[tuple[str, int, Record]]) -> None:
        """Write ``(topic, partition, record)``s and the marker of ``checkpoint`` in one
        transaction; raises (with the transaction aborted) if it does not commit."""

        def transaction() -> None:
            producer = self._producer
            producer.begin_transaction()
            try:
                for topic, partition, r in records:
                    producer.send(
                        topic,
                        value=r.value,
                        key=r.key,
                        headers=list(r.headers),
                        partition=partition,
                    )
                producer.send(
                    self._marker_topic, value=str(checkpoint).encode(), key=MARKER_KEY, partition=0
                )
                producer.commit_transaction()
            except Exception:
                with contextlib.suppress(Exception):
                    producer.abort_transaction()
                raise

        await _call(
            self._thread,
            f"publishing the egress of checkpoint {checkpoint} in a transaction",
            transaction,
            3 * self._timeout,
        )
        self.published_through = max(self.published_through, checkpoint)

    async def close(self) -> None:
        try:
            await _call(
                self._thread,
                "closing the transactional producer",
                lambda: _close_producer(self._producer, self._timeout),
                2 * self._timeout,
            )
        except Exception as e:
            logger.warning("closing the transactional producer: %s", e)
        finally:
            self._thread.stop()
