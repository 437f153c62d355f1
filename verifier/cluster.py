"""What the verifier needs to drive an application of several runtime processes: the
ingress pool the load goes through (round robin over the live processes, failing over
on a refused connection), what ``GET /v1/cluster`` says, and the schedule of membership
faults (``kill -9`` of a worker and of the coordinator, a process joining, one leaving).

A request that could not connect sent nothing, so the pool tries the next process at
once. Any other failure may have reached a process: only the sender knows whether the
request may be sent again (it can, with its ``Idempotency-Key``), so the pool passes it
on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

KILL_WORKER = "kill-worker"
"""``kill -9`` of a member that is not the coordinator, then a new process in its place."""
KILL_COORDINATOR = "kill-coordinator"
"""``kill -9`` of the coordinator, then a new process in its place."""
JOIN = "join"
"""One more process joins the application."""
LEAVE = "leave"
"""A member that is not the coordinator is stopped with SIGTERM and not restarted."""
MEMBERSHIP_FAULTS = (KILL_WORKER, KILL_COORDINATOR, JOIN, LEAVE)


class IngressPool:
    """The ingress base URLs of the runtime processes that are up, taken in turn."""

    def __init__(self, urls: Iterable[str] = ()) -> None:
        self._urls: list[str] = []
        self._turn = 0
        for url in urls:
            self.add(url)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self._urls)

    def add(self, url: str) -> None:
        if url not in self._urls:
            self._urls.append(url)

    def remove(self, url: str) -> None:
        if url in self._urls:
            self._urls.remove(url)

    def rotation(self) -> list[str]:
        """Every URL once, starting with the next one in turn (which then moves on)."""
        if not self._urls:
            return []
        start = self._turn % len(self._urls)
        self._turn += 1
        return self._urls[start:] + self._urls[:start]


class FailoverTransport(httpx.AsyncBaseTransport):
    """Sends each request to the next process of the pool; on a connection refused (or
    a connect timeout: nothing was sent) tries the others in turn, and raises the last
    such error when none could be reached. Requests name any host: it is replaced."""

    def __init__(self, pool: IngressPool, inner: httpx.AsyncBaseTransport | None = None):
        self.pool = pool
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.failovers = 0
        """Requests answered by another process because the one in turn refused them."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        refused: httpx.TransportError | None = None
        for url in self.pool.rotation():
            target = httpx.URL(url)
            request.url = request.url.copy_with(
                scheme=target.scheme, host=target.host, port=target.port
            )
            request.headers["host"] = target.netloc.decode("ascii")
            try:
                response = await self.inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                refused = e
                continue
            self.failovers += refused is not None
            return response
        if refused is None:
            raise httpx.ConnectError("no runtime process is up", request=request)
        raise refused

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True, slots=True)
class ClusterMember:
    id: str
    url: str
    partitions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One answer of ``GET /v1/cluster`` (``runtime.cluster.status``)."""

    member: str
    """The member that answered."""
    coordinator: str | None
    generation: int | None
    last_checkpoint: int | None
    """The id of the last completed checkpoint."""
    members: tuple[ClusterMember, ...]
    unowned: tuple[int, ...] = ()
    """Partitions nobody owns (a rollback under way)."""

    @classmethod
    def parse(cls, answer: Mapping[str, Any]) -> ClusterView:
        members = tuple(
            ClusterMember(
                str(m["id"]),
                str(m.get("url") or "").rstrip("/"),
                tuple(int(p) for p in m["partitions"]),
            )
            for m in answer.get("members") or []
        )
        generation = answer.get("generation")
        last = answer.get("last_checkpoint")
        if isinstance(last, Mapping):
            last = last.get("id")
        coordinator = answer.get("coordinator")
        return cls(
            str(answer.get("me", answer.get("member"))),
            None if coordinator is None else str(coordinator),
            None if generation is None else int(generation),
            None if last is None else int(last),
            members,
            tuple(int(p) for p in answer.get("unowned") or ()),
        )

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(m.id for m in self.members)

    def member_at(self, url: str) -> ClusterMember | None:
        """The member whose peer URL is ``url`` (the same host and port)."""
        return next((m for m in self.members if same_origin(m.url, url)), None)

    def coordinator_url(self) -> str | None:
        for member in self.members:
            if member.id == self.coordinator:
                return member.url
        return None


@dataclass(frozen=True, slots=True)
class ScheduledFault:
    at: float
    """Progress (commands applied / total) at which it happens."""
    kind: str


def membership_schedule(kills: int, rng: random.Random) -> list[ScheduledFault]:
    """``kills`` kills (of a worker first, then of the coordinator, in turn), a join after
    the first kill and a leave after the first half of the kills (rounded up), spread
    evenly over 10%-90% of the run's progress with some jitter, in that order."""
    kinds = [KILL_WORKER if k % 2 == 0 else KILL_COORDINATOR for k in range(kills)]
    kinds.insert(min(1, len(kinds)), JOIN)
    kinds.insert(min(1 + (kills + 1) // 2 + 1, len(kinds)), LEAVE)
    spacing = 0.8 / len(kinds)
    # Jitter of at most 0.3 spacing each way keeps the order.
    points = [0.1 + spacing * (i + 0.5 + rng.uniform(-0.3, 0.3)) for i in range(len(kinds))]
    return [ScheduledFault(p, k) for p, k in zip(points, kinds, strict=True)]


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0", "::1", "::"})
"""Names of this machine a peer URL may use: the verifier's processes all run here."""


def same_origin(a: str, b: str) -> bool:
    """The two URLs name the same host (any name of this machine for both) and port."""
    if not a or not b:
        return False
    x, y = httpx.URL(a), httpx.URL(b)
    same_host = x.host == y.host or {x.host, y.host} <= LOCAL_HOSTS
    return same_host and x.port == y.port


def excluded(before: ClusterView, after: ClusterView, dead: str) -> bool:
    """``after`` is a later generation than ``before``, without the member ``dead``."""
    return (
        after.generation is not None
        and (before.generation is None or after.generation > before.generation)
        and dead not in after.ids
    )


def describe(views: Sequence[ClusterView]) -> str:
    """The last view, for the summary: generation, coordinator, members and partitions."""
    if not views:
        return "-"
    view = views[-1]
    members = ", ".join(f"{m.id} {len(m.partitions)}p" for m in view.members)
    return (
        f"generation {view.generation}, coordinator {view.coordinator}, last checkpoint "
        f"{view.last_checkpoint}; members: {members or '-'}"
    )
