"""The dead-letter topic: what the runtime could not deliver, parked with the reason.

Three kinds of dead letter, said by the ``statefun.dead-letter`` header:

* ``message``: a message to a function address that was given up on (it kept failing
  alone while other messages of its type succeeded, or no endpoint serves its type).
  Key: the target's address key; value: the message's envelope (target, caller, typed
  value), so it reads back whole and can be replayed: appended to the messages log again.
* ``egress``: a record a function sent to an egress that does not exist or cannot take
  it. Value: the egress id and the typed value.
* ``record``: a record from outside that is not a message at all (a Kafka ingress record
  without a usable key), kept as it came: original key and value.

Headers also say why (``statefun.reason``), where it came from (``statefun.source``) and
who parked it (``statefun.origin``); records parked by rolled-back work carry its epoch
tag and are left out when read (replay parks them again). What an operator did with a
dead letter (replayed, discarded) is kept by the checkpoint store, not here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

import msgpack

from runtime.checkpoints.epochs import SkipRule, Tag
from runtime.envelope import Envelope
from runtime.errors import MalformedEnvelope
from runtime.log import Log, Record, StoredRecord
from statefun.address import Address, TypeName
from statefun.values import TypedValue

REASON, SOURCE, ORIGIN = "statefun.reason", "statefun.source", "statefun.origin"
KIND = "statefun.dead-letter"
MESSAGE, EGRESS, RECORD = "message", "egress", "record"
PARKED, REPLAYED, DISCARDED = "parked", "replayed", "discarded"
"""What became of a dead letter (the checkpoint store keeps all but ``parked``)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    offset: int
    timestamp_ms: int
    kind: str
    reason: str
    source: str
    origin: str
    key: bytes | None
    value: bytes
    target: Address | None = None
    """The address a ``message`` was for."""
    caller: Address | None = None
    egress: TypeName | None = None
    """The egress an ``egress`` record was for."""
    argument: TypedValue | None = None
    """The typed value of a ``message`` or an ``egress`` record."""

    @property
    def replayable(self) -> bool:
        return self.kind == MESSAGE and self.target is not None and self.argument is not None


class DeadLetters:
    def __init__(self, log_: Log, topic: str):
        self._log = log_
        self.topic = topic

    async def create_topic(self) -> None:
        await self._log.ensure_topic(self.topic, 1)

    def park_message(
        self,
        target: Address,
        caller: Address | None,
        argument: TypedValue,
        *,
        reason: str,
        source: str,
        origin: str,
        tag: tuple[str, bytes] | None = None,
    ) -> asyncio.Future[list[int]]:
        """Park a message to ``target``; ``tag`` is the producer's epoch tag header."""
        record = Envelope(target, caller, argument).to_record()
        return self._append(MESSAGE, record.key, record.value, reason, source, origin, tag)

    def park_egress(
        self,
        egress: TypeName,
        argument: TypedValue,
        *,
        reason: str,
        origin: str,
        tag: tuple[str, bytes] | None = None,
    ) -> asyncio.Future[list[int]]:
        value = msgpack.packb(
            ((egress.namespace, egress.name), argument.typename, argument.value),
            use_bin_type=True,
        )
        return self._append(EGRESS, None, value, reason, f"egress {egress}", origin, tag)

    def park_record(
        self,
        key: bytes | None,
        value: bytes,
        *,
        reason: str,
        source: str,
        origin: str,
        tag: tuple[str, bytes] | None = None,
    ) -> asyncio.Future[list[int]]:
        """Park a record from outside as it came."""
        return self._append(RECORD, key, value, reason, source, origin, tag)

    def _append(
        self,
        kind: str,
        key: bytes | None,
        value: bytes,
        reason: str,
        source: str,
        origin: str,
        tag: tuple[str, bytes] | None,
    ) -> asyncio.Future[list[int]]:
        headers = [
            (KIND, kind.encode()),
            (REASON, reason.encode()),
            (SOURCE, source.encode()),
            (ORIGIN, origin.encode()),
        ]
        if tag is not None:
            headers.append(tag)
        return self._log.append(self.topic, 0, [Record(value, key, tuple(headers))])

    async def read(
        self, offset: int, max_records: int, skip: SkipRule | None
    ) -> tuple[list[DeadLetter], int]:
        """Dead letters from ``offset``, and the offset to read next; those parked by
        rolled-back work are left out (``skip`` knows which: replay parks them again)."""
        records = await self._log.read(self.topic, 0, offset, max_records)
        out = [
            _decode(r) for r in records if skip is None or skip.accepts(Tag.from_headers(r.headers))
        ]
        return out, records[-1].offset + 1 if records else offset

    async def get(self, offset: int, skip: SkipRule | None) -> DeadLetter | None:
        records = await self._log.read(self.topic, 0, offset, 1)
        if not records or records[0].offset != offset:
            return None
        if skip is not None and not skip.accepts(Tag.from_headers(records[0].headers)):
            return None
        return _decode(records[0])


def _decode(r: StoredRecord) -> DeadLetter:
    headers = {k: v.decode("utf-8", "replace") for k, v in r.headers}
    kind = headers.get(KIND, RECORD)
    letter = DeadLetter(
        r.offset,
        r.timestamp_ms,
        kind,
        headers.get(REASON, ""),
        headers.get(SOURCE, ""),
        headers.get(ORIGIN, ""),
        r.key,
        r.value,
    )
    try:
        if kind == MESSAGE:
            envelope = Envelope.from_record(r)
            return dataclasses.replace(
                letter, target=envelope.target, caller=envelope.caller, argument=envelope.argument
            )
        if kind == EGRESS:
            (namespace, name), typename, value = msgpack.unpackb(r.value, raw=False)
            return dataclasses.replace(
                letter, egress=TypeName(namespace, name), argument=TypedValue(typename, value)
            )
    except (MalformedEnvelope, ValueError, TypeError):
        pass  # shown raw
    return letter
