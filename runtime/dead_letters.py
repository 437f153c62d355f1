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

from runtime.log import Log, Record

log = logging.getLogger("runtime.dead_letters")

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
        self, key: bytes | None, value: bytes, *, reason: str, source: str, origin: str
    ) -> asyncio.Future[list[int]]:
        log.error("dead letter from %s (%s): %s", origin, source, reason)
        headers = ((REASON, reason.encode()), (SOURCE, source.encode()), (ORIGIN, origin.encode()))
        return self._log.append(self.topic, 0, [Record(value=value, key=key, headers=headers)])

    async def read(self, offset: int, max_records: int) -> list[DeadLetter]:
        records = await self._log.read(self.topic, 0, offset, max_records)
        out = []
        for r in records:
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
        return out
