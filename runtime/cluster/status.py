"""What ``GET /v1/cluster`` and ``statefun status`` show of an application: its members
(id, peer URL, the partitions each owns), the coordinator, the generation and the last
completed checkpoint. One process alone is a cluster of one member, :data:`LOCAL_MEMBER`,
owning every partition and coordinating itself."""

from __future__ import annotations

from typing import Literal, TypedDict

from runtime.cluster.peers import ClusterView
from runtime.reports import iso_time

LOCAL_MEMBER = "local"
"""The member id of a runtime that is not part of a cluster."""


class CheckpointStatus(TypedDict):
    id: int
    generation: int
    time: str
    """When it was taken, ISO 8601 (UTC, milliseconds)."""


class MemberStatus(TypedDict):
    id: str
    url: str | None
    partitions: list[int]
    """The messages partitions it owns, ascending."""
    coordinator: bool
    me: bool
    """Whether it is the member that answered."""


class ClusterStatus(TypedDict):
    mode: Literal["single", "cluster"]
    me: str
    coordinator: str | None
    generation: int | None
    """None before the first generation began."""
    last_checkpoint: CheckpointStatus | None
    partitions: int
    """The messages topic's partition count."""
    members: list[MemberStatus]
    """Ordered by id; a member owning nothing is listed too."""
    unowned: list[int]
    """Partitions nobody owns now (a rollback under way)."""


def checkpoint_status(checkpoint: int, generation: int, created_ms: int) -> CheckpointStatus:
    return {"id": checkpoint, "generation": generation, "time": iso_time(created_ms)}


def describe_cluster(
    view: ClusterView,
    partitions: int,
    *,
    mode: Literal["single", "cluster"],
    generation: int | None,
    last_checkpoint: CheckpointStatus | None,
) -> ClusterStatus:
    owned: dict[str, list[int]] = {member: [] for member in view.members()}
    unowned = []
    for partition in range(partitions):
        owner = view.owner(partition)
        if owner is None:
            unowned.append(partition)
        else:
            owned.setdefault(owner, []).append(partition)
    coordinator = view.coordinator()
    return {
        "mode": mode,
        "me": view.me,
        "coordinator": coordinator,
        "generation": generation,
        "last_checkpoint": last_checkpoint,
        "partitions": partitions,
        "members": [
            {
                "id": member,
                "url": view.url(member),
                "partitions": owned[member],
                "coordinator": member == coordinator,
                "me": member == view.me,
            }
            for member in sorted(owned)
        ],
        "unowned": unowned,
    }
