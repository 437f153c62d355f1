"""The dispatcher: mailboxes, function calls, and failures contained to what they touch.

What it owns:

* a :class:`Mailbox` per address: the messages read for it but not yet answered, in
  order, as the batch in flight (one request per address at a time) and the messages
  waiting for the next batch;
* a :class:`Lane` per endpoint URL: its request slots and its ready mailboxes, whose
  batches are combined into one request. **Adaptive batching**: with no request of the
  lane in flight, what is ready goes at once (a single ready address is sent alone: no
  added latency when idle); while requests are in flight, a new one is opened only for
  at least ``busy_batch_min`` ready addresses, and less waits for a request to come back
  (or ``max_batch_delay`` at most): fewer, fuller requests when busy, up to
  ``max_batches_per_request`` addresses each;
* a :class:`FunctionType` per function type: its failure policy, its failing addresses,
  whether it is paused or unavailable.

**Bounded memory.** A mailbox holds at most ``maxNumBatchRequests`` waiting messages, and
none beyond what it has while it is *held* (failing, or its type paused or
unavailable). Further messages *overflow*: they stay in the log, and the mailbox's
overflow cursor says from which offset of its partition they are read again
(:meth:`DispatchHost.reread`) once it has room. A paused or unavailable type overflows
as a whole, per partition, without a mailbox per address. So a hot or stuck address
never stops reading for the others, and only in-memory messages of addresses that can
make progress count against the worker's buffer.

**Split before blame.** A request carrying several addresses that fails as a whole (the
call failed, timed out or its answer broke the protocol) blames none of them: each
address goes again alone, at once, and only a failure of that attempt counts against it
(a batch's own ``FunctionFailure`` names its address, and counts at once).

**Failures** (policies ``dead-letter``, the default, and ``retry``). A failed attempt
applied nothing, so its address is held and retried on its own, with exponential
backoff, one message per request, while every other address goes on. A message that
keeps failing alone while other messages of its type succeed is parked in the dead
letters after the policy's ``dead_letter_after`` (``dead-letter`` only). A type whose
addresses all fail with no success since (an outage, a broken deploy) is *unavailable*:
nothing is parked, its messages wait in the log, and one probe at a time (a fresh
address first) is sent with a growing backoff until one succeeds. Log lines: one when an
address starts failing and one when it recovers or a message is parked, a few at once
then about one a second per type (``runtime.quiet_log``); one when a type becomes unavailable and when it is back. Policy ``fail`` keeps
StateFun's behaviour: retry within the endpoint's call budget, then ask the host for a
rollback of everything (as for any answer that breaks the protocol).

Every attempt has a total deadline (the endpoint's ``call`` timeout); a trickling answer
fails when it runs out.

A read of the log again that fails, or an unexpected error in one of its tasks, asks the
host for a rollback: the messages behind it would otherwise wait unseen.

The dispatcher applies nothing itself: its host (the worker) builds batches, checks and
applies results, parks messages and reads the log again. Time comes from a
:class:`Clock`, so tests can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.checkpoints.snapshot import MessageId, Overflow, PendingMessage, message_id_text
from runtime.errors import CallFailed, LogError
from runtime.health import FunctionTypeHealth
from runtime.metrics import (
    FailureKind,
    FunctionTypeLoad,
    FunctionTypeMeters,
    Metrics,
    RollbackCause,
    RouteCallMeters,
    route_source,
)
from runtime.quiet_log import QuietLog
from statefun.address import Address, TypeName
from statefun.module_spec import FailurePolicy, HttpEndpoint, ModuleSpec
from statefun.protocol import (
    BatchOutcome,
    FunctionFailure,
    FunctionRequest,
    FunctionResponse,
    InvocationBatch,
    InvocationResult,
    MissingStateSpecs,
    StateSpec,
)
from statefun.values import TypedValue

log = logging.getLogger(__name__)

PROBE_CANDIDATES = 16
"""Addresses of an unavailable type kept in memory besides its failing ones: fresh
messages to probe it with (a fresh one tells an outage from poison); the type's other
messages wait in the log."""
UNKNOWN_FUNCTION_TYPE = "UnknownFunctionType"
"""The error type our SDK answers for a batch of a function type it does not serve."""


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    max_concurrent_requests: int = 16
    """HTTP requests in flight per endpoint URL."""
    max_batches_per_request: int = 64
    """Addresses whose batches one HTTP request may carry."""
    busy_batch_min: int = 8
    """While requests of an endpoint are in flight, a new one opens only for this many
    ready addresses (or what was held back for ``max_batch_delay``); each then carries
    at least this many (fewer, fuller requests when busy)."""
    max_batch_delay: float = 0.002
    """Longest a ready address waits for a request to come back while requests are in
    flight (seconds)."""
    max_buffered_messages: int = 10_000
    """Reading pauses while more messages than this, of addresses that can make progress,
    wait in memory or are in flight."""
    retry_initial_backoff: float = 0.01
    retry_max_backoff: float = 2.0
    """Backoff between the attempts of a failing address."""
    probe_max_backoff: float = 5.0
    """Backoff between probes of an unavailable function type."""
    retry_share: float = 0.25
    """Share of an endpoint's request slots that failing addresses may use at once."""
    reread_scan: int = 10_000
    """Records of the log one read of an overflow looks at, at most."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Why the worker asks for a rollback of everything: what failed, where, and on which
    messages."""

    reason: str
    address: Address | None = None
    messages: tuple[MessageId, ...] = ()
    cause: RollbackCause = "log"
    """Most rollbacks no function caused are the log's (it could not be read or appended to)."""

    def describe(self) -> str:
        where = [f"address {self.address}"] if self.address else []
        if self.messages:
            where.append("messages " + ", ".join(message_id_text(m) for m in self.messages))
        return f"{self.reason} ({'; '.join(where)})" if where else self.reason


@dataclass(slots=True)
class PendingInvocation:
    """A message read for an address and not yet answered."""

    caller: Address | None
    argument: TypedValue
    message_id: MessageId
    source: str | None = None
    """The Kafka ingress source it came from (``runtime.envelope.source_of``), if any."""


