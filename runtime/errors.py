"""The runtime's error tree, beside the contract's (``statefun.errors``).

Everything the runtime raises on purpose derives from :class:`StatefunRuntimeError`, itself a
:class:`~statefun.errors.StatefunError`::

    StatefunRuntimeError
    ├── ConfigurationError        the runtime cannot start as configured (also a ValueError);
    │   │                         the message says what to change
    │   ├── DirectoryInUse        another process holds a data or checkpoint directory
    │   │   ├── DataDirectoryInUse
    │   │   └── CheckpointStoreInUse
    │   ├── NoKafkaCluster        a Kafka ingress or egress names no cluster and --kafka is unset
    │   ├── ModuleMismatch        the process runs another module than its application
    │   └── IngressBindFailed     the ingress cannot listen on its host and port
    ├── LogError                  the log failed to make records durable, or to read them;
    │   │                         retryable: a new generation reopens the log
    │   ├── UnknownTopicError
    │   └── TopicMismatchError
    ├── MembershipError           this process could not join its application's group
    ├── StoreError                the checkpoint store failed to read or write; retryable
    │   └── StoreDamaged          a file of the store, or a snapshot's records in the partition
    │                             checkpoint store, is damaged: not retryable, the message
    │                             names which and what to do
    ├── CallFailed                a function call produced no valid answer (``protocol_violation``:
    │                             the endpoint answered, but broke the protocol)
    ├── BadInput                  an ingress request cannot become a message (carries its HTTP status)
    ├── IdempotencyConflict       an Idempotency-Key was used before for another request
    ├── CheckpointNotRetained     state as of a checkpoint that is not (or no longer) retained
    ├── StateSpecConflict         a function declared a registered state with another type
    ├── MalformedEnvelope         a record of the messages log is not an envelope
    ├── MalformedDecision         a record of the decision log is not a decision
    └── ShuttingDown              the runtime is stopping; calls waiting for replies end

Which errors a caller handles: a :class:`ConfigurationError` or :class:`StoreDamaged`
stops the start with one line; a :class:`LogError` or :class:`StoreError` at run time
degrades the process until a new generation succeeds; a :class:`CallFailed` is a failed
attempt of a function call, contained to the addresses it carried.
"""

from __future__ import annotations

from statefun.errors import StatefunError

__all__ = [
    "BadInput",
    "CallFailed",
    "CheckpointNotRetained",
    "CheckpointStoreInUse",
    "ConfigurationError",
    "DataDirectoryInUse",
    "DirectoryInUse",
    "IdempotencyConflict",
    "IngressBindFailed",
    "LogError",
    "MalformedDecision",
    "MalformedEnvelope",
    "MembershipError",
    "ModuleMismatch",
    "NoKafkaCluster",
    "ShuttingDown",
    "StateSpecConflict",
    "StatefunRuntimeError",
    "StoreDamaged",
    "StoreError",
    "TopicMismatchError",
    "UnknownTopicError",
]


class StatefunRuntimeError(StatefunError):
    """Base of every error the runtime raises on purpose."""


class ConfigurationError(StatefunRuntimeError, ValueError):
    """The runtime cannot start as configured; the message says what to change."""


class DirectoryInUse(ConfigurationError):
    """Another process holds the directory's lock."""


class DataDirectoryInUse(DirectoryInUse):
    """Another runtime process holds the data directory."""


class CheckpointStoreInUse(DirectoryInUse):
    """Another runtime process holds the checkpoint directory."""


class NoKafkaCluster(ConfigurationError):
    """A Kafka ingress or egress names no cluster, and the runtime has none (``--kafka``)."""


class ModuleMismatch(ConfigurationError):
    """The process runs another module than the application it would join (its
    fingerprint differs from the one the application's decision log began with)."""


class IngressBindFailed(ConfigurationError):
    """The ingress cannot listen on its host and port (taken, or not this machine's)."""


class LogError(StatefunRuntimeError):
    """The log failed to make records durable or to read them."""


class UnknownTopicError(LogError):
    """The topic does not exist."""


class TopicMismatchError(LogError):
    """The topic exists with another partition count than the one asked for."""


class MembershipError(StatefunRuntimeError):
    """This process could not join its application's group (``<app>-members``)."""


class StoreError(StatefunRuntimeError):
    """The checkpoint store failed to read or write."""


class StoreDamaged(StoreError):
    """A file of the checkpoint store, or a snapshot's records in the partition checkpoint
    store, is damaged; the message names it and what to do."""


class CallFailed(StatefunRuntimeError):
    """A call did not produce a valid response; ``protocol_violation`` if the endpoint
    answered with something that breaks the protocol (rather than failing to answer)."""

    def __init__(self, reason: str, *, protocol_violation: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.protocol_violation = protocol_violation


class BadInput(StatefunRuntimeError):
    """An HTTP request body or parameter that cannot become a message."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


class IdempotencyConflict(StatefunRuntimeError):
    """The key was used before for a different request."""


class CheckpointNotRetained(StatefunRuntimeError):
    """State as of checkpoint ``checkpoint`` was asked for, but it is not one of the
    ``retained`` checkpoints (never taken, or dropped since)."""

    def __init__(self, checkpoint: int, retained: list[int]):
        kept = ", ".join(map(str, retained)) or "none"
        super().__init__(f"checkpoint {checkpoint} is not retained; retained: {kept}")
        self.checkpoint = checkpoint
        self.retained = retained


class StateSpecConflict(StatefunRuntimeError, ValueError):
    """A function declared a state under a registered name with another type."""


class MalformedEnvelope(StatefunRuntimeError, ValueError):
    """A record in the messages log is not an envelope."""


class MalformedDecision(StatefunRuntimeError, ValueError):
    """A record in the decision log is not a decision this runtime can read."""


class ShuttingDown(StatefunRuntimeError):
    """The runtime is stopping; calls waiting for replies are answered now."""


class PeerUnreachable(StatefunRuntimeError):
    """Another member of the application did not answer a forwarded request (it may be
    gone: the cluster's view is changing)."""
