"""Epochs of the decision log: a move (a Snapshot in the next epoch's topic, then the
Moved that decides it) changes nothing the fold concludes, fences what lands after it,
and a member that starts afterwards reads only the newest epoch."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest

from runtime.cluster.decisions import (
    Begin,
    ClusterState,
    DecisionLog,
    DecisionRecord,
    Effect,
    Fail,
    Mark,
    Moved,
    Part,
    Pause,
    Published,
    Snapshot,
    Take,
    decode,
    encode,
    fold,
    next_manifest,
    resume,
    snapshot_of,
)
from runtime.cluster.locations import PartitionLocation
from runtime.log import Record
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog

MODULE = "module-1"
MEMBERS = {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2"}
TOPIC = "app-decisions"


def begin(generation: int, coordinator: str = "a") -> Begin:
    return Begin(
        generation, coordinator, 1, {0: "a", 1: "b"}, {("in", 0): "b"}, MEMBERS, MODULE, "test"
    )


def part(generation: int, checkpoint: int, member: str, p: int) -> Part:
    location = PartitionLocation(f"app-checkpoints-{checkpoint}", p, 0, 1, checkpoint, True)
    ingress = {("in", 0): checkpoint} if member == "b" else {}
    return Part(generation, checkpoint, member, {p: location}, ingress, True, 10, 1)


def checkpoint_records(state: ClusterState, generation: int, n: int) -> list[DecisionRecord]:
    """A take of checkpoint n and both parts, folded into a copy to build the manifest."""
    records: list[DecisionRecord] = [
        Take(generation, n, n, True),
        part(generation, n, "a", 0),
        part(generation, n, "b", 1),
    ]
    scratch = resume(snapshot_of(state), state.position)
    for i, r in enumerate(records):
        assert fold(scratch, scratch.position + i, r).applied
    return [*records, next_manifest(scratch, 1000 * n, 5)]


class Folder:
    def __init__(self, state: ClusterState | None = None) -> None:
        self.state = ClusterState() if state is None else state

    def __call__(self, record: DecisionRecord) -> Effect:
        return fold(self.state, self.state.position, record)

    def applied(self, *records: DecisionRecord) -> None:
        for r in records:
            effect = self(r)
            assert effect.applied, effect

    def checkpoint(self, generation: int, n: int) -> None:
        self.applied(*checkpoint_records(self.state, generation, n))

    def move(self) -> Snapshot:
        snapshot = snapshot_of(self.state)
        self.applied(Moved(snapshot.epoch, 0, snapshot.as_of), snapshot)
        return snapshot


def decided(state: ClusterState) -> ClusterState:
    """The state without positions (a move takes two) and epochs."""
    return dataclasses.replace(
        state, position=0, begin_offset=0, epoch=1, epoch_base=0, last_applied=0
    )


# --- the fold ----------------------------------------------------------------------------


def test_a_fold_across_moves_equals_the_fold_without_them() -> None:
    plain, moving = Folder(), Folder()
    for f in (plain, moving):
        f.applied(begin(1), Pause("ns/f", True))
        f.checkpoint(1, 1)
        f.applied(Take(1, 2, 2, True), part(1, 2, "a", 0), Fail(1, "b", "boom"))
    snapshot = moving.move()  # in the middle of a take, with a failure pending
    # A member that starts from that snapshot has what the others folded up to it.
    starter = Folder(resume(snapshot, moving.state.epoch_base))
    assert starter.state == moving.state
    assert (starter.state.failure, starter.state.take) == (
        Fail(1, "b", "boom"),
        Take(1, 2, 2, True),
    )
    folders = (plain, moving, starter)
    for f in folders:
        f.applied(begin(2), Mark(7, "retried"), Published(2, 1, (0,)))
        f.checkpoint(2, 3)
    moving.move()
    starter.move()
    for f in folders:
        f.checkpoint(2, 4)
    assert moving.state.epoch == 3
    assert starter.state == moving.state
    assert decided(moving.state) == decided(plain.state)
    assert moving.state.rolled_back_to == {1: 1}


def test_a_snapshot_round_trips() -> None:
    f = Folder()
    f.applied(begin(1), Pause("ns/f", True), Mark(3, "discarded"))
    f.checkpoint(1, 1)
    f.applied(Take(1, 2, 2, True), part(1, 2, "a", 0), Fail(1, "b", "boom", "ns/f/x", ("0@3",)))
    f.applied(Published(1, 1, (0, 1)))
    snapshot = snapshot_of(f.state)
    assert decode(encode(snapshot)) == snapshot
    assert decode(encode(Moved(2, 5, 9))) == Moved(2, 5, 9)


def test_what_lands_after_a_valid_moved_is_void_until_its_snapshot() -> None:
    f = Folder()
    f.applied(begin(1))
    snapshot = snapshot_of(f.state)
    f.applied(Moved(2, 0, snapshot.as_of))
    # A stale coordinator still appending to epoch 1, and a second mover.
    for late in (begin(2, "b"), Take(1, 1, 1, True), Pause("ns/f", True), Moved(2, 1, 1)):
        assert "moved to epoch 2" in (f(late).void or "")
    assert f(snapshot).applied
    assert (f.state.generation, f.state.coordinator, f.state.paused) == (1, "a", set())
    assert f.state.epoch == 2


def test_a_moved_whose_snapshot_misses_a_decision_is_void() -> None:
    f = Folder()
    f.applied(begin(1))
    snapshot = snapshot_of(f.state)
    f.applied(Pause("ns/f", True))  # applied between the snapshot and the Moved
    assert "misses decision 1" in (f(Moved(2, 0, snapshot.as_of)).void or "")
    # Void records between them change nothing: the move still holds.
    snapshot = snapshot_of(f.state)
    assert f(Take(5, 1, 1, True)).void is not None
    assert f(Moved(2, 1, snapshot.as_of)).applied


def test_a_snapshot_no_moved_names_and_a_moved_that_skips_an_epoch_are_void() -> None:
    f = Folder()
    f.applied(begin(1))
    orphan = snapshot_of(f.state)
    assert "no valid move" in (f(orphan).void or "")
    assert "does not follow" in (f(Moved(3, 0, f.state.position)).void or "")
    assert "later position" in (f(Moved(2, 0, f.state.position + 5)).void or "")
    assert f.state.epoch == 1


# --- the log -----------------------------------------------------------------------------


@pytest.fixture
async def memory_log() -> AsyncIterator[MemoryLog]:
    log = MemoryLog()
    yield log
    await log.close()


async def opened(log: MemoryLog | KafkaLog) -> DecisionLog:
    d = DecisionLog(log, TOPIC)
    await d.open()
    return d


async def commit(d: DecisionLog, generation: int, n: int) -> None:
    for r in checkpoint_records(d.state, generation, n):
        assert (await d.decide(r)).applied


@pytest.mark.anyio
async def test_a_member_starting_after_moves_reads_only_the_newest_epoch(
    memory_log: MemoryLog,
) -> None:
    a = await opened(memory_log)
    b = await opened(memory_log)  # tails through the moves
    try:
        await a.decide(begin(1))
        await commit(a, 1, 1)
        assert await a.move()
        await commit(a, 1, 2)
        assert await b.move()  # any member may move: the fold fences, not the writer
        await commit(a, 1, 3)
        await b.wait(lambda s: s.manifest is not None and s.manifest.checkpoint == 3)
        topics = await memory_log.list_topics()
        assert f"{TOPIC}-1" not in topics  # two epochs back: deleted
        await memory_log.delete_topic(f"{TOPIC}-2")  # a starter never reads it
        c = await opened(memory_log)
        try:
            assert c.state.epoch == 3
            assert c.state == a.state == b.state
            await c.decide(Pause("ns/f", True))
            await a.wait(lambda s: "ns/f" in s.paused)
        finally:
            await c.close()
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
async def test_an_append_that_lands_after_moved_is_void_and_decide_appends_it_again(
    memory_log: MemoryLog,
) -> None:
    a = await opened(memory_log)
    try:
        await a.decide(begin(1))
        snapshot = snapshot_of(a.state)
        await memory_log.ensure_topic(f"{TOPIC}-2", 1)
        # Another member moves; before a folds it, a stale coordinator appends to
        # epoch 1 and a decides a Pause: both land after the Moved.
        (at,) = await memory_log.append(f"{TOPIC}-2", 0, [Record(encode(snapshot))])
        memory_log.append(f"{TOPIC}-1", 0, [Record(encode(Moved(2, at, snapshot.as_of)))])
        memory_log.append(f"{TOPIC}-1", 0, [Record(encode(begin(2, "b")))])
        effect = await a.decide(Pause("ns/f", True))
        assert effect.applied
        assert effect.offset == snapshot.as_of + 2  # after the Moved and the Snapshot
        assert (a.state.epoch, a.state.generation, a.state.coordinator) == (2, 1, "a")
        late = await opened(memory_log)  # follows the Moved from epoch 1 (no pointer)
        try:
            assert late.state == a.state
        finally:
            await late.close()
    finally:
        await a.close()


@pytest.mark.anyio
async def test_of_two_members_moving_at_once_one_moves(memory_log: MemoryLog) -> None:
    a = await opened(memory_log)
    b = await opened(memory_log)
    try:
        await a.decide(begin(1))
        await b.wait(lambda s: s.generation == 1)
        moved = await asyncio.gather(a.move(), b.move())
        assert sorted(moved) == [False, True]
        await a.decide(Pause("ns/f", True))
        await b.wait(lambda s: "ns/f" in s.paused)
        assert a.state == b.state
        assert a.state.epoch == 2
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
async def test_a_mover_that_died_between_snapshot_and_moved_moved_nothing(
    memory_log: MemoryLog,
) -> None:
    a = await opened(memory_log)
    try:
        await a.decide(begin(1))
        # The dead mover's snapshot: in the next epoch's topic, named by no Moved.
        await memory_log.ensure_topic(f"{TOPIC}-2", 1)
        await memory_log.append(f"{TOPIC}-2", 0, [Record(encode(snapshot_of(a.state)))])
        await a.decide(Pause("ns/f", True))
        starter = await opened(memory_log)
        try:
            assert (starter.state.epoch, starter.state) == (1, a.state)
            # The next move goes on past the orphan, and starters start from its snapshot.
            assert await a.move()
            assert (await memory_log.read(f"{TOPIC}-2", 0, 0, 10))[1].offset == 1
            await starter.wait(lambda s: s.epoch == 2)
            again = await opened(memory_log)
            try:
                assert again.state == starter.state == a.state
                assert again.state.paused == {"ns/f"}
            finally:
                await again.close()
        finally:
            await starter.close()
    finally:
        await a.close()


@pytest.mark.anyio
@pytest.mark.kafka
async def test_moves_on_kafka(kafka_bootstrap: str, unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("decisions")
    log = await KafkaLog.open(kafka_bootstrap)
    try:
        writer = DecisionLog(log, topic)
        await writer.open()
        reader = DecisionLog(log, topic)
        await reader.open()
        await writer.decide(begin(1))
        for n in (1, 2):
            for r in checkpoint_records(writer.state, 1, n):
                assert (await writer.decide(r)).applied
            assert await writer.move()
        await writer.decide(Pause("ns/f", True))
        await reader.wait(lambda s: "ns/f" in s.paused)
        assert reader.state == writer.state
        assert f"{topic}-1" not in await log.list_topics()
        starter = DecisionLog(log, topic)
        await starter.open()
        assert (starter.state.epoch, starter.state) == (3, writer.state)
        for d in (starter, reader, writer):
            await d.close()
    finally:
        await log.close()


def test_positions_run_on_across_a_move() -> None:
    f = Folder()
    f.applied(begin(1))
    f.move()  # the Moved at 1, the Snapshot at 2
    assert (f.state.epoch_base, f.state.position, f.state.epoch_records) == (2, 3, 1)
    assert f(Pause("ns/f", True)).offset == 3
