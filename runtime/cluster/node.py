"""A cluster member: one runtime process of an application that runs on several, over Kafka.

Every ``statefun run --kafka B --app-id X`` process is a member of application X
(:class:`ClusterRuntime`). Kafka's consumer group decides who is in the application and
who coordinates (``runtime.cluster.membership``); the decision log decides everything
else, in one total order every member folds alike (``runtime.cluster.decisions``): which
generation runs, who owns which partition in it, which checkpoint is taken and which is
committed. A member acts on what the fold says, never on what it believes.

A generation, on every member: a valid ``Begin`` ends the one before (whatever it was
doing), and the member restores exactly the partitions the Begin gives it, from the
chains of the last valid manifest before the Begin (``runtime.cluster.partition_store``),
then runs a worker on them, the Kafka ingress partitions it owns, and its egress outbox.

A checkpoint n, on every member that owns something: the local snapshot of epoch n is
captured in one synchronous step (state changed since the last commit this member knows,
or all of it when the take asks for a full snapshot; pending inputs, timers, read
positions, egress not yet out and idempotency keys, each cut per messages partition),
the epoch advances, the snapshot is written to the partition store and a ``Part`` names
where. The coordinator commits with a ``Manifest`` once every owner's part is in. The
epoch rule: a worker about to read a record of a later epoch of its generation captures
its snapshot first (:meth:`ClusterRuntime._later_epoch`); that capture is written once
the member has read the ``Take`` it answers (which names the segment), as a delta even if
the take asked for a full snapshot: the next capture of that member is then full.

A checkpoint that does not commit is abandoned by not committing: the changes it held
stay in this member's uncommitted sets, and the next snapshot writes them again.

Failures: a member's worker that must roll back (policy ``fail``, a log failure) appends
a ``Fail``; the coordinator answers with a new Begin. A member that dies or leaves
changes the group's view, and the coordinator of the new view answers with a Begin too:
every membership change is a rollback of the whole application to its last checkpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from runtime.app import RuntimeBase, bounded_step, open_log
from runtime.checkpoints.epochs import EpochClock, Tag
from runtime.checkpoints.snapshot import (
    EGRESS_PART,
    KEYS_PART,
    WORKER_PART,
    WorkerPart,
    decode_egress_items,
    decode_state,
    decode_worker_part,
    encode_egress_items,
    encode_worker_part,
)
from runtime.checkpoints.store import ApplicationRecords, Rollback
from runtime.checkpoints.store import Manifest as StoredManifest
from runtime.cluster.as_of import PartitionsAsOf
from runtime.cluster.coordinator import ClusterCoordinator
from runtime.cluster.decisions import (
    Begin,
    DecisionLog,
    Effect,
    Fail,
    Manifest,
    Mark,
    Part,
    Pause,
    Published,
    Take,
)
from runtime.cluster.locations import PartitionLocation
from runtime.cluster.membership import Member, Membership, View
from runtime.cluster.partition_store import PartitionSnapshot, PartitionStore, RestoredPartition
from runtime.cluster.status import ClusterStatus
from runtime.config import RuntimeConfig
from runtime.dispatcher import Failure
from runtime.errors import ConfigurationError, LogError, StoreError
from runtime.idempotency import decode_floors, decode_rows, encode_floors, encode_rows
from runtime.kafka_ingress import KafkaIngressReader, open_ingress_topic
from runtime.log import Log
from runtime.progress import Progress, logged
from runtime.retention import create_topics, topic_configs, windowed_topics
from runtime.routing import Topics, address_key, partition_for
from runtime.state import AddressPage, StateStore
from statefun.address import Address, TypeName
from statefun.module_spec import ModuleSpec
from statefun.values import TypedValue

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 60.0
"""Seconds a starting member waits for a generation that includes it."""
FAIL_RETRY = 1.0
"""Seconds between attempts to append a Fail while the log refuses appends."""


def module_fingerprint(module: ModuleSpec) -> str:
    """A fingerprint of a module spec as parsed: members of one application must agree."""
    return hashlib.sha256(repr(module).encode()).hexdigest()[:16]


def member_url(config: RuntimeConfig) -> str:
    """The URL other members reach this process's ingress at, by default: its bind address,
    or the host name when it binds every interface."""
    host = config.ingress_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{config.ingress_port}"


def _stored_manifest(m: Manifest) -> StoredManifest:
    return StoredManifest(
        m.checkpoint,
        m.generation,
        m.created_ms,
        m.duration_ms,
        m.size_bytes,
        m.addresses,
        m.released,
    )


class DecisionView:
    """The members of the application as the decision log's current generation has them:
    a :class:`~runtime.cluster.peers.ClusterView` for the router and the ingress."""

    def __init__(self, me: str, decisions: DecisionLog):
        self._me = me
        self._decisions = decisions

    @property
    def me(self) -> str:
        return self._me

    def owner(self, partition: int) -> str | None:
        begin = self._decisions.state.begin
        return None if begin is None else begin.owners.get(partition)

    def url(self, member: str) -> str | None:
        begin = self._decisions.state.begin
        return None if begin is None else begin.members.get(member)

    def members(self) -> Sequence[str]:
        begin = self._decisions.state.begin
        return () if begin is None else sorted(begin.members)

    def coordinator(self) -> str | None:
        return self._decisions.state.coordinator


class ClusterRecords(ApplicationRecords):
    """The application's checkpoints, rollbacks and operators' decisions, as the decision
    log holds them."""

    def __init__(self, decisions: DecisionLog):
        self._decisions = decisions

    async def manifests(self) -> list[StoredManifest]:
        return [_stored_manifest(m) for m in self._decisions.state.manifests]

    async def rollbacks(self) -> list[Rollback]:
        """The newest rollbacks of the application (``decisions.HISTORY`` of them)."""
        state = self._decisions.state
        return [
            Rollback(
                b.generation - 1,
                state.rolled_back_to.get(b.generation - 1, 0),
                b.at_ms,
                b.reason,
                b.cause_address,
                b.cause_messages,
            )
            for b in state.history
        ]

    async def dead_letter_marks(self, offsets: Sequence[int]) -> dict[int, str]:
        marks = self._decisions.state.marks
        return {o: marks[o] for o in offsets if o in marks}

    async def mark_dead_letter(self, offset: int, status: str) -> None:
        await self._decisions.decide(Mark(offset, status))

    async def paused(self) -> set[TypeName]:
        return {TypeName.parse(t) for t in self._decisions.state.paused}

    async def set_paused(self, function_type: TypeName, paused: bool) -> None:
        await self._decisions.decide(Pause(str(function_type), paused))


@dataclass(frozen=True, slots=True)
class _Beginning:
    """A valid Begin, with what the fold said when it applied: the checkpoint it rolls
    back to and the first epoch of its generation (above every checkpoint taken before)."""

    begin: Begin
    manifest: Manifest | None
    first_epoch: int


@dataclass(slots=True)
class _Captured:
    """A local snapshot captured, waiting for its take to be read before it is written."""

    generation: int
    checkpoint: int
    full: bool
    snapshots: dict[int, PartitionSnapshot]
    ingress: dict[tuple[str, int], int]
    releases: bool
    addresses: int
    unchanged: frozenset[int]
    """Partitions whose snapshot is a delta of nothing with the parts of their committed
    chain's last link: a take that is not full leaves them out (their chains stand)."""


