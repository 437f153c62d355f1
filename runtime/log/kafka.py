"""The Kafka log: the :class:`~runtime.log.base.Log` contract on a Kafka-protocol broker.

What it owns: one idempotent producer for every append (librdkafka's, see
:mod:`runtime.log.kafka_appender`), an admin client for topics and
consumer-group offsets, a reader consumer for :meth:`KafkaLog.read` and
:meth:`KafkaLog.end_offsets`, and one Kafka consumer per :meth:`KafkaLog.consumer`
(librdkafka's: every record another process appends is fetched by one, and an idle one
still fetches once per pause; kafka-python spent Python code on every fetch, on an I/O
thread of its own per client). None of them joins a consumer group: the runtime places
partitions itself (``assign``, then offsets committed explicitly), which also saves the
seconds a group join costs.

Threads. The clients block, and kafka-python's are not safe to share between threads,
so every blocking call on a client runs on a daemon thread that client owns, one call
after another (``_ClientThread``); the event loop only waits on asyncio futures. The one
call made on the loop is librdkafka's ``produce``, which only queues the record (a few
microseconds, in C); the producer's delivery thread hears the broker's acknowledgements
and hands the durable appends to the loop, one wakeup for all that arrived meanwhile.

Ordering and durability:

* :meth:`KafkaLog.append` hands its records to the producer when it is called, so
  appends land in call order. The producer is idempotent (``enable.idempotence``,
  ``acks=all``): a partition's batches stay in order across retries, without duplicates.
* An append's future resolves with the broker's offsets once the broker acknowledged
  every record with ``acks=all``: that is what durable means here.
* A failed append (delivery timeout, broker error) fails its future with
  :class:`LogError`, and every later append fails too: once a record may be missing,
  later records would land after a gap, out of call order. So does an append whose
  record the broker took without saying at which offset: after a stall longer than a
  request, the producer sends the request again, and a broker that had taken the first
  one answers the second as a duplicate, with no offset.
* :meth:`KafkaLog.reopen` replaces the producer: the old one is closed (bounded: what it
  cannot deliver by then is abandoned) and a new idempotent producer, with a producer
  id of its own, takes the appends. An append whose acknowledgement never came has an
  unknown fate: its record may have landed, even after the reopen (a stalled broker can
  still read a request it had buffered). Records the runtime produces carry the tag of
  their generation, which the next generation's skip rule drops. Records from outside
  carry none: an HTTP ingress POST that was answered with an error may have been
  accepted all the same, and is processed if it landed; a client that must not send a
  message twice retries with an ``Idempotency-Key``.
* Readers see only records below the high watermark, i.e. acknowledged ones. The
  producer may split an append over two batches, so a consumer can see the first
  records of an append one poll before the others.
* An append's records, once acknowledged, are offered to this process's consumers of
  their partition (:meth:`KafkaLogConsumer.offer`): a consumer whose next offset is
  exactly the first of them takes them as if fetched, so a reader of this process's own
  appends (the worker, the decision log's tail) does not wait a fetch round trip for
  them. Only records that continue exactly at the consumer's position are taken, never
  ahead of it; the Kafka poll's later copies of them are dropped.
* The producer does not linger (``linger.ms=0``): at low load a record goes out at
  once; under load a partition's records queued while its previous request is in
  flight go out together. librdkafka sends one partition per produce request.
* A deleted topic is not asked about again: the producer's periodic metadata refresh
  is off (``topic.metadata.refresh.interval.ms``), and the reader lets the topic go.

Tansu (the test broker) caveats worked around here:

* ``ListOffsets(latest)`` answers the last batch's base offset + 1 when that batch holds
  several records. It is used only as a lower bound of the end: end offsets come from
  the high watermark of a fetch from one record before it, which returns that batch.
* Topics auto-create with 4 partitions: every client here has auto-creation off, and
  :meth:`KafkaLog.ensure_topic` creates topics explicitly.
* A group join takes seconds: offsets are committed without joining (OffsetCommit with
  no member id), which needs the group to have no active members.

It must never block the event loop, nor wait without a bound: every call to the broker
has a timeout, and a timed-out call raises :class:`LogError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer as LibrdkafkaConsumer
from confluent_kafka import KafkaError as ConfluentError
from confluent_kafka import KafkaException, Message
from confluent_kafka import TopicPartition as LibrdkafkaTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as KafkaTopicPartition
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    NoError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

from runtime.log.base import (
    Log,
    LogConsumer,
    LogError,
    Record,
    StoredRecord,
    TopicMismatchError,
    TopicPartition,
    UnknownTopicError,
)
from runtime.log.kafka_appender import Appender, librdkafka_security
from runtime.log.kafka_selector import CLIENT_CONFIG

__all__ = ["KafkaLog", "KafkaLogConsumer"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What one Kafka poll may return: everything librdkafka has fetched (up to this many
# records), so that the consumer can share it fairly between partitions.
_DRAIN = 100_000
_ROUND_SLACK_MS = 2
"""A paced Kafka poll waits for one fetch: the broker's wait plus this much for the round
trip."""
SOLE_WRITER_FETCH_PAUSE = 1.0
"""Seconds between a dense consumer's paced Kafka polls while this process is the only
writer of the application's topics (:meth:`KafkaLog.sole_writer`)."""
_MISSING_WARN_AFTER = 50
_POSITION_ERRORS = frozenset(
    {ConfluentError._AUTO_OFFSET_RESET, ConfluentError.OFFSET_OUT_OF_RANGE}
)
"""A consumer's errors that fail its poll: a position the partition does not have (a
position past the end is a bug to surface, not a reason to jump)."""
"""Kafka polls in a row that skip the same offset of a dense topic before it is logged."""


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    """Run ``fn(*args)`` on ``loop``, from another thread (if the loop is closed, nobody
    is left waiting)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class _ClientThread:
    """A daemon thread running the blocking calls on one Kafka client, in order.

    A daemon, so that a call stuck on an unreachable broker cannot keep the process from
    exiting; callers bound their waits with :func:`_call`.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        self._calls.put((fn, future))
        return future

    def stop(self) -> None:
        """End the thread once the calls submitted so far have run."""
        self._calls.put(None)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, future = call
            if future.done():  # its caller gave up waiting before it started
                continue
            try:
                result = fn()
            except Exception as e:
                _post(self._loop, _fail, future, e)
            else:
                _post(self._loop, _resolve, future, result)


async def _call(thread: _ClientThread, what: str, fn: Callable[[], T], within: float) -> T:
    """Run ``fn`` on ``thread``, waiting at most ``within`` seconds; Kafka errors and
    timeouts become :class:`LogError`."""
    try:
        async with asyncio.timeout(within):
            return await thread.submit(fn)
    except TimeoutError:
        raise LogError(f"{what} took longer than {within:g} s") from None
    except KafkaError as e:
        raise LogError(f"{what} failed: {e}") from e


