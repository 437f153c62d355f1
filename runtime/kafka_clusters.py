"""Connections to the Kafka clusters a module names, one ``KafkaLog`` per address.

Kafka ingresses and egresses name a cluster by its ``address``, or name none and use
the runtime's own (``statefun run --kafka``). Connections are opened on first use,
shared, and closed with the runtime; the runtime's own log is reused, never closed here.
"""

from __future__ import annotations

from runtime.errors import NoKafkaCluster
from runtime.log import Log
from runtime.log.kafka import KafkaLog


class KafkaClusters:
    def __init__(self, own_log: Log, own_address: str | None):
        self._own_log = own_log
        self._own_address = own_address
        self._opened: dict[str, KafkaLog] = {}

    async def get(self, address: str | None, user: str) -> KafkaLog:
        """The cluster at ``address`` (None: the runtime's own); ``user`` names who asks."""
        address = address or self._own_address
        if address is None:
            raise NoKafkaCluster(
                f"{user} names no Kafka address and the runtime runs without Kafka; "
                "set the address in the module spec or start the runtime with --kafka"
            )
        if address == self._own_address and isinstance(self._own_log, KafkaLog):
            return self._own_log
        cluster = self._opened.get(address)
        if cluster is None:
            cluster = self._opened[address] = await KafkaLog.open(address)
        return cluster

    async def close(self) -> None:
        for cluster in self._opened.values():
            await cluster.close()
        self._opened.clear()
