"""The dispatcher alone, with a fake function client, a fake host and an injected clock:
batching, failures contained to their address, parking, unavailable types, the strict
policy, overflow to the log, pause and resume, and the attempt deadline."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime.dispatcher import (
    DispatchConfig,
    Dispatcher,
    Failure,
    PendingInvocation,
)
from runtime.errors import CallFailed, LogError
from statefun.address import Address, TypeName
from statefun.module_spec import (
    FailurePolicy,
    FunctionTypePattern,
    HttpEndpoint,
    HttpTimeouts,
    ModuleSpec,
)
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

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

URL = "http://functions/statefun"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self._due: list[tuple[float, int, Callable[[], None], list[bool]]] = []
        self._serial = itertools.count()

    def now(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        return int(self.t * 1000)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        cancelled = [False]
        heapq.heappush(self._due, (self.t + delay, next(self._serial), callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    async def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move time forward in steps, running what comes due and letting tasks run."""
        end = self.t + seconds
        while self.t < end:
            self.t = min(end, self.t + step)
            while self._due and self._due[0][0] <= self.t:
                _, _, callback, cancelled = heapq.heappop(self._due)
                if not cancelled[0]:
                    callback()
            await settle()


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


Handler = Callable[[InvocationBatch], BatchOutcome]


