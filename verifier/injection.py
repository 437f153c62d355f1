"""Fault injection through the runtime's seams: a full disk under the log and under the
checkpoint store, switched on and off from a test or from outside the process.

A full disk needs privileges to cause for real; these injectors fail the writes the
way one does, at the seams the runtime opens (``runtime.app.open_log``,
``runtime.app.open_store``, ``Runtime.open(config, log=..., store=...)``):

* :class:`FaultyLog` wraps any :class:`~runtime.log.Log`. While its switch is on, an
  append fails with the error the embedded log gives on a full disk (a
  :class:`~runtime.errors.LogError` caused by ``sqlite3.OperationalError("database or
  disk is full")``), and the wrapper then behaves as every log does after a failed
  append: it refuses appends until :meth:`FaultyLog.reopen`, which fails while the
  switch is still on (as the embedded log's probe write would). Reads go on.
* :func:`fail_store_writes` makes the checkpoint store's SQLite statements that write
  fail with that same ``sqlite3.OperationalError`` while the switch is on, so the
  store's own error handling runs (it raises :class:`~runtime.errors.StoreError`).

A :class:`FaultSwitch` is flipped in code, or follows a file with :func:`follow_file`
(the fault is on while the file exists), which is how ``python -m
verifier.faulty_runtime`` takes faults from outside.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime.checkpoints.store import CheckpointStore
from runtime.errors import LogError
from runtime.log import Log, LogConsumer, Record, StoredRecord, TopicPartition

log = logging.getLogger(__name__)

DISK_FULL = "database or disk is full"
"""What SQLite says when the disk is full (SQLITE_FULL)."""


class FaultSwitch:
    """Whether a fault is on; ``name`` says which, in log lines."""

    def __init__(self, name: str = "disk full", *, on: bool = False) -> None:
        self.name = name
        self.on = on

    def set(self, on: bool) -> None:
        if on != self.on:
            log.warning("fault injection: %s %s", self.name, "on" if on else "off")
        self.on = on


async def follow_file(switches: Sequence[FaultSwitch], path: Path, interval: float = 0.1) -> None:
    """Keep ``switches`` on while ``path`` exists, checking every ``interval`` seconds
    (runs until cancelled)."""
    while True:
        exists = await asyncio.to_thread(path.exists)
        for switch in switches:
            switch.set(exists)
        await asyncio.sleep(interval)


def disk_full_error(where: str) -> LogError:
    """The error a log gives when its disk is full."""
    cause = sqlite3.OperationalError(DISK_FULL)
    error = LogError(f"{where} failed to write: {cause}")
    error.__cause__ = cause
    return error


class FaultyLog(Log):
    """A log whose appends fail as on a full disk while ``disk_full`` is on."""

    def __init__(self, inner: Log, disk_full: FaultSwitch) -> None:
        self._inner = inner
        self._switch = disk_full
        self._failure = None
        inner.on_failure(self._appends_failed)

    def partitions(self, topic: str) -> int:
        return self._inner.partitions(topic)

    @property
    def inner(self) -> Log:
        return self._inner

    def _refused(self) -> LogError | None:
        if self._failure is None and self._switch.on:
            self._appends_failed(disk_full_error(repr(self._inner)))
        return self._failure

    async def ensure_topic(
        self, topic: str, partitions: int, config: Mapping[str, str] | None = None
    ) -> None:
        await self._inner.ensure_topic(topic, partitions, config)

    async def delete_topic(self, topic: str) -> None:
        await self._inner.delete_topic(topic)

    async def forget_topic(self, topic: str) -> None:
        await self._inner.forget_topic(topic)

    async def list_topics(self) -> set[str]:
        return await self._inner.list_topics()

    def _append(
        self, topic: str, partition: int, records: Sequence[Record]
    ) -> asyncio.Future[list[int]]:
        self._tp(topic, partition)
        failure = self._refused()
        if failure is None:
            return self._inner.append(topic, partition, records)
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        future.set_exception(failure)
        return future

    async def flush(self) -> None:
        if self._failure is not None:
            raise self._failure
        await self._inner.flush()

    async def reopen(self) -> None:
        if self._failure is None:
            return
        if self._switch.on:  # the probe write of a reopen fails as the appends did
            raise disk_full_error(repr(self._inner))
        await self._inner.reopen()
        self._failure = None

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 1000
    ) -> list[StoredRecord]:
        return await self._inner.read(topic, partition, offset, max_records)

    async def end_offsets(self, topic: str) -> list[int]:
        return await self._inner.end_offsets(topic)

    async def start_offsets(self, topic: str, at: str | int = "earliest") -> list[int]:
        return await self._inner.start_offsets(topic, at)

    def consumer(self, *, dense: bool = True) -> LogConsumer:
        return self._inner.consumer(dense=dense)

    async def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        if self._switch.on:
            raise disk_full_error(repr(self._inner))
        await self._inner.commit_offsets(group, offsets)

    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        return await self._inner.committed_offsets(group, topic)

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:
        return f"FaultyLog({self._inner!r})"


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


class _FullDiskConnection:
    """A SQLite connection whose writing statements fail while the switch is on."""

    def __init__(self, inner: sqlite3.Connection, disk_full: FaultSwitch) -> None:
        self._inner = inner
        self._switch = disk_full

    def _check(self, sql: str) -> None:
        if self._switch.on and sql.lstrip().upper().startswith(_WRITES):
            raise sqlite3.OperationalError(DISK_FULL)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self._inner.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self._inner.executemany(sql, *args)

    def executescript(self, sql: str) -> sqlite3.Cursor:
        self._check(sql)
        return self._inner.executescript(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def fail_store_writes(store: CheckpointStore, disk_full: FaultSwitch) -> CheckpointStore:
    """Make ``store``'s writes fail as on a full disk while ``disk_full`` is on (its
    reads go on); returns the store. The store keeps one SQLite connection, used on its
    own thread; this swaps in a wrapper of it."""
    store._db = _FullDiskConnection(store._db, disk_full)  # type: ignore[assignment]
    return store
