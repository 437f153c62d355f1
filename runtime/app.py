"""One runtime process: the log, the checkpoint store and coordinator, the router,
the egresses, the HTTP ingress, and one generation of processing (the worker and the
Kafka ingress readers), started, rolled back and stopped together.

``open_log`` picks the log: Kafka (``kafka`` set), the durable embedded log under a
data directory, or the in-memory one; ``open_store`` opens the checkpoint store.
``Runtime.open`` opens both, or takes them from a launcher that wraps them (the fault
injection of ``verifier.injection``). ``start`` begins a generation from the last
completed checkpoint (every start is a recovery).

A failure rolls everything back: one the worker reports, or a failed append (the log
says so itself, whoever appended). The generation stops, and a new one resumes from
the last completed checkpoint after a backoff that doubles with every rollback not
followed by a completed checkpoint; it reopens the log first if the log failed. A new
generation that fails to start (the log or the store still failing, Kafka out of
reach) is tried again, backing off up to ``restart_backoff_max``, until one starts:
the runtime heals by itself once the fault clears. Meanwhile ``health`` says what is
wrong (``GET /ready``), and the ingress answers POSTs 503 with ``Retry-After``.

``serve`` binds the ingress, starts, and runs until SIGINT or SIGTERM; then it stops
taking requests, lets calls in flight finish, takes a last checkpoint and closes
everything, each step bounded so that the whole stop fits in ``shutdown_timeout``.
It refuses a non-loopback bind without tokens unless told ``--insecure``, and reads
the tokens file again on SIGHUP (``runtime.access``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from runtime.access import AccessControl, check_bind
from runtime.checkpoints.coordinator import CheckpointCoordinator
from runtime.checkpoints.epochs import EpochClock, SkipRule, Tag
from runtime.checkpoints.restore import restore_point
from runtime.checkpoints.snapshot import decode_state, message_id_text
from runtime.checkpoints.store import ApplicationRecords, CheckpointStore, Manifest
from runtime.cluster.peers import ClusterView, Peers, StaticView
from runtime.cluster.status import LOCAL_MEMBER, ClusterStatus, checkpoint_status, describe_cluster
from runtime.config import RuntimeConfig
from runtime.console.history import MetricsHistory
from runtime.dead_letters import REPLAYED, DeadLetter, DeadLetters
from runtime.dispatcher import Failure
from runtime.egress import Egresses, EgressOutbox
from runtime.errors import ConfigurationError, IngressBindFailed, LogError, StoreError
from runtime.fast_path import IngressApp
from runtime.health import Health
from runtime.http_server import IngressServer, bind
from runtime.idempotency import IdempotencyKeys, fingerprint
from runtime.identity import LogIdentity
from runtime.ingress import create_ingress_app
from runtime.kafka_clusters import KafkaClusters
from runtime.kafka_ingress import KafkaIngressReader
from runtime.log import Log
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog
from runtime.log.sqlite import SqliteLog
from runtime.metrics import INGRESS_SOURCE, Metrics
from runtime.replies import ReplyWaiters
from runtime.retention import Retention
from runtime.router import Router
from runtime.routing import Topics, address_key, partition_for, type_key_prefix
from runtime.state import AddressPage, StateSpecRegistry, StateStore
from runtime.worker import FunctionClients, Worker
from statefun.address import Address, TypeName
from statefun.module_spec import FunctionTypePattern, KafkaIngress
from statefun.values import TypedValue

__all__ = [
    "Runtime",
    "RuntimeBase",
    "RuntimeConfig",
    "checkpoint_directory",
    "open_log",
    "open_store",
]

log = logging.getLogger(__name__)

SERVED_ASK_TIMEOUT = 2.0
"""Seconds the ingress waits for an endpoint to say which function types it serves."""
CHECKPOINT_STALL_INTERVALS = 5
"""Checkpoint intervals without a completed checkpoint after which the process is not
ready: its work is no longer being made durable."""


async def open_log(config: RuntimeConfig) -> Log:
    """The runtime's log: Kafka, the embedded log under the data directory, or memory."""
    if config.kafka:
        return await KafkaLog.open(
            config.kafka, security=config.kafka_security, **config.kafka_options
        )
    if config.data_dir:
        return await SqliteLog.open(config.data_dir)
    return MemoryLog()


