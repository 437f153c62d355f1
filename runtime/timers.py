"""Delayed messages: held until due, then handed back to be routed like any other message.

Due times are wall-clock milliseconds, so a timer restored from a checkpoint after a
restart fires when it was meant to (at once, if that moment has passed). A pending
message with a cancellation token is indexed by (sender, token): cancellation is scoped
to the sending address, and best effort (a message already fired cannot be cancelled).
The pending timers are part of every checkpoint (:meth:`TimerService.pending`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable

from runtime.checkpoints.snapshot import PendingTimer
from statefun.address import Address


class TimerService:
    def __init__(self, fire: Callable[[PendingTimer], None]):
        self._fire = fire
        self._loop = asyncio.get_running_loop()
        # Keyed by a serial number: two timers may be equal (the same message sent twice).
        self._timers: dict[int, tuple[PendingTimer, asyncio.TimerHandle]] = {}
        self._by_token: dict[tuple[Address, str], int] = {}
        self._serials = itertools.count()
        self._held: list[int] | None = None

    def __len__(self) -> int:
        return len(self._timers)

    def has_token(self, sender: Address, token: str) -> bool:
        return (sender, token) in self._by_token

    def tokens_of(self, sender: Address) -> tuple[str, ...]:
        """The cancellation tokens of ``sender``'s pending delayed messages."""
        if not self._by_token:
            return ()
        return tuple(token for s, token in self._by_token if s == sender)

    def schedule(self, timer: PendingTimer) -> None:
        """Hold ``timer`` until it is due; its token must not be pending (see has_token)."""
        serial = next(self._serials)
        delay = max(0.0, (timer.due_ms - time.time() * 1000) / 1000)
        self._timers[serial] = (timer, self._loop.call_later(delay, self._due, serial))
        if timer.token:
            self._by_token[timer.sender, timer.token] = serial

    def cancel(self, sender: Address, token: str) -> bool:
        serial = self._by_token.pop((sender, token), None)
        if serial is None:
            return False
        self._timers.pop(serial)[1].cancel()
        if self._held is not None and serial in self._held:
            self._held.remove(serial)
        return True

    def hold(self) -> None:
        """Keep due timers from firing until :meth:`release` (while a restored worker
        replays the log: a cancellation in it must come before the timer it cancels, as it
        did the first time)."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for serial in sorted(held, key=lambda s: self._timers[s][0].due_ms):
            if serial in self._timers:
                self._due(serial)

    def _due(self, serial: int) -> None:
        if self._held is not None:
            self._held.append(serial)
            return
        timer, _ = self._timers.pop(serial)
        if timer.token:
            self._by_token.pop((timer.sender, timer.token), None)
        self._fire(timer)

    def pending(self) -> list[PendingTimer]:
        return [timer for timer, _ in self._timers.values()]

    def restore(self, timers: Iterable[PendingTimer]) -> None:
        for timer in timers:
            self.schedule(timer)

    def suspend(self) -> None:
        """Stop firing; what is pending stays pending (for a last checkpoint)."""
        for _, handle in self._timers.values():
            handle.cancel()

    def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._by_token.clear()
