"""The command trees the verifier sends, shared by the generator, the oracle and the
function app.

A command is a JSON object ``{"id": ID, "ops": [OP, ...]}`` sent to an address of
``verify/counter``; ``ID`` is unique in a run (``"<tree>.<node>"``). Its ops run in
order, in one invocation:

``{"op": "inc"}``
    count += 1.
``{"op": "send", "to": ADDRESS_ID, "cmd": COMMAND}``
    send the command to ``verify/counter/ADDRESS_ID``.
``{"op": "send_after", "to": ..., "delay_ms": MS, "cmd": ..., "token": T}``
    send it after a delay; ``token`` (optional) is a cancellation token, unique in the run.
``{"op": "cancel", "token": T}``
    cancel this address's delayed send with token ``T``.
``{"op": "egress", "n": N}``
    emit ``{"cmd": ID, "at": ADDRESS_ID, "n": N, "nonce": RANDOM}`` to the embedded egress
    ``verify/out`` (and, in a run on Kafka, to the Kafka egress ``verify/kafka-out``).
``{"op": "verify", "expect": [ID, ...]}``
    a causal check: the listed commands (ancestors of this one that ran at this same
    address) must already be applied here; a missing one is recorded in the state
    ``violations``.
"""

from __future__ import annotations

from typing import Any

FUNCTION_TYPE = "verify/counter"
COMMAND_TYPE = "verify/Command"
EGRESS_ID = "verify/out"
KAFKA_EGRESS_ID = "verify/kafka-out"
RECORD_TYPE = "verify/Record"
REPLY_TYPE = "verify/Reply"
"""What a command sent by ``POST /v1/call`` answers: ``{"cmd": ID, "at": ADDRESS_ID}``."""
INGRESS_CALLER_TYPE = "statefun.ingress/caller"
"""The caller of a message sent by ``POST /v1/call`` (the runtime's ingress)."""

Command = dict[str, Any]
"""``{"id": str, "ops": [op, ...]}``; ops are JSON objects as described above."""


def address_id(index: int) -> str:
    return f"a{index}"
