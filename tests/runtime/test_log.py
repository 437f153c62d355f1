"""Both embedded logs keep the log contract: order, durability, consumers, positions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.log import Log, Record, TopicMismatchError, TopicPartition, UnknownTopicError
from runtime.log.memory import MemoryLog
from runtime.log.sqlite import DataDirectoryInUse, SqliteLog

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Log]:
    opened: Log = MemoryLog() if request.param == "memory" else await SqliteLog.open(tmp_path)
    await opened.ensure_topic("t", 3)
    yield opened
    await opened.close()


async def test_appends_land_in_call_order_even_when_not_awaited(log: Log) -> None:
    futures = [log.append("t", 1, [Record(f"v{i}".encode(), key=b"k")]) for i in range(50)]
    assert [await f for f in futures] == [[i] for i in range(50)]
    records = await log.read("t", 1, 0)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(50)]
    assert [r.offset for r in records] == list(range(50))
    assert all(r.key == b"k" for r in records)


async def test_records_keep_headers_and_partitions_are_separate(log: Log) -> None:
    await log.append("t", 0, [Record(b"a", headers=(("h", b"1"), ("h", b"2")))])
    await log.append("t", 2, [Record(b"b"), Record(b"c")])
    assert (await log.read("t", 0, 0))[0].headers == (("h", b"1"), ("h", b"2"))
    assert [r.value for r in await log.read("t", 2, 1)] == [b"c"]
    assert await log.end_offsets("t") == [1, 0, 2]
    assert await log.read("t", 1, 0) == []


async def test_read_respects_max_records(log: Log) -> None:
    await log.append("t", 0, [Record(bytes([i])) for i in range(10)])
    assert [r.offset for r in await log.read("t", 0, 3, max_records=4)] == [3, 4, 5, 6]


async def test_flush_waits_for_every_earlier_append(log: Log) -> None:
    futures = [log.append("t", 0, [Record(b"x")]) for _ in range(20)]
    await log.flush()
    assert all(f.done() for f in futures)


async def test_topics_are_checked(log: Log) -> None:
    await log.ensure_topic("t", 3)
    with pytest.raises(TopicMismatchError, match="exists with 3 partitions, not 4"):
        await log.ensure_topic("t", 4)
    with pytest.raises(UnknownTopicError):
        log.append("nope", 0, [Record(b"x")])
    with pytest.raises(UnknownTopicError, match="no partition 3"):
        log.append("t", 3, [Record(b"x")])


async def test_a_consumer_waits_for_new_records_and_advances(log: Log) -> None:
    consumer = log.consumer()
    consumer.assign({TopicPartition("t", 0): 0, TopicPartition("t", 1): 0})
    assert await consumer.poll(0.05) == {}
    waiting = asyncio.create_task(consumer.poll(5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await log.append("t", 1, [Record(b"a"), Record(b"b")])
    got = await asyncio.wait_for(waiting, 2.0)
    assert [r.value for r in got[TopicPartition("t", 1)]] == [b"a", b"b"]
    assert consumer.position(TopicPartition("t", 1)) == 2
    assert await consumer.poll(0.01) == {}
    await consumer.close()


async def test_a_consumer_reads_from_its_assigned_positions_and_shares_fairly(log: Log) -> None:
    for p in (0, 1):
        await log.append("t", p, [Record(bytes([p, i])) for i in range(100)])
    consumer = log.consumer()
    consumer.assign({TopicPartition("t", 0): 90, TopicPartition("t", 1): 0})
    got = await consumer.poll(1.0, max_records=20)
    assert [r.offset for r in got[TopicPartition("t", 0)]] == list(range(90, 100))
    assert len(got[TopicPartition("t", 1)]) == 10


async def test_committed_offsets(log: Log) -> None:
    assert await log.committed_offsets("g", "t") == {}
    await log.commit_offsets("g", {TopicPartition("t", 0): 5, TopicPartition("t", 2): 7})
    await log.commit_offsets("g", {TopicPartition("t", 0): 6})
    assert await log.committed_offsets("g", "t") == {0: 6, 2: 7}
    assert await log.committed_offsets("other", "t") == {}


async def test_sqlite_log_survives_reopening(tmp_path: Path) -> None:
    log = await SqliteLog.open(tmp_path)
    await log.ensure_topic("t", 2)
    await log.append("t", 1, [Record(b"a", key=b"k"), Record(b"b")])
    await log.commit_offsets("g", {TopicPartition("t", 1): 1})
    await log.close()

    reopened = await SqliteLog.open(tmp_path)
    try:
        assert reopened.partitions("t") == 2
        assert [r.value for r in await reopened.read("t", 1, 0)] == [b"a", b"b"]
        assert await reopened.end_offsets("t") == [0, 2]
        assert await reopened.committed_offsets("g", "t") == {1: 1}
        assert await reopened.append("t", 1, [Record(b"c")]) == [2]
    finally:
        await reopened.close()


async def test_one_process_at_a_time_per_data_directory(tmp_path: Path) -> None:
    log = await SqliteLog.open(tmp_path)
    try:
        with pytest.raises(DataDirectoryInUse, match="in use by another runtime process"):
            await SqliteLog.open(tmp_path)
    finally:
        await log.close()
    reopened = await SqliteLog.open(tmp_path)
    await reopened.close()
