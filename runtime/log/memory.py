"""The in-memory embedded log, for tests: the embedded log's behaviour, nothing on disk."""

from __future__ import annotations

from collections.abc import Mapping

from runtime.log.base import StoredRecord, TopicPartition
from runtime.log.local import LocalLog, PendingAppend, stored_records


class MemoryLog(LocalLog):
    def __init__(self) -> None:
        super().__init__()
        self._records: dict[TopicPartition, list[StoredRecord]] = {}
        self._base: dict[TopicPartition, int] = {}
        """The offset of each partition's first record in its list."""
        self._offsets: dict[tuple[str, TopicPartition], int] = {}

    async def _create_topic(self, topic: str, partitions: int) -> None:
        for p in range(partitions):
            self._records[TopicPartition(topic, p)] = []
            self._base[TopicPartition(topic, p)] = 0

    async def _delete_topic(self, topic: str, partitions: int) -> None:
        for p in range(partitions):
            del self._records[TopicPartition(topic, p)], self._base[TopicPartition(topic, p)]
        for group, tp in [k for k in self._offsets if k[1].topic == topic]:
            del self._offsets[group, tp]

    def _write(self, append: PendingAppend) -> None:
        self._records[append.tp].extend(stored_records(append))
        # Durable "later", as on disk: appenders never see their future done synchronously.
        self._loop.call_soon(self._made_durable, [append])

    def _read_range(self, tp: TopicPartition, start: int, end: int) -> list[StoredRecord]:
        base = self._base[tp]
        return self._records[tp][start - base : end - base]

    async def _drop(self, tp: TopicPartition, before: int) -> None:
        del self._records[tp][: before - self._base[tp]]
        self._base[tp] = before

    async def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self._offsets[group, tp] = offset

    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        return {
            tp.partition: offset
            for (g, tp), offset in self._offsets.items()
            if g == group and tp.topic == topic
        }

    async def close(self) -> None:
        self._wake_consumers()
