"""Kafka ingresses: StateFun's ``io.statefun.kafka.v1/ingress`` on our runtime.

A reader per ingress consumes its topics (every partition, assigned directly: no
consumer-group membership, so no group-join delay) and turns each record into one
message per target function type: the record's key (UTF-8) is the function id, its
value is wrapped as a typed value of the topic's ``valueType``. A record whose key is
missing or unusable goes to the dead-letter topic with the reason, and reading goes on.

A reader is a checkpoint participant: its read positions are part of every
checkpoint, and what it appends carries the epoch's tag, so a rollback rewinds it to
the checkpoint's positions and the records it appended since are skipped: every
ingress record becomes its messages exactly once. Without a checkpoint it starts at
``startupPosition`` (``group-offsets`` reads the positions committed for
``consumerGroupId``).

Each message carries the ingress as its route's source (``runtime.envelope``), and counts
as a message of that route (``runtime.metrics``) when it is appended.

A reader that cannot read its cluster (a stalled broker) logs it once and polls again,
from the same positions, until it can; one whose appends fail stops, and the runtime,
told by the log, ends the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection

from runtime.checkpoints.coordinator import Capture
from runtime.checkpoints.epochs import EpochClock
from runtime.checkpoints.snapshot import INGRESS_PART_PREFIX, encode_positions
from runtime.dead_letters import DeadLetters
from runtime.envelope import source_header
from runtime.errors import LogError, UnknownTopicError
from runtime.log import StoredRecord, TopicPartition
from runtime.log.kafka import KafkaLog, KafkaLogConsumer
from runtime.metrics import Metrics, kafka_source
from runtime.quiet_log import QuietLog
from runtime.router import Router
from statefun.address import Address
from statefun.errors import InvalidNameError
from statefun.module_spec import KafkaIngress, KafkaIngressTopic
from statefun.values import TypedValue

log = logging.getLogger(__name__)

POLL_RETRY_BACKOFF = 1.0
"""Seconds between polls while the ingress's cluster cannot be read."""


async def open_ingress_topic(cluster: KafkaLog, ingress: object, topic: str) -> int:
    """Open ``topic``, which the Kafka ingress ``ingress`` reads; its partition count.

    The runtime creates only its own topics: an ingress topic belongs to whoever writes
    it, so a missing one is an :class:`UnknownTopicError` saying to create it first."""
    try:
        return await cluster.open_topic(topic)
    except UnknownTopicError:
        raise UnknownTopicError(
            f"topic {topic}, which Kafka ingress {ingress} reads, does not exist: the runtime "
            "creates only its own topics; create it (with the partitions its writers need) "
            "before starting the runtime"
        ) from None


