"""Any member serves any request: two runtimes on one log, each with a fixed cluster view,
their ingresses and peer traffic in process (httpx's ASGI transport).

Member ``b`` owns every partition and runs the worker; member ``a`` owns none and is
not started, so whatever state or reply ``a``'s ingress answers with can only have come
from ``b``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from support import module_for

from runtime.app import Runtime, RuntimeConfig
from runtime.checkpoints.epochs import Tag
from runtime.cluster.peers import DEMAND_PATH, FORWARDED_HEADER, REPLIES_PATH, Peers, StaticView
from runtime.cluster.status import LOCAL_MEMBER
from runtime.config import AccessConfig
from runtime.errors import ConfigurationError
from runtime.idempotency import caller_for
from runtime.log.memory import MemoryLog
from runtime.replies import ReplyWaiters, caller_home
from runtime.router import Router
from runtime.routing import INGRESS_CALLER_TYPE, Topics, partition_for
from sdk import Context, IntType, Message, StatefulFunctions, ValueSpec
from statefun.address import Address
from statefun.values import TypedValue

pytestmark = pytest.mark.timeout(60)

PARTITIONS = 4
INT = {"content-type": "application/json"}
INT_TYPE = {"type": "io.statefun.types/int"}


def tally_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("test/tally", specs=[ValueSpec("count", IntType)])
    def tally(context: Context, message: Message) -> None:
        """Counts what it is sent and replies with the count."""
        context.storage.count = (context.storage.count or 0) + (message.as_int() or 1)
        context.reply(int_value=context.storage.count)

    return functions


@dataclass
class Members(httpx.AsyncBaseTransport):
    """Every member's ingress by host name (``http://a``, ``http://b``), counting what
    each receives from the others."""

    apps: dict[str, httpx.ASGITransport] = field(default_factory=dict)
    received: list[tuple[str, str, str | None]] = field(default_factory=list)
    """(host, path, forwarded-by header) of every peer request, once answered."""
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a reply delivery was answered."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        app = self.apps.get(host)
        if app is None:
            raise httpx.ConnectError(f"nothing listens at {host}", request=request)
        response = await app.handle_async_request(request)
        self.received.append((host, request.url.path, request.headers.get(FORWARDED_HEADER)))
        if request.url.path == REPLIES_PATH:
            self.replied.set()
        return response


@dataclass
class Cluster:
    a: Runtime
    b: Runtime
    view_a: StaticView
    view_b: StaticView
    peers: Members
    log: MemoryLog

    def client(self, member: str) -> httpx.AsyncClient:
        app = (self.a if member == "a" else self.b).ingress_app
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{member}", timeout=15
        )


@asynccontextmanager
async def two_members(
    owner_in_a: str = "b", owner_in_b: str = "b", access: AccessConfig | None = None
) -> AsyncIterator[Cluster]:
    """Members ``a`` and ``b``; each believes ``owner_in_<member>`` owns every partition;
    ``access``: both members' tokens and origins."""
    module = module_for("http://functions/statefun", functions="test/*", egresses=("test/out",))
    functions = httpx.ASGITransport(app=tally_functions().asgi_app())
    log = MemoryLog()
    peers = Members()
    urls = {"a": "http://a", "b": "http://b"}
    view_a = StaticView("a", dict.fromkeys(range(PARTITIONS), owner_in_a), urls)
    view_b = StaticView("b", dict.fromkeys(range(PARTITIONS), owner_in_b), urls)
    runtimes = []
    for view in (view_a, view_b):
        config = RuntimeConfig(
            module=module, messages_partitions=PARTITIONS, access=access or AccessConfig()
        )
        runtime = await Runtime.open(
            config, log=log, transport=functions, cluster=view, peer_transport=peers
        )
        peers.apps[view.me] = httpx.ASGITransport(app=runtime.ingress_app)
        runtimes.append(runtime)
    a, b = runtimes
    await b.start()
    try:
        yield Cluster(a, b, view_a, view_b, peers, log)
    finally:
        for runtime in (b, a):
            runtime.begin_shutdown()
            await runtime.stop()


async def appended(log: MemoryLog) -> int:
    return sum(await log.end_offsets(Topics().messages))


def test_a_call_without_a_key_is_answered_by_the_member_holding_it() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("a") as a:
            response = await a.post(
                "/v1/call/test/tally/x", content="5", headers=INT, params=INT_TYPE
            )
            assert response.status_code == 200, response.text
            assert response.json()["value"] == 5
            # Appended by a, processed by b, the reply posted back to a.
            assert ("a", REPLIES_PATH, "b") in cluster.peers.received
            assert not [r for r in cluster.peers.received if r[1] != REPLIES_PATH]
            assert cluster.b.state_of(Address("test", "tally", "x"))["count"].value is not None

    asyncio.run(scenario())


