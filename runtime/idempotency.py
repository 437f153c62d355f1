"""Idempotency keys: a retried HTTP ingress request is a no-op that returns the first answer.

A client may send ``Idempotency-Key: <key>`` with ``POST /v1/messages`` and
``POST /v1/call``. The first request with a key is appended as usual, its record
carrying the key and a fingerprint of the request (``statefun.idempotency`` header);
the answer (partition and offset, and for a call its reply) is remembered for the
retention window. A later request with the same key gets that answer without appending
anything; the same key on a different request is refused (422). A call's caller address
is derived from its key, so a retry waits for the same reply, even one that a replay
produces after a restart.

The table is part of every checkpoint. Keys accepted after the last checkpoint are
found again at a restore by reading the log from the checkpoint's positions to its end
(:meth:`IdempotencyKeys.observe`): a retry after a crash is recognised too.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from runtime.checkpoints.coordinator import Capture
from runtime.checkpoints.epochs import SkipRule, Tag
from runtime.errors import IdempotencyConflict
from runtime.routing import INGRESS_CALLER_TYPE
from statefun.address import Address
from statefun.values import TypedValue

KEY_HEADER = "statefun.idempotency"
MAX_KEY_LENGTH = 255


@dataclass(slots=True)
class Answer:
    """What a keyed request got: where its message is, and (for a call) its reply."""

    fingerprint: bytes
    accepted_ms: int
    partition: int
    offset: int
    caller: Address | None = None
    reply: TypedValue | None = None
    reply_tag: Tag | None = None


def fingerprint(path: str, query: str, content_type: str | None, body: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (path.encode(), query.encode(), (content_type or "").encode()):
        digest.update(len(part).to_bytes(4, "big") + part)
    digest.update(body)
    return digest.digest()[:16]


def check_key(key: str) -> str | None:
    """Why ``key`` is not a usable idempotency key, or None."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return f"an Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters"
    if not key.isprintable():
        return "an Idempotency-Key must be printable"
    return None


def header(key: str, print_: bytes) -> tuple[str, bytes]:
    packed: bytes = msgpack.packb((key, print_), use_bin_type=True)
    return KEY_HEADER, packed


class IdempotencyKeys:
    name = "idempotency"

    def __init__(self, retention: float):
        self.retention_ms = int(retention * 1000)
        self._accepted: dict[str, Answer] = {}
        self._pending: dict[str, asyncio.Future[Answer | None]] = {}
        self._by_caller: dict[Address, str] = {}

    def __len__(self) -> int:
        return len(self._accepted)

    @staticmethod
    def caller_for(key: str) -> Address:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return Address(INGRESS_CALLER_TYPE.namespace, INGRESS_CALLER_TYPE.name, f"key-{digest}")

    async def begin(self, key: str, print_: bytes) -> Answer | None:
        """The answer of an earlier request with ``key``, or None if this request is the
        first: then :meth:`accepted` or :meth:`abandoned` must follow. Concurrent requests
        with one key wait for the first to finish."""
        while True:
            found = self._accepted.get(key)
            if found is not None:
                if found.fingerprint != print_:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {key!r} was used for a different request"
                    )
                return found
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = asyncio.get_running_loop().create_future()
                return None
            await asyncio.shield(pending)

    def accepted(self, key: str, accepted: Answer) -> None:
        self._remember(key, accepted)
        pending = self._pending.pop(key, None)
        if pending is not None and not pending.done():
            pending.set_result(accepted)

    def abandoned(self, key: str) -> None:
        """The first request with ``key`` failed before anything was appended."""
        pending = self._pending.pop(key, None)
        if pending is not None and not pending.done():
            pending.set_result(None)

    def _remember(self, key: str, accepted: Answer) -> None:
        self._accepted[key] = accepted
        if accepted.caller is not None:
            self._by_caller[accepted.caller] = key

    def reply(self, caller: Address, value: TypedValue, tag: Tag | None) -> None:
        """A message to a keyed call's caller address: the reply its retries get."""
        key = self._by_caller.get(caller)
        if key is not None:
            accepted = self._accepted[key]
            if accepted.reply is None:
                accepted.reply, accepted.reply_tag = value, tag

    def observe(
        self,
        key: str,
        print_: bytes,
        partition: int,
        offset: int,
        caller: Address | None,
        now_ms: int,
    ) -> None:
        """A keyed record found in the log after the restored checkpoint's positions."""
        if key not in self._accepted:
            self._remember(key, Answer(print_, now_ms, partition, offset, caller))

    def expire(self, now_ms: int) -> None:
        horizon = now_ms - self.retention_ms
        for key in [k for k, a in self._accepted.items() if a.accepted_ms < horizon]:
            accepted = self._accepted.pop(key)
            if accepted.caller is not None:
                self._by_caller.pop(accepted.caller, None)

    # --- checkpoints ---------------------------------------------------------------------

    def capture(self) -> Capture:
        self.expire(int(time.time() * 1000))
        entries = [
            (
                key,
                a.fingerprint,
                a.accepted_ms,
                a.partition,
                a.offset,
                a.caller is not None,
                None if a.reply is None else (a.reply.typename, a.reply.value),
                None if a.reply_tag is None else (a.reply_tag.generation, a.reply_tag.epoch),
            )
            for key, a in self._accepted.items()
        ]
        packed: bytes = msgpack.packb(entries, use_bin_type=True)
        return Capture(packed)

    def restore(self, data: bytes | None, positions: dict[int, int], skip: SkipRule) -> None:
        """Start over from a checkpoint's table (None: an empty one) and ``positions``, its
        read positions. Requests accepted since (their records at or past the positions)
        stay accepted; a reply they got from rolled-back work is forgotten."""
        since = {
            key: a for key, a in self._accepted.items() if a.offset >= positions.get(a.partition, 0)
        }
        for a in since.values():
            if a.reply_tag is not None and not skip.accepts(a.reply_tag):
                a.reply = a.reply_tag = None
        self._accepted, self._by_caller = {}, {}
        for key, print_, at, partition, offset, call, reply, tag in msgpack.unpackb(
            data or msgpack.packb([]), raw=False
        ):
            self._remember(
                key,
                Answer(
                    print_,
                    at,
                    partition,
                    offset,
                    self.caller_for(key) if call else None,
                    None if reply is None else TypedValue(reply[0], reply[1]),
                    None if tag is None else Tag(tag[0], tag[1], ""),
                ),
            )
        for key, accepted in since.items():
            self._remember(key, accepted)

    def keys(self) -> Iterable[str]:
        return self._accepted.keys()
