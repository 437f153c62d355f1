"""What the two embedded logs share: offsets assigned at call time, durable ends
tracked in memory, consumers woken when records become durable, records handed to an
early consumer before they are, and truncation.

A subclass only decides how records are made durable (:meth:`LocalLog._write`), read
back (:meth:`LocalLog._read_range`), dropped (:meth:`LocalLog._drop`) and how a topic
is created and deleted (:meth:`LocalLog._create_topic`, :meth:`LocalLog._delete_topic`); it reports
durability through :meth:`LocalLog._made_durable`, in append order, and failure through
:meth:`LocalLog._failed`. Once an append failed, none after it is written until
:meth:`LocalLog.reopen`, which hands out offsets again from the durable ends: the
failed appends left no record and no gap.

An early consumer (:meth:`LocalLog.early_consumer`: the worker's) is handed this
process's appends as they are made, before their write: the worker calls the function
while the log commits. Only what its predicate admits, in offset order, and nothing
once an append failed (every append not yet durable then fails too).

Retention (``runtime.retention``) drops the records of a partition below an offset
(:meth:`LocalLog.truncate`): the partition's *start*. Offsets are never reused: a
partition emptied by truncation keeps its end. Reading below the start reads from it.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import time
from collections.abc import Callable, Mapping, Sequence
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
    stored: list[StoredRecord] | None = None
    """Its records as read back (made once, by :func:`stored_records`)."""


def stored_records(append: PendingAppend) -> list[StoredRecord]:
    """The records of ``append`` as a reader gets them, at their offsets."""
    if append.stored is None:
        base, ts = append.base_offset, append.timestamp_ms
        append.stored = [
            StoredRecord(
                base + i,
                r.value,
                r.key,
                r.headers if type(r.headers) is tuple else tuple(r.headers),
                ts,
            )
            for i, r in enumerate(append.records)
        ]
    return append.stored


class LocalLog(Log):
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._topics: dict[str, int] = {}
        self._next: dict[TopicPartition, int] = {}
        self._durable: dict[TopicPartition, int] = {}
        self._start: dict[TopicPartition, int] = {}
        self._last_append: asyncio.Future[list[int]] | None = None
        self._wakeup: asyncio.Future[None] = self._loop.create_future()
        self._unsettled: dict[TopicPartition, collections.deque[PendingAppend]] = {}
        """Per partition, its appends not yet durable, in offset order."""
        self._early_consumers = 0

    # --- for subclasses ----------------------------------------------------------------

    def _known_topic(
        self,
        topic: str,
        partitions: int,
        ends: Mapping[int, int],
        starts: Mapping[int, int] | None = None,
    ) -> None:
        self._topics[topic] = partitions
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            start = (starts or {}).get(p, 0)
            self._start[tp] = start
            self._next[tp] = self._durable[tp] = max(ends.get(p, 0), start)

    @abc.abstractmethod
    async def _create_topic(self, topic: str, partitions: int) -> None: ...

    @abc.abstractmethod
    async def _delete_topic(self, topic: str, partitions: int) -> None:
        """Drop the topic and its records (durably)."""

    @abc.abstractmethod
    def _write(self, append: PendingAppend) -> None:
        """Make ``append`` durable, then call :meth:`_made_durable` on the loop."""

    @abc.abstractmethod
    def _read_range(self, tp: TopicPartition, start: int, end: int) -> list[StoredRecord]:
        """Records with ``start <= offset < end`` (all durable, none below the start)."""

    @abc.abstractmethod
    async def _drop(self, tp: TopicPartition, before: int) -> None:
        """Drop the records below ``before`` (durably: the start survives a reopen)."""

    def _first(self, tp: TopicPartition, position: int) -> int:
        """Where reading from ``position`` starts: at the partition's start if below it."""
        return max(position, self._start[tp])

    def _made_durable(self, appends: Sequence[PendingAppend]) -> None:
        for a in appends:
            end = a.base_offset + len(a.records)
            # A topic deleted since the append is no longer tracked.
            if a.tp in self._durable and end > self._durable[a.tp]:
                self._durable[a.tp] = end
            unsettled = self._unsettled.get(a.tp)
            if unsettled and unsettled[0] is a:
                unsettled.popleft()
            if not a.future.done():
                a.future.set_result(list(range(a.base_offset, end)))
        self._wake_consumers()

    async def _resume_writing(self) -> None:
        """Return once every append made before the call is settled and the log can
        write again (:class:`LogError` if it cannot)."""

    def _failed(self, appends: Sequence[PendingAppend], error: LogError) -> None:
        """The log can no longer make records durable: fail these appends and every later one."""
        self._appends_failed(error)
        self._unsettled.clear()  # none of them will be durable
        for a in appends:
            if not a.future.done():
                a.future.set_exception(error)

    def _wake_consumers(self) -> None:
        if not self._wakeup.done():
            self._wakeup.set_result(None)
        self._wakeup = self._loop.create_future()

    # --- Log --------------------------------------------------------------------------

    async def ensure_topic(
        self, topic: str, partitions: int, config: Mapping[str, str] | None = None
    ) -> None:
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

    async def delete_topic(self, topic: str) -> None:
        partitions = self._topics.pop(topic, None)
        if partitions is None:
            return
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            del self._next[tp], self._durable[tp], self._start[tp]
            self._unsettled.pop(tp, None)
        await self._delete_topic(topic, partitions)

    async def list_topics(self) -> set[str]:
        return set(self._topics)

    def _append(
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
        append = PendingAppend(tp, base, records, timestamp_ms, future)
        self._write(append)
        if self._early_consumers and not future.done():
            self._unsettled.setdefault(tp, collections.deque()).append(append)
            self._wake_consumers()
        return future

    async def reopen(self) -> None:
        if self._failure is None:
            return
        await self._resume_writing()
        # Every append before the failure is settled: the durable ends are final, and
        # the offsets of the failed appends are free again.
        self._next.update(self._durable)
        self._last_append = None
        self._unsettled.clear()
        self._failure = None

    async def flush(self) -> None:
        last = self._last_append
        if last is not None:
            await asyncio.shield(last)

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 1000
    ) -> list[StoredRecord]:
        tp = self._tp(topic, partition)
        offset = self._first(tp, offset)
        end = min(self._durable[tp], offset + max_records)
        if offset >= end:
            return []
        return self._read_range(tp, offset, end)

    async def end_offsets(self, topic: str) -> list[int]:
        return [self._durable[TopicPartition(topic, p)] for p in range(self.partitions(topic))]

    async def start_offsets(self, topic: str, at: str | int = "earliest") -> list[int]:
        """Per partition: its start (``"earliest"``), its end (``"latest"``), or the first
        record appended at or after a time in milliseconds (the end if there is none)."""
        tps = [TopicPartition(topic, p) for p in range(self.partitions(topic))]
        if at == "earliest":
            return [self._start[tp] for tp in tps]
        if at == "latest":
            return [self._durable[tp] for tp in tps]
        if isinstance(at, str):
            raise ValueError(f"a start position is earliest, latest or a time, not {at!r}")
        return [self._first_at(tp, at) for tp in tps]

    def _first_at(self, tp: TopicPartition, time_ms: int) -> int:
        # Append times follow offsets (taken in call order): a binary search of point reads.
        low, high = self._start[tp], self._durable[tp]
        while low < high:
            middle = (low + high) // 2
            (record,) = self._read_range(tp, middle, middle + 1)
            if record.timestamp_ms < time_ms:
                low = middle + 1
            else:
                high = middle
        return low

    async def truncate(self, topic: str, partition: int, before_offset: int) -> int:
        """Drop the partition's records below ``before_offset`` (at most up to its durable
        end); its new start. Offsets are never reused, and its end stays."""
        tp = self._tp(topic, partition)
        before = min(before_offset, self._durable[tp])
        if before <= self._start[tp]:
            return self._start[tp]
        self._start[tp] = before  # readers skip what is being dropped from now on
        await self._drop(tp, before)
        return before

    def consumer(self, *, dense: bool = True) -> LogConsumer:
        return LocalConsumer(self)

    def early_consumer(self, admits: Callable[[StoredRecord], bool]) -> LogConsumer:
        self._early_consumers += 1
        return LocalConsumer(self, admits)

    async def read_early(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_records: int,
        admits: Callable[[StoredRecord], bool],
    ) -> list[StoredRecord]:
        records = await self.read(topic, partition, offset, max_records)
        if len(records) < max_records:
            tp = self._tp(topic, partition)
            start = max(self._first(tp, offset), self._durable[tp])
            records = records + self._early(tp, start, max_records - len(records), admits)
        return records

    def unsettled(self) -> asyncio.Future[list[int]] | None:
        last = self._last_append
        return None if last is None or last.done() else last

    def _early(
        self, tp: TopicPartition, start: int, limit: int, admits: Callable[[StoredRecord], bool]
    ) -> list[StoredRecord]:
        """Up to ``limit`` records not yet durable from ``start`` on, in offset order, up to
        the first ``admits`` refuses; none once an append failed."""
        out: list[StoredRecord] = []
        if self._failure is not None:
            return out
        for append in self._unsettled.get(tp, ()):
            if append.base_offset + len(append.records) <= start:
                continue
            for record in stored_records(append):
                if record.offset < start:
                    continue
                # An append made before the first early consumer is not held here:
                # what follows it waits until it is durable (offsets without a gap).
                if record.offset != start + len(out) or len(out) >= limit or not admits(record):
                    return out
                out.append(record)
        return out


