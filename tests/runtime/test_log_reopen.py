"""A failed append stops every later one until the log is reopened, and a reopen makes
the log usable again: no gap in the offsets, nothing written out of order."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from kafka_broker import TansuBroker, tansu_binary
from support import kafka_log_with_a_record

from runtime.log import LogError, Record, TopicPartition
from runtime.log.kafka import KafkaLog
from runtime.log.local import PendingAppend
from runtime.log.memory import MemoryLog
from runtime.log.sqlite import SqliteLog

pytestmark = pytest.mark.anyio

DISK_FULL = "database or disk is full"


async def test_sqlite_fails_every_append_queued_behind_a_failed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: the append queued while the failing group was being written forms a
    group of its own, which must fail too (committing it would leave a gap)."""
    log = await SqliteLog.open(tmp_path)
    failures: list[LogError] = []
    log.on_failure(failures.append)
    writing_b, release = threading.Event(), threading.Event()
    insert = SqliteLog._insert

    def failing_insert(conn: sqlite3.Connection, appends: list[PendingAppend]) -> None:
        if any(op.records[0].value == b"b" for op in appends):
            writing_b.set()
            release.wait(10)
            raise sqlite3.OperationalError(DISK_FULL)
        insert(conn, appends)

    monkeypatch.setattr(SqliteLog, "_insert", staticmethod(failing_insert))
    try:
        await log.ensure_topic("t", 1)
        assert await log.append("t", 0, [Record(b"a")]) == [0]
        b = log.append("t", 0, [Record(b"b")])
        await asyncio.to_thread(writing_b.wait, 10)
        c = log.append("t", 0, [Record(b"c")])  # queued behind b's group
        release.set()
        with pytest.raises(LogError, match=DISK_FULL):
            await b
        with pytest.raises(LogError, match=DISK_FULL):
            await c
        assert len(failures) == 1
        later = log.append("t", 0, [Record(b"d")])
        assert later.done()  # refused at once, before reaching the writer
        with pytest.raises(LogError):
            await later
        with pytest.raises(LogError):
            await log.flush()
        assert await log.end_offsets("t") == [1]

        await log.reopen()
        assert log.failure is None
        assert await log.append("t", 0, [Record(b"e")]) == [1]  # b's offset is free again
        await log.flush()
        assert [r.value for r in await log.read("t", 0, 0)] == [b"a", b"e"]
    finally:
        release.set()
        await log.close()
    reopened = await SqliteLog.open(tmp_path)  # and so it is on disk
    try:
        assert [r.value for r in await reopened.read("t", 0, 0)] == [b"a", b"e"]
    finally:
        await reopened.close()


