"""Logs: the durable, partitioned record store under the runtime (see ``base``)."""

from runtime.log.base import (
    Log,
    LogConsumer,
    LogError,
    Record,
    StoredRecord,
    TopicMismatchError,
    TopicPartition,
    UnknownTopicError,
)

__all__ = [
    "Log",
    "LogConsumer",
    "LogError",
    "Record",
    "StoredRecord",
    "TopicMismatchError",
    "TopicPartition",
    "UnknownTopicError",
]