# --- seams ----------------------------------------------------------------------------


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time for backoffs and deadlines: monotonic seconds, wall-clock milliseconds, and
    callbacks later."""

    def now(self) -> float: ...

    def wall_ms(self) -> int: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


class LoopClock:
    """The event loop's clock."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        return self._loop.call_later(delay, callback)


class Invoker(Protocol):
    """Sends requests to function endpoints (``runtime.function_client``)."""

    async def invoke(
        self, endpoint: HttpEndpoint, url: str, request: FunctionRequest
    ) -> FunctionResponse:
        """One outcome per batch, in order; raises :class:`CallFailed`."""
        ...

    def serves(self, endpoint: HttpEndpoint, url: str, function_type: str) -> bool | None:
        """Whether the endpoint at ``url`` said it serves ``function_type`` (None: unknown)."""
        ...

    async def describe(self, endpoint: HttpEndpoint, url: str) -> None:
        """Ask the endpoint again what it serves."""
        ...


class DispatchHost(Protocol):
    """What the dispatcher needs from the worker."""

    def batch_for(
        self, address: Address, invocations: Sequence[PendingInvocation]
    ) -> InvocationBatch:
        """The batch to send: the address's state, the invocations, pending timer tokens."""
        ...

    def apply(
        self, address: Address, invocations: Sequence[PendingInvocation], result: InvocationResult
    ) -> str | None:
        """Check ``result`` whole and apply it; why it was refused (nothing applied), or None."""
        ...

    def register_specs(self, function_type: TypeName, specs: Sequence[StateSpec]) -> str | None:
        """Register state specs a function declared; why they conflict, or None."""
        ...

    def park(self, address: Address, invocation: PendingInvocation, reason: str) -> None:
        """Give up on a message: into the dead letters with it."""
        ...

    def fail(self, failure: Failure) -> None:
        """Roll everything back (policy ``fail``)."""
        ...

    def position(self, partition: int) -> int:
        """The offset of the next record the host reads from ``partition``."""
        ...

    def reread(
        self,
        partition: int,
        offset: int,
        stop: int | None,
        limit: int,
        wanted: Callable[[Address], bool],
    ) -> Awaitable[tuple[list[tuple[Address, PendingInvocation]], int]]:
        """Messages of ``partition`` from ``offset`` below ``stop`` (None: the read position)
        whose target is ``wanted``, at most ``limit``, in order; and the offset after the
        last record looked at."""
        ...


# --- state ----------------------------------------------------------------------------


@dataclass(slots=True)
class Failing:
    """A held address's current episode of failures."""

    since: float
    since_ms: int
    reason: str
    isolate_through: int
    """Offset of the last message of the batch that first failed: messages go one per
    batch until that one succeeds, so a failure names exactly one message."""
    attempts: int = 0
    parked: int = 0
    """Messages parked in this episode."""
    head: MessageId | None = None
    head_since: float = 0.0
    """When the message at the head first failed alone."""
    evidence_since: float | None = None
    """When another message of its type first succeeded after the head began failing
    alone: from then on, the failure is the message's, not the endpoint's."""


@dataclass(slots=True, eq=False)
class FunctionType:
    name: TypeName
    label: str
    """``name`` as text."""
    endpoint: HttpEndpoint
    url: str
    policy: FailurePolicy
    meters: FunctionTypeMeters
    mailboxes: set[Mailbox] = field(default_factory=set)
    failing: set[Mailbox] = field(default_factory=set)
    awaiting_evidence: set[Mailbox] = field(default_factory=set)
    """Failing mailboxes whose head has not yet seen another message of the type succeed."""
    held: deque[Mailbox] = field(default_factory=deque)
    """Mailboxes ready to send but kept back (paused, or unavailable and not the probe)."""
    overflow: dict[int, int] = field(default_factory=dict)
    """Partition -> offset from which this type's messages stay in the log (paused or
    unavailable, or reading them again)."""
    rereading: set[int] = field(default_factory=set)
    """Partitions whose overflow is being read again."""
    paused: bool = False
    unavailable: bool = False
    unavailable_since: float = 0.0
    probing: bool = False
    probe_backoff: float = 0.0
    probe_timer: Cancellable | None = None
    last_success: float = -math.inf
    dead_lettered: int = 0
    last_error: str | None = None
    requests_in_flight: int = 0
    routes: dict[object, RouteCallMeters] = field(default_factory=dict)
    """The calls meters of the routes to the type, by the caller's (namespace, type),
    or the Kafka ingress source or None for messages without a caller."""

    @property
    def held_back(self) -> bool:
        return self.paused or self.unavailable


@dataclass(slots=True, eq=False)
class Lane:
    """One endpoint URL: its request slots and ready mailboxes."""

    url: str
    endpoint: HttpEndpoint
    ready: deque[Mailbox] = field(default_factory=deque)
    retry: deque[Mailbox] = field(default_factory=deque)
    """Failing mailboxes whose backoff is over; each goes alone."""
    in_flight: int = 0
    retries_in_flight: int = 0
    pump_scheduled: bool = False
    flush_timer: Cancellable | None = None
    """Sends what was held back for ``max_batch_delay`` while requests were in flight."""
    learning: bool = False
    """Asking the endpoint which function types it serves."""


@dataclass(slots=True, eq=False)
class Mailbox:
    address: Address
    partition: int
    kind: FunctionType
    lane: Lane
    waiting: deque[PendingInvocation] = field(default_factory=deque)
    in_flight: list[PendingInvocation] | None = None
    sent_states: frozenset[str] = frozenset()
    queued: bool = False
    """In one of: its lane's ready or retry queue, its type's held queue."""
    overflow_from: int | None = None
    rereading: bool = False
    failing: Failing | None = None
    retry_timer: Cancellable | None = None
    calling: bool = False
    """A request with its batch is under way: nothing else sends the address until it
    is answered (a second answer would be applied to the next batch)."""
    budget_start: float = 0.0
    """Policy ``fail``: when the batch in flight was first sent (its call budget)."""
    sent_at: float = 0.0
    """``time.perf_counter()`` when the batch in flight was last sent."""
    strict_attempts: int = 0
    suspect: bool = False
    """Its batch was in a request of several addresses that failed as a whole: it goes
    again alone before a failure counts against it."""

    @property
    def held(self) -> bool:
        return self.failing is not None or self.kind.held_back

    @property
    def in_memory(self) -> int:
        return len(self.waiting) + len(self.in_flight or ())

    @property
    def idle(self) -> bool:
        return (
            not self.waiting
            and self.in_flight is None
            and self.overflow_from is None
            and not self.queued
            and not self.rereading
            and self.failing is None
        )


