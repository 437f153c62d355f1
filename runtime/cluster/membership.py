"""Membership of an application: which processes are in it, which one coordinates, and
which partitions each owns, as one :class:`View` every member receives alike.

A member is one runtime process (:class:`Member`: an id new at every start, and its peer
URL). Members are the consumers of a Kafka consumer group ``<app>-members`` subscribed to
a one-partition topic of the same name, which carries no data. The group does the
failure detection (heartbeats, session timeout) and the agreement; the
:class:`ViewAssignor` does the rest. Kafka runs it on the group leader only, with every
member's subscription, whose ``user_data`` holds that member's :class:`Member`; it
computes the view (:func:`assign`) and hands it to every member in its assignment's
``user_data``. The leader is the application's **coordinator**. The view's number is the
group generation, which the broker hands every member with the assignment.

Assignment (:func:`assign`): members sorted by id; the messages topic's partitions in
contiguous ranges, the first members taking one more when they do not divide evenly; the
Kafka ingress partitions, all topics together in (topic, partition) order, dealt round
robin, so each topic spreads over the members too. It depends on the member set only.

The group runs on a thread of its own (:class:`Membership`), never on the event loop:
views reach the loop through ``call_soon_threadsafe``, and kafka-python heartbeats from
its own IO thread, so a busy loop never costs the membership.

Time until every member holds the new view on the Tansu test broker (2 cores,
loopback, ``python -m bench.membership``, median (min-max) of 3 runs): a member killed
with SIGKILL is noticed after the session timeout, and the rebalance then waits half of
it again (Tansu's join delay), as does a join or a leave.

=================  ================  ====================
session/heartbeat  2 s / 0.5 s       6 s / 1 s
=================  ================  ====================
kill -9 worker     3.3 s (3.1-3.3)   9.7 s (9.1-9.8)
kill -9 leader     3.1 s (3.1-3.1)   10.0 s (9.1-18.1)
join               2.0 s (2.0-2.0)   4.0 s (4.0-4.1)
leave (stop)       2.2 s (1.7-3.1)   4.1 s (4.0-5.0)
=================  ================  ====================

This module must never decide anything beyond who is in the application and what each
owns: rollbacks, checkpoints and fencing follow from views in the decision log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgpack
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.protocol.consumer.metadata import (
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)

from runtime.errors import MembershipError
from runtime.log.kafka_selector import CLIENT_CONFIG

__all__ = ["Member", "Membership", "View", "ViewAssignor", "assign", "members_topic"]

logger = logging.getLogger(__name__)

_POLL_MS = 100  # how soon the group thread sees a stop; joins go on across polls
_RETRY_AFTER = 0.5  # seconds between polls after a failed one
_VERSION = 0  # of the subscription and assignment encodings in the group protocol


def members_topic(app_id: str) -> str:
    """The name of the application's group and of its one-partition topic."""
    return f"{app_id}-members"


@dataclass(frozen=True, slots=True)
class Member:
    """One runtime process of an application: ``id`` is new at every process start."""

    id: str
    url: str

    @classmethod
    def new(cls, url: str) -> Member:
        """A member with a fresh id: ``m-`` and 8 random hex digits."""
        return cls(f"m-{secrets.token_hex(4)}", url)

    def encode(self) -> bytes:
        return bytes(msgpack.packb([self.id, self.url]))

    @classmethod
    def decode(cls, data: bytes) -> Member:
        member_id, url = msgpack.unpackb(data)
        if not isinstance(member_id, str) or not isinstance(url, str):
            raise ValueError("a member is an id and a URL, both strings")
        return cls(member_id, url)


@dataclass(frozen=True, slots=True)
class View:
    """Who is in the application and what each member owns, in group generation ``number``.

    ``coordinator`` is the member id of the group leader; ``members`` are sorted by id;
    ``partitions`` maps each member id to its messages-topic partitions, ``ingress`` to
    its Kafka ingress (topic, partition) pairs. Every member id is a key of both.
    """

    number: int
    coordinator: str
    members: tuple[Member, ...]
    partitions: Mapping[str, tuple[int, ...]]
    ingress: Mapping[str, tuple[tuple[str, int], ...]]
    _owners: Mapping[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "partitions", MappingProxyType(dict(self.partitions)))
        object.__setattr__(self, "ingress", MappingProxyType(dict(self.ingress)))
        owners = {p: member for member, ps in self.partitions.items() for p in ps}
        object.__setattr__(self, "_owners", MappingProxyType(owners))

    def owner(self, partition: int) -> str:
        """The member id owning a messages-topic partition (KeyError if none does)."""
        return self._owners[partition]

    def member(self, member_id: str) -> Member:
        """The member with this id (KeyError if it is not in the view)."""
        for member in self.members:
            if member.id == member_id:
                return member
        raise KeyError(member_id)

    def encode(self) -> bytes:
        return bytes(msgpack.packb([self.number, *self._body()]))

    @classmethod
    def decode(cls, data: bytes) -> View:
        number, *body = msgpack.unpackb(data)
        return cls._from_body(number, body)

    def _body(self) -> list[Any]:
        """Everything but the number: what the leader sends, before the broker numbers it."""
        return [
            self.coordinator,
            [[m.id, m.url] for m in self.members],
            {member: list(ps) for member, ps in self.partitions.items()},
            {member: [[t, p] for t, p in tps] for member, tps in self.ingress.items()},
        ]

    @classmethod
    def _from_body(cls, number: int, body: list[Any]) -> View:
        coordinator, members, partitions, ingress = body
        return cls(
            number=number,
            coordinator=coordinator,
            members=tuple(Member(m, url) for m, url in members),
            partitions={member: tuple(ps) for member, ps in partitions.items()},
            ingress={member: tuple((t, p) for t, p in tps) for member, tps in ingress.items()},
        )


