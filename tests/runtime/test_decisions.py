"""The decision log: its records round-trip, its fold applies every fencing rule by log
position, and ``DecisionLog`` keeps the fold of a topic up to date over a ``Log``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import pytest

from runtime.checkpoints.epochs import Tag
from runtime.cluster.decisions import (
    HISTORY,
    Begin,
    ClusterState,
    DecisionLog,
    DecisionRecord,
    Effect,
    Fail,
    Manifest,
    Mark,
    Part,
    PartitionLocation,
    Pause,
    Published,
    Take,
    decode,
    encode,
    fold,
    next_manifest,
)
from runtime.errors import LogError, MalformedDecision
from runtime.log import Record
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog

MODULE = "module-fingerprint-1"
MEMBERS = {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2", "c": "http://127.0.0.1:3"}


def begin(
    generation: int,
    *,
    coordinator: str = "a",
    view: int = 1,
    owners: Mapping[int, str] | None = None,
    ingress_owners: Mapping[tuple[str, int], str] | None = None,
    module: str = MODULE,
) -> Begin:
    return Begin(
        generation,
        coordinator,
        view,
        {0: "a", 1: "b"} if owners is None else owners,
        {("in", 0): "b"} if ingress_owners is None else ingress_owners,
        MEMBERS,
        module,
        "test",
    )


def loc(p: int, checkpoint: int, *, full: bool, segment: int = 1) -> PartitionLocation:
    return PartitionLocation(f"app-checkpoints-{segment}", p, 10 * checkpoint, 2, checkpoint, full)


def part(
    generation: int,
    checkpoint: int,
    member: str,
    partitions: tuple[int, ...],
    *,
    full: bool = False,
    ingress: Mapping[tuple[str, int], int] | None = None,
    releases: bool = False,
) -> Part:
    return Part(
        generation,
        checkpoint,
        member,
        {p: loc(p, checkpoint, full=full) for p in partitions},
        ingress or {},
        releases,
        100,
        3,
    )


class Folder:
    """A state and the next offset: folds records as if they were appended in turn."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.offset = 0

    def __call__(self, record: DecisionRecord) -> Effect:
        effect = fold(self.state, self.offset, record)
        self.offset += 1
        return effect

    def applied(self, *records: DecisionRecord) -> None:
        for r in records:
            effect = self(r)
            assert effect.applied, effect

    def checkpoint(
        self, generation: int, n: int, *, full: bool = False, segment: int = 1
    ) -> Manifest:
        """Take and commit checkpoint n with parts from a (partition 0) and b (1, ingress)."""
        self.applied(
            Take(generation, n, segment, full),
            part(generation, n, "a", (0,), full=full),
            part(generation, n, "b", (1,), full=full, ingress={("in", 0): n}),
        )
        manifest = next_manifest(self.state, 1000 * n, 5)
        self.applied(manifest)
        return manifest


# --- encoding ----------------------------------------------------------------------------

EVERY_KIND: list[DecisionRecord] = [
    Begin(
        3, "a", 7, {0: "a", 1: "b"}, {("in", 2): "b"}, MEMBERS, MODULE, "joined", "x/y/z", ("m",)
    ),
    Take(3, 12, 2, True),
    part(3, 12, "a", (0, 1), full=True, ingress={("in", 2): 44}, releases=True),
    Manifest(
        3,
        12,
        1234,
        56,
        {0: (loc(0, 10, full=True), loc(0, 12, full=False))},
        {("in", 2): 44},
        9,
        8,
        "a,b",
    ),
    Fail(3, "b", "call budget exhausted", "ns/f/id", ("m1", "m2"), "function"),
    Published(3, 12, (0, 1)),
    Pause("ns/f", True),
    Mark(42, "retried"),
]


@pytest.mark.parametrize("record", EVERY_KIND, ids=lambda r: type(r).__name__)
def test_every_kind_round_trips(record: DecisionRecord) -> None:
    assert decode(encode(record)) == record


@pytest.mark.parametrize(
    "value", [b"\xc1", b"\x01", encode(Pause("f", True))[:-3], b"\x81\xa4kind\xa4nope"]
)
def test_what_is_not_a_decision_is_malformed(value: bytes) -> None:
    with pytest.raises(MalformedDecision):
        decode(value)


