"""Where a partition's local snapshot lies in the partition checkpoint store.

Shared by the store (``runtime.cluster.partition_store``), which writes snapshots and
says where, and the decision log (``runtime.cluster.decisions``), whose ``part`` and
``manifest`` records carry these locations: a manifest names, per partition, the chain
of locations to restore from.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PartitionLocation"]


@dataclass(frozen=True, slots=True)
class PartitionLocation:
    """The records of one messages partition's snapshot at one checkpoint: ``count``
    records from ``offset`` on, in partition ``partition`` of segment topic ``topic``
    (a segment topic's partition p holds messages partition p's snapshots)."""

    topic: str
    partition: int
    offset: int
    count: int
    checkpoint: int
    full: bool
    """A full snapshot (every address of the partition), or a delta (the addresses
    changed since the previous snapshot of its chain)."""