class FakeFunctions:
    """The function endpoint: ``handler`` answers each batch; ``down`` fails every call."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.down: str | None = None
        self.requests: list[list[tuple[str, int]]] = []
        self.serving: frozenset[str] | None = None
        self.hang = False

    async def invoke(
        self, endpoint: HttpEndpoint, url: str, request: FunctionRequest
    ) -> FunctionResponse:
        self.requests.append([(b.target.id, len(b.invocations)) for b in request.batches])
        await asyncio.sleep(0)
        if self.hang:
            await asyncio.sleep(3600)
        if self.down is not None:
            raise CallFailed(self.down)
        return FunctionResponse([self.handler(b) for b in request.batches])

    def serves(self, endpoint: HttpEndpoint, url: str, function_type: str) -> bool | None:
        return None if self.serving is None else function_type in self.serving

    async def describe(self, endpoint: HttpEndpoint, url: str) -> None:
        return None


@dataclass
class FakeHost:
    """The worker's side: applies results, parks, reads the 'log' again."""

    applied: list[tuple[str, bytes]] = field(default_factory=list)
    parked: list[tuple[str, bytes, str]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    refuse: Callable[[Address, InvocationResult], str | None] = lambda a, r: None
    log: dict[int, list[tuple[Address, PendingInvocation]]] = field(default_factory=dict)
    position_of: dict[int, int] = field(default_factory=dict)
    registered: dict[TypeName, list[str]] = field(default_factory=dict)
    read_fails: str | None = None
    """Reading the log again raises a LogError with this message (a stalled broker)."""

    def batch_for(
        self, address: Address, invocations: Sequence[PendingInvocation]
    ) -> InvocationBatch:
        from statefun.protocol import Invocation

        specs = self.registered.get(address.function_type, [])
        return InvocationBatch(
            address, dict.fromkeys(specs), [Invocation(p.caller, p.argument) for p in invocations]
        )

    def apply(
        self, address: Address, invocations: Sequence[PendingInvocation], result: InvocationResult
    ) -> str | None:
        problem = self.refuse(address, result)
        if problem is None:
            self.applied += [(address.id, p.argument.value or b"") for p in invocations]
        return problem

    def register_specs(self, function_type: TypeName, specs: Sequence[StateSpec]) -> str | None:
        self.registered.setdefault(function_type, []).extend(s.name for s in specs)
        return None

    def park(self, address: Address, invocation: PendingInvocation, reason: str) -> None:
        self.parked.append((address.id, invocation.argument.value or b"", reason))

    def fail(self, failure: Failure) -> None:
        self.failures.append(failure)

    def position(self, partition: int) -> int:
        return self.position_of.get(partition, 0)

    def reread(
        self,
        partition: int,
        offset: int,
        stop: int | None,
        limit: int,
        wanted: Callable[[Address], bool],
    ) -> Awaitable[tuple[list[tuple[Address, PendingInvocation]], int]]:
        async def read() -> tuple[list[tuple[Address, PendingInvocation]], int]:
            await asyncio.sleep(0)
            if self.read_fails is not None:
                raise LogError(self.read_fails)
            end = self.position(partition) if stop is None else stop
            found, scanned = [], offset
            for target, invocation in self.log.get(partition, []):
                at = invocation.message_id[1]
                if at < offset:
                    continue
                if at >= end or len(found) >= limit:
                    break
                scanned = at + 1
                if wanted(target):
                    found.append((target, invocation))
            return found, scanned

        return read()

    def values(self, address_id: str) -> list[bytes]:
        return [v for a, v in self.applied if a == address_id]


def module(
    policy: str = "dead-letter", after: float = 5.0, call: float = 60.0, batch: int = 1000
) -> ModuleSpec:
    endpoint = HttpEndpoint(FunctionTypePattern("ex", None), URL, batch, HttpTimeouts(call=call))
    return ModuleSpec(
        endpoints=(endpoint,),
        failure_policies=(FailurePolicy(FunctionTypePattern("ex", None), policy, after),),
    )


def ok(batch: InvocationBatch) -> BatchOutcome:
    return InvocationResult()


def poison_on(bad: bytes) -> Handler:
    def handler(batch: InvocationBatch) -> BatchOutcome:
        if any(i.argument.value == bad for i in batch.invocations):
            return FunctionFailure(
                str(batch.target.function_type), batch.target, "ValueError", "boom"
            )
        return InvocationResult()

    return handler


class Harness:
    def __init__(
        self,
        handler: Handler = ok,
        spec: ModuleSpec | None = None,
        config: DispatchConfig | None = None,
        partitions: int = 1,
    ) -> None:
        self.clock = FakeClock()
        self.functions = FakeFunctions(handler)
        self.host = FakeHost()
        self.offsets = itertools.count()
        self.partitions = partitions
        self.dispatcher = Dispatcher(
            spec or module(),
            self.host,
            self.functions,
            lambda address: hash(address.id) % partitions if partitions > 1 else 0,
            config=config or DispatchConfig(retry_max_backoff=0.5, probe_max_backoff=1.0),
            clock=self.clock,
        )

    def checkpoint(self) -> Any:
        """What a checkpoint holds of the dispatcher and its host, taken in one step."""
        d = self.dispatcher
        return (
            d.pending(),
            d.overflow(),
            list(self.host.applied),
            list(self.host.parked),
            dict(self.host.position_of),
            set(d._paused),
        )

    async def crash_and_restore(self, checkpoint: Any) -> None:
        """Lose everything since ``checkpoint`` and resume from it, as a rollback does: a
        new dispatcher, the host's effects and read positions as of then, and the records
        after those positions read again."""
        pending, overflow, applied, parked, positions, paused = checkpoint
        await self.dispatcher.stop()
        self.host.applied, self.host.parked = list(applied), list(parked)
        self.dispatcher = Dispatcher(
            self.dispatcher._module,
            self.host,
            self.functions,
            lambda address: 0,
            config=self.dispatcher.config,
            clock=self.clock,
            paused=paused,
        )
        for unserved in self.dispatcher.restore(pending, overflow):
            raise AssertionError(f"unserved {unserved}")
        end = self.host.position_of.get(0, 0)
        self.host.position_of = dict(positions)
        for target, invocation in self.host.log.get(0, []):
            if positions.get(0, 0) <= invocation.message_id[1] < end:
                self.host.position_of[0] = invocation.message_id[1] + 1
                assert self.dispatcher.deliver(target, invocation)

    def send(self, address_id: str, value: bytes, function: str = "ex/f") -> None:
        target = Address.of(TypeName.parse(function), address_id)
        partition = 0
        offset = next(self.offsets)
        invocation = PendingInvocation(None, TypedValue("t/v", value), (partition, offset))
        self.host.log.setdefault(partition, []).append((target, invocation))
        self.host.position_of[partition] = offset + 1
        assert self.dispatcher.deliver(target, invocation)


class GatedFunctions(FakeFunctions):
    """Each request waits until the test opens its gate (``release``), in order."""

    def __init__(self) -> None:
        super().__init__(ok)
        self.gates: list[asyncio.Event] = []

    async def invoke(
        self, endpoint: HttpEndpoint, url: str, request: FunctionRequest
    ) -> FunctionResponse:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.requests.append([(b.target.id, len(b.invocations)) for b in request.batches])
        await gate.wait()
        return FunctionResponse([InvocationResult() for _ in request.batches])

    def release(self, n: int) -> None:
        self.gates[n].set()


def gated(config: DispatchConfig) -> tuple[Harness, GatedFunctions]:
    h = Harness(config=config)
    functions = GatedFunctions()
    h.dispatcher._invoker = functions  # type: ignore[assignment]
    return h, functions


BUSY = DispatchConfig(max_concurrent_requests=4, busy_batch_min=3, max_batch_delay=0.002)


async def test_an_idle_endpoint_gets_a_single_ready_address_at_once() -> None:
    h, functions = gated(BUSY)
    h.send("a0", b"x")
    await settle()
    assert functions.requests == [[("a0", 1)]]
    await h.dispatcher.stop()


async def test_what_is_ready_together_goes_together_when_idle() -> None:
    h = Harness(config=DispatchConfig(max_concurrent_requests=2, busy_batch_min=4))
    for i in range(6):
        h.send(f"a{i}", b"x")
    await settle()
    # Idle: everything ready goes now, in requests of at least busy_batch_min addresses.
    assert h.functions.requests[:2] == [[(f"a{i}", 1) for i in r] for r in ((0, 1, 2, 3), (4, 5))]
    assert len(h.host.applied) == 6


async def test_while_busy_a_little_ready_work_waits_for_an_answer() -> None:
    h, functions = gated(BUSY)
    h.send("a0", b"x")
    await settle()
    h.send("a1", b"x")
    h.send("a2", b"x")
    await settle()
    assert functions.requests == [[("a0", 1)]]  # no new request for two addresses
    functions.release(0)
    await settle()
    # The answer came back: what accumulated goes in one request.
    assert functions.requests == [[("a0", 1)], [("a1", 1), ("a2", 1)]]
    functions.release(1)
    await settle()
    assert [a for a, _ in h.host.applied] == ["a0", "a1", "a2"]


async def test_while_busy_waiting_work_goes_after_the_batch_delay() -> None:
    h, functions = gated(BUSY)
    h.send("a0", b"x")
    await settle()
    h.send("a1", b"x")
    await settle()
    assert len(functions.requests) == 1
    await h.clock.advance(0.001, step=0.001)
    assert len(functions.requests) == 1
    await h.clock.advance(0.001, step=0.001)
    assert functions.requests == [[("a0", 1)], [("a1", 1)]]
    await h.dispatcher.stop()


async def test_while_busy_enough_ready_work_opens_a_full_request() -> None:
    h, functions = gated(BUSY)
    h.send("a0", b"x")
    await settle()
    for i in range(1, 8):
        h.send(f"a{i}", b"x")
    await settle()
    # Seven ready while one request is in flight: requests of at least three, the rest
    # (one) waits.
    assert functions.requests == [
        [("a0", 1)],
        [(f"a{i}", 1) for i in (1, 2, 3)],
        [(f"a{i}", 1) for i in (4, 5, 6)],
    ]
    await h.dispatcher.stop()


class WholeRequestPoison(FakeFunctions):
    """A message ``bad`` takes down the whole request that carries it (the endpoint
    crashes on it), whatever else the request carries."""

    async def invoke(
        self, endpoint: HttpEndpoint, url: str, request: FunctionRequest
    ) -> FunctionResponse:
        self.requests.append([(b.target.id, len(b.invocations)) for b in request.batches])
        await asyncio.sleep(0)
        if any(i.argument.value == b"bad" for b in request.batches for i in b.invocations):
            raise CallFailed("connection reset by peer")
        return FunctionResponse([InvocationResult() for _ in request.batches])


async def test_a_failed_request_of_many_addresses_is_split_before_any_is_blamed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "runtime.dispatcher")
    h = Harness(spec=module(after=2.0))
    h.dispatcher._invoker = h.functions = WholeRequestPoison(ok)
    for i in range(6):
        h.send(f"a{i}", b"bad" if i == 3 else b"ok")
    await settle()
    # One request of six failed whole; each address went again alone: only a3 failed.
    assert h.functions.requests[0] == [(f"a{i}", 1) for i in range(6)]
    assert sorted(r[0][0] for r in h.functions.requests[1:7]) == [f"a{i}" for i in range(6)]
    assert sorted(a for a, _ in h.host.applied) == ["a0", "a1", "a2", "a4", "a5"]
    (health,) = h.dispatcher.health()
    assert health.failing_addresses == 1
    assert not health.unavailable
    lines = [r.getMessage() for r in caplog.records if r.name == "runtime.dispatcher"]
    assert len(lines) == 1, lines
    assert "ex/f/a3 is failing" in lines[0]
    # The metrics count what happened: six failed attempts, six sent again, a3's own.
    sample = h.dispatcher._metrics.registry.get_sample_value
    ex_f = {"function_type": "ex/f"}
    assert sample("statefun_function_failures_total", {**ex_f, "kind": "call"}) == 7
    assert sample("statefun_function_retries_total", ex_f) == 6
    for second in range(5):  # others of the type succeed: the poison is parked, alone
        h.send(f"h{second}", b"ok")
        await h.clock.advance(1.0)
    assert [(a, v) for a, v, _ in h.host.parked] == [("a3", b"bad")]
    assert h.host.failures == []


