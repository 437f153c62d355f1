"""Stopping the runtime's tasks: a cancellation always gets through, whatever it races
with (found by the verifier, ``verifier/``: a rollback that never finished)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

# The verifier's runs on the embedded log sometimes stalled for good after the first rollback
# (a call budget running out): Worker.stop(drain=False) cancels the worker's consume task and
# awaits it; the task waited in LocalConsumer.poll in asyncio.wait_for(asyncio.shield(wakeup)),
# and on Python 3.11 wait_for swallows a cancellation when the future it waits for completes in
# the same loop turns: the task polled on and stop() waited forever. CheckpointCoordinator.stop()
# had the same flaw. Both now wait with asyncio.timeout, which lets an outside cancellation
# through.


async def _started_runtime() -> Any:
    """A started embedded runtime whose functions' endpoint never answers, without
    checkpoints."""
    from runtime.app import Runtime, RuntimeConfig
    from runtime.checkpoints.coordinator import CheckpointConfig
    from statefun.module_spec import parse_module_spec

    spec = parse_module_spec(
        "kind: io.statefun.endpoints.v2/http\n"
        "spec: {functions: verify/*, urlPathTemplate: 'http://127.0.0.1:9/statefun'}\n"
    )
    runtime = await Runtime.open(
        RuntimeConfig(module=spec, checkpoints=CheckpointConfig(interval=0))
    )
    await runtime.start()
    return runtime


@pytest.mark.timeout(60)
@pytest.mark.parametrize("turns", [0, 1, 2])
def test_a_rollback_stops_the_worker_even_when_a_record_just_became_durable(turns: int) -> None:
    from runtime.log import Record

    async def scenario() -> bool:
        runtime = await _started_runtime()
        await asyncio.sleep(0.3)  # the worker waits in poll()
        worker = runtime.worker
        assert worker is not None
        runtime.log.append(runtime.topics.messages, 0, [Record(b"any record")])
        for _ in range(turns):
            await asyncio.sleep(0)
        stop = asyncio.create_task(worker.stop(drain=False))  # what a rollback does
        done, _ = await asyncio.wait({stop}, timeout=3)
        if not done:
            stop.cancel()  # a second cancellation gets through
            with contextlib.suppress(asyncio.CancelledError):
                await stop
        await runtime.stop()
        return bool(done)

    assert asyncio.run(scenario()), "Worker.stop(drain=False) did not return within 3 s"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("turns", [0, 1])
def test_the_coordinator_stops_even_when_a_checkpoint_just_completed(turns: int) -> None:
    from runtime.checkpoints.coordinator import CheckpointConfig, CheckpointCoordinator
    from runtime.checkpoints.epochs import EpochClock, SkipRule
    from runtime.checkpoints.store import Manifest

    class Log:
        async def flush(self) -> None:
            pass

    class Store:
        pending: asyncio.Future[Manifest] | None = None

        async def commit(self, *args: Any) -> Manifest:
            self.pending = asyncio.get_running_loop().create_future()
            return await self.pending

    async def scenario() -> bool:
        store = Store()
        coordinator = CheckpointCoordinator(store, Log(), CheckpointConfig(interval=0.01))  # type: ignore[arg-type]
        coordinator.attach(EpochClock(1, 1, "test", SkipRule(1, {})), [])
        coordinator.start()
        while store.pending is None:  # noqa: ASYNC110 - the fake store has no event
            await asyncio.sleep(0.001)
        store.pending.set_result(Manifest(1, 1, 0, 0, 0, 0))  # a checkpoint completes ...
        for _ in range(turns):
            await asyncio.sleep(0)
        stop = asyncio.create_task(coordinator.stop())  # ... as SIGTERM stops the runtime
        done, _ = await asyncio.wait({stop}, timeout=2)
        if not done:
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop
            await coordinator.stop()  # a second cancellation gets through
        return bool(done)

    assert asyncio.run(scenario()), "CheckpointCoordinator.stop() did not return within 2 s"


@pytest.mark.timeout(60)
def test_a_worker_task_that_fails_unexpectedly_rolls_the_runtime_back() -> None:
    # Before, the consume task died with the error, unseen: the worker read nothing more,
    # checkpoints went on, and every message after it waited until the next rollback.
    from runtime.envelope import Envelope
    from statefun.address import Address
    from statefun.values import TypedValue

    async def scenario() -> None:
        runtime = await _started_runtime()
        try:
            worker = runtime.worker
            assert worker is not None

            def broken(*args: Any) -> bool:
                raise RuntimeError("a bug in the dispatcher")

            worker.dispatcher.deliver = broken  # type: ignore[method-assign,assignment]
            record = Envelope(
                Address.parse("verify/f/a"), None, TypedValue("t/v", b"1")
            ).to_record()
            runtime.log.append(runtime.topics.messages, 0, [record])
            async with asyncio.timeout(20):
                while runtime.worker is worker or runtime.worker is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            rollbacks = runtime.metrics.rollbacks.labels("other").value
            assert rollbacks == 1
        finally:
            await runtime.stop()

    asyncio.run(scenario())
