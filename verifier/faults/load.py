"""The steady load and its accounting: closed-loop ``POST /v1/messages`` of increments to
the healthy counter addresses, every one with an ``Idempotency-Key`` and retried with
that key until it is accepted, so the suite knows exactly how many increments each
address must end with; and reads of the counters back (``GET /v1/state``).

A POST is *accepted* when it answers 202 (also a replay of an earlier attempt,
``Idempotent-Replayed``). A 503, another 5xx, a broken or refused connection or a
timeout is retried with the same key (honouring ``Retry-After``, up to a second), so it
is never ambiguous; a 4xx is a refusal (counted, never retried). Every answer is
classified (:class:`Answers`) so that the suite can tell a 503 JSON with
``Retry-After`` from a plain-text 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl

from verifier.fault_functions import COUNTER, OP_TYPE

REQUEST_TIMEOUT = 10.0
GIVE_UP_AFTER = 180.0
"""A message still not accepted after this long is *unresolved* (the run then fails):
long enough to span any restart the suite does."""
SCAN_CONCURRENCY = 32
"""State reads in flight at once, over every scan (a window's end and the lag's follower
read together): they wait for a slot here, where waiting is not part of a read's
timeout, rather than in the connection pool."""
READ_POOL = SCAN_CONCURRENCY + 8
"""Connections for reads: the scans' and room for the suite's single reads beside them."""
KEEPALIVE = 2.0
"""Seconds a pooled connection to the runtime may sit idle before the suite drops it:
under the ingress's own bound (5 s), so that the suite never reuses a connection the
runtime is closing at that moment (a read that would fail for nothing)."""
RELAY_EVERY = 4
"""One message in this many of the steady load is a relay: an increment that reaches its
address through a message a function sent (the runtime's own record in the log)."""
ACCEPTED = "202"


@dataclass
class Answers:
    """How the ingress answered POSTs: counts per kind, and one example of each kind
    that is not a 202."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, example: str = "") -> None:
        self.counts[kind] += 1
        if kind != ACCEPTED and kind not in self.examples:
            self.examples[kind] = example[:300]

    @property
    def failed(self) -> int:
        """POSTs that were not accepted (each retried)."""
        return sum(n for kind, n in self.counts.items() if kind != ACCEPTED)

    @property
    def server_errors(self) -> int:
        """5xx answers of any kind."""
        return sum(n for kind, n in self.counts.items() if kind[:1] == "5")

    @property
    def plain_errors(self) -> int:
        """5xx answers that are not JSON ``{"error", "detail"}``."""
        return sum(n for kind, n in self.counts.items() if kind.endswith("plain"))

    @property
    def unavailable_without_retry_after(self) -> int:
        return self.counts["503 JSON without Retry-After"]

    def summary(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())


def classify(status: int, headers: Mapping[str, str], body: bytes) -> str:
    if status == 202:
        return ACCEPTED
    try:
        parsed = json.loads(body)
        is_json = isinstance(parsed, dict) and "error" in parsed
    except ValueError:
        is_json = False
    if status == 503 and is_json:
        return (
            "503 JSON + Retry-After" if "retry-after" in headers else "503 JSON without Retry-After"
        )
    if status >= 500:
        return f"{status} JSON" if is_json else f"{status} plain"
    return str(status)


class Unresolved(Exception):
    """A message was neither accepted nor refused within ``GIVE_UP_AFTER`` seconds."""


class Load:
    """The load generator and the ledger of accepted messages, for one runtime URL."""

    def __init__(self, url: str, *, concurrency: int, rate: float | None = None):
        self.url = url
        self.concurrency = concurrency
        self.rate = rate
        """Messages per second the load offers at most (None: as fast as it is answered)."""
        self.accepted: Counter[tuple[str, str]] = Counter()
        """(function type, id) -> messages accepted."""
        self.refused: Counter[tuple[str, str]] = Counter()
        self.unresolved = 0
        self.answers = Answers()
        self.failed_reads: list[str] = []
        """Why each read that had no HTTP answer failed."""
        self._scan_slots = asyncio.Semaphore(SCAN_CONCURRENCY)
        self._session: aiohttp.ClientSession | None = None
        self._reader: aiohttp.ClientSession | None = None
        self._main: Senders | None = None

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=2.0)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.concurrency + 16, keepalive_timeout=KEEPALIVE
            ),
            timeout=timeout,
        )
        # Reads have a pool of their own: they must not queue behind the load.
        self._reader = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=READ_POOL, keepalive_timeout=KEEPALIVE),
            timeout=timeout,
        )

    async def close(self) -> None:
        await self.stop(grace=5.0)
        for session in (self._session, self._reader):
            if session is not None:
                await session.close()

    # --- the steady load ------------------------------------------------------------

    def start(self, targets: Iterable[str]) -> None:
        """Send increments to ``targets`` (ids of ``faults/counter``), round robin, from
        ``concurrency`` senders, until :meth:`stop`."""
        self._main = self.senders(
            COUNTER, targets, {"op": "inc"}, self.concurrency, self.rate, relay_every=RELAY_EVERY
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop the steady load (see :meth:`Senders.stop`)."""
        main, self._main = self._main, None
        if main is not None:
            await main.stop(grace)

    def offered(self) -> float | None:
        """Increments per second the steady load offers at its pace (None: not paced): a
        relay is an increment at its address and one at its target."""
        if self.rate is None:
            return None
        return self.rate * (1 + 1 / RELAY_EVERY)

    def behind(self) -> float:
        """Seconds the steady load is behind its pace (0 when on it, or not paced)."""
        return 0.0 if self._main is None else self._main.behind()

    def most_busy(self) -> tuple[int, int] | None:
        """(the most of the steady load's senders that waited for an answer at once since
        the last call, how many there are); None without a steady load."""
        main = self._main
        return None if main is None else (main.most_busy(), main.concurrency)

    def senders(
        self,
        function_type: str,
        targets: Iterable[str],
        op: Mapping[str, Any],
        concurrency: int,
        rate: float | None = None,
        *,
        relay_every: int = 0,
    ) -> Senders:
        """``concurrency`` tasks sending ``op`` to ``targets`` round robin, at most
        ``rate`` messages per second (None: as fast as they are answered); with
        ``relay_every`` N, every Nth message is a relay to the next target instead."""
        return Senders(self, function_type, list(targets), op, concurrency, rate, relay_every)

    # --- one message ------------------------------------------------------------------

    async def send(self, function_type: str, id_: str, op: Mapping[str, Any]) -> bool:
        """Send one message until it is accepted (True) or refused with a 4xx (False);
        counted in :attr:`accepted` (a relay also at its target). Raises nothing: a
        message given up on is counted in :attr:`unresolved`."""
        key = uuid.uuid4().hex
        path = f"/v1/messages/{function_type}/{id_}"
        body = json.dumps(op, separators=(",", ":")).encode()
        deadline = time.monotonic() + GIVE_UP_AFTER
        backoff = 0.05
        while True:
            try:
                status, wait = await self._attempt(path, body, key)
            except asyncio.CancelledError:
                self.unresolved += 1  # it may or may not have been appended
                raise
            if status == 202:
                self.accepted[(function_type, id_)] += 1
                if op.get("op") == "relay":
                    self.accepted[(function_type, op["to"])] += 1
                return True
            if 400 <= status < 500:
                self.refused[(function_type, id_)] += 1
                return False
            if time.monotonic() > deadline:
                self.unresolved += 1
                return False
            try:
                await asyncio.sleep(min(1.0, wait if wait is not None else backoff))
            except asyncio.CancelledError:
                self.unresolved += 1
                raise
            backoff = min(1.0, backoff * 2)

    async def _attempt(self, path: str, body: bytes, key: str) -> tuple[int, float | None]:
        """(status, Retry-After seconds); status 0 when no HTTP answer came."""
        assert self._session is not None
        try:
            async with self._session.post(
                self.url + path,
                data=body,
                params={"type": OP_TYPE},
                headers={"content-type": "application/json", "idempotency-key": key},
            ) as answer:
                content = await answer.read()
                headers = {k.lower(): v for k, v in answer.headers.items()}
                self.answers.add(
                    classify(answer.status, headers, content), content.decode("utf-8", "replace")
                )
                return answer.status, _retry_after(headers.get("retry-after"))
        except TimeoutError:
            self.answers.add("timeout", f"no answer within {REQUEST_TIMEOUT:g} s")
        except aiohttp.ClientConnectionError as e:
            self.answers.add("no connection", f"{type(e).__name__}: {e}")
        return 0, None

    async def post_raw(self, encoded_path: str, op: Mapping[str, Any]) -> tuple[int, str]:
        """One POST to an already encoded path, sent as is (no retry): the status and
        the body of the answer (0 when no HTTP answer came)."""
        assert self._session is not None
        url = yarl.URL(self.url + encoded_path + f"?type={OP_TYPE}", encoded=True)
        try:
            async with self._session.post(
                url,
                data=json.dumps(op).encode(),
                headers={"content-type": "application/json", "idempotency-key": uuid.uuid4().hex},
            ) as answer:
                return answer.status, (await answer.read()).decode("utf-8", "replace")[:300]
        except (TimeoutError, aiohttp.ClientError) as e:
            return 0, f"{type(e).__name__}: {e}"

    # --- reading back -----------------------------------------------------------------

    async def get_json(self, path: str) -> tuple[int, Any]:
        """``GET path``: (status, JSON body or None); (0, None) when no HTTP answer came."""
        return await self._json("GET", path)

    async def post_json(self, path: str) -> tuple[int, Any]:
        """``POST path`` without a body (admin endpoints): (status, JSON body or None)."""
        return await self._json("POST", path)

    async def _json(self, method: str, path: str) -> tuple[int, Any]:
        assert self._reader is not None
        started = time.monotonic()
        try:
            async with self._reader.request(method, self.url + path) as answer:
                content = await answer.read()
                try:
                    return answer.status, json.loads(content)
                except ValueError:
                    return answer.status, None
        except (TimeoutError, aiohttp.ClientError) as e:
            # aiohttp's connection timeouts are TimeoutErrors too: the type tells them apart.
            elapsed = time.monotonic() - started
            self.failed_reads.append(
                f"{method} {path}: {type(e).__name__} after {elapsed:.1f} s: {e}"
            )
        return 0, None

    async def states(
        self, function_type: str, ids: Iterable[str], names: tuple[str, ...] = ("count",)
    ) -> dict[str, dict[str, int] | None]:
        """The int states ``names`` of each address (0 when unset); None for an address
        that could not be read."""

        async def one(id_: str) -> tuple[str, dict[str, int] | None]:
            async with self._scan_slots:
                status, body = await self.get_json(f"/v1/state/{function_type}/{id_}")
            if status != 200 or not isinstance(body, dict):
                return id_, None
            state = body.get("state", {})
            return id_, {name: int((state.get(name) or {}).get("value") or 0) for name in names}

        return dict(await asyncio.gather(*(one(i) for i in ids)))

    async def total(self, function_type: str, ids: list[str]) -> int | None:
        """The sum of the ``count`` of the addresses, or None if one could not be read."""
        states = await self.states(function_type, ids)
        if any(s is None for s in states.values()):
            return None
        return sum(s["count"] for s in states.values() if s is not None)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    return None


class Senders:
    """Tasks sending one kind of message to some addresses until stopped."""

    def __init__(
        self,
        load: Load,
        function_type: str,
        targets: list[str],
        op: Mapping[str, Any],
        concurrency: int,
        rate: float | None,
        relay_every: int = 0,
    ):
        if not targets:
            raise ValueError("no addresses to send to")
        self._load = load
        self._function_type = function_type
        self._targets = targets
        self._op = dict(op)
        self._rate = rate
        self._relay_every = relay_every
        self._next = 0
        self._stopping = False
        self._pace_at = time.monotonic()
        self.concurrency = concurrency
        self._busy = 0
        self._most_busy = 0
        self._tasks = [asyncio.create_task(self._sender()) for _ in range(concurrency)]

    async def stop(self, grace: float | None = None) -> None:
        """Stop sending: each task first sees its message accepted, for at most
        ``grace`` seconds; a message still unanswered then is *unresolved*."""
        self._stopping = True
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result

    def behind(self) -> float:
        """Seconds the senders are behind their pace: how long the next message they
        owe is overdue (0 when on pace, or not paced)."""
        if self._rate is None:
            return 0.0
        return max(0.0, time.monotonic() - self._pace_at)

    def most_busy(self) -> int:
        """The most senders waiting for an answer at once since the last call (all of
        them: the runtime's answers held the load back)."""
        most, self._most_busy = self._most_busy, self._busy
        return most

    async def _sender(self) -> None:
        while not self._stopping:
            await self._pace()
            n = self._next
            self._next += 1
            target = self._targets[n % len(self._targets)]
            op = self._op
            if self._relay_every and n % self._relay_every == 0:
                op = {"op": "relay", "to": self._targets[(n + 1) % len(self._targets)]}
            self._busy += 1
            self._most_busy = max(self._most_busy, self._busy)
            try:
                await self._load.send(self._function_type, target, op)
            finally:
                self._busy -= 1

    async def _pace(self) -> None:
        if self._rate is None:
            return
        now = time.monotonic()
        self._pace_at = max(self._pace_at + 1 / self._rate, now - 1.0)
        if self._pace_at > now:
            await asyncio.sleep(self._pace_at - now)
