"""Delayed messages: held until due, then handed back to be routed like any other message.

A pending message with a cancellation token is indexed by (sender, token):
cancellation is scoped to the sending address, and best effort (a message already
fired cannot be cancelled). Timers live in memory for now; they become part of the
checkpoints with global checkpointing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from statefun.address import Address
from statefun.protocol import DelayedMessage


class DuplicateCancellationToken(ValueError):
    """The sender already has a pending delayed message with this token."""


@dataclass(slots=True, eq=False)
class _Timer:
    sender: Address
    message: DelayedMessage
    handle: asyncio.TimerHandle | None = None


Fire = Callable[[Address, DelayedMessage], None]


class TimerService:
    def __init__(self, fire: Fire):
        self._fire = fire
        self._loop = asyncio.get_running_loop()
        self._by_token: dict[tuple[Address, str], _Timer] = {}
        self._timers: set[_Timer] = set()

    @property
    def pending(self) -> int:
        return len(self._timers)

    def has_token(self, sender: Address, token: str) -> bool:
        return (sender, token) in self._by_token

    def schedule(self, sender: Address, message: DelayedMessage) -> None:
        token = message.cancellation_token
        if token and (sender, token) in self._by_token:
            raise DuplicateCancellationToken(
                f"{sender} already has a pending delayed message with cancellation token {token!r}"
            )
        timer = _Timer(sender, message)
        timer.handle = self._loop.call_later(message.delay_ms / 1000.0, self._due, timer)
        if token:
            self._by_token[sender, token] = timer
        self._timers.add(timer)

    def cancel(self, sender: Address, token: str) -> bool:
        timer = self._by_token.pop((sender, token), None)
        if timer is None or timer.handle is None:
            return False
        timer.handle.cancel()
        self._timers.discard(timer)
        return True

    def _due(self, timer: _Timer) -> None:
        token = timer.message.cancellation_token
        if token:
            self._by_token.pop((timer.sender, token), None)
        self._timers.discard(timer)
        self._fire(timer.sender, timer.message)

    def close(self) -> None:
        for timer in self._timers:
            if timer.handle is not None:
                timer.handle.cancel()
        self._timers.clear()
        self._by_token.clear()
