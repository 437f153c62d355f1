"""The decision log: the total order of every cluster decision, and the one fold of it.

One single-partition topic (``<app>-decisions``) holds every decision of an
application: generations begin (``Begin``), checkpoints are taken (``Take``), members
write their parts (``Part``), checkpoints commit (``Manifest``, the commit point),
members ask for rollbacks (``Fail``), egress is published (``Published``), operators
pause function types and mark dead letters (``Pause``, ``Mark``). Every member reads
the whole topic and folds it with :func:`fold`, a deterministic function of the records
and their offsets, so every member reaches the same conclusions without talking.

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
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from runtime.checkpoints.epochs import SkipRule
from runtime.cluster.locations import PartitionLocation
from runtime.errors import LogError, MalformedDecision
from runtime.log import Log, LogConsumer, Record, StoredRecord, TopicPartition

log = logging.getLogger(__name__)

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


DecisionRecord = Begin | Take | Part | Manifest | Fail | Published | Pause | Mark


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
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


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
        )
    if kind == "published":
        return Published(
            int(b["generation"]), int(b["checkpoint"]), tuple(int(p) for p in b["partitions"])
        )
    if kind == "pause":
        return Pause(str(b["function_type"]), bool(b["paused"]))
    if kind == "mark":
        return Mark(int(b["dead_letter"]), str(b["status"]))
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
    """The offset of the next record to fold."""
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
    return Effect(offset, record)


def _void(s: ClusterState, r: DecisionRecord) -> str | None:
    """Why ``r`` is void in state ``s``, or None if it applies."""
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


# --- the log -----------------------------------------------------------------------------

Listener = Callable[[Effect], None]

_TAIL_WAIT = 1.0
"""Seconds a tail poll waits for records (it returns as soon as some land)."""
_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0
"""Backoff of the tail after a failed poll, doubling up to the max."""


class DecisionLog:
    """The fold of a decision topic, kept up to date: :meth:`open`, then read
    :attr:`state`, :meth:`append` decisions and :meth:`subscribe` to what the fold
    makes of every record."""

    def __init__(self, log_: Log, topic: str, *, retain: int = 3):
        self._log = log_
        self.topic = topic
        self._tp = TopicPartition(topic, 0)
        self._state = ClusterState(retain=retain)
        self._listeners: list[Listener] = []
        self._observers: list[dict[int, Effect]] = []
        self._consumer: LogConsumer | None = None
        self._tail: asyncio.Task[None] | None = None
        self._advanced: asyncio.Future[None] | None = None

    @property
    def state(self) -> ClusterState:
        """The fold so far. Read it; never change it."""
        return self._state

    async def open(self) -> None:
        """Create the topic if missing, fold it to its end, then tail it."""
        # Kafka must keep every decision: the fold starts from the first Begin.
        await self._log.ensure_topic(self.topic, 1, {"retention.ms": "-1"})
        (start,) = await self._log.start_offsets(self.topic)
        (end,) = await self._log.end_offsets(self.topic)
        if start > 0:
            raise LogError(
                f"the decision log {self.topic} lost its first {start} records: "
                "the fold needs every decision"
            )
        self._advanced = asyncio.get_running_loop().create_future()
        self._consumer = self._log.consumer()
        self._consumer.assign({self._tp: 0})
        while self._state.position < end:
            self._fold(await self._consumer.poll(_TAIL_WAIT))
        log.info(
            "decision log %s read to %d: generation %d, last checkpoint %s",
            self.topic,
            end,
            self._state.generation,
            None if self._state.manifest is None else self._state.manifest.checkpoint,
        )
        self._tail = asyncio.create_task(self._run_tail(), name=f"decisions-{self.topic}")

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every effect from now on, in log order, right after the
        fold of its record; returns what unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def append(self, record: DecisionRecord) -> int:
        """Append the record; its offset, once it is durable (not yet folded)."""
        if self._tail is None:
            raise LogError(f"the decision log {self.topic} is not open")
        (offset,) = await self._log.append(self.topic, 0, [Record(encode(record))])
        return offset

    async def decide(self, record: DecisionRecord) -> Effect:
        """Append the record and return what the fold made of it."""
        seen: dict[int, Effect] = {}
        # Watching from before the append: the fold may reach the record before the
        # append's future tells its offset.
        self._observers.append(seen)
        try:
            offset = await self.append(record)
            while offset not in seen:
                await self._next_fold()
            return seen[offset]
        finally:
            self._observers.remove(seen)

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
                    batch = await consumer.poll(_TAIL_WAIT)
                except LogError as e:
                    log.warning("reading the decision log %s failed: %s", self.topic, e)
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

    def _fold(self, batch: Mapping[TopicPartition, list[StoredRecord]]) -> None:
        for stored in batch.get(self._tp, []):
            try:
                record = decode(stored.value)
            except MalformedDecision as e:
                # Every member reads the same bytes, so every member skips it alike.
                log.warning("decision %d skipped: %s", stored.offset, e)
                self._state.position = stored.offset + 1
                self._state.void_records += 1
                continue
            effect = fold(self._state, stored.offset, record)
            if effect.void is not None:
                log.debug("decision %d void: %s: %s", stored.offset, effect.void, record)
            for seen in self._observers:
                seen[stored.offset] = effect
            for listener in list(self._listeners):
                try:
                    listener(effect)
                except Exception:
                    log.exception("a listener of decision %d failed", stored.offset)
        if self._advanced is not None:
            self._advanced.set_result(None)
            self._advanced = asyncio.get_running_loop().create_future()
