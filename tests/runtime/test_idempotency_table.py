"""The idempotency-key service: answers, conflicts, retention, incremental checkpoints,
rollbacks, and the replies retried calls get."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.checkpoints.coordinator import Capture
from runtime.checkpoints.epochs import SkipRule, Tag
from runtime.errors import IdempotencyConflict
from runtime.idempotency import (
    RELEASED_BY_RETRY,
    Answer,
    IdempotencyKeys,
    RecordKey,
    caller_for,
    check_key,
    decode_floors,
    decode_rows,
)
from statefun.address import Address
from statefun.values import TypedValue

pytestmark = pytest.mark.anyio
REPLY = TypedValue("x/T", b"r")
TARGET = Address("x", "f", "a")


class Clock:
    def __init__(self, now_ms: int = 0):
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def rows(capture: Capture) -> dict[str, Answer | None]:
    """What a capture writes to the store's key table (None: the key is forgotten)."""
    assert capture.key_rows is not None
    written = {}
    for key, value in capture.key_rows():
        written[key.decode()] = None if value is None else decode_rows([(key, value)])[key.decode()]
    return written


def table(*captures: Capture) -> dict[str, Answer]:
    """The key table as of the last of these checkpoints (the store's versioned rows)."""
    out: dict[str, Answer] = {}
    for capture in captures:
        for key, answer in rows(capture).items():
            if answer is None:
                out.pop(key, None)
            else:
                out[key] = answer
    return out


async def accept(keys: IdempotencyKeys, key: str, partition: int, offset: int) -> None:
    request = await keys.begin(key, b"fp", TARGET)
    assert request.earlier is None
    keys.accepted(request, partition, offset, request.caller if key.startswith("call") else None)


async def test_the_first_request_records_its_answer_and_later_ones_get_it() -> None:
    keys = IdempotencyKeys(retention=60)
    first = await keys.begin("k", b"fp", TARGET)
    assert first.earlier is None
    keys.accepted(first, 3, 17)
    again = await keys.begin("k", b"fp", TARGET)
    assert again.earlier is not None
    assert (again.earlier.partition, again.earlier.offset) == (3, 17)
    with pytest.raises(IdempotencyConflict, match="used for a different request"):
        await keys.begin("k", b"other", TARGET)


async def test_an_abandoned_first_request_lets_the_next_one_go_first() -> None:
    keys = IdempotencyKeys(retention=60)
    first = await keys.begin("k", b"fp", TARGET)
    keys.abandoned(first)
    assert (await keys.begin("k", b"fp", TARGET)).earlier is None


async def test_an_append_its_caller_stopped_waiting_for_still_settles_the_key() -> None:
    """A request cancelled while its message is being appended (its client gone, the
    runtime stopping) leaves the append running, and it may land: the key stays held, its
    floor in the checkpoints taken meanwhile, and the append's outcome settles it. A retry
    then gets the first request's answer, never a second append."""
    keys = IdempotencyKeys(retention=60, read_floor=lambda target: (3, 40))
    first = await keys.begin("k", b"fp", TARGET)
    durable = asyncio.Event()

    async def appending() -> tuple[int, int]:
        await durable.wait()
        return 3, 41

    caller = asyncio.create_task(keys.append(first, appending()))
    await asyncio.sleep(0)  # the append starts
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert decode_floors(keys.capture().part or b"") == {3: 40}  # still held
    retry = asyncio.create_task(keys.begin("k", b"fp", TARGET))
    await asyncio.sleep(0)
    assert not retry.done()  # it waits for the first request's outcome
    durable.set()
    again = await asyncio.wait_for(retry, timeout=5)
    assert again.earlier is not None
    assert (again.earlier.partition, again.earlier.offset) == (3, 41)
    assert keys.capture().part is None  # no key held any more: no floor


async def test_an_append_that_fails_lets_the_next_request_go_first() -> None:
    keys = IdempotencyKeys(retention=60)
    first = await keys.begin("k", b"fp", TARGET)

    async def failing() -> tuple[int, int]:
        raise OSError("the log is full")

    with pytest.raises(OSError, match="full"):
        await keys.append(first, failing())
    assert (await asyncio.wait_for(keys.begin("k", b"fp", TARGET), timeout=5)).earlier is None