# --- the fold: begins --------------------------------------------------------------------


def test_the_first_begin_sets_the_application_and_rolls_nothing_back() -> None:
    f = Folder()
    f.applied(begin(1))
    assert (f.state.generation, f.state.module, f.state.rolled_back_to) == (1, MODULE, {})
    assert f.state.coordinator == "a"
    assert f.state.owners() == {"a", "b"}
    assert f.state.begin_offset == 0


def test_of_two_begins_of_one_generation_the_first_wins() -> None:
    f = Folder()
    f.applied(begin(1, coordinator="a"))
    assert f(begin(2, coordinator="a")).applied
    second = f(begin(2, coordinator="b"))
    assert second.void is not None
    assert "not above" in second.void
    assert f.state.coordinator == "a"
    assert not f(begin(1, coordinator="b")).applied


def test_a_begin_of_an_older_view_is_valid_by_its_generation() -> None:
    # Views start over when a group was empty: the fold does not compare them.
    f = Folder()
    f.applied(begin(1, view=5), begin(2, coordinator="b", view=1))
    assert f.state.coordinator == "b"


def test_a_begin_with_another_module_is_void() -> None:
    f = Folder()
    f.applied(begin(1))
    effect = f(begin(2, module="another"))
    assert effect.void is not None
    assert "module" in effect.void
    assert f.state.generation == 1


def test_a_begin_naming_members_it_does_not_list_is_void() -> None:
    f = Folder()
    assert not f(begin(1, owners={0: "stranger"})).applied
    assert not f(begin(1, coordinator="stranger")).applied
    assert f.state.generation == 0


def test_a_begin_rolls_back_to_the_last_valid_manifest_before_it() -> None:
    f = Folder()
    f.applied(begin(1))
    f.checkpoint(1, 1, full=True)
    f.checkpoint(1, 2)
    f.applied(Take(1, 3, 1, False), part(1, 3, "a", (0,)))  # 3 never completes
    f.applied(begin(2, coordinator="b"))
    assert f.state.rolled_back_to == {1: 2}
    assert f.state.take is None
    assert f.state.parts == {}
    f.applied(begin(3))  # generation 2 committed nothing: it goes back to 2 as well
    assert f.state.rolled_back_to == {1: 2, 2: 2}
    rule = f.state.skip_rule()
    assert rule.accepts(Tag(1, 2, "x"))
    assert not rule.accepts(Tag(1, 3, "x"))
    assert not rule.accepts(Tag(2, 4, "x"))
    assert rule.accepts(Tag(3, 99, "x"))


def test_a_generation_without_any_manifest_rolls_back_to_zero() -> None:
    f = Folder()
    f.applied(begin(1), begin(2))
    assert f.state.rolled_back_to == {1: 0}


def test_a_manifest_between_a_new_coordinators_read_and_its_begin_is_valid_and_the_begin_rolls_back_to_it() -> (
    None
):
    f = Folder()
    f.applied(begin(1, coordinator="a"))
    f.checkpoint(1, 1, full=True)
    # b reads the log here: its last manifest is 1. Meanwhile a completes checkpoint 2...
    b_read = f.state.manifest
    assert b_read is not None
    assert b_read.checkpoint == 1
    manifest_2 = f.checkpoint(1, 2)
    # ...and then b's Begin lands: by position, after manifest 2.
    f.applied(begin(2, coordinator="b", view=2))
    assert f.state.rolled_back_to == {1: 2}
    assert f.state.manifest == manifest_2


def test_a_stale_coordinators_records_after_a_newer_begin_are_void() -> None:
    f = Folder()
    f.applied(begin(1, coordinator="a"))
    f.checkpoint(1, 1, full=True)
    f.applied(Take(1, 2, 1, False), part(1, 2, "a", (0,)), part(1, 2, "b", (1,)))
    stale = next_manifest(f.state, 2000, 5)  # a computed it before b's Begin landed
    f.applied(begin(2, coordinator="b", view=2))
    manifest = f(stale)
    assert manifest.void is not None
    assert "generation 1" in manifest.void
    assert f.state.manifest is not None
    assert f.state.manifest.checkpoint == 1
    assert not f(Take(1, 3, 1, False)).applied
    assert not f(part(1, 3, "a", (0,))).applied
    assert not f(Fail(1, "a", "late")).applied
    assert not f(Published(1, 1, (0,))).applied
    assert f.state.void_records == 5
    assert f.state.failure is None


