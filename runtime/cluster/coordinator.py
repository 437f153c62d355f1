"""The cluster checkpoint coordinator: two-phase commit over the decision log.

It runs on every member, and acts only on the one the current ``Begin`` names
coordinator (the Kafka group leader; a view change makes the new leader call
:meth:`ClusterCoordinator.begin`). Everything it knows comes from the fold of the
decision log (``runtime.cluster.decisions``), never from memory of its own, so a member
that takes over goes on from exactly what its predecessor committed: it never commits
a checkpoint twice (a manifest is valid only for the take in progress, once complete)
and never loses one (a Begin rolls back to the last valid manifest before it in the
log, whoever wrote it).

Checkpoint n, when the :class:`~runtime.checkpoints.coordinator.CheckpointSchedule`
says (at once while some member's work waits for a commit, otherwise every
``interval``): append ``Take(g, n)`` with n above every checkpoint
taken before, wait for the ``Part`` of every member the Begin gives partitions, then
append the ``Manifest``: the commit point. Every ``full_every`` links of a chain the take
is full, in a new segment of the partition store (unless the chain's segment is younger
than ``full_every`` intervals: takes on demand come back to back, and creating and
deleting topics at that pace would cost more than the takes); once no retained manifest
reads a segment, ``on_segments_unneeded`` hears that every segment below the lowest
still read may be deleted. A take not complete within ``timeout`` is abandoned: no manifest, and
the next take goes on (members keep their changes since the last commit and write
them again). One take at a time.

After a commit that leaves the decision log's epoch with ``epoch_records`` records or
more (``DecisionLog.epoch_records``), it moves the log to a new epoch
(``DecisionLog.move``): a member that starts reads only the newest epoch, from its
snapshot of the fold. A move that loses a race to another record is void, and the next
commit tries again.

A ``Fail`` of the current generation makes it append a new Begin with the same owners:
a rollback of everything, with the cause. A Begin of an older Kafka group view that
names another coordinator and lands after this member's (a stale leader that had not
yet heard of the new view) makes it append its own Begin again: the newest view's
leader coordinates. The fold does not compare views (see ``runtime.cluster.decisions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from runtime.checkpoints.coordinator import CheckpointConfig, CheckpointSchedule, on_schedule
from runtime.cluster.decisions import (
    Begin,
    ClusterState,
    DecisionLog,
    Effect,
    IngressPartition,
    Manifest,
    Part,
    Take,
    next_manifest,
)
from runtime.errors import LogError, ModuleMismatch, StoreError

log = logging.getLogger(__name__)

DEFAULT_FULL_EVERY = 20
"""A full snapshot when a chain has this many links: a restore reads at most this many."""
_BEGIN_ATTEMPTS = 5
"""Begins to append while older views' coordinators keep taking the generation first."""
_ROLLBACK_RETRY = 1.0
"""Seconds between attempts to append the Begin a Fail asks for."""


async def _no_part(take: Take) -> Part | None:
    return None


def _generation_above(generation: int) -> Callable[[ClusterState], bool]:
    return lambda state: state.generation > generation


def _wall_ms() -> int:
    return int(time.time() * 1000)


