"""The worker: from the messages log to the dispatcher, and from function results to state,
messages, timers and egress, for one generation.

It reads its partitions of the messages log (the embedded log's appends as they are made,
before they are durable: ``Log.early_consumer``; keyed records once durable), skips the
tagged records of rolled-back work (the skip rule), shows the idempotency keys each keyed
record it reads (``IdempotencyKeys.read``), and hands each message to the
:class:`~runtime.dispatcher.Dispatcher`, which owns the mailboxes and the function calls.
As the dispatcher's host it builds batches (the address's state, the state specs
registered for its type, the tokens of its pending delayed messages), and checks each result whole before applying it: every
mutated state is registered with its type and within ``max_state_bytes``, every message
within ``max_message_bytes``. A refused result applies nothing (the dispatcher treats it
as a failed attempt). Output that cannot be delivered (a message to a function type no
endpoint serves, a record for an egress that does not exist) is parked in the dead
letters, and the rest of the result applies. Every record it produces carries the
current epoch's tag.

The worker is a checkpoint participant (:meth:`Worker.capture`): its local snapshot is
the state changed since the last checkpoint, its pending inputs (mailboxes and
in-flight batches, with the ids of their records), where the messages it left in the
log start, its timers and its read positions.

Delayed messages restored from a checkpoint fire, per sending address, only once the
worker has read past what the log held when it began and has processed that address's
messages among them: a cancellation in the log came before the firing the first time,
and comes first again. An address held by a failure holds back only its own timers.

A worker never outlives its generation: a rollback builds a new one from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import httpx

from runtime.checkpoints.coordinator import Capture
from runtime.checkpoints.epochs import EpochClock, Tag
from runtime.checkpoints.snapshot import (
    WORKER_PART,
    PendingMessage,
    PendingTimer,
    WorkerPart,
    encode_worker_part,
    message_id_text,
)
from runtime.config import WorkerConfig
from runtime.dead_letters import DeadLetters
from runtime.dispatcher import (
    Dispatcher,
    Failure,
    PendingInvocation,
)
from runtime.egress import Egresses, EgressOutbox
from runtime.envelope import Envelope, source_of
from runtime.errors import LogError, MalformedEnvelope, StateSpecConflict
from runtime.function_client import FunctionClient
from runtime.idempotency import IdempotencyKeys, key_of
from runtime.log import Log, StoredRecord, TopicPartition
from runtime.metrics import Metrics
from runtime.router import Router
from runtime.routing import partition_for
from runtime.state import StateSpecRegistry, StateStore
from runtime.storms import StormWatch
from runtime.timers import TimerService
from statefun.address import Address, TypeName
from statefun.module_spec import HttpEndpoint, ModuleSpec
from statefun.protocol import (
    DelayCancellation,
    DelayedMessage,
    FunctionRequest,
    FunctionResponse,
    Invocation,
    InvocationBatch,
    InvocationResult,
    StateSpec,
)
from statefun.values import TypedValue

log = logging.getLogger(__name__)

EXPIRY_SWEEP_INTERVAL = 1.0
"""Seconds between sweeps of expired state out of memory (reads never see it anyway)."""
REPLAY_CHECK_INTERVAL = 1.0
"""Seconds between checks whether every message of a restored log was processed."""


class FunctionClients:
    """One client (connection pool) per endpoint, kept across generations; the
    dispatcher's :class:`~runtime.dispatcher.Invoker`."""

    def __init__(self, config: WorkerConfig, transport: httpx.AsyncBaseTransport | None = None):
        self._config = config
        self._transport = transport
        self._clients: dict[HttpEndpoint, FunctionClient] = {}
        self._by_identity: dict[int, tuple[HttpEndpoint, FunctionClient]] = {}
        """The same, by the endpoint object's identity: hashing an endpoint (a frozen
        dataclass of dataclasses) on every call costs more than the lookup."""

    def get(self, endpoint: HttpEndpoint) -> FunctionClient:
        known = self._by_identity.get(id(endpoint))
        if known is not None and known[0] is endpoint:
            return known[1]
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = FunctionClient(
                endpoint,
                max_connections=self._config.dispatch.max_concurrent_requests,
                transport=self._transport,
            )
        self._by_identity[id(endpoint)] = (endpoint, client)
        return client

    async def invoke(
        self, endpoint: HttpEndpoint, url: str, request: FunctionRequest
    ) -> FunctionResponse:
        return await self.get(endpoint).invoke(url, request)

    SERVED_MAX_AGE = 10.0
    """Seconds what an endpoint said it serves is trusted for refusing a type."""

    def serves(self, endpoint: HttpEndpoint, url: str, function_type: str) -> bool | None:
        return self.get(endpoint).serves(url, function_type, max_age=self.SERVED_MAX_AGE)

    async def describe(self, endpoint: HttpEndpoint, url: str) -> None:
        await self.get(endpoint).describe(url)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        self._by_identity.clear()


