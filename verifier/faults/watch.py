"""What the suite watches while faults run: the runtime's readiness (``GET /ready``,
polled every ``READY_POLL`` seconds, each change of status recorded with its time) and
its dead letters (``GET /v1/dead-letters``).

A runtime is ``down`` only after ``DOWN_AFTER`` polls in a row had no answer, as an
orchestrator's readiness probe counts failures (Kubernetes: three, by default) before it
takes an instance out of service. One poll unanswered within ``READY_TIMEOUT`` is kept
as a miss, with its reason: on a machine shared with other test workers the suite's own
event loop has been seen to stall for over a second."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from verifier.faults.load import KEEPALIVE, Load

READY_POLL = 0.15
READY_TIMEOUT = 1.0
"""A poll unanswered for this long is a miss."""
DOWN_AFTER = 2
"""Polls in a row without an answer that make the runtime ``down``."""
HEALTH = "/health"
DOWN = "down"


@dataclass
class ReadyWatch:
    """The status of ``GET /ready`` over time: ``200``, ``503 <reasons>``, ``down`` (no
    HTTP answer). A runtime without ``/ready`` (404) shows what its ``/health`` answers
    instead: ``/health 200``, ``/health 503``."""

    url: str
    changes: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, status) at each change."""
    supported: bool | None = None
    timeout: float = READY_TIMEOUT
    """Seconds a poll may go unanswered before it is a miss."""
    misses: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, why) of each poll that had no HTTP answer."""
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="ready-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _poll(self) -> None:
        # A session of its own: the polls must not queue behind the suite's other reads.
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE)
        unanswered = 0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            while True:
                status, body = await _get(http, self.url + "/ready")
                if status == 404:
                    self.supported = False
                    status, body = await _get(http, self.url + "/health")
                    seen = f"{HEALTH} {status}"
                else:
                    if status in (200, 503):
                        self.supported = True
                    seen = _status(status, body)
                if status == 0:
                    self.misses.append((time.monotonic(), str(body)))
                    unanswered += 1
                    if unanswered < DOWN_AFTER:
                        continue  # poll again at once: one miss is not down yet
                    seen = DOWN
                unanswered = 0
                self._record(seen)
                await asyncio.sleep(READY_POLL)

    def _record(self, status: str) -> None:
        if not self.changes or self.changes[-1][1] != status:
            self.changes.append((time.monotonic(), status))
            self._changed.set()

    async def wait_for(self, prefix: str, within: float) -> bool:
        """Wait (at most ``within`` seconds) until the status starts with ``prefix``."""
        try:
            async with asyncio.timeout(within):
                while not self.current.startswith(prefix):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    @property
    def current(self) -> str:
        return self.changes[-1][1] if self.changes else DOWN

    @property
    def ready(self) -> bool:
        """Ready now: ``/ready`` answers 200 (without ``/ready``: ``/health`` does)."""
        return self.current in ("200", f"{HEALTH} 200")

    def status_at(self, at: float) -> str:
        status = DOWN
        for when, s in self.changes:
            if when > at:
                break
            status = s
        return status

    def between(self, start: float, end: float) -> list[tuple[float, str]]:
        """The status at ``start`` and every change until ``end``, times relative to ``start``."""
        seen = [(0.0, self.status_at(start))]
        seen += [(when - start, s) for when, s in self.changes if start < when <= end]
        return seen

    def why_missed(self, start: float, end: float) -> list[str]:
        """Why each poll between ``start`` and ``end`` had no answer, times from ``start``."""
        return [f"@{when - start:.1f}s {why}" for when, why in self.misses if start < when <= end]

    def saw(self, prefix: str, start: float, end: float) -> bool:
        return any(s.startswith(prefix) for _, s in self.between(start, end))


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """(status, JSON body or None); (0, why) when no HTTP answer came."""
    started = time.monotonic()
    try:
        async with http.get(url) as answer:
            content = await answer.read()
    except (TimeoutError, aiohttp.ClientError) as e:
        # aiohttp's connection timeouts are TimeoutErrors too: the type tells them apart.
        return 0, f"{type(e).__name__} after {time.monotonic() - started:.2f} s: {e}"
    try:
        return answer.status, json.loads(content)
    except ValueError:
        return answer.status, None


def _status(status: int, body: Any) -> str:
    if status == 0:
        return DOWN
    if status == 503 and isinstance(body, dict) and isinstance(body.get("reasons"), dict):
        return "503 " + ",".join(sorted(body["reasons"])) if body["reasons"] else "503"
    return str(status)


DESCRIBED_CHANGES = 6


def describe(changes: list[tuple[float, str]]) -> str:
    """``200 -> 503 log @1.2s -> 200 @6.0s``; a status that flaps is cut short in the
    middle (``... 14 more ...``)."""
    if not changes:
        return "-"
    parts = [changes[0][1]]
    parts += [f"{s} @{t:.1f}s" for t, s in changes[1:]]
    if len(parts) > DESCRIBED_CHANGES:
        hidden = len(parts) - DESCRIBED_CHANGES + 1
        parts = [*parts[:3], f"... {hidden} more ...", *parts[-(DESCRIBED_CHANGES - 4) :]]
    return " -> ".join(parts)


@dataclass
class DeadLetterWatch:
    """The dead letters parked since the watch began."""

    load: Load
    next: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    seen_at: dict[int, float] = field(default_factory=dict)
    """Offset -> when the suite first saw the record."""

    async def begin(self) -> None:
        """Skip what is parked already."""
        while True:
            status, body = await self.load.get_json(f"/v1/dead-letters?from={self.next}&limit=1000")
            if status != 200 or not body or not body.get("records"):
                return
            self.next = int(body["next"])

    async def poll(self) -> None:
        status, body = await self.load.get_json(f"/v1/dead-letters?from={self.next}&limit=1000")
        if status != 200 or not isinstance(body, dict):
            return
        now = time.monotonic()
        for record in body.get("records", []):
            self.records.append(record)
            self.seen_at[int(record.get("offset", -1))] = now
        self.next = int(body.get("next", self.next))

    def targeting(self, target: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("target") == target]

    def under(self, function_type: str) -> list[dict[str, Any]]:
        return [
            r for r in self.records if str(r.get("target") or "").startswith(function_type + "/")
        ]
