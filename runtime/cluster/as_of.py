"""State as of a retained checkpoint of a cluster application, read from the partition
checkpoint store.

What it owns: restoring a messages partition as the retained checkpoint n holds it
(manifest n's chain for the partition: its full snapshot and the deltas after it,
``runtime.cluster.partition_store``), keeping the newest few restored partitions in a
cache bounded by their snapshot bytes (:data:`CACHE_BYTES`, least recently used out),
and answering from them one address's state and pages of a function type's addresses
(each cached partition sorts its ids per function type once, on its first listing; a
page is then a binary search per partition and a merge).

Any member answers, from the segment topics every member reaches: nothing is forwarded
to the partitions' owners, who hold only live state and would read the same records.
This works while members restore, join or leave (a retained checkpoint never changes),
and costs one restore per (checkpoint, partition) per member that is asked, then a
lookup (checkpoint ids are never reused, so a cached partition never goes stale; it
is only evicted). A partition with no chain in the manifest had no state. A checkpoint dropped
from retention while a restore reads it (its segment deleted) is
:class:`~runtime.errors.CheckpointNotRetained`, like one never retained.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from runtime.cluster.decisions import Manifest
from runtime.cluster.partition_store import PartitionStore
from runtime.errors import CheckpointNotRetained, StoreDamaged
from runtime.state import AddressPage, merge_pages, page_of
from statefun.address import TypeName

CACHE_BYTES = 64 * 1024 * 1024
"""Snapshot bytes of the restored partitions kept (the newest one is kept whatever its
size)."""


@dataclass(slots=True)
class _Restored:
    """A partition as of a checkpoint: address key to encoded state."""

    state: dict[bytes, bytes]
    size: int
    _ids: dict[TypeName, list[str]] | None = field(default=None)

    def ids(self, function_type: TypeName) -> list[str]:
        """The sorted ids of ``function_type``'s addresses in the partition."""
        if self._ids is None:
            grouped: dict[TypeName, list[str]] = {}
            for key in self.state:
                namespace, name, id_ = key.decode().split("/", 2)
                grouped.setdefault(TypeName(namespace, name), []).append(id_)
            self._ids = {t: sorted(ids) for t, ids in grouped.items()}
        return self._ids.get(function_type, [])


class PartitionsAsOf:
    """Reads partitions as of the checkpoints ``retained`` names (the decision log's
    newest valid manifests), from ``store``."""

    def __init__(
        self,
        store: PartitionStore,
        retained: Callable[[], Sequence[Manifest]],
        partitions: int,
        *,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self._store = store
        self._retained = retained
        self._partitions = partitions
        self._cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int], _Restored] = OrderedDict()
        self._loading: dict[tuple[int, int], asyncio.Task[_Restored]] = {}

    async def state(self, key: bytes, partition: int, checkpoint: int) -> bytes | None:
        """The encoded state of the address with key ``key`` (of ``partition``) as of
        ``checkpoint``; None if it had none."""
        restored = await self._partition(checkpoint, partition)
        return restored.state.get(key)

    async def page(
        self, function_type: TypeName, after: str | None, limit: int, checkpoint: int
    ) -> AddressPage:
        """A page of ``function_type``'s addresses with state as of ``checkpoint``."""
        restored = await asyncio.gather(
            *(self._partition(checkpoint, p) for p in range(self._partitions))
        )
        return merge_pages((page_of(r.ids(function_type), after, limit) for r in restored), limit)

    def _manifest(self, checkpoint: int) -> Manifest:
        retained = self._retained()
        for manifest in retained:
            if manifest.checkpoint == checkpoint:
                return manifest
        raise CheckpointNotRetained(checkpoint, [m.checkpoint for m in retained])

    async def _partition(self, checkpoint: int, partition: int) -> _Restored:
        manifest = self._manifest(checkpoint)
        key = (checkpoint, partition)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.create_task(self._restore(manifest, partition))
            self._loading[key] = loading
            loading.add_done_callback(lambda task: self._restored(key, task))
        try:
            # Shielded: a request that goes away does not cancel the others' restore.
            return await asyncio.shield(loading)
        except StoreDamaged:
            self._manifest(checkpoint)  # dropped meanwhile (its segment deleted)?
            raise

    def _restored(self, key: tuple[int, int], task: asyncio.Task[_Restored]) -> None:
        del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure is its waiters' to raise, if any wait

    async def _restore(self, manifest: Manifest, partition: int) -> _Restored:
        chain = manifest.chains.get(partition)
        if not chain:
            restored = _Restored({}, 0)
        else:
            read = await self._store.read(chain)
            restored = _Restored(read.state, read.bytes_read)
        self._keep((manifest.checkpoint, partition), restored)
        return restored

    def _keep(self, key: tuple[int, int], restored: _Restored) -> None:
        self._cache[key] = restored
        total = sum(r.size for r in self._cache.values())
        while total > self._cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            total -= dropped.size
