"""Every log keeps the log contract (order, durability, consumers, positions), and the
Kafka log keeps it on a real broker, Tansu's quirks included."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka_broker import TansuBroker, tansu_binary
from support import kafka_log_with_a_record

from runtime.errors import DataDirectoryInUse
from runtime.log import (
    Log,
    LogError,
    Record,
    StoredRecord,
    TopicMismatchError,
    TopicPartition,
    UnknownTopicError,
    sqlite,
)
from runtime.log import kafka as kafka_module
from runtime.log.kafka import KafkaLog, KafkaLogConsumer
from runtime.log.local import LocalLog
from runtime.log.memory import MemoryLog
from runtime.log.sqlite import SqliteLog
from runtime.routing import partition_for_key

pytestmark = pytest.mark.anyio


@pytest.fixture
def topic(unique_topic: Callable[[str], str]) -> str:
    return unique_topic("t")


@pytest.fixture(params=["memory", "sqlite", pytest.param("kafka", marks=pytest.mark.kafka)])
async def log(request: pytest.FixtureRequest, tmp_path: Path, topic: str) -> AsyncIterator[Log]:
    opened: Log
    if request.param == "memory":
        opened = MemoryLog()
    elif request.param == "sqlite":
        opened = await SqliteLog.open(tmp_path)
    else:
        opened = await KafkaLog.open(request.getfixturevalue("kafka_bootstrap"))
    await opened.ensure_topic(topic, 3)
    yield opened
    await opened.close()


async def test_appends_land_in_call_order_even_when_not_awaited(log: Log, topic: str) -> None:
    futures = [log.append(topic, 1, [Record(f"v{i}".encode(), key=b"k")]) for i in range(50)]
    assert [await f for f in futures] == [[i] for i in range(50)]
    records = await log.read(topic, 1, 0)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(50)]
    assert [r.offset for r in records] == list(range(50))
    assert all(r.key == b"k" for r in records)


async def test_records_keep_headers_and_partitions_are_separate(log: Log, topic: str) -> None:
    await log.append(topic, 0, [Record(b"a", headers=(("h", b"1"), ("h", b"2")))])
    await log.append(topic, 2, [Record(b"b"), Record(b"c")])
    assert (await log.read(topic, 0, 0))[0].headers == (("h", b"1"), ("h", b"2"))
    assert [r.value for r in await log.read(topic, 2, 1)] == [b"c"]
    assert await log.end_offsets(topic) == [1, 0, 2]
    assert await log.read(topic, 1, 0) == []


async def test_read_respects_max_records(log: Log, topic: str) -> None:
    await log.append(topic, 0, [Record(bytes([i])) for i in range(10)])
    assert [r.offset for r in await log.read(topic, 0, 3, max_records=4)] == [3, 4, 5, 6]


async def test_flush_waits_for_every_earlier_append(log: Log, topic: str) -> None:
    futures = [log.append(topic, 0, [Record(b"x")]) for _ in range(20)]
    await log.flush()
    assert all(f.done() for f in futures)


async def test_topics_are_checked(log: Log, topic: str) -> None:
    await log.ensure_topic(topic, 3)
    with pytest.raises(TopicMismatchError, match="exists with 3 partitions, not 4"):
        await log.ensure_topic(topic, 4)
    with pytest.raises(UnknownTopicError):
        log.append("nope", 0, [Record(b"x")])
    with pytest.raises(UnknownTopicError, match="no partition 3"):
        log.append(topic, 3, [Record(b"x")])


async def test_a_consumer_waits_for_new_records_and_advances(log: Log, topic: str) -> None:
    consumer = log.consumer()
    consumer.assign({TopicPartition(topic, 0): 0, TopicPartition(topic, 1): 0})
    assert await consumer.poll(0.05) == {}
    waiting = asyncio.create_task(consumer.poll(5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await log.append(topic, 1, [Record(b"a"), Record(b"b")])
    got = await asyncio.wait_for(waiting, 2.0)
    # An append's records need not become visible together: Kafka's producer may split
    # them over two batches.
    seen = got[TopicPartition(topic, 1)]
    if len(seen) < 2:
        seen += (await consumer.poll(2.0))[TopicPartition(topic, 1)]
    assert [r.value for r in seen] == [b"a", b"b"]
    assert consumer.position(TopicPartition(topic, 1)) == 2
    assert await consumer.poll(0.01) == {}
    await consumer.close()


async def test_an_observer_sees_every_append_and_a_consumer_knows_the_end(
    log: Log, topic: str
) -> None:
    seen: list[tuple[str, asyncio.Future[list[int]]]] = []
    log.observe_appends(lambda t, asked, future: seen.append((t, future)))
    appends = [log.append(topic, 0, [Record(b"a"), Record(b"b")]), log.append(topic, 0, [])]
    assert [(t, f) for t, f in seen] == [(topic, appends[0]), (topic, appends[1])]
    await log.flush()
    consumer = log.consumer()
    tp = TopicPartition(topic, 0)
    consumer.assign({tp: 0})
    got: list[StoredRecord] = []
    while len(got) < 2:
        got += (await consumer.poll(2.0)).get(tp, [])
    # The end as the consumer saw it reading (no request of its own): a read lag of 0.
    assert consumer.known_end(tp) == 2 == consumer.position(tp)
    await consumer.close()


async def test_a_consumer_reads_from_its_assigned_positions_and_shares_fairly(
    log: Log, topic: str
) -> None:
    for p in (0, 1):
        await log.append(topic, p, [Record(bytes([p, i])) for i in range(100)])
    consumer = log.consumer()
    consumer.assign({TopicPartition(topic, 0): 90, TopicPartition(topic, 1): 0})
    got = await consumer.poll(1.0, max_records=20)
    assert [r.offset for r in got[TopicPartition(topic, 0)]] == list(range(90, 100))
    assert len(got[TopicPartition(topic, 1)]) == 10


async def test_reassigning_a_consumer_moves_it(log: Log, topic: str) -> None:
    await log.append(topic, 0, [Record(bytes([i])) for i in range(5)])
    consumer = log.consumer()
    consumer.assign({TopicPartition(topic, 0): 0})
    first = await consumer.poll(1.0, max_records=2)
    assert [r.offset for r in first[TopicPartition(topic, 0)]] == [0, 1]
    consumer.assign({TopicPartition(topic, 0): 3})
    assert consumer.position(TopicPartition(topic, 0)) == 3
    again = await consumer.poll(1.0)
    assert [r.offset for r in again[TopicPartition(topic, 0)]] == [3, 4]
    await consumer.close()


async def test_a_cancelled_poll_loses_no_records(log: Log, topic: str) -> None:
    consumer = log.consumer()
    consumer.assign({TopicPartition(topic, 0): 0})
    cancelled = asyncio.create_task(consumer.poll(5.0))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    await log.append(topic, 0, [Record(b"a")])
    got = await consumer.poll(2.0)
    assert [r.value for r in got[TopicPartition(topic, 0)]] == [b"a"]
    await consumer.close()


async def test_reassigning_during_a_poll_reads_the_new_partitions(log: Log, topic: str) -> None:
    consumer = log.consumer()
    consumer.assign({TopicPartition(topic, 0): 0})
    waiting = asyncio.create_task(consumer.poll(5.0))
    await asyncio.sleep(0.05)
    consumer.assign({TopicPartition(topic, 1): 0})
    await log.append(topic, 0, [Record(b"old")])
    await log.append(topic, 1, [Record(b"new")])
    got = await asyncio.wait_for(waiting, 2.0)
    assert {tp: [r.value for r in records] for tp, records in got.items()} == {
        TopicPartition(topic, 1): [b"new"]
    }
    await consumer.close()


async def test_committed_offsets(log: Log, topic: str) -> None:
    assert await log.committed_offsets("g", topic) == {}
    await log.commit_offsets("g", {TopicPartition(topic, 0): 5, TopicPartition(topic, 2): 7})
    await log.commit_offsets("g", {TopicPartition(topic, 0): 6})
    assert await log.committed_offsets("g", topic) == {0: 6, 2: 7}
    assert await log.committed_offsets("other", topic) == {}


async def test_deleting_a_topic_drops_it_and_only_it(
    log: Log, topic: str, unique_topic: Callable[[str], str]
) -> None:
    other = unique_topic("other")
    await log.ensure_topic(other, 1)
    await log.append(topic, 0, [Record(b"a")])
    await log.append(other, 0, [Record(b"b")])
    assert {topic, other} <= await log.list_topics()
    await log.delete_topic(topic)
    assert topic not in await log.list_topics()
    with pytest.raises(UnknownTopicError):
        log.partitions(topic)
    with pytest.raises(UnknownTopicError):
        log.append(topic, 0, [Record(b"x")])
    await log.delete_topic(topic)  # a topic that does not exist: nothing to do
    assert other in await log.list_topics()
    assert [r.value for r in await log.read(other, 0, 0)] == [b"b"]


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


async def test_sqlite_writes_a_group_of_many_appends_and_other_operations_exactly(
    tmp_path: Path,
) -> None:
    """Appends queued together are written a few multi-row statements at a time (more
    records than one statement takes, between other operations of the same group): every
    record lands at its offset with its key and headers, read back from the database."""
    log = await SqliteLog.open(tmp_path)
    await log.ensure_topic("t", 3)
    expected: dict[int, list[Record]] = {0: [], 1: [], 2: []}
    pending: list[asyncio.Future[list[int]]] = []
    for i in range(300):
        partition = i % 3
        records = [
            Record(
                f"v{i}.{j}".encode(),
                key=f"k{i}".encode() if j else None,
                headers=(("n", str(j).encode()),) if i % 2 else (),
            )
            for j in range(1 + i % 4)
        ]
        expected[partition] += records
        pending.append(log.append("t", partition, records))
        if i == 150:
            pending.append(
                asyncio.ensure_future(log.commit_offsets("g", {TopicPartition("t", 1): 7}))
            )
    await asyncio.gather(*pending)
    await log.close()

    reopened = await SqliteLog.open(tmp_path)
    try:
        for partition, records in expected.items():
            stored = await reopened.read("t", partition, 0, max_records=10_000)
            assert [r.offset for r in stored] == list(range(len(records)))
            assert [(r.value, r.key, r.headers) for r in stored] == [
                (r.value, r.key, r.headers) for r in records
            ]
        assert await reopened.committed_offsets("g", "t") == {1: 7}
    finally:
        await reopened.close()


async def test_a_log_file_that_is_no_database_is_refused_and_leaves_the_directory_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "log.db").write_bytes(b"not a database, " * 64)
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def counting_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", counting_connect)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        await SqliteLog.open(tmp_path)
    assert opened
    for conn in opened:  # every connection it made is closed
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    # the file mended (here: gone), the same process opens the directory
    (tmp_path / "log.db").unlink()
    log = await SqliteLog.open(tmp_path)
    try:
        await log.ensure_topic("t", 1)
        assert await log.append("t", 0, [Record(b"a")]) == [0]
    finally:
        await log.close()


def _records_seen_by_another_process(database: Path) -> int:
    """How many records a reader in another process finds in ``database``; its
    connection is closed before it returns, as an operator's ``sqlite3`` would."""
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1])\n"
        "print(db.execute('SELECT COUNT(*) FROM records').fetchone()[0])\n"
        "db.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(database)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout)