@dataclass(frozen=True, slots=True)
class _Settings:
    bootstrap_servers: str
    client_id: str
    fetch_max_wait_ms: int
    request_timeout_ms: int
    security: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    """kafka-python's security settings every client of the cluster takes."""
    fetch_pause_max_ms: int = 50
    """The longest pause between a consumer's fetches while they bring nothing it does
    not have (see :class:`KafkaLogConsumer`)."""

    @property
    def fetch_pause_max(self) -> float:
        """``fetch_pause_max_ms`` in seconds."""
        return self.fetch_pause_max_ms / 1000

    @property
    def timeout(self) -> float:
        """The bound of one request, in seconds."""
        return self.request_timeout_ms / 1000

    @property
    def one_fetch(self) -> float:
        """Seconds a Kafka poll waits for one fetch: the broker's wait and the round trip."""
        return (self.fetch_max_wait_ms + _ROUND_SLACK_MS) / 1000

    def new_consumer(self, role: str, **config: object) -> Any:
        """A Kafka consumer outside any group, positioned only by ``seek`` (blocks)."""
        _check_reachable(self.bootstrap_servers, self.timeout)
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-{role}",
            group_id=None,
            enable_auto_commit=False,
            # A position past the end is a bug to surface, not a reason to jump.
            auto_offset_reset="none",
            allow_auto_create_topics=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            request_timeout_ms=self.request_timeout_ms,
            bootstrap_timeout_ms=self.request_timeout_ms,
            metrics_enabled=False,
            **CLIENT_CONFIG,
            **dict(self.security),
            **config,
        )

    def new_fetcher(self, role: str) -> LibrdkafkaConsumer:
        """A librdkafka consumer outside any group, positioned only by ``assign``
        (blocks while it checks the broker is reachable). librdkafka insists on a
        ``group.id``; this one is never joined, and no offset is committed under it."""
        _check_reachable(self.bootstrap_servers, self.timeout)
        security = librdkafka_security(dict(self.security))
        try:
            return LibrdkafkaConsumer(
                {
                    "bootstrap.servers": self.bootstrap_servers,
                    "client.id": f"{self.client_id}-{role}",
                    "group.id": f"{self.client_id}-{role}-unjoined",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    # A position past the end is a bug to surface, not a reason to jump.
                    "auto.offset.reset": "error",
                    "allow.auto.create.topics": False,
                    "fetch.wait.max.ms": self.fetch_max_wait_ms,
                    "socket.timeout.ms": self.request_timeout_ms,
                    # As the kafka-python consumers before it: the Kafka ingress reads
                    # what it finds (the test broker does not honour aborts anyway).
                    "isolation.level": "read_uncommitted",
                    # As the producer's (see open): a deleted topic is not asked about.
                    "topic.metadata.refresh.interval.ms": -1,
                    "logger": logger,
                    "error_cb": _on_fetcher_error,
                    **security,
                }
            )
        except (KafkaException, ValueError, TypeError) as e:
            raise LogError(f"the Kafka consumer {role} cannot be made: {e}") from e


def _on_fetcher_error(error: ConfluentError) -> None:
    """librdkafka's errors outside any one record (a broker down, a connection refused):
    it reconnects by itself, and a consumer that cannot read falls behind, which the
    runtime sees; so they are only logged."""
    if error.fatal():
        logger.error("a Kafka consumer failed: %s", error)
    else:
        logger.info("a Kafka consumer: %s", error)


def _stored_message(message: Message) -> StoredRecord:
    """A librdkafka message as a :class:`StoredRecord` (a null value or header value,
    which only other Kafka clients write, reads as empty bytes)."""
    headers: Any = message.headers()
    return StoredRecord(
        message.offset(),  # type: ignore[arg-type]
        message.value() or b"",
        message.key(),
        tuple((k, b"" if v is None else v) for k, v in headers) if headers else (),
        message.timestamp()[1],
    )


def _stored(record: Any) -> StoredRecord:
    """A kafka-python ``ConsumerRecord`` as a :class:`StoredRecord` (a null value or
    header value, which only other Kafka clients write, reads as empty bytes)."""
    return StoredRecord(
        record.offset,
        b"" if record.value is None else record.value,
        record.key,
        tuple((k, b"" if v is None else v) for k, v in record.headers) if record.headers else (),
        record.timestamp,
    )


class _Acks:
    """Collects the broker's acknowledgements of one append's records, on the producer's
    delivery thread, and settles the append's future on the loop once all are in."""

    __slots__ = (
        "_acked",
        "_appender",
        "_done",
        "_future",
        "_lock",
        "_log",
        "_records",
        "_tp",
    )

    def __init__(
        self,
        log: KafkaLog,
        appender: Appender,
        future: asyncio.Future[list[int]],
        tp: TopicPartition,
        records: Sequence[Record],
    ) -> None:
        self._log = log
        self._appender = appender
        self._future = future
        self._tp = tp
        self._records = records
        self._acked: list[tuple[int, int]] = []
        """(offset, timestamp) of each record acknowledged so far."""
        self._done = False
        self._lock = threading.Lock()

    def delivered(self, error: ConfluentError | None, message: Message) -> None:
        """One record's delivery report (delivery thread)."""
        if error is not None:
            self.failed(KafkaException(error))
            return
        offset = message.offset()
        if offset is None or offset < 0:
            # Delivered, but at an offset nobody knows: a retry of a request the broker
            # had taken already (after a stall) is answered as a duplicate, without one.
            self.failed(LogError("the broker took a record without saying at which offset"))
            return
        with self._lock:
            self._acked.append((offset, message.timestamp()[1]))
            complete = len(self._acked) == len(self._records) and not self._done
            self._done = self._done or complete
        if complete:
            self._log._durable(self)

    def settle(self) -> None:
        """On the loop: the append is durable; its records go to this process's readers
        of the partition that are right at them, then the appender hears of it."""
        # The records of one append are queued one after another to one partition of an
        # idempotent producer: their offsets follow their order, whatever order the
        # reports came in.
        acked = sorted(self._acked)
        stored = [
            StoredRecord(offset, record.value, record.key, tuple(record.headers), timestamp)
            for record, (offset, timestamp) in zip(self._records, acked, strict=True)
        ]
        for consumer in list(self._log._consumers):
            consumer.offer(self._tp, stored)
        _resolve(self._future, [offset for offset, _ in acked])

    def failed(self, error: Exception) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        _post(
            self._log._loop,
            self._log._append_failed,
            self._appender,
            self._future,
            self._tp,
            error,
        )


