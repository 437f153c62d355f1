"""The decision log: the total order of every cluster decision, and the one fold of it.

The decision log of an application holds every decision of it: generations begin (``Begin``), checkpoints are taken (``Take``), members
write their parts (``Part``), checkpoints commit (``Manifest``, the commit point),
members ask for rollbacks (``Fail``), egress is published (``Published``), operators
pause function types and mark dead letters (``Pause``, ``Mark``). Every member folds
it with :func:`fold`, a deterministic function of the records and their positions in
one total order, so every member reaches the same conclusions without talking.

Epochs bound what the log holds and what a starting member reads (the test broker has
neither compaction nor retention, and walks every batch of a partition on each fetch).
The records of epoch k are in the one-partition topic ``<app>-decisions-<k>``; the
order runs through epoch 1, then each next epoch. To move to k+1 (the coordinator does,
after a commit, once epoch k holds ``DecisionLog.epoch_records`` records), a member
appends to topic k+1 a ``Snapshot`` of the whole fold as of position p, then to topic k
a ``Moved`` naming it: the decision. A Moved is valid only for the next epoch, and only
if no record was applied from p on (its snapshot holds everything); the first valid one
ends epoch k: what lands after it in topic k is in no order (a stale coordinator still
appending there is fenced; ``DecisionLog.decide`` appends its own late records again,
in k+1). The fold goes on from the Snapshot the Moved names; any other Snapshot is void,
so a mover that died before its Moved, or lost the race, left a snapshot nobody reads.
The one-partition topic ``<app>-decisions`` says where each epoch starts (written after
its Moved: a hint, never a decision), so a member that starts reads that topic, then
only the newest epoch from its Snapshot on (following any Moved it finds there). A move
deletes the topics of every epoch but the two newest.

Fencing comes from the order alone (no transactions: the test broker does not honour
their aborts). The fold decides what a record means *by its place in the log*, never
by what its writer believed when it wrote it:

* A ``Begin`` is valid only if its generation is above the current one (of two Begins
  of one generation, the first wins) and its module is the application's (the first
  Begin's). It rolls the current generation back to the last valid manifest *before it
  in the log*. Its Kafka group view is not compared here: a group that was empty long
  enough starts its generations over, and the log must not refuse every Begin after
  that; the coordinator of a newer view contests an older one's instead
  (``runtime.cluster.coordinator``).
* Every other record of a generation is valid only in that generation: once a Begin
  of a later one is in the log, what a stale coordinator or member appends is void.
* A ``Take`` is valid only above every checkpoint taken before; it supersedes (so
  abandons) a take still in progress. A ``Part`` is valid only for the take in
  progress, once per member, from a member the Begin gives partitions, naming only
  those; in a full take it names every one of them, full.
* A ``Manifest`` is valid only for the take in progress, once every owner's part is in:
  so it is above the last valid manifest, and never commits a checkpoint twice.
* A ``Published`` is valid only for a committed checkpoint.
* ``Pause`` and ``Mark`` (operators' decisions) carry no generation and always apply.

Void records are counted and logged at debug, never applied. :class:`DecisionLog`
runs the fold over a :class:`~runtime.log.Log` (in-memory in tests, Kafka in a
cluster): it reads the topic to its end at open, then tails it, telling listeners each
:class:`Effect` in order. It never decides anything itself: the coordinator
(``runtime.cluster.coordinator``) and the members append, and act on what the fold
concludes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

from runtime.checkpoints.epochs import SkipRule
from runtime.cluster.locations import PartitionLocation
from runtime.errors import LogError, MalformedDecision
from runtime.log import Log, LogConsumer, Record, StoredRecord, TopicPartition

log = logging.getLogger(__name__)

R = TypeVar("R")

HISTORY = 100
"""Rollbacks the fold keeps for operators (``GET /v1/checkpoints``)."""

IngressPartition = tuple[str, int]
"""A Kafka ingress topic's partition: (topic, partition)."""


@dataclass(frozen=True, slots=True)
class Begin:
    """Generation ``generation`` begins: who coordinates it and who owns what. It rolls
    everything before it back to the last valid manifest before it in the log."""

    generation: int
    coordinator: str
    """The member id of the coordinator (the Kafka group leader)."""
    view: int
    """The Kafka group generation of the membership view this Begin comes from."""
    owners: Mapping[int, str]
    """Messages-topic partition -> the member id that owns it."""
    ingress_owners: Mapping[IngressPartition, str]
    members: Mapping[str, str]
    """Member id -> peer URL."""
    module: str
    """The fingerprint of the application's module."""
    reason: str
    cause_address: str | None = None
    cause_messages: tuple[str, ...] = ()
    at_ms: int = 0
    """When its writer appended it (wall clock, milliseconds)."""


@dataclass(frozen=True, slots=True)
class Take:
    """Take checkpoint ``checkpoint``; parts go to segment ``segment``, whole if ``full``."""

    generation: int
    checkpoint: int
    segment: int
    full: bool


@dataclass(frozen=True, slots=True)
class Part:
    """Member ``member`` wrote its local snapshot of checkpoint ``checkpoint``."""

    generation: int
    checkpoint: int
    member: str
    locations: Mapping[int, PartitionLocation]
    """Per messages partition it owns, where its snapshot lies; a partition left out of
    a delta take changed nothing (its chain stays as it was)."""
    ingress: Mapping[IngressPartition, int]
    """The next offset to read, per Kafka ingress partition it owns."""
    releases: bool
    """Whether the commit releases something of this part to the outside (egress,
    replies held for commit)."""
    size_bytes: int
    addresses: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """Checkpoint ``checkpoint`` is committed: the commit point."""

    generation: int
    checkpoint: int
    created_ms: int
    duration_ms: int
    chains: Mapping[int, tuple[PartitionLocation, ...]]
    """Per messages partition, what a restore reads in order: the newest full snapshot
    and the deltas committed after it."""
    ingress: Mapping[IngressPartition, int]
    size_bytes: int
    addresses: int
    released: str | None
    """The member ids whose parts the commit released to the outside, comma-separated,
    or None: nothing."""


