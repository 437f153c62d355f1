"""Envelopes: a message to an address as it travels through the messages log.

A record's key is the target's address key (see ``runtime.routing``); its value is
msgpack ``[[namespace, type, id], caller [namespace, type, id] | nil, typename, value | nil]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from runtime.errors import MalformedEnvelope
from runtime.log import Record, StoredRecord
from runtime.routing import address_key
from statefun.address import Address
from statefun.values import TypedValue


@dataclass(frozen=True, slots=True)
class Envelope:
    target: Address
    caller: Address | None
    argument: TypedValue

    def to_record(self, headers: tuple[tuple[str, bytes], ...] = ()) -> Record:
        t, c = self.target, self.caller
        value = msgpack.packb(
            (
                (t.namespace, t.type, t.id),
                None if c is None else (c.namespace, c.type, c.id),
                self.argument.typename,
                self.argument.value,
            ),
            use_bin_type=True,
        )
        return Record(value=value, key=address_key(t), headers=headers)

    @classmethod
    def from_record(cls, record: StoredRecord) -> Envelope:
        try:
            target, caller, typename, value = msgpack.unpackb(record.value, raw=False)
            if not isinstance(typename, str) or not (value is None or isinstance(value, bytes)):
                raise TypeError("argument must be a str typename and bytes")
            return cls(
                Address(*target),
                None if caller is None else Address(*caller),
                TypedValue(typename, value),
            )
        except Exception as e:
            raise MalformedEnvelope(
                f"record at offset {record.offset} is not an envelope: {e}"
            ) from None
