"""The partition checkpoint store: local snapshots of messages partitions, in the log.

What it owns: the bytes of each messages partition's local snapshot, written as records
of a **segment topic** ``<app>-checkpoints-<segment>`` (as many partitions as the
messages topic; partition p holds messages partition p's snapshots), and reading a
chain of them back. It runs on any :class:`~runtime.log.base.Log`: on Kafka, every
member of the application reaches it, so no component beyond the broker is needed.

A snapshot is either full (every address of the partition) or a delta (the addresses
changed since the previous snapshot of its chain). Its encoding (msgpack) is split into
chunks of at most ``chunk_bytes`` (records stay well below Kafka's default 1 MiB
limit), appended in one call, so they are contiguous; :meth:`PartitionStore.write`
answers their :class:`~runtime.cluster.locations.PartitionLocation`. Each chunk carries
a header (checkpoint, partition, chunk index and count, full or delta), so that a
reader checks it reads exactly what the location says.

Restoring reads only the locations of the chain it is given (a full snapshot, then the
deltas after it), record by record from their offsets: never a scan of a topic. Since
the Tansu test broker keeps every record in memory and walks all of a partition's
batches on every fetch, the caller starts a new segment with each full snapshot and
deletes the segments no retained checkpoint references
(:meth:`PartitionStore.delete_segments_below`): that bounds what a restore reads.

It never decides what a checkpoint is, when to write a full snapshot or which segment
to use: the members and the decision log do. It never interprets state rows or parts.

Errors: a location whose records are missing or are not the ones it names is
:class:`~runtime.errors.StoreDamaged`; a log that fails to write or read is a
:class:`~runtime.errors.StoreError` (retryable). A malformed chain (empty, not starting
with a full snapshot, mixing partitions, checkpoints not increasing) is a caller's bug:
``ValueError``.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from runtime.cluster.locations import PartitionLocation
from runtime.errors import LogError, StoreDamaged, StoreError, UnknownTopicError
from runtime.log.base import Log, Record, StoredRecord

__all__ = [
    "CHUNK_BYTES",
    "PartitionLocation",
    "PartitionSnapshot",
    "PartitionStore",
    "RestoredPartition",
]

logger = logging.getLogger(__name__)

CHUNK_BYTES = 512 * 1024
"""The largest record value: below the 1 MiB ``max.message.bytes`` Kafka topics have
by default, with room for the record's framing and header."""

CHUNK_HEADER = "statefun-snapshot-chunk"
"""The record header naming what a chunk is part of (see :func:`_chunk_header`)."""

READ_RECORDS = 32
"""Chunks asked for per read: a Kafka read must end within the log's request timeout,
and 16 MiB takes ~0.2 s on the test broker (``python -m bench.restore``)."""

SEGMENT_CONFIG = {"retention.ms": "-1"}
"""Kafka must never expire a checkpoint: segments are deleted whole, by the store."""

Row = tuple[bytes, bytes | None]
"""A key and its value; None deletes the key (as ``StateStore.take_changes`` yields)."""


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    """What a member writes for one messages partition at checkpoint ``checkpoint``."""

    partition: int
    checkpoint: int
    full: bool
    """Every address of the partition, or only those changed since the chain's last
    committed snapshot (a delta)."""
    state: list[Row]
    """State rows (address key, encoded state; None: the address has no state)."""
    keys: list[Row]
    """Idempotency-key rows, in the same shape."""
    parts: dict[str, bytes]
    """Opaque per participant (the worker's pending inputs, timers and positions of this
    partition, egress items, ...); a restore returns the newest snapshot's."""


@dataclass(frozen=True, slots=True)
class RestoredPartition:
    """A partition as of the last snapshot of a chain."""

    partition: int
    checkpoint: int
    state: dict[bytes, bytes]
    keys: dict[bytes, bytes]
    parts: dict[str, bytes]
    bytes_read: int
    """The chunks' bytes read from the log."""


def _pack(data: Any) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def _chunk_header(location: PartitionLocation, index: int) -> bytes:
    return _pack((location.checkpoint, location.partition, index, location.count, location.full))