class LocalConsumer(LogConsumer):
    def __init__(self, log: LocalLog, admits: Callable[[StoredRecord], bool] | None = None):
        self._log = log
        self._positions: dict[TopicPartition, int] = {}
        self._rotation = 0
        self._admits = admits
        """Early records it may be handed (None: durable ones only)."""

    def assign(self, positions: Mapping[TopicPartition, int]) -> None:
        for tp in positions:
            self._log._tp(tp.topic, tp.partition)
        self._positions = dict(positions)

    def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def known_end(self, tp: TopicPartition) -> int | None:
        return self._log._durable.get(tp)

    async def poll(
        self, max_wait: float, max_records: int = 1000
    ) -> dict[TopicPartition, list[StoredRecord]]:
        log = self._log
        deadline = log._loop.time() + max_wait
        while True:
            ready = [
                tp
                for tp, pos in self._positions.items()
                if tp in log._durable
                and (
                    log._durable[tp] > log._first(tp, pos)
                    or self._early_from(tp, log._first(tp, pos), 1)
                )
            ]
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
            start = self._log._first(tp, self._positions[tp])
            end = min(self._log._durable[tp], start + share)
            records = self._log._read_range(tp, start, end) if start < end else []
            if len(records) < share:
                records = records + self._early_from(tp, max(start, end), share - len(records))
            if records:
                out[tp] = records
                self._positions[tp] = records[-1].offset + 1
        return out

    def _early_from(self, tp: TopicPartition, start: int, limit: int) -> list[StoredRecord]:
        if self._admits is None:
            return []
        return self._log._early(tp, start, limit, self._admits)

    async def close(self) -> None:
        self._positions = {}
        if self._admits is not None:
            self._admits = None
            self._log._early_consumers -= 1