async def test_policy_fail_splits_a_failed_request_before_rolling_back() -> None:
    h = Harness(spec=module(policy="fail", call=0.5))
    h.dispatcher._invoker = h.functions = WholeRequestPoison(ok)
    for i in range(4):
        h.send(f"a{i}", b"bad" if i == 2 else b"ok")
    await settle()
    # Split at once, without a backoff: the others apply, the poison's own attempt failed.
    assert sorted(a for a, _ in h.host.applied) == ["a0", "a1", "a3"]
    assert h.host.failures == []
    await h.clock.advance(2.0)  # its call budget runs out: a rollback naming it alone
    (failure,) = h.host.failures
    assert failure.address == Address.of(TypeName("ex", "f"), "a2")


async def test_a_poison_message_is_parked_while_everything_else_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "runtime.dispatcher")
    h = Harness(poison_on(b"bad"), module(after=5.0))
    for value in (b"1", b"bad", b"2", b"3"):
        h.send("p", value)
    await settle()
    # The batch failed whole: the address is held and its messages go one at a time.
    for second in range(20):
        h.send(f"h{second}", b"ok")  # healthy traffic of the same type meanwhile
        await h.clock.advance(1.0)
    assert h.host.values("p") == [b"1", b"2", b"3"]
    assert [(a, v) for a, v, _ in h.host.parked] == [("p", b"bad")]
    assert "failed alone" in h.host.parked[0][2]
    assert "boom" in h.host.parked[0][2]
    assert all(h.host.values(f"h{s}") == [b"ok"] for s in range(20))
    assert h.host.failures == []
    # One line when it started failing, one when the message was parked; not one per retry.
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "ex/f/p is failing" in lines[0]
    assert "parked in the dead letters" in lines[1]
    assert h.dispatcher.health()[0].dead_lettered == 1
    assert h.dispatcher.health()[0].failing_addresses == 0


