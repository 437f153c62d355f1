"""Membership: the assignment, the view's encoding, and the group on the Tansu broker
(members joining, leaving, and dying without a word)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka.protocol.consumer.metadata import ConsumerProtocolSubscription

from runtime.cluster.membership import Member, Membership, View, ViewAssignor, assign

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 8
INGRESS = {"orders": 3, "clicks": 2}
# Tansu's join waits half the session timeout: 2 s keeps each join near 1 s.
SESSION_TIMEOUT = 2.0
HEARTBEAT_INTERVAL = 0.5
VIEW_WAIT = 20.0


def members(*ids: str) -> list[Member]:
    return [Member(i, f"http://127.0.0.1:80{n:02d}") for n, i in enumerate(ids)]


# --- the assignment, without Kafka -------------------------------------------------------


def test_messages_partitions_are_contiguous_ranges_covering_all_once() -> None:
    view = assign(members("m-c", "m-a", "m-b"), "m-a", PARTITIONS, INGRESS)

    assert [m.id for m in view.members] == ["m-a", "m-b", "m-c"]
    assert view.partitions == {"m-a": (0, 1, 2), "m-b": (3, 4, 5), "m-c": (6, 7)}
    assert [view.owner(p) for p in range(PARTITIONS)] == ["m-a"] * 3 + ["m-b"] * 3 + ["m-c"] * 2


def test_ingress_partitions_are_dealt_round_robin_over_all_topics() -> None:
    view = assign(members("m-a", "m-b", "m-c"), "m-a", PARTITIONS, INGRESS)

    assert view.ingress == {
        "m-a": (("clicks", 0), ("orders", 1)),
        "m-b": (("clicks", 1), ("orders", 2)),
        "m-c": (("orders", 0),),
    }


def test_assignment_depends_on_the_member_set_only() -> None:
    one = assign(members("m-1", "m-2", "m-3"), "m-2", PARTITIONS, INGRESS)
    other = assign(list(reversed(members("m-1", "m-2", "m-3"))), "m-2", PARTITIONS, INGRESS)
    assert one == other


def test_more_members_than_partitions_leaves_some_with_none() -> None:
    view = assign(members("m-a", "m-b", "m-c"), "m-a", 2, {})

    assert view.partitions == {"m-a": (0,), "m-b": (1,), "m-c": ()}
    assert view.ingress == {"m-a": (), "m-b": (), "m-c": ()}


def test_assignment_refuses_no_members_and_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="at least one"):
        assign([], "m-a", PARTITIONS, INGRESS)
    with pytest.raises(ValueError, match="unique"):
        assign([Member("m-a", "http://a"), Member("m-a", "http://b")], "m-a", 4, {})


def test_view_encoding_round_trips() -> None:
    view = assign(members("m-a", "m-b"), "m-b", PARTITIONS, INGRESS, number=17)

    decoded = View.decode(view.encode())

    assert decoded == view
    assert decoded.number == 17
    assert decoded.owner(7) == "m-b"
    assert decoded.member("m-a").url == "http://127.0.0.1:8000"
    with pytest.raises(KeyError):
        decoded.owner(PARTITIONS)


def test_member_ids_are_new_at_every_start() -> None:
    first, second = Member.new("http://x"), Member.new("http://x")
    assert first.id != second.id
    assert first.id.startswith("m-")
    assert len(first.id) == 10
    assert Member.decode(first.encode()) == first


def test_assignor_puts_the_view_in_every_assignment_and_skips_strangers_and_twins() -> None:
    """The group protocol without a broker: the leader's assignor reads the members from
    the subscriptions, and each member's ``on_assignment`` numbers the view."""
    ours = members("m-b", "m-a")
    received: list[View] = []
    leader = ViewAssignor(ours[0], PARTITIONS, INGRESS, received.append)
    subscriptions = [
        SimpleNamespace(
            member_id=f"kafka-{m.id}",
            metadata=ConsumerProtocolSubscription(0, ["app-members"], m.encode()),
        )
        for m in ours
    ] + [
        SimpleNamespace(
            member_id="kafka-stranger",
            metadata=ConsumerProtocolSubscription(0, ["app-members"], b"not ours"),
        ),
        SimpleNamespace(  # m-a again: a session of it the broker has not dropped yet
            member_id="kafka-z-old-session",
            metadata=ConsumerProtocolSubscription(0, ["app-members"], ours[1].encode()),
        ),
    ]

    assignments = leader.assign(None, subscriptions)

    assert assignments["kafka-stranger"].user_data == b""
    assert assignments["kafka-z-old-session"].user_data == b""
    assert assignments["kafka-m-b"].partitions() != []  # the coordinator holds the topic
    assert assignments["kafka-m-a"].partitions() == []
    follower = ViewAssignor(ours[1], PARTITIONS, INGRESS, received.append)
    follower.on_assignment(assignments["kafka-m-a"], 5)
    assert received == [assign(ours, "m-b", PARTITIONS, INGRESS, number=5)]


# --- the group, on the Tansu broker ------------------------------------------------------


