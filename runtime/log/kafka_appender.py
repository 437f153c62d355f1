"""The producer of the Kafka log's appends: librdkafka, through confluent-kafka.

What it owns: one idempotent librdkafka producer, the daemon thread that serves its
delivery reports, and the translation of the log's kafka-python settings (the ones every
other client of the log takes) into librdkafka's.

Why librdkafka for this one client: every record the runtime processes is appended once,
and kafka-python's producer costs Python code per record and per request on two threads
that hold the GIL (the caller's ``send`` and its sender thread). Measured in a Kafka-mode
profile at concurrency 64, those two threads took 0.26 of the runtime's 0.88 cores.
librdkafka builds, sends and retries batches in C on threads of its own, without the GIL:
what is left in Python is ``produce`` (a C call, made on the event loop) and one callback
per record on the delivery thread. The log's consumers are librdkafka's too
(:class:`runtime.log.kafka.KafkaLogConsumer`); its reader, admin client and the
transactional producers stay kafka-python's.

Threads: ``produce`` is called on the event loop, in append order, and never blocks; the
delivery thread waits in ``poll`` (without the GIL) and runs each record's delivery
callback, which must not block either.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from runtime.log.base import LogError, Record

__all__ = ["Appender", "Delivery", "librdkafka_security"]

logger = logging.getLogger(__name__)

Delivery = Callable[[KafkaError | None, Message], None]
"""Called on the delivery thread once per record: ``(error or None, message)``."""

_POLL_WAIT = 0.1
"""Seconds the delivery thread waits in one ``poll``: what a close waits for it to stop."""

_SECURITY: Mapping[str, tuple[str, Callable[[Any], str]]] = {
    "security_protocol": ("security.protocol", str),
    "sasl_mechanism": ("sasl.mechanism", str),
    "sasl_plain_username": ("sasl.username", str),
    "sasl_plain_password": ("sasl.password", str),
    "sasl_kerberos_service_name": ("sasl.kerberos.service.name", str),
    "ssl_cafile": ("ssl.ca.location", str),
    "ssl_certfile": ("ssl.certificate.location", str),
    "ssl_keyfile": ("ssl.key.location", str),
    "ssl_password": ("ssl.key.password", str),
    "ssl_crlfile": ("ssl.crl.location", str),
    "ssl_check_hostname": (
        "ssl.endpoint.identification.algorithm",
        lambda check: "https" if check else "none",
    ),
}
"""kafka-python's security settings (as ``statefun.kafka_properties`` makes them) and the
librdkafka property each one is."""


def librdkafka_security(settings: Mapping[str, Any]) -> dict[str, str]:
    """librdkafka's properties for kafka-python's security ``settings``; ``ValueError``
    for one it has no equivalent of (a security setting is never dropped silently)."""
    unknown = sorted(set(settings) - set(_SECURITY))
    if unknown:
        raise ValueError(f"no librdkafka equivalent of the Kafka security settings {unknown}")
    return {_SECURITY[k][0]: _SECURITY[k][1](v) for k, v in settings.items()}


class Appender:
    """An idempotent librdkafka producer and its delivery thread. Use :meth:`connect`."""

    def __init__(self, producer: Producer, config: Mapping[str, Any], name: str) -> None:
        self.kafka = producer
        self.config = dict(config)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls, config: Mapping[str, Any], name: str) -> Appender:
        """A producer with librdkafka's ``config``; it connects in the background.
        ``name`` names its delivery thread."""
        try:
            producer = Producer({**config, "logger": logger, "error_cb": _on_error})
        except (KafkaException, ValueError, TypeError) as e:
            raise LogError(f"the Kafka producer cannot be made: {e}") from e
        return cls(producer, config, name)

    def produce(self, topic: str, partition: int, records: Sequence[Record], on: Delivery) -> None:
        """Queue ``records`` for ``topic[partition]``, in order; ``on`` hears of each.
        :class:`LogError` if librdkafka refuses one (a full queue, a fatal error, a bad
        record): the records before it are queued all the same."""
        produce = self.kafka.produce
        for record in records:
            try:
                produce(
                    topic,
                    value=record.value,
                    key=record.key,
                    partition=partition,
                    headers=list(record.headers) if record.headers else None,
                    on_delivery=on,
                )
            except (BufferError, KafkaException, TypeError, ValueError) as e:
                raise LogError(f"appending to {topic}[{partition}] failed: {e}") from e

    def partitions(self, topic: str, timeout: float) -> int:
        """How many partitions the producer sees ``topic`` with (blocks; 0 if none)."""
        try:
            metadata = self.kafka.list_topics(topic, timeout=timeout)
        except KafkaException as e:
            raise LogError(f"loading the metadata of topic {topic} failed: {e}") from e
        found = metadata.topics.get(topic)
        return 0 if found is None or found.error is not None else len(found.partitions)

    def _serve(self) -> None:
        poll = self.kafka.poll
        while not self._stopping.is_set():
            try:
                poll(_POLL_WAIT)
            except Exception:  # from a delivery callback: the others must still be heard
                logger.exception("a delivery report of the Kafka producer failed")

    def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout`` seconds, abandon the rest (their
        deliveries fail), then stop the delivery thread (blocks: call it on a thread)."""
        if self.kafka.flush(timeout) > 0:
            self.kafka.purge()
            self.kafka.flush(0)  # serves the failed deliveries of what was purged
        self._stopping.set()
        self._thread.join(2 * _POLL_WAIT + timeout)

    @property
    def idempotent(self) -> bool:
        return bool(self.config.get("enable.idempotence"))


def _on_error(error: KafkaError) -> None:
    """librdkafka's errors outside any one record (a broker down, a connection refused):
    an append that suffers from one fails by itself, so they are only logged."""
    if error.fatal():
        logger.error("the Kafka producer failed: %s", error)
    else:
        logger.info("the Kafka producer: %s", error)
