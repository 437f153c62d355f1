"""Connections to the Kafka clusters a module names, one ``KafkaLog`` per address.

Kafka ingresses and egresses name a cluster by its ``address``, or name none and use
the runtime's own (``statefun run --kafka``), and the security settings of their
``properties`` (``statefun.kafka_properties``). Connections are opened on first use, one
per address and security settings, shared, and closed with the runtime. The runtime's
own log (its address, with the settings of ``--kafka-config``) is reused when an
ingress or egress names its address with no security settings or the same ones, and is
never closed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.errors import NoKafkaCluster
from runtime.log import Log
from runtime.log.kafka import KafkaLog

Security = tuple[tuple[str, Any], ...]
"""kafka-python's security settings, as the module spec keeps them."""


class KafkaClusters:
    def __init__(
        self, own_log: Log, own_address: str | None, own_security: Mapping[str, Any] | None = None
    ):
        self._own_log = own_log
        self._own_address = own_address
        self._own_security = dict(own_security or {})
        self._opened: dict[tuple[str, Security], KafkaLog] = {}

    async def get(self, address: str | None, user: str, security: Security = ()) -> KafkaLog:
        """The cluster at ``address`` (None: the runtime's own) reached with ``security``;
        ``user`` names who asks."""
        address = address or self._own_address
        if address is None:
            raise NoKafkaCluster(
                f"{user} names no Kafka address and the runtime runs without Kafka; "
                "set the address in the module spec or start the runtime with --kafka"
            )
        if (
            address == self._own_address
            and isinstance(self._own_log, KafkaLog)
            and (not security or dict(security) == self._own_security)
        ):
            return self._own_log
        cluster = self._opened.get((address, security))
        if cluster is None:
            cluster = await KafkaLog.open(address, security=dict(security))
            self._opened[address, security] = cluster
        return cluster

    async def close(self) -> None:
        for cluster in self._opened.values():
            await cluster.close()
        self._opened.clear()
