"""The invocation protocol model: what the runtime sends a function endpoint, and what comes back.

One request carries one or more :class:`InvocationBatch` es, each for one address
served by the endpoint: the address's registered state and the messages waiting for it,
in order. The response carries one :class:`BatchOutcome` per batch, in the same order:

* :class:`InvocationResult` - the batch ran; its effects (state mutations, messages,
  delayed messages and cancellations, egress records);
* :class:`MissingStateSpecs` - the runtime lacks states the function declares; nothing
  ran, the runtime registers the specs and re-sends the same batch;
* :class:`FunctionFailure` - the function raised; nothing of the batch may be applied.

This module is pure data; codecs (``statefun.native_codec``, the StateFun protobuf
codec) turn it into bytes. It never does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from statefun.address import Address, TypeName
from statefun.values import TypedValue

__all__ = [
    "NO_EXPIRATION",
    "BatchOutcome",
    "DelayCancellation",
    "DelayedMessage",
    "EgressRecord",
    "Expiration",
    "ExpireMode",
    "FunctionFailure",
    "FunctionRequest",
    "FunctionResponse",
    "Invocation",
    "InvocationBatch",
    "InvocationResult",
    "MissingStateSpecs",
    "OutgoingMessage",
    "StateMutation",
    "StateSpec",
]


class ExpireMode(enum.IntEnum):
    """When a state value expires; the numbers are StateFun's ``ExpireMode``."""

    NONE = 0
    AFTER_WRITE = 1
    AFTER_CALL = 2


@dataclass(frozen=True, slots=True)
class Expiration:
    mode: ExpireMode = ExpireMode.NONE
    after_ms: int = 0


NO_EXPIRATION = Expiration()


@dataclass(frozen=True, slots=True)
class StateSpec:
    """A state a function declares: its name, value type and expiration."""

    name: str
    typename: str
    expiration: Expiration = NO_EXPIRATION


@dataclass(frozen=True, slots=True)
class Invocation:
    """One message for the target: who sent it (None for ingress) and its argument."""

    caller: Address | None
    argument: TypedValue


@dataclass(frozen=True, slots=True)
class InvocationBatch:
    """The messages waiting for one address, with the address's registered state.

    ``state`` holds every state the runtime has registered for the function type; a
    registered state without a value maps to ``None``. ``pending_tokens`` are the
    cancellation tokens of the target's delayed messages not yet delivered: a function
    must not send another delayed message with one of them (unless it cancels it first).
    """

    target: Address
    state: dict[str, TypedValue | None]
    invocations: list[Invocation]
    pending_tokens: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StateMutation:
    """The final value of a state changed by a batch; ``value is None`` deletes it."""

    name: str
    value: TypedValue | None


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    target: Address
    argument: TypedValue


@dataclass(frozen=True, slots=True)
class DelayedMessage:
    """A message to deliver after ``delay_ms``; a non-empty token lets the sender cancel it."""

    delay_ms: int
    target: Address
    argument: TypedValue
    cancellation_token: str | None = None


@dataclass(frozen=True, slots=True)
class DelayCancellation:
    """Cancel the sender's pending delayed message with this token (best effort)."""

    token: str


@dataclass(frozen=True, slots=True)
class EgressRecord:
    egress: TypeName
    argument: TypedValue


@dataclass(frozen=True, slots=True)
class InvocationResult:
    """The effects of a batch that ran. ``delayed`` keeps sends and cancellations in order."""

    mutations: list[StateMutation] = field(default_factory=list)
    messages: list[OutgoingMessage] = field(default_factory=list)
    delayed: list[DelayedMessage | DelayCancellation] = field(default_factory=list)
    egress: list[EgressRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MissingStateSpecs:
    specs: list[StateSpec]


@dataclass(frozen=True, slots=True)
class FunctionFailure:
    """The function raised while running the batch; no effect of the batch applies."""

    function_type: str
    address: Address
    error_type: str
    message: str

    def describe(self) -> str:
        return f"{self.function_type} at {self.address} raised {self.error_type}: {self.message}"


BatchOutcome = InvocationResult | MissingStateSpecs | FunctionFailure


@dataclass(frozen=True, slots=True)
class FunctionRequest:
    batches: list[InvocationBatch]


@dataclass(frozen=True, slots=True)
class FunctionResponse:
    outcomes: list[BatchOutcome]