def test_a_committed_reply_from_another_member_is_held_until_its_checkpoint_commits() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("a") as a:
            call = asyncio.create_task(
                a.post(
                    "/v1/call/test/tally/c",
                    content="3",
                    headers=INT,
                    params={**INT_TYPE, "consistency": "committed"},
                )
            )
            async with asyncio.timeout(10):
                await cluster.peers.replied.wait()
            assert ("a", REPLIES_PATH, "b") in cluster.peers.received
            assert not call.done()  # delivered with its tag, and held
            manifest = await cluster.b.coordinator.checkpoint()
            assert manifest is not None
            cluster.a.replies.committed(manifest.generation, manifest.checkpoint)
            response = await call
            assert response.status_code == 200, response.text
            assert response.json()["value"] == 3
            assert response.headers["x-statefun-consistency"] == "committed"

    asyncio.run(scenario())


def test_a_keyed_call_is_forwarded_to_the_owner_and_a_retry_elsewhere_is_answered_once() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("a") as a, cluster.client("b") as b:
            keyed = {**INT, "idempotency-key": "k-1"}
            first = await a.post(
                "/v1/call/test/tally/y", content="2", headers=keyed, params=INT_TYPE
            )
            assert first.status_code == 200, first.text
            assert first.json()["value"] == 2
            assert "idempotent-replayed" not in first.headers
            assert ("b", "/v1/call/test/tally/y", "a") in cluster.peers.received
            # The reply stayed with b, the owner: no delivery crossed members.
            assert not [r for r in cluster.peers.received if r[1] == REPLIES_PATH]

            for member in (a, b):
                again = await member.post(
                    "/v1/call/test/tally/y", content="2", headers=keyed, params=INT_TYPE
                )
                assert again.status_code == 200, again.text
                assert again.json()["value"] == 2
                assert again.headers["idempotent-replayed"] == "true"
            assert await appended(cluster.log) == 1
            state = await a.get("/v1/state/test/tally/y")  # forwarded too
            assert state.json()["state"]["count"]["value"] == 2

            conflict = await a.post(
                "/v1/call/test/tally/y", content="3", headers=keyed, params=INT_TYPE
            )
            assert conflict.status_code == 422
            assert conflict.json()["error"] == "idempotency_key_reused"

    asyncio.run(scenario())


def test_a_keyed_message_is_forwarded_and_its_retry_appends_nothing() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("a") as a:
            keyed = {**INT, "idempotency-key": "m-1"}
            first = await a.post(
                "/v1/messages/test/tally/z", content="1", headers=keyed, params=INT_TYPE
            )
            again = await a.post(
                "/v1/messages/test/tally/z", content="1", headers=keyed, params=INT_TYPE
            )
            assert first.status_code == again.status_code == 202
            assert first.json() == again.json()
            assert again.headers["idempotent-replayed"] == "true"
            assert await appended(cluster.log) == 1

    asyncio.run(scenario())


def test_a_state_read_is_answered_by_the_owner() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("a") as a, cluster.client("b") as b:
            await b.post("/v1/call/test/tally/s%2Ft", content="7", headers=INT, params=INT_TYPE)
            # An id holding '/' reaches the owner as the client wrote it.
            state = await a.get("/v1/state/test/tally/s%2Ft")
            assert state.status_code == 200, state.text
            assert state.json()["state"]["count"]["value"] == 7
            assert ("b", "/v1/state/test/tally/s/t", "a") in cluster.peers.received
            assert cluster.a.state_of(Address("test", "tally", "s/t")) == {}

    asyncio.run(scenario())


def test_while_nobody_owns_the_partition_keyed_requests_and_reads_are_503() -> None:
    async def scenario() -> None:
        async with two_members(owner_in_a="b") as cluster, cluster.client("a") as a:
            cluster.view_a.owners = dict.fromkeys(range(PARTITIONS))
            keyed = {**INT, "idempotency-key": "k-2"}
            for response in (
                await a.post("/v1/messages/test/tally/u", content="1", headers=keyed),
                await a.post("/v1/call/test/tally/u", content="1", headers=keyed),
                await a.get("/v1/state/test/tally/u"),
            ):
                assert response.status_code == 503
                assert response.json()["error"] == "no_owner"
                assert response.headers["retry-after"] == "1"
            assert await appended(cluster.log) == 0
            # Without a key, a message is appended here: the owner reads it once known.
            plain = await a.post(
                "/v1/messages/test/tally/u", content="1", headers=INT, params=INT_TYPE
            )
            assert plain.status_code == 202
            assert cluster.peers.received == []

    asyncio.run(scenario())