@dataclass(frozen=True, slots=True)
class Fail:
    """Member ``member`` asks for a rollback of generation ``generation``."""

    generation: int
    member: str
    reason: str
    cause_address: str | None = None
    cause_messages: tuple[str, ...] = ()
    cause: str = "other"
    """What failed, one of ``runtime.metrics.ROLLBACK_CAUSES`` (the rollbacks metric's
    label); "other" in a record of a runtime from before it was written."""


@dataclass(frozen=True, slots=True)
class Published:
    """The egress of checkpoint ``checkpoint`` of these messages partitions is out."""

    generation: int
    checkpoint: int
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pause:
    """An operator paused (or resumed) a function type."""

    function_type: str
    paused: bool


@dataclass(frozen=True, slots=True)
class Mark:
    """An operator marked a dead letter (by its offset in the dead-letter log)."""

    dead_letter: int
    status: str


@dataclass(frozen=True, slots=True)
class Moved:
    """The decision log moves to epoch ``epoch``: its topic's record at offset
    ``snapshot`` is a :class:`Snapshot` of the fold as of position ``as_of``. The end of
    the epoch it is in: nothing after it there is read."""

    epoch: int
    snapshot: int
    as_of: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole fold as of position ``as_of`` (before the record there): the first
    record of epoch ``epoch``, valid only where a valid :class:`Moved` names it."""

    epoch: int
    as_of: int
    state: ClusterState


DecisionRecord = Begin | Take | Part | Manifest | Fail | Published | Pause | Mark | Moved | Snapshot


# --- encoding ----------------------------------------------------------------------------


def _location_out(loc: PartitionLocation) -> list[Any]:
    return [loc.topic, loc.partition, loc.offset, loc.count, loc.checkpoint, loc.full]


def _location_in(raw: Any) -> PartitionLocation:
    topic, partition, offset, count, checkpoint, full = raw
    return PartitionLocation(
        str(topic), int(partition), int(offset), int(count), int(checkpoint), bool(full)
    )


def _ingress_out(ingress: Mapping[IngressPartition, Any]) -> list[list[Any]]:
    return [[topic, partition, value] for (topic, partition), value in ingress.items()]


def _ingress_in(raw: Any, value: Callable[[Any], Any]) -> dict[IngressPartition, Any]:
    return {(str(topic), int(partition)): value(v) for topic, partition, v in raw}


def _optional_str(raw: Any) -> str | None:
    return None if raw is None else str(raw)


def encode(record: DecisionRecord) -> bytes:
    """The record as msgpack: a map with its ``kind`` and its fields."""
    packed: bytes = msgpack.packb(_body(record), use_bin_type=True)
    return packed


def _body(record: DecisionRecord) -> dict[str, Any]:
    body: dict[str, Any]
    match record:
        case Begin():
            body = {
                "kind": "begin",
                "generation": record.generation,
                "coordinator": record.coordinator,
                "view": record.view,
                "owners": [[p, m] for p, m in record.owners.items()],
                "ingress_owners": _ingress_out(record.ingress_owners),
                "members": [[m, url] for m, url in record.members.items()],
                "module": record.module,
                "reason": record.reason,
                "cause_address": record.cause_address,
                "cause_messages": list(record.cause_messages),
                "at_ms": record.at_ms,
            }
        case Take():
            body = {
                "kind": "take",
                "generation": record.generation,
                "checkpoint": record.checkpoint,
                "segment": record.segment,
                "full": record.full,
            }
        case Part():
            body = {
                "kind": "part",
                "generation": record.generation,
                "checkpoint": record.checkpoint,
                "member": record.member,
                "locations": [[p, _location_out(loc)] for p, loc in record.locations.items()],
                "ingress": _ingress_out(record.ingress),
                "releases": record.releases,
                "size_bytes": record.size_bytes,
                "addresses": record.addresses,
            }
        case Manifest():
            body = {
                "kind": "manifest",
                "generation": record.generation,
                "checkpoint": record.checkpoint,
                "created_ms": record.created_ms,
                "duration_ms": record.duration_ms,
                "chains": [
                    [p, [_location_out(loc) for loc in chain]] for p, chain in record.chains.items()
                ],
                "ingress": _ingress_out(record.ingress),
                "size_bytes": record.size_bytes,
                "addresses": record.addresses,
                "released": record.released,
            }
        case Fail():
            body = {
                "kind": "fail",
                "generation": record.generation,
                "member": record.member,
                "reason": record.reason,
                "cause_address": record.cause_address,
                "cause_messages": list(record.cause_messages),
                "cause": record.cause,
            }
        case Published():
            body = {
                "kind": "published",
                "generation": record.generation,
                "checkpoint": record.checkpoint,
                "partitions": list(record.partitions),
            }
        case Pause():
            body = {"kind": "pause", "function_type": record.function_type, "paused": record.paused}
        case Mark():
            body = {"kind": "mark", "dead_letter": record.dead_letter, "status": record.status}
        case Moved():
            body = {
                "kind": "moved",
                "epoch": record.epoch,
                "snapshot": record.snapshot,
                "as_of": record.as_of,
            }
        case Snapshot():
            body = {
                "kind": "snapshot",
                "epoch": record.epoch,
                "as_of": record.as_of,
                "state": _state_out(record.state),
            }
    return body


def _state_out(s: ClusterState) -> dict[str, Any]:
    return {
        "generation": s.generation,
        "begin": None if s.begin is None else _body(s.begin),
        "begin_offset": s.begin_offset,
        "module": s.module,
        "rolled_back_to": [[g, c] for g, c in s.rolled_back_to.items()],
        "manifests": [_body(m) for m in s.manifests],
        "segments": [[c, segment] for c, segment in s.segments.items()],
        "highest_checkpoint": s.highest_checkpoint,
        "highest_segment": s.highest_segment,
        "take": None if s.take is None else _body(s.take),
        "parts": [_body(part) for part in s.parts.values()],
        "failure": None if s.failure is None else _body(s.failure),
        "published": [[p, c] for p, c in s.published.items()],
        "paused": sorted(s.paused),
        "marks": [[d, status] for d, status in s.marks.items()],
        "void_records": s.void_records,
        "history": [_body(b) for b in s.history],
    }


def _record_in(raw: Any, kind: type[R]) -> R:
    record = _decode_body(raw)
    if not isinstance(record, kind):
        raise MalformedDecision(f"a {kind.__name__} was expected, not {record}")
    return record


def _optional_record_in(raw: Any, kind: type[R]) -> R | None:
    return None if raw is None else _record_in(raw, kind)


def _state_in(b: dict[str, Any]) -> ClusterState:
    parts = [_record_in(raw, Part) for raw in b["parts"]]
    return ClusterState(
        generation=int(b["generation"]),
        begin=_optional_record_in(b["begin"], Begin),
        begin_offset=None if b["begin_offset"] is None else int(b["begin_offset"]),
        module=_optional_str(b["module"]),
        rolled_back_to={int(g): int(c) for g, c in b["rolled_back_to"]},
        manifests=[_record_in(raw, Manifest) for raw in b["manifests"]],
        segments={int(c): int(segment) for c, segment in b["segments"]},
        highest_checkpoint=int(b["highest_checkpoint"]),
        highest_segment=int(b["highest_segment"]),
        take=_optional_record_in(b["take"], Take),
        parts={part.member: part for part in parts},
        failure=_optional_record_in(b["failure"], Fail),
        published={int(p): int(c) for p, c in b["published"]},
        paused={str(t) for t in b["paused"]},
        marks={int(d): str(status) for d, status in b["marks"]},
        void_records=int(b["void_records"]),
        history=[_record_in(raw, Begin) for raw in b.get("history", [])],
    )


def _decode_body(b: dict[str, Any]) -> DecisionRecord:
    kind = b["kind"]
    if kind == "begin":
        return Begin(
            int(b["generation"]),
            str(b["coordinator"]),
            int(b["view"]),
            {int(p): str(m) for p, m in b["owners"]},
            _ingress_in(b["ingress_owners"], str),
            {str(m): str(url) for m, url in b["members"]},
            str(b["module"]),
            str(b["reason"]),
            _optional_str(b["cause_address"]),
            tuple(str(m) for m in b["cause_messages"]),
            int(b.get("at_ms", 0)),
        )
    if kind == "take":
        return Take(int(b["generation"]), int(b["checkpoint"]), int(b["segment"]), bool(b["full"]))
    if kind == "part":
        return Part(
            int(b["generation"]),
            int(b["checkpoint"]),
            str(b["member"]),
            {int(p): _location_in(loc) for p, loc in b["locations"]},
            _ingress_in(b["ingress"], int),
            bool(b["releases"]),
            int(b["size_bytes"]),
            int(b["addresses"]),
        )
    if kind == "manifest":
        return Manifest(
            int(b["generation"]),
            int(b["checkpoint"]),
            int(b["created_ms"]),
            int(b["duration_ms"]),
            {int(p): tuple(_location_in(loc) for loc in chain) for p, chain in b["chains"]},
            _ingress_in(b["ingress"], int),
            int(b["size_bytes"]),
            int(b["addresses"]),
            _optional_str(b["released"]),
        )
    if kind == "fail":
        return Fail(
            int(b["generation"]),
            str(b["member"]),
            str(b["reason"]),
            _optional_str(b["cause_address"]),
            tuple(str(m) for m in b["cause_messages"]),
            str(b.get("cause", "other")),
        )
    if kind == "published":
        return Published(
            int(b["generation"]), int(b["checkpoint"]), tuple(int(p) for p in b["partitions"])
        )
    if kind == "pause":
        return Pause(str(b["function_type"]), bool(b["paused"]))
    if kind == "mark":
        return Mark(int(b["dead_letter"]), str(b["status"]))
    if kind == "moved":
        return Moved(int(b["epoch"]), int(b["snapshot"]), int(b["as_of"]))
    if kind == "snapshot":
        return Snapshot(int(b["epoch"]), int(b["as_of"]), _state_in(b["state"]))
    raise MalformedDecision(f"unknown decision kind {kind!r}")


def decode(value: bytes) -> DecisionRecord:
    """The record :func:`encode` made; :class:`MalformedDecision` if it is none."""
    try:
        body = msgpack.unpackb(value, raw=False)
        if not isinstance(body, dict):
            raise MalformedDecision(f"a decision is a map, not {type(body).__name__}")
        return _decode_body(body)
    except MalformedDecision:
        raise
    except Exception as e:  # whatever msgpack or a missing or mistyped field raises
        raise MalformedDecision(f"not a decision: {type(e).__name__}: {e}") from None


# --- the fold ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effect:
    """What the fold made of the record at ``offset``: applied, or void (and why)."""

    offset: int
    record: DecisionRecord
    void: str | None = None

    @property
    def applied(self) -> bool:
        return self.void is None


@dataclass(slots=True)
class ClusterState:
    """Everything the decision log has decided so far, as of offset ``position``."""

    retain: int = 3
    """How many of the newest valid manifests to keep (their chains bound what segments
    of the partition store are still needed)."""
    position: int = 0
    """The position of the next record to fold in the log's one total order (across its
    epochs: the topic offset in epoch 1)."""
    generation: int = 0
    """The current generation (0: none has begun)."""
    begin: Begin | None = None
    """The current generation's Begin."""
    begin_offset: int | None = None
    module: str | None = None
    """The application's module fingerprint: the first valid Begin's."""
    rolled_back_to: dict[int, int] = field(default_factory=dict)
    """Generation -> the checkpoint it was rolled back to (0: none), for the SkipRule."""
    manifests: list[Manifest] = field(default_factory=list)
    """The newest ``retain`` valid manifests, oldest first."""
    segments: dict[int, int] = field(default_factory=dict)
    """Committed checkpoint -> the segment its parts were written to, for the checkpoints
    the retained manifests' chains name."""
    highest_checkpoint: int = 0
    """The highest checkpoint of any valid Take: the next take and a new generation's
    first epoch are above it."""
    highest_segment: int = 0
    """The highest segment of any valid Take."""
    take: Take | None = None
    """The take in progress: valid, neither committed nor superseded."""
    parts: dict[str, Part] = field(default_factory=dict)
    """The parts received for the take in progress, by member."""
    failure: Fail | None = None
    """The first Fail of the current generation, if any."""
    published: dict[int, int] = field(default_factory=dict)
    """Messages partition -> the checkpoint its egress is published through."""
    paused: set[str] = field(default_factory=set)
    marks: dict[int, str] = field(default_factory=dict)
    """Dead letter -> its mark."""
    void_records: int = 0
    history: list[Begin] = field(default_factory=list)
    """The newest ``HISTORY`` Begins that rolled a generation back, oldest first (each
    rolled generation ``generation - 1`` back to ``rolled_back_to[generation - 1]``)."""
    epoch: int = 1
    """The decision log's epoch: its records are in topic ``<decisions>-<epoch>``."""
    epoch_base: int = 0
    """The position of the epoch's first record (its Snapshot; 0 in epoch 1)."""
    last_applied: int = -1
    """The position of the last record applied (a Moved is valid only if its snapshot
    holds it)."""
    moving: Moved | None = None
    """The valid Moved that ended this epoch, until its Snapshot is folded."""

    @property
    def epoch_records(self) -> int:
        """How many records of the total order this epoch holds so far."""
        return self.position - self.epoch_base

    @property
    def manifest(self) -> Manifest | None:
        """The last valid manifest: what a rollback goes back to."""
        return self.manifests[-1] if self.manifests else None

    @property
    def coordinator(self) -> str | None:
        return None if self.begin is None else self.begin.coordinator

    def owners(self) -> frozenset[str]:
        """The members whose parts every checkpoint of this generation needs."""
        if self.begin is None:
            return frozenset()
        return frozenset(self.begin.owners.values()) | frozenset(self.begin.ingress_owners.values())

    def partitions_of(self, member: str) -> frozenset[int]:
        if self.begin is None:
            return frozenset()
        return frozenset(p for p, m in self.begin.owners.items() if m == member)

    def ingress_of(self, member: str) -> frozenset[IngressPartition]:
        if self.begin is None:
            return frozenset()
        return frozenset(tp for tp, m in self.begin.ingress_owners.items() if m == member)

    @property
    def take_complete(self) -> bool:
        """Whether every owner's part of the take in progress is in."""
        return self.take is not None and self.owners() <= self.parts.keys()

    def chain_length(self) -> int:
        """The longest chain of the last manifest (1: every partition's newest location
        is full; 0: no manifest)."""
        manifest = self.manifest
        if manifest is None:
            return 0
        return max((len(chain) for chain in manifest.chains.values()), default=0)

    def chain_segment(self) -> int | None:
        """The segment the last manifest's chains are in (where deltas go), if any."""
        needed = [self.segments[loc.checkpoint] for loc in self._chain_locations(self.manifest)]
        return max(needed, default=None)

    def needed_segment(self) -> int:
        """The lowest segment a retained manifest reads: every segment below it may go."""
        needed = [
            self.segments[loc.checkpoint]
            for m in self.manifests
            for loc in self._chain_locations(m)
        ]
        return min(needed, default=0)

    @staticmethod
    def _chain_locations(manifest: Manifest | None) -> list[PartitionLocation]:
        if manifest is None:
            return []
        return [loc for chain in manifest.chains.values() for loc in chain]

    def skip_rule(self) -> SkipRule:
        """Which tagged records of the messages log the current generation processes."""
        return SkipRule(self.generation, self.rolled_back_to)


