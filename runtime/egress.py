"""Egresses: where the records functions send to an egress go, and exactly-once egress.

This module owns egress whole: the writers (:class:`Egresses`), the ids, and the outbox
of exactly-once records (:class:`EgressOutbox`, a checkpoint participant) that holds
each record until the checkpoint of the work that produced it commits, publishes it
then, notes what is out in the checkpoint store, and after a restore publishes again
only what the restored checkpoint holds and is not known to be out.

An embedded egress (``statefun.v1/egress``) appends to its own topic in the runtime's
log, readable through the ingress API. A Kafka egress (``io.statefun.kafka.v1/egress``)
takes StateFun's ``KafkaProducerRecord`` and produces it to the topic it names, keyed
partitioning as Kafka's default partitioner does.

Every record carries a unique id in its ``statefun.egress-id`` header. An exactly-once
egress (the default) is written only after the checkpoint of the work that produced it
commits (the outbox holds its records until then):
rolled-back work never shows. An exactly-once Kafka egress publishes each checkpoint's
records in one Kafka transaction with a marker of the checkpoint
(:mod:`runtime.log.kafka_transactions`): after a crash the runtime knows from the marker
what is out, and ``read_committed`` readers see every record once, on a broker that
honours transactions. An embedded egress, or a broker that does not honour them, may
show a record again after a crash in the middle of publishing: the same record with the
same id, which readers drop. An at-least-once egress is written when the batch is
applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections import Counter as Tally
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence

import msgpack

from runtime.checkpoints.coordinator import Capture
from runtime.checkpoints.epochs import EpochClock
from runtime.checkpoints.snapshot import EGRESS_PART, EgressItem, encode_egress_items
from runtime.errors import ConfigurationError, LogError, StoreError, UnknownTopicError
from runtime.kafka_clusters import KafkaClusters
from runtime.log import Log, LogConsumer, Record, StoredRecord, TopicPartition
from runtime.log.kafka import KafkaLog
from runtime.log.kafka_transactions import TransactionalPublisher
from runtime.metrics import EgressCounter, Metrics
from runtime.routing import Topics, partition_for_key
from statefun.address import TypeName
from statefun.egress import KAFKA_PRODUCER_RECORD_TYPENAME, KafkaProducerRecord
from statefun.errors import ValueTypeError
from statefun.module_spec import KafkaEgress, LogEgress, ModuleSpec
from statefun.values import TypedValue

log = logging.getLogger(__name__)

ID_HEADER = "statefun.egress-id"

WAIT_RECHECK = 0.05
"""Seconds between two reads of a read that waits for an embedded egress's next record,
until the egress's follower follows (it then wakes the read as the record comes)."""

TAIL_RECORDS = 1024
"""The most records an :class:`EgressTail` holds."""

FOLLOW_IDLE = 60.0
"""Seconds without a read after which an embedded egress is no longer followed."""

EgressRecord = tuple[int, str, TypedValue]
"""An embedded egress record as read: its offset, its id and its value."""


async def open_egress_topic(cluster: KafkaLog, topic: str) -> int:
    """Open a Kafka egress topic, creating it with one partition (as a broker's
    auto-creation would) if it does not exist; its partition count."""
    try:
        return await cluster.open_topic(topic)
    except UnknownTopicError:
        log.info("creating egress topic %s with one partition", topic)
        await cluster.ensure_topic(topic, 1)
        return 1


def kafka_partition(record: Record, count: int, unkeyed: Iterator[int]) -> int:
    """Kafka's default partitioner: by key, round robin without one."""
    if record.key is None:
        return next(unkeyed) % count
    return partition_for_key(record.key, count)


