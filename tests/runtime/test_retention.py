"""Retention: the embedded messages topic keeps what a retained checkpoint can need, the
windowed topics keep their window, and Kafka topics are created with retention settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtime.checkpoints.snapshot import Overflow, WorkerPart, encode_worker_part
from runtime.checkpoints.store import CheckpointStore
from runtime.idempotency import encode_floors
from runtime.log import Record
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog
from runtime.retention import Retention, read_floors
from runtime.routing import Topics
from statefun.address import Address
from statefun.module_spec import parse_module_spec

pytestmark = pytest.mark.anyio

TOPICS = Topics("app")
MODULE = parse_module_spec(
    """kind: io.statefun.endpoints.v2/http
spec: {functions: test/*, urlPathTemplate: "http://127.0.0.1:1/"}
---
kind: statefun.v1/egress
spec: {id: test/out}
"""
)
A = Address("test", "counter", "a")


def part(positions: dict[int, int], overflow: tuple[Overflow, ...] = ()) -> bytes:
    return encode_worker_part(WorkerPart([], [], positions, overflow=list(overflow)))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CheckpointStore]:
    opened = await CheckpointStore.open(tmp_path)
    yield opened
    await opened.close()


def test_read_floors_take_the_lowest_offset_any_part_reads_again() -> None:
    parts = [
        part({0: 10, 1: 20}),
        part({0: 15, 1: 30}, (Overflow(1, 12, address=A),)),  # an overflowed address re-reads 12
        part({0: 40}),  # says nothing of partition 1: keep all of it
    ]
    assert read_floors(parts, 3) == {0: 10, 1: 0, 2: 0}
    assert read_floors(parts[:2], 2) == {0: 10, 1: 12}
    # a key held at a checkpoint may have its record below that checkpoint's positions
    keys = [encode_floors({1: 4}), encode_floors({0: 11})]
    assert read_floors(parts[:2], 2, keys) == {0: 10, 1: 4}


async def test_messages_below_every_retained_checkpoints_floor_are_dropped(
    store: CheckpointStore,
) -> None:
    log = MemoryLog()
    retention = Retention(log, store, TOPICS, MODULE, 2)
    await retention.create_topics()
    await log.append(TOPICS.messages, 0, [Record(b"m")] * 50)
    await log.append(TOPICS.messages, 1, [Record(b"m")] * 50)
    assert await retention.truncate_messages() == {}  # no checkpoint yet: keep everything
    for checkpoint, positions in enumerate(({0: 5, 1: 3}, {0: 20, 1: 9}, {0: 45, 1: 30}), 1):
        overflow = (Overflow(1, 7, address=A),) if checkpoint == 3 else ()
        await store.commit(
            checkpoint, 1, [], [("worker", part(positions, overflow))], time.monotonic()
        )
    await store.retain(2)  # checkpoints 2 and 3: 2 is the fallback if 3 turns out damaged
    assert await retention.truncate_messages() == {0: 20, 1: 7}
    assert await log.start_offsets(TOPICS.messages) == [20, 7]
    assert await log.end_offsets(TOPICS.messages) == [50, 50]
    assert (await log.read(TOPICS.messages, 1, 0))[0].offset == 7


async def test_egress_and_dead_letters_keep_their_window(store: CheckpointStore) -> None:
    now = [0.0]
    log = MemoryLog()
    retention = Retention(log, store, TOPICS, MODULE, 2, egress_window=60, clock=lambda: now[0])
    await retention.create_topics()
    egress = TOPICS.egress(MODULE.egresses[0].id)
    for topic in (egress, TOPICS.dead_letters):
        await log.append(topic, 0, [Record(b"old")] * 3)
    await asyncio.sleep(0.002)  # the next appends are a few milliseconds younger
    for topic in (egress, TOPICS.dead_letters):
        await log.append(topic, 0, [Record(b"new")])
    (*_, newest) = await log.read(egress, 0, 0)
    now[0] = newest.timestamp_ms / 1000 + 59  # the old ones are inside the window still
    await retention.apply_windows()
    assert await log.start_offsets(egress) == [0]
    now[0] = newest.timestamp_ms / 1000 + 60  # the window now starts at the newest
    await retention.apply_windows()
    assert await log.start_offsets(egress) == [3]
    assert await log.start_offsets(TOPICS.dead_letters) == [3]
    assert [r.value for r in await log.read(egress, 0, 0)] == [b"new"]
    # the messages topic is never windowed
    assert await log.start_offsets(TOPICS.messages) == [0, 0]


def test_kafka_topics_get_retention_settings(tmp_path: Path) -> None:
    retention = Retention(
        MemoryLog.__new__(MemoryLog),
        None,  # type: ignore[arg-type]
        TOPICS,
        MODULE,
        8,
        egress_window=3600,
        messages_retention=0,
    )
    assert retention.topic_configs() == {
        "app-messages": (8, {"retention.ms": "-1"}),
        "app-control": (1, {"retention.ms": "-1"}),
        "app-egress.test.out": (1, {"retention.ms": "3600000"}),
        "app-dead-letters": (1, {"retention.ms": "3600000"}),
    }


@pytest.mark.kafka
async def test_kafka_creates_the_runtimes_topics_with_their_settings(
    kafka_bootstrap: str, store: CheckpointStore
) -> None:
    log = await KafkaLog.open(kafka_bootstrap)
    created: list[Any] = []
    create = log._admin.create_topics
    log._admin.create_topics = lambda topics, **kw: created.append(topics) or create(topics, **kw)
    try:
        await Retention(log, store, TOPICS, MODULE, 2).create_topics()
    finally:
        await log.close()
    settings = {name: spec["configs"] for topics in created for name, spec in topics.items()}
    assert settings["app-messages"] == {"retention.ms": str(30 * 24 * 3600 * 1000)}
    assert settings["app-egress.test.out"] == {"retention.ms": str(7 * 24 * 3600 * 1000)}
    assert settings["app-control"] == {"retention.ms": "-1"}