async def test_without_success_elsewhere_nothing_is_parked_and_the_type_is_unavailable() -> None:
    h = Harness(ok, module(after=1.0))
    h.functions.down = "connection refused"
    for i in range(4):
        h.send(f"a{i}", b"x")
    await settle()
    await h.clock.advance(30.0)
    assert h.host.parked == []  # an outage parks nothing
    (health,) = h.dispatcher.health()
    assert health.unavailable
    assert health.failing_addresses == 4
    # One probe at a time with a growing backoff: fewer requests than one address retrying
    # on its own (at most every 0.5 s here) would send, let alone four.
    assert len(h.functions.requests) < 30 / 0.5
    h.functions.down = None
    await h.clock.advance(3.0)
    assert sorted(a for a, _ in h.host.applied) == ["a0", "a1", "a2", "a3"]
    assert h.dispatcher.health() == []


async def test_a_fresh_address_probes_an_unavailable_type_first() -> None:
    h = Harness(poison_on(b"bad"), module(after=1.0))
    h.send("p1", b"bad")
    h.send("p2", b"bad")
    await settle()
    await h.clock.advance(0.5)
    assert h.dispatcher.health()[0].unavailable  # two addresses failed, none succeeded
    h.send("fresh", b"ok")
    await h.clock.advance(2.0)
    assert h.host.values("fresh") == [b"ok"]
    assert not h.dispatcher.health()[0].unavailable
    await h.clock.advance(10.0)
    h.send("more", b"ok")  # successes keep coming: the poison is the messages'
    await h.clock.advance(10.0)
    assert sorted(a for a, _, _ in h.host.parked) == ["p1", "p2"]


