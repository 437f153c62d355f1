"""The log interface: partitioned topics of offset-addressed records.

Everything durable in the runtime goes through a :class:`Log`: the messages between
functions, the ingress, the embedded egress and the consumer positions. Two families
implement it: the embedded logs (``runtime.log.memory``, ``runtime.log.sqlite``) and
Kafka. A log never interprets record contents.

Ordering and durability contract:

* :meth:`Log.append` takes its place in the partition when it is *called*, so appends
  made one after another land in that order even if nobody awaits them in between;
  the future it returns resolves with the offsets once the records are durable.
* Readers (:meth:`Log.read`, :class:`LogConsumer`) see only durable records, but for
  one: a consumer made with :meth:`Log.early_consumer` may be handed records this
  process appended before they are durable (the embedded logs do), and then lets
  nothing derived from them out before :meth:`Log.unsettled` says they are.

Failure contract:

* A failed append fails its future with :class:`LogError`, and every append after it
  fails too, at once, until :meth:`Log.reopen`: a later record would land after a gap,
  out of call order. So a failed append is never retried in place; the runtime ends
  the generation, and the next one reopens the log before it reads or writes.
* The log tells the listener given to :meth:`Log.on_failure` once, when it stops
  taking appends.

Every append goes through :meth:`Log.append`, which hands it to the implementation
(:meth:`Log._append`) and, if one is set (:meth:`Log.observe_appends`), to an observer
(the runtime's metrics time each append until it is durable).
* :meth:`Log.reopen` makes the log take appends again, or raises :class:`LogError` if
  it still cannot. What happened to the failed appends depends on the log: the
  embedded logs wrote none of them (their offsets are free again); on Kafka, a record
  whose acknowledgement never came may have landed anyway (see ``runtime.log.kafka``).
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from runtime.errors import LogError, TopicMismatchError, UnknownTopicError

__all__ = [
    "Log",
    "LogConsumer",
    "LogError",
    "Record",
    "StoredRecord",
    "TopicMismatchError",
    "TopicPartition",
    "UnknownTopicError",
]

AppendObserver = Callable[[str, float, "asyncio.Future[list[int]]"], None]
"""Sees every append: its topic, when it was asked (``time.perf_counter()``) and its future."""


class TopicPartition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True, slots=True)
class Record:
    """A record to append."""

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record read back, with its place in the partition and its append time."""

    offset: int
    value: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


