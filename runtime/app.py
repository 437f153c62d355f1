"""One runtime process: the log, the checkpoint store and coordinator, the router,
the egresses, the HTTP ingress, and one generation of processing (the worker and the
Kafka ingress readers), started, rolled back and stopped together.

``Runtime.open`` picks the log: Kafka (``kafka`` set), the durable embedded log under
a data directory, or the in-memory one. ``start`` begins a generation from the last
completed checkpoint (every start is a recovery). A failure the worker reports rolls
everything back: the generation stops, the rollback is recorded in the store, and a
new generation resumes from the last completed checkpoint after a backoff that doubles
with every rollback not followed by a completed checkpoint. ``serve`` runs until SIGINT
or SIGTERM, then stops taking requests, lets calls in flight finish (bounded), takes a
last checkpoint and closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from runtime.checkpoints.coordinator import CheckpointConfig, CheckpointCoordinator
from runtime.checkpoints.epochs import EpochClock, SkipRule, Tag
from runtime.checkpoints.restore import restore_point
from runtime.checkpoints.snapshot import message_id_text
from runtime.checkpoints.store import CheckpointStore, Manifest
from runtime.dead_letters import REPLAYED, DeadLetter, DeadLetters
from runtime.dispatcher import Failure
from runtime.egress import Egresses, EgressOutbox
from runtime.health import Health
from runtime.idempotency import IdempotencyKeys, fingerprint
from runtime.identity import LogIdentity
from runtime.ingress import create_ingress_app
from runtime.kafka_clusters import KafkaClusters
from runtime.kafka_ingress import KafkaIngressReader
from runtime.log import Log
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog
from runtime.log.sqlite import SqliteLog
from runtime.replies import ReplyWaiters
from runtime.retention import EGRESS_RETENTION, KAFKA_MESSAGES_RETENTION, Retention
from runtime.router import Router
from runtime.routing import Topics, partition_for
from runtime.state import StateSpecRegistry
from runtime.worker import FunctionClients, Worker, WorkerConfig
from statefun.address import Address, TypeName
from statefun.module_spec import ModuleSpec
from statefun.values import TypedValue

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5
"""Seconds the ingress lets requests in flight finish when the runtime stops."""
SERVED_ASK_TIMEOUT = 2.0
"""Seconds the ingress waits for an endpoint to say which function types it serves."""


@dataclass(frozen=True)
class RuntimeConfig:
    module: ModuleSpec
    data_dir: Path | None = None
    """Where the embedded log lives; None keeps the log in memory (tests)."""
    kafka: str | None = None
    """Bootstrap servers of the Kafka cluster holding the log; None: the embedded log."""
    checkpoint_dir: Path | None = None
    """The checkpoint store; None: ``<data_dir>/checkpoints``, or a temporary directory.
    ``statefun run`` always gives one: ``--checkpoint-dir``, or ``DATA_DIR/checkpoints``
    in every mode."""
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8090
    messages_partitions: int = 8
    app_id: str = "statefun"
    """Names the runtime's own topics and consumer group (see ``runtime.routing.Topics``)."""
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    idempotency_retention: float = 24 * 3600.0
    """Seconds an Idempotency-Key's answer is remembered."""
    egress_retention: float = EGRESS_RETENTION
    """Seconds the embedded egress topics and the dead-letter topic keep a record (on
    Kafka, their ``retention.ms`` when the runtime creates them)."""
    messages_retention: float = KAFKA_MESSAGES_RETENTION
    """On Kafka, the messages topic's ``retention.ms`` when the runtime creates it (0:
    forever); the embedded log drops what no retained checkpoint needs instead."""
    start_over: bool = False
    """Start the log over with an empty checkpoint store (``statefun run --start-over``):
    replay what came from outside, skip what the runtime produced (``runtime.identity``)."""
    rollback_backoff: float = 0.5
    """Seconds before resuming after a rollback; doubles per rollback in a row."""
    rollback_backoff_max: float = 30.0


