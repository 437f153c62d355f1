"""What a runtime reports about itself to operators, as JSON-ready dicts: its checkpoints
and rollbacks, its dead letters with their decoded payloads and what was done with them,
and its function types' health.

One shape, read one way, for every reader: the HTTP API serves these dicts as they are
(``GET /v1/checkpoints``, ``GET /v1/dead-letters``, ``GET /v1/admin/functions``, in
``runtime.ingress``) and the web console renders them (``runtime.console``). In a
cluster the checkpoints, rollbacks and dead letters are the application's (its records
and its dead-letter topic); the health is this process's.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runtime.dead_letters import PARKED, DeadLetter
from runtime.health import FunctionTypeHealth
from runtime.http_values import value_to_json

if TYPE_CHECKING:
    from runtime.app import RuntimeBase

ROLLBACKS_SHOWN = 20
"""The most recent rollbacks a checkpoints report lists."""


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601, UTC, to the millisecond."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


async def checkpoints_report(runtime: RuntimeBase) -> dict[str, Any]:
    """The generation and epoch now, the completed checkpoints still kept (oldest first)
    and the last :data:`ROLLBACKS_SHOWN` rollbacks with their causes."""
    manifests = await runtime.records.manifests()
    rollbacks = await runtime.records.rollbacks()
    clock = runtime.clock
    return {
        "generation": clock.generation if clock else None,
        "epoch": clock.epoch if clock else None,
        "checkpoints": [
            {
                "id": m.checkpoint,
                "time": iso_time(m.created_ms),
                "generation": m.generation,
                "size_bytes": m.size_bytes,
                "duration_ms": m.duration_ms,
                "addresses": m.addresses,
            }
            for m in manifests
        ],
        "rollbacks": [
            {
                "generation": r.generation,
                "rolled_back_to": r.rolled_back_to,
                "time": iso_time(r.at_ms),
                "reason": r.reason,
                "address": r.cause_address,
                "messages": list(r.cause_messages),
            }
            for r in rollbacks[-ROLLBACKS_SHOWN:]
        ],
    }


async def dead_letters_report(runtime: RuntimeBase, from_: int, limit: int) -> dict[str, Any]:
    """At most ``limit`` dead letters from offset ``from_``, decoded, each with its status
    (parked, replayed, discarded); ``next``: the offset to read on from."""
    skip = runtime.clock.skip if runtime.clock else None
    letters, next_offset = await runtime.dead_letters.read(from_, limit, skip)
    marks = await runtime.records.dead_letter_marks([d.offset for d in letters])
    return {
        "records": [_dead_letter_json(d, marks.get(d.offset, PARKED)) for d in letters],
        "next": next_offset,
    }


def _dead_letter_json(d: DeadLetter, status: str) -> dict[str, Any]:
    """A dead letter: why, from where, to what, and its message decoded (or, for a record
    that is no message, its key and value as they came, base64)."""
    out: dict[str, Any] = {
        "offset": d.offset,
        "time": iso_time(d.timestamp_ms),
        "kind": d.kind,
        "status": status,
        "reason": d.reason,
        "source": d.source,
        "origin": d.origin,
        "target": None if d.target is None else str(d.target),
        "caller": None if d.caller is None else str(d.caller),
        "egress": None if d.egress is None else str(d.egress),
        "message": None if d.argument is None else value_to_json(d.argument),
    }
    if d.argument is None:  # not a message: the record as it came
        out["key"] = None if d.key is None else base64.b64encode(d.key).decode()
        out["value"] = base64.b64encode(d.value).decode()
    return out


def functions_report(runtime: RuntimeBase) -> list[dict[str, Any]]:
    """The function types that are failing, unavailable or paused in this process."""
    return [_function_health_json(f) for f in runtime.health.functions()]


def _function_health_json(f: FunctionTypeHealth) -> dict[str, Any]:
    return {
        "function_type": f.function_type,
        "failing_addresses": f.failing_addresses,
        "unavailable": f.unavailable,
        "paused": f.paused,
        "dead_lettered": f.dead_lettered,
        "last_error": f.last_error,
        "failing_since": None if f.failing_since_ms is None else iso_time(f.failing_since_ms),
    }