# --- the fold: takes, parts, manifests ---------------------------------------------------


def test_a_take_not_above_every_take_before_is_void() -> None:
    f = Folder()
    f.applied(begin(1), Take(1, 5, 1, True))
    assert not f(Take(1, 5, 1, True)).applied
    assert not f(Take(1, 4, 1, True)).applied
    f.applied(begin(2))
    assert not f(Take(2, 5, 1, True)).applied  # 5 was taken, if never committed
    assert f(Take(2, 6, 1, True)).applied
    assert f.state.highest_checkpoint == 6


def test_a_new_take_abandons_the_one_in_progress_and_its_late_parts_are_void() -> None:
    f = Folder()
    f.applied(begin(1), Take(1, 1, 1, True), part(1, 1, "a", (0,), full=True))
    f.applied(Take(1, 2, 1, True))
    assert f.state.parts == {}
    late = f(part(1, 1, "b", (1,), full=True))
    assert late.void is not None
    assert "not the take in progress" in late.void
    assert not f(next_manifest_of(1, 1)).applied


def next_manifest_of(generation: int, checkpoint: int) -> Manifest:
    return Manifest(generation, checkpoint, 0, 0, {}, {}, 0, 0, None)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (part(1, 1, "a", (0,)), "before"),  # a again
        (part(1, 1, "c", ()), "owns nothing"),
        (part(1, 1, "b", (0, 1)), "does not own"),
        (part(1, 1, "b", (1,), ingress={("in", 1): 3}), "does not own"),
        (part(1, 2, "b", (1,)), "not the take in progress"),
        (part(2, 1, "b", (1,)), "generation"),
        (
            Part(1, 1, "b", {1: loc(1, 7, full=False)}, {}, False, 0, 0),
            "another checkpoint or partition",
        ),
        (
            Part(1, 1, "b", {1: loc(0, 1, full=False)}, {}, False, 0, 0),
            "another checkpoint or partition",
        ),
    ],
)
def test_a_part_is_void_unless_its_owner_writes_it_once_for_the_take_in_progress(
    bad: Part, why: str
) -> None:
    f = Folder()
    f.applied(begin(1), Take(1, 1, 1, False), part(1, 1, "a", (0,), full=True))
    effect = f(bad)
    assert effect.void is not None
    assert why in effect.void
    assert set(f.state.parts) == {"a"}


def test_a_part_of_a_full_take_names_every_partition_of_its_member_in_full() -> None:
    f = Folder()
    f.applied(begin(1, owners={0: "a", 1: "a"}, ingress_owners={}), Take(1, 1, 1, True))
    assert not f(part(1, 1, "a", (0,), full=True)).applied
    assert not f(part(1, 1, "a", (0, 1), full=False)).applied
    assert f(part(1, 1, "a", (0, 1), full=True)).applied


def test_a_delta_needs_a_chain_to_extend_and_may_come_in_a_full_take() -> None:
    """A chain starts with a full snapshot; a member that snapshotted early (the epoch
    rule, before it read that the take is full) may write a delta of a partition that
    has a chain, and its next snapshot is full."""
    f = Folder()
    f.applied(begin(1, owners={0: "a", 1: "a"}, ingress_owners={}), Take(1, 1, 1, False))
    orphan = f(part(1, 1, "a", (0, 1), full=False))
    assert orphan.void is not None
    assert "no full snapshot" in orphan.void
    f.applied(part(1, 1, "a", (0, 1), full=True))
    f.applied(next_manifest(f.state, 0, 0), Take(1, 2, 2, True))
    assert f(part(1, 2, "a", (0, 1), full=False)).applied


