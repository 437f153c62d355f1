"""The worker: from the messages log to function calls and back.

It reads its partitions of the messages log into one :class:`Mailbox` per address,
and an :class:`EndpointDispatcher` per endpoint turns ready mailboxes into HTTP
requests: one request in flight per address (what arrives meanwhile waits for the
next batch), many addresses in flight at once, and the batches of several addresses
combined into one request. Outcomes are checked whole before anything is applied:
state mutations go to the state store, messages and egress records to the router,
delayed messages to the timer service.

A failed call is retried with exponential backoff inside the endpoint's call budget;
an exhausted budget is logged at CRITICAL and reported by :meth:`Worker.failures`
(the address keeps its messages and keeps being retried; global rollback replaces
this with checkpoints). Reading pauses while too much is buffered.

Progress: a message is *done* when the outcome of its batch has been applied; per
partition, the offset below which everything is done is committed to the log
periodically, so a restarted runtime resumes with what was not done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from runtime.egress import Egresses
from runtime.envelope import Envelope, MalformedEnvelope
from runtime.function_client import CallFailed, FunctionClient
from runtime.log import Log, StoredRecord, TopicPartition
from runtime.router import Router
from runtime.state import StateSpecConflict, StateSpecRegistry, StateStore
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

log = logging.getLogger("runtime.worker")


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
    commit_interval: float = 1.0
    poll_max_wait: float = 0.2
    shutdown_grace: float = 5.0


@dataclass(slots=True)
class PendingInvocation:
    caller: Address | None
    argument: TypedValue
    source: TopicPartition
    offset: int


@dataclass(frozen=True, slots=True)
class StuckAddress:
    """An address whose batch failed past its call budget."""

    address: Address
    since: float
    attempts: int
    reason: str


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


class PartitionProgress:
    """Which offsets of one partition are done; everything below :attr:`committable` is."""

    def __init__(self, position: int):
        self._outstanding: deque[int] = deque()
        self._done: set[int] = set()
        self._next = position

    def read(self, offset: int) -> None:
        self._outstanding.append(offset)
        self._next = offset + 1

    def done(self, offset: int) -> None:
        self._done.add(offset)
        outstanding, done = self._outstanding, self._done
        while outstanding and outstanding[0] in done:
            done.discard(outstanding.popleft())

    @property
    def committable(self) -> int:
        return self._outstanding[0] if self._outstanding else self._next


class EndpointDispatcher:
    """Turns the ready mailboxes of one endpoint into requests, within its concurrency."""

    def __init__(self, worker: Worker, endpoint: HttpEndpoint, client: FunctionClient):
        self.worker = worker
        self.endpoint = endpoint
        self.client = client
        self._ready: deque[Mailbox] = deque()
        self._in_flight = 0
        self._pump_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_batch = endpoint.max_num_batch_requests
        self._config = worker.config

    @property
    def requests_in_flight(self) -> int:
        return self._in_flight

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
        if self.worker.stopping:
            return
        free = self._config.max_concurrent_requests - self._in_flight
        while free > 0 and self._ready:
            # Spread what is ready over the free request slots: low latency when little is
            # ready, large batches (where throughput lives) when much is.
            per_request = min(
                self._config.max_batches_per_request, math.ceil(len(self._ready) / free)
            )
            mailboxes = [self._ready.popleft() for _ in range(min(per_request, len(self._ready)))]
            batches = []
            for mb in mailboxes:
                mb.queued = False
                if mb.in_flight is None:
                    mb.in_flight = [
                        mb.waiting.popleft() for _ in range(min(self._max_batch, len(mb.waiting)))
                    ]
                    mb.first_sent_at = time.monotonic()
                    mb.attempts = 0
                mb.attempts += 1
                batches.append(self.worker.batch_for(mb))
            self._in_flight += 1
            free -= 1
            task = asyncio.create_task(self._call(mailboxes, FunctionRequest(batches)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, mailboxes: list[Mailbox], request: FunctionRequest) -> None:
        try:
            url = self.endpoint.url_for(mailboxes[0].address.function_type)
            try:
                response = await self.client.invoke(url, request)
            except CallFailed as e:
                for mb in mailboxes:
                    self.retry(mb, e.reason)
            else:
                for mb, outcome in zip(mailboxes, response.outcomes, strict=True):
                    self.worker.apply(mb, outcome)
        finally:
            self._in_flight -= 1
            self._pump()

    def retry(self, mailbox: Mailbox, reason: str) -> None:
        """Send the mailbox's in-flight batch again after a backoff, within the call budget."""
        worker = self.worker
        elapsed = time.monotonic() - mailbox.first_sent_at
        backoff = min(
            self._config.retry_max_backoff,
            self._config.retry_initial_backoff * 2 ** (mailbox.attempts - 1),
        )
        backoff *= 0.5 + random.random() / 2
        if elapsed + backoff > self.endpoint.timeouts.call:
            worker.budget_exhausted(mailbox, reason)
            backoff = self._config.retry_max_backoff
        else:
            log.warning(
                "call for %s failed (attempt %d, retrying in %.0f ms): %s",
                mailbox.address,
                mailbox.attempts,
                backoff * 1000,
                reason,
            )
        asyncio.get_running_loop().call_later(backoff, self._resend, mailbox)

    def _resend(self, mailbox: Mailbox) -> None:
        if not self.worker.stopping:
            self.mark_ready(mailbox, first=True)

    async def drain(self, grace: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)


