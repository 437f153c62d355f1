"""Where records go: topic names, record keys and partitions.

Every topic the runtime owns is named after its application id (``--app-id``, default
``statefun``), as Kafka Streams does, so several applications can share one Kafka
cluster. The partition of an address is Kafka's default partitioner (murmur2 of the
key, positive, modulo the partition count) on the address's key, for every log, so any
Kafka client writing with the same key lands where the runtime reads.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from kafka.partitioner.default import murmur2

from runtime.errors import ConfigurationError
from statefun.address import Address, TypeName

# The function type of the addresses the HTTP ingress gives its /v1/call requests.
INGRESS_CALLER_TYPE = TypeName("statefun.ingress", "caller")

TOPIC_KINDS = (
    "messages",
    "egress",
    "dead-letters",
    "control",
    "decisions",
    "checkpoints",
    "members",
)
"""What the runtime's own topics hold, by the name after ``<app-id>-`` (``egress`` covers
the embedded egresses and the exactly-once egress markers; ``decisions`` and
``checkpoints`` every topic of theirs)."""
OTHER_TOPIC = "other"
"""Any topic not the runtime's own (a Kafka egress's on the same cluster, ...)."""

_TOPIC_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]")
_APP_ID = re.compile(r"^[a-zA-Z0-9._-]{1,100}$")


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of the runtime's own topics, and its consumer group, for one application."""

    app_id: str = "statefun"

    def __post_init__(self) -> None:
        if not _APP_ID.match(self.app_id):
            raise ConfigurationError(
                f"application id {self.app_id!r} must be 1-100 letters, digits, '.', '_' or '-'"
            )

    @property
    def messages(self) -> str:
        return f"{self.app_id}-messages"

    @property
    def dead_letters(self) -> str:
        return f"{self.app_id}-dead-letters"

    @property
    def control(self) -> str:
        """One partition: the log's identity, the id of the checkpoint store that holds
        its checkpoints, and each generation it began (see ``runtime.identity``)."""
        return f"{self.app_id}-control"

    @property
    def decisions(self) -> str:
        """One partition: where each epoch of a cluster application's decision log
        starts; epoch k's decisions are in ``<decisions>-<k>`` (see
        ``runtime.cluster.decisions``)."""
        return f"{self.app_id}-decisions"

    @property
    def consumer_group(self) -> str:
        return self.app_id

    def egress_markers(self, cluster: int) -> str:
        """The marker topic of the exactly-once Kafka egresses on the ``cluster``-th Kafka
        cluster the module names (see ``runtime.log.kafka_transactions``). The members of
        an application share it: their markers are never read back (the decision log says
        what is out), and a topic per member would pile up with every process start."""
        return f"{self.app_id}-egress-published-{cluster}"

    def egress_transactional_id(self, cluster: int, member: str | None = None) -> str:
        """The Kafka transactional id of the exactly-once egresses on the ``cluster``-th
        Kafka cluster; in a cluster of runtimes, one per ``member``."""
        if member is None:
            return f"{self.app_id}-egress-{cluster}"
        return f"{self.app_id}-egress-{cluster}-{member}"

    def kind_of(self, topic: str) -> str:
        """Which of ``TOPIC_KINDS`` ``topic`` is, or ``OTHER_TOPIC``."""
        prefix = f"{self.app_id}-"
        if not topic.startswith(prefix):
            return OTHER_TOPIC
        rest = topic[len(prefix) :]
        for kind in TOPIC_KINDS:
            if rest == kind or rest.startswith((f"{kind}-", f"{kind}.")):
                return kind
        return OTHER_TOPIC

    def egress(self, egress_id: TypeName) -> str:
        """The topic of an embedded egress (ids differing only in characters Kafka does not
        allow in topic names share a topic; the router refuses such pairs)."""
        safe = _TOPIC_UNSAFE.sub("_", f"{egress_id.namespace}.{egress_id.name}")
        return f"{self.app_id}-egress.{safe}"


def address_key(address: Address) -> bytes:
    return f"{address.namespace}/{address.type}/{address.id}".encode()


def type_key_prefix(function_type: TypeName) -> bytes:
    """What the key of every address of ``function_type`` starts with (and no other's: a
    function type's namespace and name hold no ``/``). Keys are UTF-8, so their byte
    order is the codepoint order of the ids after the prefix."""
    return f"{function_type.namespace}/{function_type.name}/".encode()


@functools.lru_cache(maxsize=1 << 16)
def partition_for_key(key: bytes, partitions: int) -> int:
    # kafka-python's murmur2 is pure Python (~15 us); the same addresses come back often.
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def partition_for(address: Address, partitions: int) -> int:
    return partition_for_key(address_key(address), partitions)