class Observer:
    """One member's views as they arrive on the event loop."""

    def __init__(self) -> None:
        self.views: list[View] = []
        self._arrived = asyncio.Event()

    def __call__(self, view: View) -> None:
        self.views.append(view)
        self._arrived.set()

    @property
    def latest(self) -> View | None:
        return self.views[-1] if self.views else None

    async def wait_for(self, predicate: Callable[[View], bool]) -> View:
        """The latest view, once it satisfies ``predicate`` (within ``VIEW_WAIT``)."""
        async with asyncio.timeout(VIEW_WAIT):
            while self.latest is None or not predicate(self.latest):
                self._arrived.clear()
                await self._arrived.wait()
        return self.latest


def ids(view: View) -> set[str]:
    return {m.id for m in view.members}


@asynccontextmanager
async def group(
    bootstrap: str, app_id: str, count: int
) -> AsyncIterator[list[tuple[Membership, Observer]]]:
    """``count`` members of ``app_id`` started together, stopped at the end."""
    started: list[tuple[Membership, Observer]] = [
        new_member(bootstrap, app_id) for _ in range(count)
    ]
    try:
        await asyncio.gather(*(membership.start() for membership, _ in started))
        yield started
    finally:
        await asyncio.gather(*(membership.stop() for membership, _ in started))


def new_member(bootstrap: str, app_id: str) -> tuple[Membership, Observer]:
    observer = Observer()
    membership = Membership(
        bootstrap,
        app_id,
        Member.new("http://127.0.0.1:8090"),
        partitions=PARTITIONS,
        ingress_topics=INGRESS,
        on_view=observer,
        session_timeout=SESSION_TIMEOUT,
        heartbeat_interval=HEARTBEAT_INTERVAL,
    )
    return membership, observer


async def converged(group_members: list[tuple[Membership, Observer]]) -> View:
    """Wait until every member holds the same view, of exactly these members."""
    expected = {membership.me.id for membership, _ in group_members}
    views = await asyncio.gather(
        *(observer.wait_for(lambda v: ids(v) == expected) for _, observer in group_members)
    )
    # Views of one generation are one view: wait for all to reach the newest.
    newest = max(v.number for v in views)
    views = await asyncio.gather(
        *(observer.wait_for(lambda v: v.number >= newest) for _, observer in group_members)
    )
    assert all(v == views[0] for v in views)
    return views[0]


pytestmark = [pytest.mark.anyio]


@pytest.mark.kafka
async def test_three_members_agree_on_one_view(kafka_bootstrap: str) -> None:
    async with group(kafka_bootstrap, "three", 3) as started:
        view = await converged(started)

        assert view.coordinator in ids(view)
        owned = [p for ps in view.partitions.values() for p in ps]
        assert sorted(owned) == list(range(PARTITIONS))
        pairs = [tp for tps in view.ingress.values() for tp in tps]
        assert sorted(pairs) == sorted((t, p) for t, n in INGRESS.items() for p in range(n))
        assert view == assign(view.members, view.coordinator, PARTITIONS, INGRESS, view.number)
        for membership, _ in started:
            assert membership.view == view


@pytest.mark.kafka
async def test_a_member_that_stops_is_left_out_at_once(kafka_bootstrap: str) -> None:
    async with group(kafka_bootstrap, "leaving", 3) as started:
        before = await converged(started)
        # Stop the coordinator: the hardest case, the group needs a new leader too.
        leaving = next(m for m, _ in started if m.me.id == before.coordinator)
        await leaving.stop()
        staying = [(m, o) for m, o in started if m is not leaving]

        after = await converged(staying)

        assert after.number > before.number
        assert leaving.me.id not in ids(after)
        assert after.coordinator != leaving.me.id


@pytest.mark.kafka
async def test_a_joining_member_is_let_in(kafka_bootstrap: str) -> None:
    async with group(kafka_bootstrap, "joining", 2) as started:
        before = await converged(started)
        joining, observer = new_member(kafka_bootstrap, "joining")
        await joining.start()
        try:
            after = await converged([*started, (joining, observer)])
        finally:
            await joining.stop()

        assert after.number > before.number
        assert joining.me.id in ids(after)


MEMBER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from runtime.cluster.membership import Member, Membership

    async def main() -> None:
        me = Member.new("http://127.0.0.1:8099")
        membership = Membership(
            sys.argv[1], sys.argv[2], me, partitions=8, ingress_topics={},
            on_view=lambda view: None, session_timeout=float(sys.argv[3]),
            heartbeat_interval=float(sys.argv[4]),
        )
        await membership.start()
        print(me.id, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.mark.kafka
@pytest.mark.slow
async def test_a_killed_member_is_left_out_after_the_session_timeout(
    kafka_bootstrap: str,
) -> None:
    async with group(kafka_bootstrap, "killed", 2) as started:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MEMBER_SCRIPT,
            kafka_bootstrap,
            "killed",
            str(SESSION_TIMEOUT),
            str(HEARTBEAT_INTERVAL),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            killed = line.decode().strip()
            with_it = await asyncio.gather(
                *(observer.wait_for(lambda v: killed in ids(v)) for _, observer in started)
            )
            process.send_signal(signal.SIGKILL)

            after = await converged(started)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()

        assert after.number > max(v.number for v in with_it)
        assert killed not in ids(after)
