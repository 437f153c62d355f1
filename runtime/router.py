"""The router: where a message (from a function, an ingress or a timer) goes.

Messages to function addresses are appended to the messages log, on the partition of
their target; messages to an ingress caller complete the waiting HTTP call, here or, in a
cluster, at the member holding it (see ``runtime.replies.caller_home``). The worker
asks the router about routability before applying anything, so a result with an
unroutable message is refused whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from runtime.checkpoints.epochs import Tag
from runtime.cluster.peers import Peers
from runtime.envelope import Envelope
from runtime.log import Log, Record
from runtime.replies import ReplyWaiters, caller_home
from runtime.routing import INGRESS_CALLER_TYPE, Topics, partition_for
from statefun.address import Address
from statefun.module_spec import ModuleSpec
from statefun.values import TypedValue

logger = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        log: Log,
        module: ModuleSpec,
        replies: ReplyWaiters,
        topics: Topics,
        partitions: int,
        *,
        peers: Peers | None = None,
    ):
        """``peers``: the other members of the cluster (None: this process is alone)."""
        self._log = log
        self._module = module
        self._replies = replies
        self.topics = topics
        self._partitions = partitions
        self._peers = peers

    @property
    def partitions(self) -> int:
        return self._partitions

    async def create_topics(self) -> None:
        await self._log.ensure_topic(self.topics.messages, self._partitions)

    def unroutable_target(self, target: Address) -> str | None:
        """Why a message to ``target`` cannot be routed, or None if it can."""
        function_type = target.function_type
        if function_type == INGRESS_CALLER_TYPE or self._module.endpoint_for(function_type):
            return None
        return f"no endpoint in the module spec serves function type {function_type}"

    def send(
        self,
        target: Address,
        caller: Address | None,
        argument: TypedValue,
        *,
        tag: tuple[str, bytes] | None = None,
    ) -> asyncio.Future[list[int]] | None:
        """Route a message; the append's future, or None if it completed an ingress call.
        ``tag`` is the producer's epoch tag header (None for input from outside)."""
        if target.function_type == INGRESS_CALLER_TYPE:
            self._reply(target, argument, Tag.from_headers((tag,)) if tag else None)
            return None
        return self.append(target, caller, argument, tag=tag)[1]

    def _reply(self, caller: Address, value: TypedValue, tag: Tag | None) -> None:
        """Complete a call: here, or at the member its caller address names."""
        peers = self._peers
        home = None if peers is None else caller_home(caller)
        if peers is None or home is None:
            self._replies.deliver(caller, value, tag)
            return
        view = peers.view
        member = view.owner(home) if isinstance(home, int) else home
        if member == view.me:
            self._replies.deliver(caller, value, tag)
        elif member is None:
            # Ownership is changing: a rollback follows, whose replay sends it again.
            logger.debug("reply to %s dropped: partition %s has no owner now", caller, home)
        else:
            peers.deliver_reply(member, caller, value, tag)

    def append(
        self,
        target: Address,
        caller: Address | None,
        argument: TypedValue,
        *,
        tag: tuple[str, bytes] | None = None,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> tuple[int, asyncio.Future[list[int]]]:
        """Append a message to a function address: its partition, and the append's future.
        ``headers`` go with the record (besides the tag)."""
        partition = partition_for(target, self._partitions)
        record = Envelope(target, caller, argument).to_record(
            (tag, *headers) if tag is not None else headers
        )
        return partition, self._log.append(self.topics.messages, partition, [record])

    def append_many(
        self, messages: Sequence[tuple[Address, TypedValue, tuple[tuple[str, bytes], ...]]]
    ) -> tuple[list[tuple[int, int]], dict[int, asyncio.Future[list[int]]]]:
        """Append messages from outside (target, value, headers), one append per partition,
        all issued now (so the embedded log commits them together): each message's
        partition and index in its partition's append, and each partition's append."""
        records: dict[int, list[Record]] = {}
        placed = []
        for target, value, headers in messages:
            partition = partition_for(target, self._partitions)
            batch = records.setdefault(partition, [])
            placed.append((partition, len(batch)))
            batch.append(Envelope(target, None, value).to_record(headers))
        appends = {p: self._log.append(self.topics.messages, p, rs) for p, rs in records.items()}
        return placed, appends

    async def flush(self) -> None:
        """Return once every message sent so far is durable."""
        await self._log.flush()