async def test_policy_retry_never_parks() -> None:
    h = Harness(poison_on(b"bad"), module(policy="retry"))
    h.send("p", b"bad")
    for second in range(30):
        h.send(f"h{second}", b"ok")
        await h.clock.advance(1.0)
    assert h.host.parked == []
    assert h.dispatcher.health()[0].failing_addresses == 1


async def test_policy_fail_retries_within_the_call_budget_then_rolls_back() -> None:
    h = Harness(poison_on(b"bad"), module(policy="fail", call=2.0))
    h.send("p", b"bad")
    await settle()
    await h.clock.advance(1.0)
    assert h.host.failures == []
    await h.clock.advance(2.0)
    (failure,) = h.host.failures
    assert "call budget of 2 s exhausted" in failure.reason
    assert failure.address == Address("ex", "f", "p")


async def test_policy_fail_rolls_back_at_once_on_a_refused_result() -> None:
    h = Harness(ok, module(policy="fail"))
    h.host.refuse = lambda a, r: "mutation of unregistered state 'x'"
    h.send("p", b"x")
    await settle()
    (failure,) = h.host.failures
    assert "mutation of unregistered state" in failure.reason


async def test_a_refused_result_is_contained_like_any_failure() -> None:
    h = Harness(ok, module(after=2.0))
    h.host.refuse = lambda a, r: "mutation of unregistered state 'x'" if a.id == "p" else None
    h.send("p", b"x")
    for second in range(10):
        h.send(f"h{second}", b"ok")
        await h.clock.advance(1.0)
    assert h.host.failures == []
    assert [(a, v) for a, v, _ in h.host.parked] == [("p", b"x")]
    assert "refused: mutation of unregistered state" in h.host.parked[0][2]


async def test_a_function_asking_again_for_states_it_was_given_is_a_failure() -> None:
    spec = StateSpec("seen", "io.statefun.types/int")
    h = Harness(lambda b: MissingStateSpecs([spec]), module(after=1.0))
    h.send("p", b"x")
    await settle()
    assert h.host.registered[TypeName("ex", "f")] == ["seen"]  # learned once
    await h.clock.advance(1.0)
    (health,) = h.dispatcher.health()
    assert health.failing_addresses == 1
    assert "asks for states the batch carried" in (health.last_error or "")


async def test_an_address_past_its_batch_cap_overflows_to_the_log_in_order() -> None:
    h = Harness(ok, module(batch=4), DispatchConfig(max_concurrent_requests=1))
    h.functions.hang = False
    for i in range(20):
        h.send("hot", str(i).encode())
    assert h.dispatcher.buffered <= 4  # the rest stayed in the log
    (overflow,) = h.dispatcher.overflow()
    assert overflow.address == Address("ex", "f", "hot")
    assert overflow.offset == 4
    await h.clock.advance(1.0)
    assert h.host.values("hot") == [str(i).encode() for i in range(20)]
    assert h.dispatcher.overflow() == []
    assert h.dispatcher.buffered == 0


async def test_an_address_whose_overflow_cannot_be_read_asks_for_a_rollback() -> None:
    # Left alone, the address would keep its messages in the log with nothing to read
    # them again until the next generation: a silent stall.
    h = Harness(ok, module(batch=4), DispatchConfig(max_concurrent_requests=1))
    h.host.read_fails = "no records within the timeout"
    for i in range(20):
        h.send("hot", str(i).encode())
    await h.clock.advance(1.0)
    assert h.host.values("hot") == [str(i).encode() for i in range(4)]
    (failure,) = h.host.failures
    assert failure.cause == "log"
    assert "no records within the timeout" in failure.reason
    assert failure.address == Address("ex", "f", "hot")


