"""The checkpoint coordinator: one checkpoint at a time, on demand or at an interval.

Checkpoint n: every participant (the worker, each Kafka ingress reader) captures its
local snapshot at once, between two records (the event loop runs one callback at a
time, so "at once" is a single synchronous step), and the epoch advances to n+1.
Responses still in flight belong to epoch n+1; their inputs are in the snapshot's
pending inputs. Then the log is flushed (every record tagged <= n is durable) and the
snapshot is written to the store with its manifest, the commit point. A checkpoint that
does not complete within its timeout is abandoned: its captured changes go back into
the next one, and no manifest is written (``on_abandon`` hears why; the first of a run
of abandoned checkpoints is logged, and the commit that ends the run). The newest
``retain`` checkpoints are kept.

When checkpoints start is the :class:`CheckpointSchedule`'s to say (the cluster's
coordinator uses it too): as soon as the previous one is done while work waits for a
commit, otherwise every ``interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.checkpoints.epochs import EpochClock
from runtime.checkpoints.store import CheckpointStore, Manifest
from runtime.log import Log

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Capture:
    """A participant's local snapshot, captured; ``abandon`` undoes the capture's side
    effects (the changed-state set it cleared) if the checkpoint does not complete."""

    part: bytes | None
    """What the participant restores from (None: it keeps no part)."""
    state: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    abandon: Callable[[], None] = lambda: None
    releases: bool = False
    """Whether the commit of this checkpoint will release something of it to the outside
    (egress records, replies held for commit): a checkpoint that released nothing can be
    given up for an older one if it turns out damaged."""
    key_rows: Callable[[], Sequence[tuple[bytes, bytes | None]]] | None = None
    """The rows of the idempotency-key table this checkpoint writes, encoded when called:
    on the store's thread, off the event loop."""


class Participant(Protocol):
    name: str

    def capture(self) -> Capture: ...


@dataclass(frozen=True, slots=True)
class CheckpointConfig:
    interval: float = 1.0
    """The most seconds between the start of one checkpoint and the next (0: no
    checkpoints, not even on demand)."""
    on_demand: bool = True
    """Start the next checkpoint as soon as the one before is done while work waits for a
    commit (:class:`CheckpointSchedule`); False: only every ``interval``."""
    timeout: float = 60.0
    retain: int = 3
    prune_every: int = 10
    """Drop old checkpoints every this many checkpoints."""