class KafkaLog(Log):
    """A :class:`Log` on a Kafka cluster. Use :meth:`open`."""

    def __init__(
        self,
        settings: _Settings,
        *,
        admin: Any,
        appender: Appender,
        admin_thread: _ClientThread,
        replication_factor: int,
        delivery_timeout: float,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer_config = dict(producer_config or {})
        self._settings = settings
        self._timeout = settings.timeout
        self._admin = admin
        self._appender = appender
        self._admin_thread = admin_thread
        self._reader_thread = _ClientThread(f"{settings.client_id}-reader", self._loop)
        self._reader: Any = None  # created on the reader thread when first needed
        self._replication_factor = replication_factor
        # librdkafka reports on every record within delivery_timeout_ms; should a report
        # never come, the watchdog fails the appends not settled by then (and a bit).
        self._delivery_timeout = delivery_timeout
        self._ack_deadline = delivery_timeout + self._timeout
        self._unsettled: deque[tuple[float, asyncio.Future[list[int]]]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._topics: dict[str, int] = {}
        # Weak: a consumer made for a generation that failed to start, and never used,
        # goes away with its last reference.
        self._consumers: weakref.WeakSet[KafkaLogConsumer] = weakref.WeakSet()
        self._consumer_ids = itertools.count(1)
        self._alone = False
        """Whether this process is the only writer of the application's topics (:meth:`sole_writer`)."""
        self._failure = None
        self._settling: deque[_Acks] = deque()
        """Appends the broker acknowledged, in that order, to settle on the loop."""
        self._settle_posted = False
        """Whether the loop was asked to settle them: one wakeup of the loop settles
        every append acknowledged until it runs."""
        self._closed = False

    @classmethod
    async def open(
        cls,
        bootstrap_servers: str,
        *,
        client_id: str = "statefun",
        replication_factor: int = 1,
        fetch_max_wait_ms: int = 5,
        fetch_pause_max_ms: int = 50,
        linger_ms: int = 0,
        batch_size: int = 256 * 1024,
        max_request_size: int = 4 * 1024 * 1024,
        request_timeout_ms: int = 10_000,
        delivery_timeout_ms: int = 30_000,
        security: Mapping[str, Any] | None = None,
    ) -> KafkaLog:
        """Connect to the cluster at ``bootstrap_servers`` (``host:port[,host:port...]``).

        :param client_id: prefix of the Kafka client ids (and of this log's thread names).
        :param replication_factor: of the topics :meth:`ensure_topic` creates.
        :param fetch_max_wait_ms: how long the broker holds a fetch open waiting for new
            records; it sets the latency of consumers (Tansu re-checks only at fractions
            of it), and a lower value costs idle CPU.
        :param fetch_pause_max_ms: the longest pause between two fetches of a consumer
            whose fetches bring nothing it does not have already (its own appends are
            handed to it; see :class:`KafkaLogConsumer`): the most a record appended
            by another process after a quiet spell waits, and what a quiet consumer
            costs (one fetch per pause). While this process is the only writer
            (:meth:`sole_writer`), :data:`SOLE_WRITER_FETCH_PAUSE` instead.
        :param linger_ms: how long the producer waits to batch records of one partition.
        :param batch_size: the producer's largest batch, in bytes, per partition.
        :param max_request_size: the largest produce request, so bounds a record's size
            (the broker has its own limit, ``message.max.bytes``).
        :param request_timeout_ms: the bound of every request to the broker, including
            connecting at open; a call that takes longer raises :class:`LogError`.
        :param delivery_timeout_ms: how long an append may take, retries included, before
            it fails (at least ``linger_ms + request_timeout_ms``).
        :param security: kafka-python's security settings (``security_protocol``,
            ``sasl_*``, ``ssl_*``; see ``statefun.kafka_properties``), taken by every
            client of this log.
        """
        if replication_factor < 1:
            raise ValueError(f"replication_factor must be at least 1, not {replication_factor}")
        if not 0 < fetch_max_wait_ms < request_timeout_ms:
            raise ValueError("fetch_max_wait_ms must be positive and below request_timeout_ms")
        if fetch_pause_max_ms < 0:
            raise ValueError("fetch_pause_max_ms must not be negative")
        if delivery_timeout_ms < linger_ms + request_timeout_ms:
            raise ValueError("delivery_timeout_ms must be at least linger_ms + request_timeout_ms")
        loop = asyncio.get_running_loop()
        security = dict(security or {})
        settings = _Settings(
            bootstrap_servers,
            client_id,
            fetch_max_wait_ms,
            request_timeout_ms,
            tuple(security.items()),
            fetch_pause_max_ms,
        )
        admin_thread = _ClientThread(f"{client_id}-admin", loop)
        clients: dict[str, Any] = {}

        def connect_admin() -> None:
            clients["admin"] = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers,
                client_id=f"{client_id}-admin",
                request_timeout_ms=request_timeout_ms,
                bootstrap_timeout_ms=request_timeout_ms,
                **CLIENT_CONFIG,
                **security,
            )

        # kafka-python's, for the producers made by new_producer (transactions).
        producer_config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": f"{client_id}-producer",
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "max_request_size": max_request_size,
            "request_timeout_ms": request_timeout_ms,
            "delivery_timeout_ms": delivery_timeout_ms,
            "max_block_ms": request_timeout_ms,
            "bootstrap_timeout_ms": request_timeout_ms,
            "allow_auto_create_topics": False,
            "metrics_enabled": False,
            **CLIENT_CONFIG,
            **security,
        }

        # librdkafka's, for the producer of appends (see runtime.log.kafka_appender).
        appender_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": f"{client_id}-producer",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "message.max.bytes": max_request_size,
            "request.timeout.ms": request_timeout_ms,
            "socket.timeout.ms": request_timeout_ms,
            "message.timeout.ms": delivery_timeout_ms,
            "allow.auto.create.topics": False,
            # Appends are bounded by the runtime's own backpressure, not by a queue
            # that refuses records (a refused record fails the log until a reopen).
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_151,
            # librdkafka keeps every topic it produced to and asks for their metadata on
            # each periodic refresh, deleted ones included: a broker that auto-creates
            # topics whatever the request says (Tansu does) would bring them back, and a
            # deleted one is asked for every second after. Partition counts are fixed
            # here, and a leader change shows as a produce error, which refreshes the
            # topic it concerns: the periodic refresh is not needed.
            "topic.metadata.refresh.interval.ms": -1,
            **librdkafka_security(security),
        }
        what = f"connecting to Kafka at {bootstrap_servers}"
        try:
            await _call(
                admin_thread,
                what,
                lambda: _check_reachable(bootstrap_servers, settings.timeout),
                2 * settings.timeout,
            )
            await _call(admin_thread, what, connect_admin, 2 * settings.timeout)
            appender = Appender.connect(appender_config, f"{client_id}-producer")
        except BaseException:
            # Runs after the connect call on the same thread, whenever that ends.
            admin_thread.submit(lambda: _close_quietly(clients.get("admin")))
            admin_thread.stop()
            raise
        return cls(
            settings,
            admin=clients["admin"],
            appender=appender,
            admin_thread=admin_thread,
            replication_factor=replication_factor,
            delivery_timeout=delivery_timeout_ms / 1000,
            producer_config=producer_config,
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def request_timeout(self) -> float:
        """The bound of one request to the cluster, in seconds."""
        return self._timeout

    def new_producer(self, **config: Any) -> Any:
        """Another producer on this cluster, configured as this log's own plus ``config``
        (e.g. a ``transactional_id``). Blocks: call it on a thread of its own."""
        return KafkaProducer(**{**self._producer_config, **config})

    def new_consumer(self, role: str, **config: Any) -> Any:
        """A consumer on this cluster outside any group (blocks: call it on a thread)."""
        return self._settings.new_consumer(role, **config)

    @property
    def idempotent(self) -> bool:
        """Whether appends go through an idempotent producer (always, once open)."""
        return self._appender.idempotent

    # --- topics ---------------------------------------------------------------------------

    async def ensure_topic(
        self, topic: str, partitions: int, config: Mapping[str, str] | None = None
    ) -> None:
        if partitions < 1:
            raise ValueError(f"topic {topic} needs at least one partition, not {partitions}")
        self._check_open()
        existing = self._topics.get(topic)
        if existing is None:
            existing = await _call(
                self._admin_thread,
                f"creating topic {topic}",
                lambda: self._create_topic(topic, partitions, config or {}),
                3 * self._timeout,
            )
        if existing != partitions:
            raise TopicMismatchError(
                f"topic {topic} exists with {existing} partitions, not {partitions}"
            )
        if topic not in self._topics:
            # Load the producer's metadata now, so that the first append does not wait
            # for it.
            await self._check_producer_sees(self._appender, {topic: partitions})
            self._topics[topic] = partitions

    async def _check_producer_sees(self, appender: Appender, topics: Mapping[str, int]) -> None:
        """Raise :class:`LogError` unless ``appender`` sees each topic with its count."""
        timeout = self._timeout

        def check() -> None:
            for topic, count in topics.items():
                seen = appender.partitions(topic, timeout)
                if seen != count:
                    raise LogError(
                        f"the producer sees {seen} partitions of topic {topic}, not {count}"
                    )

        await _call(self._admin_thread, "loading the producer's metadata", check, 3 * timeout)

    async def open_topic(self, topic: str) -> int:
        """Make a topic someone else created usable; its partition count
        (:class:`UnknownTopicError` if it does not exist)."""
        self._check_open()
        count = await _call(
            self._admin_thread,
            f"describing topic {topic}",
            lambda: self._describe_topic(topic),
            2 * self._timeout,
        )
        if count is None:
            raise UnknownTopicError(f"topic {topic} does not exist")
        await self.ensure_topic(topic, count)
        return count

    async def start_offsets(self, topic: str, at: str | int = "earliest") -> list[int]:
        count = self.partitions(topic)
        if at == "latest":
            return await self.end_offsets(topic)
        tps = [KafkaTopicPartition(topic, p) for p in range(count)]

        def find() -> list[int | None]:
            reader = self._reader_consumer()
            timeout_ms = self._settings.request_timeout_ms
            if at == "earliest":
                starts = reader.beginning_offsets(tps, timeout_ms=timeout_ms)
                return [starts[tp] for tp in tps]
            found = reader.offsets_for_times(dict.fromkeys(tps, at), timeout_ms=timeout_ms)
            return [found[tp].offset if found.get(tp) else None for tp in tps]

        offsets = await _call(
            self._reader_thread, f"finding start offsets in {topic}", find, 2 * self._timeout
        )
        if None in offsets:  # no record at or after the timestamp: start at the true end
            ends = await self.end_offsets(topic)
            return [e if o is None else o for o, e in zip(offsets, ends, strict=True)]
        return [o for o in offsets if o is not None]

    async def delete_topic(self, topic: str) -> None:
        self._check_open()
        self._topics.pop(topic, None)
        await self._let_go_in_reader(topic)
        await _call(
            self._admin_thread,
            f"deleting topic {topic}",
            lambda: self._delete_topic(topic),
            3 * self._timeout,
        )

    async def forget_topic(self, topic: str) -> None:
        """The reader lets the topic go (see :meth:`Log.forget_topic`)."""
        self._check_open()
        await self._let_go_in_reader(topic)

    async def _let_go_in_reader(self, topic: str) -> None:
        await _call(
            self._reader_thread,
            f"letting go of topic {topic}",
            lambda: self._forget_in_reader(topic),
            2 * self._timeout,
        )

    def _forget_in_reader(self, topic: str) -> None:
        """Close the reader if it last read ``topic`` (reader thread): a consumer keeps the
        topics it was assigned in its metadata requests, and a broker that auto-creates
        topics whatever the request says (Tansu does) would bring the deleted topic back.
        The next read opens a new reader."""
        reader = self._reader
        if reader is not None and any(tp.topic == topic for tp in reader.assignment()):
            self._reader = None
            _close_quietly(reader)

    def _delete_topic(self, topic: str) -> None:
        """Delete the topic if it exists (admin thread)."""
        result = self._admin.delete_topics(
            [topic], timeout_ms=self._settings.request_timeout_ms, raise_errors=False
        )
        for deleted in result["topics"]:
            error = for_code(deleted["error_code"])
            if error not in (NoError, UnknownTopicOrPartitionError):
                raise LogError(f"deleting topic {topic} failed: {error.__name__}")

    async def list_topics(self) -> set[str]:
        self._check_open()
        names = await _call(
            self._admin_thread, "listing topics", self._admin.list_topics, 2 * self._timeout
        )
        return set(names)

    def _create_topic(self, topic: str, partitions: int, config: Mapping[str, str]) -> int:
        """The topic's partition count, after creating it if missing (admin thread)."""
        existing = self._describe_topic(topic)
        if existing is not None:
            return existing
        try:
            self._admin.create_topics(
                {
                    topic: {
                        "num_partitions": partitions,
                        "replication_factor": self._replication_factor,
                        "configs": dict(config),
                    }
                }
            )
        except TopicAlreadyExistsError:
            pass  # someone else created it meanwhile: describe it below
        else:
            self._admin.wait_for_topics([topic], timeout_ms=self._settings.request_timeout_ms)
        created = self._describe_topic(topic)
        if created is None:
            raise LogError(f"topic {topic} is missing right after its creation")
        return created

    def _describe_topic(self, topic: str) -> int | None:
        for described in self._admin.describe_topics([topic]):
            if described["name"] != topic:
                continue
            error = for_code(described["error_code"])
            if error is UnknownTopicOrPartitionError:
                return None
            if error is not NoError:
                raise LogError(f"describing topic {topic} failed: {error.__name__}")
            return len(described["partitions"])
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise LogError("the Kafka log is closed")

    # --- appending ------------------------------------------------------------------------

    def _append(
        self, topic: str, partition: int, records: Sequence[Record]
    ) -> asyncio.Future[list[int]]:
        tp = self._tp(topic, partition)
        future: asyncio.Future[list[int]] = self._loop.create_future()
        if self._closed:
            future.set_exception(LogError("the Kafka log is closed"))
            return future
        if self._failure is not None:
            future.set_exception(self._failure)
            return future
        if not records:
            future.set_result([])
            return future
        appender = self._appender
        acks = _Acks(self, appender, future, tp, records)
        try:
            appender.produce(topic, partition, records, acks.delivered)
        except LogError as e:
            # The records before the refused one may land: the append has failed, and
            # every later one fails too (it would land after a gap).
            self._appends_failed(e)
            future.set_exception(e)
            return future
        self._watch(future)
        return future

    def _durable(self, acks: _Acks) -> None:
        """The broker acknowledged every record of an append (delivery thread)."""
        self._settling.append(acks)
        if not self._settle_posted:
            self._settle_posted = True
            _post(self._loop, self._settle_durable)

    def _settle_durable(self) -> None:
        # Cleared before taking: an acknowledgement appended after this point posts anew.
        self._settle_posted = False
        settling = self._settling
        while settling:
            settling.popleft().settle()

    def _append_failed(
        self,
        appender: Appender,
        future: asyncio.Future[list[int]],
        tp: TopicPartition,
        error: Exception,
    ) -> None:
        failure = LogError(f"appending to {tp} failed: {error}")
        failure.__cause__ = error
        if appender is self._appender:  # not a producer a reopen replaced already
            self._appends_failed(failure)
        _fail(future, failure)

    def _watch(self, future: asyncio.Future[list[int]]) -> None:
        unsettled = self._unsettled
        while unsettled and unsettled[0][1].done():
            unsettled.popleft()
        unsettled.append((self._loop.time() + self._ack_deadline, future))
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._ack_deadline, self._check_unsettled)

    def _check_unsettled(self) -> None:
        self._watchdog = None
        unsettled = self._unsettled
        while unsettled and unsettled[0][1].done():
            unsettled.popleft()
        if not unsettled:
            return
        due = unsettled[0][0] - self._loop.time()
        if due > 0:
            self._watchdog = self._loop.call_later(due, self._check_unsettled)
            return
        failure = LogError(
            f"Kafka at {self._settings.bootstrap_servers} did not acknowledge an append"
            f" within {self._ack_deadline:g} s"
        )
        self._appends_failed(failure)
        for _, future in unsettled:
            _fail(future, failure)
        unsettled.clear()

    async def flush(self) -> None:
        if self._closed:
            return
        if self._failure is not None:  # an append is missing: waiting would not help
            raise self._failure
        # Every append is in the producer's hands as soon as it is made: flushing is
        # waiting for the acknowledgements of those not settled yet (the watchdog fails
        # them after the acknowledgement deadline).
        pending = [future for _, future in self._unsettled if not future.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._ack_deadline + self._timeout)
        if self._failure is not None:
            raise self._failure

    async def reopen(self) -> None:
        """After a failed append: close the producer (bounded by the request timeout;
        its undelivered records are abandoned and their appends fail) and connect a new
        idempotent one. Raises :class:`LogError` if the cluster cannot be reached; the
        log then still refuses appends, and a later reopen tries again."""
        self._check_open()
        failure = self._failure
        if failure is None:
            return
        # Closed on a thread of its own, not waited for: a producer whose broker stalled
        # can take its whole request timeout to close, and service would wait that long
        # after the broker is back. What it may still deliver meanwhile belongs to the
        # failed generation (skipped by the next one's skip rule) or has an unknown fate.
        _close_in_background(self._appender, self._timeout)
        # What the old producer neither delivered nor failed by now has an unknown fate.
        for _, future in self._unsettled:
            _fail(future, failure)
        self._unsettled.clear()
        await _call(
            self._admin_thread,
            f"reaching Kafka at {self._settings.bootstrap_servers}",
            lambda: self._admin.describe_topics(list(self._topics)),
            2 * self._timeout,
        )
        appender = Appender.connect(self._appender.config, f"{self._settings.client_id}-producer")
        try:
            await self._check_producer_sees(appender, self._topics)
        except BaseException:
            _close_in_background(appender, 0)
            raise
        self._appender = appender
        self._failure = None

    # --- reading --------------------------------------------------------------------------

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 1000
    ) -> list[StoredRecord]:
        tp = self._tp(topic, partition)
        self._check_open()
        if max_records < 1:
            return []
        return await _call(
            self._reader_thread,
            f"reading {tp}",
            lambda: self._read(tp, max(offset, 0), max_records),
            2 * self._timeout,
        )

    async def end_offsets(self, topic: str) -> list[int]:
        count = self.partitions(topic)
        self._check_open()
        return await _call(
            self._reader_thread,
            f"finding the end offsets of topic {topic}",
            lambda: self._end_offsets(topic, count),
            2 * self._timeout,
        )

    def _reader_consumer(self) -> Any:
        if self._reader is None:
            # Its assignment changes with every call: a fetch session would not pay off.
            self._reader = self._settings.new_consumer(
                "reader", enable_incremental_fetch_sessions=False
            )
        return self._reader

    def _read(self, tp: TopicPartition, offset: int, max_records: int) -> list[StoredRecord]:
        """Durable records from ``offset`` (reader thread), with no offset missing: every
        topic read here is written only by this application's plain appends.

        ListOffsets answers a lower bound of the end (exact on Kafka, possibly one past
        the last batch's base offset on Tansu). Records below it exist, so the fetch only
        ends on a response with records: an empty answer could be a fetch sent before
        the call, which the reader consumer may still have buffered.
        """
        reader = self._reader_consumer()
        ktp = KafkaTopicPartition(tp.topic, tp.partition)
        reader.assign([ktp])
        listed = reader.end_offsets([ktp], timeout_ms=self._settings.request_timeout_ms)[ktp]
        if listed == 0:
            return []
        # From the record before the listed end if need be: on Tansu it is the base of the
        # last batch, and the fetch returns that whole batch.
        reader.seek(ktp, min(offset, listed - 1))
        out: list[StoredRecord] = []
        deadline = time.monotonic() + self._timeout
        while True:
            wait_ms = int((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                raise LogError(f"reading {tp} from offset {offset}: no records within the timeout")
            records = reader.poll(timeout_ms=wait_ms, max_records=_DRAIN).get(ktp)
            if not records:
                continue
            want = offset + len(out)
            for record in records:
                if record.offset < want:
                    continue
                if record.offset > want:
                    # Every topic read here is dense: a later batch came before an earlier
                    # one was visible (Tansu's race). Read again from the missing record.
                    reader.seek(ktp, want)
                    break
                out.append(_stored(record))
                want += 1
            end = max(listed, reader.highwater(ktp) or 0)
            if len(out) >= max_records or want >= end:
                return out[:max_records]

    def _end_offsets(self, topic: str, count: int) -> list[int]:
        """The true end of each partition (reader thread): the high watermark of a fetch
        from just before the end ListOffsets reports (see :meth:`_read` for why only
        responses with records count)."""
        reader = self._reader_consumer()
        tps = [KafkaTopicPartition(topic, p) for p in range(count)]
        reader.assign(tps)
        ends: dict[Any, int] = dict(
            reader.end_offsets(tps, timeout_ms=self._settings.request_timeout_ms)
        )
        unconfirmed = set()
        for ktp in tps:
            reader.seek(ktp, max(ends[ktp] - 1, 0))
            if ends[ktp] > 0:
                unconfirmed.add(ktp)
        deadline = time.monotonic() + self._timeout
        while unconfirmed:
            wait_ms = int((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                raise LogError(f"finding the end offsets of topic {topic}: no fetch answered")
            for ktp, records in reader.poll(timeout_ms=wait_ms, max_records=_DRAIN).items():
                if records and ktp in unconfirmed:
                    highwater = reader.highwater(ktp) or 0
                    ends[ktp] = max(ends[ktp], records[-1].offset + 1, highwater)
                    unconfirmed.discard(ktp)
        return [ends[ktp] for ktp in tps]

    def sole_writer(self, alone: bool) -> None:
        """While this process is the only writer of the application's topics, a dense
        consumer's paced Kafka polls come at most every :data:`SOLE_WRITER_FETCH_PAUSE`
        instead of every ``fetch_pause_max_ms``: every record is then this process's
        own, handed over as it is appended, so a poll can only bring copies (or a record
        of a fenced older member, which a gap in what is handed over makes it fetch at
        once). Each poll of copies costs the runtime and the broker: at c64 the runtime
        took 10-20% less CPU per message with the longer pause, the broker half.
        Not alone: every consumer pausing longer than ``fetch_pause_max_ms`` polls by
        then."""
        self._alone = alone
        for consumer in list(self._consumers):
            consumer._bound_pause(consumer.pause_max)

    @property
    def fetch_pause_max(self) -> float:
        """The longest pause between two Kafka polls of a dense consumer whose polls bring
        only what it has (see :class:`KafkaLogConsumer` and :meth:`sole_writer`)."""
        return SOLE_WRITER_FETCH_PAUSE if self._alone else self._settings.fetch_pause_max

    def consumer(self, *, dense: bool = True) -> KafkaLogConsumer:
        self._check_open()
        consumer = KafkaLogConsumer(self, f"consumer-{next(self._consumer_ids)}", dense=dense)
        self._consumers.add(consumer)
        return consumer

    # --- consumer-group offsets -----------------------------------------------------------

    async def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self._check_open()
        if not offsets:
            return
        request = {
            KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "", -1)
            for tp, offset in offsets.items()
        }
        errors = await _call(
            self._admin_thread,
            f"committing the offsets of group {group}",
            lambda: self._admin.alter_group_offsets(group, request),
            2 * self._timeout,
        )
        failed = [
            f"{ktp.topic}[{ktp.partition}]: {error.__name__}"
            for ktp, error in errors.items()
            if error is not NoError
        ]
        if failed:
            raise LogError(f"committing the offsets of group {group} failed: {', '.join(failed)}")

    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        self._check_open()
        groups = await _call(
            self._admin_thread,
            f"fetching the offsets of group {group}",
            lambda: self._admin.list_group_offsets({group: None}),
            2 * self._timeout,
        )
        return {
            ktp.partition: committed.offset
            for ktp, committed in groups.get(group, {}).items()
            if ktp.topic == topic and committed.offset >= 0
        }

    # --- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the consumers, deliver what was appended (bounded by the delivery
        timeout; appends not delivered by then fail), and close the clients."""
        if self._closed:
            return
        self._closed = True
        for result in await asyncio.gather(
            *(c.close() for c in list(self._consumers)), return_exceptions=True
        ):
            if isinstance(result, Exception):
                logger.warning("closing the Kafka log: %s", result)
        appender = self._appender
        # After a failed append, what is still queued would land after a gap: abandoned.
        deliver_within = 0 if self._failure is not None else self._delivery_timeout

        def close_producer_and_admin() -> None:
            try:
                appender.close(deliver_within)
            finally:
                self._admin.close()

        steps = [
            (
                self._reader_thread,
                "closing the reader",
                lambda: _close_quietly(self._reader),
                3 * self._timeout,
            ),
            (
                self._admin_thread,
                "closing the producer and the admin client",
                close_producer_and_admin,
                self._ack_deadline + 2 * self._timeout,
            ),
        ]
        results = await asyncio.gather(
            *(_call(thread, what, fn, within) for thread, what, fn, within in steps),
            return_exceptions=True,
        )
        for (thread, *_), result in zip(steps, results, strict=True):
            thread.stop()
            if isinstance(result, Exception):
                logger.warning("closing the Kafka log: %s", result)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def __repr__(self) -> str:
        return f"KafkaLog({self._settings.bootstrap_servers!r})"


def _check_reachable(bootstrap_servers: str, timeout: float) -> None:
    """Raise :class:`LogError` unless a bootstrap server accepts a TCP connection.

    A kafka-python 3.0.12 client that cannot bootstrap leaks its sockets and, for the
    admin client, its IO thread, forever: do not create clients when nobody listens.
    """
    refusals = []
    for server in bootstrap_servers.split(","):
        address = server.strip().rpartition("://")[2]
        host, colon, port = address.rpartition(":")
        if not colon or "]" in port:  # no port: Kafka's default
            host, port = address, "9092"
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except (OSError, ValueError) as e:
            refusals.append(f"{server.strip()}: {e}")
    raise LogError(f"no Kafka broker answers at {bootstrap_servers} ({'; '.join(refusals)})")


def _close_in_background(appender: Appender, timeout: float) -> None:
    """Close a producer a reopen replaces, on a daemon thread nobody waits for."""
    threading.Thread(
        target=appender.close, args=(timeout,), name="kafka-producer-closing", daemon=True
    ).start()


def _close_quietly(client: Any) -> None:
    if client is None:
        return
    try:
        client.close()
    except Exception:
        logger.warning("closing a Kafka client failed", exc_info=True)


def _close_producer(producer: Any, timeout: float) -> None:
    try:
        producer.close(timeout=timeout)
    except KafkaTimeoutError:
        # kafka-python 3.0's close() raises from its final flush when records cannot be
        # delivered, and leaves the producer open. Abort them (their appends fail, which
        # the watchdog would do anyway), then close for good.
        sender = producer._sender
        sender.force_close()
        sender.join(timeout)
        producer.close(timeout=0)


class KafkaLogConsumer(LogConsumer):
    """Reads assigned partitions through a librdkafka consumer outside any group.

    A poll waits for one Kafka poll on the consumer's thread, buffers all it brought
    and hands out a fair share per partition. While the buffer holds records a
    poll does not wait for Kafka, but it starts a Kafka poll in the background if none
    runs and the pace allows, so records appended elsewhere are never starved by a
    steady stream of records handed over. A Kafka poll whose caller stops waiting
    (timeout, cancellation) keeps running, and its records stay buffered for the next
    :meth:`poll`: nothing is lost. :meth:`assign` takes effect at the next Kafka poll.

    The records this process appends are handed over (:meth:`offer`), so fetching is
    for other processes' records. While Kafka polls bring nothing new (nothing, or only
    copies of records handed over) they are paced: one fetch per pause, the pause
    doubling from the fetch wait up to :attr:`pause_max` (``fetch_pause_max_ms``, or
    longer while this process is the only writer: :meth:`KafkaLog.sole_writer`), and
    back to none (a long poll) at the first record from elsewhere, or at once when
    records handed over leave a gap before them (a record from elsewhere is missing).
    Tansu answers a fetch only at the end of its wait, so without the pause an idle
    consumer would fetch every ``fetch_max_wait_ms``. (The Kafka consumer is not moved
    past the records handed over: that saved little next to the pacing.)

    A Kafka poll that skips offsets is cut at the gap, and the partition read again from
    the missing offset: Tansu can make a later batch visible before an earlier one. A
    *dense* consumer (the default: topics only this application appends to) never hands
    out a record past a missing one. Topics others write (the Kafka ingress) have gaps of
    their own (transaction markers, compaction): with ``dense=False`` a gap that the read
    again finds too is taken, at the cost of one more fetch per such gap.
    """

    def __init__(self, log: KafkaLog, role: str, *, dense: bool = True) -> None:
        self._log = log
        self._dense = dense
        self._loop = log._loop
        self._settings = log._settings
        self._role = role
        self._thread: _ClientThread | None = None  # started by the first poll
        self._kafka: LibrdkafkaConsumer | None = None
        """Created on the consumer's thread by the first poll; used only there."""
        self._fetch_from: dict[TopicPartition, int] = {}
        """Per partition, the offset after the last record the librdkafka consumer
        returned: where it fetches from when assigned again (consumer thread)."""
        self._assigned = False
        """Whether the librdkafka consumer is assigned those partitions (consumer thread)."""
        self._positions: dict[TopicPartition, int] = {}
        self._buffered: dict[TopicPartition, deque[StoredRecord]] = {}
        self._seek: dict[TopicPartition, int] | None = None  # to apply at the next Kafka poll
        self._reseek: dict[TopicPartition, int] = {}
        """Partitions to read again from a missing offset at the next Kafka poll (dense)."""
        self._missing: dict[TopicPartition, tuple[int, int]] = {}
        """Per partition, the offset a Kafka poll skipped, and how many in a row did."""
        self._generation = 0  # bumped by assign: results of earlier Kafka polls are stale
        self._fetch: asyncio.Future[dict[TopicPartition, list[StoredRecord]]] | None = None
        self._fetch_due = 0.0
        self._error: LogError | None = None
        self._rotation = 0
        self._closed = False
        self._ends: dict[TopicPartition, int] = {}
        """The high watermark of each partition, as the last Kafka poll saw it."""
        self._wake: asyncio.Future[None] | None = None
        """Set while a poll waits: completed when records are offered."""
        self._pause = 0.0
        """Seconds between Kafka polls while they bring nothing new (0: poll at once)."""
        self._next_fetch_at = 0.0
        """The loop time before which no Kafka poll starts."""

    def assign(self, positions: Mapping[TopicPartition, int]) -> None:
        for tp, offset in positions.items():
            self._log._tp(tp.topic, tp.partition)
            if offset < 0:
                raise ValueError(f"cannot read {tp} from offset {offset}")
        self._positions = dict(positions)
        self._buffered = {}
        self._seek = dict(positions)
        self._reseek = {}
        self._missing = {}
        self._generation += 1
        self._error = None
        # Positions given: what lies past them comes from Kafka, not paced.
        self._pause = 0.0
        self._next_fetch_at = 0.0

    def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def _next(self, tp: TopicPartition) -> int:
        """The offset of the next record of ``tp`` this consumer does not have yet."""
        buffered = self._buffered.get(tp)
        return buffered[-1].offset + 1 if buffered else self._positions[tp]

    def offer(self, tp: TopicPartition, records: Sequence[StoredRecord]) -> None:
        """Records of ``tp`` this process just appended, durable, in offset order: the
        ones that continue exactly where this consumer is are taken as if fetched, so a
        reader of its own appends does not wait for the broker to send them back. Never
        ahead of the position (a gap, or a consumer moved back by :meth:`assign`, reads
        from Kafka), and the Kafka poll's copies of records taken here are dropped."""
        if self._closed or tp not in self._positions:
            return
        expected = self._next(tp)
        taken: list[StoredRecord] = []
        for record in records:
            if record.offset == expected:
                taken.append(record)
                expected += 1
            elif record.offset > expected:
                break
        if taken:
            self._buffered.setdefault(tp, deque()).extend(taken)
            self._wake_poll()
        elif records and records[0].offset > expected:
            # Records before these are missing here: another's, or not yet fetched.
            # Fetch now, whatever the pause.
            self._bound_pause(0.0)

    def _bound_pause(self, seconds: float) -> None:
        """Pause at most ``seconds`` from now before the next Kafka poll."""
        if self._pause > seconds:
            self._pause = seconds
        due = self._loop.time() + seconds
        if self._next_fetch_at > due:
            self._next_fetch_at = due
            self._wake_poll()

    def _wake_poll(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def known_end(self, tp: TopicPartition) -> int | None:
        return self._ends.get(tp)

    @property
    def pause_max(self) -> float:
        """The longest pause between this consumer's Kafka polls: the log's bound for a
        dense consumer; ``fetch_pause_max_ms`` for another (its topic's records come from
        outside, never handed over, whoever else is a member)."""
        if self._dense:
            return self._log.fetch_pause_max
        return self._settings.fetch_pause_max

    @property
    def pause(self) -> float:
        """Seconds between this consumer's Kafka polls now (0 while records from
        elsewhere arrive)."""
        return self._pause

    async def poll(
        self, max_wait: float, max_records: int = 1000
    ) -> dict[TopicPartition, list[StoredRecord]]:
        if self._closed:
            raise LogError("the consumer is closed")
        if not self._positions:
            await asyncio.sleep(max_wait)
            return {}
        deadline = self._loop.time() + max_wait
        started = False
        if self._buffered and self._fetch is None and self._loop.time() >= self._next_fetch_at:
            # Busy with records handed over: fetch anyway (in the background, one
            # fetch wait), or other processes' records would wait until the buffer empties.
            self._fetch = self._start_fetch(self._settings.one_fetch)
        while not self._buffered:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            now = self._loop.time()
            remaining = max(deadline - now, 0.0)
            hold = self._next_fetch_at - now
            if self._fetch is None:
                if (started or hold > 0) and remaining == 0:
                    return {}
                if hold <= 0:
                    self._fetch = self._start_fetch(remaining)
                    started = True
            fetch = self._fetch
            self._wake = wake = self._loop.create_future()
            try:
                done, _ = await asyncio.wait(
                    {wake} if fetch is None else {fetch, wake},
                    timeout=remaining if fetch is not None else min(hold, remaining),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                self._wake = None
                wake.cancel()
            if self._buffered:
                break
            if fetch is None:
                continue  # paced: the pause is over, or the caller's wait
            if fetch not in done:
                # Still running: started by an earlier poll that asked to wait longer, or
                # overdue. Its records will be buffered for the next poll.
                if self._loop.time() > self._fetch_due + 2 * self._settings.timeout:
                    raise LogError(f"polling Kafka at {self._settings.bootstrap_servers} hangs")
                return {}
        return self._take(max_records)

    def _start_fetch(self, wait: float) -> asyncio.Future[dict[TopicPartition, list[StoredRecord]]]:
        generation = self._generation
        seek, self._seek = self._seek, None
        reseek, self._reseek = self._reseek, {}
        paced = self._pause > 0
        if paced:  # one fetch, not a long poll
            wait = min(wait, self._settings.one_fetch)
        self._fetch_due = self._loop.time() + wait
        if self._thread is None:
            self._thread = _ClientThread(f"{self._settings.client_id}-{self._role}", self._loop)
        fetch = self._thread.submit(lambda: self._fetch_records(seek, reseek, wait, paced))
        fetch.add_done_callback(lambda f: self._fetched(generation, f))
        return fetch

    def _fetch_records(
        self,
        seek: dict[TopicPartition, int] | None,
        reseek: dict[TopicPartition, int],
        wait: float,
        paced: bool = False,
    ) -> dict[TopicPartition, list[StoredRecord]]:
        """One Kafka poll (consumer thread), after moving to ``seek`` (every partition
        assigned) and then to ``reseek`` (some of them): what librdkafka has fetched, or
        the first records it fetches within ``wait`` seconds.

        librdkafka fetches on its own threads, without the GIL, for as long as it is
        assigned partitions. A ``paced`` poll is one fetch: the partitions are assigned
        for it (from the offset after the last record polled) and unassigned after it,
        so that a quiet consumer costs the broker one fetch per pause. Left assigned, an
        idle consumer fetched every ``fetch_max_wait_ms``: 0.12 of the test broker's
        core each. librdkafka sends the next fetch as soon as one returns, so a paced
        fetch costs the broker two; the second's answer goes with the assignment.
        (Pausing the partitions instead would do the same, but librdkafka fetches a
        resumed partition only at its next periodic wakeup, up to a second later; an
        assignment is fetched at once.)
        """
        if self._kafka is None:
            self._kafka = self._settings.new_fetcher(self._role)
        consumer: LibrdkafkaConsumer = self._kafka
        fetch_from = self._fetch_from
        try:
            if seek is not None:
                fetch_from.clear()
                fetch_from.update(seek)
                self._assigned = False
            fetch_from.update(reseek)
            if reseek or not self._assigned:
                # Assigning drops what was fetched for an earlier assignment.
                consumer.assign(
                    [
                        LibrdkafkaTopicPartition(tp.topic, tp.partition, offset)
                        for tp, offset in fetch_from.items()
                    ]
                )
                self._assigned = True
            first = consumer.poll(wait)
            messages = [] if first is None else [first, *consumer.consume(_DRAIN, 0)]
            if messages and len(fetch_from) > 1:
                messages += self._rest_of_the_fetch(consumer, messages)
            out: dict[TopicPartition, list[StoredRecord]] = {}
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.fatal() or error.code() in _POSITION_ERRORS:
                        raise LogError(f"polling Kafka failed: {error}")
                    # librdkafka recovers from the others by itself (a broker down, a
                    # leader moving): a consumer that cannot read falls behind.
                    logger.info("Kafka consumer %s: %s", self._role, error)
                    continue
                tp = TopicPartition(message.topic(), message.partition())  # type: ignore[arg-type]
                if tp not in fetch_from:
                    continue
                record = _stored_message(message)
                out.setdefault(tp, []).append(record)
                fetch_from[tp] = record.offset + 1
            for tp in fetch_from:
                # Fetch responses carry it: knowing it costs no request of its own.
                _, end = consumer.get_watermark_offsets(
                    LibrdkafkaTopicPartition(tp.topic, tp.partition), cached=True
                )
                if end >= 0:
                    self._ends[tp] = end
            if paced:
                consumer.unassign()
                self._assigned = False
            return out
        except KafkaException as e:
            raise LogError(f"polling Kafka failed: {e}") from e

    def _rest_of_the_fetch(
        self, consumer: LibrdkafkaConsumer, messages: list[Message]
    ) -> list[Message]:
        """The records of a fetch response still being read (consumer thread): those of
        the partitions with none in ``messages`` whose high watermark is past their
        position, or unknown (never fetched). librdkafka hands over each partition's
        part of a response as it reads it, after noting its high watermark, and a poll
        that woke at the first part could otherwise take that partition's records
        alone, the others a poll later (one first poll in five after an assignment,
        measured on the test broker), where a poll should share between all the
        partitions that have records. Waits at most one fetch."""
        seen = {(m.topic(), m.partition()) for m in messages}

        def unanswered(tps: Iterable[TopicPartition]) -> list[TopicPartition]:
            waiting = []
            for tp in tps:
                if (tp.topic, tp.partition) in seen:
                    continue
                _, end = consumer.get_watermark_offsets(
                    LibrdkafkaTopicPartition(tp.topic, tp.partition), cached=True
                )
                if end < 0 or end > self._fetch_from[tp]:
                    waiting.append(tp)
            return waiting

        waiting = unanswered(self._fetch_from)
        more: list[Message] = []
        deadline = time.monotonic() + self._settings.one_fetch
        while waiting and (left := deadline - time.monotonic()) > 0:
            message = consumer.poll(left)
            if message is None:
                break
            batch = [message, *consumer.consume(_DRAIN, 0)]
            seen.update((m.topic(), m.partition()) for m in batch)
            more += batch
            waiting = unanswered(waiting)
        return more

    def _fetched(
        self, generation: int, fetch: asyncio.Future[dict[TopicPartition, list[StoredRecord]]]
    ) -> None:
        self._fetch = None
        if fetch.cancelled() or generation != self._generation:
            return
        error = fetch.exception()
        if error is not None:
            # Start over from the positions handed out, whatever the Kafka consumer read.
            self._seek = dict(self._positions)
            self._reseek = {}
            if isinstance(error, LogError):
                self._error = error
            else:
                self._error = LogError(f"polling Kafka failed: {error}")
                self._error.__cause__ = error
            return
        new = False
        for tp, records in fetch.result().items():
            if records and tp in self._positions:
                # Records offered since this poll began were taken already.
                expected = self._next(tp)
                if records[0].offset < expected:
                    records = [r for r in records if r.offset >= expected]
                records = self._up_to_a_gap(tp, expected, records)
                if records:
                    self._buffered.setdefault(tp, deque()).extend(records)
                    new = True
        if new or self._reseek:
            self._pause = 0.0
        else:
            least = self._settings.fetch_max_wait_ms / 1000
            self._pause = min(max(2 * self._pause, least), self.pause_max)
        self._next_fetch_at = self._loop.time() + self._pause

    def _up_to_a_gap(
        self, tp: TopicPartition, expected: int, records: list[StoredRecord]
    ) -> list[StoredRecord]:
        """The records that continue at ``expected`` without a gap; at a gap the
        partition is read again from the missing offset. Tansu can answer a fetch with a
        batch appended after one that is not visible yet (two producers appending at
        once): taking it would skip the earlier batch for good. A dense topic has no gaps
        of its own, so it is read again until the missing record comes; another topic's
        gap that a second read finds again is its own (a transaction marker, compaction),
        and taken."""
        if not records or (
            records[0].offset == expected and records[-1].offset - expected == len(records) - 1
        ):
            # Offsets only grow: the first and the last in place, none is missing.
            self._missing.pop(tp, None)
            return records
        out: list[StoredRecord] = []
        want = expected
        for record in records:
            if record.offset != want:
                seen = self._missing.get(tp)
                times = seen[1] + 1 if seen is not None and seen[0] == want else 1
                self._missing[tp] = (want, times)
                if self._dense or times == 1:
                    self._reseek[tp] = want
                    if times == _MISSING_WARN_AFTER:
                        logger.warning(
                            "%s: %d Kafka polls in a row brought records past offset %d, "
                            "never that one; reading it again",
                            tp,
                            times,
                            want,
                        )
                    return out
                del self._missing[tp]  # read twice: the topic's own gap
            out.append(record)
            want = record.offset + 1
        self._missing.pop(tp, None)
        return out

    def _take(self, max_records: int) -> dict[TopicPartition, list[StoredRecord]]:
        # Rotate the starting partition so a busy partition cannot starve the others.
        ready = list(self._buffered)
        self._rotation = (self._rotation + 1) % len(ready)
        ready = ready[self._rotation :] + ready[: self._rotation]
        share = max(1, max_records // len(ready))
        out: dict[TopicPartition, list[StoredRecord]] = {}
        for tp in ready:
            buffered = self._buffered[tp]
            records = [buffered.popleft() for _ in range(min(share, len(buffered)))]
            if not buffered:
                del self._buffered[tp]
            out[tp] = records
            self._positions[tp] = records[-1].offset + 1
        return out

    async def close(self) -> None:
        """Close the Kafka consumer, after the Kafka poll in progress (if any) returns."""
        if self._closed:
            return
        self._closed = True
        self._generation += 1
        self._buffered = {}
        self._log._consumers.discard(self)
        thread = self._thread
        if thread is None:  # never polled: nothing to close
            return
        in_progress = max(self._fetch_due - self._loop.time(), 0.0) if self._fetch else 0.0
        try:
            await _call(
                thread,
                f"closing Kafka consumer {self._role}",
                lambda: _close_quietly(self._kafka),
                in_progress + 2 * self._settings.timeout,
            )
        finally:
            thread.stop()
