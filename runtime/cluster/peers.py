"""Peers: replies and requests across the members of one application, over HTTP.

Every member's ingress is also its peer endpoint (its *peer URL*). A member reaches
the others for two things:

* **Replies.** A message to a caller address held by another member (see
  :func:`runtime.replies.caller_home`) is posted to that member's
  ``POST /v1/internal/replies`` (:data:`REPLIES_PATH`; msgpack, :func:`encode_reply`),
  which hands it to its waiting calls with its epoch tag, so a committed call still
  holds it until that epoch's checkpoint commits. Delivery is fire and forget: a reply
  to a member that is gone is dropped, and its caller's HTTP client gets its timeout.
* **Checkpoint demand.** A member whose work waits for a commit (a held committed
  reply, an exactly-once egress record) while another member coordinates posts an
  empty ``POST /v1/internal/checkpoint-demand`` (:data:`DEMAND_PATH`) to the
  coordinator, which then starts its next take as soon as the one in progress is done
  (``runtime.checkpoints.coordinator.CheckpointSchedule``). At most one is in flight per
  member; demand raised meanwhile is sent once more when it is answered. A lost one
  costs latency only: the coordinator's interval still bounds the wait. (HTTP rather
  than a decision-log record: a hint, not a decision, so every member need not fold it,
  and it does not grow the log.)
* **Forwarded requests.** The ingress forwards a keyed POST and a state read to the
  owner of the target's partition (:meth:`Peers.forward`), marked with the
  :data:`FORWARDED_HEADER`, so a member that does not own the partition either (the
  view is changing) answers 503 rather than forward again. A forwarded request keeps
  the caller's ``Authorization``: the owner checks it again.

With tokens (``runtime.access``), a reply and a demand carry the application's member token
(``role: member`` in the tokens file every member reads): their routes take no other.

Who owns what and where a member listens is the :class:`ClusterView`'s to say;
:class:`StaticView` is a fixed one (tests, and one-member setups).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import msgpack
from httpx_aiohttp import AiohttpTransport

from runtime.checkpoints.epochs import Tag
from runtime.errors import BadInput, PeerUnreachable
from statefun.address import Address
from statefun.values import TypedValue

log = logging.getLogger(__name__)

REPLIES_PATH = "/v1/internal/replies"
DEMAND_PATH = "/v1/internal/checkpoint-demand"
FORWARDED_HEADER = "statefun-forwarded"
"""Set on a request one member forwards to another: the forwarding member's id."""
REPLY_CONTENT_TYPE = "application/msgpack"

CONNECT_TIMEOUT = 2.0
"""Seconds to connect to a member: a member that does not answer in that time is gone."""
REPLY_TIMEOUT = 5.0
"""Seconds a reply delivery may take, end to end."""
MAX_CONNECTIONS = 32
MAX_KEEPALIVE = 32
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)
"""Headers that belong to one connection (or that httpx sets itself), never forwarded."""


class ClusterView(Protocol):
    """What one member knows of the application's members now."""

    @property
    def me(self) -> str:
        """This process's member id."""

    def owner(self, partition: int) -> str | None:
        """The member owning messages partition ``partition``; None while unknown (a
        rollback under way, a member gone and its partitions not yet given out)."""

    def url(self, member: str) -> str | None:
        """The peer URL (ingress base URL) of ``member``, or None if it is not a member."""

    def members(self) -> Sequence[str]:
        """Every member's id."""

    def coordinator(self) -> str | None:
        """The member driving checkpoints and rollbacks; None while unknown."""


@dataclass
class StaticView:
    """A fixed view: ``owners[p]`` owns partition p; ``urls`` maps every member to its
    peer URL. Mutable, so a test can change ownership under a running member."""

    me: str
    owners: Mapping[int, str | None]
    urls: Mapping[str, str]
    coordinating: str | None = None
    """The coordinator (default: the first member of ``urls``)."""

    def owner(self, partition: int) -> str | None:
        return self.owners.get(partition)

    def url(self, member: str) -> str | None:
        return self.urls.get(member)

    def members(self) -> Sequence[str]:
        return list(self.urls)

    def coordinator(self) -> str | None:
        if self.coordinating is not None:
            return self.coordinating
        return next(iter(self.urls), None)


def encode_reply(address: Address, value: TypedValue, tag: Tag | None) -> bytes:
    """The body of a reply delivery (``POST`` :data:`REPLIES_PATH`)."""
    packed: bytes = msgpack.packb(
        {
            "address": [address.namespace, address.type, address.id],
            "typename": value.typename,
            "value": value.value,
            "tag": None if tag is None else [tag.generation, tag.epoch, tag.producer],
        },
        use_bin_type=True,
    )
    return packed


def decode_reply(body: bytes) -> tuple[Address, TypedValue, Tag | None]:
    """The reply a delivery carries; :class:`BadInput` if the body is not one."""
    try:
        fields = msgpack.unpackb(body, raw=False)
        namespace, type_, id_ = fields["address"]
        raw_tag = fields["tag"]
        tag = None if raw_tag is None else Tag(int(raw_tag[0]), int(raw_tag[1]), str(raw_tag[2]))
        return Address(namespace, type_, id_), TypedValue(fields["typename"], fields["value"]), tag
    except Exception as e:
        raise BadInput(400, "bad_reply", f"not a reply delivery: {e}") from None


