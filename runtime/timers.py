"""Delayed messages: held until due, then handed back to be routed like any other message.

Due times are wall-clock milliseconds, so a timer restored from a checkpoint after a
restart fires when it was meant to (at once, if that moment has passed). A pending
message with a cancellation token is indexed by (sender, token): cancellation is scoped
to the sending address, and best effort (a message already fired cannot be cancelled).
The pending timers are part of every checkpoint (:meth:`TimerService.pending`).

After a restore, a timer that comes due may have to wait (:meth:`TimerService.hold`): a
cancellation among the messages being replayed must come before it, as it did the first
time. The wait is per sending address, since only the sender's own messages can cancel
its timers: one address held by a failure holds back no one else's timers.
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
        self._may_fire: Callable[[Address], bool] | None = None
        self._held: dict[Address, list[int]] = {}
        """Due timers waiting for their sender to be allowed to fire, by sender."""

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
        held = self._held.get(sender)
        if held is not None and serial in held:
            held.remove(serial)
            if not held:
                del self._held[sender]
        return True

    def hold(self, may_fire: Callable[[Address], bool]) -> None:
        """From now on a due timer fires only if ``may_fire(sender)``; otherwise it waits
        for :meth:`release` of its sender (or :meth:`release_all`)."""
        self._may_fire = may_fire

    def release(self, sender: Address) -> None:
        """Fire the sender's due timers that waited, if it may fire now."""
        if sender in self._held and (self._may_fire is None or self._may_fire(sender)):
            waiting = self._held.pop(sender)
            for serial in sorted(waiting, key=lambda s: self._timers[s][0].due_ms):
                if serial in self._timers:
                    self._fire_now(serial)

    def release_where(self, chosen: Callable[[Address], bool]) -> None:
        """:meth:`release` every waiting sender that ``chosen`` picks."""
        for sender in [s for s in self._held if chosen(s)]:
            self.release(sender)

    def release_all(self) -> None:
        """No more waiting: every due timer fires, and later ones as they come due."""
        self._may_fire = None
        for sender in list(self._held):
            self.release(sender)

    def _due(self, serial: int) -> None:
        sender = self._timers[serial][0].sender
        if self._may_fire is not None and (sender in self._held or not self._may_fire(sender)):
            self._held.setdefault(sender, []).append(serial)
            return
        self._fire_now(serial)

    def _fire_now(self, serial: int) -> None:
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