def test_a_forwarded_request_is_never_forwarded_again() -> None:
    async def scenario() -> None:
        # Views disagree while the cluster changes: a thinks b owns all, b thinks a does.
        async with two_members(owner_in_a="b", owner_in_b="a") as cluster:
            async with cluster.client("a") as a:
                keyed = {**INT, "idempotency-key": "k-3"}
                response = await a.post("/v1/call/test/tally/v", content="1", headers=keyed)
                state = await a.get("/v1/state/test/tally/v")
            for answer in (response, state):
                assert answer.status_code == 503
                assert answer.json()["error"] == "not_owner"
                assert answer.headers["retry-after"] == "1"
            assert [(host, by) for host, _, by in cluster.peers.received] == [
                ("b", "a"),
                ("b", "a"),
            ]
            assert await appended(cluster.log) == 0

    asyncio.run(scenario())


def test_an_owner_that_does_not_answer_is_503() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("a") as a:
            cluster.peers.apps.pop("b")  # b is gone
            state = await a.get("/v1/state/test/tally/w")
            assert state.status_code == 503
            assert state.json()["error"] == "owner_unreachable"

    asyncio.run(scenario())


def test_a_live_listing_merges_only_pages_that_cover_every_partition_once() -> None:
    async def scenario() -> None:
        # A process alone holds every partition: two of them claim each partition twice.
        async with two_members() as cluster, cluster.client("a") as a:
            await a.post("/v1/call/test/tally/x", content="1", headers=INT, params=INT_TYPE)
            listed = await a.get("/v1/addresses/test/tally")
            assert listed.status_code == 503
            assert listed.json()["error"] == "cluster_changing"
            assert ("b", "/v1/addresses/test/tally", "a") in cluster.peers.received
            # What b answered a: its own page, and the partitions it covers.
            own = await a.get("/v1/addresses/test/tally", headers={FORWARDED_HEADER: "c"})
            assert own.json()["partitions"] == list(range(PARTITIONS))
            cluster.peers.apps.pop("b")  # b is gone
            gone = await a.get("/v1/addresses/test/tally")
            assert gone.status_code == 503
            assert gone.json()["error"] == "member_unreachable"

    asyncio.run(scenario())


def test_replies_from_other_members_reach_only_a_runtime_in_a_cluster() -> None:
    async def scenario() -> None:
        module = module_for("http://functions/statefun", functions="test/*")
        alone = await Runtime.open(RuntimeConfig(module=module))
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=alone.ingress_app), base_url="http://127.0.0.1"
            ) as http:
                response = await http.post(REPLIES_PATH, content=b"")
            assert response.status_code == 404
        finally:
            await alone.stop()

    asyncio.run(scenario())


# --- addresses and routing ------------------------------------------------------------


def test_caller_addresses_name_their_member_or_partition_only_in_a_cluster() -> None:
    async def scenario() -> tuple[Address, Address]:
        alone, _ = ReplyWaiters().new_caller()
        member, _ = ReplyWaiters("m-0123abcd").new_caller()
        return alone, member

    alone, member = asyncio.run(scenario())
    assert caller_home(alone) is None
    assert "." not in alone.id
    assert caller_home(member) == "m-0123abcd"
    assert caller_home(caller_for("key")) is None
    assert caller_for("key").id.startswith("key-")
    assert caller_home(caller_for("key", 3)) == 3
    assert caller_for("key", 3).id == "3." + caller_for("key").id
    for bad in ("", "m.1", "42"):
        with pytest.raises(ConfigurationError):
            ReplyWaiters(bad)


class RecordingPeers(Peers):
    def __init__(self, view: StaticView) -> None:
        super().__init__(view)
        self.delivered: list[tuple[str, Address, Tag | None]] = []

    def deliver_reply(
        self, member: str, address: Address, value: TypedValue, tag: Tag | None
    ) -> None:
        self.delivered.append((member, address, tag))


