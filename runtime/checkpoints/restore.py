"""The checkpoint a generation resumes from, chosen and decoded whole before it is used.

The newest completed checkpoint is the one to resume from. All of its state, its
idempotency keys and every part of it are decoded before the new generation is recorded. A checkpoint that does
not decode (damaged bytes in the store) is given up for the next older retained one
only if its commit released nothing to the outside (no egress record, no reply held
for commit or given to a retried call: the manifest's ``released``): the rollback
record then names the older one, so the newer one's output in the log is skipped and
its work is done again, once. Otherwise the start is refused with one line saying
which checkpoint, what it released and what the operator can do. This module never
writes: the caller records the generation (``CheckpointStore.begin_generation``).

Decoding a large state takes a while: it logs how far it got every few seconds
(``runtime.progress``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.checkpoints.snapshot import (
    EGRESS_PART,
    INGRESS_PART_PREFIX,
    KEYS_PART,
    WORKER_PART,
    EgressItem,
    WorkerPart,
    decode_egress_items,
    decode_positions,
    decode_worker_part,
)
from runtime.checkpoints.store import CheckpointStore
from runtime.errors import StoreDamaged
from runtime.idempotency import Answer, decode_floors, decode_rows
from runtime.progress import Progress, logged
from runtime.state import StateStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RestorePoint:
    """A checkpoint decoded whole (``checkpoint`` 0: none, start from the beginning)."""

    checkpoint: int
    state: StateStore = field(default_factory=StateStore)
    worker: WorkerPart | None = None
    egress: list[EgressItem] = field(default_factory=list)
    """The exactly-once egress records the checkpoint holds, published or not."""
    readers: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    """The Kafka ingress readers' positions, by participant name."""
    keys: dict[str, Answer] = field(default_factory=dict)
    """The idempotency-key table."""
    key_floors: dict[int, int] = field(default_factory=dict)
    """Where records of keys held at the checkpoint may be, below its read positions."""
    parts: dict[str, bytes] = field(default_factory=dict)
    """The parts this module does not decode, by participant name: their owners do."""
    given_up: Sequence[int] = ()
    """Newer checkpoints that did not decode and were given up for this one."""


def _decode(
    checkpoint: int,
    state: list[tuple[bytes, bytes]],
    keys: list[tuple[bytes, bytes]],
    parts: dict[str, bytes],
) -> RestorePoint:
    point = RestorePoint(checkpoint)
    what = f"restoring the state of checkpoint {checkpoint}"
    point.state.load(state, Progress(what, len(state), "addresses", logged(log)))
    point.keys = decode_rows(keys)
    for name, data in parts.items():
        if name == WORKER_PART:
            point.worker = decode_worker_part(data)
        elif name == EGRESS_PART:
            point.egress = decode_egress_items(data)
        elif name == KEYS_PART:
            point.key_floors = decode_floors(data)
        elif name.startswith(INGRESS_PART_PREFIX):
            point.readers[name] = decode_positions(data)
        else:
            point.parts[name] = data
    return point


def _problem(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


async def restore_point(store: CheckpointStore) -> RestorePoint:
    """The newest retained checkpoint that decodes and may be resumed from (see the
    module docstring); :class:`StoreDamaged` if there is none."""
    given_up: list[int] = []
    problems: list[str] = []
    for manifest in reversed(await store.manifests()):
        checkpoint = manifest.checkpoint
        state = await store.load_state(checkpoint)
        keys = await store.load_keys(checkpoint)
        parts = await store.load_parts(checkpoint)
        try:
            point = await asyncio.to_thread(_decode, checkpoint, state, keys, parts)
        except Exception as e:
            problem = _problem(e)
            if manifest.released:
                raise StoreDamaged(
                    f"checkpoint {checkpoint} in {store.path} cannot be decoded ({problem}), "
                    f"and its commit released output to the outside ({manifest.released}): "
                    "resuming from an older checkpoint would produce that output twice. "
                    f"Restore {store.path.parent} from a backup, or move it away and start "
                    "with --start-over"
                ) from None
            log.warning(
                "checkpoint %d cannot be decoded (%s); its commit released nothing, so "
                "resuming from the one before it",
                checkpoint,
                problem,
            )
            given_up.append(checkpoint)
            problems.append(problem)
            continue
        point.given_up = tuple(given_up)
        return point
    if given_up:
        raise StoreDamaged(
            f"no retained checkpoint in {store.path} can be decoded (checkpoints "
            f"{', '.join(map(str, given_up))}: {problems[0]}): restore "
            f"{store.path.parent} from a backup, or move it away and start with --start-over"
        )
    # No checkpoint yet: where a store that started a log over reads from (if it did).
    origin = await store.load_parts(0)
    try:
        return await asyncio.to_thread(_decode, 0, [], [], origin)
    except Exception as e:
        raise StoreDamaged(
            f"the start-over positions in {store.path} cannot be decoded ({_problem(e)}): "
            f"move {store.path.parent} away and start with --start-over again"
        ) from None