T = TypeVar("T")

SCAN_CHUNK = 500
"""Records a scan of the log reads and decodes between two turns of the event loop."""


def _unkeyed(record: StoredRecord) -> bool:
    """Whether the worker may take ``record`` before it is durable: a key is learnt only
    from a durable record (see ``IdempotencyKeys.read``)."""
    return key_of(record.headers) is None


async def scan_log(
    read: Callable[[int, int], Awaitable[list[StoredRecord]]],
    accept: Callable[[StoredRecord], T | None],
    offset: int,
    end: Callable[[], int],
    limit: int,
    budget: int,
) -> tuple[list[T], int]:
    """What ``accept`` takes of a partition's records from ``offset`` up to ``end()`` (read
    again before each chunk), at most ``limit`` of them, looking at ``budget`` records at
    most; and the offset up to which it looked. It gives the event loop a turn before
    every chunk: the embedded log reads without ever suspending, so a scan (a paused
    type's backlog read again when it resumes, up to 10,000 records at a time, and the
    dispatcher chaining such scans while it has room) held the loop, and every request
    with it, until it was through. The last chunk's records are taken with no turn
    given between them and the return."""
    found: list[T] = []
    scanned = offset
    while len(found) < limit and budget > 0:
        await asyncio.sleep(0)
        stop = end()
        if scanned >= stop:
            break
        records = await read(scanned, min(SCAN_CHUNK, budget, stop - scanned))
        if not records:
            break
        for record in records:
            if record.offset >= stop or len(found) >= limit:
                break
            scanned = record.offset + 1
            budget -= 1
            taken = accept(record)
            if taken is not None:
                found.append(taken)
    return found, scanned