async def test_a_type_whose_overflow_cannot_be_read_asks_for_a_rollback() -> None:
    h = Harness()
    h.dispatcher.pause(TypeName("ex", "f"))
    for i in range(10):
        h.send(f"a{i % 3}", str(i).encode())
    h.host.read_fails = "the broker is gone"
    h.dispatcher.resume(TypeName("ex", "f"))
    await h.clock.advance(1.0)
    assert h.host.applied == []
    (failure,) = h.host.failures
    assert failure.cause == "log"
    assert "the broker is gone" in failure.reason


async def test_an_unexpected_error_applying_a_result_asks_for_a_rollback() -> None:
    def broken(address: Address, result: InvocationResult) -> str | None:
        raise RuntimeError("a bug in the host")

    h = Harness()
    h.host.refuse = broken
    h.send("a", b"1")
    await h.clock.advance(1.0)
    (failure,) = h.host.failures
    assert failure.cause == "other"
    assert "a bug in the host" in failure.reason


async def test_a_held_address_keeps_no_new_messages_in_memory() -> None:
    h = Harness(poison_on(b"bad"), module(after=100.0))
    h.send("p", b"bad")
    await settle()
    for i in range(50):
        h.send("p", str(i).encode())
    assert h.dispatcher.buffered == 1
    assert h.dispatcher.room.is_set()


async def test_a_paused_type_waits_in_the_log_and_resumes_in_order() -> None:
    h = Harness()
    h.dispatcher.pause(TypeName("ex", "f"))
    for i in range(10):
        h.send(f"a{i % 3}", str(i).encode())
        h.send("g", str(i).encode(), function="ex/g")
    await h.clock.advance(1.0)
    assert {a for a, _ in h.host.applied} == {"g"}
    assert h.dispatcher.buffered == 0  # nothing of the paused type in memory
    assert [o.function_type for o in h.dispatcher.overflow()] == [TypeName("ex", "f")]
    assert h.dispatcher.health()[0].paused
    h.dispatcher.resume(TypeName("ex", "f"))
    await h.clock.advance(1.0)
    for a in range(3):
        assert h.host.values(f"a{a}") == [str(i).encode() for i in range(10) if i % 3 == a]
    assert h.dispatcher.overflow() == []


async def test_an_attempt_that_never_finishes_fails_at_its_deadline() -> None:
    h = Harness(ok, module(call=0.05, after=100.0))
    h.functions.hang = True
    h.send("slow", b"x")
    await asyncio.sleep(0.3)  # the deadline is real time: the attempt itself is real
    await settle()
    (health,) = h.dispatcher.health()
    assert "no complete answer within 0.05 s" in (health.last_error or "")
    await h.dispatcher.stop()


async def test_messages_to_a_type_the_endpoint_does_not_serve_are_parked() -> None:
    def unknown(batch: InvocationBatch) -> BatchOutcome:
        return FunctionFailure("ex/nosuch", batch.target, "UnknownFunctionType", "not here")

    h = Harness(unknown)
    h.send("x", b"1", function="ex/nosuch")
    await settle()
    h.functions.serving = frozenset({"ex/f"})  # what the endpoint then says it serves
    await h.clock.advance(1.0)
    assert [(a, v) for a, v, _ in h.host.parked] == [("x", b"1")]
    assert "serves no function type ex/nosuch" in h.host.parked[0][2]
    target = Address("ex", "nosuch", "y")
    assert not h.dispatcher.deliver(
        target, PendingInvocation(None, TypedValue("t/v", b"2"), (0, 99))
    )


async def test_pending_messages_and_overflow_survive_a_restore() -> None:
    h = Harness(ok, module(batch=2), DispatchConfig(max_concurrent_requests=1))
    h.dispatcher.pause(TypeName("ex", "g"))
    for i in range(5):
        h.send("hot", str(i).encode())
    h.send("g1", b"x", function="ex/g")
    pending, overflow = h.dispatcher.pending(), h.dispatcher.overflow()
    assert [p.argument.value for p in pending] == [b"0", b"1"]
    restored = Harness(ok, module(batch=2), DispatchConfig(max_concurrent_requests=1))
    restored.host.log, restored.host.position_of = h.host.log, h.host.position_of
    assert restored.dispatcher.restore(pending, overflow) == []
    await restored.clock.advance(1.0)
    assert restored.host.values("hot") == [str(i).encode() for i in range(5)]
    assert restored.host.values("g1") == [b"x"]


