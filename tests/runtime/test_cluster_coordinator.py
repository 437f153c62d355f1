"""The cluster checkpoint coordinator: two-phase commit over the decision log, with fake
members on the in-memory log; abandonment, full snapshots and segments, takeover by
another member, and the rollback a Fail asks for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.cluster.coordinator import ClusterCoordinator
from runtime.cluster.decisions import (
    DEFAULT_EPOCH_RECORDS,
    Begin,
    DecisionLog,
    Effect,
    Fail,
    Manifest,
    Part,
    PartitionLocation,
    Take,
    encode,
    next_manifest,
)
from runtime.errors import LogError, ModuleMismatch
from runtime.log import Record
from runtime.log.memory import MemoryLog

pytestmark = pytest.mark.anyio

TOPIC = "app-decisions"
MODULE = "module-1"
MEMBERS = {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2"}
OWNERS = {0: "a", 1: "b", 2: "b"}
INGRESS_OWNERS = {("in", 0): "a"}
CONFIG = CheckpointConfig(interval=0, timeout=10.0)


class FakeMember:
    """Answers every valid Take with a Part for the partitions the Begin gives it, unless
    the checkpoint is withheld; writes nothing anywhere else."""

    def __init__(self, log: MemoryLog, member: str):
        self.member = member
        self.decisions = DecisionLog(log, TOPIC)
        self.withheld: set[int] = set()
        self.answers = True
        """Whether it answers takes with parts appended on their own."""
        self.parts: list[Part] = []
        self._tasks: set[asyncio.Task[int]] = set()

    async def open(self) -> None:
        await self.decisions.open()
        self.decisions.subscribe(self._heard)

    def part(self, take: Take) -> Part:
        state = self.decisions.state
        return Part(
            take.generation,
            take.checkpoint,
            self.member,
            {
                p: PartitionLocation(
                    f"app-checkpoints-{take.segment}", p, 0, 1, take.checkpoint, take.full
                )
                for p in state.partitions_of(self.member)
            },
            dict.fromkeys(state.ingress_of(self.member), take.checkpoint),
            False,
            10,
            1,
        )

    def _heard(self, effect: Effect) -> None:
        take = effect.record
        if not effect.applied or not isinstance(take, Take) or take.checkpoint in self.withheld:
            return
        if not self.answers:
            return
        if self.member in self.decisions.state.owners():
            part = self.part(take)
            self.parts.append(part)
            task = asyncio.create_task(self.decisions.append(part))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks)
        await self.decisions.close()


class Cluster:
    def __init__(self, log: MemoryLog):
        self.log = log
        self.members = {m: FakeMember(log, m) for m in MEMBERS}
        self.coordinators: list[tuple[ClusterCoordinator, DecisionLog]] = []

    async def coordinator(
        self,
        member: str,
        *,
        module: str = MODULE,
        config: CheckpointConfig = CONFIG,
        epoch_records: int = DEFAULT_EPOCH_RECORDS,
        **kw: int,
    ) -> ClusterCoordinator:
        decisions = DecisionLog(self.log, TOPIC, epoch_records=epoch_records)
        await decisions.open()
        coordinator = ClusterCoordinator(decisions, member, module, config, **kw)
        self.coordinators.append((coordinator, decisions))
        return coordinator

    async def close(self) -> None:
        for coordinator, decisions in self.coordinators:
            await coordinator.stop()
            await decisions.close()
        for m in self.members.values():
            await m.close()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    log = MemoryLog()
    c = Cluster(log)
    for m in c.members.values():
        await m.open()
    yield c
    await c.close()
    await log.close()


async def begin(coordinator: ClusterCoordinator, view: int = 1, reason: str = "joined") -> Effect:
    return await coordinator.begin(
        view=view, owners=OWNERS, ingress_owners=INGRESS_OWNERS, members=MEMBERS, reason=reason
    )


async def committed(coordinator: ClusterCoordinator) -> Manifest:
    manifest = await coordinator.checkpoint()
    assert manifest is not None
    return manifest


async def test_a_checkpoint_commits_once_every_owner_wrote_its_part(cluster: Cluster) -> None:
    a = await cluster.coordinator("a")
    commits: list[Manifest] = []
    a.on_commit = commits.append
    assert (await begin(a)).applied
    first = await committed(a)
    assert (first.generation, first.checkpoint) == (1, 1)
    assert set(first.chains) == {0, 1, 2}
    assert all(chain[0].full for chain in first.chains.values())
    assert first.ingress == {("in", 0): 1}
    assert (first.size_bytes, first.addresses) == (20, 2)
    second = await committed(a)
    assert second.checkpoint == 2
    assert [loc.checkpoint for loc in second.chains[1]] == [1, 2]
    assert not second.chains[1][1].full
    assert commits == [first, second]
    assert a.state.manifests == [first, second]
    # Both answered each take once, and nothing else.
    assert [p.checkpoint for p in cluster.members["b"].parts] == [1, 2]


async def test_a_member_that_does_not_coordinate_takes_no_checkpoint(cluster: Cluster) -> None:
    a = await cluster.coordinator("a")
    b = await cluster.coordinator("b")
    await begin(a)
    await b.decisions.wait(lambda s: s.generation == 1)
    position = a.state.position
    assert await b.checkpoint() is None
    assert a.state.position == position


async def test_a_take_not_complete_in_time_is_abandoned_and_the_next_goes_on(
    cluster: Cluster,
) -> None:
    a = await cluster.coordinator("a", config=CheckpointConfig(interval=0, timeout=0.05))
    abandoned: list[tuple[int, Exception]] = []
    a.on_abandon = lambda n, e: abandoned.append((n, e))
    await begin(a)
    cluster.members["b"].withheld.add(1)
    assert await a.checkpoint() is None
    assert [n for n, _ in abandoned] == [1]
    assert "no part from b" in str(abandoned[0][1])
    manifest = await committed(a)
    # Still the first commit: full, as no chain exists yet, numbered above the abandoned take.
    assert manifest.checkpoint == 2
    assert all(chain == (chain[0],) and chain[0].full for chain in manifest.chains.values())
    # A part for the abandoned take, late, is void: never half-used.
    b = cluster.members["b"]
    assert not (await b.decisions.decide(b.part(Take(1, 1, 1, True)))).applied


async def test_a_begin_during_a_take_ends_it_at_once(cluster: Cluster) -> None:
    a = await cluster.coordinator("a")
    await begin(a)
    cluster.members["b"].withheld.add(1)
    taking = asyncio.create_task(a.checkpoint())
    await a.decisions.wait(lambda s: s.take is not None)
    b = await cluster.coordinator("b")
    assert (await begin(b, view=2, reason="b took over")).applied
    async with asyncio.timeout(5):  # CONFIG's timeout is 10 s: not by abandonment
        assert await taking is None


async def test_full_snapshots_start_new_segments_and_old_segments_are_released(
    cluster: Cluster,
) -> None:
    a = await cluster.coordinator("a", full_every=2)
    released: list[int] = []
    a.on_segments_unneeded = released.append
    await begin(a)
    takes: list[Take] = []
    cluster.members["a"].decisions.subscribe(
        lambda e: takes.append(e.record) if isinstance(e.record, Take) else None
    )
    for _ in range(7):
        await committed(a)
    assert [(t.checkpoint, t.segment, t.full) for t in takes] == [
        (1, 1, True),
        (2, 1, False),
        (3, 2, True),
        (4, 2, False),
        (5, 3, True),
        (6, 3, False),
        (7, 4, True),
    ]
    # Retaining 3: after 5, manifests 3-5 read segments 2 and 3; after 7, 5-7 read 3 and 4.
    assert released == [2, 3]
    assert max(len(c) for c in a.state.manifest.chains.values()) == 1  # type: ignore[union-attr]


async def test_takes_back_to_back_stay_in_a_young_segment(cluster: Cluster) -> None:
    """Takes on demand come back to back: a full take starts a new segment only once the
    chain's segment is full_every intervals old, so segments (topics, created and
    deleted) do not come and go at the pace of the takes."""
    config = CheckpointConfig(interval=3600, timeout=10.0)  # never started: takes by hand
    a = await cluster.coordinator("a", config=config, full_every=2)
    released: list[int] = []
    a.on_segments_unneeded = released.append
    await begin(a)
    takes: list[Take] = []
    cluster.members["a"].decisions.subscribe(
        lambda e: takes.append(e.record) if isinstance(e.record, Take) else None
    )
    for _ in range(5):
        await committed(a)
    assert [(t.checkpoint, t.segment, t.full) for t in takes] == [
        (1, 1, True),
        (2, 1, False),
        (3, 1, True),
        (4, 1, False),
        (5, 1, True),
    ]
    assert released == []
    assert max(len(c) for c in a.state.manifest.chains.values()) == 1  # type: ignore[union-attr]


async def test_a_new_coordinator_goes_on_from_the_last_commit_and_fences_the_old_one(
    cluster: Cluster,
) -> None:
    a = await cluster.coordinator("a")
    await begin(a)
    one = await committed(a)
    # a takes checkpoint 2, every part comes in, and a dies before appending the manifest.
    await a.decisions.decide(Take(1, 2, 1, False))
    await a.decisions.wait(lambda s: s.take_complete)
    stale = next_manifest(a.state, 0, 0)
    await a.stop()

    b = await cluster.coordinator("b")
    effect = await begin(b, view=2, reason="a left")
    assert effect.applied
    assert b.state.rolled_back_to == {1: 1}
    assert b.state.manifest == one
    # a, stale, appends its manifest after b's Begin: void.
    late = await a.decisions.decide(stale)
    assert late.void is not None
    three = await committed(b)
    assert (three.generation, three.checkpoint) == (2, 3)
    assert [loc.checkpoint for loc in three.chains[0]] == [1, 3]
    assert [m.checkpoint for m in b.state.manifests] == [1, 3]
    assert a.state == b.state  # one fold, the same conclusions
    assert not a.is_coordinator()
    assert await a.checkpoint() is None


async def test_a_fail_makes_the_coordinator_begin_a_new_generation_with_the_cause(
    cluster: Cluster,
) -> None:
    a = await cluster.coordinator("a")
    await begin(a)
    await committed(a)
    a.start()
    b = cluster.members["b"].decisions
    await b.decide(Fail(1, "b", "call budget exhausted", "ns/f/1", ("m1",)))
    await b.wait(lambda s: s.generation == 2)
    new = b.state.begin
    assert new is not None
    assert (new.coordinator, new.view, dict(new.owners)) == ("a", 1, OWNERS)
    assert new.reason == "member b failed: call budget exhausted"
    assert (new.cause_address, new.cause_messages) == ("ns/f/1", ("m1",))
    assert b.state.rolled_back_to == {1: 1}
    # Once: a second Fail of generation 1, late, is void and begins nothing.
    assert not (await b.decide(Fail(1, "a", "late"))).applied
    assert (await committed(a)).generation == 2


async def test_the_loop_takes_checkpoints_at_its_interval(cluster: Cluster) -> None:
    a = await cluster.coordinator("a", config=CheckpointConfig(interval=0.01, timeout=10.0))
    three = asyncio.Event()
    a.on_commit = lambda m: three.set() if m.checkpoint == 3 else None
    await begin(a)
    a.start()
    await three.wait()
    await a.stop()
    assert [m.checkpoint for m in a.state.manifests] == [1, 2, 3]


async def test_a_newer_view_that_loses_the_race_for_a_generation_takes_the_next(
    cluster: Cluster,
) -> None:
    b = await cluster.coordinator("b")
    older = Begin(1, "a", 1, OWNERS, INGRESS_OWNERS, MEMBERS, MODULE, "joined")
    # a's Begin takes its place before b's, and b has not folded it when it writes its own.
    landing = cluster.log.append(f"{TOPIC}-1", 0, [Record(encode(older))])
    effect = await begin(b, view=2)
    await landing
    assert effect.applied
    assert (b.state.generation, b.state.coordinator) == (2, "b")
    assert b.state.rolled_back_to == {1: 0}


async def test_a_stale_leaders_begin_after_the_new_leaders_is_contested(
    cluster: Cluster,
) -> None:
    a = await cluster.coordinator("a")
    b = await cluster.coordinator("b")
    b.start()
    a.start()
    await begin(b, view=5)
    await a.decisions.wait(lambda s: s.generation == 1)
    # a, leader of view 4, has not heard of view 5: its Begin lands after b's.
    assert (await begin(a, view=4, reason="stale")).applied
    await b.decisions.wait(lambda s: s.generation == 3)
    new = b.state.begin
    assert new is not None
    assert (new.coordinator, new.view) == ("b", 5)
    assert "view 4 is older than 5" in new.reason
    await a.decisions.wait(lambda s: s.generation == 3)
    assert not a.is_coordinator()


async def test_a_process_with_another_module_is_refused(cluster: Cluster) -> None:
    a = await cluster.coordinator("a")
    await begin(a)
    intruder = await cluster.coordinator("b", module="module-2")
    await intruder.decisions.wait(lambda s: s.generation == 1)
    with pytest.raises(ModuleMismatch, match="runs module-1"):
        await begin(intruder, view=2)


async def test_the_coordinator_moves_the_decision_log_after_a_commit(cluster: Cluster) -> None:
    a = await cluster.coordinator("a", epoch_records=10)
    await begin(a)
    for _ in range(3):  # 4 records each (a take, 2 parts, the manifest): a move after the 3rd
        await committed(a)
    assert (a.state.epoch, a.state.take) == (2, None)
    manifest = await committed(a)  # the members followed to the new epoch
    assert a.state.epoch_records == 5  # the snapshot and the 4 records of the checkpoint
    starter = DecisionLog(cluster.log, TOPIC)
    await starter.open()
    try:
        assert starter.state == a.state
        assert starter.state.manifest == manifest
    finally:
        await starter.close()


# --- a coordinator that is the only owner ------------------------------------------------

ALONE = {0: "a", 1: "a", 2: "a"}


class OwnParts:
    """Member a's parts as its runtime gives them to the coordinator (``own_part``):
    written, not appended. Records where the decision log was when each was asked for."""

    def __init__(self, cluster: Cluster, coordinator: ClusterCoordinator):
        self.member = cluster.members["a"]
        self.member.answers = False  # only through own_part
        self.coordinator = coordinator
        self.asked: list[tuple[Take, int]] = []
        self.answer: Callable[[Take], Awaitable[Part | None]] | None = None
        coordinator.own_part = self

    async def __call__(self, take: Take) -> Part | None:
        self.asked.append((take, self.coordinator.state.position))
        if self.answer is not None:
            return await self.answer(take)
        return self.member.part(take)


async def alone(cluster: Cluster) -> tuple[ClusterCoordinator, OwnParts]:
    a = await cluster.coordinator("a")
    parts = OwnParts(cluster, a)
    effect = await a.begin(view=1, owners=ALONE, ingress_owners={}, members=MEMBERS, reason="alone")
    assert effect.applied
    return a, parts


def appends_to(log: MemoryLog, topic: str) -> list[int]:
    """Records per append to ``topic`` from now on."""
    seen: list[int] = []
    append = log.append

    def recording(to: str, partition: int, records: Sequence[Record]) -> Any:
        if to == topic:
            seen.append(len(records))
        return append(to, partition, records)

    log.append = recording  # type: ignore[method-assign]
    return seen


def effects_of(decisions: DecisionLog) -> list[Effect]:
    heard: list[Effect] = []
    decisions.subscribe(heard.append)
    return heard


async def test_an_only_owner_writes_its_part_first_then_appends_take_part_and_manifest_at_once(
    cluster: Cluster,
) -> None:
    """Two round trips to the log per checkpoint instead of four: the part is written
    before the take is appended, then the three records go in one append, and the fold
    applies them in order as it would one by one."""
    a, parts = await alone(cluster)
    position = a.state.position
    appends = appends_to(cluster.log, a.decisions.epoch_topic(1))
    heard = effects_of(a.decisions)
    first = await committed(a)
    assert [(take.checkpoint, take.full) for take, _ in parts.asked] == [(1, True)]
    assert parts.asked[0][1] == position  # asked before anything was appended
    assert appends == [3]
    assert [type(e.record) for e in heard] == [Take, Part, Manifest]
    assert all(e.applied for e in heard)
    assert heard[-1].record == first == a.last
    assert set(first.chains) == {0, 1, 2}
    assert all(c[0].full for c in first.chains.values())
    second = await committed(a)
    assert [(take.checkpoint, take.full) for take, _ in parts.asked[1:]] == [(2, False)]
    assert appends == [3, 3]
    assert [loc.checkpoint for loc in second.chains[0]] == [1, 2]
    assert a.state.take is None
    assert a.state.manifests == [first, second]


async def test_an_only_owner_whose_part_fails_abandons_the_take_without_appending(
    cluster: Cluster,
) -> None:
    a, parts = await alone(cluster)
    abandoned: list[tuple[int, Exception]] = []
    a.on_abandon = lambda n, e: abandoned.append((n, e))

    async def failing(take: Take) -> Part | None:
        raise LogError("the segment is gone")

    parts.answer = failing
    appends = appends_to(cluster.log, a.decisions.epoch_topic(1))
    assert await a.checkpoint() is None
    assert [(n, str(e)) for n, e in abandoned] == [(1, "the segment is gone")]
    assert appends == []
    parts.answer = None
    assert (await committed(a)).checkpoint == 1  # nothing was taken: the number is free


async def test_an_only_owner_without_a_part_to_give_takes_the_usual_way(
    cluster: Cluster,
) -> None:
    """A member restoring its partitions has no part yet: the take is appended alone and
    waits for the part, as with several owners."""
    a, parts = await alone(cluster)

    async def restoring(take: Take) -> Part | None:
        return None

    parts.answer = restoring
    parts.member.answers = True
    appends = appends_to(cluster.log, a.decisions.epoch_topic(1))
    manifest = await committed(a)
    assert manifest.checkpoint == 1
    assert appends == [1, 1, 1]  # the take, the member's part, the manifest


async def test_a_begin_while_an_only_owner_writes_its_part_ends_the_take_unappended(
    cluster: Cluster,
) -> None:
    a, parts = await alone(cluster)
    writing, written = asyncio.Event(), asyncio.Event()

    async def slow(take: Take) -> Part | None:
        writing.set()
        await written.wait()
        return parts.member.part(take)

    parts.answer = slow
    commits: list[Manifest] = []
    a.on_commit = commits.append
    taking = asyncio.create_task(a.checkpoint())
    await writing.wait()
    b = await cluster.coordinator("b")
    assert (await begin(b, view=2, reason="b took over")).applied
    appends = appends_to(cluster.log, a.decisions.epoch_topic(1))
    written.set()
    async with asyncio.timeout(5):  # CONFIG's timeout is 10 s: not by abandonment
        assert await taking is None
    assert commits == []
    assert appends == []
    assert a.state.generation == 2
    assert a.state.manifest is None


async def test_a_begin_that_lands_just_before_an_only_owners_batch_voids_all_of_it(
    cluster: Cluster,
) -> None:
    """The fold judges the batch's records by their place: a Begin that another member
    appends between the owner's last look at the log and its append voids all three."""
    a, _ = await alone(cluster)
    topic = a.decisions.epoch_topic(1)
    append = cluster.log.append
    begin_b = Begin(2, "b", 2, ALONE, {}, MEMBERS, MODULE, "b took over")

    def begin_first(to: str, partition: int, records: Sequence[Record]) -> Any:
        if to == topic and len(records) == 3:
            append(to, partition, [Record(encode(begin_b))])
        return append(to, partition, records)

    cluster.log.append = begin_first  # type: ignore[method-assign]
    commits: list[Manifest] = []
    a.on_commit = commits.append
    heard = effects_of(a.decisions)
    async with asyncio.timeout(5):
        assert await a.checkpoint() is None
    assert [(type(e.record), e.applied) for e in heard] == [
        (Begin, True),
        (Take, False),
        (Part, False),
        (Manifest, False),
    ]
    assert commits == []
    assert a.state.generation == 2
    assert a.state.manifest is None