async def test_a_reader_in_another_process_neither_loses_nor_hides_later_appends(
    tmp_path: Path,
) -> None:
    # A reader that closes its connection deletes the write-ahead log if it believes
    # no other process has the database open. Closing a file descriptor of the database
    # drops every lock this process holds on it, SQLite's own included: the log's
    # second connection once made it look closed, and its appends went on into a
    # deleted file, never seen by anyone else and gone with the process.
    first = await SqliteLog.open(tmp_path)
    await first.ensure_topic("t", 1)
    await first.close()
    # Opened again: the database is in WAL mode from the start (as at every restart).
    log = await SqliteLog.open(tmp_path)
    try:
        assert await log.append("t", 0, [Record(b"a")]) == [0]
        assert await asyncio.to_thread(_records_seen_by_another_process, tmp_path / "log.db") == 1
        assert await log.append("t", 0, [Record(b"b")]) == [1]
        assert await asyncio.to_thread(_records_seen_by_another_process, tmp_path / "log.db") == 2
    finally:
        await log.close()
    reopened = await SqliteLog.open(tmp_path)
    try:
        assert [r.value for r in await reopened.read("t", 0, 0)] == [b"a", b"b"]
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


# --- the embedded SQLite log: the durable tail -------------------------------------------


class CountingReader:
    """The SQLite log's reading connection, counting the queries that read records."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.reads = 0

    def execute(self, sql: str, *args: Any) -> Any:
        self.reads += "FROM records" in sql
        return self.connection.execute(sql, *args)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
async def sqlite_log(tmp_path: Path) -> AsyncIterator[tuple[SqliteLog, CountingReader]]:
    opened = await SqliteLog.open(tmp_path)
    reader = opened._reader = CountingReader(opened._reader)  # type: ignore[assignment]
    await opened.ensure_topic("t", 2)
    yield opened, reader
    await opened.close()


async def poll_until(consumer: Any, tp: TopicPartition, count: int) -> list[StoredRecord]:
    got: list[StoredRecord] = []
    while len(got) < count:
        got += (await consumer.poll(2.0)).get(tp, [])
    return got


async def test_records_just_appended_reach_a_consumer_at_the_end_without_a_read_back(
    sqlite_log: tuple[SqliteLog, CountingReader],
) -> None:
    log, reader = sqlite_log
    tp = TopicPartition("t", 0)
    consumer = log.consumer()
    consumer.assign({tp: 0})
    appends = [
        log.append("t", 0, [Record(b"%d" % (3 * n + i), b"k", (("h", b"v"),)) for i in range(3)])
        for n in range(4)
    ]
    got = await poll_until(consumer, tp, 12)
    await asyncio.gather(*appends)
    assert [r.offset for r in got] == list(range(12))  # once each, in order
    assert [r.value for r in got] == [b"%d" % i for i in range(12)]
    assert reader.reads == 0
    # Moved back (a rollback) with the tail gone: the same records, read from the database.
    consumer.assign({tp: 0})
    log._tail.clear()
    again = await poll_until(consumer, tp, 12)
    assert again == got
    assert reader.reads >= 1
    assert await consumer.poll(0.01) == {}
    await consumer.close()


async def test_a_consumer_moved_back_between_append_and_read_gets_each_record_once(
    sqlite_log: tuple[SqliteLog, CountingReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "TAIL_RECORDS", 4)
    log, reader = sqlite_log
    tp = TopicPartition("t", 1)
    await log.append("t", 1, [Record(bytes([i])) for i in range(10)])
    consumer = log.consumer()
    consumer.assign({tp: 0})
    first = await consumer.poll(1.0, max_records=6)
    assert [r.offset for r in first[tp]] == list(range(6))
    pending = [log.append("t", 1, [Record(bytes([i]))]) for i in range(10, 20)]
    consumer.assign({tp: 3})  # the rollback, before the new records are read
    await asyncio.gather(*pending)
    got = await poll_until(consumer, tp, 17)
    assert [r.offset for r in got] == list(range(3, 20))
    assert [r.value for r in got] == [bytes([i]) for i in range(3, 20)]
    assert reader.reads >= 1  # behind the tail: from the database
    assert await consumer.poll(0.01) == {}
    await consumer.close()


async def test_a_reader_behind_the_tail_reads_from_the_database(
    sqlite_log: tuple[SqliteLog, CountingReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "TAIL_RECORDS", 4)
    log, reader = sqlite_log
    for i in range(20):
        await log.append("t", 0, [Record(bytes([i]))])
    assert len(log._tail[TopicPartition("t", 0)].records) <= 8  # bounded
    assert [r.offset for r in await log.read("t", 0, 0)] == list(range(20))
    assert reader.reads == 1
    reader.reads = 0
    assert [r.value for r in await log.read("t", 0, 16)] == [bytes([i]) for i in range(16, 20)]
    assert reader.reads == 0  # the newest from memory


async def test_the_tail_is_bounded_in_bytes_too(
    sqlite_log: tuple[SqliteLog, CountingReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "TAIL_BYTES", 1000)
    log, reader = sqlite_log
    for i in range(10):
        await log.append("t", 0, [Record(bytes([i]) * 300)])
    tail = log._tail[TopicPartition("t", 0)]
    assert tail.size <= 1000
    assert tail.size == sum(len(r.value) for r in tail.records)
    assert [r.offset for r in tail.records] == list(range(tail.base, 10))
    got = await log.read("t", 0, 0)
    assert [r.value for r in got] == [bytes([i]) * 300 for i in range(10)]
    assert reader.reads == 1


# --- the embedded logs: truncation ---------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def local_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalLog]:
    opened: LocalLog = MemoryLog() if request.param == "memory" else await SqliteLog.open(tmp_path)
    await opened.ensure_topic("t", 2)
    yield opened
    await opened.close()


async def test_an_early_consumer_takes_appends_before_they_are_durable_a_plain_one_after(
    local_log: LocalLog,
) -> None:
    tp = TopicPartition("t", 0)
    early = local_log.early_consumer(lambda record: True)
    plain = local_log.consumer()
    early.assign({tp: 0})
    plain.assign({tp: 0})
    appended = local_log.append("t", 0, [Record(b"a", b"k", (("h", b"v"),)), Record(b"b")])
    assert local_log.unsettled() is appended
    got = await early.poll(0.0)
    assert not appended.done()  # taken while the log is still writing it
    assert [(r.offset, r.value) for r in got[tp]] == [(0, b"a"), (1, b"b")]
    assert got[tp][0].headers == (("h", b"v"),)
    assert got[tp][0].key == b"k"
    assert await plain.poll(0.0) == {}
    # Read again (a mailbox's overflow) as the early consumer read it, and no further.
    assert await local_log.read_early("t", 0, 0, 10, lambda record: True) == got[tp]
    assert await local_log.read_early("t", 0, 1, 1, lambda record: True) == got[tp][1:]
    assert (
        await local_log.read_early("t", 0, 0, 10, lambda record: record.value == b"a")
        == (got[tp][:1])
    )
    assert await local_log.read("t", 0, 0) == []
    assert await appended == [0, 1]
    assert local_log.unsettled() is None
    assert (await plain.poll(1.0))[tp] == got[tp]  # the same records, once durable
    assert await early.poll(0.01) == {}  # each record once
    await early.close()
    await plain.close()


async def test_an_early_consumer_waits_at_a_record_it_does_not_admit_until_it_is_durable(
    local_log: LocalLog,
) -> None:
    tp = TopicPartition("t", 1)
    early = local_log.early_consumer(lambda record: record.value != b"keyed")
    early.assign({tp: 0})
    appends = [local_log.append("t", 1, [Record(v)]) for v in (b"a", b"keyed", b"c")]
    first = await early.poll(0.0)
    assert [r.value for r in first[tp]] == [b"a"]  # not past the record it refuses
    assert await early.poll(0.0) == {}
    await asyncio.gather(*appends)
    rest = await poll_until(early, tp, 2)
    assert [(r.offset, r.value) for r in rest] == [(1, b"keyed"), (2, b"c")]
    await early.close()


async def test_an_early_consumer_takes_no_append_past_one_made_before_it_existed(
    local_log: LocalLog,
) -> None:
    tp = TopicPartition("t", 0)
    before = local_log.append("t", 0, [Record(b"x")])  # not held for early consumers
    early = local_log.early_consumer(lambda record: True)
    early.assign({tp: 0})
    after = local_log.append("t", 0, [Record(b"y")])
    assert await early.poll(0.0) == {}  # y is not taken over the gap x leaves
    await asyncio.gather(before, after)
    assert [(r.offset, r.value) for r in await poll_until(early, tp, 2)] == [(0, b"x"), (1, b"y")]
    await early.close()


async def test_truncation_drops_records_below_an_offset_and_keeps_the_end(
    local_log: LocalLog,
) -> None:
    await local_log.append("t", 0, [Record(bytes([i])) for i in range(10)])
    assert await local_log.truncate("t", 0, 4) == 4
    assert await local_log.start_offsets("t") == [4, 0]
    assert await local_log.end_offsets("t") == [10, 0]
    # reading below the start reads from the start
    assert [r.offset for r in await local_log.read("t", 0, 0, max_records=3)] == [4, 5, 6]
    assert await local_log.truncate("t", 0, 2) == 4  # never back
    assert await local_log.truncate("t", 0, 99) == 10  # at most up to the durable end
    assert await local_log.read("t", 0, 0) == []
    assert await local_log.append("t", 0, [Record(b"x")]) == [10]  # offsets are not reused
    assert [r.offset for r in await local_log.read("t", 0, 0)] == [10]


async def test_a_consumer_below_the_start_reads_from_it(local_log: LocalLog) -> None:
    await local_log.append("t", 1, [Record(bytes([i])) for i in range(6)])
    await local_log.truncate("t", 1, 5)
    consumer = local_log.consumer()
    consumer.assign({TopicPartition("t", 0): 0, TopicPartition("t", 1): 0})
    polled = await consumer.poll(1.0)
    assert [r.offset for r in polled[TopicPartition("t", 1)]] == [5]
    assert await consumer.poll(0.05) == {}  # an empty partition 0 and nothing new: no spin
    await consumer.close()


async def test_a_deleted_topic_created_again_starts_empty_and_its_consumers_stop(
    local_log: LocalLog,
) -> None:
    await local_log.append("t", 0, [Record(bytes([i])) for i in range(3)])
    await local_log.commit_offsets("g", {TopicPartition("t", 0): 2})
    consumer = local_log.consumer()
    consumer.assign({TopicPartition("t", 0): 0})
    pending = local_log.append("t", 1, [Record(b"late")])  # not yet durable
    await local_log.delete_topic("t")
    await pending
    assert await consumer.poll(0.01) == {}
    await local_log.ensure_topic("t", 1)
    assert await local_log.end_offsets("t") == [0]
    assert await local_log.read("t", 0, 0) == []
    assert await local_log.committed_offsets("g", "t") == {}
    assert await local_log.append("t", 0, [Record(b"new")]) == [0]
    await consumer.close()


async def test_a_deleted_topic_that_was_read_stays_deleted(log: Log, topic: str) -> None:
    # A Kafka consumer keeps the topics it read in its metadata requests, and Tansu
    # creates a topic a metadata request names whatever the request says.
    gone = f"{topic}-gone"
    await log.ensure_topic(gone, 2)
    await log.append(gone, 0, [Record(b"a")])
    await log.append(topic, 0, [Record(b"b")])
    assert [r.value for r in await log.read(gone, 0, 0)] == [b"a"]
    await log.delete_topic(gone)
    # Past kafka-python's metadata refresh backoff (100 ms), so the next request of the
    # reader refreshes its metadata rather than using what it has.
    await asyncio.sleep(0.3)
    assert await log.end_offsets(topic) == [1, 0, 0]
    assert [r.value for r in await log.read(topic, 0, 0)] == [b"b"]
    assert gone not in await log.list_topics()


@pytest.mark.kafka
async def test_kafka_a_deleted_topic_that_was_appended_to_stays_deleted(
    kafka_log: KafkaLog, topic: str
) -> None:
    # The producer names every topic it knows in its metadata requests, and Tansu
    # creates a topic a metadata request names.
    gone, later = f"{topic}-gone", f"{topic}-later"
    await kafka_log.ensure_topic(gone, 2)
    await kafka_log.append(gone, 1, [Record(b"a")])
    await kafka_log.delete_topic(gone)
    # Appending to a topic the producer has not seen makes it ask for metadata: by the
    # time the append is acknowledged, that request has been answered.
    await kafka_log.ensure_topic(later, 1)
    assert await kafka_log.append(later, 0, [Record(b"b")]) == [0]
    assert gone not in await kafka_log.list_topics()
    assert await kafka_log.append(topic, 0, [Record(b"c")]) == [0]
    # Created again under the same name, at once or after the producer's metadata has
    # moved on: the producer learns it anew, and keeps it across its next refresh.
    for name in (gone, later):
        if name == later:
            await kafka_log.delete_topic(later)
        await kafka_log.ensure_topic(name, 2 if name == gone else 1)
        assert await asyncio.wait_for(kafka_log.append(name, 0, [Record(b"d")]), 10) == [0]
    await kafka_log.ensure_topic(f"{topic}-refresh", 1)
    await kafka_log.append(f"{topic}-refresh", 0, [Record(b"e")])
    for name in (gone, later):
        assert await asyncio.wait_for(kafka_log.append(name, 0, [Record(b"f")]), 10) == [1]
        assert [r.value for r in await kafka_log.read(name, 0, 0)] == [b"d", b"f"]


async def test_a_deleted_topic_stays_deleted_across_a_reopen(tmp_path: Path) -> None:
    log = await SqliteLog.open(tmp_path)
    await log.ensure_topic("gone", 2)
    await log.ensure_topic("kept", 1)
    await log.append("gone", 1, [Record(b"a")])
    await log.delete_topic("gone")
    await log.close()
    reopened = await SqliteLog.open(tmp_path)
    try:
        assert await reopened.list_topics() == {"kept"}
        rows = reopened._reader.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        assert rows == 0
    finally:
        await reopened.close()


async def test_start_offsets_at_a_time_find_the_first_record_appended_since(
    local_log: LocalLog,
) -> None:
    for i in range(5):
        await local_log.append("t", 0, [Record(bytes([i]))])
        await asyncio.sleep(0.01)
    records = await local_log.read("t", 0, 0)
    assert await local_log.start_offsets("t", records[3].timestamp_ms) == [3, 0]
    assert await local_log.start_offsets("t", records[-1].timestamp_ms + 1) == [5, 0]
    assert await local_log.start_offsets("t", "latest") == [5, 0]


async def test_a_partition_emptied_by_truncation_keeps_its_end_across_a_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "TRUNCATE_STEP", 7)  # several steps
    log = await SqliteLog.open(tmp_path)
    await log.ensure_topic("t", 1)
    await log.append("t", 0, [Record(bytes([i])) for i in range(30)])
    assert await log.truncate("t", 0, 30) == 30
    await log.close()
    reopened = await SqliteLog.open(tmp_path)
    try:
        assert await reopened.end_offsets("t") == [30]
        assert await reopened.start_offsets("t") == [30]
        assert await reopened.append("t", 0, [Record(b"next")]) == [30]
        rows = reopened._reader.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        assert rows == 1
    finally:
        await reopened.close()


# --- Kafka only ---------------------------------------------------------------------------


@pytest.fixture
async def kafka_log(kafka_bootstrap: str, topic: str) -> AsyncIterator[KafkaLog]:
    opened = await KafkaLog.open(kafka_bootstrap)
    await opened.ensure_topic(topic, 3)
    yield opened
    await opened.close()


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}})
    finally:
        admin.close()


@pytest.mark.kafka
async def test_kafka_topics_created_elsewhere_are_checked(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    outside = unique_topic("outside")
    await asyncio.to_thread(_create_topic, kafka_bootstrap, outside, 2)
    log = await KafkaLog.open(kafka_bootstrap)
    try:
        with pytest.raises(TopicMismatchError, match="exists with 2 partitions, not 3"):
            await log.ensure_topic(outside, 3)
        with pytest.raises(UnknownTopicError):
            log.partitions(outside)
        await log.ensure_topic(outside, 2)
        assert log.partitions(outside) == 2
    finally:
        await log.close()


@pytest.mark.kafka
async def test_kafka_end_offsets_count_every_record_of_multi_record_batches(
    kafka_log: KafkaLog, topic: str
) -> None:
    # An append is usually one batch, of which Tansu's ListOffsets answers base offset + 1.
    await kafka_log.append(topic, 0, [Record(b"a"), Record(b"b"), Record(b"c")])
    await kafka_log.append(topic, 2, [Record(b"d")])
    assert await kafka_log.end_offsets(topic) == [3, 0, 1]
    await kafka_log.append(topic, 0, [Record(bytes([i])) for i in range(4)])
    assert await kafka_log.end_offsets(topic) == [7, 0, 1]


@pytest.mark.kafka
async def test_kafka_reads_into_a_last_batch_of_several_records(
    kafka_log: KafkaLog, topic: str
) -> None:
    await kafka_log.append(topic, 1, [Record(b"a")])
    await kafka_log.append(topic, 1, [Record(bytes([i])) for i in range(5)])  # offsets 1-5
    assert [r.offset for r in await kafka_log.read(topic, 1, 3)] == [3, 4, 5]
    assert [r.offset for r in await kafka_log.read(topic, 1, 5)] == [5]
    assert await kafka_log.read(topic, 1, 6) == []
    assert await kafka_log.read(topic, 1, 60) == []
    assert [r.offset for r in await kafka_log.read(topic, 1, 0, max_records=2)] == [0, 1]


@pytest.mark.kafka
async def test_kafka_reads_see_every_acknowledged_append(kafka_log: KafkaLog, topic: str) -> None:
    for i in range(30):
        await kafka_log.append(topic, 0, [Record(bytes([i])), Record(bytes([i]))])
        got = await kafka_log.read(topic, 0, 2 * i)
        assert [r.offset for r in got] == [2 * i, 2 * i + 1]


def _produce_plainly(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """Records written by a Kafka client that knows nothing of the runtime."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, allow_auto_create_topics=False)
    try:
        keyed = [producer.send(topic, value=b"keyed-" + key, key=key) for key in (b"k1", b"k2")]
        explicit = producer.send(topic, value=b"explicit", partition=2, headers=[("h", b"v")])
        producer.flush(timeout=10)
        return [
            (f.get(timeout=10).partition, v) for f, v in [(keyed[0], b"k1"), (keyed[1], b"k2")]
        ] + [(explicit.get(timeout=10).partition, b"explicit")]
    finally:
        producer.close(timeout=10)


