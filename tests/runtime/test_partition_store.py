"""The partition checkpoint store writes a partition's snapshots into segment topics and
restores a chain of them exactly, reading only the chain's records; on the in-memory
log, and on a Kafka broker."""

from __future__ import annotations

import asyncio
import os
from asyncio import Future
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

import msgpack
import pytest
from support import CountingLog

from runtime.cluster import partition_store
from runtime.cluster.locations import PartitionLocation
from runtime.cluster.partition_store import (
    CHUNK_HEADER,
    PartitionSnapshot,
    PartitionStore,
)
from runtime.errors import LogError, StoreDamaged, StoreError
from runtime.log.base import Log, Record
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog

pytestmark = pytest.mark.anyio

PARTITIONS = 3


def snapshot(
    checkpoint: int,
    state: dict[bytes, bytes | None],
    *,
    full: bool = False,
    partition: int = 1,
    keys: dict[bytes, bytes | None] | None = None,
    parts: dict[str, bytes] | None = None,
) -> PartitionSnapshot:
    return PartitionSnapshot(
        partition,
        checkpoint,
        full,
        list(state.items()),
        list((keys or {}).items()),
        parts if parts is not None else {"worker": f"worker@{checkpoint}".encode()},
    )


@pytest.fixture
async def log() -> AsyncIterator[CountingLog]:
    opened = CountingLog()
    yield opened
    await opened.close()


@pytest.fixture
def store(log: Log) -> PartitionStore:
    return PartitionStore(log, "app", PARTITIONS)


async def test_a_full_snapshot_round_trips(store: PartitionStore) -> None:
    written = snapshot(
        4,
        {b"a": b"1", b"b": b"2"},
        full=True,
        keys={b"k1": b"answer"},
        parts={"worker": b"w", "egress": b"e"},
    )
    location = await store.write(0, written)
    assert location == PartitionLocation("app-checkpoints-0", 1, 0, 1, 4, True)
    restored = await store.read([location])
    assert restored.partition == 1
    assert restored.checkpoint == 4
    assert restored.state == {b"a": b"1", b"b": b"2"}
    assert restored.keys == {b"k1": b"answer"}
    assert restored.parts == {"worker": b"w", "egress": b"e"}
    assert restored.bytes_read > 0


async def test_deltas_fold_over_the_full_snapshot_in_order(
    store: PartitionStore, log: CountingLog
) -> None:
    chain = [
        await store.write(0, snapshot(1, {b"a": b"1", b"b": b"1", b"c": b"1"}, full=True)),
        await store.write(0, snapshot(2, {b"a": b"2", b"b": None}, keys={b"k": b"v"})),
    ]
    # Snapshots outside the chain: an abandoned checkpoint's (its changes are written
    # again with the next one), and another partition's.
    await store.write(0, snapshot(3, {b"a": b"abandoned"}))
    await store.write(0, snapshot(2, {b"x": b"x"}, full=True, partition=2))
    chain.append(await store.write(0, snapshot(4, {b"b": b"4", b"d": b"4"}, keys={b"k": None})))
    await store.write(0, snapshot(5, {b"a": b"not committed"}))
    log.records_read = 0
    restored = await store.read(chain)
    assert restored.state == {b"a": b"2", b"b": b"4", b"c": b"1", b"d": b"4"}
    assert restored.keys == {}
    assert restored.parts == {"worker": b"worker@4"}  # the last snapshot's
    assert restored.checkpoint == 4
    assert log.records_read == 3  # one chunk per snapshot of the chain, nothing else
    prefix = await store.read(chain[:2])
    assert prefix.state == {b"a": b"2", b"c": b"1"}
    assert prefix.keys == {b"k": b"v"}


