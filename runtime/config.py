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
from typing import Any

from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.dispatcher import DispatchConfig
from statefun.module_spec import ModuleSpec

DEFAULT_CALL_TIMEOUT = 30.0
"""Seconds a ``/v1/call`` waits for its reply unless it asks otherwise."""
MAX_CALL_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    max_message_bytes: int = 1 << 20
    """The largest message value accepted: at the HTTP ingress, and sent by a function."""
    max_state_bytes: int = 16 << 20
    """The largest value of one state; a result writing a larger one is refused."""
    storm_rate: float = 1000.0
    """Messages per second from functions to one function type above which a warning is
    logged (at most once a minute per type); 0 turns it off."""
    poll_max_wait: float = 0.2
    shutdown_grace: float = 5.0


EGRESS_RETENTION = 7 * 24 * 3600.0
"""Seconds the embedded egress topics and the dead-letter topic keep a record."""
KAFKA_MESSAGES_RETENTION = 30 * 24 * 3600.0
"""Seconds Kafka keeps the messages topic's records (its ``retention.ms`` at creation)."""


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


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """Who may use the ingress (``runtime.access``, docs/security.md)."""

    tokens_file: Path | None = None
    """The YAML list of tokens and their roles; None: every route is open, and the
    ingress binds loopback only unless ``insecure``."""
    allow_origins: tuple[str, ...] = ()
    """Browser origins (``https://app.example``) whose requests are taken, besides the
    ingress's own; a request from any other origin is refused."""
    insecure: bool = False
    """Serve on a non-loopback address without tokens (logged at WARNING on start)."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """How a process takes part in an application of several over Kafka."""

    enabled: bool = False
    """Join the application as one member of many (``runtime.cluster``); False: a lone
    process with its own checkpoint store."""
    url: str | None = None
    """The URL other members reach this process's ingress at; None: derived from the
    ingress's bind address (the host name when it binds every interface)."""
    session_timeout: float = 6.0
    """Seconds without a heartbeat after which Kafka drops a member (a killed process is
    noticed after about this long). A join waits half of it on the test broker."""
    heartbeat_interval: float = 1.0


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
    kafka_security: Mapping[str, Any] = field(default_factory=dict)
    """kafka-python's security settings (``security_protocol``, ``sasl_*``, ``ssl_*``)
    of every client of the runtime's own Kafka cluster: its log, the membership group,
    the ingresses and egresses naming no other address (``statefun run --kafka-config``;
    see ``statefun.kafka_properties``)."""
    checkpoint_dir: Path | None = None
    """The checkpoint store; None: ``<data_dir>/checkpoints``, or a temporary directory."""
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8090
    ingress_timeouts: IngressTimeouts = field(default_factory=IngressTimeouts)
    messages_partitions: int = 8
    app_id: str = "statefun"
    """Names the runtime's own topics and consumer group (see ``runtime.routing.Topics``)."""
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    idempotency_retention: float = 24 * 3600.0
    """Seconds an Idempotency-Key's answer is remembered."""
    egress_retention: float = EGRESS_RETENTION
    """Seconds the embedded egress topics and the dead-letter topic keep a record (on
    Kafka, their ``retention.ms`` when the runtime creates them)."""
    messages_retention: float = KAFKA_MESSAGES_RETENTION
    """On Kafka, the messages topic's ``retention.ms`` when the runtime creates it (0:
    forever); the embedded log drops what no retained checkpoint needs instead."""
    start_over: bool = False
    """Start the log over with an empty checkpoint store (``statefun run --start-over``):
    replay what came from outside, skip what the runtime produced (``runtime.identity``)."""
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
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    access: AccessConfig = field(default_factory=AccessConfig)


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