def assign(
    members: Sequence[Member],
    coordinator: str,
    partitions: int,
    ingress_topics: Mapping[str, int],
    number: int = 0,
) -> View:
    """The view of ``members`` (any order, ids unique): deterministic for a member set."""
    ordered = tuple(sorted(members, key=lambda m: m.id))
    if not ordered:
        raise ValueError("a view needs at least one member")
    if len({m.id for m in ordered}) != len(ordered):
        raise ValueError("member ids must be unique")
    count = len(ordered)
    share, extra = divmod(partitions, count)
    owned: dict[str, tuple[int, ...]] = {}
    start = 0
    for i, member in enumerate(ordered):
        end = start + share + (1 if i < extra else 0)
        owned[member.id] = tuple(range(start, end))
        start = end
    pairs = sorted((t, p) for t, n in ingress_topics.items() for p in range(n))
    ingress = {m.id: tuple(pairs[i::count]) for i, m in enumerate(ordered)}
    return View(number, coordinator, ordered, owned, ingress)


class ViewAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """The group protocol: subscriptions carry a :class:`Member`, assignments the view.

    kafka-python calls it on its IO thread: :meth:`assign` on the leader only,
    :meth:`on_assignment` on every member once the group is in sync.
    """

    name = "statefun-view"
    version = _VERSION

    def __init__(
        self,
        me: Member,
        partitions: int,
        ingress_topics: Mapping[str, int],
        on_view: Callable[[View], None],
    ) -> None:
        self._me = me
        self._partitions = partitions
        self._ingress_topics = dict(ingress_topics)
        self._on_view = on_view

    def metadata(self, topics: set[str]) -> ConsumerProtocolSubscription:
        return ConsumerProtocolSubscription(self.version, sorted(topics), self._me.encode())

    def assign(self, cluster: Any, members: Sequence[Any]) -> dict[str, ConsumerProtocolAssignment]:
        known: dict[str, Member] = {}
        for kafka_member in sorted(members, key=lambda m: m.member_id):
            try:
                member = Member.decode(kafka_member.metadata.user_data)
            except (ValueError, TypeError, msgpack.UnpackException):
                # Not a runtime of ours (or of another version): it gets nothing, and the
                # application goes on without it rather than stall on it.
                logger.error(
                    "group member %s sent no readable member; leaving it out of the view",
                    kafka_member.member_id,
                )
                continue
            if any(m.id == member.id for m in known.values()):
                # The same process twice (an old session the broker has not dropped yet):
                # the view names it once, and the other session gets no view.
                logger.error(
                    "group member %s claims member id %s again; leaving it out of the view",
                    kafka_member.member_id,
                    member.id,
                )
                continue
            known[kafka_member.member_id] = member
        view = assign(list(known.values()), self._me.id, self._partitions, self._ingress_topics)
        user_data = bytes(msgpack.packb(view._body()))
        topics = sorted({t for m in members for t in m.metadata.topics})
        assignments = {}
        for kafka_member in members:
            in_view = known.get(kafka_member.member_id)
            if in_view is None:
                assignments[kafka_member.member_id] = ConsumerProtocolAssignment(
                    self.version, [], b""
                )
                continue
            # The members topic's one partition goes to the coordinator; it carries nothing.
            owned = [(t, [0]) for t in topics] if in_view.id == view.coordinator else []
            assignments[kafka_member.member_id] = ConsumerProtocolAssignment(
                self.version, owned, user_data
            )
        return assignments

    def on_assignment(self, assignment: ConsumerProtocolAssignment, generation: int) -> None:
        if not assignment.user_data:
            logger.error("this member was left out of the view of generation %s", generation)
            return
        self._on_view(View._from_body(generation, msgpack.unpackb(assignment.user_data)))


