"""Generations, epochs and record tags, and which tagged records may be processed.

Checkpoint ids n = 1, 2, 3, ... increase forever. Between checkpoints n-1 and n the
runtime is in *epoch* n, and every record it produces carries the tag
``(generation, epoch, producer)`` in its ``statefun.tag`` header. Records from outside
(the HTTP ingress) carry none.

A rollback of generation g to checkpoint c starts generation g+1. From then on a
tagged record ``(g', e)`` is processed only if g' is the current generation or
``e <= c(g')``, the checkpoint g' was rolled back to: anything else is output of
rolled-back work, which replay produces again. A log started over with a new
checkpoint store (``--start-over``) skips every tag of a generation below the first one
of that store: all of it is output of work the new store replays.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

TAG_HEADER = "statefun.tag"
_TAG = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class Tag:
    generation: int
    epoch: int
    producer: str

    def header(self) -> tuple[str, bytes]:
        return TAG_HEADER, _TAG.pack(self.generation, self.epoch) + self.producer.encode()

    @classmethod
    def from_headers(cls, headers: tuple[tuple[str, bytes], ...]) -> Tag | None:
        for name, value in headers:
            if name == TAG_HEADER and len(value) >= _TAG.size:
                generation, epoch = _TAG.unpack_from(value)
                return cls(generation, epoch, value[_TAG.size :].decode("utf-8", "replace"))
        return None


class SkipRule:
    """Decides, for a tagged record, whether it is live output or rolled-back work."""

    def __init__(self, current: int, rolled_back_to: Mapping[int, int], *, below: int = 0):
        """``below``: every generation under it is skipped whole (a start over)."""
        self.current = current
        self._rolled_back_to = dict(rolled_back_to)
        self._below = below

    def accepts(self, tag: Tag | None) -> bool:
        if tag is None or tag.generation == self.current:
            return True
        if tag.generation < self._below:
            return False
        limit = self._rolled_back_to.get(tag.generation)
        # A generation with no record of a rollback never completed a start: nothing of it
        # is live (it cannot be the current one, nor be newer than it).
        return limit is not None and tag.epoch <= limit


class EpochClock:
    """The current generation and epoch, shared by everything that produces records."""

    def __init__(self, generation: int, epoch: int, producer: str, skip: SkipRule):
        self.generation = generation
        self.producer = producer
        self.skip = skip
        self._epoch = epoch
        self.tag = Tag(generation, epoch, producer)
        self.header = self.tag.header()

    @property
    def epoch(self) -> int:
        return self._epoch

    def advance(self) -> None:
        """Move to the next epoch (a snapshot of the current one was just taken)."""
        self._epoch += 1
        self.tag = Tag(self.generation, self._epoch, self.producer)
        self.header = self.tag.header()