def test_a_delta_part_may_leave_out_partitions_that_did_not_change() -> None:
    f = Folder()
    f.applied(begin(1, owners={0: "a", 1: "a"}, ingress_owners={}))
    f.applied(Take(1, 1, 1, True), part(1, 1, "a", (0, 1), full=True))
    first = next_manifest(f.state, 0, 0)
    f.applied(first, Take(1, 2, 1, False), part(1, 2, "a", (1,)))
    second = next_manifest(f.state, 0, 0)
    assert second.chains[0] == first.chains[0]
    assert second.chains[1] == (*first.chains[1], loc(1, 2, full=False))


def test_a_manifest_is_valid_only_for_the_complete_take_in_progress_and_only_once() -> None:
    f = Folder()
    f.applied(begin(1), Take(1, 1, 1, True), part(1, 1, "a", (0,), full=True))
    incomplete = f(next_manifest_of(1, 1))
    assert incomplete.void is not None
    assert "misses parts of ['b']" in incomplete.void
    f.applied(part(1, 1, "b", (1,), full=True))
    assert not f(next_manifest_of(1, 2)).applied
    manifest = next_manifest(f.state, 0, 0)
    f.applied(manifest)
    assert f.state.take is None
    again = f(manifest)
    assert again.void is not None
    assert f.state.manifests == [manifest]


def test_chains_grow_by_deltas_and_start_over_at_a_full_snapshot() -> None:
    f = Folder()
    f.applied(begin(1))
    one = f.checkpoint(1, 1, full=True)
    assert one.chains == {0: (loc(0, 1, full=True),), 1: (loc(1, 1, full=True),)}
    assert one.ingress == {("in", 0): 1}
    f.checkpoint(1, 2)
    three = f.checkpoint(1, 3)
    assert three.chains[0] == (loc(0, 1, full=True), loc(0, 2, full=False), loc(0, 3, full=False))
    assert three.ingress == {("in", 0): 3}
    assert (three.size_bytes, three.addresses, three.released) == (200, 6, None)
    assert f.state.chain_length() == 3
    four = f.checkpoint(1, 4, full=True)
    assert four.chains[1] == (loc(1, 4, full=True),)
    assert f.state.chain_length() == 1


def test_the_manifest_names_the_members_whose_parts_release_something() -> None:
    f = Folder()
    f.applied(
        begin(1),
        Take(1, 1, 1, True),
        part(1, 1, "b", (1,), full=True, releases=True),
        part(1, 1, "a", (0,), full=True, releases=True),
    )
    assert next_manifest(f.state, 0, 0).released == "a,b"


def test_a_new_owner_goes_on_with_the_partitions_chain() -> None:
    f = Folder()
    f.applied(begin(1))
    f.checkpoint(1, 1, full=True)
    f.applied(begin(2, owners={0: "b", 1: "b"}, ingress_owners={}))
    f.applied(Take(2, 2, 1, False), part(2, 2, "b", (0, 1)))
    manifest = next_manifest(f.state, 0, 0)
    assert manifest.chains[0] == (loc(0, 1, full=True), loc(0, 2, full=False))
    assert manifest.ingress == {("in", 0): 1}  # kept from checkpoint 1


def test_the_newest_manifests_are_retained_and_the_segments_they_read_are_known() -> None:
    f = Folder()
    f.applied(begin(1))
    f.checkpoint(1, 1, full=True)
    assert (f.state.chain_segment(), f.state.needed_segment()) == (1, 1)
    f.checkpoint(1, 2)
    f.checkpoint(1, 3)
    # A full snapshot in segment 2: manifests 2 and 3 still read segment 1.
    f.checkpoint(1, 4, full=True, segment=2)
    assert [m.checkpoint for m in f.state.manifests] == [2, 3, 4]
    assert (f.state.chain_segment(), f.state.needed_segment(), f.state.highest_segment) == (2, 1, 2)
    f.checkpoint(1, 5, segment=2)
    f.checkpoint(1, 6, segment=2)
    assert [m.checkpoint for m in f.state.manifests] == [4, 5, 6]
    assert f.state.needed_segment() == 2
    assert set(f.state.segments) == {4, 5, 6}


# --- the fold: failures, egress, operators ------------------------------------------------