class Runtime:
    def __init__(
        self,
        config: RuntimeConfig,
        log_: Log,
        store: CheckpointStore,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cleanup: tempfile.TemporaryDirectory[str] | None = None,
    ):
        self.config = config
        self.module = config.module
        self.log = log_
        self.store = store
        self._cleanup = cleanup
        self.replies = ReplyWaiters()
        self.topics = Topics(config.app_id)
        self.router = Router(
            log_, config.module, self.replies, self.topics, config.messages_partitions
        )
        self.kafka_clusters = KafkaClusters(log_, config.kafka)
        self.egresses = Egresses(log_, self.topics, config.module, self.kafka_clusters)
        self.dead_letters = DeadLetters(log_, self.topics.dead_letters)
        self.coordinator = CheckpointCoordinator(store, log_, config.checkpoints)
        self.coordinator.on_commit = self._committed
        self.retention = Retention(
            log_,
            store,
            self.topics,
            config.module,
            config.messages_partitions,
            egress_window=config.egress_retention,
            messages_retention=config.messages_retention,
        )
        self.coordinator.on_pruned = self.retention.pruned
        self.identity = LogIdentity(
            log_, store, self.topics, config.module, config.messages_partitions, _where(config)
        )
        self.idempotency = IdempotencyKeys(
            config.idempotency_retention,
            self.replies,
            committed=self.committed,
            release=store.mark_released,
            read_floor=self._read_floor,
        )
        self.clients = FunctionClients(config.worker, transport)
        self.registry = StateSpecRegistry()
        self.health = Health()
        self.worker: Worker | None = None
        self.outbox: EgressOutbox | None = None
        self.kafka_ingresses: list[KafkaIngressReader] = []
        self.clock: EpochClock | None = None
        self.failure: Failure | None = None
        """The failure of the last rollback, until a checkpoint completes after it."""
        self._rollbacks_in_a_row = 0
        self._rolling_back: asyncio.Task[None] | None = None
        self._stopping = False
        self.ingress_app: FastAPI = create_ingress_app(self)

    @classmethod
    async def open(
        cls, config: RuntimeConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> Runtime:
        log_: Log
        if config.kafka:
            log_ = await KafkaLog.open(config.kafka)
        elif config.data_dir:
            log_ = await SqliteLog.open(config.data_dir)
        else:
            log_ = MemoryLog()
        cleanup = None
        directory = config.checkpoint_dir or (
            config.data_dir / "checkpoints" if config.data_dir else None
        )
        if directory is None:
            cleanup = tempfile.TemporaryDirectory(prefix="statefun-checkpoints-")
            directory = Path(cleanup.name)
        try:
            store = await CheckpointStore.open(directory)
        except BaseException:
            await log_.close()  # a damaged or locked store: nothing of this runtime stays open
            raise
        return cls(config, log_, store, transport=transport, cleanup=cleanup)

    # --- generations ------------------------------------------------------------------

    async def start(self) -> None:
        await self.retention.create_topics()
        await self.router.create_topics()
        await self.dead_letters.create_topic()
        await self.egresses.start()
        await self.identity.claim(
            start_over=self.config.start_over,
            clusters=self.kafka_clusters,
            published_through=self.egresses.published_through(),
        )
        await self._begin(None)
        self.coordinator.start()
        self.retention.start()

    async def _begin(self, reason: str | None, failure: Failure | None = None) -> None:
        """Begin a generation from the last completed checkpoint (``reason`` None: a start)."""
        started = time.monotonic()
        point = await restore_point(self.store)
        generation, checkpoint = await self.store.begin_generation(
            reason,
            cause_address=str(failure.address) if failure and failure.address else None,
            cause_messages=[message_id_text(m) for m in failure.messages] if failure else (),
            checkpoint=point.checkpoint,
        )
        await self.identity.began(generation)
        rollbacks = await self.store.rollbacks()
        skip_below, epoch_floor = await self.store.floors()
        clock = EpochClock(
            generation,
            max(checkpoint, epoch_floor) + 1,
            self.config.app_id,
            SkipRule(
                generation, {r.generation: r.rolled_back_to for r in rollbacks}, below=skip_below
            ),
        )
        self.replies.rolled_back(clock.skip)
        state = point.state
        outbox = EgressOutbox(
            self.egresses,
            clock,
            note_published=self.store.egress_published,
            on_log_failure=lambda reason: worker.log_failed(reason),
        )
        worker = Worker(
            self.log,
            self.module,
            self.router,
            self.egresses,
            outbox,
            self.dead_letters,
            clock,
            self.clients,
            self.registry,
            state,
            on_failure=self._failed,
            config=self.config.worker,
            paused=await self.store.paused(),
        )
        ends = await self.log.end_offsets(self.topics.messages)
        restored = point.worker
        positions = restored.positions if restored is not None else {}
        self.idempotency.restore(point.keys, positions, clock.skip)
        await self.idempotency.recover(
            self.log, self.topics.messages, positions, ends, point.key_floors
        )
        # Egress records the checkpoint holds: published already, or still to publish.
        outbox.restore(point.egress, await self.store.egress_published_through())
        worker.start(restored, dict(enumerate(ends)))
        outbox.publish_committed(checkpoint)
        readers = []
        for spec in self.module.ingresses:
            cluster = await self.kafka_clusters.get(spec.address, f"ingress {spec.id}")
            reader = KafkaIngressReader(
                spec, cluster, self.router, self.dead_letters, clock, self.config.app_id
            )
            await reader.start(point.readers.get(reader.name))
            readers.append(reader)
        self.worker, self.outbox, self.kafka_ingresses, self.clock = worker, outbox, readers, clock
        self.health.functions = worker.dispatcher.health
        self.coordinator.attach(clock, [worker, outbox, *readers, self.idempotency, self.replies])
        log.info(
            "generation %d resumed from checkpoint %d in %.0f ms (%d addresses in state)",
            generation,
            checkpoint,
            (time.monotonic() - started) * 1000,
            len(state),
        )

    def _read_floor(self, target: Address) -> tuple[int, int]:
        """The partition of ``target`` and the worker's read position there: a record
        appended for it from now on lands at or past that offset."""
        partition = partition_for(target, self.config.messages_partitions)
        worker = self.worker
        return partition, worker.position(partition) if worker is not None else 0

    def committed(self, tag: Tag | None) -> bool:
        """Whether the work that produced a record tagged ``tag`` is checkpointed."""
        if tag is None or self.clock is None:
            return tag is None
        if tag.generation != self.clock.generation:
            return self.clock.skip.accepts(tag)  # of an earlier generation: in the restore
        last = self.coordinator.last
        return (
            last is not None
            and last.generation == tag.generation
            and (tag.epoch <= last.checkpoint)
        )

    def _failed(self, failure: Failure) -> None:
        if self._rolling_back is None and not self._stopping:
            self._rolling_back = asyncio.create_task(self._rollback(failure), name="rollback")

    async def _rollback(self, failure: Failure) -> None:
        try:
            self.failure = failure
            self._rollbacks_in_a_row += 1
            async with self.coordinator.lock:  # a checkpoint under way completes first
                self.coordinator.detach()
            await self._stop_generation(drain=False)
            backoff = min(
                self.config.rollback_backoff_max,
                self.config.rollback_backoff * 2 ** (self._rollbacks_in_a_row - 1),
            )
            log.error(
                "rolling back to the last completed checkpoint in %.1f s (rollback %d in a "
                "row): %s",
                backoff,
                self._rollbacks_in_a_row,
                failure.describe(),
            )
            await asyncio.sleep(backoff)
            if not self._stopping:
                await self._begin(failure.describe(), failure)
        finally:
            self._rolling_back = None

    def _committed(self, manifest: Manifest) -> None:
        self._rollbacks_in_a_row = 0
        self.failure = None
        self.replies.committed(manifest.generation, manifest.checkpoint)
        if self.outbox is not None and self.worker is not None and not self.worker.stopped:
            self.outbox.publish_committed(manifest.checkpoint)

    async def _stop_generation(self, *, drain: bool) -> None:
        for reader in self.kafka_ingresses:
            await reader.stop()
        if self.worker is not None:
            await self.worker.stop(drain=drain)
        if self.outbox is not None and not drain:
            await self.outbox.cancel()

    # --- lifecycle --------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Answer the calls waiting for replies now, so the ingress can stop promptly."""
        self.replies.close()

    async def stop(self) -> None:
        """Finish calls in flight (bounded), take a last checkpoint, close everything."""
        self._stopping = True
        await self.coordinator.stop()
        if self._rolling_back is not None:
            self._rolling_back.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rolling_back
        await self._stop_generation(drain=True)
        last = None
        if self.worker is not None and not self.worker.failed:
            last = await self.coordinator.checkpoint()
        if last is not None:
            assert self.outbox is not None
            publishing = self.outbox.publish_committed(last.checkpoint)
            if publishing is not None:
                await publishing
            await self.store.stopped_cleanly()
        await self.retention.stop()
        await self.clients.close()
        await self.egresses.close()
        await self.kafka_clusters.close()
        await self.log.close()
        await self.store.close()
        if self._cleanup is not None:
            self._cleanup.cleanup()

    def state_of(self, address: Address) -> Mapping[str, TypedValue]:
        return self.worker.state_of(address) if self.worker else {}

    # --- what the ingress asks ----------------------------------------------------------

    async def refuses(self, function_type: TypeName) -> str | None:
        """Why a message to ``function_type`` is refused at the door, or None: no endpoint
        of the module serves it, or its endpoint said it serves no such type (asked again
        when what it said is old; an endpoint that lists nothing refuses nothing)."""
        endpoint = self.module.endpoint_for(function_type)
        if endpoint is None:
            return f"no endpoint in the module spec serves {function_type}"
        url = endpoint.url_for(function_type)
        client = self.clients.get(endpoint)
        if client.serves(url, str(function_type)):
            return None  # what the endpoint said it serves stays served: no need to ask
        try:
            async with asyncio.timeout(SERVED_ASK_TIMEOUT):
                serves = await client.learn_serves(
                    url, str(function_type), max_age=FunctionClients.SERVED_MAX_AGE
                )
        except TimeoutError:
            return None
        if serves is not False:
            return None
        served = ", ".join(sorted(client.served(url) or ())) or "nothing"
        return f"the endpoint at {url} serves no function type {function_type} (it serves {served})"

    async def pause(self, function_type: TypeName) -> None:
        """Stop sending messages of ``function_type`` (they wait in the log), across restarts."""
        await self.store.set_paused(function_type, True)
        if self.worker is not None:
            self.worker.dispatcher.pause(function_type)

    async def resume(self, function_type: TypeName) -> None:
        await self.store.set_paused(function_type, False)
        if self.worker is not None:
            self.worker.dispatcher.resume(function_type)

    async def replay_dead_letter(self, letter: DeadLetter) -> tuple[int, int, bool]:
        """Append a parked message to the messages log again, as a message from outside:
        (partition, offset, whether an earlier replay had appended it already). Asking twice
        appends once: the replay carries an idempotency key of its own."""
        assert letter.target is not None
        assert letter.argument is not None
        key = f"statefun.dead-letter/{letter.offset}"
        request = await self.idempotency.begin(
            key, fingerprint(key, "", None, letter.value), letter.target
        )
        if request.earlier is not None:
            return request.earlier.partition, request.earlier.offset, True
        try:
            partition, offset = await self.append_message(
                letter.target, letter.caller, letter.argument, request.headers
            )
        except BaseException:
            self.idempotency.abandoned(request)
            raise
        self.idempotency.accepted(request, partition, offset)
        await self.store.mark_dead_letter(letter.offset, REPLAYED)
        log.info(
            "dead letter %d replayed to %s (%d@%d)", letter.offset, letter.target, partition, offset
        )
        return partition, offset, False

    async def append_message(
        self,
        target: Address,
        caller: Address | None,
        value: TypedValue,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> tuple[int, int]:
        """Append a message from outside; (partition, offset) once it is durable."""
        partition, append = self.router.append(target, caller, value, headers=headers)
        (offset,) = await append
        return partition, offset

    async def serve(self) -> None:
        """Start, serve the ingress until SIGINT or SIGTERM, then stop cleanly."""
        server = _IngressServer(
            uvicorn.Config(
                self.ingress_app,
                host=self.config.ingress_host,
                port=self.config.ingress_port,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=SHUTDOWN_GRACE,
            )
        )

        def on_signal(sig: int) -> None:
            log.info("received %s", signal.Signals(sig).name)
            self.begin_shutdown()
            server.request_exit()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        await self.start()
        try:
            log.info(
                "ingress listening on http://%s:%d",
                self.config.ingress_host,
                self.config.ingress_port,
            )
            await server.serve()
            if not server.started:
                raise OSError(
                    f"the ingress could not listen on {self.config.ingress_host}:"
                    f"{self.config.ingress_port}"
                )
        finally:
            log.info("stopping: finishing calls in flight")
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            log.info("stopped")


def _where(config: RuntimeConfig) -> str:
    """Which log the runtime runs on, for messages that name it."""
    if config.kafka:
        return f"the log of application {config.app_id} in Kafka at {config.kafka}"
    if config.data_dir:
        return f"the embedded log in {config.data_dir}"
    return "the in-memory log"


class _IngressServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