def fold(state: ClusterState, offset: int, record: DecisionRecord) -> Effect:
    """Apply the record at ``offset`` to ``state`` (in place) by the fencing rules of the
    module docstring; what it made of it. Deterministic: no clock, no I/O."""
    if offset < state.position:
        raise ValueError(f"decision {offset} folded after {state.position - 1}")
    state.position = offset + 1
    why = _void(state, record)
    if why is not None:
        state.void_records += 1
        return Effect(offset, record, why)
    _apply(state, offset, record)
    state.last_applied = offset
    return Effect(offset, record)


def snapshot_of(state: ClusterState) -> Snapshot:
    """The Snapshot that starts the epoch after ``state``'s, as of its position (a copy:
    folding on changes neither)."""
    return Snapshot(state.epoch + 1, state.position, _state_in(_state_out(state)))


def resume(snapshot: Snapshot, position: int, *, retain: int = 3) -> ClusterState:
    """The fold of a member that starts from ``snapshot``, the valid first record of its
    epoch, at ``position``: equal to the fold of one that folded every record before."""
    state = ClusterState(retain=retain, position=position + 1)
    _adopt(state, snapshot, check=False)
    _begin_epoch(state, position, snapshot)
    return state


_SNAPSHOT_FIELDS = (
    "generation",
    "begin",
    "begin_offset",
    "module",
    "rolled_back_to",
    "manifests",
    "segments",
    "highest_checkpoint",
    "highest_segment",
    "take",
    "parts",
    "failure",
    "published",
    "paused",
    "marks",
    "void_records",
    "history",
)
"""What a Snapshot holds: every field of the fold but the bookkeeping of positions and
epochs (and ``retain``, a member's setting)."""


