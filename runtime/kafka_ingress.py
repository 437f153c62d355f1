"""Kafka ingresses: StateFun's ``io.statefun.kafka.v1/ingress`` on our runtime.

A reader per ingress consumes its topics (every partition, assigned directly: no
consumer-group membership, so no group-join delay) and turns each record into one
message per target function type: the record's key (UTF-8) is the function id, its
value is wrapped as a typed value of the topic's ``valueType``. A record whose key is
missing or unusable goes to the dead-letter topic with the reason, and reading goes on.

Positions: after a poll's messages are durable in the messages log, the reader
commits its offsets to its consumer group (``consumerGroupId``, by default
``<app id>.ingress.<namespace>.<name>``) at most once a second, so a restarted runtime
resumes there (at-least-once: messages routed after the last commit are routed
again). Without committed offsets it starts at ``startupPosition``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from runtime.dead_letters import DeadLetters
from runtime.log import StoredRecord, TopicPartition
from runtime.log.kafka import KafkaLog, KafkaLogConsumer
from runtime.router import Router
from statefun.address import Address
from statefun.errors import InvalidNameError
from statefun.module_spec import KafkaIngress, KafkaIngressTopic
from statefun.values import TypedValue

log = logging.getLogger("runtime.kafka_ingress")

COMMIT_INTERVAL = 1.0


class KafkaIngressReader:
    def __init__(
        self,
        spec: KafkaIngress,
        cluster: KafkaLog,
        router: Router,
        dead_letters: DeadLetters,
        app_id: str,
    ):
        self.spec = spec
        self._cluster = cluster
        self._router = router
        self._dead_letters = dead_letters
        # No '/' in the default: Tansu cannot read back offsets of a group named with one.
        self.group = (
            spec.consumer_group_id or f"{app_id}.ingress.{spec.id.namespace}.{spec.id.name}"
        )
        self._topics: dict[str, KafkaIngressTopic] = {t.topic: t for t in spec.topics}
        self._consumer: KafkaLogConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.routed = 0

    async def start(self) -> None:
        for topic in self._topics:
            count = await self._cluster.open_topic(topic)
            committed = await self._cluster.committed_offsets(self.group, topic)
            starts = await self._start_offsets(topic, count)
            for p in range(count):
                tp = TopicPartition(topic, p)
                self._positions[tp] = committed.get(p, starts[p])
        self._committed = dict(self._positions)
        self._consumer = self._cluster.consumer()
        self._consumer.assign(self._positions)
        self._task = asyncio.create_task(self._run(), name=f"kafka-ingress {self.spec.id}")
        log.info(
            "Kafka ingress %s reading %s from %s",
            self.spec.id,
            ", ".join(self._topics),
            {str(tp): o for tp, o in self._positions.items()},
        )

    async def _start_offsets(self, topic: str, count: int) -> list[int]:
        """Where to start without committed offsets (StateFun's startupPosition)."""
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

    async def _run(self) -> None:
        assert self._consumer is not None
        last_commit = time.monotonic()
        while True:
            polled = await self._consumer.poll(0.2)
            appends: list[asyncio.Future[list[int]]] = []
            for tp, records in polled.items():
                for record in records:
                    appends.extend(self._route(tp, record))
                self._positions[tp] = records[-1].offset + 1
            if appends:
                # Flow control: the next poll waits until these are durable.
                await asyncio.gather(*appends)
            if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                await self._commit()
                last_commit = time.monotonic()

    def _route(self, tp: TopicPartition, record: StoredRecord) -> list[asyncio.Future[list[int]]]:
        topic = self._topics[tp.topic]
        source = f"{tp.topic}/{tp.partition}@{record.offset}"
        try:
            if record.key is None:
                raise ValueError("the record has no key (the key is the function id)")
            function_id = record.key.decode("utf-8")
            targets = [Address.of(t, function_id) for t in topic.targets]
        except (ValueError, InvalidNameError) as e:
            reason = (
                str(e) if not isinstance(e, UnicodeDecodeError) else f"the key is not UTF-8: {e}"
            )
            return [
                self._dead_letters.park(
                    record.key,
                    record.value,
                    reason=reason,
                    source=source,
                    origin=f"kafka ingress {self.spec.id}",
                )
            ]
        argument = TypedValue(topic.value_type, record.value)
        appends = []
        for target in targets:
            append = self._router.send(target, None, argument)
            assert append is not None
            appends.append(append)
        self.routed += 1
        return appends

    async def _commit(self) -> None:
        changed = {tp: o for tp, o in self._positions.items() if self._committed.get(tp) != o}
        if changed:
            await self._cluster.commit_offsets(self.group, changed)
            self._committed.update(changed)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._commit_routed()
            await self._consumer.close()

    async def _commit_routed(self) -> None:
        # What was routed is durable once the log is flushed; commit exactly that.
        await self._router.flush()
        await self._commit()