@pytest.mark.kafka
async def test_kafka_consumers_see_records_of_other_kafka_clients_where_they_expect_them(
    kafka_log: KafkaLog, kafka_bootstrap: str, topic: str
) -> None:
    written = await asyncio.to_thread(_produce_plainly, kafka_bootstrap, topic)
    assert written == [
        (partition_for_key(b"k1", 3), b"k1"),
        (partition_for_key(b"k2", 3), b"k2"),
        (2, b"explicit"),
    ]
    consumer = kafka_log.consumer()
    consumer.assign({TopicPartition(topic, p): 0 for p in range(3)})
    seen: dict[TopicPartition, list[StoredRecord]] = {}
    deadline = time.monotonic() + 5
    while sum(len(v) for v in seen.values()) < 3 and time.monotonic() < deadline:
        for tp, records in (await consumer.poll(0.5)).items():
            seen.setdefault(tp, []).extend(records)
    by_value = {r.value: tp.partition for tp, records in seen.items() for r in records}
    assert by_value == {
        b"keyed-k1": partition_for_key(b"k1", 3),
        b"keyed-k2": partition_for_key(b"k2", 3),
        b"explicit": 2,
    }
    explicit = next(r for records in seen.values() for r in records if r.value == b"explicit")
    assert explicit.headers == (("h", b"v"),)
    assert explicit.timestamp_ms > 0
    await consumer.close()