def _adopt(s: ClusterState, snapshot: Snapshot, *, check: bool) -> None:
    """Make ``s`` hold what ``snapshot`` holds. A field already equal keeps its object: a
    member compares the current Begin by identity to see whether a newer one came."""
    for name in _SNAPSHOT_FIELDS:
        mine, theirs = getattr(s, name), getattr(snapshot.state, name)
        if mine == theirs:
            continue
        # Void records between the snapshot and its Moved change only the count.
        if check and name != "void_records":
            log.error(
                "the snapshot of epoch %d differs from this member's fold in %s: "
                "going on from the snapshot, as every member starting from it does",
                snapshot.epoch,
                name,
            )
        setattr(s, name, copy.deepcopy(theirs))
    del s.manifests[: -s.retain]


def _begin_epoch(s: ClusterState, position: int, snapshot: Snapshot) -> None:
    s.epoch, s.epoch_base, s.moving, s.last_applied = snapshot.epoch, position, None, position


def _void(s: ClusterState, r: DecisionRecord) -> str | None:
    """Why ``r`` is void in state ``s``, or None if it applies."""
    if s.moving is not None:
        if isinstance(r, Snapshot) and (r.epoch, r.as_of) == (s.moving.epoch, s.moving.as_of):
            return None
        return f"the decision log moved to epoch {s.moving.epoch} before it"
    if isinstance(r, Snapshot):
        return f"no valid move to epoch {r.epoch} names it"
    if isinstance(r, Moved):
        if r.epoch != s.epoch + 1:
            return f"epoch {r.epoch} does not follow the current {s.epoch}"
        if r.as_of <= s.last_applied:
            return f"its snapshot (as of {r.as_of}) misses decision {s.last_applied}"
        if r.as_of >= s.position:
            return f"its snapshot (as of {r.as_of}) is of a later position"
        return None
    if isinstance(r, Pause | Mark):
        return None
    if isinstance(r, Begin):
        if r.generation <= s.generation:
            return f"generation {r.generation} is not above the current {s.generation}"
        if s.module is not None and r.module != s.module:
            return f"module {r.module} is not the application's {s.module}"
        strangers = {r.coordinator, *r.owners.values(), *r.ingress_owners.values()} - set(r.members)
        if strangers:
            return f"names members it does not list: {sorted(strangers)}"
        return None
    if r.generation != s.generation:
        return f"generation {r.generation} is not the current {s.generation}"
    if isinstance(r, Take):
        if r.checkpoint <= s.highest_checkpoint:
            return f"checkpoint {r.checkpoint} is not above {s.highest_checkpoint}, taken before"
        return None
    if isinstance(r, Part):
        return _void_part(s, r)
    if isinstance(r, Manifest):
        if s.take is None or r.checkpoint != s.take.checkpoint:
            return f"checkpoint {r.checkpoint} is not the take in progress"
        if not s.take_complete:
            return (
                f"checkpoint {r.checkpoint} misses parts of {sorted(s.owners() - s.parts.keys())}"
            )
        return None
    if isinstance(r, Published):
        last = s.manifest
        if last is None or r.checkpoint > last.checkpoint:
            return f"checkpoint {r.checkpoint} is not committed"
        return None
    return None  # a Fail of the current generation


