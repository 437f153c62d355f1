"""Reading an embedded egress: the tail of a process that alone writes it, and reads
that wait for the next record (``?wait=``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runtime.checkpoints.snapshot import EgressItem
from runtime.egress import TAIL_RECORDS, Egresses, EgressRecord, EgressTail
from runtime.kafka_clusters import KafkaClusters
from runtime.log import StoredRecord
from runtime.log.memory import MemoryLog
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


def tail_of(offsets: range, **settings: float) -> EgressTail:
    tail = EgressTail(**settings)
    for offset in offsets:
        tail.appended(record(offset), now=100.0)
    return tail


def test_a_tail_answers_from_its_records_and_past_them() -> None:
    tail = tail_of(range(5, 9))
    assert tail.read(5, 10, now=100.0) == [record(o) for o in range(5, 9)]
    assert tail.read(7, 1, now=100.0) == [record(7)]
    # past the newest record: the only writer appended nothing more
    assert tail.read(9, 10, now=100.0) == []
    assert tail.read(20, 10, now=100.0) == []
    # below the oldest: the log must say
    assert tail.read(4, 10, now=100.0) is None
    assert EgressTail().read(0, 10, now=100.0) is None


def test_a_gap_starts_the_tail_again_from_the_record_after_it() -> None:
    tail = tail_of(range(3))
    tail.appended(record(5), now=100.0)  # offsets 3 and 4 are someone else's
    assert tail.read(3, 10, now=100.0) is None
    assert tail.read(5, 10, now=100.0) == [record(5)]


def test_after_a_failed_append_the_log_says_until_the_append_cannot_land_any_more() -> None:
    tail = tail_of(range(3), distrust=30.0)
    tail.failed(now=100.0)
    assert tail.read(0, 10, now=100.0) is None
    tail.appended(record(4), now=129.0)  # the failed one may still land at 3 (or after 4)
    assert tail.read(4, 10, now=129.0) is None
    tail.appended(record(5), now=130.0)
    assert tail.read(5, 10, now=130.0) == [record(5)]
    assert tail.read(4, 10, now=130.0) is None


def test_records_older_than_the_retention_window_are_let_go() -> None:
    tail = EgressTail(window=60.0)
    tail.appended(record(0), now=100.0)
    tail.appended(record(1), now=130.0)
    assert tail.read(0, 10, now=160.0) == [record(0), record(1)]
    assert tail.read(0, 10, now=160.5) is None  # record 0 may be gone from the log
    assert tail.read(1, 10, now=160.5) == [record(1)]
    assert tail.read(1, 10, now=190.5) is None


def test_a_tail_holds_the_newest_records_only() -> None:
    tail = tail_of(range(TAIL_RECORDS + 10))
    assert tail.read(9, 1, now=100.0) is None
    assert tail.read(10, 1, now=100.0) == [record(10)]


class CountingLog(MemoryLog):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 1000
    ) -> list[StoredRecord]:
        self.reads += 1
        return await super().read(topic, partition, offset, max_records)


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


async def test_alone_the_runtime_answers_reads_of_what_it_appended_without_the_log(
    alone: Egresses, log: CountingLog
) -> None:
    assert await alone.read(OUT, 0, 10) == []  # nothing appended yet: the log says
    assert log.reads == 1
    await asyncio.gather(*(alone.publish(item(n)) for n in range(3)))
    read = await alone.read(OUT, 1, 10)
    assert [(o, i, v.value) for o, i, v in read] == [(1, "id-1", b"1"), (2, "id-2", b"2")]
    assert await alone.read(OUT, 3, 10, wait=0.01) == []
    assert log.reads == 1
    # what the tail answers is what the log holds
    stored = await log.read(TOPICS.egress(OUT), 0, 0)
    assert [(r.offset, r.headers) for r in stored] == [
        (n, (("statefun.egress-id", f"id-{n}".encode()),)) for n in range(3)
    ]


async def test_a_waiting_read_is_woken_by_the_next_append(alone: Egresses) -> None:
    alone.wait_recheck = 3600.0  # only the append can end the wait before the test's bound
    reading = asyncio.create_task(alone.read(OUT, 0, 10, wait=3600.0))
    await asyncio.sleep(0)  # the read listens before it first yields
    assert alone.waiting_reads(OUT) == 1
    await alone.publish(item(0))
    read = await asyncio.wait_for(reading, timeout=10)
    assert [i for _, i, _ in read] == ["id-0"]
    assert alone.waiting_reads(OUT) == 0


async def test_in_a_cluster_a_waiting_read_finds_another_members_record_by_reading_again(
    log: CountingLog,
) -> None:
    member = await egresses_on(log, member="m-1")
    member.wait_recheck = 0.01
    try:
        reading = asyncio.create_task(member.read(OUT, 0, 10, wait=3600.0))
        await asyncio.sleep(0)  # the read listens before it first yields
        assert member.waiting_reads(OUT) == 1
        other = await egresses_on(log, member="m-2")  # the same topic, another writer
        await other.publish(item(7))
        read = await asyncio.wait_for(reading, timeout=10)
        assert [i for _, i, _ in read] == ["id-7"]
        assert log.reads >= 2  # no tail in a cluster: every read asks the log
    finally:
        await member.close()
