"""The durable embedded log: SQLite in WAL mode under the runtime's data directory.

One writer thread owns the write connection and commits whatever has queued up in a
single transaction (group commit, ``synchronous=FULL``), so many concurrent appends
cost one fsync; their records go in with a few multi-row statements, and a group that
one statement takes is that statement alone (see :mod:`runtime.sqlite_db`). Readers
use a second connection on the event loop thread; WAL lets them read while the writer
commits. An exclusive lock on the directory keeps a second process from writing the
same log. Truncation deletes on the writer thread too, in bounded steps, and keeps each
partition's start offset in the database, so a partition emptied by truncation keeps
its end across a reopen.

A group that fails to commit (a full disk, an I/O error) writes nothing, and the writer
fails every operation queued after it without writing, until :meth:`SqliteLog.reopen`
reaches it in the queue: a later group committing would leave a gap in the offsets.
The reopen proves the log can write again by committing a probe row.

**The durable tail.** The records of each partition's last appends are kept in memory
once durable (at most ``TAIL_RECORDS`` per partition and ``TAIL_BYTES`` of them), so a
consumer at the end (a reader of an embedded egress; the worker, at a record it could
not take before it was durable) gets them without reading them back from SQLite. Reads still go by offset: the tail holds exactly the durable records at those
offsets (what SQLite returns), so a reader gets from it only what it would read from the
log at its own position, never ahead of it, and a reader moved back (a rollback) or
behind the tail reads from SQLite as before. Failed appends never reach the tail (their
offsets are handed out again), and a deleted topic's tail goes with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeGuard

import msgpack

from runtime.directories import lock_directory, unlock
from runtime.errors import DataDirectoryInUse
from runtime.log.base import LogError, StoredRecord, TopicPartition
from runtime.log.local import LocalLog, PendingAppend, stored_records
from runtime.sqlite_db import connect, insert_rows, statements_for

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB, value BLOB NOT NULL, headers BLOB, timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS starts (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumer_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reopened (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
"""


@dataclass(slots=True)
class _Tail:
    """A partition's newest durable records: offsets ``base`` onwards, in order."""

    base: int
    records: list[StoredRecord]
    size: int
    """Bytes of the records' values and keys."""


@dataclass(slots=True)
class _CreateTopic:
    topic: str
    partitions: int
    future: asyncio.Future[None]


@dataclass(slots=True)
class _DeleteTopic:
    topic: str
    future: asyncio.Future[None]


@dataclass(slots=True)
class _CommitOffsets:
    group: str
    offsets: dict[TopicPartition, int]
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Truncate:
    tp: TopicPartition
    before: int
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Reopen:
    """Everything queued before it is settled; write again if a probe commits."""

    future: asyncio.Future[None]


_Other = _CreateTopic | _DeleteTopic | _CommitOffsets | _Truncate
_Op = PendingAppend | _Other
_RECORD_COLUMNS = 7
"""Columns of the records table."""


def _one_insert(group: list[_Op]) -> TypeGuard[list[PendingAppend]]:
    """Whether ``group`` is appends whose records one insert statement takes."""
    rows = 0
    for op in group:
        if not isinstance(op, PendingAppend):
            return False
        rows += len(op.records)
    return statements_for(rows, _RECORD_COLUMNS) == 1


_TOPIC_ROWS = (
    ("records", "topic"),
    ("starts", "topic"),
    ("consumer_offsets", "topic"),
    ("topics", "name"),
)
"""Where a topic has rows: (table, the column naming the topic)."""

TAIL_RECORDS = 4096
"""Durable records kept in memory per partition (its newest), read without SQLite..."""
TAIL_BYTES = 4 << 20
"""... and at most this many bytes of their values and keys."""
TRUNCATE_STEP = 10_000
"""Records deleted per transaction: appends queued behind a truncation wait at most this."""