@dataclass(frozen=True, slots=True)
class PeerRequest:
    """An ingress request to forward as it came."""

    method: str
    raw_path: bytes
    """The path as the client sent it (percent-encoding kept: an address id may hold '/')."""
    query: bytes
    headers: Sequence[tuple[str, str]]
    body: bytes
    timeout: float
    """Seconds to wait for the owner's answer (a call waits for its reply there)."""


@dataclass(frozen=True, slots=True)
class PeerResponse:
    """The owner's answer to a forwarded request, to pass on as it is."""

    status: int
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)
    body: bytes = b""


class Peers:
    """This member's client of the other members (one pooled HTTP client)."""

    def __init__(
        self,
        view: ClusterView,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        credentials: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``credentials``: the member token to send with a reply now (None: none)."""
        self.view = view
        self._credentials = credentials
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE
        )
        # aiohttp underneath, as for function calls: httpx's own pool costs several
        # times the CPU per request under load (bench/README.md).
        self._client = httpx.AsyncClient(
            transport=transport or AiohttpTransport(limits=limits),
            timeout=httpx.Timeout(REPLY_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=limits,
        )
        self._deliveries: set[asyncio.Task[None]] = set()
        self._demanding: asyncio.Task[None] | None = None
        self._demand_again = False

    def deliver_reply(
        self, member: str, address: Address, value: TypedValue, tag: Tag | None
    ) -> None:
        """Send a reply to the member holding its call, in the background."""
        task = asyncio.create_task(self._deliver(member, address, value, tag))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self, member: str, address: Address, value: TypedValue, tag: Tag | None
    ) -> None:
        url = self.view.url(member)
        if url is None:
            log.debug("reply to %s dropped: %s is not a member", address, member)
            return
        headers = {"content-type": REPLY_CONTENT_TYPE, FORWARDED_HEADER: self.view.me}
        if (token := self._credentials()) is not None:
            headers["authorization"] = f"Bearer {token}"
        try:
            response = await self._client.post(
                f"{url.rstrip('/')}{REPLIES_PATH}",
                content=encode_reply(address, value, tag),
                headers=headers,
            )
        except httpx.HTTPError as e:
            log.debug("reply to %s dropped: %s at %s: %s", address, member, url, e)
            return
        if response.status_code >= 300:
            log.debug("reply to %s dropped: %s answered %d", address, member, response.status_code)

    def demand_checkpoint(self, coordinator: str) -> None:
        """Ask ``coordinator`` to start its next checkpoint soon, in the background (one
        request in flight at a time; demand raised meanwhile sends one more)."""
        if self._demanding is not None:
            self._demand_again = True
            return
        self._demanding = asyncio.create_task(self._demand(coordinator), name="checkpoint-demand")

    async def _demand(self, coordinator: str) -> None:
        try:
            while True:
                self._demand_again = False
                url = self.view.url(coordinator)
                if url is None:
                    return
                headers = {FORWARDED_HEADER: self.view.me}
                if (token := self._credentials()) is not None:
                    headers["authorization"] = f"Bearer {token}"
                try:
                    await self._client.post(f"{url.rstrip('/')}{DEMAND_PATH}", headers=headers)
                except httpx.HTTPError as e:
                    log.debug("checkpoint demand to %s dropped: %s", coordinator, e)
                if not self._demand_again:
                    return
        finally:
            self._demanding = None

    async def forward(self, member: str, request: PeerRequest) -> PeerResponse:
        """``request`` sent to ``member``'s ingress, and its answer;
        :class:`PeerUnreachable` if the member is unknown or does not answer."""
        url = self.view.url(member)
        if url is None:
            raise PeerUnreachable(f"{member} is not a member of the application")
        target = httpx.URL(url).copy_with(
            raw_path=request.raw_path + (b"?" + request.query if request.query else b"")
        )
        headers = [(k, v) for k, v in request.headers if k.lower() not in _HOP_BY_HOP]
        headers = [(k, v) for k, v in headers if k.lower() != FORWARDED_HEADER]
        headers.append((FORWARDED_HEADER, self.view.me))
        try:
            response = await self._client.request(
                request.method,
                target,
                content=request.body,
                headers=headers,
                timeout=httpx.Timeout(request.timeout, connect=CONNECT_TIMEOUT),
            )
        except httpx.HTTPError as e:
            raise PeerUnreachable(
                f"{member} at {url} did not answer: {type(e).__name__}: {e}"
            ) from None
        return PeerResponse(
            response.status_code,
            tuple((k, v) for k, v in response.headers.multi_items() if k not in _HOP_BY_HOP),
            response.content,
        )

    async def close(self) -> None:
        """Drop the replies still being delivered and close the connections."""
        tasks = list(self._deliveries)
        if self._demanding is not None:
            tasks.append(self._demanding)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()
