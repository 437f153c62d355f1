"""What the two embedded logs share: offsets assigned at call time, durable ends
tracked in memory, and consumers woken when records become durable.

A subclass only decides how records are made durable (:meth:`LocalLog._write`) and
read back (:meth:`LocalLog._read_range`); it reports durability through
:meth:`LocalLog._made_durable`, in append order, and failure through
:meth:`LocalLog._failed`. Once an append failed, none after it is written until
:meth:`LocalLog.reopen`, which hands out offsets again from the durable ends: the
failed appends left no record and no gap.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime.log.base import (
    Log,
    LogConsumer,
    LogError,
    Record,
    StoredRecord,
    TopicMismatchError,
    TopicPartition,
)


@dataclass(slots=True)
class PendingAppend:
    """Records waiting to become durable, with the future their appender holds."""

    tp: TopicPartition
    base_offset: int
    records: Sequence[Record]
    timestamp_ms: int
    future: asyncio.Future[list[int]]


class LocalLog(Log):
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._topics: dict[str, int] = {}
        self._next: dict[TopicPartition, int] = {}
        self._durable: dict[TopicPartition, int] = {}
        self._last_append: asyncio.Future[list[int]] | None = None
        self._wakeup: asyncio.Future[None] = self._loop.create_future()

    # --- for subclasses ----------------------------------------------------------------

    def _known_topic(self, topic: str, partitions: int, ends: Mapping[int, int]) -> None:
        self._topics[topic] = partitions
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            self._next[tp] = self._durable[tp] = ends.get(p, 0)

    @abc.abstractmethod
    async def _create_topic(self, topic: str, partitions: int) -> None: ...

    @abc.abstractmethod
    def _write(self, append: PendingAppend) -> None:
        """Make ``append`` durable, then call :meth:`_made_durable` on the loop."""

    @abc.abstractmethod
    def _read_range(self, tp: TopicPartition, start: int, end: int) -> list[StoredRecord]:
        """Records with ``start <= offset < end`` (all durable)."""

    def _made_durable(self, appends: Sequence[PendingAppend]) -> None:
        for a in appends:
            end = a.base_offset + len(a.records)
            if end > self._durable[a.tp]:
                self._durable[a.tp] = end
            if not a.future.done():
                a.future.set_result(list(range(a.base_offset, end)))
        self._wake_consumers()

    async def _resume_writing(self) -> None:
        """Return once every append made before the call is settled and the log can
        write again (:class:`LogError` if it cannot)."""

    def _failed(self, appends: Sequence[PendingAppend], error: LogError) -> None:
        """The log can no longer make records durable: fail these appends and every later one."""
        self._appends_failed(error)
        for a in appends:
            if not a.future.done():
                a.future.set_exception(error)

    def _wake_consumers(self) -> None:
        if not self._wakeup.done():
            self._wakeup.set_result(None)
        self._wakeup = self._loop.create_future()

    # --- Log --------------------------------------------------------------------------

    async def ensure_topic(self, topic: str, partitions: int) -> None:
        if partitions < 1:
            raise ValueError(f"topic {topic} needs at least one partition, not {partitions}")
        existing = self._topics.get(topic)
        if existing is None:
            await self._create_topic(topic, partitions)
            self._known_topic(topic, partitions, {})
        elif existing != partitions:
            raise TopicMismatchError(
                f"topic {topic} exists with {existing} partitions, not {partitions}"
            )

    def append(
        self, topic: str, partition: int, records: Sequence[Record]
    ) -> asyncio.Future[list[int]]:
        tp = self._tp(topic, partition)
        future: asyncio.Future[list[int]] = self._loop.create_future()
        if self._failure is not None:
            future.set_exception(self._failure)
            return future
        base = self._next[tp]
        self._next[tp] = base + len(records)
        timestamp_ms = int(time.time() * 1000)
        self._last_append = future
        self._write(PendingAppend(tp, base, records, timestamp_ms, future))
        return future

    async def reopen(self) -> None:
        if self._failure is None:
            return
        await self._resume_writing()
        # Every append before the failure is settled: the durable ends are final, and
        # the offsets of the failed appends are free again.
        self._next.update(self._durable)
        self._last_append = None
        self._failure = None

    async def flush(self) -> None:
        last = self._last_append
        if last is not None:
            await asyncio.shield(last)

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 1000
    ) -> list[StoredRecord]:
        tp = self._tp(topic, partition)
        end = min(self._durable[tp], max(offset, 0) + max_records)
        if offset >= end:
            return []
        return self._read_range(tp, max(offset, 0), end)

    async def end_offsets(self, topic: str) -> list[int]:
        return [self._durable[TopicPartition(topic, p)] for p in range(self.partitions(topic))]

    def consumer(self) -> LogConsumer:
        return LocalConsumer(self)


class LocalConsumer(LogConsumer):
    def __init__(self, log: LocalLog):
        self._log = log
        self._positions: dict[TopicPartition, int] = {}
        self._rotation = 0

    def assign(self, positions: Mapping[TopicPartition, int]) -> None:
        for tp in positions:
            self._log._tp(tp.topic, tp.partition)
        self._positions = dict(positions)

    def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    async def poll(
        self, max_wait: float, max_records: int = 1000
    ) -> dict[TopicPartition, list[StoredRecord]]:
        log = self._log
        deadline = log._loop.time() + max_wait
        while True:
            ready = [tp for tp, pos in self._positions.items() if log._durable[tp] > pos]
            if ready:
                return self._take(ready, max_records)
            remaining = deadline - log._loop.time()
            if remaining <= 0:
                return {}
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that lands as the wakeup completes, and a worker being
                # stopped for a rollback would poll on forever.
                async with asyncio.timeout(remaining):
                    await asyncio.shield(log._wakeup)
            except TimeoutError:
                return {}

    def _take(
        self, ready: list[TopicPartition], max_records: int
    ) -> dict[TopicPartition, list[StoredRecord]]:
        # Rotate the starting partition so a busy partition cannot starve the others.
        self._rotation = (self._rotation + 1) % len(ready)
        ready = ready[self._rotation :] + ready[: self._rotation]
        share = max(1, max_records // len(ready))
        out: dict[TopicPartition, list[StoredRecord]] = {}
        for tp in ready:
            start = self._positions[tp]
            end = min(self._log._durable[tp], start + share)
            records = self._log._read_range(tp, start, end)
            if records:
                out[tp] = records
                self._positions[tp] = records[-1].offset + 1
        return out

    async def close(self) -> None:
        self._positions = {}