async def test_a_large_state_is_chunked_and_restored_whole(
    log: CountingLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partition_store, "READ_RECORDS", 3)  # several reads
    store = PartitionStore(log, "app", PARTITIONS, chunk_bytes=64 * 1024)
    state: dict[bytes, bytes | None] = {
        f"ns/type/{i}".encode(): os.urandom(100) for i in range(5_000)
    }
    location = await store.write(2, snapshot(7, state, full=True, partition=0))
    assert location.count > 5
    records = await log.read(location.topic, 0, location.offset, location.count)
    assert all(len(r.value) <= 64 * 1024 for r in records)
    log.records_read = 0
    restored = await store.read([location])
    assert restored.state == state
    assert restored.bytes_read == sum(len(r.value) for r in records)
    assert log.records_read == location.count


async def test_a_location_that_names_other_records_is_damaged(
    store: PartitionStore, log: CountingLog
) -> None:
    first = await store.write(0, snapshot(1, {b"a": b"1"}, full=True))
    second = await store.write(0, snapshot(2, {b"a": b"2"}))
    with pytest.raises(StoreDamaged, match=r"offset 1 is not its chunk 0 \(header checkpoint 2"):
        await store.read([replace(first, offset=1)])
    with pytest.raises(StoreDamaged, match="not its chunk 0"):
        await store.read([replace(first, checkpoint=9)])
    with pytest.raises(StoreDamaged, match="only 1 of its records are in the log"):
        await store.read([first, replace(second, count=2)])
    with pytest.raises(StoreDamaged, match="only 0 of its records"):
        await store.read([replace(first, offset=10)])
    # A record that is no chunk at all (no header).
    await log.append(first.topic, 1, [Record(b"stray")])
    with pytest.raises(StoreDamaged, match="header missing"):
        await store.read([replace(first, offset=2)])
    # Chunks whose bytes do not decode.
    await log.append(
        first.topic,
        1,
        [Record(b"\xc1", headers=((CHUNK_HEADER, msgpack.packb((5, 1, 0, 1, True))),))],
    )
    with pytest.raises(StoreDamaged, match="do not decode"):
        await store.read([PartitionLocation(first.topic, 1, 3, 1, 5, True)])


async def test_malformed_chains_are_refused(store: PartitionStore) -> None:
    full = await store.write(0, snapshot(1, {b"a": b"1"}, full=True))
    delta = await store.write(0, snapshot(2, {b"a": b"2"}))
    with pytest.raises(ValueError, match="empty chain"):
        await store.read([])
    with pytest.raises(ValueError, match="starts with a delta"):
        await store.read([delta])
    with pytest.raises(ValueError, match="do not increase"):
        await store.read([full, delta, delta])
    with pytest.raises(ValueError, match="full snapshot after"):
        await store.read([full, full])


async def test_segments_below_one_are_deleted_and_their_locations_then_fail(
    store: PartitionStore, log: CountingLog
) -> None:
    old = await store.write(0, snapshot(1, {b"a": b"1"}, full=True))
    await store.write(1, snapshot(5, {b"a": b"5"}, full=True))
    current = await store.write(3, snapshot(9, {b"a": b"9"}, full=True))
    await log.ensure_topic("app-checkpoints-x", 1)  # not a segment
    await log.ensure_topic("other-checkpoints-0", 1)  # another application's
    assert await store.segments() == [0, 1, 3]
    assert await store.delete_segments_below(3) == [0, 1]
    assert await store.segments() == [3]
    assert await log.list_topics() == {
        "app-checkpoints-3",
        "app-checkpoints-x",
        "other-checkpoints-0",
    }
    assert await store.delete_segments_below(3) == []
    assert (await store.read([current])).state == {b"a": b"9"}
    with pytest.raises(StoreDamaged, match="segment topic app-checkpoints-0 does not exist"):
        await store.read([old])


async def test_a_failing_log_is_a_store_error(store: PartitionStore, log: CountingLog) -> None:
    log._appends_failed(LogError("disk full"))
    with pytest.raises(StoreError, match="writing the snapshot of partition 1 at checkpoint 1"):
        await store.write(0, snapshot(1, {b"a": b"1"}, full=True))