async def test_a_request_that_fails_to_begin_leaves_the_key_free() -> None:
    """Were the key held while beginning failed, every retry would wait on it forever."""
    failing = True

    def read_floor(target: Address) -> tuple[int, int]:
        if failing:
            raise KeyError("not this process's partition")
        return 0, 0

    keys = IdempotencyKeys(retention=60, read_floor=read_floor)
    with pytest.raises(KeyError):
        await keys.begin("k", b"fp", TARGET)
    failing = False
    retry = await asyncio.wait_for(keys.begin("k", b"fp", TARGET), timeout=5)
    assert retry.earlier is None


async def test_the_worker_learns_a_key_from_the_first_record_it_reads_with_it() -> None:
    """A member that no longer owns the partition appended a keyed request after the new
    owner restored: the owner's worker reads it, and from then on the key is known (a
    retry gets its answer, the next checkpoint holds it)."""
    keys = IdempotencyKeys(retention=60)
    keys.capture()
    keys.read(RecordKey("k", b"fp"), 2, 5, None)
    retry = await keys.begin("k", b"fp", TARGET)
    assert retry.earlier is not None
    assert (retry.earlier.partition, retry.earlier.offset) == (2, 5)
    assert rows(keys.capture())["k"] == retry.earlier  # a checkpoint past the record holds it
    keys.read(RecordKey("k", b"fp"), 2, 9, None)  # a later record with the key
    again = await keys.begin("k", b"fp", TARGET)
    assert again.earlier is not None
    assert again.earlier.offset == 5  # the first stays the key's
    assert rows(keys.capture()) == {}  # nothing changed


async def test_an_append_landing_after_an_earlier_record_with_its_key_keeps_the_earlier() -> None:
    """The new owner appends a retry whose key it did not know, while the first request's
    record (appended by the old owner) is in the partition before it: the first stays the
    key's answer, and the waiting call gets the first one's reply."""
    keys = IdempotencyKeys(retention=60)
    request = await keys.begin("call", b"fp", TARGET)
    caller, reply = keys.wait_for_reply(request, committed=False)
    keys.read(RecordKey("call", b"fp"), 0, 3, caller)  # the old owner's record
    keys.reply(caller, REPLY, None)  # its work ran, and replied before anyone waited
    keys.accepted(request, 0, 8, caller)  # this retry's record lands after it
    assert await asyncio.wait_for(reply, timeout=5) == REPLY
    again = await keys.begin("call", b"fp", TARGET)
    assert again.earlier is not None
    assert again.earlier.offset == 3
    assert await keys.retry_reply(again, committed=False) == REPLY


async def test_a_reply_that_comes_before_the_append_is_known_durable_is_kept() -> None:
    """The worker can read a record, and its call be answered, before the ingress hears
    that the append is durable: the reply stays for the retries."""
    keys = IdempotencyKeys(retention=60)
    request = await keys.begin("call", b"fp", TARGET)
    keys.read(RecordKey("call", b"fp"), 0, 3, request.caller)
    keys.reply(request.caller, REPLY, Tag(1, 2, "p"))
    keys.accepted(request, 0, 3, request.caller)
    retry = await keys.begin("call", b"fp", TARGET)
    assert await keys.retry_reply(retry, committed=False) == REPLY


async def test_a_batchs_key_is_learnt_from_its_first_message() -> None:
    """A batch's messages are read by the owners of their partitions: its key is learnt
    where its first message is, the others' positions unknown."""
    keys = IdempotencyKeys(retention=60)
    keys.read(RecordKey("b", b"fp", (1, 3)), 4, 7, None)
    assert len(keys) == 0  # not the first message: the key is kept where that one is
    keys.read(RecordKey("b", b"fp", (0, 3)), 2, 5, None)
    retry = await keys.begin("b", b"fp", TARGET)
    assert retry.earlier is not None
    assert retry.earlier.positions == ((2, 5), None, None)