def _void_part(s: ClusterState, r: Part) -> str | None:
    if s.take is None or r.checkpoint != s.take.checkpoint:
        return f"checkpoint {r.checkpoint} is not the take in progress"
    if r.member in s.parts:
        return f"member {r.member} wrote its part of checkpoint {r.checkpoint} before"
    if r.member not in s.owners():
        return f"member {r.member} owns nothing in generation {s.generation}"
    owned = s.partitions_of(r.member)
    if not r.locations.keys() <= owned or not r.ingress.keys() <= s.ingress_of(r.member):
        return f"member {r.member} names partitions it does not own"
    if any(loc.checkpoint != r.checkpoint or loc.partition != p for p, loc in r.locations.items()):
        return f"member {r.member} names locations of another checkpoint or partition"
    chains = {} if s.manifest is None else s.manifest.chains
    if any(not loc.full and not chains.get(p) for p, loc in r.locations.items()):
        return f"member {r.member} wrote a delta of a partition that has no full snapshot"
    # A full take may still get a delta of a partition with a chain: a member that took
    # its snapshot early (the epoch rule) before it read the take writes it full later.
    if s.take.full and r.locations.keys() != owned:
        return f"member {r.member} left partitions out of a full checkpoint"
    return None


def _apply(s: ClusterState, offset: int, r: DecisionRecord) -> None:
    match r:
        case Begin():
            if s.begin is not None:
                last = s.manifest
                s.rolled_back_to[s.generation] = 0 if last is None else last.checkpoint
                s.history.append(r)
                del s.history[:-HISTORY]
            if s.module is None:
                s.module = r.module
            s.generation, s.begin, s.begin_offset = r.generation, r, offset
            s.take, s.parts, s.failure = None, {}, None
        case Take():
            s.take, s.parts = r, {}
            s.highest_checkpoint = r.checkpoint
            s.highest_segment = max(s.highest_segment, r.segment)
        case Part():
            s.parts[r.member] = r
        case Manifest():
            assert s.take is not None  # _void checked it
            s.segments[r.checkpoint] = s.take.segment
            s.manifests.append(r)
            del s.manifests[: -s.retain]
            named = {
                loc.checkpoint for m in s.manifests for loc in ClusterState._chain_locations(m)
            }
            s.segments = {c: seg for c, seg in s.segments.items() if c in named}
            s.take, s.parts = None, {}
        case Fail():
            if s.failure is None:
                s.failure = r
        case Published():
            for p in r.partitions:
                s.published[p] = max(s.published.get(p, 0), r.checkpoint)
        case Pause():
            if r.paused:
                s.paused.add(r.function_type)
            else:
                s.paused.discard(r.function_type)
        case Mark():
            s.marks[r.dead_letter] = r.status
        case Moved():
            s.moving = r
        case Snapshot():
            _adopt(s, r, check=True)
            _begin_epoch(s, offset, r)


