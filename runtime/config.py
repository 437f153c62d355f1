"""The runtime's configuration, each default defined once.

:class:`RuntimeConfig` configures one runtime process; the components it holds have
their own settings next to their code (``WorkerConfig`` in ``runtime.worker``,
``CheckpointConfig`` in ``runtime.checkpoints.coordinator``). The CLI reads its
defaults from these classes (:func:`default_of`), so a default is written once. This
module stays light to import: ``statefun send`` shows these defaults in its help
without loading the server stack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.checkpoints.coordinator import CheckpointConfig
from statefun.module_spec import ModuleSpec

if TYPE_CHECKING:
    from runtime.worker import WorkerConfig

DEFAULT_CALL_TIMEOUT = 30.0
"""Seconds a ``/v1/call`` waits for its reply unless it asks otherwise."""
MAX_CALL_TIMEOUT = 300.0


def _worker_config() -> WorkerConfig:
    # Imported when a config is made, not when this module is: the worker pulls in the
    # HTTP client stack, which the CLI's other commands do without.
    from runtime.worker import WorkerConfig

    return WorkerConfig()


@dataclass(frozen=True, slots=True)
class IngressTimeouts:
    """Bounds on the ingress's HTTP connections, in seconds. A connection that breaks
    one is closed (with a 408 JSON answer when a request was under way), so slow or
    stalled clients cannot hold connections and memory forever."""

    idle: int = 5
    """A connection with no request under way (keep-alive) is closed after this."""
    request_head: float = 10.0
    """From a request's first byte until its head (request line and headers) is in."""
    body: float = 30.0
    """From the end of a request's head until its whole body is in."""


@dataclass(frozen=True)
class RuntimeConfig:
    module: ModuleSpec
    module_file: Path | None = None
    """Where ``module`` was read from (for the startup summary)."""
    data_dir: Path | None = None
    """Where the embedded log lives; None keeps the log in memory (tests)."""
    kafka: str | None = None
    """Bootstrap servers of the Kafka cluster holding the log; None: the embedded log."""
    kafka_options: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``KafkaLog.open`` for the runtime's log (timeouts, batching),
    over that method's defaults."""
    checkpoint_dir: Path | None = None
    """The checkpoint store; None: ``<data_dir>/checkpoints``, or a temporary directory."""
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8090
    ingress_timeouts: IngressTimeouts = field(default_factory=IngressTimeouts)
    messages_partitions: int = 8
    app_id: str = "statefun"
    """Names the runtime's own topics and consumer group (see ``runtime.routing.Topics``)."""
    max_body_bytes: int = 1 << 20
    worker: WorkerConfig = field(default_factory=_worker_config)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    idempotency_retention: float = 24 * 3600.0
    """Seconds an Idempotency-Key's answer is remembered."""
    rollback_backoff: float = 0.5
    """Seconds before resuming after a rollback; doubles per rollback in a row."""
    rollback_backoff_max: float = 30.0
    restart_backoff_max: float = 5.0
    """The longest wait between two attempts to start a generation when one failed to
    start (the log or the store still failing), so that service resumes within seconds
    once the fault clears."""
    shutdown_timeout: float = 8.0
    """Seconds from SIGTERM until everything is stopped, at most: every step of stopping
    is bounded within it, and steps that do not fit are skipped."""
    ingress_shutdown_grace: float = 3.0
    """Of ``shutdown_timeout``, what requests in flight get to finish."""


def default_of(config: type[Any], name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``."""
    for f in dataclasses.fields(config):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise ValueError(f"{config.__name__}.{name} has no default")