class InterleavingLog(MemoryLog):
    """A log on which another writer's record lands inside every append of two or more."""

    def append(self, topic: str, partition: int, records: Sequence[Record]) -> Future[list[int]]:
        if len(records) < 2:
            return super().append(topic, partition, records)
        first = super().append(topic, partition, records[:1])
        super().append(topic, partition, [Record(b"another writer's")])
        rest = super().append(topic, partition, records[1:])

        async def offsets() -> list[int]:
            return await first + await rest

        return asyncio.ensure_future(offsets())


async def test_a_snapshot_interleaved_with_other_records_is_not_written() -> None:
    log = InterleavingLog()
    store = PartitionStore(log, "app", PARTITIONS, chunk_bytes=10)
    with pytest.raises(StoreError, match="interleaved with other records"):
        await store.write(0, snapshot(1, {b"a": b"1" * 50}, full=True))
    await log.close()


# --- on Kafka -----------------------------------------------------------------------------


@pytest.fixture
async def two_processes(kafka_bootstrap: str) -> AsyncIterator[tuple[KafkaLog, KafkaLog]]:
    """The Kafka logs of two processes of one application."""
    first = await KafkaLog.open(kafka_bootstrap, client_id="first")
    second = await KafkaLog.open(kafka_bootstrap, client_id="second")
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest.mark.kafka
async def test_a_chain_round_trips_on_kafka_and_old_segments_are_deleted(
    two_processes: tuple[KafkaLog, KafkaLog], unique_topic: Callable[[str], str]
) -> None:
    app = unique_topic("app")
    writer_log, reader_log = two_processes
    writer = PartitionStore(writer_log, app, PARTITIONS, chunk_bytes=100 * 1024)
    state: dict[bytes, bytes | None] = {
        f"ns/type/{i}".encode(): os.urandom(100) for i in range(3_000)
    }
    await writer.write(0, snapshot(1, {b"gone": b"1"}, full=True, partition=2))
    chain = [await writer.write(1, snapshot(2, state, full=True, partition=2))]
    assert chain[0].count > 2
    for checkpoint in range(3, 6):
        delta = {f"ns/type/{checkpoint}".encode(): None, b"new": str(checkpoint).encode()}
        chain.append(await writer.write(1, snapshot(checkpoint, delta, partition=2)))
        state.update(delta)
    assert await writer.delete_segments_below(1) == [0]

    # Another process restores: it opens the segment the writer created.
    reader = PartitionStore(reader_log, app, PARTITIONS)
    restored = await reader.read(chain)
    assert restored.state == {k: v for k, v in state.items() if v is not None}
    assert restored.parts == {"worker": b"worker@5"}
    assert restored.checkpoint == 5
    assert await reader.segments() == [1]
    assert writer.segment_topic(0) not in await reader_log.list_topics()
    with pytest.raises(StoreDamaged, match="not its chunk"):
        await reader.read([replace(chain[0], offset=chain[0].offset + 1)])


@pytest.mark.kafka
async def test_segments_another_member_deletes_stay_deleted(
    two_processes: tuple[KafkaLog, KafkaLog], unique_topic: Callable[[str], str]
) -> None:
    # Kafka clients name every topic they know in their metadata requests, and Tansu
    # creates a topic a metadata request names: a member that wrote to a segment must
    # let it go before the member that deletes it does.
    app = unique_topic("app")
    member_log, coordinator_log = two_processes
    member = PartitionStore(member_log, app, PARTITIONS)
    coordinator = PartitionStore(coordinator_log, app, PARTITIONS)
    for segment in range(3):
        await member.write(segment, snapshot(segment + 1, {b"a": b"1"}, full=True))
    await coordinator.write(2, snapshot(3, {b"a": b"2"}, full=True, partition=0))
    assert await coordinator.delete_segments_below(2) == [0, 1]
    # A new segment: the member's producer asks for metadata of what it knows.
    await member.write(3, snapshot(4, {b"a": b"3"}, full=True))
    assert await coordinator.segments() == [2, 3]