class Membership:
    """This process's membership of application ``app_id``: join with :meth:`start`,
    leave with :meth:`stop`; ``on_view`` runs on the event loop with every new view.

    ``partitions`` is the messages topic's partition count, ``ingress_topics`` the Kafka
    ingress topics' partition counts: the leader's values make the view. ``join_timeout``
    bounds :meth:`start` (by default ten session timeouts). The group's
    rebalance timeout is twice the session timeout: a member the broker waits for in a
    rebalance is one whose heartbeats were fine a moment ago.
    """

    def __init__(
        self,
        bootstrap: str,
        app_id: str,
        me: Member,
        *,
        partitions: int,
        ingress_topics: Mapping[str, int],
        on_view: Callable[[View], None],
        session_timeout: float = 6.0,
        heartbeat_interval: float = 1.0,
        join_timeout: float | None = None,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if not 0 < heartbeat_interval < session_timeout:
            raise ValueError("heartbeat_interval must be positive and below session_timeout")
        self.me = me
        self.topic = members_topic(app_id)
        self._bootstrap = bootstrap
        self._partitions = partitions
        self._ingress_topics = dict(ingress_topics)
        self._on_view = on_view
        self._session_timeout = session_timeout
        self._heartbeat_interval = heartbeat_interval
        self._join_timeout = join_timeout if join_timeout is not None else 10 * session_timeout
        self._kafka_options = dict(kafka_options or {})
        self._view: View | None = None
        self._joined = asyncio.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def view(self) -> View | None:
        """The latest view this member received (None before the first)."""
        return self._view

    async def start(self) -> None:
        """Create the members topic if missing, join the group, and return once the
        first view has been delivered to ``on_view`` (MembershipError after
        ``join_timeout`` seconds)."""
        if self._thread is not None:
            raise RuntimeError("membership already started")
        self._loop = asyncio.get_running_loop()
        timeout = self._join_timeout
        try:
            await asyncio.to_thread(self._create_topic)
            consumer = await asyncio.to_thread(self._connect)
        except KafkaError as e:
            raise MembershipError(f"cannot join {self.topic} at {self._bootstrap}: {e!r}") from e
        self._thread_done = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(consumer,), name=f"membership-{self.me.id}", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wait_for(self._joined.wait(), timeout)
        except TimeoutError:
            await self.stop()
            raise MembershipError(
                f"{self.me.id} did not join {self.topic} within {timeout:g} s"
            ) from None

    async def stop(self) -> None:
        """Leave the group, so the others rebalance at once; give up waiting after the
        session timeout (by then the broker has dropped this member anyway)."""
        if self._thread is None or self._thread_done is None:
            return
        self._stopping.set()
        budget = self._session_timeout
        try:
            await asyncio.wait_for(asyncio.shield(self._thread_done), budget + _POLL_MS / 1000)
        except TimeoutError:
            logger.warning("%s did not leave %s within %g s", self.me.id, self.topic, budget)

    # --- the group thread -----------------------------------------------------------------

    def _create_topic(self) -> None:
        admin = KafkaAdminClient(
            bootstrap_servers=self._bootstrap, **CLIENT_CONFIG, **self._admin_options()
        )
        try:
            if self.topic not in admin.list_topics():
                admin.create_topics({self.topic: {"num_partitions": 1, "replication_factor": 1}})
        except TopicAlreadyExistsError:
            pass  # another member created it meanwhile
        finally:
            admin.close()

    def _admin_options(self) -> dict[str, Any]:
        """The options the admin client shares with the consumer (security, timeouts)."""
        known = KafkaAdminClient.DEFAULT_CONFIG
        return {k: v for k, v in self._kafka_options.items() if k in known}

    def _connect(self) -> KafkaConsumer:
        assignor = ViewAssignor(self.me, self._partitions, self._ingress_topics, self._post)
        config: dict[str, Any] = {
            "bootstrap_servers": self._bootstrap,
            "client_id": f"{self.topic}-{self.me.id}",
            "group_id": self.topic,
            "partition_assignment_strategy": [assignor],
            "session_timeout_ms": round(self._session_timeout * 1000),
            "heartbeat_interval_ms": round(self._heartbeat_interval * 1000),
            "max_poll_interval_ms": round(2 * self._session_timeout * 1000),
            "enable_auto_commit": False,
            "auto_offset_reset": "latest",
            "allow_auto_create_topics": False,
            "fetch_max_wait_ms": _POLL_MS,
            "metrics_enabled": False,
            **CLIENT_CONFIG,
            **self._kafka_options,
        }
        consumer = KafkaConsumer(**config)
        consumer.subscribe([self.topic])
        return consumer

    def _run(self, consumer: KafkaConsumer) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    consumer.poll(timeout_ms=_POLL_MS)
                except KafkaError:
                    logger.exception("%s: polling %s failed; retrying", self.me.id, self.topic)
                    self._stopping.wait(_RETRY_AFTER)
        finally:
            try:
                consumer.close(autocommit=False, timeout_ms=round(self._session_timeout * 1000))
            except Exception:
                logger.exception("%s: leaving %s failed", self.me.id, self.topic)
            self._call_soon(self._finished)

    def _post(self, view: View) -> None:
        """From kafka-python's IO thread: hand a view to the event loop."""
        self._call_soon(self._deliver, view)

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # --- on the event loop ----------------------------------------------------------------

    def _deliver(self, view: View) -> None:
        if self._stopping.is_set():
            return
        logger.info(
            "%s: view %d, coordinator %s, members %s",
            self.me.id,
            view.number,
            view.coordinator,
            [m.id for m in view.members],
        )
        self._view = view
        self._joined.set()
        self._on_view(view)

    def _finished(self) -> None:
        if self._thread_done is not None and not self._thread_done.done():
            self._thread_done.set_result(None)
