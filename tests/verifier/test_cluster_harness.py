"""The verifier's cluster harness alone (``verifier/cluster.py``): the schedule of
membership faults, the ingress pool's round robin and its failover when a process
refuses connections, and what it reads in ``GET /v1/cluster``."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from verifier.cluster import (
    JOIN,
    KILL_COORDINATOR,
    KILL_WORKER,
    LEAVE,
    ClusterView,
    FailoverTransport,
    IngressPool,
    excluded,
    membership_schedule,
)

A, B, C = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"


@pytest.mark.parametrize("kills", [0, 1, 2, 3, 6])
def test_the_schedule_holds_every_fault_in_order_within_the_run(kills: int) -> None:
    schedule = membership_schedule(kills, random.Random(kills))
    kinds = [f.kind for f in schedule]
    assert kinds.count(JOIN) == 1
    assert kinds.count(LEAVE) == 1
    assert kinds.count(KILL_WORKER) == (kills + 1) // 2
    assert kinds.count(KILL_COORDINATOR) == kills // 2
    if kills:
        assert kinds[:2] == [KILL_WORKER, JOIN]  # a worker dies before anyone joins
    if kills >= 2:
        # the coordinator is killed, and someone leaves, with the joiner in the cluster
        assert kinds.index(KILL_COORDINATOR) > kinds.index(JOIN)
        assert kinds.index(LEAVE) > kinds.index(KILL_COORDINATOR)
    points = [f.at for f in schedule]
    assert points == sorted(points)
    assert points[0] >= 0.1
    assert points[-1] <= 0.9


def test_the_schedule_is_seeded() -> None:
    assert membership_schedule(4, random.Random(3)) == membership_schedule(4, random.Random(3))
    assert membership_schedule(4, random.Random(3)) != membership_schedule(4, random.Random(4))


def test_the_pool_takes_every_process_in_turn() -> None:
    pool = IngressPool([A, B, C])
    assert [pool.rotation()[0] for _ in range(6)] == [A, B, C, A, B, C]
    assert pool.rotation() == [A, B, C]
    pool.remove(B)
    pool.add(A)  # already there
    assert sorted(pool.rotation()) == [A, C]
    assert IngressPool().rotation() == []


def _ingress(down: set[str], seen: list[str]) -> httpx.MockTransport:
    """Processes answering 202 with their port, except those ``down`` (refused)."""

    def handle(request: httpx.Request) -> httpx.Response:
        origin = f"http://{request.url.host}:{request.url.port}"
        seen.append(origin)
        if origin in down:
            raise httpx.ConnectError("Connection refused", request=request)
        assert request.headers["host"] == f"{request.url.host}:{request.url.port}"
        return httpx.Response(202, json={"port": request.url.port})

    return httpx.MockTransport(handle)


def test_requests_go_round_robin_and_fail_over_past_a_dead_process() -> None:
    async def scenario() -> None:
        down: set[str] = set()
        seen: list[str] = []
        pool = IngressPool([A, B, C])
        transport = FailoverTransport(pool, _ingress(down, seen))
        async with httpx.AsyncClient(base_url="http://ingress", transport=transport) as http:
            ports = [(await http.post("/v1/messages/x/y/z")).json()["port"] for _ in range(3)]
            assert ports == [9001, 9002, 9003]
            down.add(B)  # kill -9: its turn goes to the next process
            ports = [(await http.post("/v1/messages/x/y/z")).json()["port"] for _ in range(3)]
            assert ports == [9001, 9003, 9003]
            assert transport.failovers == 1
            down.update({A, C})  # nobody up: the refusal reaches the sender
            with pytest.raises(httpx.ConnectError):
                await http.get("/v1/cluster")
            down.clear()
            pool.remove(C)
            seen.clear()
            await http.get("/v1/cluster")
            assert seen[-1] in (A, B)

    asyncio.run(scenario())


def test_a_failure_after_connecting_is_the_senders_to_judge() -> None:
    """A broken connection may have delivered the request: the pool does not resend it."""

    async def scenario() -> None:
        calls: list[str] = []

        def handle(request: httpx.Request) -> httpx.Response:
            calls.append(str(request.url.port))
            raise httpx.ReadError("connection reset", request=request)

        transport = FailoverTransport(IngressPool([A, B]), httpx.MockTransport(handle))
        async with httpx.AsyncClient(base_url="http://ingress", transport=transport) as http:
            with pytest.raises(httpx.ReadError):
                await http.post("/v1/messages/x/y/z", content=b"{}")
        assert calls == ["9001"]

    asyncio.run(scenario())


def _view(generation: int, coordinator: str, *members: tuple[str, str]) -> ClusterView:
    return ClusterView.parse(
        {
            "member": members[0][0],
            "coordinator": coordinator,
            "generation": generation,
            "last_checkpoint": None,
            "members": [
                {"id": m, "url": url + "/", "partitions": [i]} for i, (m, url) in enumerate(members)
            ],
        }
    )


def test_the_cluster_view_finds_members_by_url_and_sees_them_excluded() -> None:
    before = _view(3, "m-1", ("m-1", A), ("m-2", B), ("m-3", C))
    assert before.coordinator_url() == A.rstrip("/")
    member = before.member_at("http://127.0.0.1:9002")
    assert member is not None
    assert member.id == "m-2"
    assert member.partitions == (1,)
    assert before.member_at("http://127.0.0.1:9999") is None
    assert before.member_at("http://localhost:9003") == before.members[2]
    assert before.member_at("http://10.0.0.7:9003") is None
    # the same generation, or a later one that still holds the dead member: not yet
    assert not excluded(before, before, "m-2")
    assert not excluded(before, _view(4, "m-1", ("m-1", A), ("m-2", B)), "m-2")
    assert excluded(before, _view(4, "m-1", ("m-1", A), ("m-3", C)), "m-2")
    # a view from a member still behind (an older generation) is not the exclusion
    assert not excluded(before, _view(2, "m-1", ("m-1", A)), "m-2")


def test_the_view_reads_the_runtimes_status_answer() -> None:
    """The shape of ``runtime.cluster.status.describe_cluster``."""
    view = ClusterView.parse(
        {
            "mode": "cluster",
            "me": "m-2",
            "coordinator": "m-1",
            "generation": 7,
            "last_checkpoint": {"id": 41, "generation": 7, "time": "2026-12-04T22:11:55.000+00:00"},
            "partitions": 4,
            "members": [
                {"id": "m-1", "url": A, "partitions": [0, 1], "coordinator": True, "me": False},
                {"id": "m-2", "url": None, "partitions": [2], "coordinator": False, "me": True},
            ],
            "unowned": [3],
        }
    )
    assert (view.member, view.coordinator, view.generation) == ("m-2", "m-1", 7)
    assert view.last_checkpoint == 41
    assert view.unowned == (3,)
    assert view.coordinator_url() == A
    assert view.member_at(B) is None  # a member without a URL is found by none