def checkpoint_directory(config: RuntimeConfig) -> Path | None:
    return config.checkpoint_dir or (config.data_dir / "checkpoints" if config.data_dir else None)


async def open_store(config: RuntimeConfig) -> CheckpointStore:
    """The runtime's checkpoint store (it needs a checkpoint or data directory)."""
    directory = checkpoint_directory(config)
    if directory is None:
        raise ConfigurationError("no checkpoint directory: set checkpoint_dir or data_dir")
    return await CheckpointStore.open(directory)


class RuntimeBase(abc.ABC):
    """What every runtime process has, alone or as a member of a cluster: the log, the
    router, the egresses, the dead letters, the function clients, the ingress's waiting
    calls and idempotency keys, and one generation of processing at a time. How
    generations begin, checkpoint and roll back is the subclass's: :class:`Runtime`
    alone, with its own checkpoint store; ``runtime.cluster.node.ClusterRuntime`` with
    the others of its application, over Kafka."""

    def __init__(
        self,
        config: RuntimeConfig,
        log_: Log,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cluster: ClusterView | None = None,
        peer_transport: httpx.AsyncBaseTransport | None = None,
    ):
        """``cluster``: this process's view of the application's members (None: it is
        alone); ``peer_transport`` replaces the HTTP transport to the other members."""
        self.config = config
        self.module = config.module
        self.log = log_
        self.cluster = cluster
        member = None if cluster is None else cluster.me
        self.access = AccessControl(
            config.access,
            member=cluster is not None,
            ingress_host=config.ingress_host,
            member_url=lambda: None if cluster is None else cluster.url(cluster.me),
        )
        self.peers = (
            None
            if cluster is None
            else Peers(
                cluster, transport=peer_transport, credentials=lambda: self.access.member_token
            )
        )
        self.replies = ReplyWaiters(member)
        self.replies.on_demand = self._demand_checkpoint
        self.replies.unsettled = log_.unsettled
        self.topics = Topics(config.app_id)
        self.router = Router(
            log_,
            config.module,
            self.replies,
            self.topics,
            config.messages_partitions,
            peers=self.peers,
        )
        self.kafka_clusters = KafkaClusters(log_, config.kafka, config.kafka_security)
        self.egresses = Egresses(
            log_,
            self.topics,
            config.module,
            self.kafka_clusters,
            member=member,
            window=config.egress_retention,
        )
        self.dead_letters = DeadLetters(log_, self.topics.dead_letters)
        self.idempotency = IdempotencyKeys(
            config.idempotency_retention,
            self.replies,
            committed=self.committed,
            release=self._mark_released,
            read_floor=self._read_floor,
            caller_partition=None if cluster is None else self.partition_of,
        )
        self.clients = FunctionClients(config.worker, transport)
        self.registry = StateSpecRegistry()
        self.health = Health()
        self.metrics = Metrics()
        self.metrics.watch_load(
            lambda: () if self.worker is None else self.worker.dispatcher.load()
        )
        self.metrics.watch_pending(lambda: {} if self.outbox is None else self.outbox.pending())
        self.metrics.watch_read_lag(lambda: {} if self.worker is None else self.worker.read_lag())
        log_.observe_appends(self.metrics.log_appends(self.topics.kind_of))
        self.history = MetricsHistory.of(self.metrics)
        """The recent history of the metrics, for the console (sampled from ``start``)."""
        self.worker: Worker | None = None
        self.outbox: EgressOutbox | None = None
        self.kafka_ingresses: list[KafkaIngressReader] = []
        self.clock: EpochClock | None = None
        self._stopping = False
        self.ingress_app: IngressApp = create_ingress_app(self)

    # --- what a kind of runtime defines -----------------------------------------------

    @property
    @abc.abstractmethod
    def records(self) -> ApplicationRecords:
        """The application's checkpoints, rollbacks and operators' decisions."""

    @property
    @abc.abstractmethod
    def last_checkpoint(self) -> Manifest | None:
        """The last checkpoint this process saw commit (None: none yet)."""

    @abc.abstractmethod
    def committed(self, tag: Tag | None) -> bool:
        """Whether the work that produced a record tagged ``tag`` is checkpointed."""

    @abc.abstractmethod
    async def state_as_of(self, address: Address, checkpoint: int) -> Mapping[str, TypedValue]:
        """The address's state exactly as the retained checkpoint ``checkpoint`` holds it
        (empty: it had none); :class:`~runtime.errors.CheckpointNotRetained` if that
        checkpoint is not retained. Any process of the application answers it."""

    @abc.abstractmethod
    async def addresses_as_of(
        self, function_type: TypeName, after: str | None, limit: int, checkpoint: int
    ) -> AddressPage:
        """The ids of ``function_type``'s addresses that held state in the retained
        checkpoint ``checkpoint``, strictly after ``after``, at most ``limit`` (every
        partition's, whoever owns it); :class:`~runtime.errors.CheckpointNotRetained` if
        that checkpoint is not retained."""

    @abc.abstractmethod
    def unavailable(self) -> tuple[str, float] | None:
        """Why the ingress refuses messages now, and seconds until the next attempt to
        heal; None if it takes them."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self, deadline: float | None = None) -> bool: ...

    @abc.abstractmethod
    async def _mark_released(self, epoch: int, what: str) -> None:
        """The checkpoint covering ``epoch`` released ``what`` to the outside."""

    def checkpoint_demanded(self) -> None:
        """Another member's work waits for a commit (``POST /v1/internal/checkpoint-demand``)."""
        self._demand_checkpoint()

    @abc.abstractmethod
    def _demand_checkpoint(self) -> None:
        """Work waits for a commit (a held committed reply, an exactly-once egress record):
        the application's next checkpoint should start soon."""

    @abc.abstractmethod
    def _checkpoints_where(self) -> str:
        """Where checkpoints are kept, for the start-up summary."""

    def _processing(
        self,
        clock: EpochClock,
        state: StateStore,
        *,
        note_published: Callable[[int], Awaitable[None]],
        on_failure: Callable[[Failure], None],
        paused: Iterable[TypeName],
        owned: Iterable[int] | None = None,
        on_later_epoch: Callable[[int], None] | None = None,
    ) -> tuple[EgressOutbox, Worker]:
        """A generation's egress outbox and worker (see :class:`Worker` for the options)."""
        outbox = EgressOutbox(
            self.egresses,
            clock,
            note_published=note_published,
            on_log_failure=lambda reason: worker.log_failed(reason),
            metrics=self.metrics,
            on_demand=self._demand_checkpoint,
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
            on_failure=on_failure,
            config=self.config.worker,
            paused=paused,
            owned=owned,
            on_later_epoch=on_later_epoch,
            metrics=self.metrics,
            keys=self.idempotency,
        )
        return outbox, worker

    async def _kafka_ingress(self, spec: KafkaIngress, clock: EpochClock) -> KafkaIngressReader:
        """A generation's reader of the Kafka ingress ``spec`` (not started)."""
        cluster = await self.kafka_clusters.get(spec.address, f"ingress {spec.id}", spec.security)
        return KafkaIngressReader(
            spec, cluster, self.router, self.dead_letters, clock, self.config.app_id, self.metrics
        )

    def partition_of(self, target: Address) -> int:
        """The messages partition of ``target``."""
        return partition_for(target, self.config.messages_partitions)

    def restoring(self, target: Address) -> bool:
        """Whether ``target``'s partition is this process's but not restored yet (a cluster
        member switching generations): its keys and state are not here yet."""
        return False

    def _read_floor(self, target: Address) -> tuple[int, int]:
        """The partition of ``target`` and the worker's read position there: a record
        appended for it from now on lands at or past that offset."""
        partition = self.partition_of(target)
        worker = self.worker
        if worker is None or partition not in worker.owned:
            return partition, 0  # not read here (yet): nothing is known to be below
        return partition, worker.position(partition)

    def state_of(self, address: Address) -> Mapping[str, TypedValue] | None:
        """The address's state here; None if this process cannot say now (a cluster
        member restoring its partitions)."""
        return self.worker.state_of(address) if self.worker else {}

    @property
    def owned(self) -> tuple[int, ...]:
        """The messages partitions whose state this process holds: alone, every one."""
        return tuple(range(self.config.messages_partitions))

    def addresses(
        self, function_type: TypeName, after: str | None, limit: int
    ) -> AddressPage | None:
        """The ids of ``function_type``'s addresses that hold state now in the partitions
        this process holds (:attr:`owned`), strictly after ``after``, at most ``limit``;
        None if this process cannot say now (a cluster member restoring its partitions)."""
        if self.worker is None:
            return AddressPage([], False)
        return self.worker.state.page(function_type, after, limit)

    def cluster_status(self) -> ClusterStatus:
        """The members, the partitions each owns, the coordinator, the generation and the
        last completed checkpoint; alone, one member :data:`LOCAL_MEMBER` owning all."""
        partitions = self.config.messages_partitions
        view = self.cluster
        if view is None:
            url = f"http://{self.config.ingress_host}:{self.config.ingress_port}"
            view = StaticView(
                LOCAL_MEMBER, dict.fromkeys(range(partitions), LOCAL_MEMBER), {LOCAL_MEMBER: url}
            )
        last = self.last_checkpoint
        return describe_cluster(
            view,
            partitions,
            mode="single" if self.cluster is None else "cluster",
            generation=self.clock.generation if self.clock else None,
            last_checkpoint=None
            if last is None
            else checkpoint_status(last.checkpoint, last.generation, last.created_ms),
        )

    def begin_shutdown(self) -> None:
        """Answer the calls waiting for replies now, so the ingress can stop promptly."""
        self.replies.close()

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
        await self.records.set_paused(function_type, True)
        if self.worker is not None:
            self.worker.dispatcher.pause(function_type)

    async def resume(self, function_type: TypeName) -> None:
        await self.records.set_paused(function_type, False)
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
        appending = self.append_message(
            letter.target, letter.caller, letter.argument, request.headers
        )
        partition, offset = await self.idempotency.append(request, appending)
        await self.records.mark_dead_letter(letter.offset, REPLAYED)
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
        self.metrics.route(INGRESS_SOURCE, target.function_type).inc()
        return partition, offset

    async def append_messages(
        self, messages: Sequence[tuple[Address, TypedValue, tuple[tuple[str, bytes], ...]]]
    ) -> list[tuple[int, int]]:
        """Append messages from outside (target, value, headers), one append per partition,
        all at once; each one's (partition, offset) once every one is durable."""
        placed, appends = self.router.append_many(messages)
        partitions = list(appends)
        # Every append awaited, failed or not (one failing fails those after it too).
        results = await asyncio.gather(*(appends[p] for p in partitions), return_exceptions=True)
        offsets: dict[int, list[int]] = {}
        for partition, result in zip(partitions, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            offsets[partition] = result
        counts = Counter(target.function_type for target, _, _ in messages)
        for function_type, count in counts.items():
            self.metrics.route(INGRESS_SOURCE, function_type).inc(count)
        return [(p, offsets[p][i]) for p, i in placed]

    async def serve(self) -> bool:
        """Bind the ingress, start, serve until SIGINT or SIGTERM, then stop within
        ``shutdown_timeout`` of the signal; False if something could not be closed.
        :class:`IngressBindFailed` if the ingress cannot listen (nothing started)."""
        config = self.config
        check_bind(config.ingress_host, config.access)
        try:
            sock = bind(config.ingress_host, config.ingress_port)
        except OSError as e:
            raise IngressBindFailed(
                f"the ingress cannot listen on {config.ingress_host}:{config.ingress_port}: "
                f"{e.strerror or e}"
            ) from None
        server = IngressServer(
            self.ingress_app,
            config.ingress_timeouts,
            graceful_shutdown=config.ingress_shutdown_grace,
            on_started=self._log_summary,
        )
        loop = asyncio.get_running_loop()
        starting = asyncio.create_task(self.start(), name="start")
        deadline: float | None = None

        def on_signal(sig: int) -> None:
            nonlocal deadline
            log.info("received %s", signal.Signals(sig).name)
            if deadline is None:
                deadline = loop.time() + config.shutdown_timeout
            starting.cancel()
            self.begin_shutdown()
            server.request_exit()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.access.reload)
        try:
            try:
                await starting
            except asyncio.CancelledError:
                if deadline is None:  # not cancelled by a signal
                    raise
                sock.close()
            else:
                await server.serve(sockets=[sock])
        finally:
            log.info("stopping: finishing calls in flight")
            closed = await self.stop(deadline)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("stopped" if closed else "stopped, leaving what could not be closed in time")
        return closed

    def _log_summary(self) -> None:
        config = self.config
        if config.kafka:
            where = f"Kafka at {config.kafka}"
        elif config.data_dir:
            where = f"embedded, {config.data_dir / 'log.db'}"
        else:
            where = "in memory"
        endpoints = ", ".join(
            f"{_pattern(e.functions)} -> {e.url_path_template}" for e in config.module.endpoints
        )
        tokens = self.access.tokens
        log.info(
            "ingress listening on http://%s:%d (%s); module %s; endpoints: %s; data %s; "
            "checkpoints %s; app id %s; log %s",
            config.ingress_host,
            config.ingress_port,
            "open to all: no tokens"
            if tokens is None
            else f"{len(tokens)} tokens from {config.access.tokens_file}",
            config.module_file or "(given in code)",
            endpoints or "none",
            config.data_dir or "(none)",
            self._checkpoints_where(),
            config.app_id,
            where,
        )


