"""Which runtime a configuration asks for: a process alone (``runtime.app.Runtime``), or a
member of an application of several over Kafka (``runtime.cluster.node.ClusterRuntime``)."""

from __future__ import annotations

from runtime.app import Runtime, RuntimeBase
from runtime.cluster.node import ClusterRuntime
from runtime.config import RuntimeConfig


async def open_runtime(config: RuntimeConfig) -> RuntimeBase:
    """Open the runtime ``config`` describes (its log, and its store when alone)."""
    if config.cluster.enabled:
        return await ClusterRuntime.open_member(config)
    return await Runtime.open(config)
