"""Where a missing command went: its records in a Kafka application's messages log, and
the decisions that say which of them are live.

When the verifier ends with commands missing, the broker (in memory) and the runtime
processes are about to go away, and with them the evidence. :func:`trace` reads it
first: every record of ``<app>-messages`` whose payload names a missing command, with
its partition, offset and tag (generation, epoch, producer), and the application's
generations with the checkpoint each rolled its predecessor back to. A record whose tag
the last generation's skip rule refuses was rolled-back work; one it accepts was live
and should have reached its function.
"""

from __future__ import annotations

from collections.abc import Iterable

from runtime.checkpoints.epochs import Tag
from runtime.cluster.decisions import DecisionLog
from runtime.envelope import Envelope
from runtime.errors import MalformedEnvelope
from runtime.log.kafka import KafkaLog
from runtime.routing import Topics

MAX_IDS = 5
"""Commands traced, at most (the first few tell the story)."""


def _names(payload: bytes, command_id: str) -> bool:
    """Whether ``payload`` holds ``command_id`` as a whole string (not a prefix of a
    longer id: the next byte is not part of an id)."""
    raw = command_id.encode()
    start = payload.find(raw)
    while start >= 0:
        end = start + len(raw)
        if end == len(payload) or not (payload[end : end + 1].isdigit() or payload[end] == 46):
            return True
        start = payload.find(raw, start + 1)
    return False


async def trace(bootstrap: str, app_id: str, command_ids: Iterable[str]) -> list[str]:
    """Lines that say where each of ``command_ids`` (at most :data:`MAX_IDS`) is in the
    messages log, and the generations of the application."""
    ids = list(command_ids)[:MAX_IDS]
    topics = Topics(app_id)
    log = await KafkaLog.open(bootstrap, client_id="verifier-forensics")
    try:
        decisions = DecisionLog(log, topics.decisions)
        await decisions.open()
        state = decisions.state
        lines = [
            f"generation {state.generation}; rolled back to, per generation: "
            + ", ".join(f"{g}: {c}" for g, c in sorted(state.rolled_back_to.items()))
            + f"; highest checkpoint {state.highest_checkpoint}"
        ]
        skip = state.skip_rule()
        found: dict[str, list[str]] = {i: [] for i in ids}
        ends = await log.end_offsets(topics.messages)
        for partition, end in enumerate(ends):
            offset = 0
            while offset < end:
                records = await log.read(topics.messages, partition, offset, 1000)
                if not records:
                    break
                for record in records:
                    offset = record.offset + 1
                    value = record.value or b""
                    for command_id in ids:
                        if not _names(value, command_id):
                            continue
                        tag = Tag.from_headers(record.headers)
                        try:
                            target = str(Envelope.from_record(record).target)
                        except MalformedEnvelope:
                            target = "?"
                        where = (
                            "no tag"
                            if tag is None
                            else f"generation {tag.generation}, epoch {tag.epoch}, "
                            f"from {tag.producer}"
                        )
                        live = "live" if skip.accepts(tag) else "rolled back"
                        found[command_id].append(
                            f"{partition}@{record.offset} to {target} ({where}; {live})"
                        )
        for command_id, places in found.items():
            lines.append(
                f"{command_id}: "
                + ("; ".join(places) if places else "in no record of the messages log")
            )
        lines.append("messages log ends: " + ", ".join(f"{p}: {e}" for p, e in enumerate(ends)))
        return lines
    finally:
        await log.close()
