"""Envelopes: a message to an address as it travels through the messages log.

A record's key is the target's address key (see ``runtime.routing``); its value is
msgpack ``[[namespace, type, id], caller [namespace, type, id] | nil, typename, value | nil]``.
A message a Kafka ingress turned a record into also has a ``statefun.source`` header,
its route's source (``kafka:<ingress id>``, see ``runtime.metrics``): the message has no
caller, as in StateFun, and the header tells it from one through the HTTP ingress.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from runtime.errors import MalformedEnvelope
from runtime.log import Record, StoredRecord
from runtime.routing import address_key
from statefun.address import Address
from statefun.values import TypedValue

SOURCE_HEADER = "statefun.source"


def source_header(source: str) -> tuple[str, bytes]:
    return SOURCE_HEADER, source.encode()


def source_of(headers: tuple[tuple[str, bytes], ...]) -> str | None:
    """The route source a record's ``statefun.source`` header names, if it has one."""
    for name, value in headers:
        if name == SOURCE_HEADER:
            return value.decode("utf-8", "replace")
    return None


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