class PartitionStore:
    """The snapshots of application ``app_id``'s messages partitions (``partitions`` of
    them) in segment topics of ``log``."""

    def __init__(
        self, log: Log, app_id: str, partitions: int, *, chunk_bytes: int = CHUNK_BYTES
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {partitions}")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
        self._log = log
        self._prefix = f"{app_id}-checkpoints-"
        self._segment_name = re.compile(re.escape(self._prefix) + r"(0|[1-9][0-9]*)")
        self._partitions = partitions
        self._chunk_bytes = chunk_bytes
        self._used: set[int] = set()
        """Segments this process wrote to or read and has not let go of."""

    def segment_topic(self, segment: int) -> str:
        if segment < 0:
            raise ValueError(f"a segment is a number from 0 on, not {segment}")
        return f"{self._prefix}{segment}"

    async def ensure_segment(self, segment: int) -> str:
        """Create the segment's topic if missing (or open one another member created);
        its name."""
        topic = self.segment_topic(segment)
        await self._use(segment)  # first: creating a topic makes Kafka clients ask for metadata
        try:
            await self._log.ensure_topic(topic, self._partitions, SEGMENT_CONFIG)
        except LogError as e:
            raise StoreError(f"creating checkpoint segment {topic}: {e}") from e
        return topic

    async def _use(self, segment: int) -> None:
        """Note that this process uses the segment. A new newest one lets the log forget
        every segment this process used before the one just older (which a checkpoint
        still being written may use): whichever member deletes them, this process's
        clients no longer name them to the broker."""
        newest = max(self._used, default=-1)
        self._used.add(segment)
        if segment <= newest:
            return
        for old in sorted(s for s in self._used if s < segment - 1):
            self._used.discard(old)
            try:
                await self._log.forget_topic(self.segment_topic(old))
            except LogError as e:
                logger.warning("letting go of checkpoint segment %d failed: %s", old, e)

    async def segments(self) -> list[int]:
        """The segments whose topics exist, in order (whoever created them)."""
        try:
            names = await self._log.list_topics()
        except LogError as e:
            raise StoreError(f"listing checkpoint segments: {e}") from e
        return sorted(
            int(match[1]) for name in names if (match := self._segment_name.fullmatch(name))
        )

    async def delete_segments_below(self, segment: int) -> list[int]:
        """Delete the topic of every segment below ``segment`` (whoever created it); the
        segments deleted."""
        doomed = [s for s in await self.segments() if s < segment]
        for s in doomed:
            try:
                await self._log.delete_topic(self.segment_topic(s))
            except LogError as e:
                raise StoreError(f"deleting checkpoint segment {self.segment_topic(s)}: {e}") from e
        if doomed:
            logger.info("deleted checkpoint segments %s", ", ".join(map(str, doomed)))
        return doomed

    # --- writing ---------------------------------------------------------------------------

    async def write(self, segment: int, snapshot: PartitionSnapshot) -> PartitionLocation:
        """Append ``snapshot`` to its partition of the segment's topic (created if
        missing); where it lies once durable."""
        if not 0 <= snapshot.partition < self._partitions:
            raise ValueError(f"no partition {snapshot.partition}: the store has {self._partitions}")
        topic = await self.ensure_segment(segment)
        payload = _pack((snapshot.state, snapshot.keys, snapshot.parts))
        size = self._chunk_bytes
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
        planned = PartitionLocation(
            topic, snapshot.partition, 0, len(chunks), snapshot.checkpoint, snapshot.full
        )
        records = [
            Record(chunk, headers=((CHUNK_HEADER, _chunk_header(planned, i)),))
            for i, chunk in enumerate(chunks)
        ]
        try:
            offsets = await self._log.append(topic, snapshot.partition, records)
        except LogError as e:
            raise StoreError(
                f"writing the snapshot of partition {snapshot.partition} at checkpoint"
                f" {snapshot.checkpoint} to {topic}: {e}"
            ) from e
        first = offsets[0]
        if offsets != list(range(first, first + len(records))):
            # Another writer's records landed in between (a former owner of the
            # partition still writing): a reader could not find these chunks together.
            raise StoreError(
                f"the snapshot of partition {snapshot.partition} at checkpoint"
                f" {snapshot.checkpoint} was interleaved with other records in {topic}"
                f" (offsets {offsets[0]}..{offsets[-1]})"
            )
        return PartitionLocation(
            topic, snapshot.partition, first, len(chunks), snapshot.checkpoint, snapshot.full
        )

    # --- reading ---------------------------------------------------------------------------

    async def read(self, chain: Sequence[PartitionLocation]) -> RestoredPartition:
        """The partition as of the chain's last snapshot: the full snapshot ``chain[0]``,
        then the deltas after it in order (later rows win; a None value deletes). The
        parts are the last snapshot's."""
        _check_chain(chain)
        for location in chain:  # its segments are let go of with the others (_use)
            if (match := self._segment_name.fullmatch(location.topic)) is not None:
                self._used.add(int(match[1]))
        state: dict[bytes, bytes] = {}
        keys: dict[bytes, bytes] = {}
        parts: dict[str, bytes] = {}
        bytes_read = 0
        for run in _adjacent_runs(chain):
            records = await self._read_run(run)
            for location in run:
                payload = _payload(location, records[: location.count])
                del records[: location.count]
                bytes_read += len(payload)
                try:
                    state_rows, key_rows, parts = msgpack.unpackb(payload, raw=False)
                    _fold(state, state_rows)
                    _fold(keys, key_rows)
                except (ValueError, TypeError) as e:  # msgpack's errors are ValueErrors
                    raise _damaged(location, f"its records do not decode: {e}") from e
        return RestoredPartition(
            chain[-1].partition, chain[-1].checkpoint, state, keys, parts, bytes_read
        )

    async def _read_run(self, run: Sequence[PartitionLocation]) -> list[StoredRecord]:
        """The records of adjacent locations, read together (one round trip to the broker
        instead of one per location); fewer if the log holds fewer."""
        first = run[0]
        await self._open(first)
        total = sum(location.count for location in run)
        records: list[StoredRecord] = []
        try:
            while len(records) < total:
                got = await self._log.read(
                    first.topic,
                    first.partition,
                    first.offset + len(records),
                    min(total - len(records), READ_RECORDS),
                )
                if not got:
                    break
                records += got
        except LogError as e:
            raise StoreError(f"reading {_where(first)}: {e}") from e
        return records

    async def _open(self, location: PartitionLocation) -> None:
        """Make the location's segment usable by this log (another member may have created
        it); :class:`StoreDamaged` if it no longer exists."""
        try:
            self._log.partitions(location.topic)
            return
        except UnknownTopicError:
            pass
        try:
            exists = location.topic in await self._log.list_topics()
            if exists:
                await self._log.ensure_topic(location.topic, self._partitions, SEGMENT_CONFIG)
        except LogError as e:
            raise StoreError(f"opening checkpoint segment {location.topic}: {e}") from e
        if not exists:
            raise _damaged(location, f"its segment topic {location.topic} does not exist")


def _check_chain(chain: Sequence[PartitionLocation]) -> None:
    if not chain:
        raise ValueError("an empty chain: a restore needs at least a full snapshot")
    if not chain[0].full:
        raise ValueError(f"the chain starts with a delta ({chain[0]}), not a full snapshot")
    for before, after in itertools.pairwise(chain):
        if after.full:
            raise ValueError(f"a full snapshot after the chain's first: {after}")
        if after.partition != before.partition:
            raise ValueError(f"the chain mixes partitions {before.partition} and {after.partition}")
        if after.checkpoint <= before.checkpoint:
            raise ValueError(
                f"the chain's checkpoints do not increase: {before.checkpoint}, {after.checkpoint}"
            )


def _adjacent_runs(chain: Sequence[PartitionLocation]) -> list[list[PartitionLocation]]:
    """The chain cut into runs of locations that follow each other in one partition."""
    runs = [[chain[0]]]
    for location in chain[1:]:
        last = runs[-1][-1]
        if location.topic == last.topic and location.offset == last.offset + last.count:
            runs[-1].append(location)
        else:
            runs.append([location])
    return runs


def _payload(location: PartitionLocation, records: Sequence[StoredRecord]) -> bytes:
    """The snapshot's bytes from its chunks' records, once checked to be exactly those
    the location names (:class:`StoreDamaged` otherwise)."""
    if len(records) < location.count:
        raise _damaged(location, f"only {len(records)} of its records are in the log")
    for index, record in enumerate(records):
        expected = location.offset + index
        if record.offset != expected:
            raise _damaged(location, f"offset {expected} is gone (read {record.offset})")
        header = dict(record.headers).get(CHUNK_HEADER)
        if header != _chunk_header(location, index):
            raise _damaged(
                location,
                f"the record at offset {expected} is not its chunk {index}"
                f" (header {_describe(header)})",
            )
    return b"".join(r.value for r in records)


def _fold(into: dict[bytes, bytes], rows: list[list[Any]]) -> None:
    for key, value in rows:
        if value is None:
            into.pop(key, None)
        else:
            into[key] = value


def _where(location: PartitionLocation) -> str:
    kind = "full snapshot" if location.full else "delta"
    return (
        f"the {kind} of partition {location.partition} at checkpoint {location.checkpoint}"
        f" ({location.count} records from {location.topic}[{location.partition}]"
        f"@{location.offset})"
    )


def _damaged(location: PartitionLocation, problem: str) -> StoreDamaged:
    return StoreDamaged(
        f"the partition checkpoint store cannot restore {_where(location)}: {problem}."
        " The checkpoint that names it cannot be restored (its segment topic was deleted"
        " or written by someone else): restore an earlier retained checkpoint, or start"
        " the application over (--start-over)"
    )


def _describe(header: bytes | None) -> str:
    if header is None:
        return "missing"
    try:
        checkpoint, partition, index, count, full = msgpack.unpackb(header)
    except (ValueError, TypeError):
        return f"unreadable: {header[:32]!r}"
    kind = "full" if full else "delta"
    return f"checkpoint {checkpoint}, partition {partition}, chunk {index} of {count}, {kind}"
