"""The worker: from the messages log to function calls and back, for one generation.

It reads its partitions of the messages log into one :class:`Mailbox` per address,
and an :class:`EndpointDispatcher` per endpoint turns ready mailboxes into HTTP
requests: one request in flight per address (what arrives meanwhile waits for the
next batch), many addresses in flight at once, and the batches of several addresses
combined into one request. Outcomes are checked whole before anything is applied:
state mutations go to the state store, messages and egress records to the router,
delayed messages to the timer service. Every record it produces carries the current
epoch's tag; a tagged record of rolled-back work is skipped when read.

The worker is a checkpoint participant (:meth:`Worker.capture`): its local snapshot is
the state changed since the last checkpoint, its pending inputs (mailboxes and
in-flight batches, with the ids of their records), its timers and its read positions.

A failed call is retried with exponential backoff inside the endpoint's call budget.
An exhausted budget, or a protocol violation, is a :class:`Failure`: the worker stops
and asks for a rollback of the whole system (``on_failure``). A worker never outlives
its generation: a rollback builds a new one from the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import httpx

from runtime.checkpoints.coordinator import Capture
from runtime.checkpoints.epochs import EpochClock, Tag
from runtime.checkpoints.snapshot import (
    EgressItem,
    MessageId,
    PendingMessage,
    PendingTimer,
    WorkerPart,
    encode_worker_part,
    message_id_text,
)
from runtime.dead_letters import DeadLetters
from runtime.egress import Egresses
from runtime.envelope import Envelope
from runtime.errors import CallFailed, LogError, MalformedEnvelope, StateSpecConflict
from runtime.function_client import FunctionClient
from runtime.log import Log, StoredRecord, TopicPartition
from runtime.router import Router
from runtime.state import StateSpecRegistry, StateStore
from runtime.timers import TimerService
from statefun.address import Address, TypeName
from statefun.module_spec import HttpEndpoint, ModuleSpec
from statefun.protocol import (
    BatchOutcome,
    DelayCancellation,
    DelayedMessage,
    FunctionFailure,
    FunctionRequest,
    Invocation,
    InvocationBatch,
    InvocationResult,
    MissingStateSpecs,
)
from statefun.values import TypedValue

log = logging.getLogger(__name__)

EXPIRY_SWEEP_INTERVAL = 1.0
"""Seconds between sweeps of expired state out of memory (reads never see it anyway)."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    max_concurrent_requests: int = 16
    """HTTP requests in flight per endpoint."""
    max_batches_per_request: int = 64
    """Addresses whose batches one HTTP request may carry."""
    max_buffered_messages: int = 10_000
    """Reading pauses while more messages than this wait in mailboxes or in flight."""
    retry_initial_backoff: float = 0.01
    retry_max_backoff: float = 2.0
    poll_max_wait: float = 0.2
    shutdown_grace: float = 5.0


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the worker asks for a rollback: what failed, where, and on which messages."""

    reason: str
    address: Address | None = None
    messages: tuple[MessageId, ...] = ()

    def describe(self) -> str:
        where = [f"address {self.address}"] if self.address else []
        if self.messages:
            where.append("messages " + ", ".join(message_id_text(m) for m in self.messages))
        return f"{self.reason} ({'; '.join(where)})" if where else self.reason


@dataclass(slots=True)
class PendingInvocation:
    caller: Address | None
    argument: TypedValue
    message_id: MessageId


@dataclass(slots=True, eq=False)
class Mailbox:
    address: Address
    dispatcher: EndpointDispatcher
    waiting: deque[PendingInvocation] = field(default_factory=deque)
    in_flight: list[PendingInvocation] | None = None
    sent_states: frozenset[str] = frozenset()
    """The state names the in-flight batch carried."""
    queued: bool = False
    first_sent_at: float = 0.0
    attempts: int = 0


class FunctionClients:
    """One client (connection pool) per endpoint, kept across generations."""

    def __init__(self, config: WorkerConfig, transport: httpx.AsyncBaseTransport | None = None):
        self._config = config
        self._transport = transport
        self._clients: dict[HttpEndpoint, FunctionClient] = {}

    def get(self, endpoint: HttpEndpoint) -> FunctionClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = FunctionClient(
                endpoint,
                max_connections=self._config.max_concurrent_requests,
                transport=self._transport,
            )
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


class EndpointDispatcher:
    """Turns the ready mailboxes of one endpoint URL into requests, within its concurrency
    (an endpoint with ``{function.name}`` in its template has one URL per function type)."""

    def __init__(self, worker: Worker, endpoint: HttpEndpoint, url: str):
        self.worker = worker
        self.endpoint = endpoint
        self.url = url
        self.client = worker.clients.get(endpoint)
        self._ready: deque[Mailbox] = deque()
        self._in_flight = 0
        self._pump_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_batch = endpoint.max_num_batch_requests
        self._config = worker.config

    def mark_ready(self, mailbox: Mailbox, *, first: bool = False) -> None:
        if mailbox.queued:
            return
        mailbox.queued = True
        if first:
            self._ready.appendleft(mailbox)
        else:
            self._ready.append(mailbox)
        # Pump once per loop iteration, so everything delivered together is batched together.
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        worker = self.worker
        free = self._config.max_concurrent_requests - self._in_flight
        while free > 0 and self._ready and not (worker.stopped or worker.draining):
            # Spread what is ready over the free request slots: low latency when little is
            # ready, large batches (where throughput lives) when much is.
            per_request = min(
                self._config.max_batches_per_request, math.ceil(len(self._ready) / free)
            )
            mailboxes: list[Mailbox] = []
            while self._ready and len(mailboxes) < per_request:
                mb = self._ready.popleft()
                mb.queued = False
                if mb.in_flight is None and not worker.take_batch(mb, self._max_batch):
                    continue
                mb.attempts += 1
                mailboxes.append(mb)
            if not mailboxes:
                continue
            request = FunctionRequest([worker.batch_for(mb) for mb in mailboxes])
            self._in_flight += 1
            free -= 1
            task = asyncio.create_task(self._call(mailboxes, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, mailboxes: list[Mailbox], request: FunctionRequest) -> None:
        try:
            try:
                response = await self.client.invoke(self.url, request)
            except CallFailed as e:
                if self.worker.stopped:
                    return
                for mb in mailboxes:
                    if e.protocol_violation:
                        self.worker.fail_batch(mb, f"protocol violation: {e.reason}")
                    else:
                        self.retry(mb, e.reason)
            else:
                for mb, outcome in zip(mailboxes, response.outcomes, strict=True):
                    if self.worker.stopped:
                        return
                    self.worker.apply(mb, outcome)
        finally:
            self._in_flight -= 1
            self._pump()

    def retry(self, mailbox: Mailbox, reason: str) -> None:
        """Send the mailbox's in-flight batch again after a backoff, within the call budget;
        past the budget, the batch has failed."""
        elapsed = time.monotonic() - mailbox.first_sent_at
        backoff = min(
            self._config.retry_max_backoff,
            self._config.retry_initial_backoff * 2 ** (mailbox.attempts - 1),
        )
        backoff *= 0.5 + random.random() / 2
        if elapsed + backoff > self.endpoint.timeouts.call:
            self.worker.fail_batch(
                mailbox,
                f"call budget of {self.endpoint.timeouts.call:g} s exhausted after "
                f"{mailbox.attempts} attempts: {reason}",
            )
            return
        log.warning(
            "call for %s failed (attempt %d, retrying in %.0f ms): %s",
            mailbox.address,
            mailbox.attempts,
            backoff * 1000,
            reason,
        )
        asyncio.get_running_loop().call_later(backoff, self._resend, mailbox)

    def _resend(self, mailbox: Mailbox) -> None:
        if not self.worker.stopped:
            self.mark_ready(mailbox, first=True)

    async def drain(self, grace: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


class Worker:
    name = "worker"

    def __init__(
        self,
        log_: Log,
        module: ModuleSpec,
        router: Router,
        egresses: Egresses,
        dead_letters: DeadLetters,
        clock: EpochClock,
        clients: FunctionClients,
        registry: StateSpecRegistry,
        state: StateStore,
        *,
        on_failure: Callable[[Failure], None],
        on_published: Callable[[int], Awaitable[None]],
        config: WorkerConfig | None = None,
        poisoned: Mapping[MessageId, str] | None = None,
        isolated: frozenset[Address] = frozenset(),
    ):
        self.config = config or WorkerConfig()
        self.clients = clients
        self.state = state
        self.stopped = False
        self.draining = False
        self.failed = False
        self._log = log_
        self._module = module
        self._router = router
        self._egresses = egresses
        self._dead_letters = dead_letters
        self._clock = clock
        self._registry = registry
        self._on_failure = on_failure
        self._on_published = on_published
        self._poisoned = dict(poisoned or {})
        self._isolated = isolated
        self._mailboxes: dict[Address, Mailbox] = {}
        self._dispatchers: dict[str, EndpointDispatcher] = {}
        self._positions: dict[int, int] = {}
        self._buffered = 0
        self._over_cap = 0
        self._room = asyncio.Event()
        self._room.set()
        self._timers = TimerService(self._fire_delayed)
        self._consumer = log_.consumer()
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._outbox: list[EgressItem] = []
        self._egress_serial = 0
        self._publishing: set[asyncio.Task[None]] = set()
        self._publishing_ids: set[str] = set()
        self._publish_lock = asyncio.Lock()
        self._replay_ends: dict[int, int] = {}
        self._replaying = 0
        self.processed = 0
        self.skipped = 0

    # --- lifecycle -------------------------------------------------------------------

    def start(self, restored: WorkerPart | None, log_ends: Mapping[int, int]) -> None:
        """Resume from a checkpoint's part (None: from the beginning of the log).
        Restored timers fire only once the worker has read and processed the log up to
        ``log_ends`` (the end of each partition when it began): what the log held then
        happened before them."""
        topic = self._router.topics.messages
        restored_positions = restored.positions if restored else {}
        self._positions = {p: restored_positions.get(p, 0) for p in range(self._router.partitions)}
        self._consumer.assign({TopicPartition(topic, p): o for p, o in self._positions.items()})
        if restored:
            self._outbox = list(restored.egress)
            for p in restored.pending:
                self._enqueue(p.target, PendingInvocation(p.caller, p.argument, p.message_id))
            self._timers.hold()
            self._timers.restore(restored.timers)
            self._replay_ends = dict(log_ends)
            self._replaying = sum(self._is_replay(p.message_id) for p in restored.pending)
        self._task = asyncio.create_task(self._consume(), name="worker-consume")
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="state-expiry")

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_INTERVAL)
            self.state.expire(int(time.time() * 1000))

    def _is_replay(self, message_id: MessageId) -> bool:
        """Whether the message was in the log when this worker began (it is replayed)."""
        return message_id[1] < self._replay_ends.get(message_id[0], 0)

    def _release_timers_after_replay(self) -> None:
        """Once every message the log held at the start is read and processed, the
        restored timers may fire (a cancellation among those messages came first)."""
        if (
            self._replay_ends
            and self._replaying == 0
            and all(self._positions[p] >= end for p, end in self._replay_ends.items())
        ):
            self._replay_ends = {}
            self._timers.release()

    async def stop(self, *, drain: bool) -> None:
        """Stop reading; with ``drain``, let requests in flight finish (bounded) and apply
        their outcomes, otherwise abandon them (a rollback: their inputs are pending in
        the checkpoint)."""
        for task in (self._task, self._sweeper, *self._publishing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if drain:
            self.draining = True  # no new requests: what is waiting stays pending
            for dispatcher in self._dispatchers.values():
                await dispatcher.drain(self.config.shutdown_grace)
        self.stopped = True
        for dispatcher in self._dispatchers.values():
            dispatcher.cancel()
        # Pending timers stay in place for a last checkpoint, but fire no more.
        self._timers.suspend()
        await self._consumer.close()

    def fail(self, failure: Failure) -> None:
        """Stop processing and ask for a rollback (once)."""
        if self.stopped:
            return
        self.stopped = self.failed = True
        log.critical("FAILURE, rolling back: %s", failure.describe())
        self._on_failure(failure)

    # --- checkpoints -------------------------------------------------------------------

    def capture(self) -> Capture:
        pending = [
            PendingMessage(mb.address, p.caller, p.argument, p.message_id)
            for mb in self._mailboxes.values()
            for p in (*(mb.in_flight or ()), *mb.waiting)
        ]
        part = WorkerPart(
            pending, self._timers.pending(), dict(self._positions), list(self._outbox)
        )
        rows, changed = self.state.take_changes()
        return Capture(encode_worker_part(part), rows, lambda: self.state.changed_again(changed))

    def publish_committed(self, checkpoint: int) -> asyncio.Task[None] | None:
        """Checkpoint ``checkpoint`` committed: publish the egress records it covers. They
        stay in the outbox (and in later checkpoints) until they are out."""
        items = [
            item
            for item in self._outbox
            if item.epoch <= checkpoint and item.id not in self._publishing_ids
        ]
        if not items:
            return None
        self._publishing_ids.update(item.id for item in items)
        task = asyncio.create_task(self._publish(items, checkpoint), name="egress-publish")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        return task

    async def _publish(self, items: list[EgressItem], checkpoint: int) -> None:
        ids = {item.id for item in items}
        try:
            async with self._publish_lock:  # one checkpoint's records after another's
                if self.failed:
                    # An earlier publication failed: noting this checkpoint as published
                    # would cover the records that did not go out. The rollback restores
                    # them from the checkpoint and publishes them again.
                    return
                try:
                    await self._egresses.publish_committed(checkpoint, items)
                except Exception as e:
                    self.fail(Failure(f"publishing egress of checkpoint {checkpoint} failed: {e}"))
                    return
                self._outbox = [item for item in self._outbox if item.id not in ids]
                await self._on_published(checkpoint)
        finally:
            self._publishing_ids -= ids

    # --- reading ---------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            await self._room.wait()
            room = min(1000, self.config.max_buffered_messages - self._buffered)
            try:
                polled = await self._consumer.poll(self.config.poll_max_wait, max_records=room)
            except LogError as e:
                # The log cannot be read (a stalled broker): the generation ends, and the
                # runtime starts new ones until the log answers again.
                self.fail(Failure(f"reading the log failed: {e}"))
                return
            for tp, records in polled.items():
                for record in records:
                    self._deliver(tp, record)
            self._release_timers_after_replay()

    def _deliver(self, tp: TopicPartition, record: StoredRecord) -> None:
        self._positions[tp.partition] = record.offset + 1
        tag = Tag.from_headers(record.headers)
        clock = self._clock
        if not clock.skip.accepts(tag):
            self.skipped += 1
            return
        if tag is not None and tag.generation == clock.generation and tag.epoch > clock.epoch:
            log.error(
                "record %s@%d is from epoch %d of this generation, ahead of this runtime's %d: "
                "is another runtime writing this application's topics (the same --app-id)?",
                tp,
                record.offset,
                tag.epoch,
                clock.epoch,
            )
        try:
            envelope = Envelope.from_record(record)
        except MalformedEnvelope as e:
            log.error("skipping a record of %s: %s", tp, e)
            return
        self._enqueue(
            envelope.target,
            PendingInvocation(envelope.caller, envelope.argument, (tp.partition, record.offset)),
        )

    def _enqueue(self, target: Address, invocation: PendingInvocation) -> None:
        mailbox = self._mailboxes.get(target)
        if mailbox is None:
            dispatcher = self._dispatcher_for(target.function_type)
            if dispatcher is None:
                log.error(
                    "skipping message %s to %s: no endpoint serves %s",
                    message_id_text(invocation.message_id),
                    target,
                    target.function_type,
                )
                return
            mailbox = self._mailboxes[target] = Mailbox(target, dispatcher)
        mailbox.waiting.append(invocation)
        self._buffered += 1
        if self._replay_ends and self._is_replay(invocation.message_id):
            self._replaying += 1
        if len(mailbox.waiting) == mailbox.dispatcher.endpoint.max_num_batch_requests:
            self._over_cap += 1
        self._update_room()
        if mailbox.in_flight is None:
            mailbox.dispatcher.mark_ready(mailbox)

    def _update_room(self) -> None:
        if self._buffered >= self.config.max_buffered_messages or self._over_cap:
            self._room.clear()
        else:
            self._room.set()

    def _dispatcher_for(self, function_type: TypeName) -> EndpointDispatcher | None:
        endpoint = self._module.endpoint_for(function_type)
        if endpoint is None:
            return None
        url = endpoint.url_for(function_type)
        dispatcher = self._dispatchers.get(url)
        if dispatcher is None:
            dispatcher = self._dispatchers[url] = EndpointDispatcher(self, endpoint, url)
        return dispatcher

    # --- requests and outcomes -------------------------------------------------------

    def take_batch(self, mailbox: Mailbox, max_batch: int) -> bool:
        """Move the next batch from the mailbox's waiting messages into flight; False if
        nothing is left to send (poisoned messages are parked on the way)."""
        waiting = mailbox.waiting
        limit = 1 if mailbox.address in self._isolated else max_batch
        before = len(waiting)
        batch: list[PendingInvocation] = []
        while waiting and len(batch) < limit:
            invocation = waiting.popleft()
            error = self._poisoned.get(invocation.message_id)
            if error is None:
                batch.append(invocation)
            else:
                self._park(mailbox.address, invocation, error)
        if before >= mailbox.dispatcher.endpoint.max_num_batch_requests > len(waiting):
            self._over_cap -= 1
        if not batch:
            self._update_room()
            if not waiting:
                self._forget(mailbox)
            return False
        mailbox.in_flight = batch
        mailbox.first_sent_at = time.monotonic()
        mailbox.attempts = 0
        return True

    def _park(self, address: Address, invocation: PendingInvocation, error: str) -> None:
        """The failure policy gave up on this message: into the dead-letter topic with it."""
        self._buffered -= 1
        if self._replay_ends and self._is_replay(invocation.message_id):
            self._replaying -= 1
            self._release_timers_after_replay()
        self._track(
            self._dead_letters.park(
                None,
                Envelope(address, invocation.caller, invocation.argument).to_record().value,
                reason=error,
                source=f"{self._router.topics.messages}/{message_id_text(invocation.message_id)}",
                origin=f"failure policy of {address.function_type}",
                tag=self._clock.header,
            )
        )

    def batch_for(self, mailbox: Mailbox) -> InvocationBatch:
        address = mailbox.address
        values = self.state.get(address)
        specs = self._registry.specs(address.function_type)
        assert mailbox.in_flight is not None
        mailbox.sent_states = frozenset(specs)
        return InvocationBatch(
            address,
            {name: values.get(name) for name in specs},
            [Invocation(p.caller, p.argument) for p in mailbox.in_flight],
            self._timers.tokens_of(address),
        )

    def apply(self, mailbox: Mailbox, outcome: BatchOutcome) -> None:
        dispatcher = mailbox.dispatcher
        if isinstance(outcome, MissingStateSpecs):
            if {s.name for s in outcome.specs} <= mailbox.sent_states:
                self.fail_batch(
                    mailbox, "protocol violation: the function asks for states the batch carried"
                )
                return
            try:
                # Another batch of the type may have registered them meanwhile: then this
                # just sends the batch again, now with them.
                self._registry.register(mailbox.address.function_type, outcome.specs)
            except StateSpecConflict as e:
                self.fail_batch(mailbox, str(e))
                return
            dispatcher.mark_ready(mailbox, first=True)
            return
        if isinstance(outcome, FunctionFailure):
            dispatcher.retry(mailbox, outcome.describe())
            return
        problem = self._check(mailbox.address, outcome)
        if problem is not None:
            self.fail_batch(mailbox, f"protocol violation: {problem}")
            return
        self._apply_result(mailbox, outcome)

    def _check(self, address: Address, result: InvocationResult) -> str | None:
        """Why ``result`` cannot be applied as a whole, or None."""
        specs = self._registry.specs(address.function_type)
        for m in result.mutations:
            spec = specs.get(m.name)
            if spec is None:
                return f"mutation of unregistered state {m.name!r}"
            if m.value is not None and m.value.typename != spec.typename:
                return (
                    f"state {m.name!r} is registered as {spec.typename}, "
                    f"the mutation is of type {m.value.typename}"
                )
        for msg in result.messages:
            if (why := self._router.unroutable_target(msg.target)) is not None:
                return f"message to {msg.target}: {why}"
        for d in result.delayed:
            if (
                isinstance(d, DelayedMessage)
                and (why := self._router.unroutable_target(d.target)) is not None
            ):
                return f"delayed message to {d.target}: {why}"
        for e in result.egress:
            if (why := self._egresses.problem(e.egress, e.argument)) is not None:
                return why
        return None

    def _apply_result(self, mailbox: Mailbox, result: InvocationResult) -> None:
        address = mailbox.address
        header = self._clock.header
        now_ms = int(time.time() * 1000)
        specs = self._registry.specs(address.function_type)
        if result.mutations:
            self.state.apply(address, result.mutations, specs, now_ms)
        self.state.touch(address, specs, now_ms)
        for msg in result.messages:
            self._track(self._router.send(msg.target, address, msg.argument, tag=header))
        for d in result.delayed:
            if isinstance(d, DelayCancellation):
                self._timers.cancel(address, d.token)
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
                self._timers.schedule(
                    PendingTimer(
                        now_ms + d.delay_ms, address, d.target, d.argument, d.cancellation_token
                    )
                )
        for e in result.egress:
            self._egress_serial += 1
            item = EgressItem(
                f"{self._clock.generation}.{self._clock.epoch}.{self._egress_serial}",
                e.egress,
                e.argument,
                self._clock.epoch,
            )
            if self._egresses.exactly_once(e.egress):
                self._outbox.append(item)  # until its checkpoint commits
            else:
                self._track(self._egresses.publish(item))
        self._finish(mailbox)

    def _finish(self, mailbox: Mailbox) -> None:
        done = mailbox.in_flight or []
        mailbox.in_flight = None
        self.processed += len(done)
        self._buffered -= len(done)
        self._update_room()
        if self._replay_ends:
            self._replaying -= sum(self._is_replay(p.message_id) for p in done)
            self._release_timers_after_replay()
        if mailbox.waiting:
            mailbox.dispatcher.mark_ready(mailbox)
        else:
            self._forget(mailbox)

    def _forget(self, mailbox: Mailbox) -> None:
        if not mailbox.queued and mailbox.in_flight is None:
            self._mailboxes.pop(mailbox.address, None)

    def fail_batch(self, mailbox: Mailbox, reason: str) -> None:
        batch = mailbox.in_flight or []
        self.fail(Failure(reason, mailbox.address, tuple(p.message_id for p in batch)))

    def _fire_delayed(self, timer: PendingTimer) -> None:
        self._track(
            self._router.send(timer.target, timer.sender, timer.argument, tag=self._clock.header)
        )

    def _track(self, append: asyncio.Future[list[int]] | None) -> None:
        if append is not None:
            append.add_done_callback(self._append_done)

    def _append_done(self, future: asyncio.Future[list[int]]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.fail(Failure(f"an append to the log failed: {future.exception()}"))

    # --- what the ingress asks ---------------------------------------------------------

    def state_of(self, address: Address) -> Mapping[str, TypedValue]:
        return self.state.get(address)

    @property
    def buffered(self) -> int:
        return self._buffered
