"""The checkpoint schedule (``runtime.checkpoints.coordinator.CheckpointSchedule``): demand
starts a checkpoint without waiting for the interval, an idle runtime takes none before
it, and demand counts only once a checkpoint committed (not at a start, not after an
abandoned one). Time is an injected clock; nothing here waits on the wall clock."""

from __future__ import annotations

import asyncio

import pytest

from runtime.checkpoints.coordinator import CheckpointSchedule, on_schedule

pytestmark = pytest.mark.timeout(10)

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def committed_schedule(clock: Clock) -> CheckpointSchedule:
    """A schedule whose first checkpoint has committed (so demand counts)."""
    schedule = CheckpointSchedule(HOUR, clock=clock)
    schedule.committed()
    return schedule


def test_idle_waits_for_the_interval_from_the_last_start() -> None:
    clock = Clock()
    schedule = committed_schedule(clock)
    assert schedule.wait_time() == HOUR
    clock.now += HOUR - 1
    assert schedule.wait_time() == 1.0
    clock.now += 1
    assert schedule.wait_time() == 0.0


def test_demand_starts_the_next_checkpoint_at_once() -> None:
    clock = Clock()
    schedule = committed_schedule(clock)
    schedule.demand()
    assert schedule.demanded
    assert schedule.wait_time() == 0.0


def test_demand_waits_for_the_interval_until_a_checkpoint_committed() -> None:
    clock = Clock()
    schedule = CheckpointSchedule(HOUR, clock=clock)
    schedule.demand()
    assert schedule.wait_time() == HOUR  # the first of a generation: a start that fails
    schedule.committed()
    assert schedule.wait_time() == 0.0
    schedule.abandoned()
    assert schedule.wait_time() == HOUR  # a failing store is not retried in a hot loop
    assert schedule.demanded  # kept for when a checkpoint may start
    schedule.committed()
    assert schedule.wait_time() == 0.0
    schedule.restart()
    assert schedule.wait_time() == HOUR


def test_demand_off_keeps_the_interval() -> None:
    clock = Clock()
    schedule = CheckpointSchedule(HOUR, on_demand=False, clock=clock)
    schedule.committed()
    schedule.demand()
    assert not schedule.demanded
    assert schedule.wait_time() == HOUR


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="above 0"):
        CheckpointSchedule(0)


def test_a_demand_wakes_the_loop_and_a_checkpoint_consumes_it() -> None:
    """The coordinator's loop: demand raised while it waits (an hour to go) starts a
    checkpoint; demand raised during a checkpoint starts the next right after it; then,
    with no demand, the loop waits for the interval again."""

    async def scenario() -> None:
        clock = Clock()
        schedule = committed_schedule(clock)
        taken: list[int] = []
        started = asyncio.Queue[int]()
        release = asyncio.Event()

        async def checkpoint() -> None:
            taken.append(len(taken) + 1)
            started.put_nowait(taken[-1])
            await release.wait()
            release.clear()
            schedule.committed()

        loop_task = asyncio.create_task(on_schedule(schedule, checkpoint))
        try:
            schedule.demand()
            assert await started.get() == 1
            assert not schedule.demanded  # consumed by the start
            schedule.demand()  # work of the next epoch, while checkpoint 1 runs
            release.set()
            assert await started.get() == 2  # right after 1, without the interval
            release.set()
            # Idle now: the next start is an interval from checkpoint 2's.
            await asyncio.sleep(0)
            assert not schedule.demanded
            assert schedule.wait_time() == HOUR
            assert taken == [1, 2]
        finally:
            loop_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await loop_task

    asyncio.run(scenario())