class SqliteLog(LocalLog):
    """Use :meth:`open`; the constructor expects the directory already locked."""

    def __init__(self, path: Path, lock: IO[bytes]):
        super().__init__()
        self._path = path
        self._lock = lock
        self._reader = connect(path)
        writer: sqlite3.Connection | None = None
        try:
            writer = connect(path)
            writer.executescript(_SCHEMA)
            self._load()
        except BaseException:
            # Not a log (a damaged file, a full disk): nothing stays open.
            if writer is not None:
                writer.close()
            self._reader.close()
            raise
        self._queue: queue.SimpleQueue[list[_Op | _Reopen | None]] = queue.SimpleQueue()
        self._handing: list[_Op | _Reopen | None] = []
        """Operations queued on the loop since it last handed them to the writer."""
        self._taken: collections.deque[_Op | _Reopen | None] = collections.deque()
        """Operations the writer took off the queue and has not yet begun (its own)."""
        self._tail: dict[TopicPartition, _Tail] = {}
        self._thread = threading.Thread(
            target=self._write_loop, args=(writer,), name="sqlite-log-writer", daemon=True
        )

    @classmethod
    async def open(cls, directory: str | Path) -> SqliteLog:
        directory = Path(directory)
        lock = lock_directory(directory, "log.lock", "data directory", DataDirectoryInUse)
        try:
            log = cls(directory / "log.db", lock)
        except BaseException:
            unlock(lock)  # the directory may be opened again once the file is mended
            raise
        log._thread.start()
        return log

    def _load(self) -> None:
        ends: dict[str, dict[int, int]] = {}
        for topic, partition, end in self._reader.execute(
            "SELECT topic, partition, MAX(offset) + 1 FROM records GROUP BY topic, partition"
        ):
            ends.setdefault(topic, {})[partition] = end
        starts: dict[str, dict[int, int]] = {}
        for topic, partition, start in self._reader.execute(
            "SELECT topic, partition, offset FROM starts"
        ):
            starts.setdefault(topic, {})[partition] = start
        for topic, partitions in self._reader.execute("SELECT name, partitions FROM topics"):
            self._known_topic(topic, partitions, ends.get(topic, {}), starts.get(topic, {}))

    # --- writing, on the writer thread ---------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        failure: sqlite3.Error | None = None  # since this failed, nothing is written
        while True:
            first = self._take(block=True)
            if first is None:
                break
            if isinstance(first, _Reopen):
                failure = self._probe(conn, first)
                continue
            group: list[_Op] = [first]
            while True:
                try:
                    nxt = self._take(block=False)
                except queue.Empty:
                    break
                if nxt is None or isinstance(nxt, _Reopen):
                    self._taken.appendleft(nxt)  # after this group, in its turn
                    break
                group.append(nxt)
            if failure is None:
                failure = self._commit(conn, group)
            else:
                self._loop.call_soon_threadsafe(self._group_failed, group, failure)
        conn.close()

    def _take(self, *, block: bool) -> _Op | _Reopen | None:
        """The next operation the loop handed over (``queue.Empty`` if none and not
        ``block``)."""
        taken = self._taken
        if not taken:
            taken.extend(self._queue.get() if block else self._queue.get_nowait())
        return taken.popleft()

    def _commit(self, conn: sqlite3.Connection, group: list[_Op]) -> sqlite3.Error | None:
        """Write ``group`` in one transaction; the error if it failed (nothing written)."""
        try:
            if _one_insert(group):
                # One statement is a transaction of its own: the group is one SQLite step.
                self._insert(conn, group)
            else:
                conn.execute("BEGIN")
                appends: list[PendingAppend] = []
                for item in group:
                    if isinstance(item, PendingAppend):
                        appends.append(item)
                        continue
                    if appends:
                        self._insert(conn, appends)
                        appends = []
                    self._apply(conn, item)
                if appends:
                    self._insert(conn, appends)
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            _roll_back(conn)
            self._loop.call_soon_threadsafe(self._group_failed, group, e)
            return e
        self._loop.call_soon_threadsafe(self._group_durable, group)
        return None

    def _probe(self, conn: sqlite3.Connection, reopen: _Reopen) -> sqlite3.Error | None:
        """Commit a probe row for a reopen; the error if the log still cannot write."""
        try:
            conn.execute(
                "INSERT OR REPLACE INTO reopened VALUES (1, ?)", (int(time.time() * 1000),)
            )
        except sqlite3.Error as e:
            _roll_back(conn)
            self._loop.call_soon_threadsafe(self._reopen_failed, reopen.future, e)
            return e
        self._loop.call_soon_threadsafe(_resolve, reopen.future)
        return None

    @staticmethod
    def _insert(conn: sqlite3.Connection, appends: list[PendingAppend]) -> None:
        """Insert the records of consecutive appends (a few statements: see
        :mod:`runtime.sqlite_db`)."""
        insert_rows(
            conn,
            "INSERT INTO records",
            [
                (
                    op.tp.topic,
                    op.tp.partition,
                    op.base_offset + i,
                    r.key,
                    r.value,
                    msgpack.packb(r.headers) if r.headers else None,
                    op.timestamp_ms,
                )
                for op in appends
                for i, r in enumerate(op.records)
            ],
        )

    @staticmethod
    def _apply(conn: sqlite3.Connection, op: _Other) -> None:
        """Apply an operation other than an append."""
        if isinstance(op, _CreateTopic):
            conn.execute("INSERT INTO topics VALUES (?, ?)", (op.topic, op.partitions))
        elif isinstance(op, _DeleteTopic):
            for table, column in _TOPIC_ROWS:
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (op.topic,))
        elif isinstance(op, _Truncate):
            conn.execute(
                "DELETE FROM records WHERE topic = ? AND partition = ? AND offset < ?",
                (op.tp.topic, op.tp.partition, op.before),
            )
            conn.execute(
                "INSERT OR REPLACE INTO starts VALUES (?, ?, ?)",
                (op.tp.topic, op.tp.partition, op.before),
            )
        else:
            insert_rows(
                conn,
                "INSERT OR REPLACE INTO consumer_offsets",
                [(op.group, tp.topic, tp.partition, off) for tp, off in op.offsets.items()],
            )

    # --- back on the loop ----------------------------------------------------------------

    def _group_durable(self, group: list[_Op]) -> None:
        appends = [op for op in group if isinstance(op, PendingAppend)]
        for append in appends:
            self._keep_tail(append)
        self._made_durable(appends)
        for op in group:
            if not isinstance(op, PendingAppend) and not op.future.done():
                op.future.set_result(None)

    def _group_failed(self, group: list[_Op], error: sqlite3.Error) -> None:
        failure = LogError(f"the embedded log at {self._path} failed to write: {error}")
        failure.__cause__ = error
        self._failed([op for op in group if isinstance(op, PendingAppend)], failure)
        for op in group:
            if not isinstance(op, PendingAppend) and not op.future.done():
                op.future.set_exception(failure)

    def _reopen_failed(self, future: asyncio.Future[None], error: sqlite3.Error) -> None:
        if not future.done():
            failure = LogError(f"the embedded log at {self._path} still cannot write: {error}")
            failure.__cause__ = error
            future.set_exception(failure)

    def _write(self, append: PendingAppend) -> None:
        self._hand_over(append)

    def _hand_over(self, op: _Op | _Reopen | None) -> None:
        """Queue ``op`` for the writer, in order. The operations queued in one turn of
        the loop go over together, once the turn ends: one wake-up of the writer and one
        lock taken, rather than one per append (at c64, a dozen appends a turn)."""
        handing = self._handing
        handing.append(op)
        if len(handing) == 1:
            self._loop.call_soon(self._hand_over_now)

    def _hand_over_now(self) -> None:
        ops, self._handing = self._handing, []
        self._queue.put(ops)

    async def _resume_writing(self) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        self._hand_over(_Reopen(future))
        await future

    async def _create_topic(self, topic: str, partitions: int) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        self._hand_over(_CreateTopic(topic, partitions, future))
        await future

    async def _delete_topic(self, topic: str, partitions: int) -> None:
        for p in range(partitions):
            self._tail.pop(TopicPartition(topic, p), None)
        future: asyncio.Future[None] = self._loop.create_future()
        self._hand_over(_DeleteTopic(topic, future))
        await future

    def _keep_tail(self, append: PendingAppend) -> None:
        """Keep a durable append's records as its partition's newest (in offset order)."""
        tp = append.tp
        if tp not in self._durable:  # its topic was deleted meanwhile
            return
        stored = stored_records(append)
        size = sum(len(r.value) + len(r.key or b"") for r in stored)
        tail = self._tail.get(tp)
        if tail is None or tail.base + len(tail.records) != append.base_offset:
            tail = self._tail[tp] = _Tail(append.base_offset, list(stored), size)
        else:
            tail.records += stored
            tail.size += size
        if len(tail.records) > 2 * TAIL_RECORDS or tail.size > TAIL_BYTES:
            # Drop the oldest, down to half the bounds (amortized: not on every append).
            drop = max(0, len(tail.records) - TAIL_RECORDS)
            dropped = sum(len(r.value) + len(r.key or b"") for r in tail.records[:drop])
            while drop < len(tail.records) and tail.size - dropped > TAIL_BYTES // 2:
                r = tail.records[drop]
                dropped += len(r.value) + len(r.key or b"")
                drop += 1
            del tail.records[:drop]
            tail.base += drop
            tail.size -= dropped

    def _read_range(self, tp: TopicPartition, start: int, end: int) -> list[StoredRecord]:
        tail = self._tail.get(tp)
        if tail is not None and start >= tail.base:
            return tail.records[start - tail.base : end - tail.base]
        rows = self._reader.execute(
            "SELECT offset, value, key, headers, timestamp_ms FROM records"
            " WHERE topic = ? AND partition = ? AND offset >= ? AND offset < ? ORDER BY offset",
            (tp.topic, tp.partition, start, end),
        ).fetchall()
        return [
            StoredRecord(
                offset,
                value,
                key,
                tuple((k, v) for k, v in msgpack.unpackb(headers)) if headers else (),
                ts,
            )
            for offset, value, key, headers, ts in rows
        ]

    async def _drop(self, tp: TopicPartition, before: int) -> None:
        first = self._reader.execute(
            "SELECT MIN(offset) FROM records WHERE topic = ? AND partition = ?",
            (tp.topic, tp.partition),
        ).fetchone()[0]
        step = before if first is None else min(before, first + TRUNCATE_STEP)
        while True:
            future: asyncio.Future[None] = self._loop.create_future()
            self._hand_over(_Truncate(tp, step, future))
            await future
            if step >= before:
                return
            step = min(before, step + TRUNCATE_STEP)

    async def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        self._hand_over(_CommitOffsets(group, dict(offsets), future))
        await future

    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        rows = self._reader.execute(
            "SELECT partition, offset FROM consumer_offsets WHERE grp = ? AND topic = ?",
            (group, topic),
        )
        return dict(rows.fetchall())

    async def close(self) -> None:
        self._hand_over(None)
        await asyncio.to_thread(self._thread.join)
        self._reader.close()
        self._wake_consumers()
        unlock(self._lock)

    def __repr__(self) -> str:
        return f"SqliteLog({os.fspath(self._path)!r})"


def _roll_back(conn: sqlite3.Connection) -> None:
    """End a failed transaction (SQLite may have rolled it back already)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