class Worker:
    name = WORKER_PART

    def __init__(
        self,
        log_: Log,
        module: ModuleSpec,
        router: Router,
        egresses: Egresses,
        outbox: EgressOutbox,
        dead_letters: DeadLetters,
        clock: EpochClock,
        clients: FunctionClients,
        registry: StateSpecRegistry,
        state: StateStore,
        *,
        on_failure: Callable[[Failure], None],
        config: WorkerConfig | None = None,
        paused: Iterable[TypeName] = (),
        owned: Iterable[int] | None = None,
        on_later_epoch: Callable[[int], None] | None = None,
        metrics: Metrics | None = None,
        keys: IdempotencyKeys | None = None,
    ):
        """``owned``: the partitions of the messages log this worker reads and whose
        addresses it owns (None: every one). ``on_later_epoch``: called with the epoch of
        a record of this generation from a later epoch than the clock's, before the worker
        processes it; it must take the local snapshot of the current epoch (the epoch
        rule, with several processes). None: such a record is another runtime's, logged.
        ``keys``: the idempotency keys of the partitions it reads, which learn the keys
        of the records it reads."""
        self.config = config or WorkerConfig()
        self.clients = clients
        self.state = state
        self.stopped = False
        self.failed = False
        self._log = log_
        self._router = router
        self._egresses = egresses
        self._outbox = outbox
        self._dead_letters = dead_letters
        self._clock = clock
        self._registry = registry
        self._on_failure = on_failure
        self._on_later_epoch = on_later_epoch
        self.metrics = metrics or Metrics()
        self.owned: tuple[int, ...] = (
            tuple(range(router.partitions)) if owned is None else tuple(sorted(owned))
        )
        self.dispatcher = Dispatcher(
            module,
            self,
            clients,
            lambda address: partition_for(address, router.partitions),
            config=self.config.dispatch,
            paused=paused,
            metrics=self.metrics,
        )
        self._storms = StormWatch(self.config.storm_rate)
        self._positions: dict[int, int] = {}
        self._timers = TimerService(self._fire_delayed)
        # Records are taken as they are appended, before they are durable, but for keyed
        # ones: a key is learnt from a durable record only (IdempotencyKeys.read).
        self._consumer = log_.early_consumer(_unkeyed)
        self._tasks: list[asyncio.Task[None]] = []
        self._replay_ends: dict[int, int] = {}
        self.skipped = 0
        self._keys = keys

    # --- lifecycle -------------------------------------------------------------------

    def start(self, restored: WorkerPart | None, log_ends: Mapping[int, int]) -> None:
        """Resume from a checkpoint's part (None: from the beginning of the log).
        Restored timers fire only once the worker has read and processed, per sending
        address, what the log held when it began (``log_ends``)."""
        topic = self._router.topics.messages
        restored_positions = restored.positions if restored else {}
        self._positions = {p: restored_positions.get(p, 0) for p in self.owned}
        self._consumer.assign({TopicPartition(topic, p): o for p, o in self._positions.items()})
        if restored:
            for unserved in self.dispatcher.restore(restored.pending, restored.overflow):
                self._park_pending(unserved)
            self._replay_ends = {p: e for p, e in log_ends.items() if p in self._positions}
            self._timers.hold(self._may_fire)
            self._timers.restore(restored.timers)
        self._tasks = [
            asyncio.create_task(self._consume(), name="worker-consume"),
            asyncio.create_task(self._sweep_expired(), name="state-expiry"),
        ]
        if self._replay_ends:
            self._tasks.append(asyncio.create_task(self._end_replay(), name="replay-check"))
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A task of the worker ended by an error nothing expected: without it the worker
        would stop reading (or firing timers) unseen, so the generation rolls back."""
        if task.cancelled() or (error := task.exception()) is None:
            return
        log.error("the worker's task %s failed unexpectedly", task.get_name(), exc_info=error)
        self.fail(Failure(f"the worker's task {task.get_name()} failed: {error!r}", cause="other"))

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_INTERVAL)
            self.state.expire(int(time.time() * 1000))

    async def stop(self, *, drain: bool) -> None:
        """Stop reading; with ``drain``, let requests in flight finish (bounded) and apply
        their outcomes, otherwise abandon them (a rollback: their inputs are pending in
        the checkpoint)."""
        for task in self._tasks:
            task.cancel()
            # One that failed did so already in _task_done.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if drain:
            await self.dispatcher.drain(self.config.shutdown_grace)
        self.stopped = True
        await self.dispatcher.stop()
        # Pending timers stay in place for a last checkpoint, but fire no more.
        self._timers.suspend()
        await self._consumer.close()

    def fail(self, failure: Failure) -> None:
        """Stop processing and ask for a rollback of everything (once)."""
        if self.stopped:
            return
        self.stopped = self.failed = True
        self.dispatcher.stopped = True
        log.critical("FAILURE, rolling back: %s", failure.describe())
        self._on_failure(failure)

    # --- checkpoints -------------------------------------------------------------------

    def capture(self) -> Capture:
        rows, changed = self.state.take_changes()
        return Capture(
            encode_worker_part(self.part()), rows, lambda: self.state.changed_again(changed)
        )

    def part(self) -> WorkerPart:
        """The worker's local snapshot but for state: what it read and has not answered,
        its timers, its read positions and its overflow cursors."""
        return WorkerPart(
            self.dispatcher.pending(),
            self._timers.pending(),
            dict(self._positions),
            self.dispatcher.overflow(),
        )

    # --- reading ---------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            await self.dispatcher.room.wait()
            room = self.config.dispatch.max_buffered_messages - self.dispatcher.buffered
            try:
                polled = await self._consumer.poll(
                    self.config.poll_max_wait, max_records=min(1000, max(1, room))
                )
            except LogError as e:
                # The log cannot be read (a stalled broker): the generation ends, and the
                # runtime starts new ones until the log answers again.
                self.fail(Failure(f"reading the log failed: {e}"))
                return
            for tp, records in polled.items():
                for record in records:
                    self._deliver(tp.partition, record)
                if self._replay_ends:
                    self._read_past_start(tp.partition)

    def _read_past_start(self, partition: int) -> None:
        """Once the partition is read past what it held at the start, its senders' timers
        may fire (those whose messages from before are processed)."""
        if self._positions[partition] >= self._replay_ends.get(partition, 0):
            self._timers.release_where(lambda sender: self._partition(sender) == partition)

    def _accept(
        self, partition: int, record: StoredRecord, *, counted: bool = True
    ) -> tuple[Address, PendingInvocation] | None:
        """The message a record of the messages log holds, if it is to be processed
        (``counted``: the first time the record is read)."""
        tag = Tag.from_headers(record.headers)
        clock = self._clock
        if not clock.skip.accepts(tag):
            self.skipped += counted
            return None
        if (
            counted
            and tag is not None
            and tag.generation == clock.generation
            and tag.epoch > clock.epoch
        ):
            if self._on_later_epoch is not None:
                # The epoch rule: this record's sending is in its sender's snapshot of an
                # epoch this worker has not snapshotted yet. Take that snapshot first, with
                # the record still unread (the caller advances the position after), or a
                # restore from it would hold the effect of a message whose sending no
                # snapshot holds.
                self._on_later_epoch(tag.epoch)
            else:
                self._another_runtime(partition, record, tag.epoch)
        try:
            envelope = Envelope.from_record(record)
        except MalformedEnvelope as e:
            log.error("skipping a record of %s[%d]: %s", self._router.topics.messages, partition, e)
            return None
        caller = envelope.caller
        if self._keys is not None and (keyed := key_of(record.headers)) is not None:
            self._keys.read(keyed, partition, record.offset, caller)
        return envelope.target, PendingInvocation(
            caller,
            envelope.argument,
            (partition, record.offset),
            source_of(record.headers) if caller is None else None,
        )

    def _another_runtime(self, partition: int, record: StoredRecord, epoch: int) -> None:
        """A process alone read a record of a later epoch of its generation: only another
        process writing the same application's topics can have written it."""
        log.error(
            "record %d@%d is from epoch %d of this generation, ahead of this runtime's %d: "
            "is another runtime writing this application's topics (the same --app-id)?",
            partition,
            record.offset,
            epoch,
            self._clock.epoch,
        )

    def _deliver(self, partition: int, record: StoredRecord) -> None:
        accepted = self._accept(partition, record)  # first: it may take a snapshot
        self._positions[partition] = record.offset + 1
        if accepted is None:
            return
        target, invocation = accepted
        if not self.dispatcher.deliver(target, invocation):
            self.park(target, invocation, self.dispatcher.unserved_reason(target.function_type))

    def position(self, partition: int) -> int:
        return self._positions[partition]

    def read_lag(self) -> dict[int, int]:
        """Per partition it reads, the records past its read position up to the end its
        consumer last saw (those whose end it has not seen yet left out)."""
        topic = self._router.topics.messages
        lag = {}
        for partition, position in self._positions.items():
            end = self._consumer.known_end(TopicPartition(topic, partition))
            if end is not None:
                lag[partition] = max(0, end - position)
        return lag

    async def reread(
        self,
        partition: int,
        offset: int,
        stop: int | None,
        limit: int,
        wanted: Callable[[Address], bool],
    ) -> tuple[list[tuple[Address, PendingInvocation]], int]:
        topic = self._router.topics.messages

        async def read(start: int, count: int) -> list[StoredRecord]:
            return await self._log.read_early(topic, partition, start, count, _unkeyed)

        def accept(record: StoredRecord) -> tuple[Address, PendingInvocation] | None:
            accepted = self._accept(partition, record, counted=False)
            return accepted if accepted is not None and wanted(accepted[0]) else None

        def end() -> int:
            return self._positions[partition] if stop is None else stop

        return await scan_log(read, accept, offset, end, limit, self.config.dispatch.reread_scan)

    # --- the dispatcher's host ---------------------------------------------------------

    def batch_for(
        self, address: Address, invocations: Sequence[PendingInvocation]
    ) -> InvocationBatch:
        values = self.state.get(address)
        specs = self._registry.specs(address.function_type)
        return InvocationBatch(
            address,
            {name: values.get(name) for name in specs},
            [Invocation(p.caller, p.argument) for p in invocations],
            self._timers.tokens_of(address),
        )

    def register_specs(self, function_type: TypeName, specs: Sequence[StateSpec]) -> str | None:
        try:
            self._registry.register(function_type, specs)
        except StateSpecConflict as e:
            return str(e)
        return None

    def apply(
        self, address: Address, invocations: Sequence[PendingInvocation], result: InvocationResult
    ) -> str | None:
        problem = self._refusal(address, result)
        if problem is not None:
            return problem
        header = self._clock.header
        now_ms = int(time.time() * 1000)
        specs = self._registry.specs(address.function_type)
        if result.mutations:
            self.state.apply(address, result.mutations, specs, now_ms)
        self.state.touch(address, specs, now_ms)
        for msg in result.messages:
            if (why := self._router.unroutable_target(msg.target)) is not None:
                self._park_output(
                    msg.target, address, msg.argument, why, _origin(address, invocations)
                )
                continue
            self._storms.count(msg.target.function_type)
            self.metrics.route(address.function_type, msg.target.function_type).inc()
            self._track(self._router.send(msg.target, address, msg.argument, tag=header))
        for d in result.delayed:
            if isinstance(d, DelayCancellation):
                self._timers.cancel(address, d.token)
            elif (why := self._router.unroutable_target(d.target)) is not None:
                self._park_output(d.target, address, d.argument, why, _origin(address, invocations))
            elif d.cancellation_token and self._timers.has_token(address, d.cancellation_token):
                # Functions on our SDK are told which tokens are pending and refuse a second
                # one; others (StateFun's SDK) cannot be, and the second message is dropped.
                log.warning(
                    "%s sent a delayed message with cancellation token %r while one with that "
                    "token is pending; the new message is dropped",
                    address,
                    d.cancellation_token,
                )
            else:
                self.metrics.route(address.function_type, d.target.function_type).inc()
                self._timers.schedule(
                    PendingTimer(
                        now_ms + d.delay_ms, address, d.target, d.argument, d.cancellation_token
                    )
                )
        for e in result.egress:
            if (why := self._egresses.problem(e.egress, e.argument)) is not None:
                self._track(
                    self._dead_letters.park_egress(
                        e.egress,
                        e.argument,
                        reason=why,
                        origin=_origin(address, invocations),
                        tag=header,
                    )
                )
                continue
            self._outbox.emit(e.egress, e.argument, self._partition(address))
        if self._replay_ends:
            self._timers.release(address)
        return None

    def _refusal(self, address: Address, result: InvocationResult) -> str | None:
        """Why ``result`` cannot be applied at all, or None."""
        specs = self._registry.specs(address.function_type)
        max_state = self.config.max_state_bytes
        for m in result.mutations:
            spec = specs.get(m.name)
            if spec is None:
                return f"mutation of unregistered state {m.name!r}"
            if m.value is None:
                continue
            if m.value.typename != spec.typename:
                return (
                    f"state {m.name!r} is registered as {spec.typename}, "
                    f"the mutation is of type {m.value.typename}"
                )
            if len(m.value.value or b"") > max_state:
                return f"state {m.name!r} would hold {len(m.value.value or b'')} bytes, over the limit of {max_state}"
        max_message = self.config.max_message_bytes
        for argument in _arguments(result):
            if len(argument.value or b"") > max_message:
                return (
                    f"a message of {len(argument.value or b'')} bytes ({argument.typename}) is "
                    f"over the limit of {max_message}"
                )
        return None

    def park(self, address: Address, invocation: PendingInvocation, reason: str) -> None:
        self.metrics.function_type(str(address.function_type)).dead_letters.inc()
        self._track(
            self._dead_letters.park_message(
                address,
                invocation.caller,
                invocation.argument,
                reason=reason,
                source=f"{self._router.topics.messages}/{message_id_text(invocation.message_id)}",
                origin=f"dispatcher of {address.function_type}",
                tag=self._clock.header,
            )
        )
        if self._replay_ends:
            self._timers.release(address)

    def _park_pending(self, pending: PendingMessage) -> None:
        self.park(
            pending.target,
            PendingInvocation(pending.caller, pending.argument, pending.message_id),
            self.dispatcher.unserved_reason(pending.target.function_type),
        )

    def _park_output(
        self, target: Address, sender: Address, argument: TypedValue, reason: str, origin: str
    ) -> None:
        self._track(
            self._dead_letters.park_message(
                target,
                sender,
                argument,
                reason=reason,
                source=f"a message sent by {sender}",
                origin=origin,
                tag=self._clock.header,
            )
        )

    def _fire_delayed(self, timer: PendingTimer) -> None:
        if (why := self._router.unroutable_target(timer.target)) is not None:
            self._park_output(timer.target, timer.sender, timer.argument, why, "a delayed message")
            return
        self._track(
            self._router.send(timer.target, timer.sender, timer.argument, tag=self._clock.header)
        )

    def _track(self, append: asyncio.Future[list[int]] | None) -> None:
        if append is not None:
            append.add_done_callback(self._append_done)

    def _append_done(self, future: asyncio.Future[list[int]]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.fail(Failure(f"an append to the log failed: {future.exception()}"))

    def log_failed(self, reason: str) -> None:
        """A write to the runtime's own log failed elsewhere (the egress outbox)."""
        self.fail(Failure(reason))

    # --- restored timers -----------------------------------------------------------------

    def _partition(self, address: Address) -> int:
        return partition_for(address, self._router.partitions)

    def _may_fire(self, sender: Address) -> bool:
        """Whether a restored timer of ``sender`` may fire: the log was read past what it
        held at the start in the sender's partition, and none of the sender's messages
        among those is still waiting."""
        partition = self._partition(sender)
        end = self._replay_ends.get(partition, 0)
        return self._positions[partition] >= end and not self.dispatcher.waits_below(sender, end)

    async def _end_replay(self) -> None:
        """Once everything the log held at the start is processed, timers fire freely."""
        while True:
            await asyncio.sleep(REPLAY_CHECK_INTERVAL)
            ends = self._replay_ends
            if all(self._positions[p] >= end for p, end in ends.items()) and not any(
                self.dispatcher.waits_below_any(ends)
            ):
                self._replay_ends = {}
                self._timers.release_all()
                return

    # --- what the ingress asks ---------------------------------------------------------

    def state_of(self, address: Address) -> Mapping[str, TypedValue]:
        return self.state.get(address)

    @property
    def buffered(self) -> int:
        return self.dispatcher.buffered

    @property
    def processed(self) -> int:
        return self.dispatcher.processed


def _origin(address: Address, invocations: Sequence[PendingInvocation]) -> str:
    """Where output parked while applying an answer came from (made only when parking)."""
    return f"{address} answering {message_id_text(invocations[-1].message_id)}"


def _arguments(result: InvocationResult) -> Iterator[TypedValue]:
    """Every value a result sends: messages, delayed messages, egress records."""
    for m in result.messages:
        yield m.argument
    for d in result.delayed:
        if isinstance(d, DelayedMessage):
            yield d.argument
    for e in result.egress:
        yield e.argument
