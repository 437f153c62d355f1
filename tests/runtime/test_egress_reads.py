"""Reading an embedded egress: the tail of a process that alone writes it, and reads
that wait for the next record (``?wait=``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import CountingLog

from runtime.checkpoints.snapshot import EgressItem
from runtime.egress import TAIL_RECORDS, Egresses, EgressRecord, EgressTail
from runtime.errors import LogError
from runtime.kafka_clusters import KafkaClusters
from runtime.routing import Topics
from statefun.address import TypeName
from statefun.module_spec import parse_module_spec
from statefun.values import TypedValue

pytestmark = pytest.mark.anyio

OUT = TypeName("test", "out")
TOPICS = Topics("app")
MODULE = parse_module_spec(
    """kind: statefun.v1/egress
spec: {id: test/out}
"""
)


def record(offset: int) -> EgressRecord:
    return (offset, f"id-{offset}", TypedValue("test/v", str(offset).encode()))


def tail_of(offsets: range, window: float = 0.0) -> EgressTail:
    tail = EgressTail(offsets.start, window)
    for offset in offsets:
        tail.add(record(offset), now=100.0)
    return tail


def test_a_tail_answers_from_its_records_and_past_them() -> None:
    tail = tail_of(range(5, 9))
    assert tail.read(5, 10, now=100.0) == [record(o) for o in range(5, 9)]
    assert tail.read(7, 1, now=100.0) == [record(7)]
    # past the newest record: nothing yet
    assert tail.read(9, 10, now=100.0) == []
    assert tail.read(20, 10, now=100.0) == []
    # below the oldest: the log must say
    assert tail.read(4, 10, now=100.0) is None
    assert EgressTail(3).read(3, 10, now=100.0) == []
    assert EgressTail(3).read(2, 10, now=100.0) is None


def test_a_tail_takes_only_the_record_at_its_position() -> None:
    tail = tail_of(range(3))
    with pytest.raises(ValueError, match="does not follow"):
        tail.add(record(4), now=100.0)
    assert tail.position == 3


def test_records_older_than_the_retention_window_are_let_go() -> None:
    tail = EgressTail(0, window=60.0)
    tail.add(record(0), now=100.0)
    tail.add(record(1), now=130.0)
    assert tail.read(0, 10, now=160.0) == [record(0), record(1)]
    assert tail.read(0, 10, now=160.5) is None  # record 0 may be gone from the log
    assert tail.read(1, 10, now=160.5) == [record(1)]
    assert tail.read(1, 10, now=190.5) is None
    assert tail.read(2, 10, now=190.5) == []


def test_a_tail_holds_the_newest_records_only() -> None:
    tail = tail_of(range(TAIL_RECORDS + 10))
    assert tail.read(9, 1, now=100.0) is None
    assert tail.read(10, 1, now=100.0) == [record(10)]


@pytest.fixture
async def log() -> CountingLog:
    return CountingLog()


async def egresses_on(log: CountingLog, **settings: Any) -> Egresses:
    egresses = Egresses(log, TOPICS, MODULE, KafkaClusters(log, None), **settings)
    await egresses.start()
    return egresses


def item(n: int) -> EgressItem:
    return EgressItem(f"id-{n}", OUT, TypedValue("test/v", str(n).encode()), 1)


@pytest.fixture
async def alone(log: CountingLog) -> AsyncIterator[Egresses]:
    egresses = await egresses_on(log)
    yield egresses
    await egresses.close()


async def following(egresses: Egresses) -> None:
    """Once a first read has started the egress's follower, and it follows."""
    await egresses.read(OUT, 0, 10)
    for _ in range(1000):
        if egresses.following(OUT):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the egress is not followed")


async def test_once_followed_the_newest_records_are_read_without_the_log(
    alone: Egresses, log: CountingLog
) -> None:
    await asyncio.gather(*(alone.publish(item(n)) for n in range(2)))
    assert [i for _, i, _ in await alone.read(OUT, 0, 10)] == ["id-0", "id-1"]  # the log's
    await following(alone)
    reads = log.reads
    await asyncio.gather(*(alone.publish(item(n)) for n in range(2, 5)))
    read = await alone.read(OUT, 3, 10, wait=10)
    assert [(o, i, v.value) for o, i, v in read[:1]] == [(3, "id-3", b"3")]
    assert await alone.read(OUT, 5, 10, wait=0.01) == []
    assert log.reads == reads
    # older than the follower: from the log
    assert [i for _, i, _ in await alone.read(OUT, 1, 1)] == ["id-1"]
    assert log.reads == reads + 1


async def test_a_waiting_read_is_woken_by_the_next_record(alone: Egresses) -> None:
    await following(alone)
    alone.wait_recheck = 3600.0  # only the record can end the wait before the test's bound
    reading = asyncio.create_task(alone.read(OUT, 0, 10, wait=3600.0))
    await asyncio.sleep(0)  # the read listens before it first yields
    assert alone.waiting_reads(OUT) == 1
    await alone.publish(item(0))
    read = await asyncio.wait_for(reading, timeout=10)
    assert [i for _, i, _ in read] == ["id-0"]
    assert alone.waiting_reads(OUT) == 0


async def test_another_writers_records_come_through_the_follower(log: CountingLog) -> None:
    reader = await egresses_on(log, member="m-1")
    reader.wait_recheck = 3600.0
    other = await egresses_on(log, member="m-2")  # a cluster's other member: the same topic
    try:
        await following(reader)
        reading = asyncio.create_task(reader.read(OUT, 0, 10, wait=3600.0))
        await other.publish(item(7))
        read = await asyncio.wait_for(reading, timeout=10)
        assert [i for _, i, _ in read] == ["id-7"]
    finally:
        await reader.close()
        await other.close()


async def test_a_follower_stops_with_the_egresses_and_reads_go_to_the_log_after(
    alone: Egresses, log: CountingLog
) -> None:
    await following(alone)
    await alone.close()
    assert not alone.following(OUT)
    await alone.publish(item(0))
    reads = log.reads
    assert [i for _, i, _ in await alone.read(OUT, 0, 10)] == ["id-0"]
    assert log.reads == reads + 1


class EndsFailOnceLog(CountingLog):
    """A log whose first ``end_offsets`` fails, as a broker that went away would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def end_offsets(self, topic: str) -> list[int]:
        if not self.failed:
            self.failed = True
            raise LogError("the broker went away")
        return await super().end_offsets(topic)


async def test_a_follower_that_fails_leaves_reads_to_the_log_until_the_next_read_starts_it() -> (
    None
):
    log = EndsFailOnceLog()
    egresses = await egresses_on(log)
    try:
        await egresses.publish(item(0))
        assert [i for _, i, _ in await egresses.read(OUT, 0, 10)] == ["id-0"]  # the log's
        await asyncio.sleep(0)  # the follower's first step fails
        assert log.failed
        assert not egresses.following(OUT)
        await following(egresses)  # a read starts it again
        await egresses.publish(item(1))
        reads = log.reads
        read = await egresses.read(OUT, 1, 10, wait=10)
        assert [i for _, i, _ in read] == ["id-1"]
        assert log.reads == reads
    finally:
        await egresses.close()
