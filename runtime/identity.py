"""The log's identity: which checkpoint store holds its checkpoints, and starting over.

A log holds the runtime's own records (messages between functions, tagged with their
generation and epoch; dead letters; egress), which are right only together with the
checkpoints of the store that was used with them. Resumed with another store, or none,
the runtime would apply them again (twice) or wait for records that never come. So
the log says which store it belongs to: the control topic (``<app-id>-control``, one
partition) gets a record at the start of every generation, naming the checkpoint
store (its id, created with the store) and the generation. The last record is the
log's identity. At a start (:meth:`LogIdentity.claim`):

* a store never started, over a log with no identity and none of the runtime's records
  (a new log, or one with input from outside only): a first start;
* a store whose id is the log's identity: a restart;
* a store never started, over a log with an identity or with the runtime's records:
  refused, its checkpoints are elsewhere (``--checkpoint-dir``), or ``--start-over``;
* a started store and a log with another identity: refused;
* a started store and a log without an identity (a log from before identities, or a
  new one): adopted if its checkpoints' read positions are within the log, refused as
  the checkpoints of another log otherwise; a started store whose read positions are
  past the log's end is refused in any case.

``--start-over`` (a store never started) rebuilds everything from what came from
outside: the first generation is above every generation the log shows (tags, egress
ids, control records) and skips every tag below it, checkpoint ids continue above every
epoch tag and above the Kafka egress markers' published checkpoint (so nothing new
counts as published already), and the first generation reads the messages topic and the
Kafka ingress topics from their retained start. What retention dropped cannot be
replayed, and the runtime says so in its log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import msgpack

from runtime.checkpoints.epochs import Tag
from runtime.checkpoints.snapshot import (
    INGRESS_PART_PREFIX,
    WORKER_PART,
    WorkerPart,
    decode_worker_part,
    encode_positions,
    encode_worker_part,
)
from runtime.checkpoints.store import CheckpointStore
from runtime.egress import ID_HEADER
from runtime.errors import ConfigurationError
from runtime.kafka_clusters import KafkaClusters
from runtime.kafka_ingress import open_ingress_topic
from runtime.log import Log, Record, StoredRecord
from runtime.routing import Topics
from statefun.module_spec import LogEgress, ModuleSpec

log = logging.getLogger(__name__)

GENERATION_KEY = b"generation"
CONTROL_TOPIC_CONFIG = {"retention.ms": "-1"}
"""The control topic is kept forever: one small record per generation."""


@dataclass(frozen=True, slots=True)
class Generation:
    """A control record: generation ``generation`` began with checkpoint store ``store``."""

    store: str
    generation: int

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            {"store": self.store, "generation": self.generation}, use_bin_type=True
        )
        return packed

    @classmethod
    def decode(cls, record: StoredRecord) -> Generation | None:
        try:
            fields = msgpack.unpackb(record.value, raw=False)
            return cls(str(fields["store"]), int(fields["generation"]))
        except Exception:
            return None  # not ours: another tool wrote to the topic


@dataclass(slots=True)
class _Seen:
    """The highest generation and epoch the runtime's records in the log show."""

    any: bool = False
    generation: int = 0
    epoch: int = 0

    def note(self, generation: int, epoch: int) -> None:
        self.any = True
        self.generation = max(self.generation, generation)
        self.epoch = max(self.epoch, epoch)