async def test_records_taken_early_whose_append_fails_are_gone_and_their_offsets_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An early consumer may have taken a record that then fails to be written: the log
    hands out nothing more that is not durable, its reader is moved back (a rollback),
    and the offset goes to the next append after the reopen."""
    log = await SqliteLog.open(tmp_path)
    insert = SqliteLog._insert

    def failing_insert(conn: sqlite3.Connection, appends: list[PendingAppend]) -> None:
        if any(op.records[0].value == b"b" for op in appends):
            raise sqlite3.OperationalError(DISK_FULL)
        insert(conn, appends)

    monkeypatch.setattr(SqliteLog, "_insert", staticmethod(failing_insert))
    tp = TopicPartition("t", 0)
    try:
        await log.ensure_topic("t", 1)
        early = log.early_consumer(lambda record: True)
        early.assign({tp: 0})
        assert await log.append("t", 0, [Record(b"a")]) == [0]
        b = log.append("t", 0, [Record(b"b")])
        c = log.append("t", 0, [Record(b"c")])
        unsettled = log.unsettled()
        assert unsettled is c
        taken = await early.poll(1.0)
        assert [(r.offset, r.value) for r in taken[tp]] == [(0, b"a"), (1, b"b"), (2, b"c")]
        for failed in (b, c):
            with pytest.raises(LogError, match=DISK_FULL):
                await failed
        assert unsettled.exception() is not None  # what waited on it learns of the failure
        early.assign({tp: 1})  # the rollback
        assert await early.poll(0.0) == {}  # b and c are gone, not handed out again
        d = log.append("t", 0, [Record(b"d")])
        assert d.done()  # refused at once
        with pytest.raises(LogError):
            await d
        await log.reopen()
        e = log.append("t", 0, [Record(b"e")])
        again = await early.poll(0.0)
        assert [(r.offset, r.value) for r in again[tp]] == [(1, b"e")]  # b's offset
        assert await e == [1]
        await early.close()
    finally:
        await log.close()


async def test_sqlite_reopen_fails_while_the_log_still_cannot_write(tmp_path: Path) -> None:
    log = await SqliteLog.open(tmp_path)
    try:
        await log.ensure_topic("t", 1)
        # A trigger refuses every write of the log's writer, as a full disk would.
        outside = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
        for table in ("records", "reopened"):
            outside.execute(
                f"CREATE TRIGGER full_{table} BEFORE INSERT ON {table}"
                f" BEGIN SELECT RAISE(FAIL, '{DISK_FULL}'); END"
            )
        with pytest.raises(LogError, match=DISK_FULL):
            await log.append("t", 0, [Record(b"a")])
        with pytest.raises(LogError, match="still cannot write"):
            await log.reopen()
        refused = log.append("t", 0, [Record(b"b")])
        assert refused.done()  # still refusing
        with pytest.raises(LogError):
            await refused
        outside.execute("DROP TRIGGER full_records")
        outside.execute("DROP TRIGGER full_reopened")
        outside.close()
        await log.reopen()
        assert await log.append("t", 0, [Record(b"c")]) == [0]
    finally:
        await log.close()


async def test_reopening_a_log_that_did_not_fail_changes_nothing(tmp_path: Path) -> None:
    for log in (MemoryLog(), await SqliteLog.open(tmp_path)):
        try:
            await log.ensure_topic("t", 1)
            assert await log.append("t", 0, [Record(b"a")]) == [0]
            await log.reopen()
            assert await log.append("t", 0, [Record(b"b")]) == [1]
        finally:
            await log.close()


needs_tansu = pytest.mark.skipif(tansu_binary() is None, reason="needs the Tansu binary")


@pytest.mark.kafka
@needs_tansu
@pytest.mark.timeout(60)
async def test_kafka_reopens_with_a_new_producer_after_a_broker_stall() -> None:
    with TansuBroker() as broker:
        broker.start()
        # The delivery timeout also bounds the first append of the producer the reopen
        # makes: it connects to the partition's leader and gets its producer id first
        # (once over 1 s under the full suite's load, on a slow machine).
        log = await KafkaLog.open(
            broker.bootstrap, request_timeout_ms=500, delivery_timeout_ms=2000
        )
        failures: list[LogError] = []
        log.on_failure(failures.append)
        try:
            await log.ensure_topic("t", 1)
            assert await log.append("t", 0, [Record(b"a")]) == [0]
            broker.pause()
            started = time.monotonic()
            with pytest.raises(LogError):
                await asyncio.wait_for(log.append("t", 0, [Record(b"b")]), 10)
            assert time.monotonic() - started < 5
            assert [str(f) for f in failures] == [str(log.failure)]
            refused = log.append("t", 0, [Record(b"c")])
            assert refused.done()
            with pytest.raises(LogError):
                await refused
            with pytest.raises(LogError):
                await log.flush()  # at once: an append is missing
            with pytest.raises(LogError):  # the broker does not answer yet
                await asyncio.wait_for(log.reopen(), 10)
            assert log.failure is not None
            broker.resume()
            await asyncio.wait_for(log.reopen(), 10)
            assert log.failure is None
            # b's fate was unknown: it may or may not have landed before d.
            (offset,) = await asyncio.wait_for(log.append("t", 0, [Record(b"d")]), 10)
            values = [r.value for r in await log.read("t", 0, 0)]
            assert values[0] == b"a"
            assert values[-1] == b"d"
            assert values[offset] == b"d"
            assert set(values[1:-1]) <= {b"b"}
            await log.flush()
            assert len(failures) == 1
        finally:
            broker.resume()
            started = time.monotonic()
            await log.close()
            assert time.monotonic() - started < 5


@pytest.mark.kafka
@needs_tansu
@pytest.mark.timeout(60)
async def test_kafka_an_append_held_through_a_stall_longer_than_a_request_settles_once_it_ends() -> (
    None
):
    # The producer times the request out, keeps the record, and sends it again once the
    # broker is back, which by then may have taken the first request too: the append is
    # then durable at an offset nobody says. Either way it settles when the stall ends,
    # long before the log's own deadline for acknowledgements (5.5 s here).
    with TansuBroker() as broker:
        broker.start()
        log = await kafka_log_with_a_record(
            broker.bootstrap, request_timeout_ms=500, delivery_timeout_ms=5000
        )
        try:
            broker.pause()
            held = log.append("t", 0, [Record(b"b")])
            await asyncio.sleep(1.5)
            assert not held.done()
            broker.resume()
            resumed = time.monotonic()
            (outcome,) = await asyncio.wait_for(asyncio.gather(held, return_exceptions=True), 10)
            if isinstance(outcome, LogError):
                assert "without saying at which offset" in str(outcome)
                await asyncio.wait_for(log.reopen(), 10)
            else:
                assert outcome == [1]
            assert time.monotonic() - resumed < 3
            (offset,) = await asyncio.wait_for(log.append("t", 0, [Record(b"c")]), 10)
            values = [r.value for r in await log.read("t", 0, 0)]
            assert values[:2] == [b"a", b"b"]
            assert values[offset] == b"c"
        finally:
            broker.resume()
            await log.close()