def _read_plainly(bootstrap: str, topic: str, partition: int) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = KafkaTopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        return [r.value for r in consumer.poll(timeout_ms=5000).get(tp, [])]
    finally:
        consumer.close()


@pytest.mark.kafka
async def test_kafka_appends_are_plain_records_for_other_kafka_clients(
    kafka_log: KafkaLog, kafka_bootstrap: str, topic: str
) -> None:
    await kafka_log.append(topic, 2, [Record(b"a", key=b"k"), Record(b"b")])
    assert await asyncio.to_thread(_read_plainly, kafka_bootstrap, topic, 2) == [b"a", b"b"]


@pytest.mark.kafka
async def test_kafka_commits_are_durable_in_the_broker(kafka_bootstrap: str, topic: str) -> None:
    first = await KafkaLog.open(kafka_bootstrap)
    await first.ensure_topic(topic, 2)
    await first.commit_offsets(f"g-{topic}", {TopicPartition(topic, 1): 4})
    await first.close()
    second = await KafkaLog.open(kafka_bootstrap)
    try:
        assert await second.committed_offsets(f"g-{topic}", topic) == {1: 4}
    finally:
        await second.close()


@pytest.mark.kafka
async def test_kafka_producer_is_idempotent(kafka_log: KafkaLog) -> None:
    assert kafka_log.idempotent