async def test_a_rollback_keeps_the_checkpoints_record_of_a_key_over_a_later_one_here() -> None:
    """The checkpoint holds the record another member appended with the key; this process
    appended a retry of it meanwhile. After the rollback the checkpoint's answer is the
    key's."""
    keys = IdempotencyKeys(retention=60)
    await accept(keys, "k", 0, 8)
    keys.restore({"k": Answer(b"fp", 1, 0, 3)}, {0: 4}, SkipRule(2, {1: 5}))
    again = await keys.begin("k", b"fp", TARGET)
    assert again.earlier is not None
    assert again.earlier.offset == 3


async def test_answers_expire_after_the_retention_window() -> None:
    clock = Clock(1_000)
    keys = IdempotencyKeys(retention=10, now_ms=clock)
    await accept(keys, "old", 0, 0)
    clock.now_ms = 9_000
    await accept(keys, "new", 0, 1)
    keys.expire(12_000)
    assert list(keys.keys()) == ["new"]


async def test_replies_are_kept_for_keyed_calls_and_checkpointed() -> None:
    keys = IdempotencyKeys(retention=60)
    await accept(keys, "call", 0, 5)
    keys.reply(caller_for("call"), REPLY, Tag(1, 4, "p"))
    restored = IdempotencyKeys(retention=60)
    restored.restore(table(keys.capture()), {0: 0}, SkipRule(2, {1: 4}))
    answer = (await restored.begin("call", b"fp", TARGET)).earlier
    assert answer is not None
    assert answer.reply == REPLY


async def test_a_rollback_keeps_keys_accepted_since_and_drops_their_rolled_back_replies() -> None:
    keys = IdempotencyKeys(retention=60)
    checkpoint = table(keys.capture())  # nothing yet
    await accept(keys, "call-late", 0, 9)
    keys.reply(caller_for("call-late"), REPLY, Tag(1, 6, "p"))  # from epoch 6, rolled back below
    keys.restore(checkpoint, {0: 7}, SkipRule(2, {1: 5}))
    answer = (await keys.begin("call-late", b"fp", TARGET)).earlier
    assert answer is not None  # its record (offset 9) is past the checkpoint's positions
    assert answer.reply is None
    # and the next checkpoint writes it, without the forgotten reply
    assert rows(keys.capture())["call-late"] == answer


async def test_a_rollback_keeps_a_key_held_at_the_checkpoint_whose_record_was_read() -> None:
    keys = IdempotencyKeys(retention=60, read_floor=lambda target: (0, 4))
    request = await keys.begin("late", b"fp", TARGET)  # held: its append is under way
    checkpoint = table(keys.capture())  # taken before the ingress calls accepted()...
    keys.accepted(request, 0, 5)  # ...though the worker may have read offset 5 already
    keys.restore(checkpoint, {0: 7}, SkipRule(2, {1: 5}))  # positions past its record
    again = await keys.begin("late", b"fp", TARGET)
    assert again.earlier is not None
    assert again.earlier.offset == 5


async def test_a_rollback_writes_only_the_keys_the_checkpoint_lacks() -> None:
    keys = IdempotencyKeys(retention=60)
    for i in range(100):
        await accept(keys, f"k{i}", 0, i)
    checkpoint = table(keys.capture())
    await accept(keys, "after", 0, 100)
    keys.restore(checkpoint, {0: 100}, SkipRule(2, {1: 5}))
    # the 100 keys the checkpoint holds are not written again: only the one it lacks
    assert list(rows(keys.capture())) == ["after"]
    assert len(keys) == 101


async def test_a_checkpoint_taken_while_keys_are_held_says_where_their_records_may_be() -> None:
    keys = IdempotencyKeys(retention=60, read_floor=lambda target: (3, 40))
    await keys.begin("held", b"fp", TARGET)
    capture = keys.capture()
    assert capture.part is not None
    assert decode_floors(capture.part) == {3: 40}  # a restore reads partition 3 from 40
    assert keys.capture().part is not None  # still held at the next one
    done = await keys.begin("other", b"fp", TARGET)
    keys.abandoned(done)
    assert decode_floors(keys.capture().part or b"") == {3: 40}