@dataclass(slots=True)
class _Uncommitted:
    """What changed in this member's partitions since the last commit it knows, per
    capture (dropped once a manifest covers the capture)."""

    state: list[tuple[int, set[Address]]] = field(default_factory=list)
    keys: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    parts: list[tuple[int, dict[int, dict[str, bytes]]]] = field(default_factory=list)
    """Per capture, the parts of each partition its snapshot writes unless it is
    unchanged (every partition, if a capture before it was not committed yet)."""

    def committed(self, checkpoint: int) -> dict[int, dict[str, bytes]]:
        """Drop the captures up to ``checkpoint``, now committed; the parts their
        partitions' chains now end with, as far as they changed."""
        last: dict[int, dict[str, bytes]] = {}
        for n, parts in self.parts:
            if n <= checkpoint:
                last.update(parts)
        self.state = [(n, s) for n, s in self.state if n > checkpoint]
        self.keys = [(n, k) for n, k in self.keys if n > checkpoint]
        self.parts = [(n, p) for n, p in self.parts if n > checkpoint]
        return last


class ClusterRuntime(RuntimeBase):
    """A member of a cluster application (see the module docstring)."""

    def __init__(
        self,
        config: RuntimeConfig,
        log_: Log,
        *,
        url: str,
        transport: httpx.AsyncBaseTransport | None = None,
        peer_transport: httpx.AsyncBaseTransport | None = None,
    ):
        member = f"m-{os.urandom(4).hex()}"
        decisions = DecisionLog(
            log_, Topics(config.app_id).decisions, retain=config.checkpoints.retain
        )
        super().__init__(
            config,
            log_,
            transport=transport,
            cluster=DecisionView(member, decisions),
            peer_transport=peer_transport,
        )
        self.member = Member(member, url)
        self.fingerprint = module_fingerprint(config.module)
        self.decisions = decisions
        self.partition_store = PartitionStore(log_, config.app_id, config.messages_partitions)
        self.as_of = PartitionsAsOf(
            self.partition_store, lambda: self.decisions.state.manifests, config.messages_partitions
        )
        self._records = ClusterRecords(self.decisions)
        self.membership: Membership | None = None
        self.cluster_coordinator = ClusterCoordinator(
            decisions, member, self.fingerprint, config.checkpoints
        )
        self.cluster_coordinator.on_segments_unneeded = self._drop_segments
        self.cluster_coordinator.own_part = self._own_part
        # Only the member coordinating a generation knows a checkpoint was abandoned.
        self.cluster_coordinator.on_abandon = lambda checkpoint, error: (
            self.metrics.checkpoint_abandoned()
        )
        self._failed_generation: int | None = None
        """The generation this member asked to roll back: it writes no more parts of it."""
        self._failed_in_generation: Fail | None = None
        """The first Fail of the current generation: the cause of the rollback it asks for."""
        self._view: View | None = None
        self._generation_begun: asyncio.Event = asyncio.Event()
        self._owned: tuple[int, ...] = ()
        self._target: _Beginning | None = None
        """The newest valid Begin not yet acted on."""
        self._switching: asyncio.Task[None] | None = None
        self._captured: dict[int, _Captured] = {}
        self._writing: set[asyncio.Task[None]] = set()
        self._owe_full = False
        self._committed_parts: dict[int, dict[str, bytes]] = {}
        """Partition -> the parts of the last link of its committed chain, as this
        member wrote them in this generation (a partition not written yet: unknown)."""
        self._uncommitted = _Uncommitted()
        self.early_snapshots = 0
        """Local snapshots taken by the epoch rule, before this member read their take."""
        self._last: Manifest | None = None
        self._failing: asyncio.Task[None] | None = None
        self._reconciling: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] = lambda: None
        self.health.fail("generation", "joining the application")
        log_.on_failure(self._log_failed)

    @classmethod
    async def open_member(
        cls,
        config: RuntimeConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        peer_transport: httpx.AsyncBaseTransport | None = None,
        log: Log | None = None,
    ) -> ClusterRuntime:
        """Open the log (unless given) and make a member of it; its peer URL is
        ``config.cluster.url``, or the ingress's address."""
        log_ = log if log is not None else await open_log(config)
        return cls(
            config,
            log_,
            url=config.cluster.url or member_url(config),
            transport=transport,
            peer_transport=peer_transport,
        )

    # --- what the base asks -------------------------------------------------------------

    @property
    def records(self) -> ApplicationRecords:
        return self._records

    @property
    def last_checkpoint(self) -> StoredManifest | None:
        return None if self._last is None else _stored_manifest(self._last)

    async def _mark_released(self, epoch: int, what: str) -> None:
        """Nothing to mark: a cluster checkpoint is never given up for an older one."""

    def _demand_checkpoint(self) -> None:
        """Ask the coordinator for a checkpoint soon: this member's, or over HTTP."""
        coordinator = self.decisions.state.coordinator
        if coordinator == self.member.id:
            self.cluster_coordinator.demand()
        elif coordinator is not None and self.peers is not None:
            self.peers.demand_checkpoint(coordinator)

    def checkpoint_demanded(self) -> None:
        if self.cluster_coordinator.is_coordinator():
            self.cluster_coordinator.demand()

    def _checkpoints_where(self) -> str:
        return f"Kafka topics {self.config.app_id}-checkpoints-*"

    def committed(self, tag: Tag | None) -> bool:
        if tag is None:
            return True
        clock = self.clock
        if clock is None:
            return False
        if tag.generation != clock.generation:
            return clock.skip.accepts(tag)
        last = self._last
        return (
            last is not None and last.generation == tag.generation and tag.epoch <= last.checkpoint
        )

    def unavailable(self) -> tuple[str, float] | None:
        problems = self.health.problems()
        problems.pop("generation", None)
        problems.pop("checkpoints", None)
        if not problems:
            return None
        return "; ".join(f"{c}: {r}" for c, r in problems.items()), 1.0

    def restoring(self, target: Address) -> bool:
        worker, clock = self.worker, self.clock
        return (
            worker is None
            or clock is None
            or clock.generation != self.decisions.state.generation
            or self.partition_of(target) not in self._owned
        )

    def state_of(self, address: Address) -> Mapping[str, TypedValue] | None:
        if self.restoring(address):
            return None
        assert self.worker is not None
        return self.worker.state_of(address)

    def addresses(
        self, function_type: TypeName, after: str | None, limit: int
    ) -> AddressPage | None:
        worker, clock = self.worker, self.clock
        if worker is None or clock is None or clock.generation != self.decisions.state.generation:
            return None
        return worker.state.page(function_type, after, limit)

    async def state_as_of(self, address: Address, checkpoint: int) -> Mapping[str, TypedValue]:
        stored = await self.as_of.state(
            address_key(address), self.partition_of(address), checkpoint
        )
        return {} if stored is None else decode_state(stored)[0]

    async def addresses_as_of(
        self, function_type: TypeName, after: str | None, limit: int, checkpoint: int
    ) -> AddressPage:
        return await self.as_of.page(function_type, after, limit, checkpoint)

    def cluster_status(self) -> ClusterStatus:
        status = super().cluster_status()
        # The decided generation, also while this member restores into it.
        status["generation"] = self.decisions.state.generation
        return status

    @property
    def owned(self) -> tuple[int, ...]:
        """The messages partitions this member owns in the generation it runs."""
        return self._owned

    # --- starting ---------------------------------------------------------------------

    async def start(self) -> None:
        """Join the application and return once a generation that includes this member
        runs (its partitions restored)."""
        self.history.start()
        config = self.config
        await create_topics(
            self.log,
            topic_configs(
                self.topics,
                windowed_topics(self.topics, self.module),
                config.messages_partitions,
                egress_window=config.egress_retention,
                messages_retention=config.messages_retention,
            ),
        )
        await self.egresses.start()
        await self.decisions.open()
        known = self.decisions.state.module
        if known is not None and known != self.fingerprint:
            raise ConfigurationError(
                f"this process's module differs from application {self.config.app_id}'s "
                f"(fingerprint {self.fingerprint}, the application's {known}): start every "
                "process of an application with the same module"
            )
        self._unsubscribe = self.decisions.subscribe(self._decided)
        self.cluster_coordinator.start()
        ingress_topics: dict[str, int] = {}
        for spec in self.module.ingresses:
            cluster = await self.kafka_clusters.get(
                spec.address, f"ingress {spec.id}", spec.security
            )
            for topic in spec.topics:
                ingress_topics[topic.topic] = await open_ingress_topic(
                    cluster, spec.id, topic.topic
                )
        assert self.config.kafka is not None
        self.membership = Membership(
            self.config.kafka,
            self.config.app_id,
            self.member,
            partitions=self.config.messages_partitions,
            ingress_topics=ingress_topics,
            on_view=self._view_changed,
            session_timeout=self.config.cluster.session_timeout,
            heartbeat_interval=self.config.cluster.heartbeat_interval,
            kafka_options=self.config.kafka_security,
        )
        await self.membership.start()
        try:
            async with asyncio.timeout(JOIN_TIMEOUT):
                await self._generation_begun.wait()
        except TimeoutError:
            raise ConfigurationError(
                f"no generation of application {self.config.app_id} included this process "
                f"within {JOIN_TIMEOUT:.0f} s"
            ) from None

    # --- membership -----------------------------------------------------------------------

    def _view_changed(self, view: View) -> None:
        self._view = view
        if len(view.members) > 1:
            # Others may append soon (to the decision log first): look for their records.
            self.log.sole_writer(False)
        log.info(
            "view %d: coordinator %s, members %s",
            view.number,
            view.coordinator,
            ", ".join(
                f"{m.id} ({len(view.partitions.get(m.id, ()))} partitions)" for m in view.members
            ),
        )
        self._reconcile()

    def _reconcile(self) -> None:
        """As the view's coordinator, begin a generation that matches the view unless the
        current one does (or a Begin from a newer view is in the log already)."""
        view = self._view
        if view is None or view.coordinator != self.member.id or self._stopping:
            return
        if self._reconciling is not None and not self._reconciling.done():
            return
        begin = self.decisions.state.begin
        owners = {p: m for m, ps in view.partitions.items() for p in ps}
        ingress_owners = {tp: m for m, tps in view.ingress.items() for tp in tps}
        members = {m.id: m.url for m in view.members}
        if begin is not None and (
            dict(begin.owners) == owners
            and dict(begin.members) == members
            and begin.coordinator == self.member.id
        ):
            return
        if begin is not None and begin.view > view.number and begin.coordinator in members:
            # A newer view's coordinator began it, and this member will hear of that view.
            # (Its coordinator gone from this view: the group started its numbering over.)
            return
        left = sorted(set(begin.members) - set(members)) if begin is not None else []
        joined = sorted(set(members) - set(begin.members)) if begin is not None else sorted(members)
        reason = "membership changed:" + "".join(
            [
                f" {', '.join(joined)} joined" if joined else "",
                f" {', '.join(left)} left" if left else "",
            ]
        )
        self._reconciling = asyncio.create_task(
            self._begin_generation(view, owners, ingress_owners, members, reason), name="reconcile"
        )

    async def _begin_generation(
        self,
        view: View,
        owners: Mapping[int, str],
        ingress_owners: Mapping[tuple[str, int], str],
        members: Mapping[str, str],
        reason: str,
    ) -> None:
        try:
            await self.cluster_coordinator.begin(
                view=view.number,
                owners=owners,
                ingress_owners=ingress_owners,
                members=members,
                reason=reason,
            )
        except LogError as e:
            log.warning("beginning a generation failed: %s", e)
            await asyncio.sleep(FAIL_RETRY)
        finally:
            self._reconciling = None
        self._reconcile()  # the view may have moved on, or the Begin lost a race

    # --- the decision log -------------------------------------------------------------

    def _decided(self, effect: Effect) -> None:
        if not effect.applied:
            return
        record = effect.record
        if isinstance(record, Begin):
            view = self._view
            self.log.sole_writer(
                set(record.members) == {self.member.id}
                and (view is None or [m.id for m in view.members] == [self.member.id])
            )
            if record.generation > 1:
                # Every Begin after the first rolls the application back: because a
                # member asked (its Fail said what failed), or because the members changed.
                failed = self._failed_in_generation
                self.metrics.rolled_back("membership" if failed is None else failed.cause)
            self._failed_in_generation = None
            state = self.decisions.state
            self._target = _Beginning(record, state.manifest, state.highest_checkpoint + 1)
            if self._switching is None or self._switching.done():
                self._switching = asyncio.create_task(self._switch(), name="generation-switch")
            self._reconcile()
        elif isinstance(record, Take):
            self._take(record)
        elif isinstance(record, Fail):
            if self._failed_in_generation is None:
                self._failed_in_generation = record
        elif isinstance(record, Manifest):
            self._committed_checkpoint(record)
        elif isinstance(record, Pause):
            worker = self.worker
            if worker is not None:
                function_type = TypeName.parse(record.function_type)
                if record.paused:
                    worker.dispatcher.pause(function_type)
                else:
                    worker.dispatcher.resume(function_type)

    # --- generations ------------------------------------------------------------------

    async def _switch(self) -> None:
        """Act on the newest valid Begin: end the generation running, begin that one."""
        while self._target is not None:
            beginning, self._target = self._target, None
            begin = beginning.begin
            self.health.fail(
                "generation", f"restoring its partitions for generation {begin.generation}"
            )
            await self._end_generation()
            try:
                await self._restore(beginning)
            except Exception as e:
                log.error(
                    "beginning generation %d failed: %s: %s", begin.generation, type(e).__name__, e
                )
                self.health.fail(
                    "generation", f"beginning generation {begin.generation} failed: {e}"
                )
                await self._end_generation()
                self._ask_rollback(
                    Failure(f"member {self.member.id} could not begin: {e}", cause="member"),
                    begin.generation,
                )

    async def _end_generation(self) -> None:
        for task in list(self._writing):
            task.cancel()
        for reader in self.kafka_ingresses:
            await reader.stop()
        self.kafka_ingresses = []
        if self.worker is not None:
            await self.worker.stop(drain=False)
        if self.outbox is not None:
            await self.outbox.cancel()
        self.worker = None
        self.outbox = None
        self.clock = None
        self._captured = {}
        self._committed_parts = {}

    async def _restore(self, beginning: _Beginning) -> None:
        started = time.monotonic()
        begin, manifest = beginning.begin, beginning.manifest
        state_ = self.decisions.state
        checkpoint = 0 if manifest is None else manifest.checkpoint
        owned = tuple(sorted(p for p, m in begin.owners.items() if m == self.member.id))
        ingress_owned = {tp for tp, m in begin.ingress_owners.items() if m == self.member.id}
        skip = state_.skip_rule()
        published = dict(state_.published)
        paused = {TypeName.parse(t) for t in state_.paused}
        restored: dict[int, RestoredPartition] = {}
        if manifest is not None:
            chains = {p: manifest.chains[p] for p in owned if manifest.chains.get(p)}
            what = f"restoring checkpoint {checkpoint} for generation {begin.generation}"
            reading = Progress(what, len(chains), "partitions read", logged(log))
            for p, chain in chains.items():
                restored[p] = await self.partition_store.read(chain)
                reading.advance()
            reading.finish()
        if self.decisions.state.begin is not begin:
            return  # a newer Begin came meanwhile: the switch acts on it next
        state = StateStore()
        state.load(
            (row for r in restored.values() for row in r.state.items()),
            Progress(
                f"restoring the state of checkpoint {checkpoint}",
                sum(len(r.state) for r in restored.values()),
                "addresses",
                logged(log),
            ),
        )
        parts = [
            decode_worker_part(r.parts[WORKER_PART])
            for r in restored.values()
            if WORKER_PART in r.parts
        ]
        worker_part = WorkerPart.merge(parts) if parts else None
        keys = decode_rows(row for r in restored.values() for row in r.keys.items())
        floors: dict[int, int] = {}
        for r in restored.values():
            if KEYS_PART in r.parts:
                floors.update(decode_floors(r.parts[KEYS_PART]))
        clock = EpochClock(begin.generation, beginning.first_epoch, self.member.id, skip)
        self.replies.rolled_back(clock.skip)
        outbox, worker = self._processing(
            clock,
            state,
            note_published=self._note_published,
            on_failure=self._worker_failed,
            paused=paused,
            owned=owned,
            on_later_epoch=self._later_epoch,
        )
        for p, r in restored.items():
            if EGRESS_PART in r.parts:
                outbox.restore(decode_egress_items(r.parts[EGRESS_PART]), published.get(p, 0), p)
        ends = await self.log.end_offsets(self.topics.messages)
        positions = worker_part.positions if worker_part is not None else {}
        self.idempotency.restore(keys, positions, clock.skip, owned=owned)
        await self.idempotency.recover(
            self.log, self.topics.messages, positions, ends, floors, owned=owned
        )
        if self.decisions.state.begin is not begin:
            return
        self._uncommitted = _Uncommitted()
        self._owe_full = False
        self._owned = owned
        if manifest is not None and (
            self._last is None or manifest.checkpoint > self._last.checkpoint
        ):
            self._last = manifest  # its chains are what the next snapshots extend
        worker.start(worker_part, dict(enumerate(ends)))
        readers: list[KafkaIngressReader] = []
        self.worker, self.outbox, self.kafka_ingresses, self.clock = worker, outbox, readers, clock
        self.health.functions = worker.dispatcher.health
        if manifest is not None:
            outbox.publish_committed(manifest.checkpoint)
        for spec in self.module.ingresses:
            reader = await self._kafka_ingress(spec, clock)
            restored_positions = None if manifest is None else dict(manifest.ingress)
            await reader.start(restored_positions, owned=ingress_owned)
            readers.append(reader)
        self.health.clear("generation")
        self._generation_begun.set()
        take = self.decisions.state.take
        if take is not None and take.generation == begin.generation:
            self._take(take)  # taken while this member restored
        self.metrics.recovery.observe(time.monotonic() - started)
        log.info(
            "generation %d (%s) began from checkpoint %d in %.0f ms: %d partitions owned "
            "(%d addresses in state)",
            begin.generation,
            begin.reason,
            checkpoint,
            (time.monotonic() - started) * 1000,
            len(owned),
            len(state),
        )

    # --- checkpoints ------------------------------------------------------------------

    def _later_epoch(self, epoch: int) -> None:
        """The epoch rule (see the module docstring): capture up to ``epoch`` - 1 now."""
        clock = self.clock
        while clock is not None and clock.epoch < epoch:
            self._capture(full=False)
            self.early_snapshots += 1

    def _take(self, take: Take) -> None:
        captured = self._captured_for(take)
        if captured is None:
            return
        task = asyncio.create_task(self._write(captured, take), name="checkpoint-part")
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    def _captured_for(self, take: Take) -> _Captured | None:
        """This member's local snapshot for ``take``, captured now unless the epoch rule
        (or the coordinator's own part) took it already; None if there is none to write:
        no generation of the take runs here, or its snapshot was written already."""
        clock = self.clock
        if clock is None or take.generation != clock.generation or self.worker is None:
            return None
        while clock.epoch <= take.checkpoint:
            self._capture(full=take.full or self._owe_full)
        captured = self._captured.pop(take.checkpoint, None)
        for n in [n for n in self._captured if n < take.checkpoint]:
            del self._captured[n]  # takes abandoned before they reached this member
        if captured is not None and take.full and not captured.full:
            self._owe_full = True
        return captured

    async def _own_part(self, take: Take) -> Part | None:
        """The part of ``take`` of this member, the coordinator and only owner: its
        snapshot captured and written before the take is appended, the part not appended
        (the coordinator appends it with the take and the manifest). None if this member
        has nothing to write or may not vouch for it; raises if writing failed."""
        captured = self._captured_for(take)
        if captured is None:
            return None
        return await self._written_part(captured, take)

    def _capture(self, *, full: bool) -> None:
        """Capture the local snapshot of the current epoch, cut per partition, and advance
        the epoch (one synchronous step: nothing runs in between)."""
        worker, outbox, clock = self.worker, self.outbox, self.clock
        assert worker is not None
        assert outbox is not None
        assert clock is not None
        checkpoint = clock.epoch
        partitions = self.router.partitions
        uncommitted = self._uncommitted
        # A partition is left out only against a chain that nothing captured since may
        # still change: with a capture outstanding, every partition is written.
        may_leave_out = not uncommitted.state
        uncommitted.state.append((checkpoint, worker.state.take_changed()))
        uncommitted.keys.append((checkpoint, self.idempotency.take_changed()))
        owned = worker.owned
        # A partition's chain starts with a full snapshot: one without a committed chain
        # (as far as this member knows) gets one whatever the take asked.
        chains = {} if self._last is None else self._last.chains
        whole = {p for p in owned if full or not chains.get(p)}
        changed: dict[int, set[Address]] = {p: set() for p in owned}
        if whole:
            for address in worker.state.addresses():
                p = partition_for(address, partitions)
                if p in whole:
                    changed[p].add(address)
        for _, addresses_changed in uncommitted.state:
            for address in addresses_changed:
                changed.setdefault(partition_for(address, partitions), set()).add(address)
        keys: dict[int, set[str]] = {p: set() for p in owned}
        for key in self.idempotency.keys_of(whole):
            keys[self.idempotency.partition_of(key, {})].add(key)
        for _, changed_keys in uncommitted.keys:
            for key, p in changed_keys.items():
                keys.setdefault(p, set()).add(key)
        worker_parts = worker.part().split(lambda a: partition_for(a, partitions))
        egress = outbox.held_by_partition()
        floors = self.idempotency.floors()
        snapshots: dict[int, PartitionSnapshot] = {}
        unchanged: set[int] = set()
        written = 0
        for p in owned:
            rows = worker.state.rows(changed.get(p, ()))
            written += len(rows)
            part = {
                WORKER_PART: encode_worker_part(worker_parts.get(p, WorkerPart([], [], {}))),
                EGRESS_PART: encode_egress_items(egress.get(p, [])),
            }
            if p in floors:
                part[KEYS_PART] = encode_floors({p: floors[p]})
            key_rows = encode_rows(self.idempotency.entries(keys.get(p, ())))
            if p in whole:  # a full snapshot holds what is, not what was deleted
                rows = [(k, v) for k, v in rows if v is not None]
                key_rows = [(k, v) for k, v in key_rows if v is not None]
            elif (
                may_leave_out and not rows and not key_rows and part == self._committed_parts.get(p)
            ):
                unchanged.add(p)
            snapshots[p] = PartitionSnapshot(p, checkpoint, p in whole, rows, key_rows, part)
        uncommitted.parts.append(
            (checkpoint, {p: s.parts for p, s in snapshots.items() if p not in unchanged})
        )
        ingress = {tp: o for reader in self.kafka_ingresses for tp, o in reader.positions.items()}
        releases = bool(egress) or self.replies.capture().releases
        self._captured[checkpoint] = _Captured(
            clock.generation,
            checkpoint,
            whole == set(owned),
            snapshots,
            ingress,
            releases,
            written,
            frozenset(unchanged),
        )
        clock.advance()

    async def _write(self, captured: _Captured, take: Take) -> None:
        try:
            part = await self._written_part(captured, take)
            if part is not None:
                await self.decisions.append(part)
        except (LogError, StoreError) as e:
            # Not written: the changes stay uncommitted, and the next snapshot has them.
            log.warning("writing the part of checkpoint %d failed: %s", captured.checkpoint, e)

    async def _written_part(self, captured: _Captured, take: Take) -> Part | None:
        """Write ``captured`` to the take's segment of the partition store: the part that
        names where, once it may vouch for it (None if this member's generation failed).
        A full take gets every partition; another only those that changed."""
        segment = take.segment
        await self.partition_store.ensure_segment(segment)
        # Every partition's snapshot appended at once: one round trip to the log, not
        # one per partition (an append takes its place when called).
        snapshots = [
            (p, snapshot)
            for p, snapshot in captured.snapshots.items()
            if take.full or p not in captured.unchanged
        ]
        written = await asyncio.gather(
            *(self.partition_store.write(segment, snapshot) for _, snapshot in snapshots),
            return_exceptions=True,
        )
        locations: dict[int, PartitionLocation] = {}
        for (p, _), location in zip(snapshots, written, strict=True):
            if isinstance(location, BaseException):
                raise location
            locations[p] = location
        size = sum(len(v or b"") for _, s in snapshots for _, v in s.state)
        # The part vouches for every message the snapshot's epochs sent: they must be
        # durable before it is (a flush raises if one of them failed), and a member
        # that asked for a rollback of this generation vouches for nothing more.
        await self.log.flush()
        if self._failed_generation == captured.generation:
            log.debug(
                "the part of checkpoint %d is not written: generation %d failed here",
                captured.checkpoint,
                captured.generation,
            )
            return None
        return Part(
            captured.generation,
            captured.checkpoint,
            self.member.id,
            locations,
            captured.ingress,
            captured.releases,
            size,
            captured.addresses,
        )

    def _committed_checkpoint(self, manifest: Manifest) -> None:
        self.metrics.checkpoint_committed(
            manifest.duration_ms, manifest.size_bytes, manifest.addresses
        )
        self._last = manifest
        self._committed_parts.update(self._uncommitted.committed(manifest.checkpoint))
        self.replies.committed(manifest.generation, manifest.checkpoint)
        worker, outbox, clock = self.worker, self.outbox, self.clock
        if (
            outbox is not None
            and worker is not None
            and not worker.stopped
            and clock is not None
            and clock.generation == manifest.generation
        ):
            outbox.publish_committed(manifest.checkpoint)

    async def _note_published(self, checkpoint: int) -> None:
        clock = self.clock
        if clock is not None:
            await self.decisions.append(Published(clock.generation, checkpoint, self._owned))

    def _drop_segments(self, below: int) -> None:
        """No retained checkpoint reads a segment below ``below`` any more: delete them."""
        task = asyncio.create_task(self._delete_segments(below), name="drop-segments")
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _delete_segments(self, below: int) -> None:
        try:
            deleted = await self.partition_store.delete_segments_below(below)
        except Exception as e:
            log.warning("deleting checkpoint segments below %d failed: %s", below, e)
            return
        if deleted:
            log.debug("checkpoint segments %s deleted", deleted)

    # --- failing ----------------------------------------------------------------------

    def _log_failed(self, error: LogError) -> None:
        self.health.fail("log", f"appends fail: {error}")
        worker = self.worker
        if worker is not None:
            worker.fail(Failure(f"an append to the log failed: {error}"))

    def _worker_failed(self, failure: Failure) -> None:
        clock = self.clock
        if clock is not None:
            self._ask_rollback(failure, clock.generation)

    def _ask_rollback(self, failure: Failure, generation: int) -> None:
        self._failed_generation = generation
        if self._stopping or (self._failing is not None and not self._failing.done()):
            return
        self._failing = asyncio.create_task(self._append_fail(failure, generation), name="fail")

    async def _append_fail(self, failure: Failure, generation: int) -> None:
        """Ask the coordinator for a rollback of ``generation``, until the log takes it or
        a newer generation began."""
        while self.decisions.state.generation == generation and not self._stopping:
            try:
                if self.log.failure is not None:
                    await self.log.reopen()
                    self.health.clear("log")
                await self.decisions.append(
                    Fail(
                        generation,
                        self.member.id,
                        failure.describe(),
                        str(failure.address) if failure.address else None,
                        tuple(f"{p}@{o}" for p, o in failure.messages),
                        failure.cause,
                    )
                )
                return
            except LogError as e:
                log.warning("asking for a rollback failed: %s", e)
                await asyncio.sleep(FAIL_RETRY)

    # --- stopping ---------------------------------------------------------------------

    async def stop(self, deadline: float | None = None) -> bool:
        """Hand this member's partitions over: finish the calls in flight, wait for a
        checkpoint that holds what they did, leave the group (the others roll back to
        that checkpoint and take the partitions over), close everything."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.config.shutdown_timeout
        budget = max(deadline - loop.time(), 0.0)

        def share(fraction: float) -> float:
            return min(deadline, loop.time() + budget * fraction)

        self._stopping = True
        worker = self.worker
        if worker is not None and not worker.failed:
            await bounded_step("finishing calls in flight", worker.stop(drain=True), share(0.4))
            clock = self.clock
            if clock is not None and self.decisions.state.generation == clock.generation:
                epoch = clock.epoch
                generation = clock.generation
                await bounded_step(
                    "the last checkpoint",
                    self.decisions.wait(
                        lambda s: (
                            s.generation != generation
                            or (s.manifest is not None and s.manifest.checkpoint >= epoch)
                        )
                    ),
                    share(0.3),
                )
                # Its egress out before leaving: the next owner would publish it later.
                last = self.decisions.state.manifest
                outbox = self.outbox
                if outbox is not None and last is not None and last.generation == generation:
                    publishing = outbox.publish_committed(last.checkpoint)
                    if publishing is not None:
                        await bounded_step("publishing the last egress", publishing, share(0.1))
        self._unsubscribe()
        await bounded_step("stopping the coordinator", self.cluster_coordinator.stop(), share(0.05))
        if self.membership is not None:
            await bounded_step("leaving the application", self.membership.stop(), share(0.1))
        for task in (self._switching, self._failing, self._reconciling, *self._writing):
            if task is not None:
                task.cancel()
        await bounded_step("stopping the generation", self._end_generation(), share(0.05))
        await self.history.stop()
        closed = True
        for what, closing in (
            ("closing the decision log", self.decisions.close()),
            ("closing the function clients", self.clients.close()),
            *((("closing the peer client", self.peers.close()),) if self.peers else ()),
            ("closing the egresses", self.egresses.close()),
            ("closing the Kafka clusters", self.kafka_clusters.close()),
            ("closing the log", self.log.close()),
        ):
            closed &= await bounded_step(what, closing, deadline)
        return closed
