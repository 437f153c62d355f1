"""Where a missing command went: its records in a Kafka application's messages log, and
the decisions that say which of them are live.

When the verifier ends with commands missing, the broker (in memory) and the runtime
processes are about to go away, and with them the evidence. :func:`trace` reads it
first: every record of ``<app>-messages`` (and of the dead letters) that carries a
missing command, with its partition, offset and tag (generation, epoch, producer); the
application's generations with the checkpoint each rolled its predecessor back to; and
what the last checkpoint holds of those partitions (read position, pending messages,
overflow cursors). A record whose tag the skip rule refuses was rolled-back work; one it
accepts was live and should have reached its function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from runtime.checkpoints.epochs import Tag
from runtime.checkpoints.snapshot import WORKER_PART, decode_worker_part
from runtime.cluster.decisions import ClusterState, DecisionLog
from runtime.cluster.partition_store import PartitionStore
from runtime.envelope import Envelope
from runtime.errors import MalformedEnvelope
from runtime.log import StoredRecord
from runtime.log.kafka import KafkaLog
from runtime.routing import Topics

MAX_IDS = 5
"""Commands traced, at most (the first few tell the story)."""


def _command_id(record: StoredRecord) -> str | None:
    """The id of the command a message record (or a dead letter of one) carries."""
    try:
        value = Envelope.from_record(record).argument.value
        command = json.loads(value) if value is not None else None
    except (MalformedEnvelope, ValueError):
        return None
    return command.get("id") if isinstance(command, dict) else None


async def _scan(
    log: KafkaLog,
    topic: str,
    found: dict[str, list[str]],
    describe: Callable[[int, StoredRecord], str],
) -> list[int]:
    """Add to ``found`` a description of every record of ``topic`` that names one of its
    commands; the topic's end offsets."""
    await log.open_topic(topic)
    ends = await log.end_offsets(topic)
    for partition, end in enumerate(ends):
        offset = 0
        while offset < end:
            records = await log.read(topic, partition, offset, 1000)
            if not records:
                break
            for record in records:
                offset = record.offset + 1
                places = found.get(_command_id(record) or "")
                if places is not None:
                    places.append(describe(partition, record))
    return ends


async def trace(bootstrap: str, app_id: str, command_ids: Iterable[str]) -> list[str]:
    """Lines that say where each of ``command_ids`` (at most :data:`MAX_IDS`) is in the
    messages log, and the generations of the application."""
    ids = list(command_ids)[:MAX_IDS]
    topics = Topics(app_id)
    log = await KafkaLog.open(bootstrap, client_id="verifier-forensics")
    try:
        state: ClusterState | None = None
        lines: list[str] = []
        if topics.decisions in await log.list_topics():  # a cluster (alone: no decisions)
            decisions = DecisionLog(log, topics.decisions)
            await decisions.open()
            state = decisions.state
            await decisions.close()
            lines.append(
                f"generation {state.generation}; rolled back to, per generation: "
                + ", ".join(f"{g}: {c}" for g, c in sorted(state.rolled_back_to.items()))
                + f"; highest checkpoint {state.highest_checkpoint}"
            )
        skip = state.skip_rule() if state is not None else None
        found: dict[str, list[str]] = {i: [] for i in ids}

        def message(partition: int, record: StoredRecord) -> str:
            tag = Tag.from_headers(record.headers)
            try:
                target = str(Envelope.from_record(record).target)
            except MalformedEnvelope:
                target = "?"
            where = (
                "no tag"
                if tag is None
                else f"generation {tag.generation}, epoch {tag.epoch}, from {tag.producer}"
            )
            live = "" if skip is None else "; live" if skip.accepts(tag) else "; rolled back"
            return f"{partition}@{record.offset} to {target} ({where}{live})"

        def dead_letter(partition: int, record: StoredRecord) -> str:
            return f"dead letter {partition}@{record.offset}"

        ends = await _scan(log, topics.messages, found, message)
        await _scan(log, topics.dead_letters, found, dead_letter)
        for command_id, places in found.items():
            lines.append(
                f"{command_id}: "
                + ("; ".join(places) if places else "in no record of the messages log")
            )
        lines.append("messages log ends: " + ", ".join(f"{p}: {e}" for p, e in enumerate(ends)))
        manifest = state.manifest if state is not None else None
        if manifest is not None:
            store = PartitionStore(log, app_id, len(ends))
            partitions = sorted(
                {
                    int(place.split("@")[0])
                    for places in found.values()
                    for place in places
                    if not place.startswith("dead")
                }
            )
            for p in partitions:
                chain = manifest.chains.get(p)
                if not chain:
                    lines.append(f"checkpoint {manifest.checkpoint}: no snapshot of partition {p}")
                    continue
                restored = await store.read(chain)
                part = decode_worker_part(restored.parts[WORKER_PART])
                lines.append(
                    f"checkpoint {manifest.checkpoint}, partition {p}: read position "
                    f"{part.positions.get(p)}, pending "
                    f"{sorted(m.message_id[1] for m in part.pending)[:20]}, overflow "
                    f"{[(o.offset, str(o.address or o.function_type)) for o in part.overflow]}"
                )
        return lines
    finally:
        await log.close()
