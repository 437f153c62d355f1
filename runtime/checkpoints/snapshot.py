"""What a local snapshot holds, and its bytes in the checkpoint store.

The worker's part: the inputs it has read but not yet answered (mailboxes and in-flight
batches, in order per address, each with the id of its record in the messages log),
where the messages it left in the log start (overflow), its pending delayed messages
(absolute due times) and its next read offset per partition. The egress outbox's part:
the exactly-once egress records not yet published. A Kafka ingress reader's part: its
next offset per topic partition. State is written separately, one row per address that
changed since the previous checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from statefun.address import Address, TypeName
from statefun.values import TypedValue

WORKER_PART = "worker"
EGRESS_PART = "egress"
KEYS_PART = "idempotency"
INGRESS_PART_PREFIX = "ingress:"
"""The names of a checkpoint's parts: the worker's, the egress outbox's, the idempotency
keys' (where held keys' records may be), and a Kafka ingress reader's (its id follows)."""

MessageId = tuple[int, int]
"""(partition, offset) of a message's record in the messages log."""


def message_id_text(message_id: MessageId) -> str:
    return f"{message_id[0]}@{message_id[1]}"


@dataclass(frozen=True, slots=True)
class PendingMessage:
    target: Address
    caller: Address | None
    argument: TypedValue
    message_id: MessageId


@dataclass(frozen=True, slots=True)
class PendingTimer:
    due_ms: int
    sender: Address
    target: Address
    argument: TypedValue
    token: str | None


@dataclass(frozen=True, slots=True)
class EgressItem:
    """An egress record of exactly-once work, held until its epoch's checkpoint commits.
    ``id`` is unique and travels with the record, so a reader can drop a repeat."""

    id: str
    egress: TypeName
    argument: TypedValue
    epoch: int


@dataclass(frozen=True, slots=True)
class Overflow:
    """Messages left in the log: those of ``address`` (or of every address of
    ``function_type``) in ``partition`` from ``offset`` on, below the read position, are
    not held in memory; they are read again when there is room."""

    partition: int
    offset: int
    address: Address | None = None
    function_type: TypeName | None = None


@dataclass(frozen=True, slots=True)
class WorkerPart:
    pending: list[PendingMessage]
    timers: list[PendingTimer]
    positions: dict[int, int]
    overflow: list[Overflow] = field(default_factory=list)

    def split(self, partition_of: Callable[[Address], int]) -> dict[int, WorkerPart]:
        """This part cut per messages partition (the partitions it reads): pending messages
        by their record's partition, timers by their sender's, overflow by its own. Every
        partition it reads gets a part, empty or not, so its read position travels."""
        parts = {p: WorkerPart([], [], {p: o}) for p, o in self.positions.items()}

        def of(partition: int) -> WorkerPart:
            return parts.setdefault(partition, WorkerPart([], [], {}))

        for m in self.pending:
            of(m.message_id[0]).pending.append(m)
        for t in self.timers:
            of(partition_of(t.sender)).timers.append(t)
        for o in self.overflow:
            of(o.partition).overflow.append(o)
        return parts

    @classmethod
    def merge(cls, parts: Iterable[WorkerPart]) -> WorkerPart:
        """One part from the parts of disjoint partitions (:meth:`split` undone)."""
        merged = cls([], [], {})
        for part in parts:
            merged.pending.extend(part.pending)
            merged.timers.extend(part.timers)
            merged.positions.update(part.positions)
            merged.overflow.extend(part.overflow)
        return merged

    def read_floor(self) -> dict[int, int]:
        """Per partition, the lowest offset a worker restored from this part reads again:
        its read position, or an earlier offset an overflowed address still needs. Records
        below it are never needed by this part."""
        floor = dict(self.positions)
        for o in self.overflow:
            floor[o.partition] = min(floor.get(o.partition, o.offset), o.offset)
        return floor


def _addr(a: Address | None) -> tuple[str, str, str] | None:
    return None if a is None else (a.namespace, a.type, a.id)


def _to_addr(raw: Any) -> Address | None:
    return None if raw is None else Address(*raw)


def _pack(data: Any) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def encode_state(values: Mapping[str, TypedValue], deadlines: Mapping[str, int] | None) -> bytes:
    """An address's state: per name, [typename, value] or [typename, value, deadline ms]."""
    deadlines = deadlines or {}
    return _pack(
        {
            name: (v.typename, v.value, deadlines[name])
            if name in deadlines
            else (v.typename, v.value)
            for name, v in values.items()
        }
    )


def decode_state(data: bytes) -> tuple[dict[str, TypedValue], dict[str, int]]:
    values, deadlines = {}, {}
    for name, stored in msgpack.unpackb(data, raw=False).items():
        values[name] = TypedValue(stored[0], stored[1])
        if len(stored) > 2:
            deadlines[name] = stored[2]
    return values, deadlines


def encode_egress_items(items: list[EgressItem]) -> bytes:
    return _pack(
        [
            (
                e.id,
                e.egress.namespace,
                e.egress.name,
                e.argument.typename,
                e.argument.value,
                e.epoch,
            )
            for e in items
        ]
    )


def decode_egress_items(data: bytes) -> list[EgressItem]:
    return [
        EgressItem(i, TypeName(ns, name), TypedValue(tn, v), epoch)
        for i, ns, name, tn, v, epoch in msgpack.unpackb(data, raw=False)
    ]


def _type_name(t: TypeName | None) -> tuple[str, str] | None:
    return None if t is None else (t.namespace, t.name)


def encode_worker_part(part: WorkerPart) -> bytes:
    return _pack(
        (
            [
                (
                    _addr(p.target),
                    _addr(p.caller),
                    p.argument.typename,
                    p.argument.value,
                    p.message_id[0],
                    p.message_id[1],
                )
                for p in part.pending
            ],
            [
                (
                    t.due_ms,
                    _addr(t.sender),
                    _addr(t.target),
                    t.argument.typename,
                    t.argument.value,
                    t.token,
                )
                for t in part.timers
            ],
            part.positions,
            [
                (o.partition, o.offset, _addr(o.address), _type_name(o.function_type))
                for o in part.overflow
            ],
        )
    )


def decode_worker_part(data: bytes) -> WorkerPart:
    pending, timers, positions, overflow = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return WorkerPart(
        [
            PendingMessage(Address(*t), _to_addr(c), TypedValue(tn, v), (p, o))
            for t, c, tn, v, p, o in pending
        ],
        [
            PendingTimer(due, Address(*s), Address(*t), TypedValue(tn, v), token)
            for due, s, t, tn, v, token in timers
        ],
        {int(p): o for p, o in positions.items()},
        [
            Overflow(p, o, _to_addr(a), None if t is None else TypeName(*t))
            for p, o, a, t in overflow
        ],
    )


def encode_positions(positions: Mapping[tuple[str, int], int]) -> bytes:
    return _pack([(t, p, o) for (t, p), o in positions.items()])


def decode_positions(data: bytes) -> dict[tuple[str, int], int]:
    return {(t, p): o for t, p, o in msgpack.unpackb(data, raw=False)}