class ClusterCoordinator:
    def __init__(
        self,
        decisions: DecisionLog,
        member: str,
        module: str,
        config: CheckpointConfig,
        *,
        full_every: int = DEFAULT_FULL_EVERY,
        wall_ms: Callable[[], int] = _wall_ms,
    ):
        """``member``: this process's member id; ``module``: its module's fingerprint."""
        if full_every < 1:
            raise ValueError(f"full_every must be at least 1, not {full_every}")
        self.decisions = decisions
        """The decision log it appends to and acts on (read its state, never change it)."""
        self.member = member
        self.module = module
        self.config = config
        self.full_every = full_every
        self._wall_ms = wall_ms
        self.lock = asyncio.Lock()
        """Held while a checkpoint is taken."""
        self._tasks: list[asyncio.Task[None]] = []
        self._abandoned_in_a_row = 0
        self._led: Begin | None = None
        """The last Begin this member appended that applied."""
        self._segments_released_below = 1  # segments are numbered from 1: none is below
        self.schedule = (
            CheckpointSchedule(config.interval, on_demand=config.on_demand)
            if config.interval > 0
            else None
        )
        """When takes start while this member coordinates (None: only when
        :meth:`checkpoint` is called); members' demand reaches it through :meth:`demand`."""
        self._segment_min_age = full_every * config.interval
        """Seconds a segment lives at least before a full take starts a new one."""
        self._segment_opened: tuple[int, float] | None = None
        """The segment this coordinator last started, and when (``time.monotonic``)."""
        self.last: Manifest | None = None
        """The last manifest this coordinator committed."""
        self.on_commit: Callable[[Manifest], None] = lambda manifest: None
        self.on_abandon: Callable[[int, Exception], None] = lambda checkpoint, error: None
        self.on_segments_unneeded: Callable[[int], None] = lambda below: None
        """Called with S: no retained manifest reads a segment below S any more."""
        self.own_part: Callable[[Take], Awaitable[Part | None]] = _no_part
        """This member's part of a take, written but not appended (None: none to give);
        a take while this member is the only owner asks for it before appending."""

    @property
    def state(self) -> ClusterState:
        return self.decisions.state

    def is_coordinator(self) -> bool:
        """Whether the current Begin names this member coordinator."""
        return self.state.coordinator == self.member

    # --- generations ---------------------------------------------------------------------

    async def begin(
        self,
        *,
        view: int,
        owners: Mapping[int, str],
        ingress_owners: Mapping[IngressPartition, str],
        members: Mapping[str, str],
        reason: str,
        cause_address: str | None = None,
        cause_messages: tuple[str, ...] = (),
    ) -> Effect:
        """Begin the next generation with this member as coordinator: a rollback of
        everything to the last valid manifest. Call it on every view change that makes
        this member the group leader. What the fold made of the Begin: void if a
        coordinator of a view at least as new began a generation first. Raises
        :class:`ModuleMismatch` if this process runs another module than the application.

        From then on (while :meth:`start`-ed), a Begin of an older view naming another
        coordinator (a stale leader's, landing after this one) is contested with a new
        Begin of this view and assignment."""
        for _ in range(_BEGIN_ATTEMPTS):
            state = self.state
            if state.module is not None and state.module != self.module:
                raise ModuleMismatch(
                    f"this process runs module {self.module}, but the application runs "
                    f"{state.module}: start it with the application's module"
                )
            effect = await self.decisions.decide(
                Begin(
                    state.generation + 1,
                    self.member,
                    view,
                    dict(owners),
                    dict(ingress_owners),
                    dict(members),
                    self.module,
                    reason,
                    cause_address,
                    cause_messages,
                    self._wall_ms(),
                )
            )
            current = self.state.begin
            # Lost the race to another Begin: go again only if ours is the newer view.
            if effect.applied or current is None or view <= current.view:
                break
        if effect.applied:
            assert isinstance(effect.record, Begin)
            self._led = effect.record
            log.info(
                "generation %d begins (%s), coordinator %s, rolled back to checkpoint %d",
                self.state.generation,
                reason,
                self.member,
                self.state.rolled_back_to.get(self.state.generation - 1, 0),
            )
        else:
            log.info("begin of view %d void: %s", view, effect.void)
        return effect

    # --- checkpoints ---------------------------------------------------------------------

    def start(self) -> None:
        """Run the checkpoint loop (unless the interval is 0), the rollbacks a Fail asks
        for, and the contest of stale leaders' Begins."""
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._keep_generations(), name="generations"))
        if self.schedule is not None:
            self.schedule.restart()
            self._tasks.append(asyncio.create_task(self._run(), name="cluster-checkpoints"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def demand(self) -> None:
        """Work of some member waits for a commit: take the next checkpoint soon (if this
        member coordinates; see :class:`~runtime.checkpoints.coordinator.CheckpointSchedule`)."""
        if self.schedule is not None:
            self.schedule.demand()

    async def _run(self) -> None:
        assert self.schedule is not None
        await on_schedule(self.schedule, self.checkpoint)

    async def checkpoint(self) -> Manifest | None:
        """Take one checkpoint: its manifest, or None if this member does not coordinate,
        a rollback is asked for, or the checkpoint was abandoned or superseded."""
        async with self.lock:
            state = self.state
            if not self.is_coordinator() or state.failure is not None:
                return None
            generation, checkpoint = state.generation, state.highest_checkpoint + 1
            chain_segment = state.chain_segment()
            full = chain_segment is None or state.chain_length() >= self.full_every
            started = time.monotonic()
            # A full take starts a new segment, unless the chain's segment is younger than
            # full_every intervals (checkpoints on demand come back to back): segments
            # then come and go at the interval's pace, not one per full_every takes.
            rotate = chain_segment is None or (
                full and self._segment_age(chain_segment, started) >= self._segment_min_age
            )
            segment = (
                state.highest_segment + 1 if rotate or chain_segment is None else chain_segment
            )
            take_record = Take(generation, checkpoint, segment, full)
            if state.owners() == {self.member}:
                # Alone: two round trips to the log instead of four (_commit_alone).
                try:
                    async with asyncio.timeout(self.config.timeout):
                        part = await self.own_part(take_record)
                except (TimeoutError, LogError, StoreError) as e:
                    self._abandoned(checkpoint, e)
                    return None
                if part is not None:
                    return await self._commit_alone(take_record, part, started)
            try:
                async with asyncio.timeout(self.config.timeout):
                    take = await self.decisions.decide(take_record)
            except TimeoutError:
                # Folded later, the next take supersedes it; never a schedule stalled on it.
                log.warning("take %d not folded within %.1f s", checkpoint, self.config.timeout)
                return None
            if not take.applied:
                log.info("take %d void: %s", checkpoint, take.void)
                return None
            if segment != chain_segment:
                self._segment_opened = (segment, started)

            def settled(s: ClusterState) -> bool:
                current = s.take is not None and s.take.checkpoint == checkpoint
                return s.generation != generation or not current or s.take_complete

            try:
                async with asyncio.timeout(self.config.timeout):
                    await self.decisions.wait(settled)
            except TimeoutError:
                missing = sorted(self.state.owners() - self.state.parts.keys())
                self._abandoned(checkpoint, TimeoutError(f"no part from {', '.join(missing)}"))
                return None
            state = self.state
            if state.generation != generation or not state.take_complete:
                log.info("checkpoint %d superseded before it completed", checkpoint)
                return None
            manifest = next_manifest(
                state, self._wall_ms(), int((time.monotonic() - started) * 1000)
            )
            committed = await self.decisions.decide(manifest)
            if not committed.applied:
                log.info("manifest %d void: %s", checkpoint, committed.void)
                return None
            await self._committed(manifest)
            return manifest

    async def _commit_alone(self, take: Take, part: Part, started: float) -> Manifest | None:
        """Commit ``take`` of this member, the only owner, whose ``part`` is written: the
        take, the part and the manifest appended at once. The fold judges each record by
        its place, as it does records appended one by one: a Begin that lands before or
        among them voids the ones after it."""
        state = self.state
        if state.generation != take.generation or state.owners() != {self.member}:
            log.info("checkpoint %d superseded while its part was written", take.checkpoint)
            return None
        opens_segment = take.segment != state.chain_segment()
        complete = replace(state, take=take, parts={self.member: part})
        manifest = next_manifest(
            complete, self._wall_ms(), int((time.monotonic() - started) * 1000)
        )
        try:
            async with asyncio.timeout(self.config.timeout):
                effects = await self.decisions.decide_all([take, part, manifest])
        except TimeoutError:
            # Folded later, the next take supersedes it.
            log.warning(
                "checkpoint %d not folded within %.1f s", take.checkpoint, self.config.timeout
            )
            return None
        if effects is None or not effects[-1].applied:
            why = "the decision log moved" if effects is None else effects[-1].void
            log.info("checkpoint %d void: %s", take.checkpoint, why)
            return None
        if opens_segment:
            self._segment_opened = (take.segment, started)
        await self._committed(manifest)
        return manifest

    def _segment_age(self, segment: int, now: float) -> float:
        """Seconds since this coordinator's first take into ``segment`` (infinite if it
        took none: another coordinator opened it)."""
        opened = self._segment_opened
        if opened is None or opened[0] != segment:
            return float("inf")
        return now - opened[1]

    async def _move(self) -> None:
        """Move the decision log to a new epoch, right after a commit: no take is in
        progress, so its snapshot is least likely to miss a record and be void."""
        try:
            await self.decisions.move()
        except LogError as e:
            # The epoch goes on growing; the next commit tries again.
            log.warning("moving the decision log to a new epoch failed: %s", e)

    async def _committed(self, manifest: Manifest) -> None:
        """Act on the manifest this coordinator committed, then move the decision log to a
        new epoch if this one is full."""
        if self._abandoned_in_a_row:
            log.info(
                "checkpoint %d committed after %d abandoned",
                manifest.checkpoint,
                self._abandoned_in_a_row,
            )
            self._abandoned_in_a_row = 0
        log.debug(
            "checkpoint %d committed: %d addresses, %d bytes, %d ms",
            manifest.checkpoint,
            manifest.addresses,
            manifest.size_bytes,
            manifest.duration_ms,
        )
        self.last = manifest
        if self.schedule is not None:
            self.schedule.committed()
        self.on_commit(manifest)
        needed = self.state.needed_segment()
        if needed > self._segments_released_below:
            self._segments_released_below = needed
            self.on_segments_unneeded(needed)
        if self.state.epoch_records >= self.decisions.epoch_records:
            await self._move()

    def _abandoned(self, checkpoint: int, error: Exception) -> None:
        if self.schedule is not None:
            self.schedule.abandoned()
        self._abandoned_in_a_row += 1
        # One line when checkpoints start failing, not one per interval while they do.
        log.log(
            logging.WARNING if self._abandoned_in_a_row == 1 else logging.DEBUG,
            "checkpoint %d abandoned: %s",
            checkpoint,
            error,
        )
        self.on_abandon(checkpoint, error)

    # --- rollbacks and contests ----------------------------------------------------------

    def _usurped(self, state: ClusterState) -> bool:
        """Whether a leader of an older view began the current generation after this
        member's last Begin (it cannot have known of the newer view)."""
        led, current = self._led, state.begin
        return (
            led is not None
            and current is not None
            and current.coordinator != self.member
            and current.view < led.view
        )

    def _failed(self, state: ClusterState) -> bool:
        return state.failure is not None and self.is_coordinator()

    async def _keep_generations(self) -> None:
        while True:
            await self.decisions.wait(lambda s: self._usurped(s) or self._failed(s))
            state = self.state
            current, generation, fail = state.begin, state.generation, state.failure
            assert current is not None
            if self._usurped(state):
                assert self._led is not None
                begin, reason = (
                    self._led,
                    f"coordinator {current.coordinator}'s view {current.view} is older than "
                    f"{self._led.view}",
                )
                cause_address: str | None = None
                cause_messages: tuple[str, ...] = ()
            else:
                assert fail is not None
                begin, reason = current, f"member {fail.member} failed: {fail.reason}"
                cause_address, cause_messages = fail.cause_address, fail.cause_messages
            try:
                effect = await self.begin(
                    view=begin.view,
                    owners=begin.owners,
                    ingress_owners=begin.ingress_owners,
                    members=begin.members,
                    reason=reason,
                    cause_address=cause_address,
                    cause_messages=cause_messages,
                )
            except Exception:
                log.exception("beginning after generation %d failed; trying again", generation)
                await asyncio.sleep(_ROLLBACK_RETRY)
                continue
            if not effect.applied:
                # Another Begin ended the generation first.
                await self.decisions.wait(_generation_above(generation))