async def test_recovery_finds_a_key_below_the_positions_from_the_checkpoints_floors() -> None:
    from runtime.envelope import Envelope
    from runtime.idempotency import KeyedRequest
    from runtime.log.memory import MemoryLog

    log = MemoryLog()
    await log.ensure_topic("m", 1)
    for i in range(10):
        headers = KeyedRequest(f"k{i}", b"fp", None).headers
        await log.append("m", 0, [Envelope(TARGET, None, REPLY).to_record(headers)])
    restarted = IdempotencyKeys(retention=60)
    restarted.restore({}, {0: 8}, SkipRule(2, {}))
    await restarted.recover(log, "m", {0: 8}, [10], {0: 5})
    assert sorted(restarted.keys()) == ["k5", "k6", "k7", "k8", "k9"]


async def test_a_checkpoint_writes_only_the_keys_added_answered_or_expired_since() -> None:
    clock = Clock(int(time.time() * 1000))
    keys = IdempotencyKeys(retention=10, now_ms=clock)
    for n in range(5):
        await accept(keys, f"k{n}", 0, n)
    await accept(keys, "call", 0, 5)
    first = keys.capture()
    assert set(rows(first)) == {"k0", "k1", "k2", "k3", "k4", "call"}
    assert rows(keys.capture()) == {}  # nothing changed since
    clock.now_ms += 5_000
    await accept(keys, "k5", 1, 0)
    keys.reply(caller_for("call"), REPLY, Tag(1, 2, "p"))
    second = keys.capture()
    assert set(rows(second)) == {"k5", "call"}
    clock.now_ms += 6_000  # k0..k4 and call are past the window, k5 is not
    third = keys.capture()
    assert rows(third) == dict.fromkeys(["k0", "k1", "k2", "k3", "k4", "call"])
    assert set(table(first, second, third)) == {"k5"}


async def test_an_abandoned_checkpoint_writes_its_keys_in_the_next_one() -> None:
    keys = IdempotencyKeys(retention=60)
    await accept(keys, "k", 0, 0)
    keys.capture().abandon()
    assert set(rows(keys.capture())) == {"k"}


async def test_a_capture_writes_the_answers_as_they_were_when_it_was_taken() -> None:
    keys = IdempotencyKeys(retention=60)
    await accept(keys, "call", 0, 0)
    capture = keys.capture()
    keys.reply(caller_for("call"), REPLY, Tag(1, 1, "p"))  # answered after the capture
    taken = rows(capture)["call"]  # encoded only now, as the store's thread does
    assert taken is not None
    assert taken.reply is None
    answered = rows(keys.capture())["call"]
    assert answered is not None
    assert answered.reply == REPLY


async def test_a_retried_call_gets_a_committed_reply_and_marks_its_checkpoint_released() -> None:
    committed: set[Tag] = set()
    released: list[tuple[int, str]] = []

    async def release(epoch: int, what: str) -> None:
        released.append((epoch, what))

    keys = IdempotencyKeys(retention=60, committed=lambda tag: tag in committed, release=release)
    await accept(keys, "call", 0, 0)
    tag = Tag(1, 7, "p")
    keys.reply(caller_for("call"), REPLY, tag)
    retry = await keys.begin("call", b"fp", TARGET)
    # uncommitted: answered at once, nothing marked
    assert await keys.retry_reply(retry, committed=False) == REPLY
    assert released == []
    # committed, before its checkpoint: it waits for it
    assert await keys.retry_reply(retry, committed=True) is None
    committed.add(tag)
    assert await keys.retry_reply(retry, committed=True) == REPLY
    assert released == [(7, RELEASED_BY_RETRY)]


def test_key_rules() -> None:
    assert check_key("a-key") is None
    assert check_key("") is not None
    assert check_key("x" * 256) is not None
    assert check_key("bad\nkey") is not None