class Runtime(RuntimeBase):
    """A runtime process alone: its own checkpoint store and coordinator, the embedded
    log or Kafka."""

    def __init__(
        self,
        config: RuntimeConfig,
        log_: Log,
        store: CheckpointStore,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        cleanup: tempfile.TemporaryDirectory[str] | None = None,
        cluster: ClusterView | None = None,
        peer_transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(
            config, log_, transport=transport, cluster=cluster, peer_transport=peer_transport
        )
        self.store = store
        self._cleanup = cleanup
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
        self._rollbacks_in_a_row = 0
        self._rolling_back: asyncio.Task[None] | None = None
        self._failed_again: Failure | None = None
        """A failure reported while a rollback starts a generation: it ends that one too."""
        self._next_attempt: float | None = None
        """Loop time of the rollback's next attempt to start a generation."""
        self._generation_started = 0.0
        self._last_commit = 0.0
        self._checkpoint_watch: asyncio.Task[None] | None = None
        log_.on_failure(self._log_failed)
        self.coordinator.on_abandon = self._checkpoint_abandoned

    @classmethod
    async def open(
        cls,
        config: RuntimeConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        log: Log | None = None,
        store: CheckpointStore | None = None,
        cluster: ClusterView | None = None,
        peer_transport: httpx.AsyncBaseTransport | None = None,
    ) -> Runtime:
        """Open the log and the store (:func:`open_log`, :func:`open_store`) unless given:
        a launcher may open them itself and wrap them. Either way the runtime closes them.
        ``cluster`` and ``peer_transport``: see :class:`RuntimeBase`."""
        log_ = log if log is not None else await open_log(config)
        cleanup = None
        try:
            if store is None:
                if checkpoint_directory(config) is None:
                    cleanup = tempfile.TemporaryDirectory(prefix="statefun-checkpoints-")
                    config = dataclasses.replace(config, checkpoint_dir=Path(cleanup.name))
                store = await open_store(config)
        except BaseException:
            await log_.close()
            if cleanup is not None:
                cleanup.cleanup()
            raise
        return cls(
            config,
            log_,
            store,
            transport=transport,
            cleanup=cleanup,
            cluster=cluster,
            peer_transport=peer_transport,
        )

    # --- generations ------------------------------------------------------------------

    async def start(self) -> None:
        self.history.start()
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
        self._generation_started = self._last_commit = asyncio.get_running_loop().time()
        self.coordinator.start()
        self.retention.start()
        if self.config.checkpoints.interval > 0:
            self._checkpoint_watch = asyncio.create_task(
                self._watch_checkpoints(), name="checkpoint-watch"
            )

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
            self.config.app_id if self.cluster is None else self.cluster.me,
            SkipRule(
                generation, {r.generation: r.rolled_back_to for r in rollbacks}, below=skip_below
            ),
        )
        self.replies.rolled_back(clock.skip)
        state = point.state
        outbox, worker = self._processing(
            clock,
            state,
            note_published=self.store.egress_published,
            on_failure=self._failed,
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
        readers: list[KafkaIngressReader] = []
        try:
            outbox.publish_committed(checkpoint)
            for spec in self.module.ingresses:
                reader = await self._kafka_ingress(spec, clock)
                await reader.start(point.readers.get(reader.name))
                readers.append(reader)
        except BaseException:
            # This generation does not start: what of it runs already stops.
            self.worker, self.outbox, self.kafka_ingresses = worker, outbox, readers
            await self._stop_generation(drain=False)
            raise
        self.worker, self.outbox, self.kafka_ingresses, self.clock = worker, outbox, readers, clock
        self.health.functions = worker.dispatcher.health
        self.coordinator.attach(clock, [worker, outbox, *readers, self.idempotency, self.replies])
        self.metrics.recovery.observe(time.monotonic() - started)
        log.info(
            "generation %d resumed from checkpoint %d in %.0f ms (%d addresses in state)",
            generation,
            checkpoint,
            (time.monotonic() - started) * 1000,
            len(state),
        )

    @property
    def records(self) -> ApplicationRecords:
        return self.store

    @property
    def last_checkpoint(self) -> Manifest | None:
        return self.coordinator.last

    async def state_as_of(self, address: Address, checkpoint: int) -> Mapping[str, TypedValue]:
        stored = await self.store.state_as_of(address_key(address), checkpoint)
        return {} if stored is None else decode_state(stored)[0]

    async def addresses_as_of(
        self, function_type: TypeName, after: str | None, limit: int, checkpoint: int
    ) -> AddressPage:
        prefix = type_key_prefix(function_type)
        start = None if after is None else prefix + after.encode()
        keys = await self.store.keys_as_of(prefix, start, limit + 1, checkpoint)
        ids = [key[len(prefix) :].decode() for key in keys]
        return AddressPage(ids[:limit], len(ids) > limit)

    async def _mark_released(self, epoch: int, what: str) -> None:
        await self.store.mark_released(epoch, what)

    def _checkpoints_where(self) -> str:
        return str(self.store.path.parent)

    def committed(self, tag: Tag | None) -> bool:
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

    # --- failing and healing ------------------------------------------------------------

    def _log_failed(self, error: LogError) -> None:
        """The log stopped taking appends: end the generation; the next reopens the log."""
        self.health.fail("log", f"appends fail: {error}")
        self._failed(Failure(f"an append to the log failed: {error}"))

    def _failed(self, failure: Failure) -> None:
        if self._stopping:
            return
        if self._rolling_back is None:
            self._rolling_back = asyncio.create_task(self._rollback(failure), name="rollback")
        else:
            self._failed_again = self._failed_again or failure

    async def _rollback(self, failure: Failure) -> None:
        """End the generation and start new ones, backing off, until one starts and
        nothing failed meanwhile. Never raises: each failed attempt is one line."""
        try:
            while True:
                self._rollbacks_in_a_row += 1
                self.metrics.rolled_back(failure.cause)
                backoff = min(
                    self.config.rollback_backoff_max,
                    self.config.rollback_backoff * 2 ** (self._rollbacks_in_a_row - 1),
                )
                log.error(
                    "rolling back to the last completed checkpoint in %.1f s (rollback %d in "
                    "a row): %s",
                    backoff,
                    self._rollbacks_in_a_row,
                    failure.describe(),
                )
                self.health.fail("generation", f"rolling back: {failure.describe()}")
                await self._end_generation()
                await self._start_generation(failure, backoff)
                if self._failed_again is None:
                    return
                failure, self._failed_again = self._failed_again, None
        except Exception:
            # A bug: say it loudly, once; the process stays unready and says why.
            log.exception("the rollback failed")
            self.health.fail("generation", "the rollback failed; restart the runtime")
        finally:
            self._rolling_back = None
            self._next_attempt = None

    async def _start_generation(self, failure: Failure, backoff: float) -> None:
        """Start a generation after ``backoff`` seconds, trying again until one starts."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            self._next_attempt = loop.time() + backoff
            await asyncio.sleep(backoff)
            self._failed_again = None  # what failed before this attempt, it covers
            try:
                if self.log.failure is not None:
                    await self.log.reopen()
                    log.info("the log takes appends again")
                self.health.clear("log")
                await self._begin(failure.describe(), failure)
            except Exception as e:
                attempt += 1
                backoff = min(
                    self.config.restart_backoff_max,
                    self.config.rollback_backoff * 2 ** (attempt - 1),
                )
                if isinstance(e, StoreError):
                    self.health.fail("store", f"writes fail: {e}")
                self.health.fail("generation", f"starting a generation failed: {e}")
                log.error(
                    "starting a generation failed (attempt %d, next in %.1f s): %s: %s",
                    attempt,
                    backoff,
                    type(e).__name__,
                    e,
                )
                await self._end_generation()
                continue
            self._next_attempt = None
            self._generation_started = loop.time()
            self.health.clear("store")
            self.coordinator.start()
            if self.config.checkpoints.interval > 0:
                self.health.fail(
                    "generation",
                    f"recovering from: {failure.describe()} (until a checkpoint completes)",
                )
            else:
                self.health.clear("generation")
            return

    async def _end_generation(self) -> None:
        """Stop the generation's checkpoints and processing (never raises)."""
        await self.coordinator.stop()  # a checkpoint under way is abandoned
        self.coordinator.detach()
        try:
            await self._stop_generation(drain=False)
        except Exception as e:
            log.error("stopping the generation: %s: %s", type(e).__name__, e)

    def _demand_checkpoint(self) -> None:
        self.coordinator.demand()

    def _checkpoint_abandoned(self, checkpoint: int, error: Exception) -> None:
        self.metrics.checkpoint_abandoned()
        if isinstance(error, StoreError):
            self.health.fail("store", f"checkpoint writes fail: {error}")

    def _committed(self, manifest: Manifest) -> None:
        self.metrics.checkpoint_committed(
            manifest.duration_ms, manifest.size_bytes, manifest.addresses
        )
        self._rollbacks_in_a_row = 0
        self._last_commit = asyncio.get_running_loop().time()
        for component in ("generation", "store", "checkpoints"):
            self.health.clear(component)
        self.replies.committed(manifest.generation, manifest.checkpoint)
        if self.outbox is not None and self.worker is not None and not self.worker.stopped:
            self.outbox.publish_committed(manifest.checkpoint)

    async def _watch_checkpoints(self) -> None:
        """Report a process whose checkpoints stopped completing: its work is no longer
        made durable, whatever the cause (a stalled log, a store failing, ...)."""
        loop = asyncio.get_running_loop()
        interval = self.config.checkpoints.interval
        limit = CHECKPOINT_STALL_INTERVALS * interval
        while True:
            await asyncio.sleep(interval)
            age = loop.time() - max(self._last_commit, self._generation_started)
            if self._rolling_back is None and age > limit:
                if self.health.problem("checkpoints") is None:
                    log.warning("no checkpoint completed for %.0f s", age)
                self.health.fail("checkpoints", f"no checkpoint completed for {age:.0f} s")
            else:
                self.health.clear("checkpoints")

    def unavailable(self) -> tuple[str, float] | None:
        """The log or the store failing, or no generation running."""
        if self.health.ready:
            return None  # asked by every POST: the common answer without building any
        problems = self.health.problems()
        if self._rolling_back is None:
            problems.pop("generation", None)  # recovering, but taking messages
        problems.pop("checkpoints", None)
        if not problems:
            return None
        retry = 1.0
        if self._next_attempt is not None:
            retry = max(retry, self._next_attempt - asyncio.get_running_loop().time())
        return "; ".join(f"{c}: {r}" for c, r in problems.items()), retry

    async def _stop_generation(self, *, drain: bool) -> None:
        for reader in self.kafka_ingresses:
            await reader.stop()
        if self.worker is not None:
            await self.worker.stop(drain=drain)
        if self.outbox is not None and not drain:
            await self.outbox.cancel()

    # --- lifecycle --------------------------------------------------------------------

    async def stop(self, deadline: float | None = None) -> bool:
        """Finish calls in flight, take a last checkpoint, close everything, all by
        ``deadline`` (loop time; default: ``shutdown_timeout`` from now). Each step gets
        at most a share of the time left (calls in flight 40%, the last checkpoint 20%,
        its egress 10%), so that closing always has a quarter of it; a step that does
        not finish in its share is cut short, and said so. The last checkpoint is
        skipped while the log or the store fails or no generation runs: what cannot
        be written is recovered from the previous one. False if something could not be
        closed in time (a client of a stalled broker, say)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.config.shutdown_timeout
        budget = max(deadline - loop.time(), 0.0)

        def share(fraction: float, cap: float = budget) -> float:
            return min(deadline, loop.time() + min(budget * fraction, cap))

        self._stopping = True
        # Nothing to trust a last checkpoint to while one of these fails.
        healthy = self._rolling_back is None and not (
            self.health.problem("log") or self.health.problem("store")
        )
        # The rollback first: it may start the coordinator again.
        for task in (self._rolling_back, self._checkpoint_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.coordinator.stop()
        grace = self.config.worker.shutdown_grace
        if not await bounded_step(
            "finishing calls in flight", self._stop_generation(drain=True), share(0.4, grace)
        ):
            await bounded_step(
                "stopping the generation", self._stop_generation(drain=False), share(0.1)
            )
        worker = self.worker
        if healthy and worker is not None and not worker.failed:
            last: list[Manifest | None] = []
            await bounded_step(
                "the last checkpoint", _into(last, self.coordinator.checkpoint()), share(0.2)
            )
            if last and last[0] is not None and self.outbox is not None:
                publishing = self.outbox.publish_committed(last[0].checkpoint)
                if publishing is not None:
                    await bounded_step("publishing the last egress", publishing, share(0.1))
                await bounded_step(
                    "noting the clean stop", self.store.stopped_cleanly(), share(0.05)
                )
        await bounded_step("stopping retention", self.retention.stop(), share(0.05))
        await self.history.stop()
        closed = True
        # The local store first: the clients of a stalled broker may need all that is left.
        for what, closing in (
            ("closing the function clients", self.clients.close()),
            *((("closing the peer client", self.peers.close()),) if self.peers else ()),
            ("closing the checkpoint store", self.store.close()),
            ("closing the egresses", self.egresses.close()),
            ("closing the Kafka clusters", self.kafka_clusters.close()),
            ("closing the log", self.log.close()),
        ):
            closed &= await bounded_step(what, closing, deadline)
        if self._cleanup is not None:
            self._cleanup.cleanup()
        return closed


def _where(config: RuntimeConfig) -> str:
    """Which log the runtime runs on, for messages that name it."""
    if config.kafka:
        return f"the log of application {config.app_id} in Kafka at {config.kafka}"
    if config.data_dir:
        return f"the embedded log in {config.data_dir}"
    return "the in-memory log"


def _pattern(functions: FunctionTypePattern) -> str:
    return f"{functions.namespace}/{functions.name or '*'}"


async def bounded_step(what: str, step: Awaitable[Any], until: float) -> bool:
    """Await a step of stopping until loop time ``until``; False (logged) if it did not
    finish by then or failed. Stopping goes on either way."""
    try:
        async with asyncio.timeout_at(until):
            await step
    except TimeoutError:
        log.warning("stopping: %s did not finish in time and was cut short", what)
        return False
    except Exception as e:
        log.warning("stopping: %s failed: %s: %s", what, type(e).__name__, e)
        return False
    return True


async def _into(box: list[Any], step: Awaitable[Any]) -> None:
    box.append(await step)