class LogConsumer(abc.ABC):
    """Reads a set of partitions from given positions, waiting for new records."""

    @abc.abstractmethod
    def assign(self, positions: Mapping[TopicPartition, int]) -> None:
        """Read exactly these partitions, each from its given offset."""

    @abc.abstractmethod
    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record :meth:`poll` returns for ``tp``."""

    @abc.abstractmethod
    def known_end(self, tp: TopicPartition) -> int | None:
        """The end offset of ``tp`` as this consumer last learned it, without asking anyone
        (None: not known yet)."""

    @abc.abstractmethod
    async def poll(
        self, max_wait: float, max_records: int = 1000
    ) -> dict[TopicPartition, list[StoredRecord]]:
        """Records past the positions (advancing them), or ``{}`` after ``max_wait`` seconds."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Log(abc.ABC):
    """A set of topics, each with a fixed number of partitions.

    An implementation keeps the partition counts of the topics it knows in ``_topics``,
    and reports a failed append with :meth:`_appends_failed`.
    """

    _topics: dict[str, int]
    _failure: LogError | None = None
    _failure_listener: Callable[[LogError], None] | None = None
    _append_observer: AppendObserver | None = None

    @property
    def failure(self) -> LogError | None:
        """Why appends fail: the first failed append's error, until :meth:`reopen`."""
        return self._failure

    def on_failure(self, listener: Callable[[LogError], None]) -> None:
        """Call ``listener`` on the event loop when an append fails and the log stops
        taking appends (once per failure: again only after a :meth:`reopen`)."""
        self._failure_listener = listener

    def _appends_failed(self, error: LogError) -> None:
        """An append failed: from now on every append fails, until :meth:`reopen`."""
        if self._failure is None:
            self._failure = error
            if self._failure_listener is not None:
                self._failure_listener(error)

    @abc.abstractmethod
    async def reopen(self) -> None:
        """Take appends again after a failed one; nothing to do if none failed. Raises
        :class:`LogError` if the log still cannot make records durable."""

    @abc.abstractmethod
    async def ensure_topic(
        self, topic: str, partitions: int, config: Mapping[str, str] | None = None
    ) -> None:
        """Create ``topic`` if missing; raise :class:`TopicMismatchError` if it exists with
        another partition count. ``config``: topic settings a log that keeps them applies
        when it creates the topic (Kafka's ``retention.ms``, ...); the embedded logs
        have none (``runtime.retention`` truncates them)."""

    @abc.abstractmethod
    async def delete_topic(self, topic: str) -> None:
        """Delete ``topic`` and every record in it; nothing to do if it does not exist.
        Afterwards the log no longer knows the topic (:class:`UnknownTopicError`), and a
        consumer assigned to it reads nothing more from it."""

    async def forget_topic(self, topic: str) -> None:
        """This process is done with ``topic`` for now (another may delete it): a log
        whose clients name every topic they know to the broker (Kafka's, in their
        metadata requests; a broker that auto-creates topics would bring a deleted one
        back) lets it go. Appends and reads of the topic work as before. The embedded
        logs have nothing to let go."""
        del topic  # nothing to let go

    @abc.abstractmethod
    async def list_topics(self) -> set[str]:
        """The names of every topic that exists, including those this log did not create
        or open (another process's)."""

    def partitions(self, topic: str) -> int:
        """The partition count of a known topic (:class:`UnknownTopicError` otherwise)."""
        try:
            return self._topics[topic]
        except KeyError:
            raise UnknownTopicError(f"unknown topic {topic}") from None

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        count = self.partitions(topic)
        if not 0 <= partition < count:
            raise UnknownTopicError(f"topic {topic} has no partition {partition} (it has {count})")
        return TopicPartition(topic, partition)

    def sole_writer(self, alone: bool) -> None:
        """Whether this process is now the only writer of the application's topics: a
        log may then look less often for records appended by others. No effect here."""
        return  # a log that never looks for records of others has nothing to change

    def observe_appends(self, observer: AppendObserver) -> None:
        """Show every append from now on to ``observer``."""
        self._append_observer = observer

    def append(
        self, topic: str, partition: int, records: Sequence[Record]
    ) -> asyncio.Future[list[int]]:
        """Append in call order; the future gives the offsets once the records are durable."""
        observer = self._append_observer
        if observer is None:
            return self._append(topic, partition, records)
        asked = time.perf_counter()
        future = self._append(topic, partition, records)
        observer(topic, asked, future)
        return future

    @abc.abstractmethod
    def _append(
        self, topic: str, partition: int, records: Sequence[Record]
    ) -> asyncio.Future[list[int]]:
        """:meth:`append`, as the implementation does it."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Return once everything appended before the call is durable."""

    @abc.abstractmethod
    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 1000
    ) -> list[StoredRecord]:
        """Durable records from ``offset`` on, at most ``max_records``, without waiting."""

    @abc.abstractmethod
    async def end_offsets(self, topic: str) -> list[int]:
        """Per partition, the offset the next durable record will have."""

    @abc.abstractmethod
    async def start_offsets(self, topic: str, at: str | int = "earliest") -> list[int]:
        """Per partition, where reading starts: ``"earliest"`` (the first record retention
        kept), ``"latest"`` (the end), or the first record appended at or after a time in
        milliseconds (the end if there is none)."""

    @abc.abstractmethod
    def consumer(self, *, dense: bool = True) -> LogConsumer:
        """A consumer of this log. ``dense``: the topics it reads have no gaps in their
        offsets (only this application's plain appends write them: no transactions, no
        compaction), so a record past a missing one is the broker's race, never a gap:
        the missing ones are read until they come. False for topics others write: a gap
        found again when read again is taken as the topic's own."""

    def early_consumer(self, admits: Callable[[StoredRecord], bool]) -> LogConsumer:
        """A consumer of topics only this application writes that may also be handed the
        records this process appended and that are not durable yet, in offset order, up
        to the first that ``admits`` refuses (which waits until it is durable): the
        reader overlaps its work with the log's write. A record handed over early may
        still fail to become durable: the log then fails (:meth:`on_failure`), and its
        reader must roll back what it did with it, and let nothing of it out before
        :meth:`unsettled` is settled. A log that hands out only durable records (Kafka:
        what a broker returns is acknowledged) gives a plain consumer."""
        del admits  # every record it hands out is durable
        return self.consumer()

    async def read_early(
        self,
        topic: str,
        partition: int,
        offset: int,
        max_records: int,
        admits: Callable[[StoredRecord], bool],
    ) -> list[StoredRecord]:
        """:meth:`read`, and past the durable records what an :meth:`early_consumer` with
        ``admits`` would be handed: a reader that reads early reads records again as it
        read them first."""
        del admits  # every record it reads is durable
        return await self.read(topic, partition, offset, max_records)

    def unsettled(self) -> asyncio.Future[list[int]] | None:
        """The newest append that is not durable yet, or None: once it settles, every
        record handed out early so far is durable (or the log failed). None from a log
        that hands out only durable records."""
        return None

    @abc.abstractmethod
    async def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Durably record a consumer group's positions."""

    @abc.abstractmethod
    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """A consumer group's recorded positions in ``topic``, by partition."""

    @abc.abstractmethod
    async def close(self) -> None: ...