class KafkaIngressReader:
    def __init__(
        self,
        spec: KafkaIngress,
        cluster: KafkaLog,
        router: Router,
        dead_letters: DeadLetters,
        clock: EpochClock,
        app_id: str,
        metrics: Metrics,
    ):
        self.spec = spec
        self.name = f"{INGRESS_PART_PREFIX}{spec.id}"
        self._cluster = cluster
        self._router = router
        self._dead_letters = dead_letters
        self._clock = clock
        # No '/' in the default: Tansu cannot read back offsets of a group named with one.
        self.group = (
            spec.consumer_group_id or f"{app_id}.ingress.{spec.id.namespace}.{spec.id.name}"
        )
        self._topics: dict[str, KafkaIngressTopic] = {t.topic: t for t in spec.topics}
        self._consumer: KafkaLogConsumer | None = None
        self._positions: dict[tuple[str, int], int] = {}
        self._task: asyncio.Task[None] | None = None
        self._quiet = QuietLog(log)
        self.routed = 0
        source = kafka_source(spec.id)
        self._source = (source_header(source),)
        self._routes = {t: metrics.route(source, t) for topic in spec.topics for t in topic.targets}

    async def start(
        self,
        restored: dict[tuple[str, int], int] | None,
        owned: Collection[tuple[str, int]] | None = None,
    ) -> None:
        """Read from a checkpoint's positions, or (None) from the startup position; only
        the ``owned`` topic partitions (None: all)."""
        for topic in self._topics:
            count = await open_ingress_topic(self._cluster, self.spec.id, topic)
            mine = [p for p in range(count) if owned is None or (topic, p) in owned]
            if restored is None:
                committed = await self._cluster.committed_offsets(self.group, topic)
                starts = await self._start_offsets(topic, count)
            for p in mine:
                if restored is not None:
                    self._positions[topic, p] = restored.get((topic, p), 0)
                else:
                    self._positions[topic, p] = committed.get(p, starts[p])
        # Topics others write: transaction markers and compaction leave gaps of their own.
        self._consumer = self._cluster.consumer(dense=False)
        self._consumer.assign({TopicPartition(t, p): o for (t, p), o in self._positions.items()})
        self._task = asyncio.create_task(self._run(), name=f"kafka-ingress {self.spec.id}")
        log.info(
            "Kafka ingress %s reading %s from %s",
            self.spec.id,
            ", ".join(self._topics),
            {f"{t}/{p}": o for (t, p), o in self._positions.items()},
        )

    async def _start_offsets(self, topic: str, count: int) -> list[int]:
        """Where to start without a checkpoint (StateFun's startupPosition)."""
        position = self.spec.startup_position
        if position.kind == "specific-offsets":
            given = {(t, p): o for t, p, o in position.offsets if t == topic}
            fallback = await self._cluster.start_offsets(topic, self.spec.auto_offset_reset)
            return [given.get((topic, p), fallback[p]) for p in range(count)]
        if position.kind == "date":
            assert position.date_ms is not None
            return await self._cluster.start_offsets(topic, position.date_ms)
        if position.kind == "group-offsets":
            return await self._cluster.start_offsets(topic, self.spec.auto_offset_reset)
        return await self._cluster.start_offsets(topic, position.kind)

    @property
    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read, per topic partition it reads."""
        return dict(self._positions)

    def capture(self) -> Capture:
        return Capture(encode_positions(self._positions))

    async def _run(self) -> None:
        assert self._consumer is not None
        failing_since: float | None = None
        while True:
            try:
                polled = await self._consumer.poll(0.2)
            except LogError as e:
                # Nothing was taken: the next poll reads from the same positions.
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("Kafka ingress %s cannot read: %s", self.spec.id, e)
                await asyncio.sleep(POLL_RETRY_BACKOFF)
                continue
            if failing_since is not None:
                log.info(
                    "Kafka ingress %s reads again after %.0f s",
                    self.spec.id,
                    time.monotonic() - failing_since,
                )
                failing_since = None
            appends: list[asyncio.Future[list[int]]] = []
            for tp, records in polled.items():
                for record in records:
                    appends.extend(self._route(tp, record))
                self._positions[tp.topic, tp.partition] = records[-1].offset + 1
            if appends:
                # Flow control: the next poll waits until these are durable.
                try:
                    await asyncio.gather(*appends)
                except LogError:
                    return  # the log told the runtime, which ends this generation

    def _route(self, tp: TopicPartition, record: StoredRecord) -> list[asyncio.Future[list[int]]]:
        topic = self._topics[tp.topic]
        tag = self._clock.header
        try:
            if record.key is None:
                raise ValueError("the record has no key (the key is the function id)")
            function_id = record.key.decode("utf-8")
            targets = [Address.of(t, function_id) for t in topic.targets]
        except (ValueError, InvalidNameError) as e:
            reason = f"the key is not UTF-8: {e}" if isinstance(e, UnicodeDecodeError) else str(e)
            self._quiet.log(
                tp.topic,
                logging.ERROR,
                "a record of %s[%d]@%d parked in the dead letters: %s",
                tp.topic,
                tp.partition,
                record.offset,
                reason,
            )
            return [
                self._dead_letters.park_record(
                    record.key,
                    record.value,
                    reason=reason,
                    source=f"{tp.topic}/{tp.partition}@{record.offset}",
                    origin=f"kafka ingress {self.spec.id}",
                    tag=tag,
                )
            ]
        argument = TypedValue(topic.value_type, record.value)
        self.routed += 1
        appends = []
        for target in targets:
            appends.append(
                self._router.append(target, None, argument, tag=tag, headers=self._source)[1]
            )
            self._routes[target.function_type].inc()
        return appends

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.close()
