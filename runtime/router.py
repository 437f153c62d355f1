"""The router: where a message, a delayed message's firing or an egress record goes.

Messages to function addresses are appended to the messages log, on the partition of
their target; messages to an ingress caller complete the waiting HTTP call; egress
records are appended to their egress's topic. The router checks routability before
anything is applied, so a result with an unroutable effect is refused whole.
"""

from __future__ import annotations

import asyncio

import msgpack

from runtime.envelope import Envelope
from runtime.log import Log, Record
from runtime.replies import ReplyWaiters
from runtime.routing import INGRESS_CALLER_TYPE, MESSAGES_TOPIC, egress_topic, partition_for
from statefun.address import Address, TypeName
from statefun.module_spec import ModuleSpec
from statefun.values import TypedValue


class Router:
    def __init__(self, log: Log, module: ModuleSpec, replies: ReplyWaiters, partitions: int):
        self._log = log
        self._module = module
        self._replies = replies
        self._partitions = partitions
        self._egress_topics = {e.id: egress_topic(e.id) for e in module.egresses}

    @property
    def partitions(self) -> int:
        return self._partitions

    async def create_topics(self) -> None:
        await self._log.ensure_topic(MESSAGES_TOPIC, self._partitions)
        for topic in self._egress_topics.values():
            await self._log.ensure_topic(topic, 1)

    def unroutable_target(self, target: Address) -> str | None:
        """Why a message to ``target`` cannot be routed, or None if it can."""
        function_type = target.function_type
        if function_type == INGRESS_CALLER_TYPE or self._module.endpoint_for(function_type):
            return None
        return f"no endpoint in the module spec serves function type {function_type}"

    def unknown_egress(self, egress_id: TypeName) -> str | None:
        if egress_id in self._egress_topics:
            return None
        return f"no egress {egress_id} is declared in the module spec"

    def send(
        self, target: Address, caller: Address | None, argument: TypedValue
    ) -> asyncio.Future[list[int]] | None:
        """Route a message; the append's future, or None if it completed an ingress call."""
        if target.function_type == INGRESS_CALLER_TYPE:
            self._replies.deliver(target, argument)
            return None
        envelope = Envelope(target, caller, argument)
        return self._log.append(
            MESSAGES_TOPIC, partition_for(target, self._partitions), [envelope.to_record()]
        )

    def emit(self, egress_id: TypeName, argument: TypedValue) -> asyncio.Future[list[int]]:
        value = msgpack.packb((argument.typename, argument.value), use_bin_type=True)
        return self._log.append(self._egress_topics[egress_id], 0, [Record(value=value)])

    async def read_egress(
        self, egress_id: TypeName, offset: int, max_records: int
    ) -> list[tuple[int, TypedValue]]:
        records = await self._log.read(self._egress_topics[egress_id], 0, offset, max_records)
        out = []
        for r in records:
            typename, value = msgpack.unpackb(r.value, raw=False)
            out.append((r.offset, TypedValue(typename, value)))
        return out