def test_the_first_fail_of_the_generation_is_kept_until_the_next_begin() -> None:
    f = Folder()
    f.applied(begin(1), Fail(1, "b", "first"), Fail(1, "a", "second"))
    assert f.state.failure == Fail(1, "b", "first")
    f.applied(begin(2))
    assert f.state.failure is None
    assert not f(Fail(1, "b", "late")).applied


def test_published_applies_only_to_committed_checkpoints_and_never_goes_back() -> None:
    f = Folder()
    f.applied(begin(1))
    assert not f(Published(1, 1, (0,))).applied
    f.checkpoint(1, 1, full=True)
    f.checkpoint(1, 2)
    f.applied(Published(1, 2, (0, 1)), Published(1, 1, (0,)))
    assert f.state.published == {0: 2, 1: 2}


def test_operators_decisions_apply_in_any_generation() -> None:
    f = Folder()
    f.applied(Pause("ns/f", True), Pause("ns/g", True), Mark(3, "retried"), begin(1))
    f.applied(Pause("ns/f", False), Mark(3, "discarded"))
    assert f.state.paused == {"ns/g"}
    assert f.state.marks == {3: "discarded"}


def test_records_fold_in_log_order_only() -> None:
    state = ClusterState()
    fold(state, 4, begin(1))
    with pytest.raises(ValueError, match="folded after 4"):
        fold(state, 4, begin(2))


# --- DecisionLog over a Log --------------------------------------------------------------

TOPIC = "app-decisions"
EPOCH_1 = f"{TOPIC}-1"


@pytest.fixture
async def memory_log() -> AsyncIterator[MemoryLog]:
    log = MemoryLog()
    yield log
    await log.close()


@pytest.fixture
async def decisions(memory_log: MemoryLog) -> AsyncIterator[DecisionLog]:
    d = DecisionLog(memory_log, TOPIC)
    await d.open()
    yield d
    await d.close()


@pytest.mark.anyio
async def test_open_creates_the_one_partition_topic(
    memory_log: MemoryLog, decisions: DecisionLog
) -> None:
    assert memory_log.partitions(TOPIC) == 1
    assert decisions.state.position == 0


@pytest.mark.anyio
async def test_decide_returns_what_the_fold_made_of_the_record(decisions: DecisionLog) -> None:
    first = await decisions.decide(begin(1))
    assert (first.offset, first.applied) == (0, True)
    second = await decisions.decide(begin(1, coordinator="b"))
    assert (second.offset, second.applied) == (1, False)
    assert decisions.state.coordinator == "a"


@pytest.mark.anyio
async def test_the_tail_folds_what_others_append_and_listeners_hear_it_in_order(
    memory_log: MemoryLog, decisions: DecisionLog
) -> None:
    heard: list[Effect] = []
    unsubscribe = decisions.subscribe(heard.append)
    other = DecisionLog(memory_log, TOPIC)
    await other.open()
    try:
        for record in (begin(1), Take(1, 1, 1, True), Take(1, 1, 1, True)):
            await other.append(record)
        await decisions.wait(lambda s: s.position == 3)
        assert [(e.offset, e.applied) for e in heard] == [(0, True), (1, True), (2, False)]
        assert decisions.state.take == Take(1, 1, 1, True)
        unsubscribe()
        await other.decide(Pause("ns/f", True))
        await decisions.wait(lambda s: "ns/f" in s.paused)
        assert len(heard) == 3
    finally:
        await other.close()


@pytest.mark.anyio
async def test_a_log_opened_later_reads_everything_to_the_same_state(
    memory_log: MemoryLog, decisions: DecisionLog
) -> None:
    await decisions.decide(begin(1))
    for r in (
        Take(1, 1, 1, True),
        part(1, 1, "a", (0,), full=True),
        part(1, 1, "b", (1,), full=True),
    ):
        await decisions.decide(r)
    await decisions.decide(next_manifest(decisions.state, 1, 2))
    await decisions.decide(begin(2, coordinator="b"))
    later = DecisionLog(memory_log, TOPIC)
    await later.open()
    try:
        assert later.state == decisions.state
        assert later.state.rolled_back_to == {1: 1}
    finally:
        await later.close()