def next_manifest(state: ClusterState, created_ms: int, duration_ms: int) -> Manifest:
    """The manifest that commits the (complete) take in progress: each partition's chain
    is the last manifest's plus the partition's new location, or only the new location if
    it is full; a partition without a new location keeps its chain."""
    take, begin = state.take, state.begin
    if take is None or begin is None or not state.take_complete:
        raise ValueError("no complete take to commit")
    previous = state.manifest
    chains: dict[int, tuple[PartitionLocation, ...]] = dict(previous.chains) if previous else {}
    ingress: dict[IngressPartition, int] = dict(previous.ingress) if previous else {}
    for p, member in begin.owners.items():
        loc = state.parts[member].locations.get(p)
        if loc is not None:
            chains[p] = (loc,) if loc.full else (*chains.get(p, ()), loc)
    parts = [state.parts[m] for m in sorted(state.owners())]
    for part in parts:
        ingress.update(part.ingress)
    released = [part.member for part in parts if part.releases]
    return Manifest(
        take.generation,
        take.checkpoint,
        created_ms,
        duration_ms,
        chains,
        ingress,
        sum(part.size_bytes for part in parts),
        sum(part.addresses for part in parts),
        ",".join(released) if released else None,
    )


# --- the log ---------------------------------------------------------------------------

Listener = Callable[[Effect], None]

DEFAULT_EPOCH_RECORDS = 2000
"""Records of the total order an epoch holds before the coordinator moves the log on."""
_KEEP = {"retention.ms": "-1"}
"""Kafka must keep every decision of an epoch: its fold starts from the first record."""
_TAIL_WAIT = 1.0
"""Seconds a tail poll waits for records (it returns as soon as some land)."""
_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0
"""Backoff of the tail after a failed poll, doubling up to the max."""


@dataclass(frozen=True, slots=True)
class EpochStart:
    """A record of the pointer topic: epoch ``epoch`` starts with the Snapshot at offset
    ``snapshot`` of its topic, at position ``position`` of the total order."""

    epoch: int
    snapshot: int
    position: int

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            {"epoch": self.epoch, "snapshot": self.snapshot, "position": self.position}
        )
        return packed

    @staticmethod
    def decode(value: bytes) -> EpochStart:
        try:
            b = msgpack.unpackb(value, raw=False)
            return EpochStart(int(b["epoch"]), int(b["snapshot"]), int(b["position"]))
        except Exception as e:  # whatever msgpack or a missing or mistyped field raises
            raise LogError(
                f"not a decision log epoch pointer: {type(e).__name__}: {e} "
                "(a topic of an older version of the runtime?)"
            ) from None


_FIRST_EPOCH = EpochStart(1, 0, 0)


