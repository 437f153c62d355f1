"""The durable embedded log: SQLite in WAL mode under the runtime's data directory.

One writer thread owns the write connection and commits whatever has queued up in a
single transaction (group commit, ``synchronous=FULL``), so many concurrent appends
cost one fsync. Readers use a second connection on the event loop thread; WAL lets
them read while the writer commits. An exclusive lock on the directory keeps a second
process from writing the same log. Truncation deletes on the writer thread too, in
bounded steps, and keeps each partition's start offset in the database, so a partition
emptied by truncation keeps its end across a reopen.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgpack

from runtime.directories import lock_directory, unlock
from runtime.errors import DataDirectoryInUse
from runtime.log.base import LogError, StoredRecord, TopicPartition
from runtime.log.local import LocalLog, PendingAppend

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
"""


@dataclass(slots=True)
class _CreateTopic:
    topic: str
    partitions: int
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


_Op = PendingAppend | _CreateTopic | _CommitOffsets | _Truncate

TRUNCATE_STEP = 10_000
"""Records deleted per transaction: appends queued behind a truncation wait at most this."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class SqliteLog(LocalLog):
    """Use :meth:`open`; the constructor expects the directory already locked."""

    def __init__(self, path: Path, lock: IO[bytes]):
        super().__init__()
        self._path = path
        self._lock = lock
        self._reader = _connect(path)
        writer = _connect(path)
        writer.executescript(_SCHEMA)
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._write_loop, args=(writer,), name="sqlite-log-writer", daemon=True
        )

    @classmethod
    async def open(cls, directory: str | Path) -> SqliteLog:
        directory = Path(directory)
        lock = lock_directory(directory, "log.lock", "data directory", DataDirectoryInUse)
        log = cls(directory / "log.db", lock)
        log._load()
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
        while True:
            op = self._queue.get()
            if op is None:
                break
            group = [op]
            stop = False
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            try:
                conn.execute("BEGIN")
                for item in group:
                    self._apply(conn, item)
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._loop.call_soon_threadsafe(self._group_failed, group, e)
            else:
                self._loop.call_soon_threadsafe(self._group_durable, group)
            if stop:
                break
        conn.close()

    @staticmethod
    def _apply(conn: sqlite3.Connection, op: _Op) -> None:
        if isinstance(op, PendingAppend):
            conn.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
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
                    for i, r in enumerate(op.records)
                ],
            )
        elif isinstance(op, _CreateTopic):
            conn.execute("INSERT INTO topics VALUES (?, ?)", (op.topic, op.partitions))
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
            conn.executemany(
                "INSERT OR REPLACE INTO consumer_offsets VALUES (?, ?, ?, ?)",
                [(op.group, tp.topic, tp.partition, off) for tp, off in op.offsets.items()],
            )

    # --- back on the loop ----------------------------------------------------------------

    def _group_durable(self, group: list[_Op]) -> None:
        self._made_durable([op for op in group if isinstance(op, PendingAppend)])
        for op in group:
            if not isinstance(op, PendingAppend) and not op.future.done():
                op.future.set_result(None)

    def _group_failed(self, group: list[_Op], error: sqlite3.Error) -> None:
        failure = LogError(f"the embedded log at {self._path} failed to write: {error}")
        self._failed([op for op in group if isinstance(op, PendingAppend)], failure)
        for op in group:
            if not isinstance(op, PendingAppend) and not op.future.done():
                op.future.set_exception(failure)

    def _write(self, append: PendingAppend) -> None:
        self._queue.put(append)

    async def _create_topic(self, topic: str, partitions: int) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(_CreateTopic(topic, partitions, future))
        await future

    def _read_range(self, tp: TopicPartition, start: int, end: int) -> list[StoredRecord]:
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
            self._queue.put(_Truncate(tp, step, future))
            await future
            if step >= before:
                return
            step = min(before, step + TRUNCATE_STEP)

    async def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(_CommitOffsets(group, dict(offsets), future))
        await future

    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        rows = self._reader.execute(
            "SELECT partition, offset FROM consumer_offsets WHERE grp = ? AND topic = ?",
            (group, topic),
        )
        return dict(rows.fetchall())

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._reader.close()
        self._wake_consumers()
        unlock(self._lock)

    def __repr__(self) -> str:
        return f"SqliteLog({os.fspath(self._path)!r})"