def test_the_router_sends_a_reply_where_its_caller_address_says() -> None:
    async def scenario() -> None:
        view = StaticView("a", {0: "a", 1: "b", 2: None}, {"a": "http://a", "b": "http://b"})
        peers = RecordingPeers(view)
        replies = ReplyWaiters("a")
        module = module_for("http://functions/statefun", functions="test/*")
        router = Router(MemoryLog(), module, replies, Topics(), 3, peers=peers)
        value = TypedValue("t/x", b"v")
        mine, reply = replies.new_caller()
        theirs = Address(INGRESS_CALLER_TYPE.namespace, INGRESS_CALLER_TYPE.name, "b.xyz-1")
        for caller in (mine, theirs, caller_for("k", 0), caller_for("k", 1), caller_for("k", 2)):
            assert router.send(caller, None, value) is None
        assert reply.result() == value
        assert [(m, a) for m, a, _ in peers.delivered] == [
            ("b", theirs),
            ("b", caller_for("k", 1)),
        ]  # the key of partition 0 is a's own; partition 2 has no owner: dropped
        await peers.close()

    asyncio.run(scenario())


def test_a_keyed_callers_partition_is_its_targets() -> None:
    target = Address("test", "tally", "y")
    partition = partition_for(target, PARTITIONS)

    async def scenario() -> Address:
        async with two_members() as cluster:
            request = await cluster.b.idempotency.begin("k", b"print", target)
            cluster.b.idempotency.abandoned(request)
            return request.caller

    assert caller_home(asyncio.run(scenario())) == partition


# --- ids -------------------------------------------------------------------------------


def test_kafka_transactional_ids_carry_the_member_only_in_a_cluster() -> None:
    """Members never fence each other's transactions; they share the marker topic."""
    topics = Topics("app")
    assert topics.egress_transactional_id(0) == "app-egress-0"
    assert topics.egress_transactional_id(1, "m-1") == "app-egress-1-m-1"
    assert topics.egress_markers(1) == "app-egress-published-1"


# --- the cluster's status --------------------------------------------------------------


def test_the_cluster_status_of_members_and_of_a_process_alone() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with two_members() as cluster, cluster.client("a") as a:
            cluster.view_a.owners = {0: "a", 1: "b", 2: "b", 3: None}
            in_cluster = (await a.get("/v1/cluster")).json()
        module = module_for("http://functions/statefun", functions="test/*")
        alone = await Runtime.open(RuntimeConfig(module=module, messages_partitions=3))
        try:
            await alone.start()
            await alone.coordinator.checkpoint()
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=alone.ingress_app), base_url="http://127.0.0.1"
            ) as http:
                single = (await http.get("/v1/cluster")).json()
        finally:
            await alone.stop()
        return in_cluster, single

    in_cluster, single = asyncio.run(scenario())
    assert in_cluster["mode"] == "cluster"
    assert in_cluster["me"] == "a"
    assert in_cluster["coordinator"] == "a"
    assert in_cluster["members"] == [
        {"id": "a", "url": "http://a", "partitions": [0], "coordinator": True, "me": True},
        {"id": "b", "url": "http://b", "partitions": [1, 2], "coordinator": False, "me": False},
    ]
    assert in_cluster["unowned"] == [3]
    assert in_cluster["last_checkpoint"] is None  # a never started
    assert single["mode"] == "single"
    assert single["me"] == single["coordinator"] == LOCAL_MEMBER
    assert [m["partitions"] for m in single["members"]] == [[0, 1, 2]]
    assert single["generation"] == 1
    last = single["last_checkpoint"]
    assert isinstance(last, dict)
    assert last["id"] == 1
    assert last["generation"] == 1


def test_a_member_demands_a_checkpoint_of_the_coordinator_once_at_a_time() -> None:
    """Demand raised while one demand is in flight is sent once more when it is answered,
    not once per demand; the coordinator's schedule hears it."""

    async def scenario() -> None:
        async with two_members() as cluster:
            schedule = cluster.a.coordinator.schedule
            assert schedule is not None
            assert not schedule.demanded
            sent: list[str] = []
            answer = asyncio.Event()
            demanded = asyncio.Event()

            class Coordinator(httpx.AsyncBaseTransport):
                async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                    sent.append(request.url.path)
                    demanded.set()
                    await answer.wait()
                    return await cluster.peers.apps["a"].handle_async_request(request)

            peers = Peers(cluster.view_b, transport=Coordinator())
            try:
                for _ in range(5):
                    peers.demand_checkpoint("a")
                await demanded.wait()
                answer.set()
                for _ in range(5):
                    peers.demand_checkpoint("a")  # in flight still, or sent afresh
                in_flight = peers._demanding  # one task sends them all, one after another
                assert in_flight is not None
                await in_flight
                assert peers._demanding is None
                assert sent == [DEMAND_PATH] * len(sent)
                assert 2 <= len(sent) <= 3, sent
                assert schedule.demanded
                peers.demand_checkpoint("nobody")  # not a member: nothing is sent
                assert peers._demanding is not None
                await peers._demanding
                assert len(sent) <= 3
            finally:
                await peers.close()

    asyncio.run(scenario())
