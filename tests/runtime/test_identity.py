"""The log's identity: a log is resumed only with the checkpoint store that holds its
checkpoints, and ``--start-over`` rebuilds from what came from outside."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.checkpoints.epochs import Tag
from runtime.checkpoints.restore import restore_point
from runtime.checkpoints.snapshot import WorkerPart, encode_worker_part
from runtime.checkpoints.store import CheckpointStore
from runtime.egress import ID_HEADER
from runtime.errors import ConfigurationError
from runtime.identity import LogIdentity
from runtime.kafka_clusters import KafkaClusters
from runtime.log import Record
from runtime.log.memory import MemoryLog
from runtime.routing import Topics
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
EGRESS = TOPICS.egress(MODULE.egresses[0].id)


async def new_log() -> MemoryLog:
    """A log with the runtime's topics, as the runtime creates them before a claim."""
    opened = MemoryLog()
    for topic, partitions in ((TOPICS.messages, 2), (TOPICS.dead_letters, 1), (EGRESS, 1)):
        await opened.ensure_topic(topic, partitions)
    return opened


@pytest.fixture
async def log() -> AsyncIterator[MemoryLog]:
    opened = await new_log()
    yield opened
    await opened.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CheckpointStore]:
    opened = await CheckpointStore.open(tmp_path / "store")
    yield opened
    await opened.close()


def identity(log: MemoryLog, store: CheckpointStore) -> LogIdentity:
    return LogIdentity(log, store, TOPICS, MODULE, 2, "the test log")


async def claim(log: MemoryLog, store: CheckpointStore, *, start_over: bool = False) -> None:
    await identity(log, store).claim(
        start_over=start_over, clusters=KafkaClusters(log, None), published_through=0
    )


async def started(log: MemoryLog, store: CheckpointStore) -> None:
    """What a runtime's first generation does with a store: begin it, say so in the log."""
    generation, _ = await store.begin_generation(None)
    await identity(log, store).began(generation)


async def test_a_new_log_or_one_with_outside_input_only_is_a_first_start(
    log: MemoryLog, store: CheckpointStore
) -> None:
    await log.append(TOPICS.messages, 0, [Record(b"from outside")])
    await claim(log, store)
    await started(log, store)
    await claim(log, store)  # and its restarts


async def test_an_empty_store_over_the_runtimes_records_is_refused(
    log: MemoryLog, store: CheckpointStore
) -> None:
    tagged = Record(b"from a function", headers=(Tag(4, 9, "app").header(),))
    await log.append(TOPICS.messages, 1, [tagged])
    with pytest.raises(ConfigurationError, match="holds the records of a runtime") as refused:
        await claim(log, store)
    assert "--start-over" in str(refused.value)
    assert "--checkpoint-dir" in str(refused.value)


async def test_an_empty_store_over_a_log_with_an_identity_is_refused(
    log: MemoryLog, store: CheckpointStore, tmp_path: Path
) -> None:
    other = await CheckpointStore.open(tmp_path / "other")
    try:
        await started(log, other)
        with pytest.raises(ConfigurationError, match=f"checkpoint store {other.id}"):
            await claim(log, store)
        # and the other store's log is not this store's either, once it has started
        await started(await new_log(), store)
        with pytest.raises(ConfigurationError, match="was taken of another log"):
            await claim(log, store)
    finally:
        await other.close()


async def test_a_started_store_adopts_a_log_from_before_identities(
    log: MemoryLog, store: CheckpointStore
) -> None:
    await log.append(TOPICS.messages, 0, [Record(b"m")] * 3)
    await store.begin_generation(None)
    part = encode_worker_part(WorkerPart([], [], {0: 3, 1: 0}))
    await store.commit(1, 1, [], [("worker", part)], time.monotonic())
    await claim(log, store)
    # its read positions past the end of a log: the checkpoints of another log
    with pytest.raises(ConfigurationError, match="was taken of another log"):
        await claim(await new_log(), store)


async def test_starting_over_skips_every_generation_of_the_log_and_says_what_is_lost(
    log: MemoryLog, store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    await log.append(TOPICS.messages, 0, [Record(b"m", headers=(Tag(3, 7, "app").header(),))])
    await log.append(TOPICS.messages, 0, [Record(b"outside")] * 4)
    await log.append(TOPICS.messages, 1, [Record(b"outside")] * 2)
    await log.append(EGRESS, 0, [Record(b"e", headers=((ID_HEADER, b"5.11.1"),))])
    await log.truncate(TOPICS.messages, 0, 2)  # retention dropped the first two
    with caplog.at_level(logging.WARNING, logger="runtime.identity"):
        await identity(log, store).claim(
            start_over=True, clusters=KafkaClusters(log, None), published_through=13
        )
    # above generation 5 (an egress id), above checkpoint 13 (the Kafka egress markers)
    assert await store.floors() == (6, 13)
    assert await store.begin_generation(None) == (6, 0)
    assert await store.rollbacks() == []
    point = await restore_point(store)
    assert point.worker is not None
    assert point.worker.positions == {0: 2, 1: 0}  # from the retained start
    assert "retention dropped the start of app-messages[0] (before 2)" in caplog.text
    with pytest.raises(ConfigurationError, match="needs an empty checkpoint store"):
        await claim(log, store, start_over=True)