class KafkaTopicWriter:
    """Produces records to a Kafka cluster's topics, opening each topic on first use.

    A topic that does not exist is created with one partition, as a Kafka broker's
    auto-creation would. Records for a topic being opened wait, in order.
    """

    def __init__(self, cluster: KafkaLog):
        self._cluster = cluster
        self._partitions: dict[str, int] = {}
        self._waiting: dict[str, list[tuple[Record, asyncio.Future[list[int]]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unkeyed = itertools.count()

    def send(self, topic: str, record: Record) -> asyncio.Future[list[int]]:
        if topic in self._partitions:
            return self._append(topic, record)
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(topic, [])
        waiting.append((record, future))
        if len(waiting) == 1:
            task = asyncio.create_task(self._open(topic))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    def _append(self, topic: str, record: Record) -> asyncio.Future[list[int]]:
        partition = kafka_partition(record, self._partitions[topic], self._unkeyed)
        return self._cluster.append(topic, partition, [record])

    async def _open(self, topic: str) -> None:
        try:
            count = await open_egress_topic(self._cluster, topic)
        except Exception as e:
            for _, future in self._waiting.pop(topic, []):
                future.set_exception(e)
            return
        # No await from here until every waiting record is appended: later sends go
        # straight to the topic and must come after them.
        self._partitions[topic] = count
        appended = [
            (self._append(topic, record), future) for record, future in self._waiting.pop(topic)
        ]
        for append, future in appended:
            try:
                future.set_result(await append)
            except Exception as e:
                future.set_exception(e)


class TransactionalKafkaWriter:
    """The exactly-once Kafka egresses on one cluster: each checkpoint's records in one
    transaction (see :class:`TransactionalPublisher`)."""

    def __init__(
        self,
        cluster: KafkaLog,
        transactional_id: str,
        marker_topic: str,
        transaction_timeout: float | None,
    ):
        self._cluster = cluster
        self._transactional_id = transactional_id
        self._marker_topic = marker_topic
        self._transaction_timeout = transaction_timeout
        self._publisher: TransactionalPublisher | None = None
        self._partitions: dict[str, int] = {}
        self._unkeyed = itertools.count()

    async def start(self) -> None:
        self._publisher = await TransactionalPublisher.open(
            self._cluster, self._transactional_id, self._marker_topic, self._transaction_timeout
        )

    @property
    def published_through(self) -> int:
        assert self._publisher is not None
        return self._publisher.published_through

    async def publish(self, checkpoint: int, records: Sequence[tuple[str, Record]]) -> None:
        assert self._publisher is not None
        out = []
        for topic, record in records:
            count = self._partitions.get(topic)
            if count is None:
                count = self._partitions[topic] = await open_egress_topic(self._cluster, topic)
            out.append((topic, kafka_partition(record, count, self._unkeyed), record))
        await self._publisher.publish(checkpoint, out)

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()


class Egresses:
    def __init__(
        self,
        log_: Log,
        topics: Topics,
        module: ModuleSpec,
        clusters: KafkaClusters,
        *,
        member: str | None = None,
        window: float = 0.0,
    ):
        """``member``: this process's member id in a cluster: its Kafka transactions and
        their markers are its own, so members never fence each other. ``window``: the
        embedded egresses' retention in seconds (0: none), which their followers'
        tails keep to (see :class:`EgressFollower`)."""
        self._log = log_
        self._topics = topics
        self._member = member
        self._clusters = clusters
        self._log_topics = {
            e.id: topics.egress(e.id) for e in module.egresses if isinstance(e, LogEgress)
        }
        if len(set(self._log_topics.values())) < len(self._log_topics):
            raise ConfigurationError(
                "two egress ids differ only in characters a topic name cannot hold: "
                + ", ".join(str(e) for e in self._log_topics)
            )
        self._kafka_specs = [e for e in module.egresses if isinstance(e, KafkaEgress)]
        self._exactly_once = {
            e.id for e in module.egresses if e.delivery_semantic == "exactly-once"
        }
        self._kafka: dict[TypeName, KafkaTopicWriter] = {}
        """At-least-once Kafka egresses."""
        self._transactional: dict[TypeName, TransactionalKafkaWriter] = {}
        """Exactly-once Kafka egresses."""
        self.wait_recheck = WAIT_RECHECK
        """Seconds between two reads of a read that waits (see :meth:`read`)."""
        self._followers = {
            topic: EgressFollower(log_, topic, window) for topic in self._log_topics.values()
        }

    async def start(self) -> None:
        for topic in self._log_topics.values():
            await self._log.ensure_topic(topic, 1)
        clusters: dict[int, tuple[KafkaLog, list[KafkaEgress]]] = {}
        for spec in self._kafka_specs:
            cluster = await self._clusters.get(spec.address, f"egress {spec.id}", spec.security)
            clusters.setdefault(id(cluster), (cluster, []))[1].append(spec)
        transactional = 0
        for cluster, specs in clusters.values():
            loose = [s for s in specs if s.id not in self._exactly_once]
            if loose:
                writer = KafkaTopicWriter(cluster)
                self._kafka.update((s.id, writer) for s in loose)
            exact = [s for s in specs if s.id in self._exactly_once]
            if exact:
                # One transactional id per application (per member in a cluster) and
                # Kafka cluster: a restarted runtime fences the one before it. The longest
                # transaction timeout asked for on the cluster applies to all its
                # exactly-once egresses.
                timeouts = [s.transaction_timeout for s in exact if s.transaction_timeout]
                txn = TransactionalKafkaWriter(
                    cluster,
                    self._topics.egress_transactional_id(transactional, self._member),
                    self._topics.egress_markers(transactional),
                    max(timeouts, default=None),
                )
                await txn.start()
                transactional += 1
                self._transactional.update((s.id, txn) for s in exact)

    async def close(self) -> None:
        for follower in self._followers.values():
            await follower.stop()
        for writer in {id(w): w for w in self._transactional.values()}.values():
            await writer.close()

    def published_through(self) -> int:
        """The highest checkpoint a Kafka transaction's marker says is published (0: none)."""
        return max((w.published_through for w in self._transactional.values()), default=0)

    def published_already(self, item: EgressItem) -> bool:
        """Whether a Kafka transaction has published ``item`` already (its checkpoint's
        marker is committed). In a cluster the markers are this member's own, and say
        nothing of records other members produced (a restore hands them over): there the
        decision log's ``Published`` records say what is out."""
        if self._member is not None:
            return False
        writer = self._transactional.get(item.egress)
        return writer is not None and item.epoch <= writer.published_through

    async def publish_committed(
        self, checkpoint: int, items: Sequence[EgressItem]
    ) -> list[EgressItem]:
        """Publish the exactly-once records of committed checkpoints up to ``checkpoint``:
        to embedded egresses as appends to the runtime's log (a failure raises the log's
        error), to each Kafka cluster in one transaction. The records a Kafka egress failed
        to take, to publish again later (with the same ids)."""
        by_writer: dict[int, tuple[TransactionalKafkaWriter, list[EgressItem]]] = {}
        appends = []
        for item in items:
            writer = self._transactional.get(item.egress)
            if writer is None:
                appends.append(self.publish(item))
            else:
                by_writer.setdefault(id(writer), (writer, []))[1].append(item)
        writers = list(by_writer.values())
        results = await asyncio.gather(
            *(
                w.publish(checkpoint, [self._kafka_record(i) for i in group])
                for w, group in writers
            ),
            return_exceptions=True,
        )
        await asyncio.gather(*appends)
        left: list[EgressItem] = []
        for (_, group), result in zip(writers, results, strict=True):
            if isinstance(result, BaseException):
                log.debug("a Kafka egress transaction failed: %s", result)
                left.extend(group)
        return left

    def problem(self, egress_id: TypeName, argument: TypedValue) -> str | None:
        """Why this record cannot go to this egress, or None."""
        if egress_id in self._log_topics:
            return None
        if egress_id not in self._kafka and egress_id not in self._transactional:
            return f"no egress {egress_id} is declared in the module spec"
        if argument.typename != KAFKA_PRODUCER_RECORD_TYPENAME or argument.value is None:
            return (
                f"Kafka egress {egress_id} takes {KAFKA_PRODUCER_RECORD_TYPENAME} records "
                f"(see kafka_egress_message), not {argument.typename}"
            )
        try:
            KafkaProducerRecord.decode(argument.value)
        except ValueTypeError as e:
            return f"record for Kafka egress {egress_id}: {e}"
        return None

    def exactly_once(self, egress_id: TypeName) -> bool:
        return egress_id in self._exactly_once

    def publish(self, item: EgressItem) -> asyncio.Future[list[int]]:
        """Write a record that :meth:`problem` accepted, with its id."""
        headers = ((ID_HEADER, item.id.encode()),)
        argument = item.argument
        topic = self._log_topics.get(item.egress)
        if topic is not None:
            value = msgpack.packb((argument.typename, argument.value), use_bin_type=True)
            return self._log.append(topic, 0, [Record(value=value, headers=headers)])
        return self._kafka[item.egress].send(*self._kafka_record(item))

    def publish_at_once(self, item: EgressItem) -> asyncio.Future[list[int]]:
        """Write an at-least-once record as the work that produced it is applied: to an
        embedded egress at once (its topic is in the log, after that work's input), to
        Kafka once every record the worker may have taken early from the log is durable
        (``Log.unsettled``): a record published from input that never became durable
        would be one no replay produces again. If the log fails instead, so does this."""
        unsettled = None if item.egress in self._log_topics else self._log.unsettled()
        if unsettled is None:
            return self.publish(item)
        published: asyncio.Future[list[int]] = unsettled.get_loop().create_future()

        def outcome(done: asyncio.Future[list[int]]) -> None:
            if published.done():
                return
            if done.cancelled():
                published.cancel()
            elif (error := done.exception()) is not None:
                published.set_exception(error)
            else:
                published.set_result(done.result())

        def settled(done: asyncio.Future[list[int]]) -> None:
            if done.cancelled() or done.exception() is not None:
                outcome(done)
            else:
                self.publish(item).add_done_callback(outcome)

        unsettled.add_done_callback(settled)
        return published

    @staticmethod
    def _kafka_record(item: EgressItem) -> tuple[str, Record]:
        """The topic and record of a Kafka egress item, with its id."""
        assert item.argument.value is not None
        record = KafkaProducerRecord.decode(item.argument.value)
        key = None if record.key is None else record.key.encode()
        headers = ((ID_HEADER, item.id.encode()),)
        return record.topic, Record(value=record.value, key=key, headers=headers)

    def readable(self, egress_id: TypeName) -> bool:
        return egress_id in self._log_topics

    async def read(
        self, egress_id: TypeName, offset: int, max_records: int, wait: float = 0.0
    ) -> list[EgressRecord]:
        """(offset, record id, value) of an embedded egress's records from ``offset``:
        the newest from its follower's tail (see :class:`EgressFollower`), older ones
        from the log. With none there yet, wait up to ``wait`` seconds for the first:
        woken as the follower takes the next record, and reading again every
        ``wait_recheck`` seconds (until the follower follows)."""
        follower = self._followers[self._log_topics[egress_id]]
        return await follower.read(offset, max_records, wait, self.wait_recheck)

    def waiting_reads(self, egress_id: TypeName) -> int:
        """How many reads of an embedded egress wait for its next record now."""
        return len(self._followers[self._log_topics[egress_id]].waiting)

    def following(self, egress_id: TypeName) -> bool:
        """Whether reads of an embedded egress are answered from its follower's tail now."""
        return self._followers[self._log_topics[egress_id]].following


class EgressTail:
    """The newest records of an embedded egress topic, in offset order without a gap,
    up to ``position`` (the offset after the newest): a read from among them or from
    past them is answered here. Records older than ``window`` seconds (the egress
    retention; 0: none), which the log may have dropped, are let go, and so are all but
    the newest :data:`TAIL_RECORDS`. Times are the caller's clock."""

    def __init__(self, position: int, window: float = 0.0) -> None:
        self.position = position
        self._window = window
        self._records: deque[EgressRecord] = deque(maxlen=TAIL_RECORDS)
        self._times: deque[float] = deque(maxlen=TAIL_RECORDS)

    def add(self, record: EgressRecord, now: float) -> None:
        """The record at ``position``."""
        if record[0] != self.position:
            raise ValueError(f"record {record[0]} does not follow the tail at {self.position}")
        self._records.append(record)
        self._times.append(now)
        self.position += 1

    def read(self, offset: int, max_records: int, now: float) -> list[EgressRecord] | None:
        """The records from ``offset`` on (empty: none yet), or None if the log must say."""
        records, times = self._records, self._times
        if self._window > 0:
            while times and times[0] < now - self._window:
                times.popleft()
                records.popleft()
        first = records[0][0] if records else self.position
        if offset < first:
            return None
        skip = offset - first
        return list(itertools.islice(records, skip, skip + max_records))


class EgressFollower:
    """Follows an embedded egress topic while it is read, keeping its newest records in
    an :class:`EgressTail`, so reads of them (and of what is not there yet: a reader
    that keeps up) need not go to the log. On Kafka a read of the log is a consumer's
    assign, ListOffsets, seek and fetch on one shared thread: about 200 ms a read while
    the runtime is busy.

    The first read starts it: a consumer of the log from the topic's end then. Every
    writer's records come through it (a cluster's other members' too), this process's
    own handed over as they become durable; a reader asking past the newest is as far
    behind as the consumer, as it would be reading the log. It stops after
    :data:`FOLLOW_IDLE` seconds without a read, and when reading the log fails (the
    next read starts it again). Reads that wait for the next record are woken as it
    comes."""

    def __init__(self, log_: Log, topic: str, window: float) -> None:
        self._log = log_
        self._topic = topic
        self._window = window
        self.waiting: set[asyncio.Future[None]] = set()
        """The reads waiting for the topic's next record."""
        self._tail: EgressTail | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_read = 0.0

    @property
    def following(self) -> bool:
        return self._tail is not None

    async def read(
        self, offset: int, max_records: int, wait: float, recheck: float
    ) -> list[EgressRecord]:
        """The records from ``offset`` on: from the tail, else from the log. With none
        there yet, wait up to ``wait`` seconds for the first: woken as it comes, and
        reading again every ``recheck`` seconds (until the tail follows)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            # Listening before reading: a record that comes during the read wakes us.
            woken: asyncio.Future[None] = loop.create_future()
            self.waiting.add(woken)
            try:
                records = self._from_tail(offset, max_records)
                if records is None:
                    stored = await self._log.read(self._topic, 0, offset, max_records)
                    records = [_egress_record(r) for r in stored]
                remaining = deadline - loop.time()
                if records or remaining <= 0:
                    return records
                await asyncio.wait({woken}, timeout=min(remaining, recheck))
            finally:
                self.waiting.discard(woken)
                woken.cancel()

    def _from_tail(self, offset: int, max_records: int) -> list[EgressRecord] | None:
        """The records from ``offset`` on from the tail, or None if the log must say; the
        first read starts following."""
        loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        if self._task is None:
            self._task = loop.create_task(self._follow())
        tail = self._tail
        return None if tail is None else tail.read(offset, max_records, self._last_read)

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        tp = TopicPartition(self._topic, 0)
        consumer: LogConsumer | None = None
        try:
            consumer = self._log.consumer()
            (end,) = await self._log.end_offsets(self._topic)
            consumer.assign({tp: end})
            tail = self._tail = EgressTail(end, self._window)
            while loop.time() - self._last_read < FOLLOW_IDLE:
                taken = (await consumer.poll(1.0)).get(tp)
                if taken:
                    now = loop.time()
                    for stored in taken:
                        tail.add(_egress_record(stored), now)
                    for woken in self.waiting:
                        if not woken.done():
                            woken.set_result(None)
        except LogError as e:
            log.debug("following %s stopped: %s", self._topic, e)
        except Exception:
            # Reads go to the log until the next one starts following again.
            log.warning("following %s failed", self._topic, exc_info=True)
        finally:
            self._tail = None
            self._task = None
            if consumer is not None:
                with contextlib.suppress(LogError):
                    await consumer.close()

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _egress_record(record: StoredRecord) -> EgressRecord:
    """An embedded egress record as (offset, record id, value)."""
    typename, value = msgpack.unpackb(record.value, raw=False)
    record_id = next((v.decode() for k, v in record.headers if k == ID_HEADER), "")
    return record.offset, record_id, TypedValue(typename, value)


class EgressOutbox:
    """The records of one generation bound for egresses, and the exactly-once ones held
    until their checkpoint commits.

    A checkpoint participant (part ``egress``): its part is every exactly-once record not
    yet published, so a restore publishes them again if they were not out. Ids are
    ``<generation>.<epoch>.<producer>.<serial>``, unique within the application: the
    producer is the clock's (the application id, or in a cluster the member id, so two
    members never give one id). Publications run
    one after another, each taking every held record of its checkpoint or earlier, so a
    checkpoint is never noted as published while an earlier one's records are not out. A
    Kafka egress that fails is tried again with the next commit (its records stay held);
    a failure of the runtime's own log (an embedded egress) is the log's, reported to
    ``on_log_failure``.
    """

    name = EGRESS_PART

    def __init__(
        self,
        egresses: Egresses,
        clock: EpochClock,
        *,
        note_published: Callable[[int], Awaitable[None]],
        on_log_failure: Callable[[str], None],
        metrics: Metrics | None = None,
        on_demand: Callable[[], None] = lambda: None,
    ):
        """``metrics``: where to count published records (None: a registry of its own);
        ``on_demand``: called when an exactly-once record is held (a checkpoint should
        come soon)."""
        self._on_demand = on_demand
        self._metrics = metrics or Metrics()
        self._egresses = egresses
        self._clock = clock
        self._note_published = note_published
        self._on_log_failure = on_log_failure
        self._held: list[EgressItem] = []
        self._partition_of: dict[str, int] = {}
        """The messages partition of the address that emitted each held record."""
        self._serial = 0
        self._publishing: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._failing = False
        """The last publication to a Kafka egress failed."""

    def __len__(self) -> int:
        return len(self._held)

    def restore(
        self, items: Sequence[EgressItem], published_through: int, partition: int = 0
    ) -> None:
        """Hold the records of the restored checkpoint that are not out already (noted
        published through ``published_through``, or in a committed Kafka transaction);
        ``partition``: the messages partition whose addresses emitted them. Called once
        per partition restored, the records add up."""
        for item in items:
            if item.epoch > published_through and not self._egresses.published_already(item):
                self._held.append(item)
                self._partition_of[item.id] = partition

    def pending(self) -> dict[str, int]:
        """Exactly-once records held until their checkpoint commits and they are out, per
        egress (read at scrape time)."""
        return dict(Tally(str(item.egress) for item in self._held))

    def held_by_partition(self) -> dict[int, list[EgressItem]]:
        """The records held now, by the messages partition of the address that emitted them."""
        held: dict[int, list[EgressItem]] = {}
        for item in self._held:
            held.setdefault(self._partition_of.get(item.id, 0), []).append(item)
        return held

    def emit(self, egress_id: TypeName, argument: TypedValue, partition: int = 0) -> None:
        """A record a function sent (checked with :meth:`Egresses.problem` already), from
        an address of messages ``partition``."""
        self._serial += 1
        clock = self._clock
        item = EgressItem(
            f"{clock.generation}.{clock.epoch}.{clock.producer}.{self._serial}",
            egress_id,
            argument,
            clock.epoch,
        )
        if self._egresses.exactly_once(egress_id):
            self._held.append(item)
            self._partition_of[item.id] = partition
            self._on_demand()
            return
        self._egresses.publish_at_once(item).add_done_callback(
            functools.partial(self._published_at_least_once, self._metrics.egress(egress_id))
        )

    def _published_at_least_once(
        self, published: EgressCounter, future: asyncio.Future[list[int]]
    ) -> None:
        if future.cancelled():
            return
        if (error := future.exception()) is not None:
            self._on_log_failure(f"writing an at-least-once egress record failed: {error}")
        else:
            published.inc()

    def capture(self) -> Capture:
        return Capture(encode_egress_items(self._held), releases=bool(self._held))

    def publish_committed(self, checkpoint: int) -> asyncio.Task[None] | None:
        """Checkpoint ``checkpoint`` committed: publish the records it covers. They stay
        held (and in later checkpoints) until they are out."""
        if not any(item.epoch <= checkpoint for item in self._held):
            return None
        task = asyncio.create_task(self._publish(checkpoint), name="egress-publish")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        return task

    async def _publish(self, checkpoint: int) -> None:
        async with self._lock:  # one publication after another
            items = [item for item in self._held if item.epoch <= checkpoint]
            if not items:
                return  # an earlier publication took them
            try:
                left = await self._egresses.publish_committed(checkpoint, items)
            except LogError as e:
                self._on_log_failure(f"publishing egress of checkpoint {checkpoint} failed: {e}")
                return
            kept = {item.id for item in left}
            published = {item.id for item in items} - kept
            for item in items:
                if item.id in published:
                    self._metrics.egress(item.egress).inc()
            self._held = [item for item in self._held if item.id not in published]
            for record_id in published:
                self._partition_of.pop(record_id, None)
            if left:
                if not self._failing:
                    log.error(
                        "publishing %d records of checkpoint %d to Kafka egresses failed; they "
                        "are published with the next checkpoint",
                        len(left),
                        checkpoint,
                    )
                self._failing = True
                return
            if self._failing:
                log.warning("egress publishing works again (checkpoint %d)", checkpoint)
                self._failing = False
            try:
                await self._note_published(checkpoint)
            except StoreError as e:
                # Out but not noted: after a crash they are published again, with the same
                # ids, which readers drop; the next publication notes it if it can.
                log.warning(
                    "noting the egress of checkpoint %d as published failed: %s", checkpoint, e
                )

    async def cancel(self) -> None:
        """Abandon publications under way (a rollback: the restored checkpoint holds
        their records)."""
        for task in list(self._publishing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