class DecisionLog:
    """The fold of a decision log, kept up to date: :meth:`open`, then read
    :attr:`state`, :meth:`append` decisions and :meth:`subscribe` to what the fold
    makes of every record.

    Epochs: the records live in topic ``<topic>-<epoch>``; the one-partition topic
    ``<topic>`` says where each epoch starts (:class:`EpochStart`). Once an epoch holds
    ``epoch_records`` records, the coordinator calls :meth:`move`: it appends a
    :class:`Snapshot` of the fold to the next epoch's topic, then a :class:`Moved`
    naming it to the current one: the decision. The fold ends the epoch at a valid
    Moved, and goes on from the Snapshot it names; a member that starts reads the
    pointer, then only the newest epoch from its Snapshot on."""

    def __init__(
        self, log_: Log, topic: str, *, retain: int = 3, epoch_records: int = DEFAULT_EPOCH_RECORDS
    ):
        if epoch_records < 1:
            raise ValueError(f"epoch_records must be at least 1, not {epoch_records}")
        self._log = log_
        self.topic = topic
        """The pointer topic: where each epoch starts."""
        self.epoch_records = epoch_records
        self._retain = retain
        self._tp = TopicPartition(self.epoch_topic(1), 0)
        """The partition of the epoch being read."""
        self._shift = 0
        """Position minus topic offset in the epoch being read."""
        self._ends: dict[str, int] = {}
        """Epoch topic -> the offset of its valid Moved: nothing after it is read."""
        self._next: Moved | None = None
        """A valid Moved folded, the reading not yet moved to its epoch."""
        self._state = ClusterState(retain=retain)
        self._listeners: list[Listener] = []
        self._observers: list[dict[tuple[str, int], Effect]] = []
        self._consumer: LogConsumer | None = None
        self._tail: asyncio.Task[None] | None = None
        self._advanced: asyncio.Future[None] | None = None

    def epoch_topic(self, epoch: int) -> str:
        """The topic of the decisions of ``epoch``."""
        return f"{self.topic}-{epoch}"

    @property
    def state(self) -> ClusterState:
        """The fold so far. Read it; never change it."""
        return self._state

    async def open(self) -> None:
        """Create the topics if missing, fold the newest epoch from its Snapshot (or the
        first from its start) to its end, then tail it."""
        await self._log.ensure_topic(self.topic, 1, _KEEP)
        start = await self._newest_epoch()
        topic = self.epoch_topic(start.epoch)
        await self._log.ensure_topic(topic, 1, _KEEP)
        self._tp = TopicPartition(topic, 0)
        if start == _FIRST_EPOCH:
            (first,) = await self._log.start_offsets(topic)
            if first > 0:
                raise LogError(
                    f"the decision log {topic} lost its first {first} records: "
                    "the fold needs every decision"
                )
            at = 0
        else:
            found = await self._log.read(topic, 0, start.snapshot, 1)
            snapshot = None if not found else decode(found[0].value)
            if not isinstance(snapshot, Snapshot) or snapshot.epoch != start.epoch:
                raise LogError(
                    f"the decision log {self.topic} says epoch {start.epoch} starts at offset "
                    f"{start.snapshot} of {topic}, but no snapshot of it is there"
                )
            self._state = resume(snapshot, start.position, retain=self._retain)
            at = start.snapshot + 1
        self._shift = self._state.position - at
        self._advanced = asyncio.get_running_loop().create_future()
        self._consumer = self._log.consumer()
        self._consumer.assign({self._tp: at})
        await self._read_to_end()
        log.info(
            "decision log %s read to position %d (epoch %d, %d records): generation %d, "
            "last checkpoint %s",
            self.topic,
            self._state.position,
            self._state.epoch,
            self._state.epoch_records,
            self._state.generation,
            None if self._state.manifest is None else self._state.manifest.checkpoint,
        )
        self._tail = asyncio.create_task(self._run_tail(), name=f"decisions-{self.topic}")

    async def _newest_epoch(self) -> EpochStart:
        """The newest epoch the pointer topic names (the first if it names none)."""
        newest, offset = _FIRST_EPOCH, 0
        while records := await self._log.read(self.topic, 0, offset):
            for stored in records:
                start = EpochStart.decode(stored.value)
                if start.epoch > newest.epoch:
                    newest = start
            offset = records[-1].offset + 1
        return newest

    async def _read_to_end(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            tp = self._tp
            (end,) = await self._log.end_offsets(tp.topic)
            while self._tp == tp and self._next is None and consumer.position(tp) < end:
                self._fold(await consumer.poll(_TAIL_WAIT))
            if self._next is None:
                return
            await self._follow()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every effect from now on, in log order, right after the
        fold of its record; returns what unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def append(self, record: DecisionRecord) -> int:
        """Append the record; its position in the total order, once it is folded."""
        return (await self.decide(record)).offset

    async def decide(self, record: DecisionRecord) -> Effect:
        """Append the record and return what the fold made of it. A record that lands in
        an epoch after its Moved (the log moved meanwhile) is appended again to the next:
        a late record, judged by its new place."""
        if isinstance(record, Moved | Snapshot):
            raise ValueError("moves are made by move()")
        while True:
            effects = await self._place([record])
            if effects is not None:
                return effects[0]
            log.debug("decision appended after the move of epoch %d: again", self._state.epoch)

    async def decide_all(self, records: Sequence[DecisionRecord]) -> list[Effect] | None:
        """Append the records at once, in order, and return what the fold made of each.
        Another writer's record may land between them; the fold judges each by its place,
        as it does records appended one by one. None if any landed after the epoch's
        Moved (nobody folds those); unlike :meth:`decide`, they are not appended again."""
        if any(isinstance(record, Moved | Snapshot) for record in records):
            raise ValueError("moves are made by move()")
        return await self._place(records)

    async def move(self) -> bool:
        """Move the decision log to the next epoch (see the class docstring); whether
        this call moved it. Old epochs' topics are deleted: every one below the epoch
        before the new one (a member still reading those is a whole epoch behind)."""
        state = self._state
        if state.moving is not None or self._next is not None:
            return False
        snapshot, records = snapshot_of(state), state.epoch_records
        topic = self.epoch_topic(snapshot.epoch)
        await self._log.ensure_topic(topic, 1, _KEEP)
        (offset,) = await self._log.append(topic, 0, [Record(encode(snapshot))])
        effects = await self._place([Moved(snapshot.epoch, offset, snapshot.as_of)])
        effect = None if effects is None else effects[0]
        if effect is None or not effect.applied:
            # Its snapshot stays in the new topic unread: a later move appends another.
            log.info(
                "move to epoch %d void: %s",
                snapshot.epoch,
                "another move came first" if effect is None else effect.void,
            )
            return False
        start = EpochStart(snapshot.epoch, offset, effect.offset + 1)
        # A starting member that reads an older pointer follows the Moved records.
        await self._log.append(self.topic, 0, [Record(start.encode())])
        log.info(
            "decision log %s moved to epoch %d at position %d (%d records in epoch %d)",
            self.topic,
            start.epoch,
            start.position,
            records,
            start.epoch - 1,
        )
        await self._drop_epochs_below(start.epoch - 1)
        return True

    async def _drop_epochs_below(self, epoch: int) -> None:
        prefix = f"{self.topic}-"
        try:
            for topic in await self._log.list_topics():
                suffix = topic.removeprefix(prefix)
                if topic.startswith(prefix) and suffix.isdigit() and int(suffix) < epoch:
                    await self._log.delete_topic(topic)
                    log.debug("decision log epoch topic %s deleted", topic)
        except LogError as e:
            log.warning("deleting decision log epochs below %d failed: %s", epoch, e)

    async def _place(self, records: Sequence[DecisionRecord]) -> list[Effect] | None:
        """Append the records at once to the epoch being read; what the fold made of
        each, or None if any landed after the epoch's Moved (so nobody folds it)."""
        seen: dict[tuple[str, int], Effect] = {}
        # Watching from before the append: the fold may reach the records before the
        # append's future tells their offsets.
        self._observers.append(seen)
        try:
            if self._tail is None:
                raise LogError(f"the decision log {self.topic} is not open")
            while self._next is not None:  # appending to an epoch known to be over
                await self._next_fold()
            topic = self._tp.topic
            offsets = await self._log.append(topic, 0, [Record(encode(r)) for r in records])
            while (topic, offsets[-1]) not in seen:
                end = self._ends.get(topic)
                if end is not None and offsets[-1] > end:
                    return None
                await self._next_fold()
            return [seen[topic, offset] for offset in offsets]
        finally:
            # By identity: observers that saw the same records are equal dicts, and
            # list.remove would take another caller's, leaving it deaf to its own record.
            self._observers = [o for o in self._observers if o is not seen]

    async def wait(self, predicate: Callable[[ClusterState], bool]) -> None:
        """Return once ``predicate(state)`` holds (checked now and after every fold)."""
        while not predicate(self._state):
            await self._next_fold()

    async def _next_fold(self) -> None:
        advanced = self._advanced
        if advanced is None or self._tail is None:
            raise LogError(f"the decision log {self.topic} is not open")
        await asyncio.shield(advanced)

    async def close(self) -> None:
        if self._tail is not None:
            self._tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail
            self._tail = None
        if self._advanced is not None and not self._advanced.done():
            self._advanced.set_exception(LogError(f"the decision log {self.topic} is closed"))
            self._advanced.exception()  # retrieved: nobody may be waiting
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None

    async def _run_tail(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        backoff = _RETRY_FIRST
        try:
            while True:
                try:
                    if self._next is not None:
                        await self._follow()
                        continue
                    batch = await consumer.poll(_TAIL_WAIT)
                except LogError as e:
                    log.warning("reading the decision log %s failed: %s", self._tp.topic, e)
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, _RETRY_MAX)
                    continue
                backoff = _RETRY_FIRST
                if batch:
                    self._fold(batch)
        except Exception as e:
            # A fold that cannot go on must not leave anyone waiting for it forever.
            log.exception("the decision log %s stopped", self.topic)
            if self._advanced is not None and not self._advanced.done():
                self._advanced.set_exception(
                    LogError(f"the decision log {self.topic} stopped: {e}")
                )
                self._advanced.exception()
            raise

    async def _follow(self) -> None:
        """Read on from the Snapshot the valid Moved folded last names."""
        moved, consumer = self._next, self._consumer
        assert moved is not None
        assert consumer is not None
        topic = self.epoch_topic(moved.epoch)
        await self._log.ensure_topic(topic, 1, _KEEP)  # another member created it
        self._tp = TopicPartition(topic, 0)
        self._shift = self._state.position - moved.snapshot
        consumer.assign({self._tp: moved.snapshot})
        self._next = None
        self._advance()  # appends wait for the reading to move on

    def _fold(self, batch: Mapping[TopicPartition, list[StoredRecord]]) -> None:
        for stored in batch.get(self._tp, []):
            position = stored.offset + self._shift
            try:
                record = decode(stored.value)
            except MalformedDecision as e:
                # Every member reads the same bytes, so every member skips it alike.
                log.warning("decision %d skipped: %s", position, e)
                self._state.position = position + 1
                self._state.void_records += 1
                continue
            effect = fold(self._state, position, record)
            if effect.void is not None:
                log.debug("decision %d void: %s: %s", position, effect.void, record)
            for seen in self._observers:
                seen[self._tp.topic, stored.offset] = effect
            for listener in list(self._listeners):
                try:
                    listener(effect)
                except Exception:
                    log.exception("a listener of decision %d failed", position)
            if isinstance(record, Moved) and effect.applied:
                # The end of this epoch: what follows in its topic is in no total order.
                self._ends[self._tp.topic] = stored.offset
                self._next = record
                break
        self._advance()

    def _advance(self) -> None:
        if self._advanced is not None:
            self._advanced.set_result(None)
            self._advanced = asyncio.get_running_loop().create_future()