async def test_a_type_and_its_addresses_overflowing_together_deliver_each_message_once() -> None:
    h = Harness(ok, module(batch=2), DispatchConfig(max_concurrent_requests=1))
    h.dispatcher.pause(TypeName("ex", "f"))
    for i in range(30):
        h.send("a", str(i).encode())
        h.send(f"b{i % 4}", str(i).encode())
    h.dispatcher.resume(TypeName("ex", "f"))
    await h.clock.advance(2.0)
    assert h.host.values("a") == [str(i).encode() for i in range(30)]
    for b in range(4):
        assert h.host.values(f"b{b}") == [str(i).encode() for i in range(30) if i % 4 == b]


@pytest.mark.parametrize("seed", range(8))
async def test_whatever_happens_every_message_applies_once_in_order_or_is_parked(
    seed: int,
) -> None:
    """Random traffic, endpoint outages, poison messages, pauses and resumes, a small batch
    cap (overflow), few request slots, checkpoints and crashes back to them: each address's
    messages apply exactly once, in order, except the poison ones, parked exactly once."""
    import random

    rng = random.Random(seed)
    h = Harness(
        poison_on(b"poison"),
        module(batch=3, after=2.0),
        DispatchConfig(max_concurrent_requests=2, retry_max_backoff=0.3, probe_max_backoff=0.5),
    )
    sent: dict[str, list[bytes]] = {}
    checkpoint = h.checkpoint()
    for step in range(400):
        roll = rng.random()
        if roll < 0.04:
            checkpoint = h.checkpoint()
        elif roll < 0.06:
            await h.crash_and_restore(checkpoint)
        elif roll < 0.75:
            address = f"a{rng.randrange(12)}"
            value = b"poison" if rng.random() < 0.02 else f"{step}".encode()
            sent.setdefault(address, []).append(value)
            h.send(address, value)
        elif roll < 0.8:
            h.functions.down = None if h.functions.down else "connection refused"
        elif roll < 0.85:
            if rng.random() < 0.5:
                h.dispatcher.pause(TypeName("ex", "f"))
            else:
                h.dispatcher.resume(TypeName("ex", "f"))
        await h.clock.advance(rng.random() * 0.3)
    h.functions.down = None
    h.dispatcher.resume(TypeName("ex", "f"))
    for second in range(60):  # healthy traffic lets the poison be told from an outage
        h.send("healthy", str(second).encode())
        sent.setdefault("healthy", []).append(str(second).encode())
        await h.clock.advance(1.0)
    for address, values in sent.items():
        assert h.host.values(address) == [v for v in values if v != b"poison"], address
    parked = sorted((a, v) for a, v, _ in h.host.parked)
    expected = sorted((a, v) for a, vs in sent.items() for v in vs if v == b"poison")
    assert parked == expected
    assert h.dispatcher.buffered == 0
    assert h.dispatcher.overflow() == []