class CheckpointSchedule:
    """When the next checkpoint starts: at once when work waits for a commit, otherwise
    ``interval`` seconds after the previous one started.

    Work released only at a commit (a reply held for ``consistency=committed``, an
    exactly-once egress record) calls :meth:`demand`; the coordinator's loop waits in
    :meth:`next`. With demand, the next checkpoint starts as soon as the one in progress
    is done (checkpoints are taken one at a time), so held work waits for at most two
    checkpoints instead of an interval. Without demand the interval is the upper bound
    between two starts, as before: an idle runtime takes no checkpoint back to back.

    Demand counts only once a checkpoint has committed since the schedule was made or
    :meth:`restart`-ed and since the last :meth:`abandoned` one; until then the next
    checkpoint waits for the interval. So a generation that fails at once completes no
    checkpoint, and its rollbacks count as in a row and back off; and a store that keeps
    failing is tried once an interval, never in a hot loop. :meth:`next` always yields
    to the event loop once, so work that raises demand on every turn cannot starve it.
    ``clock`` is injectable (tests); :meth:`next` waits on the event loop's own clock
    for at most what :meth:`wait_time` says, then asks again."""

    def __init__(
        self, interval: float, *, on_demand: bool = True, clock: Callable[[], float] | None = None
    ):
        if interval <= 0:
            raise ValueError(f"a checkpoint schedule needs an interval above 0, not {interval}")
        self.interval = interval
        self.on_demand = on_demand
        self._clock = clock or time.monotonic
        self._started = self._clock()
        self._demanded = False
        self._patient = True
        """No checkpoint committed since the start or the last abandoned one: the next
        waits for the interval."""
        self._wake: asyncio.Event | None = None

    @property
    def demanded(self) -> bool:
        """Whether work waits for a checkpoint not yet started."""
        return self._demanded

    def demand(self) -> None:
        """Work waits for the commit of the checkpoint that will cover it: start one soon."""
        if self._demanded or not self.on_demand:
            return
        self._demanded = True
        if self._wake is not None:
            self._wake.set()

    def restart(self) -> None:
        """Count from now, as a new schedule does: the next checkpoint an interval away
        (demand is kept for when a checkpoint may start)."""
        self._started = self._clock()
        self._patient = True

    def committed(self) -> None:
        """A checkpoint committed: demand starts the next one at once from now on."""
        self._patient = False
        if self._demanded and self._wake is not None:
            self._wake.set()

    def abandoned(self) -> None:
        """A checkpoint was abandoned: the next one waits for the interval (what it held
        still waits, and demand is kept for when a checkpoint may start)."""
        self._patient = True

    def wait_time(self) -> float:
        """Seconds until the next checkpoint should start (0: now)."""
        if self._demanded and not self._patient:
            return 0.0
        return max(0.0, self._started + self.interval - self._clock())

    async def next(self) -> None:
        """Return when the next checkpoint should start, and count it as started."""
        await asyncio.sleep(0)  # the floor: one turn of the event loop between checkpoints
        if self._wake is None:
            self._wake = asyncio.Event()
        while (wait := self.wait_time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
        self._started = self._clock()
        self._demanded = False


async def on_schedule(
    schedule: CheckpointSchedule, checkpoint: Callable[[], Awaitable[object]]
) -> None:
    """Take a checkpoint whenever ``schedule`` says, forever; a failed one is logged and
    the next goes on."""
    while True:
        await schedule.next()
        try:
            await checkpoint()
        except Exception:
            log.exception("checkpoint failed")


class CheckpointCoordinator:
    def __init__(self, store: CheckpointStore, log_: Log, config: CheckpointConfig):
        self.store = store
        self.config = config
        self._log = log_
        self._clock: EpochClock | None = None
        self._participants: Sequence[Participant] = ()
        self._task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        """Held while a checkpoint is taken."""
        self._completed = 0
        self._abandoned_in_a_row = 0
        self.last: Manifest | None = None
        self.on_commit: Callable[[Manifest], None] = lambda manifest: None
        self.on_pruned: Callable[[], None] = lambda: None
        """Called once the store keeps only the retained checkpoints (``runtime.retention``)."""
        self.on_abandon: Callable[[int, Exception], None] = lambda checkpoint, error: None
        self.schedule = (
            CheckpointSchedule(config.interval, on_demand=config.on_demand)
            if config.interval > 0
            else None
        )
        """When checkpoints start (None: only when :meth:`checkpoint` is called)."""

    def demand(self) -> None:
        """Work waits for a commit: take the next checkpoint soon (see :class:`CheckpointSchedule`)."""
        if self.schedule is not None:
            self.schedule.demand()

    def attach(self, clock: EpochClock, participants: Sequence[Participant]) -> None:
        """Checkpoint these participants from now on (a new generation's)."""
        self._clock = clock
        self._participants = list(participants)

    def detach(self) -> None:
        self._clock = None
        self._participants = ()

    def start(self) -> None:
        if self.schedule is not None and self._task is None:
            # The first checkpoint an interval after the start: a generation that fails
            # at once (a poison message under policy fail) has completed none, so its
            # rollbacks count as in a row and back off.
            self.schedule.restart()
            self._task = asyncio.create_task(self._run(), name="checkpoint-coordinator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self.schedule is not None
        await on_schedule(self.schedule, self.checkpoint)

    async def checkpoint(self) -> Manifest | None:
        """Take one checkpoint of the attached participants; its manifest, or None if
        there is nothing attached or it was abandoned."""
        async with self.lock:
            clock = self._clock
            if clock is None:
                return None
            started = time.monotonic()
            checkpoint, generation = clock.epoch, clock.generation
            captures = [(p.name, p.capture()) for p in self._participants]
            clock.advance()
            try:
                # asyncio.timeout, not wait_for, which on Python 3.11 can swallow the
                # cancellation of stop() when the commit completes in the same turn.
                async with asyncio.timeout(self.config.timeout):
                    manifest = await self._complete(checkpoint, generation, captures, started)
            except BaseException as e:
                for _, capture in captures:
                    capture.abandon()
                if isinstance(e, Exception):
                    if self.schedule is not None:
                        self.schedule.abandoned()
                    self._abandoned(checkpoint, e)
                    return None
                raise
            if self._abandoned_in_a_row:
                log.info(
                    "checkpoint %d committed after %d abandoned",
                    checkpoint,
                    self._abandoned_in_a_row,
                )
                self._abandoned_in_a_row = 0
            self.last = manifest
            self._completed += 1
            if self.schedule is not None:
                self.schedule.committed()
            self.on_commit(manifest)
            if self._completed % self.config.prune_every == 0:
                await self.store.retain(self.config.retain)
                self.on_pruned()
            return manifest

    def _abandoned(self, checkpoint: int, error: Exception) -> None:
        self._abandoned_in_a_row += 1
        # One line when checkpoints start failing, not one per interval while they do.
        log.log(
            logging.WARNING if self._abandoned_in_a_row == 1 else logging.DEBUG,
            "checkpoint %d abandoned: %s: %s",
            checkpoint,
            type(error).__name__,
            error,
        )
        self.on_abandon(checkpoint, error)

    async def _complete(
        self,
        checkpoint: int,
        generation: int,
        captures: list[tuple[str, Capture]],
        started: float,
    ) -> Manifest:
        await self._log.flush()
        state = [row for _, c in captures for row in c.state]
        parts = [(name, c.part) for name, c in captures if c.part is not None]
        released = [name for name, c in captures if c.releases]
        key_rows = [c.key_rows for _, c in captures if c.key_rows is not None]
        manifest = await self.store.commit(
            checkpoint, generation, state, parts, started, released, key_rows
        )
        log.debug(
            "checkpoint %d committed: %d addresses, %d bytes, %d ms",
            checkpoint,
            manifest.addresses,
            manifest.size_bytes,
            manifest.duration_ms,
        )
        return manifest