class Worker:
    def __init__(
        self,
        log_: Log,
        module: ModuleSpec,
        router: Router,
        egresses: Egresses,
        *,
        config: WorkerConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.config = config or WorkerConfig()
        self.stopping = False
        self._log = log_
        self._module = module
        self._router = router
        self._egresses = egresses
        self._transport = transport
        self._registry = StateSpecRegistry()
        self.state = StateStore()
        self._mailboxes: dict[Address, Mailbox] = {}
        self._dispatchers: dict[HttpEndpoint, EndpointDispatcher] = {}
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._buffered = 0
        self._over_cap = 0
        self._room = asyncio.Event()
        self._room.set()
        self._stuck: dict[Address, StuckAddress] = {}
        self._timers = TimerService(self._fire_delayed)
        self._consumer = log_.consumer()
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        partitions = self._router.partitions
        topics = self._router.topics
        committed = await self._log.committed_offsets(topics.consumer_group, topics.messages)
        positions = {
            TopicPartition(topics.messages, p): committed.get(p, 0) for p in range(partitions)
        }
        self._consumer.assign(positions)
        self._progress = {tp: PartitionProgress(pos) for tp, pos in positions.items()}
        self._tasks = [
            asyncio.create_task(self._consume(), name="worker-consume"),
            asyncio.create_task(self._commit_periodically(), name="worker-commit"),
        ]

    async def stop(self) -> None:
        """Stop reading, let requests in flight finish (bounded), commit what is done."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for dispatcher in self._dispatchers.values():
            await dispatcher.drain(self.config.shutdown_grace)
        self._timers.close()
        await self._commit()
        for dispatcher in self._dispatchers.values():
            await dispatcher.client.close()
        await self._consumer.close()

    # --- reading ---------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            await self._room.wait()
            room = min(1000, self.config.max_buffered_messages - self._buffered)
            polled = await self._consumer.poll(self.config.poll_max_wait, max_records=room)
            for tp, records in polled.items():
                progress = self._progress[tp]
                for record in records:
                    progress.read(record.offset)
                    self._deliver(tp, record)

    def _deliver(self, tp: TopicPartition, record: StoredRecord) -> None:
        try:
            envelope = Envelope.from_record(record)
        except MalformedEnvelope as e:
            log.error("skipping a record of %s: %s", tp, e)
            self._progress[tp].done(record.offset)
            return
        target = envelope.target
        mailbox = self._mailboxes.get(target)
        if mailbox is None:
            dispatcher = self._dispatcher_for(target.function_type)
            if dispatcher is None:
                log.error(
                    "skipping a message to %s at %s offset %d: no endpoint serves %s",
                    target,
                    tp,
                    record.offset,
                    target.function_type,
                )
                self._progress[tp].done(record.offset)
                return
            mailbox = self._mailboxes[target] = Mailbox(target, dispatcher)
        mailbox.waiting.append(
            PendingInvocation(envelope.caller, envelope.argument, tp, record.offset)
        )
        self._buffered += 1
        if len(mailbox.waiting) == mailbox.dispatcher.endpoint.max_num_batch_requests:
            self._over_cap += 1
        self._update_room()
        if mailbox.in_flight is None:
            mailbox.dispatcher.mark_ready(mailbox)

    def backlog_below_cap(self) -> None:
        """A mailbox's backlog dropped below its endpoint's maxNumBatchRequests."""
        self._over_cap -= 1
        self._update_room()

    def _update_room(self) -> None:
        if self._buffered >= self.config.max_buffered_messages or self._over_cap:
            self._room.clear()
        else:
            self._room.set()

    def _dispatcher_for(self, function_type: TypeName) -> EndpointDispatcher | None:
        endpoint = self._module.endpoint_for(function_type)
        if endpoint is None:
            return None
        dispatcher = self._dispatchers.get(endpoint)
        if dispatcher is None:
            client = FunctionClient(
                endpoint,
                max_connections=self.config.max_concurrent_requests,
                transport=self._transport,
            )
            dispatcher = self._dispatchers[endpoint] = EndpointDispatcher(self, endpoint, client)
        return dispatcher

    # --- requests and outcomes -------------------------------------------------------

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
        )

    def apply(self, mailbox: Mailbox, outcome: BatchOutcome) -> None:
        dispatcher = mailbox.dispatcher
        if isinstance(outcome, MissingStateSpecs):
            if {s.name for s in outcome.specs} <= mailbox.sent_states:
                dispatcher.retry(
                    mailbox, "protocol violation: the function asks for states the batch carried"
                )
                return
            try:
                # Another batch of the type may have registered them meanwhile: then this
                # just sends the batch again, now with them.
                self._registry.register(mailbox.address.function_type, outcome.specs)
            except StateSpecConflict as e:
                dispatcher.retry(mailbox, str(e))
                return
            dispatcher.mark_ready(mailbox, first=True)
            return
        if isinstance(outcome, FunctionFailure):
            dispatcher.retry(mailbox, outcome.describe())
            return
        problem = self._check(mailbox.address, outcome)
        if problem is not None:
            dispatcher.retry(mailbox, f"protocol violation: {problem}")
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
        pending_tokens: set[str] = set()
        for d in result.delayed:
            if isinstance(d, DelayedMessage):
                if (why := self._router.unroutable_target(d.target)) is not None:
                    return f"delayed message to {d.target}: {why}"
                token = d.cancellation_token
                if token:
                    if token in pending_tokens or self._timers.has_token(address, token):
                        return (
                            f"{address} already has a pending delayed message with token {token!r}"
                        )
                    pending_tokens.add(token)
            else:
                pending_tokens.discard(d.token)
        for e in result.egress:
            if (why := self._egresses.problem(e.egress, e.argument)) is not None:
                return why
        return None

    def _apply_result(self, mailbox: Mailbox, result: InvocationResult) -> None:
        address = mailbox.address
        if result.mutations:
            self.state.apply(address, result.mutations)
        for msg in result.messages:
            self._track(self._router.send(msg.target, address, msg.argument))
        for d in result.delayed:
            if isinstance(d, DelayCancellation):
                self._timers.cancel(address, d.token)
            else:
                self._timers.schedule(address, d)
        for e in result.egress:
            self._track(self._egresses.emit(e.egress, e.argument))
        self._finish(mailbox)

    def _finish(self, mailbox: Mailbox) -> None:
        done = mailbox.in_flight or []
        mailbox.in_flight = None
        for p in done:
            self._progress[p.source].done(p.offset)
        self.processed += len(done)
        self._buffered -= len(done)
        self._update_room()
        if self._stuck.pop(mailbox.address, None) is not None:
            log.warning("%s recovered after its call budget was exhausted", mailbox.address)
        if mailbox.waiting:
            mailbox.dispatcher.mark_ready(mailbox)
        else:
            del self._mailboxes[mailbox.address]

    def budget_exhausted(self, mailbox: Mailbox, reason: str) -> None:
        log.critical(
            "CALL BUDGET EXHAUSTED for %s after %d attempts over %.1f s; its messages are kept "
            "and retried. Last error: %s",
            mailbox.address,
            mailbox.attempts,
            time.monotonic() - mailbox.first_sent_at,
            reason,
        )
        self._stuck[mailbox.address] = StuckAddress(
            mailbox.address, time.time(), mailbox.attempts, reason
        )

    def _fire_delayed(self, sender: Address, message: DelayedMessage) -> None:
        self._track(self._router.send(message.target, sender, message.argument))

    def _track(self, append: asyncio.Future[list[int]] | None) -> None:
        if append is not None:
            append.add_done_callback(_log_append_failure)

    # --- progress --------------------------------------------------------------------

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.commit_interval)
            await self._commit()

    async def _commit(self) -> None:
        # What is done now has appended all its outputs; once they are durable, it may be
        # committed as done.
        done = {tp: p.committable for tp, p in self._progress.items()}
        await self._log.flush()
        await self._log.commit_offsets(self._router.topics.consumer_group, done)

    # --- what the ingress asks ---------------------------------------------------------

    def state_of(self, address: Address) -> Mapping[str, TypedValue]:
        return self.state.get(address)

    def failures(self) -> list[StuckAddress]:
        return list(self._stuck.values())

    @property
    def buffered(self) -> int:
        return self._buffered


def _log_append_failure(future: asyncio.Future[list[int]]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.critical("an append to the log failed: %s", future.exception())