class LogIdentity:
    def __init__(
        self,
        log_: Log,
        store: CheckpointStore,
        topics: Topics,
        module: ModuleSpec,
        partitions: int,
        where: str,
    ):
        """``where`` says which log this is, for the messages (its data directory, or its
        Kafka cluster)."""
        self._log = log_
        self._store = store
        self._topics = topics
        self._module = module
        self._partitions = partitions
        self._where = where
        self._egress_topics = [
            topics.egress(e.id) for e in module.egresses if isinstance(e, LogEgress)
        ]

    # --- the control topic ----------------------------------------------------------------

    async def _records(self, topic: str, partition: int) -> AsyncIterator[StoredRecord]:
        offset = (await self._log.start_offsets(topic))[partition]
        end = (await self._log.end_offsets(topic))[partition]
        while offset < end:
            records = await self._log.read(topic, partition, offset, 1000)
            if not records:
                return
            for record in records:
                yield record
            offset = records[-1].offset + 1

    async def _control(self) -> str:
        """The control topic, created if missing (kept forever)."""
        await self._log.ensure_topic(self._topics.control, 1, CONTROL_TOPIC_CONFIG)
        return self._topics.control

    async def _generations(self) -> list[Generation]:
        await self._control()
        found = []
        async for record in self._records(self._topics.control, 0):
            generation = Generation.decode(record)
            if generation is not None:
                found.append(generation)
        return found

    async def began(self, generation: int) -> None:
        """Record that ``generation`` began with this store: the log's identity from now."""
        record = Generation(self._store.id, generation)
        control = await self._control()
        await self._log.append(control, 0, [Record(record.encode(), key=GENERATION_KEY)])

    # --- at a start -----------------------------------------------------------------------

    async def claim(
        self, *, start_over: bool, clusters: KafkaClusters, published_through: int
    ) -> None:
        """Check that this store holds this log's checkpoints (see the module docstring),
        or prepare the store to start the log over; :class:`ConfigurationError` in one
        line saying why and what to do otherwise. ``published_through``: the checkpoint
        the Kafka egress markers say is published."""
        generations = await self._generations()
        identity = generations[-1].store if generations else None
        store_id, directory = self._store.id, self._store.path.parent
        if await self._store.started():
            if start_over:
                raise ConfigurationError(
                    f"--start-over needs an empty checkpoint store, and {directory} holds "
                    f"checkpoints{' of this log' if identity == store_id else ''}: point "
                    "--checkpoint-dir at an empty directory to start over, or start without "
                    "--start-over to resume from them"
                )
            if identity is not None and identity != store_id:
                raise ConfigurationError(
                    f"the checkpoint store in {directory} ({store_id}) was taken of another "
                    f"log: {self._where} was last run with checkpoint store "
                    f"{identity}. Point --checkpoint-dir at this log's checkpoints, or at an "
                    "empty directory and start with --start-over"
                )
            await self._check_positions(adopting=identity is None)
            return
        if start_over:
            await self._start_over(generations, clusters, published_through)
            return
        if identity is None and not (await self._runtime_records(first_only=True)).any:
            return  # a new log, or one with input from outside only: a first start
        holder = f" (checkpoint store {identity})" if identity is not None else ""
        raise ConfigurationError(
            f"{self._where} holds the records of a runtime whose checkpoints{holder} are not "
            f"in {directory}, which has none: resuming without them would apply that work "
            "again. Point --checkpoint-dir at this log's checkpoints, or start over with "
            "--start-over (replays what came from outside, skips what the runtime produced)"
        )

    async def _check_positions(self, *, adopting: bool) -> None:
        """A started store's read positions past the end of the log mean the log is not
        the one its checkpoints were taken of (a new Kafka cluster, a removed data
        directory): resuming would wait for records that never come."""
        parts = await self._store.retained_parts(WORKER_PART)
        positions: Mapping[int, int] = {}
        for data in reversed(parts):
            try:
                positions = decode_worker_part(data).positions
                break
            except Exception:
                continue  # damaged: the restore decides what to do with it
        ends = await self._log.end_offsets(self._topics.messages)
        behind = {p: o for p, o in positions.items() if p >= len(ends) or o > ends[p]}
        if not behind:
            return
        reads = (
            f"they read {self._topics.messages} from {behind}, past its end {dict(enumerate(ends))}"
        )
        if adopting:
            raise ConfigurationError(
                f"the checkpoint store in {self._store.path.parent} was taken of another log: "
                f"{reads}. Point --checkpoint-dir at this log's checkpoints, or at an empty "
                "directory to start this log from its beginning (with --start-over if it "
                "holds the runtime's records)"
            )
        raise ConfigurationError(
            f"{self._where} is behind its checkpoints in {self._store.path.parent}: {reads} "
            "(was the log restored from an older copy?). Restore the log, or start over "
            "with an empty --checkpoint-dir and --start-over"
        )

    async def _runtime_records(self, *, first_only: bool) -> _Seen:
        """What the runtime's own records in the log show: tagged records in the messages
        and dead-letter topics, and egress records (their ids name generation and epoch)."""
        seen = _Seen()
        topics = [
            (self._topics.messages, self._partitions),
            (self._topics.dead_letters, 1),
            *((topic, 1) for topic in self._egress_topics),
        ]
        for topic, partitions in topics:
            await self._log.ensure_topic(topic, partitions)
            for partition in range(partitions):
                async for record in self._records(topic, partition):
                    tag = Tag.from_headers(record.headers)
                    if tag is not None:
                        seen.note(tag.generation, tag.epoch)
                    for name, value in record.headers:
                        if name == ID_HEADER:
                            generation, epoch, *_ = value.decode().split(".")
                            if generation.isdigit() and epoch.isdigit():
                                seen.note(int(generation), int(epoch))
                    if first_only and seen.any:
                        return seen
        return seen

    async def _start_over(
        self, generations: Sequence[Generation], clusters: KafkaClusters, published_through: int
    ) -> None:
        seen = await self._runtime_records(first_only=False)
        generation = max([seen.generation, *(g.generation for g in generations)]) + 1
        epoch = max(seen.epoch, published_through)
        starts = await self._log.start_offsets(self._topics.messages)
        origin = [(WORKER_PART, encode_worker_part(WorkerPart([], [], dict(enumerate(starts)))))]
        lost = {f"{self._topics.messages}[{p}]": o for p, o in enumerate(starts) if o > 0}
        for spec in self._module.ingresses:
            cluster = await clusters.get(spec.address, f"ingress {spec.id}", spec.security)
            positions = {}
            for topic in spec.topics:
                await open_ingress_topic(cluster, spec.id, topic.topic)
                for p, o in enumerate(await cluster.start_offsets(topic.topic, "earliest")):
                    positions[topic.topic, p] = o
                    if o > 0:
                        lost[f"{topic.topic}[{p}]"] = o
            origin.append((f"{INGRESS_PART_PREFIX}{spec.id}", encode_positions(positions)))
        await self._store.start_over(generation, epoch, origin)
        log.warning(
            "starting %s over with the checkpoint store in %s: generation %d, checkpoints "
            "from %d; replaying what came from outside, skipping the %s records of "
            "generations below %d",
            self._where,
            self._store.path.parent,
            generation,
            epoch + 1,
            "runtime's" if seen.any else "(no)",
            generation,
        )
        if lost:
            log.warning(
                "retention dropped the start of %s: the records before those offsets cannot "
                "be replayed, and what they did is not in the new state",
                ", ".join(f"{tp} (before {o})" for tp, o in lost.items()),
            )