@dataclass(frozen=True, slots=True)
class _AttemptFailed:
    """Why an attempt for an address failed."""

    reason: str
    kind: FailureKind
    retryable: bool
    """Whether policy ``fail`` retries it within the call budget (an answer that breaks
    the protocol, or a refused result, rolls back at once)."""
    unserved: bool = False
    """The endpoint answered that it serves no such function type."""


# --- the dispatcher --------------------------------------------------------------------


class Dispatcher:
    def __init__(
        self,
        module: ModuleSpec,
        host: DispatchHost,
        invoker: Invoker,
        partition_of: Callable[[Address], int],
        *,
        config: DispatchConfig | None = None,
        clock: Clock | None = None,
        paused: Iterable[TypeName] = (),
        metrics: Metrics | None = None,
    ):
        """``metrics``: where to count calls and failures (None: a registry of its own)."""
        self.config = config or DispatchConfig()
        self._metrics = metrics or Metrics()
        self._module = module
        self._host = host
        self._invoker = invoker
        self._partition_of = partition_of
        self._clock = clock or LoopClock()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the dispatcher's work, once it has some."""
        self._mailboxes: dict[Address, Mailbox] = {}
        self._types: dict[TypeName, FunctionType] = {}
        self._lanes: dict[str, Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._paused = set(paused)
        self._quiet = QuietLog(log, clock=self._clock.now)
        self.stopped = False
        self.draining = False
        self.processed = 0

    # --- reading in ---------------------------------------------------------------------

    def unserved_reason(self, function_type: TypeName) -> str:
        """Why :meth:`deliver` refused a message to ``function_type``."""
        endpoint = self._module.endpoint_for(function_type)
        if endpoint is None:
            return f"no endpoint in the module spec serves function type {function_type}"
        return f"the endpoint at {endpoint.url_for(function_type)} serves no function type {function_type}"

    def _unserved(self, kind: FunctionType) -> bool:
        """Whether the type's endpoint said lately that it does not serve the type."""
        return self._invoker.serves(kind.endpoint, kind.url, kind.label) is False

    def deliver(self, target: Address, invocation: PendingInvocation) -> bool:
        """A message read from the log for ``target``; False if no endpoint serves its type,
        by the module spec or by what the endpoint says (the caller parks it). Kept in memory, or left in the log (overflow)."""
        kind = self._type(target.function_type)
        if kind is None or self._unserved(kind):
            return False
        partition, offset = invocation.message_id
        if partition in kind.overflow:
            return True
        if (
            kind.held_back
            and target not in self._mailboxes
            and (kind.paused or len(kind.mailboxes) - len(kind.failing) >= PROBE_CANDIDATES)
        ):
            kind.overflow[partition] = offset
            return True
        mailbox = self._mailbox(target, kind)
        if mailbox.overflow_from is not None:
            return True
        if (mailbox.held and mailbox.in_memory) or len(
            mailbox.waiting
        ) >= mailbox.lane.endpoint.max_num_batch_requests:
            mailbox.overflow_from = offset
            return True
        mailbox.waiting.append(invocation)
        self._buffered += 1
        if mailbox.in_flight is None and not mailbox.queued:
            self._ready(mailbox)
        return True

    @property
    def room(self) -> asyncio.Event:
        """Set while the worker may read more (see ``max_buffered_messages``)."""
        self._update_room()
        return self._room

    def _update_room(self) -> None:
        if self._buffered < self.config.max_buffered_messages:
            self._room.set()
            return
        held = sum(
            mb.in_memory for kind in self._types.values() if kind.held_back for mb in kind.mailboxes
        )
        held += sum(
            mb.in_memory
            for kind in self._types.values()
            if not kind.held_back
            for mb in kind.failing
        )
        if self._buffered - held < self.config.max_buffered_messages:
            self._room.set()
        else:
            self._room.clear()

    @property
    def buffered(self) -> int:
        """Messages held in memory (waiting or in flight)."""
        return self._buffered

    def _type(self, function_type: TypeName) -> FunctionType | None:
        kind = self._types.get(function_type)
        if kind is None:
            endpoint = self._module.endpoint_for(function_type)
            if endpoint is None:
                return None
            kind = self._types[function_type] = FunctionType(
                function_type,
                str(function_type),
                endpoint,
                endpoint.url_for(function_type),
                self._module.failure_policy_for(function_type),
                self._metrics.function_type(str(function_type)),
                paused=function_type in self._paused,
            )
        return kind

    def _mailbox(self, address: Address, kind: FunctionType) -> Mailbox:
        mailbox = self._mailboxes.get(address)
        if mailbox is None:
            lane = self._lanes.get(kind.url)
            if lane is None:
                lane = self._lanes[kind.url] = Lane(kind.url, kind.endpoint)
            mailbox = self._mailboxes[address] = Mailbox(
                address, self._partition_of(address), kind, lane
            )
            kind.mailboxes.add(mailbox)
        return mailbox

    def _forget(self, mailbox: Mailbox) -> None:
        if mailbox.idle:
            self._mailboxes.pop(mailbox.address, None)
            mailbox.kind.mailboxes.discard(mailbox)

    # --- checkpoints --------------------------------------------------------------------

    def pending(self) -> list[PendingMessage]:
        """Every message read and not yet answered, in order per address."""
        return [
            PendingMessage(mb.address, p.caller, p.argument, p.message_id)
            for mb in self._mailboxes.values()
            for p in (*(mb.in_flight or ()), *mb.waiting)
        ]

    def overflow(self) -> list[Overflow]:
        """Where the messages left in the log start, per address and per held type."""
        out = [
            Overflow(mb.partition, mb.overflow_from, address=mb.address)
            for mb in self._mailboxes.values()
            if mb.overflow_from is not None
        ]
        out += [
            Overflow(partition, offset, function_type=kind.name)
            for kind in self._types.values()
            for partition, offset in kind.overflow.items()
        ]
        return out

    def restore(
        self, pending: Iterable[PendingMessage], overflow: Iterable[Overflow]
    ) -> list[PendingMessage]:
        """Resume from a checkpoint's pending messages and overflow cursors; the pending
        messages no endpoint serves any more (the caller parks them)."""
        unserved = []
        for o in overflow:
            if o.address is not None:
                kind = self._type(o.address.function_type)
                if kind is not None:
                    self._mailbox(o.address, kind).overflow_from = o.offset
            elif o.function_type is not None:
                kind = self._type(o.function_type)
                if kind is not None:
                    kind.overflow[o.partition] = o.offset
        for p in pending:
            kind = self._type(p.target.function_type)
            if kind is None:
                unserved.append(p)
                continue
            mailbox = self._mailbox(p.target, kind)
            mailbox.waiting.append(PendingInvocation(p.caller, p.argument, p.message_id))
            self._buffered += 1
        for mailbox in list(self._mailboxes.values()):
            if mailbox.waiting or mailbox.overflow_from is not None:
                self._ready(mailbox)
        for kind in self._types.values():
            if not kind.held_back:
                self._read_type_overflow(kind)
        return unserved

    def waits_below(self, address: Address, offset: int) -> bool:
        """Whether a message of ``address`` from below ``offset`` of its partition is still
        waiting to be processed (in memory or left in the log)."""
        mailbox = self._mailboxes.get(address)
        if mailbox is not None and self._mailbox_waits_below(mailbox, offset):
            return True
        kind = self._types.get(address.function_type)
        if kind is None:
            return False
        start = kind.overflow.get(self._partition_of(address))
        return start is not None and start < offset

    def waits_below_any(self, ends: dict[int, int]) -> Iterable[bool]:
        """Per mailbox and held type, whether it still has a message from below ``ends``
        (per partition) to process."""
        for mailbox in self._mailboxes.values():
            yield self._mailbox_waits_below(mailbox, ends.get(mailbox.partition, 0))
        for kind in self._types.values():
            for partition, start in kind.overflow.items():
                yield start < ends.get(partition, 0)

    @staticmethod
    def _mailbox_waits_below(mailbox: Mailbox, offset: int) -> bool:
        if mailbox.overflow_from is not None and mailbox.overflow_from < offset:
            return True
        return any(p.message_id[1] < offset for p in (*(mailbox.in_flight or ()), *mailbox.waiting))

    # --- pause, resume, health ------------------------------------------------------------

    def pause(self, function_type: TypeName) -> None:
        """Stop sending messages of ``function_type``; they wait in the log, nothing is lost."""
        self._paused.add(function_type)
        kind = self._types.get(function_type)
        if kind is not None and not kind.paused:
            kind.paused = True
            log.warning("function type %s paused: its messages wait in the log", function_type)

    def resume(self, function_type: TypeName) -> None:
        self._paused.discard(function_type)
        kind = self._types.get(function_type)
        if kind is not None and kind.paused:
            kind.paused = False
            log.warning("function type %s resumed", function_type)
            self._release_held(kind)

    def health(self) -> list[FunctionTypeHealth]:
        """The function types that are failing, paused or unavailable."""
        out = []
        for kind in self._types.values():
            if not (kind.failing or kind.paused or kind.unavailable or kind.dead_lettered):
                continue
            since = [mb.failing.since_ms for mb in kind.failing if mb.failing is not None]
            out.append(
                FunctionTypeHealth(
                    str(kind.name),
                    failing_addresses=len(kind.failing),
                    unavailable=kind.unavailable,
                    paused=kind.paused,
                    dead_lettered=kind.dead_lettered,
                    last_error=kind.last_error if kind.failing or kind.unavailable else None,
                    failing_since_ms=min(since, default=None),
                )
            )
        for name in self._paused - self._types.keys():
            out.append(FunctionTypeHealth(str(name), paused=True))
        return out

    def load(self) -> list[FunctionTypeLoad]:
        """Per function type, its requests in flight and messages waiting in memory (read
        at scrape time)."""
        return [
            FunctionTypeLoad(
                kind.label, kind.requests_in_flight, sum(len(mb.waiting) for mb in kind.mailboxes)
            )
            for kind in self._types.values()
        ]

    # --- sending --------------------------------------------------------------------------

    def _ready(self, mailbox: Mailbox, *, first: bool = False) -> None:
        """Queue the mailbox to send its next batch (or hold it back)."""
        if mailbox.queued or self.stopped:
            return
        mailbox.queued = True
        lane = mailbox.lane
        if mailbox.failing is not None or mailbox.suspect:
            lane.retry.append(mailbox)
        elif first:
            lane.ready.appendleft(mailbox)
        else:
            lane.ready.append(mailbox)
        self._schedule(lane)

    def _schedule(self, lane: Lane) -> None:
        # Pump once per loop iteration, so everything delivered together is batched together.
        if not lane.pump_scheduled:
            lane.pump_scheduled = True
            loop = self._loop
            if loop is None:
                # Once: on Python 3.11 each asyncio.get_running_loop() is a getpid call.
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._pump, lane)

    def _hold(self, mailbox: Mailbox) -> None:
        mailbox.queued = True
        mailbox.kind.held.append(mailbox)

    def _may_send(self, mailbox: Mailbox) -> bool | None:
        """Whether the mailbox's next batch may go now: True alone, False batched with
        others, None not at all (it was put in its type's held queue)."""
        kind = mailbox.kind
        if kind.paused:
            self._hold(mailbox)
            return None
        if kind.unavailable:
            if kind.probing or kind.probe_timer is not None:
                self._hold(mailbox)
                return None
            kind.probing = True
            return True
        return mailbox.failing is not None

    def _flush(self, lane: Lane) -> None:
        lane.flush_timer = None
        self._pump(lane, flush=True)

    def _pump(self, lane: Lane, *, flush: bool = False) -> None:
        lane.pump_scheduled = False
        if self.stopped or self.draining:
            return
        config = self.config
        free = config.max_concurrent_requests - lane.in_flight
        retry_slots = max(1, int(config.max_concurrent_requests * config.retry_share))
        while free > 0 and lane.retry and lane.retries_in_flight < retry_slots:
            mailbox = lane.retry.popleft()
            mailbox.queued = False
            if mailbox.calling:
                continue  # its answer decides what it does next
            if self._may_send(mailbox) is None or not self._take_batch(mailbox):
                continue
            self._send(lane, [mailbox], alone=True)
            free -= 1
        least = config.busy_batch_min
        # Idle (no request of the lane in flight): everything ready goes now. Busy: only
        # requests of at least ``least`` addresses; less waits for an answer (bounded).
        busy = not flush and lane.in_flight > lane.retries_in_flight
        while free > 0 and lane.ready:
            if busy and len(lane.ready) < least:
                # Busy: let ready work accumulate until a request comes back (bounded).
                if lane.flush_timer is None:
                    lane.flush_timer = self._clock.call_later(
                        config.max_batch_delay, lambda: self._flush(lane)
                    )
                break
            per_request = min(
                config.max_batches_per_request, max(least, math.ceil(len(lane.ready) / free))
            )
            batched: list[Mailbox] = []
            while lane.ready and len(batched) < per_request:
                mailbox = lane.ready.popleft()
                mailbox.queued = False
                if mailbox.calling:
                    continue  # its answer decides what it does next
                alone = self._may_send(mailbox)
                if alone is None or not self._take_batch(mailbox):
                    continue
                if alone or mailbox.suspect:
                    if lane.retries_in_flight >= retry_slots:
                        self._hold_for_slot(mailbox)
                        continue
                    self._send(lane, [mailbox], alone=True)
                    free -= 1
                    if free == 0:
                        break
                    continue
                batched.append(mailbox)
            if batched:
                self._send(lane, batched, alone=False)
                free -= 1

    def _hold_for_slot(self, mailbox: Mailbox) -> None:
        """A probe with no retry slot free: it goes first when one is."""
        if mailbox.kind.unavailable:
            mailbox.kind.probing = False
        mailbox.queued = True
        mailbox.lane.retry.appendleft(mailbox)

    def _take_batch(self, mailbox: Mailbox) -> bool:
        """Move the next batch into flight (unless one is in flight already, to be sent
        again); False if there is nothing to send."""
        if self._unserved(mailbox.kind):
            self._park_unserved(mailbox)
        if mailbox.in_flight is not None:
            return True
        waiting = mailbox.waiting
        max_batch = mailbox.lane.endpoint.max_num_batch_requests
        if mailbox.overflow_from is not None and len(waiting) < max_batch // 2 + 1:
            self._read_overflow(mailbox)
        if not waiting:
            if mailbox.kind.unavailable and mailbox.kind.probing:
                mailbox.kind.probing = False
            self._forget(mailbox)
            return False
        limit = 1 if mailbox.failing is not None else max_batch
        batch = [waiting.popleft() for _ in range(min(limit, len(waiting)))]
        mailbox.in_flight = batch
        mailbox.budget_start = self._clock.now()
        mailbox.strict_attempts = 0
        return True

    def _send(self, lane: Lane, mailboxes: list[Mailbox], *, alone: bool) -> None:
        batches = []
        sent_at = time.perf_counter()
        # A probe is what it is when sent: by the time the call runs, the type may have
        # become available and unavailable again, with another probe under way.
        probe = alone and mailboxes[0].kind.unavailable and mailboxes[0].kind.probing
        for mailbox in mailboxes:
            assert mailbox.in_flight is not None
            if mailbox.retry_timer is not None:  # sent before its retry came due
                mailbox.retry_timer.cancel()
                mailbox.retry_timer = None
            mailbox.calling = True
            if alone and mailbox.suspect:
                mailbox.suspect = False  # what happens to it now is its own
                mailbox.kind.meters.retries.inc()
            batch = self._host.batch_for(mailbox.address, mailbox.in_flight)
            mailbox.sent_states = frozenset(batch.state)
            mailbox.strict_attempts += 1
            batches.append(batch)
            mailbox.sent_at = sent_at
            meters = mailbox.kind.meters
            meters.invocations.inc(len(mailbox.in_flight))
            meters.batches.inc()
            meters.batch_size.observe(len(mailbox.in_flight))
        lane.in_flight += 1
        if alone:
            lane.retries_in_flight += 1
        self._spawn(self._call(lane, mailboxes, FunctionRequest(batches), alone, probe))

    async def _call(
        self,
        lane: Lane,
        mailboxes: list[Mailbox],
        request: FunctionRequest,
        alone: bool,
        probe: bool,
    ) -> None:
        kinds = {mailbox.kind for mailbox in mailboxes}
        for kind in kinds:
            kind.requests_in_flight += 1
        started = time.perf_counter()
        try:
            deadline = lane.endpoint.timeouts.call
            try:
                async with asyncio.timeout(deadline):
                    response = await self._invoker.invoke(lane.endpoint, lane.url, request)
            except TimeoutError:
                self._answered(kinds, started)
                failed = CallFailed(f"POST {lane.url}: no complete answer within {deadline:g} s")
                self._call_failed(mailboxes, failed, "timeout")
            except CallFailed as e:
                self._answered(kinds, started)
                self._call_failed(mailboxes, e, "protocol" if e.protocol_violation else "call")
            else:
                self._answered(kinds, started)
                for mailbox, outcome in zip(mailboxes, response.outcomes, strict=True):
                    if self.stopped:
                        return
                    self._outcome(mailbox, outcome)
        finally:
            for mailbox in mailboxes:
                mailbox.calling = False
            for kind in kinds:
                kind.requests_in_flight -= 1
            lane.in_flight -= 1
            if alone:
                lane.retries_in_flight -= 1
            if probe:
                self._probe_done(mailboxes[0].kind)
            if not self.stopped:
                self._pump(lane, flush=True)  # a request came back: what is ready goes

    @staticmethod
    def _answered(kinds: Iterable[FunctionType], started: float) -> None:
        latency = time.perf_counter() - started
        for kind in kinds:
            kind.meters.call_latency.observe(latency)

    def _call_failed(self, mailboxes: list[Mailbox], error: CallFailed, kind: FailureKind) -> None:
        if self.stopped:
            return
        if len(mailboxes) > 1:
            # Which address broke the request is not known: each goes again alone before
            # the failure counts against any (the metrics count the failed attempt).
            for mailbox in mailboxes:
                mailbox.kind.meters.failed(kind)
                self._count_routes(mailbox, mailbox.in_flight or (), succeeded=False)
                mailbox.suspect = True
                self._ready(mailbox)
            return
        reason = f"protocol violation: {error.reason}" if error.protocol_violation else error.reason
        for mailbox in mailboxes:
            self._failed(
                mailbox, _AttemptFailed(reason, kind, retryable=not error.protocol_violation)
            )

    def _outcome(self, mailbox: Mailbox, outcome: BatchOutcome) -> None:
        if isinstance(outcome, MissingStateSpecs):
            if {s.name for s in outcome.specs} <= mailbox.sent_states:
                self._failed(
                    mailbox,
                    _AttemptFailed(
                        "protocol violation: the function asks for states the batch carried",
                        "protocol",
                        retryable=False,
                    ),
                )
                return
            # Another batch of the type may have registered them meanwhile: then this just
            # sends the batch again, now with them.
            problem = self._host.register_specs(mailbox.address.function_type, outcome.specs)
            if problem is not None:
                self._failed(mailbox, _AttemptFailed(problem, "refused", retryable=False))
                return
            self._ready(mailbox, first=True)
            return
        if isinstance(outcome, FunctionFailure):
            unserved = outcome.error_type == UNKNOWN_FUNCTION_TYPE
            if unserved:
                self._learn(mailbox.lane)
            self._failed(
                mailbox,
                _AttemptFailed(
                    outcome.describe(),
                    "unserved" if unserved else "function",
                    retryable=True,
                    unserved=unserved,
                ),
            )
            return
        assert mailbox.in_flight is not None
        problem = self._host.apply(mailbox.address, mailbox.in_flight, outcome)
        if problem is not None:
            self._failed(mailbox, _AttemptFailed(f"refused: {problem}", "refused", retryable=False))
            return
        self._succeeded(mailbox)

    # --- outcomes -------------------------------------------------------------------------

    def _succeeded(self, mailbox: Mailbox) -> None:
        kind = mailbox.kind
        now = kind.last_success = self._clock.now()
        if kind.awaiting_evidence:
            for waiting in kind.awaiting_evidence:
                if waiting.failing is not None and waiting.failing.evidence_since is None:
                    waiting.failing.evidence_since = now
            kind.awaiting_evidence.clear()
        done = mailbox.in_flight or []
        self._count_routes(mailbox, done, succeeded=True)
        mailbox.in_flight = None
        self._buffered -= len(done)
        self.processed += len(done)
        failing = mailbox.failing
        if failing is not None and done and done[-1].message_id[1] >= failing.isolate_through:
            self._recovered(mailbox, failing)
        if kind.unavailable:
            self._available_again(kind)
        self._next(mailbox)

    def _count_routes(
        self, mailbox: Mailbox, batch: Sequence[PendingInvocation], *, succeeded: bool
    ) -> None:
        """Each message of the batch's route: one call with this outcome, and its latency."""
        latency = time.perf_counter() - mailbox.sent_at
        kind = mailbox.kind
        routes = kind.routes
        for p in batch:
            caller = p.caller
            key = p.source if caller is None else (caller.namespace, caller.type)
            meters = routes.get(key)
            if meters is None:
                meters = routes[key] = self._metrics.route_call(
                    route_source(caller, p.source), kind.label
                )
            (meters.succeeded if succeeded else meters.failed).inc()
            meters.latency.observe(latency)

    def _next(self, mailbox: Mailbox) -> None:
        self._update_room()
        if mailbox.waiting or mailbox.overflow_from is not None or mailbox.failing is not None:
            self._ready(mailbox)
        else:
            self._forget(mailbox)

    def _recovered(self, mailbox: Mailbox, failing: Failing) -> None:
        mailbox.failing = None
        mailbox.kind.failing.discard(mailbox)
        if failing.parked:
            return  # the line saying what was parked closed the episode
        self._log_address(
            mailbox.kind,
            logging.WARNING,
            "%s recovered after %d failed attempts over %.1f s",
            mailbox.address,
            failing.attempts,
            self._clock.now() - failing.since,
        )

    def _failed(self, mailbox: Mailbox, error: _AttemptFailed) -> None:
        if self.stopped:
            return
        kind = mailbox.kind
        kind.last_error = error.reason
        kind.meters.failed(error.kind)
        batch = mailbox.in_flight or []
        self._count_routes(mailbox, batch, succeeded=False)
        if error.unserved and self._unserved(mailbox.kind):
            self._park_unserved(mailbox)
            self._next(mailbox)
            return
        if kind.policy.policy == "fail":
            self._failed_strictly(mailbox, error, batch)
            return
        now = self._clock.now()
        failing = mailbox.failing
        if failing is None:
            failing = mailbox.failing = Failing(
                now, self._clock.wall_ms(), error.reason, batch[-1].message_id[1] if batch else 0
            )
            kind.failing.add(mailbox)
            self._log_address(
                kind,
                logging.WARNING,
                "%s is failing; it is held and retried on its own (policy %s): %s",
                mailbox.address,
                kind.policy.policy,
                error.reason,
            )
        failing.attempts += 1
        failing.reason = error.reason
        if len(batch) > 1:
            # Which message failed is not known: send them one at a time from now on.
            mailbox.waiting.extendleft(reversed(batch))
            mailbox.in_flight = None
        elif batch and self._failed_alone(mailbox, failing, batch[0], error, now):
            self._next(mailbox)  # parked: the next message goes at once
            return
        self._check_unavailable(kind)
        self._retry_later(mailbox, failing)

    def _failed_alone(
        self,
        mailbox: Mailbox,
        failing: Failing,
        head: PendingInvocation,
        error: _AttemptFailed,
        now: float,
    ) -> bool:
        """Park the head if the policy says so; whether it was parked."""
        kind = mailbox.kind
        if failing.head != head.message_id:
            failing.head, failing.head_since, failing.evidence_since = head.message_id, now, None
            kind.awaiting_evidence.add(mailbox)
        policy = kind.policy
        if (
            policy.policy != "dead-letter"
            or failing.evidence_since is None
            or now - failing.evidence_since < policy.dead_letter_after
        ):
            return False
        mailbox.in_flight = None
        self._buffered -= 1
        kind.dead_lettered += 1
        reason = (
            f"failed alone for {now - failing.head_since:.0f} s while other messages of "
            f"{kind.name} succeeded: {error.reason}"
        )
        self._host.park(mailbox.address, head, reason)
        failing.parked += 1
        if head.message_id[1] >= failing.isolate_through:
            mailbox.failing = None
            kind.failing.discard(mailbox)
        self._log_address(
            kind,
            logging.ERROR,
            "message %s to %s parked in the dead letters after %d failed attempts over %.0f s; "
            "its other messages go on: %s",
            message_id_text(head.message_id),
            mailbox.address,
            failing.attempts,
            now - failing.since,
            error.reason,
        )
        return True

    # --- function types the endpoint does not serve --------------------------------------

    def _learn(self, lane: Lane) -> None:
        """Ask the endpoint again which function types it serves (once at a time)."""
        if lane.learning or self.stopped:
            return
        lane.learning = True

        async def describe() -> None:
            try:
                await self._invoker.describe(lane.endpoint, lane.url)
            finally:
                lane.learning = False

        self._spawn(describe())

    def _park_unserved(self, mailbox: Mailbox) -> None:
        """The endpoint says it serves no such type: park what the mailbox holds (what
        is still in the log is parked as it is read again)."""
        reason = f"the endpoint at {mailbox.lane.url} serves no function type {mailbox.address.function_type}"
        held = [*(mailbox.in_flight or ()), *mailbox.waiting]
        mailbox.in_flight = None
        mailbox.waiting.clear()
        self._buffered -= len(held)
        for invocation in held:
            self._host.park(mailbox.address, invocation, reason)
        mailbox.kind.dead_lettered += len(held)
        if mailbox.failing is not None:
            mailbox.failing = None
            mailbox.kind.failing.discard(mailbox)
        self._log_address(
            mailbox.kind,
            logging.ERROR,
            "%d messages to %s parked: %s",
            len(held),
            mailbox.address,
            reason,
        )

    def _failed_strictly(
        self, mailbox: Mailbox, error: _AttemptFailed, batch: list[PendingInvocation]
    ) -> None:
        """Policy ``fail``: retry within the call budget, then roll everything back."""
        budget = mailbox.lane.endpoint.timeouts.call
        backoff = self._backoff(mailbox.strict_attempts)
        elapsed = self._clock.now() - mailbox.budget_start
        if error.retryable and elapsed + backoff <= budget:
            log.warning(
                "call for %s failed (attempt %d, retrying in %.0f ms): %s",
                mailbox.address,
                mailbox.strict_attempts,
                backoff * 1000,
                error.reason,
            )
            mailbox.retry_timer = self._clock.call_later(backoff, lambda: self._retry_now(mailbox))
            return
        reason = error.reason
        if error.retryable:
            reason = (
                f"call budget of {budget:g} s exhausted after {mailbox.strict_attempts} "
                f"attempts: {reason}"
            )
        self._host.fail(
            Failure(reason, mailbox.address, tuple(p.message_id for p in batch), "function")
        )

    def _backoff(self, attempts: int) -> float:
        config = self.config
        backoff = min(
            config.retry_max_backoff, config.retry_initial_backoff * 2.0 ** max(0, attempts - 1)
        )
        return backoff * (0.5 + random.random() / 2)

    def _retry_later(self, mailbox: Mailbox, failing: Failing) -> None:
        mailbox.retry_timer = self._clock.call_later(
            self._backoff(failing.attempts), lambda: self._retry_now(mailbox)
        )

    def _retry_now(self, mailbox: Mailbox) -> None:
        mailbox.retry_timer = None
        if self.stopped:
            return
        mailbox.kind.meters.retries.inc()
        if mailbox.failing is None:
            self._ready(mailbox, first=True)
        else:
            self._ready(mailbox)

    # --- unavailable types -------------------------------------------------------------------

    def _check_unavailable(self, kind: FunctionType) -> None:
        """Every failing address of the type failed with no success of the type since the
        first of them: the endpoint (or the type) fails everything."""
        if kind.unavailable or len(kind.failing) < 2:
            return
        first = min(mb.failing.since for mb in kind.failing if mb.failing is not None)
        if kind.last_success >= first:
            return
        kind.unavailable = True
        kind.unavailable_since = self._clock.now()
        kind.probe_backoff = self.config.retry_initial_backoff
        log.error(
            "function type %s is unavailable: %d addresses failed and none succeeded since; its "
            "messages wait in the log and it is probed with backoff: %s",
            kind.name,
            len(kind.failing),
            kind.last_error,
        )

    def _probe_done(self, kind: FunctionType) -> None:
        kind.probing = False
        if not kind.unavailable or self.stopped:
            return
        kind.probe_backoff = min(self.config.probe_max_backoff, kind.probe_backoff * 2)
        delay = kind.probe_backoff * (0.5 + random.random() / 2)
        kind.probe_timer = self._clock.call_later(delay, lambda: self._probe(kind))

    def _probe(self, kind: FunctionType) -> None:
        """Send one held mailbox of the unavailable type, a fresh one first."""
        kind.probe_timer = None
        if self.stopped or not kind.unavailable or kind.paused:
            return
        chosen = next((mb for mb in kind.held if mb.failing is None), None)
        if chosen is None and kind.held:
            chosen = kind.held[0]
        if chosen is None:
            return
        kind.held.remove(chosen)
        chosen.queued = False
        self._ready(chosen, first=True)

    def _available_again(self, kind: FunctionType) -> None:
        kind.unavailable = False
        if kind.probe_timer is not None:
            kind.probe_timer.cancel()
            kind.probe_timer = None
        log.warning(
            "function type %s is available again after %.1f s",
            kind.name,
            self._clock.now() - kind.unavailable_since,
        )
        self._release_held(kind)

    def _release_held(self, kind: FunctionType) -> None:
        held, kind.held = kind.held, deque()
        for mailbox in held:
            mailbox.queued = False
            self._ready(mailbox)
        self._read_type_overflow(kind)
        self._update_room()

    # --- overflow ---------------------------------------------------------------------------

    def _read_overflow(self, mailbox: Mailbox) -> None:
        if mailbox.rereading or mailbox.overflow_from is None or self.stopped:
            return
        mailbox.rereading = True
        self._spawn(self._reread_address(mailbox))

    def _address_bound(self, mailbox: Mailbox) -> int:
        """Where an address's messages left in the log end: at the read position, or where
        its type's start, which its type delivers (an address's region never overlaps its
        type's, so no message is read again twice)."""
        bound = self._host.position(mailbox.partition)
        start = mailbox.kind.overflow.get(mailbox.partition)
        return bound if start is None else min(bound, start)

    async def _reread_address(self, mailbox: Mailbox) -> None:
        address = mailbox.address
        try:
            while mailbox.overflow_from is not None and not self.stopped:
                room = mailbox.lane.endpoint.max_num_batch_requests - len(mailbox.waiting)
                if room <= 0:
                    return
                read = await self._reread(
                    mailbox.partition,
                    mailbox.overflow_from,
                    self._address_bound(mailbox),
                    room,
                    address.__eq__,
                    address,
                )
                if read is None or self._stopped():
                    return
                found, scanned = read
                # No await from here to the next read: what arrived meanwhile was left in the
                # log, behind the bound checked now.
                for _, invocation in found:
                    mailbox.waiting.append(invocation)
                self._buffered += len(found)
                mailbox.overflow_from = None if scanned >= self._address_bound(mailbox) else scanned
                if found:
                    break
        finally:
            mailbox.rereading = False
        if not self.stopped and mailbox.in_flight is None:
            self._next(mailbox)

    async def _reread(
        self,
        partition: int,
        offset: int,
        stop: int | None,
        limit: int,
        wanted: Callable[[Address], bool],
        address: Address | None = None,
    ) -> tuple[list[tuple[Address, PendingInvocation]], int] | None:
        """The host's :meth:`~DispatchHost.reread`; None if the log could not be read,
        after asking for a rollback: messages left in the log with no way to read them
        again would wait, unseen, until the next generation."""
        try:
            return await self._host.reread(partition, offset, stop, limit, wanted)
        except LogError as e:
            if not self._stopped():
                self._host.fail(
                    Failure(f"reading the log again from {partition}@{offset} failed: {e}", address)
                )
            return None

    def _read_type_overflow(self, kind: FunctionType) -> None:
        for partition in list(kind.overflow):
            if partition in kind.rereading or self.stopped:
                continue
            kind.rereading.add(partition)
            self._spawn(self._reread_type(kind, partition))

    async def _reread_type(self, kind: FunctionType, partition: int) -> None:
        """Deliver the messages of a type that stayed in the log while it was held back,
        in order, as room allows; the type's new messages stay in the log meanwhile."""
        name = kind.name
        try:
            await self._deliver_type_overflow(kind, name, partition)
        finally:
            kind.rereading.discard(partition)

    async def _deliver_type_overflow(
        self, kind: FunctionType, name: TypeName, partition: int
    ) -> None:
        while not self.stopped and not kind.held_back:
            offset = kind.overflow.get(partition)
            if offset is None:
                return
            await self.room.wait()
            read = await self._reread(
                partition,
                offset,
                None,
                self.config.max_batches_per_request * 16,
                lambda a: a.function_type == name,
            )
            if read is None or self._stopped() or kind.overflow.get(partition) != offset:
                return
            found, scanned = read
            # No await from here: deliveries of the type past ``scanned`` were left in the
            # log, and the bound is the read position now.
            del kind.overflow[partition]
            for target, invocation in found:
                if not self.deliver(target, invocation):
                    self._host.park(target, invocation, self.unserved_reason(target.function_type))
            if scanned < self._host.position(partition) and partition not in kind.overflow:
                kind.overflow[partition] = scanned

    # --- tasks ------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of the dispatcher (cancelled by :meth:`stop`)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A task that raised left its mailbox or type waiting for an answer that will not
        come: ask for a rollback, rather than stall unseen until the next generation."""
        self._tasks.discard(task)
        if task.cancelled() or (error := task.exception()) is None or self.stopped:
            return
        log.error("the dispatcher failed unexpectedly", exc_info=error)
        self._host.fail(Failure(f"the dispatcher failed unexpectedly: {error!r}", cause="other"))

    # --- logging ----------------------------------------------------------------------------

    def _log_address(self, kind: FunctionType, level: int, msg: str, *args: object) -> None:
        self._quiet.log(kind.name, level, msg, *args)

    # --- stopping -------------------------------------------------------------------------

    def _stopped(self) -> bool:
        """``stopped``, read after an await (where another task may have set it)."""
        return self.stopped

    async def drain(self, grace: float) -> None:
        """No new requests; let those in flight finish (bounded) and apply their outcomes."""
        self.draining = True
        calls = set(self._tasks)
        if calls:
            await asyncio.wait(calls, timeout=grace)

    async def stop(self) -> None:
        """Abandon everything in flight (its inputs stay pending for a checkpoint)."""
        self.stopped = True
        for mailbox in self._mailboxes.values():
            if mailbox.retry_timer is not None:
                mailbox.retry_timer.cancel()
        for kind in self._types.values():
            if kind.probe_timer is not None:
                kind.probe_timer.cancel()
        for lane in self._lanes.values():
            if lane.flush_timer is not None:
                lane.flush_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
