"""State as of a retained checkpoint of a cluster application (``runtime.cluster.as_of``):
partitions restored from their chains in the partition store, cached, and paged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from test_partition_store import CountingLog

from runtime.cluster.as_of import PartitionsAsOf
from runtime.cluster.decisions import Manifest
from runtime.cluster.locations import PartitionLocation
from runtime.cluster.partition_store import PartitionSnapshot, PartitionStore
from runtime.errors import CheckpointNotRetained, StoreDamaged
from runtime.state import AddressPage
from statefun.address import TypeName

pytestmark = pytest.mark.anyio

PARTITIONS = 3
FN = TypeName("t", "f")


def manifest(checkpoint: int, chains: dict[int, tuple[PartitionLocation, ...]]) -> Manifest:
    return Manifest(1, checkpoint, 0, 0, chains, {}, 0, 0, None)


async def write(
    store: PartitionStore,
    segment: int,
    checkpoint: int,
    partition: int,
    state: dict[bytes, bytes | None],
    *,
    full: bool,
) -> PartitionLocation:
    snapshot = PartitionSnapshot(partition, checkpoint, full, list(state.items()), [], {})
    return await store.write(segment, snapshot)


@pytest.fixture
async def counted() -> AsyncIterator[CountingLog]:
    log = CountingLog()
    yield log
    await log.close()


@pytest.fixture
async def checkpoints(counted: CountingLog) -> tuple[PartitionStore, list[Manifest]]:
    """Checkpoint 1: full snapshots of partitions 0 and 1 (2 holds nothing); 2: deltas
    over them; 3: full snapshots in a new segment."""
    store = PartitionStore(counted, "app", PARTITIONS)
    p0 = await write(store, 0, 1, 0, {b"t/f/a": b"a1", b"t/f/c": b"c1"}, full=True)
    p1 = await write(store, 0, 1, 1, {b"t/f/b": b"b1", b"t/g/z": b"z1"}, full=True)
    d0 = await write(store, 0, 2, 0, {b"t/f/a": b"a2", b"t/f/c": None}, full=False)
    d1 = await write(store, 0, 2, 1, {b"t/f/d": b"d2"}, full=False)
    f0 = await write(store, 1, 3, 0, {b"t/f/a": b"a3"}, full=True)
    f2 = await write(store, 1, 3, 2, {b"t/f/e": b"e3"}, full=True)
    return store, [
        manifest(1, {0: (p0,), 1: (p1,)}),
        manifest(2, {0: (p0, d0), 1: (p1, d1)}),
        manifest(3, {0: (f0,), 2: (f2,)}),
    ]


async def test_state_and_pages_as_of_each_retained_checkpoint(
    checkpoints: tuple[PartitionStore, list[Manifest]],
) -> None:
    store, retained = checkpoints
    as_of = PartitionsAsOf(store, lambda: retained, PARTITIONS)
    assert await as_of.state(b"t/f/a", 0, 1) == b"a1"
    assert await as_of.state(b"t/f/a", 0, 2) == b"a2"
    assert await as_of.state(b"t/f/c", 0, 2) is None  # deleted by the delta
    assert await as_of.state(b"t/f/e", 2, 2) is None  # partition 2 had no chain
    assert await as_of.state(b"t/f/e", 2, 3) == b"e3"
    assert await as_of.page(FN, None, 10, 1) == AddressPage(["a", "b", "c"], False)
    assert await as_of.page(FN, None, 2, 2) == AddressPage(["a", "b"], True)
    assert await as_of.page(FN, "b", 2, 2) == AddressPage(["d"], False)
    assert await as_of.page(FN, None, 10, 3) == AddressPage(["a", "e"], False)
    assert await as_of.page(TypeName("t", "g"), None, 10, 2) == AddressPage(["z"], False)
    with pytest.raises(
        CheckpointNotRetained, match=r"checkpoint 4 is not retained; retained: 1, 2, 3"
    ):
        await as_of.state(b"t/f/a", 0, 4)


async def test_restored_partitions_are_cached_within_a_bound(
    checkpoints: tuple[PartitionStore, list[Manifest]], counted: CountingLog
) -> None:
    store, retained = checkpoints
    as_of = PartitionsAsOf(store, lambda: retained, PARTITIONS)
    await as_of.page(FN, None, 10, 2)
    read = counted.records_read
    assert await as_of.page(FN, "a", 10, 2) == AddressPage(["b", "d"], False)
    assert await as_of.state(b"t/f/b", 1, 2) == b"b1"
    assert counted.records_read == read  # from the cache
    tiny = PartitionsAsOf(store, lambda: retained, PARTITIONS, cache_bytes=1)
    assert await tiny.state(b"t/f/a", 0, 1) == b"a1"
    assert await tiny.state(b"t/f/b", 1, 1) == b"b1"  # the newest only is kept
    read = counted.records_read
    assert await tiny.state(b"t/f/a", 0, 1) == b"a1"
    assert counted.records_read > read  # restored again


async def test_a_checkpoint_dropped_while_it_is_read_is_not_retained(
    checkpoints: tuple[PartitionStore, list[Manifest]],
) -> None:
    store, retained = checkpoints
    await store.delete_segments_below(1)  # what dropping checkpoints 1 and 2 deletes
    answers: list[Sequence[Manifest]] = [retained, retained[2:]]
    dropping = PartitionsAsOf(
        store, lambda: answers.pop(0) if len(answers) > 1 else answers[0], PARTITIONS
    )
    with pytest.raises(CheckpointNotRetained, match=r"retained: 3$"):
        await dropping.state(b"t/f/a", 0, 1)
    # Still retained, yet its records are gone: damage, said as such.
    with pytest.raises(StoreDamaged):
        await PartitionsAsOf(store, lambda: retained, PARTITIONS).state(b"t/f/a", 0, 2)
