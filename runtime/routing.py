"""Where records go: topic names, record keys and partitions.

The partition of an address is Kafka's default partitioner (murmur2 of the key,
positive, modulo the partition count) on the address's key, for every log, so any
Kafka client writing with the same key lands where the runtime reads.
"""

from __future__ import annotations

import re

from kafka.partitioner.default import murmur2

from statefun.address import Address, TypeName

MESSAGES_TOPIC = "statefun-messages"
CONSUMER_GROUP = "statefun-runtime"

# The function type of the addresses the HTTP ingress gives its /v1/call requests.
INGRESS_CALLER_TYPE = TypeName("statefun.ingress", "caller")

_TOPIC_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]")


def address_key(address: Address) -> bytes:
    return f"{address.namespace}/{address.type}/{address.id}".encode()


def partition_for_key(key: bytes, partitions: int) -> int:
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def partition_for(address: Address, partitions: int) -> int:
    return partition_for_key(address_key(address), partitions)


def egress_topic(egress_id: TypeName) -> str:
    """The log topic holding an embedded egress (names differing only in unsafe
    characters collide; the module loader rejects such pairs)."""
    return "statefun-egress." + _TOPIC_UNSAFE.sub("_", f"{egress_id.namespace}.{egress_id.name}")