class SlowFlakyFunctions(FakeFunctions):
    """Each call takes a random time on the fake clock and fails at random; counts each
    address's calls under way."""

    def __init__(self, clock: FakeClock, rng: random.Random) -> None:
        super().__init__(ok)
        self.clock, self.rng = clock, rng
        self.under_way: dict[str, int] = {}
        self.most_under_way = 0

    async def invoke(
        self, endpoint: HttpEndpoint, url: str, request: FunctionRequest
    ) -> FunctionResponse:
        ids = [b.target.id for b in request.batches]
        for i in ids:
            self.under_way[i] = self.under_way.get(i, 0) + 1
            self.most_under_way = max(self.most_under_way, self.under_way[i])
        try:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.clock.call_later(
                self.rng.uniform(0.001, 0.2), lambda: done.done() or done.set_result(None)
            )
            await done
            if self.rng.random() < 0.3:
                raise CallFailed("injected")
            return FunctionResponse(
                [
                    FunctionFailure(str(b.target.function_type), b.target, "ValueError", "x")
                    if self.rng.random() < 0.2
                    else InvocationResult()
                    for b in request.batches
                ]
            )
        finally:
            for i in ids:
                self.under_way[i] -= 1


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("DISPATCH_SEEDS", "40"))))
async def test_under_random_failures_an_address_is_in_one_call_at_a_time(seed: int) -> None:
    """Failed batches go back to waiting with a retry due later, full mailboxes overflow
    to the log and are read again (slowly), and messages keep arriving: whatever the order of
    those events, an address is never in two calls at once (the second answer would be
    applied to the next batch: its messages lost, the first applied twice), and every
    message is applied once, in order."""
    rng = random.Random(seed)
    random.seed(seed)  # the dispatcher's backoff jitter
    h = Harness(spec=module(after=3600.0, batch=6))
    functions = SlowFlakyFunctions(h.clock, rng)
    h.dispatcher._invoker = functions  # type: ignore[assignment]
    read_again = h.host.reread

    async def slow_reread(*args: Any) -> tuple[list[tuple[Address, PendingInvocation]], int]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        h.clock.call_later(rng.uniform(0.001, 0.2), lambda: done.done() or done.set_result(None))
        await done
        return await read_again(*args)

    h.host.reread = slow_reread  # type: ignore[method-assign,assignment]
    sent: dict[str, list[bytes]] = {}
    for n in range(60):
        address = f"a{rng.randrange(3)}"
        h.send(address, str(n).encode())
        sent.setdefault(address, []).append(str(n).encode())
        await h.clock.advance(rng.uniform(0.0, 0.1), step=0.01)
    functions.rng = random.Random(0)
    for _ in range(200):  # until everything is applied (failures get rarer, not gone)
        await h.clock.advance(1.0, step=0.01)
        if all(h.host.values(a) == values for a, values in sent.items()):
            break
    assert functions.most_under_way == 1
    for address, values in sent.items():
        assert h.host.values(address) == values


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("DISPATCH_SEEDS", "40"))))
async def test_under_random_failures_no_address_is_blamed_for_a_request_it_shared(
    seed: int,
) -> None:
    """Requests of many addresses (few slots, small busy batches) fail whole at random and
    batches fail on their own at random: a failure counts against an address only when
    its own batch failed, or its request carried it alone; every message applies once,
    in order."""
    rng = random.Random(seed)
    random.seed(seed)
    h = Harness(
        spec=module(after=3600.0, batch=4),
        config=DispatchConfig(
            max_concurrent_requests=3,
            busy_batch_min=2,
            retry_max_backoff=0.2,
            max_batch_delay=0.005,
        ),
    )
    functions = SlowFlakyFunctions(h.clock, rng)
    h.dispatcher._invoker = functions  # type: ignore[assignment]
    last_request: dict[str, list[str]] = {}
    shared = [0]
    invoke = functions.invoke

    async def recording_invoke(
        endpoint: HttpEndpoint, url: str, request: FunctionRequest
    ) -> FunctionResponse:
        ids = [b.target.id for b in request.batches]
        for i in ids:
            last_request[i] = ids
        shared[0] += len(ids) > 1
        return await invoke(endpoint, url, request)

    functions.invoke = recording_invoke  # type: ignore[method-assign]
    blamed: list[tuple[str, str, list[str]]] = []
    failed = h.dispatcher._failed

    def spy(mailbox: Any, error: Any) -> None:
        blamed.append((mailbox.address.id, error.kind, last_request[mailbox.address.id]))
        failed(mailbox, error)

    h.dispatcher._failed = spy  # type: ignore[method-assign]
    sent: dict[str, list[bytes]] = {}
    for n in range(200):
        address = f"a{rng.randrange(12)}"
        h.send(address, str(n).encode())
        sent.setdefault(address, []).append(str(n).encode())
        if rng.random() < 0.3:
            await h.clock.advance(rng.uniform(0.0, 0.05), step=0.005)
    functions.rng = random.Random(0)
    for _ in range(200):
        await h.clock.advance(1.0, step=0.01)
        if all(h.host.values(a) == values for a, values in sent.items()):
            break
    assert shared[0] >= 3  # requests carried several addresses
    for address, kind, ids in blamed:
        if kind != "function":  # the request failed whole: it carried this address alone
            assert ids == [address], (address, kind, ids)
    assert functions.most_under_way == 1
    for address, values in sent.items():
        assert h.host.values(address) == values