@pytest.mark.anyio
async def test_a_malformed_record_is_skipped_by_every_member_alike(
    memory_log: MemoryLog, decisions: DecisionLog
) -> None:
    await memory_log.append(EPOCH_1, 0, [Record(b"\xc1")])
    effect = await decisions.decide(begin(1))
    assert (effect.offset, effect.applied) == (1, True)
    assert decisions.state.void_records == 1


@pytest.mark.anyio
async def test_a_failing_listener_does_not_stop_the_fold(decisions: DecisionLog) -> None:
    def broken(effect: Effect) -> None:
        raise RuntimeError("listener bug")

    decisions.subscribe(broken)
    assert (await decisions.decide(begin(1))).applied
    assert (await decisions.decide(begin(2))).applied


@pytest.mark.anyio
async def test_waiting_on_a_closed_log_fails_instead_of_hanging(memory_log: MemoryLog) -> None:
    d = DecisionLog(memory_log, TOPIC)
    await d.open()
    waiting = asyncio.create_task(d.wait(lambda s: s.generation > 0))
    await asyncio.sleep(0)
    await d.close()
    with pytest.raises(LogError):
        await waiting
    with pytest.raises(LogError):
        await d.decide(begin(1))


class HoldingLog(MemoryLog):
    """A memory log that holds back the next append until told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self._hold_next = False

    def hold_next(self) -> None:
        self._hold_next = True

    def append(
        self, topic: str, partition: int, records: Sequence[Record]
    ) -> asyncio.Future[list[int]]:
        if not self._hold_next:
            return super().append(topic, partition, records)
        self._hold_next = False

        async def held() -> list[int]:
            self.holding.set()
            await self.release.wait()
            return await MemoryLog.append(self, topic, partition, records)

        return asyncio.ensure_future(held())


@pytest.mark.anyio
async def test_a_record_that_lands_after_a_later_callers_is_still_heard() -> None:
    # Two callers watch the fold with equal (empty) dicts; the second's record lands
    # first and it stops watching. The first must keep watching for its own record.
    log = HoldingLog()
    d = DecisionLog(log, TOPIC)
    await d.open()
    try:
        log.hold_next()
        first = asyncio.create_task(d.decide(begin(1)))
        await log.holding.wait()
        second = await d.decide(Pause("ns/f", True))
        assert second.offset == 0
        log.release.set()
        effect = await asyncio.wait_for(first, 5)
        assert (effect.offset, effect.applied) == (1, True)
    finally:
        await d.close()
        await log.close()


@pytest.mark.anyio
async def test_a_log_that_lost_its_first_decisions_is_refused(memory_log: MemoryLog) -> None:
    d = DecisionLog(memory_log, TOPIC)
    await d.open()
    await d.decide(begin(1))
    await d.close()
    await memory_log.truncate(EPOCH_1, 0, 1)
    with pytest.raises(LogError, match="lost its first 1 records"):
        await DecisionLog(memory_log, TOPIC).open()


@pytest.mark.anyio
@pytest.mark.kafka
async def test_the_fold_is_the_same_on_kafka(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("decisions")
    log = await KafkaLog.open(kafka_bootstrap)
    try:
        writer = DecisionLog(log, topic)
        await writer.open()
        assert (await writer.decide(begin(1))).applied
        assert not (await writer.decide(begin(1, coordinator="b"))).applied
        assert (await writer.decide(Take(1, 1, 1, True))).applied
        reader = DecisionLog(log, topic)
        await reader.open()
        assert reader.state == writer.state
        await writer.decide(Pause("ns/f", True))
        await reader.wait(lambda s: "ns/f" in s.paused)
        await reader.close()
        await writer.close()
    finally:
        await log.close()


def test_the_fold_keeps_the_newest_rollbacks_for_operators() -> None:
    f = Folder()
    f.applied(begin(1))
    one = f.checkpoint(1, 1, full=True)
    failed = dataclasses.replace(begin(2), reason="member b failed: boom", at_ms=1234)
    f.applied(failed)
    assert f.state.history == [failed]
    assert f.state.rolled_back_to[1] == one.checkpoint
    for g in range(3, 3 + HISTORY + 5):
        f.applied(begin(g))
    assert len(f.state.history) == HISTORY
    assert f.state.history[-1].generation == 2 + HISTORY + 5
