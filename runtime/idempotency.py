"""Idempotency keys: a retried HTTP ingress request is a no-op that returns the first answer.

A client may send ``Idempotency-Key: <key>`` with ``POST /v1/messages`` and
``POST /v1/call``. The first request with a key is appended as usual, its record
carrying the key and a fingerprint of the request (``statefun.idempotency`` header);
the answer (partition and offset, and for a call its reply) is remembered for the
retention window. A later request with the same key gets that answer without appending
anything; the same key on a different request is refused (422). A call's caller address
is derived from its key, so a retry waits for the same reply, even one that a replay
produces after a restart. In a cluster it also names the partition of the call's
target (``<partition>.key-<digest>``): the partition's owner checks the key and holds
the call (the ingress forwards keyed requests to it), so the reply goes to whoever owns
the partition when it is produced, the new owner after a handover included.

:class:`IdempotencyKeys` is the whole guarantee behind one API. The ingress calls
:meth:`~IdempotencyKeys.begin` (the key claimed, or the earlier answer), then
:meth:`~IdempotencyKeys.accepted` or :meth:`~IdempotencyKeys.abandoned`, and for a call
:meth:`~IdempotencyKeys.retry_reply` and :meth:`~IdempotencyKeys.wait_for_reply`. The
runtime restores it at every generation (:meth:`~IdempotencyKeys.restore`, then
:meth:`~IdempotencyKeys.recover`) and checkpoints it as a participant.

Checkpoints hold the table incrementally, as the store holds state: a versioned
key-value table where a checkpoint writes only the keys added, answered or expired
since the previous one. The capture takes them in the same synchronous step as the
worker's, so the table agrees with the snapshot's read positions; their encoding runs
on the store's thread, off the event loop. Keys accepted after the checkpoint are found
again at a restore by reading the log from the checkpoint's read positions to its end
(:meth:`~IdempotencyKeys.recover`): a retry after a crash is recognised too. The worker
shows the table every keyed record it reads (:meth:`~IdempotencyKeys.read`): a key
appended by a member that no longer owns the partition is learnt there. A committed
reply given to a retried call marks its checkpoint as released in the store, so that
checkpoint is never given up for an older one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import msgpack

from runtime.checkpoints.coordinator import Capture
from runtime.checkpoints.epochs import SkipRule, Tag
from runtime.checkpoints.snapshot import KEYS_PART
from runtime.envelope import Envelope
from runtime.errors import IdempotencyConflict
from runtime.log import Log
from runtime.replies import ReplyWaiters
from runtime.routing import INGRESS_CALLER_TYPE
from statefun.address import Address
from statefun.values import TypedValue

T = TypeVar("T")

KEY_HEADER = "statefun.idempotency"
MAX_KEY_LENGTH = 255
RELEASED_BY_RETRY = "a retried call"
"""How a manifest names a committed reply given to a retried call (see ``released``)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a keyed request got: where its message is, and (for a call) its reply.
    Immutable: a checkpoint's capture hands answers to the store's thread as they are."""

    fingerprint: bytes
    accepted_ms: int
    partition: int
    offset: int
    caller: Address | None = None
    reply: TypedValue | None = None
    reply_tag: Tag | None = None
    positions: tuple[tuple[int, int] | None, ...] | None = None
    """A batch's (``POST /v1/messages``): every message's partition and offset, in order
    (``partition``/``offset`` are its first's). None where a restore could not find it
    (see :meth:`IdempotencyKeys.recover`)."""


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A request carrying an Idempotency-Key: ``earlier`` is the answer an earlier request
    with the key got, or None if this one holds the key until it is accepted or abandoned."""

    key: str
    fingerprint: bytes
    earlier: Answer | None
    home: int | None = None
    """The partition its caller address names (in a cluster), or None."""

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """The header its record carries, found again by :meth:`IdempotencyKeys.recover`."""
        packed: bytes = msgpack.packb((self.key, self.fingerprint), use_bin_type=True)
        return ((KEY_HEADER, packed),)

    def batch_headers(self, index: int, count: int) -> tuple[tuple[str, bytes], ...]:
        """The header of the record of message ``index`` of a batch of ``count``: a restore
        finds the key at index 0 and the positions of the others."""
        packed: bytes = msgpack.packb((self.key, self.fingerprint, index, count), use_bin_type=True)
        return ((KEY_HEADER, packed),)

    @property
    def caller(self) -> Address:
        """The caller address of a call with this key: the same for every retry."""
        return caller_for(self.key, self.home)


class RecordKey(NamedTuple):
    """The idempotency key a record carries (see :func:`key_of`)."""

    key: str
    fingerprint: bytes
    batch: tuple[int, int] | None = None
    """A keyed batch's message: its index and the batch's size."""


def key_of(headers: Iterable[tuple[str, bytes]]) -> RecordKey | None:
    """The idempotency key a record carries, or None."""
    for name, value in headers:
        if name == KEY_HEADER:
            key, print_, *batch = msgpack.unpackb(value, raw=False)
            return RecordKey(key, bytes(print_), (int(batch[0]), int(batch[1])) if batch else None)
    return None


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


def caller_for(key: str, partition: int | None = None) -> Address:
    """The caller address of calls with ``key``; naming ``partition`` if given (a cluster's
    owner of that partition holds them: see ``runtime.replies.caller_home``)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    id_ = f"key-{digest}" if partition is None else f"{partition}.key-{digest}"
    return Address(INGRESS_CALLER_TYPE.namespace, INGRESS_CALLER_TYPE.name, id_)


# --- the table's rows in the checkpoint store ---------------------------------------------


def encode_rows(entries: Iterable[tuple[str, Answer | None]]) -> list[tuple[bytes, bytes | None]]:
    """Rows of the store's key table: (key, answer), or (key, None) for a forgotten key."""
    rows: list[tuple[bytes, bytes | None]] = []
    for key, a in entries:
        value: bytes | None = None
        if a is not None:
            value = msgpack.packb(
                (
                    a.fingerprint,
                    a.accepted_ms,
                    a.partition,
                    a.offset,
                    a.caller is not None,
                    None if a.reply is None else (a.reply.typename, a.reply.value),
                    None if a.reply_tag is None else (a.reply_tag.generation, a.reply_tag.epoch),
                    *(
                        ()
                        if a.positions is None
                        else ([None if p is None else list(p) for p in a.positions],)
                    ),
                ),
                use_bin_type=True,
            )
        rows.append((key.encode(), value))
    return rows


def encode_floors(floors: Mapping[int, int]) -> bytes:
    packed: bytes = msgpack.packb(dict(floors), use_bin_type=True)
    return packed


def decode_floors(data: bytes) -> dict[int, int]:
    return {int(p): int(o) for p, o in msgpack.unpackb(data, strict_map_key=False).items()}


def decode_rows(rows: Iterable[tuple[bytes, bytes]]) -> dict[str, Answer]:
    """The answers a checkpoint's key table holds (raises on damaged rows)."""
    answers = {}
    for raw_key, value in rows:
        key = raw_key.decode()
        print_, at, partition, offset, call, reply, tag, *batch = msgpack.unpackb(value, raw=False)
        answers[key] = Answer(
            bytes(print_),
            int(at),
            int(partition),
            int(offset),
            caller_for(key) if call else None,
            None if reply is None else TypedValue(reply[0], reply[1]),
            None if tag is None else Tag(tag[0], tag[1], ""),
            None
            if not batch
            else tuple(None if p is None else (int(p[0]), int(p[1])) for p in batch[0]),
        )
    return answers


def _wall_ms() -> int:
    return int(time.time() * 1000)


class IdempotencyKeys:
    """The idempotency-key service (see the module docstring)."""

    name = KEYS_PART

    def __init__(
        self,
        retention: float,
        replies: ReplyWaiters | None = None,
        *,
        committed: Callable[[Tag | None], bool] = lambda tag: tag is None,
        release: Callable[[int, str], Awaitable[None]] | None = None,
        now_ms: Callable[[], int] = _wall_ms,
        read_floor: Callable[[Address], tuple[int, int]] = lambda target: (0, 0),
        caller_partition: Callable[[Address], int] | None = None,
    ):
        """``replies``: the ingress's waiting calls (keyed calls wait there, and every
        reply they see is offered to the table); ``committed``: whether work of a tag is
        in a completed checkpoint; ``release``: marks the checkpoint covering an epoch as
        released (``CheckpointStore.mark_released``); ``now_ms``: the wall clock;
        ``read_floor``: the partition of a target and an offset no record appended for it
        from now on can be below (the worker's read position there);
        ``caller_partition``: in a cluster, the partition of a target, which the caller
        addresses of keyed calls name."""
        self.retention_ms = int(retention * 1000)
        self._replies = replies or ReplyWaiters()
        self._replies.on_reply = self.reply
        self._committed = committed
        self._release = release
        self._now_ms = now_ms
        self._accepted: dict[str, Answer] = {}
        self._pending: dict[str, asyncio.Future[Answer | None]] = {}
        self._read_floor = read_floor
        self._caller_partition = caller_partition
        self._pending_floors: dict[str, list[tuple[int, int]]] = {}
        """Where the record of each key held (begun, not yet accepted) can be, at the
        lowest: a checkpoint taken meanwhile may have read past it without the key."""
        self._by_caller: dict[Address, str] = {}
        self._expiry: list[tuple[int, str]] = []
        """A heap of (accepted_ms, key): expiring a key never scans the table."""
        self._changed: set[str] = set()
        """Keys added, answered or forgotten since the last capture."""
        self._forgotten: dict[str, int] = {}
        """The partition of each key forgotten since the last capture."""

    def __len__(self) -> int:
        return len(self._accepted)

    def keys(self) -> Iterable[str]:
        return self._accepted.keys()

    # --- the ingress's API ----------------------------------------------------------------

    async def begin(
        self, key: str, print_: bytes, target: Address, others: Iterable[Address] = ()
    ) -> KeyedRequest:
        """The request with ``key``: with the answer of an earlier request with the key,
        or holding the key (then :meth:`accepted` or :meth:`abandoned` must follow).
        Concurrent requests with one key wait for the first to finish;
        :class:`IdempotencyConflict` if the key was used for a different request.
        ``others``: a batch's other targets (its first is ``target``, which decides where
        the key is kept)."""
        home = None if self._caller_partition is None else self._caller_partition(target)
        while True:
            found = self._accepted.get(key)
            if found is not None:
                if found.fingerprint != print_:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {key!r} was used for a different request"
                    )
                return KeyedRequest(key, print_, found, home)
            pending = self._pending.get(key)
            if pending is None:
                # The floor first: were it to raise, no later request may wait on the key.
                self._pending_floors[key] = list({self._read_floor(t) for t in (target, *others)})
                self._pending[key] = asyncio.get_running_loop().create_future()
                return KeyedRequest(key, print_, None, home)
            await asyncio.shield(pending)

    def accepted(
        self,
        request: KeyedRequest,
        partition: int,
        offset: int,
        caller: Address | None = None,
        positions: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """The request's message is durable at ``partition``/``offset`` (a batch's first;
        ``positions``: all of them). If the worker read an earlier record with the key
        meanwhile (another member's append, from before this one owned the partition),
        that record stays the key's answer, and a call waiting here gets its reply if it
        is known."""
        known = self._accepted.get(request.key)
        if known is not None and (known.partition, known.offset) != (partition, offset):
            answer = known
            if caller is not None and known.reply is not None:
                self._replies.deliver(caller, known.reply, known.reply_tag)
        else:
            answer = Answer(
                request.fingerprint,
                self._now_ms(),
                partition,
                offset,
                caller,
                # The worker may have read this record, and the reply come, before now.
                reply=None if known is None else known.reply,
                reply_tag=None if known is None else known.reply_tag,
                positions=None if positions is None else tuple(positions),
            )
            self._remember(request.key, answer)
        self._pending_floors.pop(request.key, None)
        pending = self._pending.pop(request.key, None)
        if pending is not None and not pending.done():
            pending.set_result(answer)

    async def append(
        self,
        request: KeyedRequest,
        appending: Awaitable[tuple[int, int]],
        caller: Address | None = None,
    ) -> tuple[int, int]:
        """Append the keyed request's message (``appending``: its position) and settle the
        key by what became of the append: :meth:`accepted` once durable, :meth:`abandoned`
        if it failed. A caller that stops waiting (cancelled: a client gone, the runtime
        stopping) does not stop the append, which may land: the key stays held, its floor
        in every checkpoint taken meanwhile, until the append ends and settles it.
        Abandoning it at the cancellation instead would leave a record that lands without
        its key: a checkpoint that read past it would not know the key, and a retry would
        be appended again."""
        return await self._settled_by(
            request, appending, lambda at: self.accepted(request, *at, caller)
        )

    async def append_batch(
        self, request: KeyedRequest, appending: Awaitable[list[tuple[int, int]]]
    ) -> list[tuple[int, int]]:
        """:meth:`append` for a batch (``appending``: every message's position, which the
        answer keeps)."""
        return await self._settled_by(
            request, appending, lambda at: self.accepted(request, *at[0], positions=at)
        )

    async def _settled_by(
        self, request: KeyedRequest, appending: Awaitable[T], durable: Callable[[T], None]
    ) -> T:
        appended = asyncio.ensure_future(appending)

        def settle(done: asyncio.Future[T]) -> None:
            if done.cancelled() or done.exception() is not None:
                self.abandoned(request)
            else:
                durable(done.result())

        appended.add_done_callback(settle)
        return await asyncio.shield(appended)

    def abandoned(self, request: KeyedRequest) -> None:
        """The request failed before anything was appended: the next one with the key
        goes first. Nothing to do for a request that did not hold the key."""
        if request.earlier is not None:
            return
        self._pending_floors.pop(request.key, None)
        pending = self._pending.pop(request.key, None)
        if pending is not None and not pending.done():
            pending.set_result(None)

    async def retry_reply(self, request: KeyedRequest, *, committed: bool) -> TypedValue | None:
        """The reply a retried call gets now, or None if it must wait for it
        (:meth:`wait_for_reply`): the first call's reply, once its work is in a completed
        checkpoint if ``committed`` asks for that. A committed reply marks that checkpoint
        as released before it is given out."""
        earlier = request.earlier
        if earlier is None or earlier.reply is None:
            return None
        if not committed:
            return earlier.reply
        if not self._committed(earlier.reply_tag):
            return None
        if earlier.reply_tag is not None and self._release is not None:
            await self._release(earlier.reply_tag.epoch, RELEASED_BY_RETRY)
        return earlier.reply

    def wait_for_reply(
        self, request: KeyedRequest, *, committed: bool
    ) -> tuple[Address, asyncio.Future[TypedValue]]:
        """Wait on the key's caller address (``ShuttingDown`` when the runtime stops); a
        reply of the first call's work known already, not yet committed, is held there."""
        caller, future = self._replies.new_caller(committed=committed, address=request.caller)
        earlier = request.earlier
        if earlier is not None and earlier.reply is not None and earlier.reply_tag is not None:
            self._replies.hold(caller, earlier.reply, earlier.reply_tag)
        return caller, future

    # --- the worker's reads ----------------------------------------------------------------

    def read(self, keyed: RecordKey, partition: int, offset: int, caller: Address | None) -> None:
        """The worker read a record at ``partition``/``offset`` carrying ``keyed``: a key
        this process does not know yet is learnt from it, in the same synchronous step as
        the read position moves, so that every checkpoint whose read positions are past
        the record holds the key.

        Members append keyed requests for the partitions they believe they own, and a
        member learns of a new generation a little after the others: a key can be
        appended by a member that no longer owns the partition after the new owner read
        the log's end at its restore. Its record is processed all the same (it is input
        from outside); without this, a retry after the next rollback would not be known
        and would be appended, and applied, again. A keyed batch's key is learnt from its
        first message (the others' positions unknown, as after a restore).

        Only the first record read with a key is learnt: the position an append's
        acknowledgement gives can be wrong (the test broker answered appends after a
        stall at offsets counted from 0), so a record is never skipped on it."""
        key, print_, batch = keyed
        if key in self._accepted:
            return
        if batch is None:
            self._remember(key, Answer(print_, self._now_ms(), partition, offset, caller))
            return
        index, count = batch
        if index == 0:
            positions = ((partition, offset), *((None,) * (count - 1)))
            self._remember(
                key, Answer(print_, self._now_ms(), partition, offset, positions=positions)
            )

    # --- the table ------------------------------------------------------------------------

    def _remember(self, key: str, answer: Answer) -> None:
        known = self._accepted.get(key)
        self._accepted[key] = answer
        self._changed.add(key)
        if answer.caller is not None:
            self._by_caller[answer.caller] = key
        if known is None or known.accepted_ms != answer.accepted_ms:
            heapq.heappush(self._expiry, (answer.accepted_ms, key))

    def reply(self, caller: Address, value: TypedValue, tag: Tag | None) -> None:
        """A message to a keyed call's caller address: the reply its retries get."""
        key = self._by_caller.get(caller)
        if key is not None:
            accepted = self._accepted[key]
            if accepted.reply is None:
                self._accepted[key] = dataclasses.replace(accepted, reply=value, reply_tag=tag)
                self._changed.add(key)

    def expire(self, now_ms: int) -> None:
        horizon = now_ms - self.retention_ms
        expiry = self._expiry
        while expiry and expiry[0][0] < horizon:
            accepted_ms, key = heapq.heappop(expiry)
            answer = self._accepted.get(key)
            if answer is None or answer.accepted_ms != accepted_ms:
                continue  # forgotten, or remembered again later
            del self._accepted[key]
            self._changed.add(key)
            self._forgotten[key] = answer.partition
            if answer.caller is not None:
                self._by_caller.pop(answer.caller, None)

    # --- checkpoints and restores ---------------------------------------------------------

    def capture(self) -> Capture:
        """The keys changed since the last capture, encoded when the store writes them;
        the part, if keys are held, says where a restore looks for their records: a key
        accepted just after this capture may have its record before the read positions."""
        changed = self.take_changed()
        entries = self.entries(changed)
        floors = self.floors()
        return Capture(
            encode_floors(floors) if floors else None,
            key_rows=lambda: encode_rows(entries),
            abandon=lambda: self._changed.update(changed),
        )

    def take_changed(self) -> dict[str, int]:
        """The keys added, answered or forgotten since the last call (expired ones
        forgotten first), with the partition of each key's target; none from then on."""
        self.expire(self._now_ms())
        changed, self._changed = self._changed, set()
        forgotten, self._forgotten = self._forgotten, {}
        return {key: self.partition_of(key, forgotten) for key in changed}

    def partition_of(self, key: str, forgotten: Mapping[str, int]) -> int:
        answer = self._accepted.get(key)
        return answer.partition if answer is not None else forgotten[key]

    def entries(self, keys: Iterable[str]) -> list[tuple[str, Answer | None]]:
        """These keys' answers now (None: forgotten)."""
        return [(key, self._accepted.get(key)) for key in keys]

    def keys_of(self, partitions: Collection[int]) -> list[str]:
        """The keys whose target is in one of ``partitions``."""
        return [key for key, a in self._accepted.items() if a.partition in partitions]

    def floors(self) -> dict[int, int]:
        """Per partition, where the record of a key held now (begun, not yet accepted)
        can be, at the lowest."""
        floors: dict[int, int] = {}
        for held in self._pending_floors.values():
            for partition, offset in held:
                floors[partition] = min(offset, floors.get(partition, offset))
        return floors

    def restore(
        self,
        table: Mapping[str, Answer],
        positions: Mapping[int, int],
        skip: SkipRule,
        owned: Collection[int] | None = None,
    ) -> None:
        """Start over from a checkpoint's table (``decode_rows`` of its key table). Every
        request accepted in this process stays accepted (its record is input from outside,
        never rolled back, whether before the checkpoint's read positions or after); a
        reply it got from rolled-back work is forgotten. What differs from the table goes
        into the next checkpoint. ``owned``: the partitions whose keys this process holds
        from now on (None: all); the keys of others go, with their partitions."""
        since = {}
        for key, a in self._accepted.items():
            if owned is not None and a.partition not in owned:
                continue
            if a.reply_tag is not None and not skip.accepts(a.reply_tag):
                a = dataclasses.replace(a, reply=None, reply_tag=None)
            since[key] = a
        if self._caller_partition is not None:
            # A checkpoint's rows say only that a key was a call: its caller names the
            # partition where its record is.
            table = {
                key: a
                if a.caller is None
                else dataclasses.replace(a, caller=caller_for(key, a.partition))
                for key, a in table.items()
            }
        self._accepted = dict(table)
        self._by_caller = {a.caller: key for key, a in table.items() if a.caller is not None}
        self._expiry = [(a.accepted_ms, key) for key, a in table.items()]
        heapq.heapify(self._expiry)
        self._changed = set()
        self._forgotten = {}
        for key, answer in since.items():
            # Only what the table lacks goes into the next one. Where the table has the
            # key at another record (one its worker read first), the table's answer stays;
            # a reply this process kept for the same record is added to it.
            known = table.get(key)
            if known is None or (
                known != answer
                and (known.partition, known.offset) == (answer.partition, answer.offset)
                and known.reply is None
            ):
                self._remember(key, answer)

    async def recover(
        self,
        log_: Log,
        topic: str,
        positions: Mapping[int, int],
        ends: Sequence[int],
        floors: Mapping[int, int] | None = None,
        owned: Collection[int] | None = None,
    ) -> None:
        """Find the keys of the requests accepted after the restored checkpoint: their
        records lie between its read positions (or its ``floors``, where keys were held
        when it was taken) and the end of the log, in the ``owned`` partitions (None: all)."""
        now_ms = self._now_ms()
        floors = floors or {}
        batches: dict[str, tuple[bytes, int, dict[int, tuple[int, int]]]] = {}
        """A keyed batch's fingerprint, its size and the positions of its messages found."""
        for partition, end in enumerate(ends):
            if owned is not None and partition not in owned:
                continue
            offset = min(positions.get(partition, 0), floors.get(partition, end))
            while offset < end:
                records = await log_.read(topic, partition, offset, 1000)
                if not records:
                    break
                for record in records:
                    keyed = key_of(record.headers)
                    if keyed is None:
                        continue
                    if keyed.batch is not None:
                        index, count = keyed.batch
                        found = batches.setdefault(keyed.key, (keyed.fingerprint, count, {}))[2]
                        found[index] = (partition, record.offset)
                    elif keyed.key not in self._accepted:
                        caller = Envelope.from_record(record).caller
                        self.read(keyed, partition, record.offset, caller)
                offset = records[-1].offset + 1
        for key, (print_, count, found) in batches.items():
            first = found.get(0)  # in the partition that keeps the key
            if first is not None and key not in self._accepted:
                each = tuple(found.get(i) for i in range(count))
                self._remember(key, Answer(print_, now_ms, *first, positions=each))
