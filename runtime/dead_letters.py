"""The dead-letter topic: input the runtime cannot process, parked with the reason.

A record goes here instead of stopping anything: a Kafka ingress record without a
usable key, for example. It keeps the original key and value; its headers say why
(``statefun.reason``), where it came from (``statefun.source``) and who parked it
(``statefun.origin``). ``GET /v1/dead-letters`` reads it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from runtime.checkpoints.epochs import EpochClock, Tag
from runtime.log import Log, Record

log = logging.getLogger(__name__)

REASON, SOURCE, ORIGIN = "statefun.reason", "statefun.source", "statefun.origin"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    offset: int
    key: bytes | None
    value: bytes
    reason: str
    source: str
    origin: str


class DeadLetters:
    def __init__(self, log_: Log, topic: str):
        self._log = log_
        self.topic = topic

    async def create_topic(self) -> None:
        await self._log.ensure_topic(self.topic, 1)

    def park(
        self,
        key: bytes | None,
        value: bytes,
        *,
        reason: str,
        source: str,
        origin: str,
        tag: tuple[str, bytes] | None = None,
    ) -> asyncio.Future[list[int]]:
        """Append a dead letter; ``tag`` is the producer's epoch tag header, if any."""
        log.error("dead letter from %s (%s): %s", origin, source, reason)
        headers = [(REASON, reason.encode()), (SOURCE, source.encode()), (ORIGIN, origin.encode())]
        if tag is not None:
            headers.append(tag)
        record = Record(value=value, key=key, headers=tuple(headers))
        return self._log.append(self.topic, 0, [record])

    async def read(
        self, offset: int, max_records: int, clock: EpochClock | None
    ) -> tuple[list[DeadLetter], int]:
        """Dead letters from ``offset``, and the offset to read next; those parked by
        rolled-back work are left out (``clock`` knows which: replay parks them again)."""
        records = await self._log.read(self.topic, 0, offset, max_records)
        out = []
        for r in records:
            if clock is not None and not clock.skip.accepts(Tag.from_headers(r.headers)):
                continue
            headers = {k: v.decode("utf-8", "replace") for k, v in r.headers}
            out.append(
                DeadLetter(
                    r.offset,
                    r.key,
                    r.value,
                    headers.get(REASON, ""),
                    headers.get(SOURCE, ""),
                    headers.get(ORIGIN, ""),
                )
            )
        return out, records[-1].offset + 1 if records else offset