@pytest.mark.kafka
async def test_kafka_polls_leave_the_event_loop_free(kafka_log: KafkaLog, topic: str) -> None:
    consumer = kafka_log.consumer()
    consumer.assign({TopicPartition(topic, 0): 0})
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    assert await consumer.poll(0.3) == {}
    ticker.cancel()
    assert ticks >= 15
    await consumer.close()


@pytest.mark.kafka
async def test_kafka_log_close_closes_its_consumers_and_threads(
    kafka_bootstrap: str, topic: str
) -> None:
    log = await KafkaLog.open(kafka_bootstrap, client_id="closing-test")
    await log.ensure_topic(topic, 1)
    consumer = log.consumer()
    consumer.assign({TopicPartition(topic, 0): 0})
    assert await consumer.poll(0.05) == {}
    assert await log.read(topic, 0, 0) == []
    await log.close()
    await log.close()
    with pytest.raises(LogError, match="closed"):
        await consumer.poll(0.01)
    with pytest.raises(LogError, match="closed"):
        await log.append(topic, 0, [Record(b"x")])
    deadline = time.monotonic() + 5
    while any("closing-test" in t.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        await asyncio.sleep(0.01)


needs_tansu = pytest.mark.skipif(tansu_binary() is None, reason="needs the Tansu binary")


@pytest.mark.kafka
@needs_tansu
async def test_kafka_append_fails_cleanly_when_the_broker_is_gone() -> None:
    with TansuBroker() as broker:
        broker.start()
        log = await kafka_log_with_a_record(
            broker.bootstrap, request_timeout_ms=500, delivery_timeout_ms=1000
        )
        try:
            broker.kill()
            started = time.monotonic()
            with pytest.raises(LogError, match="appending to t\\[0\\] failed"):
                await asyncio.wait_for(log.append("t", 0, [Record(b"b")]), 10)
            assert time.monotonic() - started < 5
            # The order of appends can no longer be kept: later ones fail at once.
            later = log.append("t", 0, [Record(b"c")])
            assert later.done()
            with pytest.raises(LogError):
                await later
            with pytest.raises(LogError):
                await log.flush()
            for call in (
                log.read("t", 0, 0),
                log.end_offsets("t"),
                log.commit_offsets("g", {TopicPartition("t", 0): 1}),
                log.committed_offsets("g", "t"),
            ):
                with pytest.raises(LogError):
                    await call
            assert time.monotonic() - started < 8
        finally:
            started = time.monotonic()
            await log.close()
            assert time.monotonic() - started < 5


@pytest.mark.kafka
async def test_kafka_appends_the_producer_never_settles_fail_after_the_deadline(
    kafka_bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await KafkaLog.open(kafka_bootstrap, request_timeout_ms=500, delivery_timeout_ms=600)
    try:
        await log.ensure_topic(topic, 1)
        # A producer that takes the records but never reports on them.
        monkeypatch.setattr(log._appender, "produce", lambda *args, **kwargs: None)
        started = time.monotonic()
        with pytest.raises(LogError, match=r"did not acknowledge an append within 1\.1 s"):
            await asyncio.wait_for(log.append(topic, 0, [Record(b"x")]), 5)
        assert time.monotonic() - started < 3
        assert log.append(topic, 0, [Record(b"y")]).exception() is not None
    finally:
        monkeypatch.undo()
        await log.close()


@pytest.mark.kafka
@needs_tansu
async def test_kafka_log_open_fails_cleanly_without_a_broker() -> None:
    with TansuBroker() as broker:
        broker.start()
        bootstrap = broker.bootstrap
    started = time.monotonic()
    with pytest.raises(LogError, match="no Kafka broker answers"):
        await KafkaLog.open(bootstrap, request_timeout_ms=500, delivery_timeout_ms=1000)
    assert time.monotonic() - started < 5


def _produce_outside(bootstrap: str, topic: str, partition: int, value: bytes) -> None:
    """A record appended by another process's producer (never offered to our consumers)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        producer.send(topic, value=value, partition=partition).get(timeout=10)
    finally:
        producer.close()


@pytest.mark.kafka
async def test_kafka_records_appended_here_reach_a_consumer_at_them_without_a_fetch(
    kafka_log: KafkaLog, kafka_bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tp = TopicPartition(topic, 0)
    consumer = kafka_log.consumer()
    consumer.assign({tp: 0})
    # Every Kafka poll of this consumer waits until released: records can reach it only
    # as this process's appends, handed over.
    released = threading.Event()
    fetch = consumer._fetch_records

    fetched_unreleased: list[Any] = []

    def held_fetch(*args: Any) -> Any:
        if not released.wait(10):
            fetched_unreleased.append(fetch(*args))  # the hold timed out: fetched anyway
            return fetched_unreleased[-1]
        return fetch(*args)

    monkeypatch.setattr(consumer, "_fetch_records", held_fetch)
    appends = [
        kafka_log.append(topic, 0, [Record(b"%d" % (2 * n + i)) for i in range(2)])
        for n in range(3)
    ]
    got = await poll_until(consumer, tp, 6)
    assert [r.offset for r in got] == list(range(6))
    assert [r.value for r in got] == [b"%d" % i for i in range(6)]
    assert fetched_unreleased == []  # handed over, not fetched
    await asyncio.gather(*appends)
    # Released: the Kafka poll brings the same six again, and they are dropped; the next
    # record delivered is one only Kafka knows of.
    released.set()
    await asyncio.to_thread(_produce_outside, kafka_bootstrap, topic, 0, b"outside")
    after = await poll_until(consumer, tp, 1)
    assert [(r.offset, r.value) for r in after] == [(6, b"outside")]
    # Moved back (a rollback): everything again, from Kafka, once each.
    consumer.assign({tp: 2})
    again = await poll_until(consumer, tp, 5)
    assert [r.offset for r in again] == [2, 3, 4, 5, 6]
    await consumer.close()


@pytest.mark.kafka
async def test_kafka_polls_pace_while_they_bring_nothing_new_and_not_after_a_record_from_elsewhere(
    kafka_log: KafkaLog, kafka_bootstrap: str, topic: str
) -> None:
    tp = TopicPartition(topic, 0)
    consumer = kafka_log.consumer()
    consumer.assign({tp: 0})
    await kafka_log.append(topic, 0, [Record(b"a"), Record(b"b")])
    assert [r.offset for r in await poll_until(consumer, tp, 2)] == [0, 1]
    # Kafka polls bring nothing new (at most copies of the two handed over): they pace,
    # each pause twice the last, up to the most; nothing is delivered twice.
    longest = kafka_log._settings.fetch_pause_max_ms / 1000
    async with asyncio.timeout(10):
        while consumer.pause < longest:
            assert await consumer.poll(0.05) == {}
    await asyncio.to_thread(_produce_outside, kafka_bootstrap, topic, 0, b"outside")
    after = await poll_until(consumer, tp, 1)
    assert [(r.offset, r.value) for r in after] == [(2, b"outside")]
    assert consumer.pause == 0  # a record from elsewhere: long polls again
    await consumer.close()


@pytest.mark.kafka
async def test_kafka_a_paced_poll_fetches_what_was_appended_elsewhere_meanwhile(
    kafka_log: KafkaLog, kafka_bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tp = TopicPartition(topic, 0)
    consumer = kafka_log.consumer()
    consumer.assign({tp: 0})
    await kafka_log.append(topic, 0, [Record(b"a")])
    assert [r.offset for r in await poll_until(consumer, tp, 1)] == [0]
    await _paused_at_least([consumer], [kafka_log._settings.fetch_pause_max_ms / 1000])
    # Quiet, the consumer fetches once per pause. A record appended elsewhere meanwhile
    # comes with the next fetch (or the one after, should the broker show it late): a
    # paced fetch is a fetch, not a wait that a Kafka client may fill or not.
    fetches: list[tuple[Any, ...]] = []
    fetch = consumer._fetch_records

    def counted(*args: Any) -> Any:
        fetches.append(args)
        return fetch(*args)

    await asyncio.to_thread(_produce_outside, kafka_bootstrap, topic, 0, b"outside")
    monkeypatch.setattr(consumer, "_fetch_records", counted)
    after = await poll_until(consumer, tp, 1)
    assert [(r.offset, r.value) for r in after] == [(1, b"outside")]
    assert 1 <= len(fetches) <= 2
    await consumer.close()


class _Message:
    def __init__(self, topic: str, partition: int) -> None:
        self._tp = (topic, partition)

    def topic(self) -> str:
        return self._tp[0]

    def partition(self) -> int:
        return self._tp[1]


class _ReadingAResponse:
    """A librdkafka consumer part way through reading a fetch response: the parts of
    ``later`` come one poll at a time. ``ends``: each partition's high watermark as
    librdkafka has noted it (-1001: never fetched); it notes a part's before it hands
    over its records."""

    def __init__(self, later: list[_Message], ends: dict[int, int]) -> None:
        self.later = later
        self.ends = ends

    def poll(self, timeout: float) -> _Message | None:
        return self.later.pop(0) if self.later else None

    def consume(self, count: int, timeout: float) -> list[_Message]:
        return []

    def get_watermark_offsets(self, tp: Any, cached: bool) -> tuple[int, int]:
        return (0, self.ends[tp.partition])


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("ends", "taken"),
    [
        ({1: -1001, 2: -1001}, [1, 2]),  # never fetched: both wait
        ({1: 10, 2: 0}, [1]),  # 1 has records past its position, 2 none
        ({1: 0, 2: 0}, []),  # neither has records: nothing to wait for
    ],
    ids=["never-fetched", "one-behind", "caught-up"],
)
async def test_kafka_a_poll_takes_the_rest_of_the_fetch_response_it_woke_at(
    kafka_log: KafkaLog, topic: str, ends: dict[int, int], taken: list[int]
) -> None:
    consumer = kafka_log.consumer()
    consumer._fetch_from = {TopicPartition(topic, p): 0 for p in (0, 1, 2)}
    # Partition 0's part of the response was read; the others' parts come next.
    reading = _ReadingAResponse([_Message(topic, 1), _Message(topic, 2)], {0: 10, **ends})
    more = consumer._rest_of_the_fetch(reading, [_Message(topic, 0)])  # type: ignore[arg-type]
    assert [m.partition() for m in more] == taken
    await consumer.close()


@pytest.mark.kafka
async def test_kafka_records_from_elsewhere_arrive_while_appends_here_keep_the_consumer_busy(
    kafka_log: KafkaLog, kafka_bootstrap: str, topic: str
) -> None:
    ours, theirs = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = kafka_log.consumer()
    consumer.assign({ours: 0, theirs: 0})
    await asyncio.to_thread(_produce_outside, kafka_bootstrap, topic, 1, b"outside")
    # Every poll finds records of ours handed over and waiting: the consumer is never
    # idle, and the record only Kafka knows of must still be fetched.
    delivered: list[StoredRecord] = []
    async with asyncio.timeout(10):
        while not delivered:
            await kafka_log.append(topic, 0, [Record(b"a"), Record(b"b")])
            got = await consumer.poll(0.05, max_records=1)
            assert got.get(ours), "our own appends are always waiting"
            delivered = got.get(theirs, [])
    assert [(r.offset, r.value) for r in delivered] == [(0, b"outside")]
    await consumer.close()


@pytest.mark.kafka
async def test_kafka_appends_after_a_record_not_yet_read_are_read_from_kafka_in_order(
    kafka_log: KafkaLog, kafka_bootstrap: str, topic: str
) -> None:
    tp = TopicPartition(topic, 1)
    consumer = kafka_log.consumer()
    consumer.assign({tp: 0})
    await asyncio.to_thread(_produce_outside, kafka_bootstrap, topic, 1, b"first")
    # Offset 0 came from elsewhere: ours (1-3) are not at the consumer's position when
    # they are acknowledged, unless the Kafka poll brought offset 0 first.
    await kafka_log.append(topic, 1, [Record(b"a"), Record(b"b"), Record(b"c")])
    got = await poll_until(consumer, tp, 4)
    assert [(r.offset, r.value) for r in got] == [(0, b"first"), (1, b"a"), (2, b"b"), (3, b"c")]
    await asyncio.to_thread(_produce_outside, kafka_bootstrap, topic, 1, b"next")
    assert [(r.offset, r.value) for r in await poll_until(consumer, tp, 1)] == [(4, b"next")]
    await consumer.close()


def _hide_once(records: list[Any], hidden: set[int], done: list[bool]) -> list[Any]:
    """``records`` without the offsets in ``hidden``, the first time they would be seen."""
    if done or not any(r.offset in hidden for r in records):
        return records
    done.append(True)
    return [r for r in records if r.offset not in hidden]


def _racing_fetches(consumer: Any, tp: TopicPartition, hidden: set[int], *, always: bool) -> Any:
    """``consumer``'s Kafka polls as Tansu answers one that races two producers: records
    past ``hidden`` arrive while those are not visible yet (the Kafka consumer moves past
    them all the same); ``always``: every time (a gap of the topic's own)."""
    fetch = consumer._fetch_records
    done: list[bool] = []

    def racing(*args: Any) -> Any:
        fetched = fetch(*args)
        if tp in fetched:
            if always:
                done.clear()
            fetched[tp] = _hide_once(fetched[tp], hidden, done)
        return fetched

    return racing


@pytest.mark.kafka
@pytest.mark.parametrize("dense", [True, False])
async def test_kafka_a_poll_that_skips_records_is_read_again_from_the_first_missing(
    kafka_log: KafkaLog,
    kafka_bootstrap: str,
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
    dense: bool,
) -> None:
    tp = TopicPartition(topic, 0)
    for i in range(5):
        await asyncio.to_thread(_produce_outside, kafka_bootstrap, topic, 0, b"%d" % i)
    consumer = kafka_log.consumer(dense=dense)
    consumer.assign({tp: 0})
    racing = _racing_fetches(consumer, tp, {1, 2}, always=False)
    monkeypatch.setattr(consumer, "_fetch_records", racing)
    # Read again from the first missing record, they come: in order, once each.
    got = await poll_until(consumer, tp, 5)
    assert [(r.offset, r.value) for r in got] == [(i, b"%d" % i) for i in range(5)]
    await consumer.close()


@pytest.mark.kafka
async def test_kafka_a_gap_read_twice_is_the_topics_own_unless_the_topic_is_dense(
    kafka_log: KafkaLog,
    kafka_bootstrap: str,
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for p in (0, 1):
        for i in range(5):
            await asyncio.to_thread(_produce_outside, kafka_bootstrap, topic, p, b"%d" % i)
    # A topic others write (transaction markers): a gap found again is taken.
    theirs = kafka_log.consumer(dense=False)
    tp = TopicPartition(topic, 0)
    theirs.assign({tp: 0})
    monkeypatch.setattr(theirs, "_fetch_records", _racing_fetches(theirs, tp, {1, 2}, always=True))
    assert [r.offset for r in await poll_until(theirs, tp, 3)] == [0, 3, 4]
    await theirs.close()
    # Ours never has one: it is read again, and said once it lasts.
    monkeypatch.setattr(kafka_module, "_MISSING_WARN_AFTER", 3)
    ours = kafka_log.consumer()
    tp = TopicPartition(topic, 1)
    ours.assign({tp: 0})
    monkeypatch.setattr(ours, "_fetch_records", _racing_fetches(ours, tp, {1, 2}, always=True))
    got: list[StoredRecord] = []
    async with asyncio.timeout(10):
        while "never that one" not in caplog.text:
            got += (await ours.poll(0.05)).get(tp, [])
    assert [r.offset for r in got] == [0]
    await ours.close()


@pytest.mark.kafka
async def test_kafka_a_read_that_skips_records_reads_them_again(
    kafka_log: KafkaLog, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        await kafka_log.append(topic, 2, [Record(b"%d" % i)])
    done: list[bool] = []
    reader = kafka_log._reader_consumer()
    poll = reader.poll

    def racing_poll(*args: Any, **kwargs: Any) -> Any:
        polled = poll(*args, **kwargs)
        return {ktp: _hide_once(records, {1}, done) for ktp, records in polled.items()}

    monkeypatch.setattr(reader, "poll", racing_poll)
    got = await kafka_log.read(topic, 2, 0)
    assert done  # the race happened
    assert [(r.offset, r.value) for r in got] == [(i, b"%d" % i) for i in range(4)]


async def _paused_at_least(consumers: list[KafkaLogConsumer], seconds: list[float]) -> None:
    """Poll until each consumer's pause between its Kafka polls (which bring nothing) is
    at least its ``seconds``."""
    with anyio.fail_after(30):
        while any(c.pause < s for c, s in zip(consumers, seconds, strict=True)):
            for consumer in consumers:
                assert await consumer.poll(0.05) == {}


async def _values_polled(consumer: KafkaLogConsumer, count: int) -> list[bytes]:
    """The values of the next ``count`` records ``consumer`` polls."""
    got: list[bytes] = []
    with anyio.fail_after(10):
        while len(got) < count:
            got += [r.value for rs in (await consumer.poll(1)).values() for r in rs]
    return got


@pytest.fixture
async def own_and_other(
    kafka_bootstrap: str, topic: str
) -> AsyncIterator[tuple[KafkaLog, KafkaLog]]:
    """This process's Kafka log (``fetch_pause_max_ms`` 50) and another process's, both on
    ``topic`` (one partition)."""
    own = await KafkaLog.open(kafka_bootstrap, fetch_pause_max_ms=50)
    other = await KafkaLog.open(kafka_bootstrap)
    try:
        await own.ensure_topic(topic, 1)
        await other.ensure_topic(topic, 1)
        yield own, other
    finally:
        await own.close()
        await other.close()


def _alone(own: KafkaLog, topic: str, *dense: bool) -> list[KafkaLogConsumer]:
    """``own`` made the sole writer, with a consumer (``dense`` or not, each) of ``topic``'s
    partition 0 from its start."""
    consumers = [own.consumer(dense=d) for d in dense]
    for consumer in consumers:
        consumer.assign({TopicPartition(topic, 0): 0})
    own.sole_writer(True)
    return consumers


@pytest.mark.kafka
async def test_kafka_a_sole_writer_polls_seldom_and_often_again_once_not_alone(
    own_and_other: tuple[KafkaLog, KafkaLog], topic: str
) -> None:
    own, other = own_and_other
    dense, external = _alone(own, topic, True, False)
    # Polls that bring nothing pause longer and longer: up to the sole writer's bound
    # for a topic only the application writes, never past the set one for another.
    await _paused_at_least([dense, external], [kafka_module.SOLE_WRITER_FETCH_PAUSE, 0.05])
    assert dense.pause == kafka_module.SOLE_WRITER_FETCH_PAUSE
    assert external.pause == 0.05
    # Not alone any more: the long pause ends within the set bound.
    await other.append(topic, 0, [Record(b"theirs")])
    own.sole_writer(False)
    assert dense.pause <= 0.05
    assert await _values_polled(dense, 1) == [b"theirs"]
    await dense.close()
    await external.close()


@pytest.mark.kafka
async def test_kafka_records_handed_over_past_a_missing_one_end_a_pause(
    own_and_other: tuple[KafkaLog, KafkaLog], topic: str
) -> None:
    own, other = own_and_other
    (consumer,) = _alone(own, topic, True)
    await _paused_at_least([consumer], [0.5])
    assert await other.append(topic, 0, [Record(b"theirs")]) == [0]
    assert await own.append(topic, 0, [Record(b"mine")]) == [1]  # handed over: a gap
    assert consumer.pause == 0
    got = await _values_polled(consumer, 2)
    assert got == [b"theirs", b"mine"]
    # Positions given again (a rollback): read from Kafka at once, whatever the pause.
    await _paused_at_least([consumer], [0.5])
    consumer.assign({TopicPartition(topic, 0): 0})
    assert consumer.pause == 0
    assert await _values_polled(consumer, 2) == got
    await consumer.close()
