"""The idempotency-key table: answers, conflicts, retention, checkpoints and rollbacks."""

from __future__ import annotations

import time

import pytest

from runtime.checkpoints.epochs import SkipRule, Tag
from runtime.errors import IdempotencyConflict
from runtime.idempotency import Answer, IdempotencyKeys, check_key
from statefun.values import TypedValue

pytestmark = pytest.mark.anyio
REPLY = TypedValue("x/T", b"r")


async def test_the_first_request_records_its_answer_and_later_ones_get_it() -> None:
    keys = IdempotencyKeys(retention=60)
    assert await keys.begin("k", b"fp") is None
    keys.accepted("k", Answer(b"fp", 0, 3, 17))
    answer = await keys.begin("k", b"fp")
    assert answer is not None
    assert (answer.partition, answer.offset) == (3, 17)
    with pytest.raises(IdempotencyConflict, match="used for a different request"):
        await keys.begin("k", b"other")


async def test_an_abandoned_first_request_lets_the_next_one_go_first() -> None:
    keys = IdempotencyKeys(retention=60)
    assert await keys.begin("k", b"fp") is None
    keys.abandoned("k")
    assert await keys.begin("k", b"fp") is None


async def test_answers_expire_after_the_retention_window() -> None:
    keys = IdempotencyKeys(retention=10)
    await keys.begin("old", b"fp")
    keys.accepted("old", Answer(b"fp", 1_000, 0, 0))
    await keys.begin("new", b"fp")
    keys.accepted("new", Answer(b"fp", 9_000, 0, 1))
    keys.expire(12_000)
    assert list(keys.keys()) == ["new"]


async def test_replies_are_kept_for_keyed_calls_and_checkpointed() -> None:
    keys = IdempotencyKeys(retention=60)
    caller = IdempotencyKeys.caller_for("call")
    await keys.begin("call", b"fp")
    keys.accepted("call", Answer(b"fp", int(time.time() * 1000), 0, 5, caller))
    keys.reply(caller, REPLY, Tag(1, 4, "p"))
    restored = IdempotencyKeys(retention=60)
    restored.restore(keys.capture().part, {0: 0}, SkipRule(2, {1: 4}))
    answer = await restored.begin("call", b"fp")
    assert answer is not None
    assert answer.reply == REPLY


async def test_a_rollback_keeps_keys_accepted_since_and_drops_their_rolled_back_replies() -> None:
    keys = IdempotencyKeys(retention=60)
    checkpoint = keys.capture().part  # nothing yet
    caller = IdempotencyKeys.caller_for("late")
    await keys.begin("late", b"fp")
    keys.accepted("late", Answer(b"fp", int(time.time() * 1000), 0, 9, caller))
    keys.reply(caller, REPLY, Tag(1, 6, "p"))  # from epoch 6, rolled back below
    keys.restore(checkpoint, {0: 7}, SkipRule(2, {1: 5}))
    answer = await keys.begin("late", b"fp")
    assert answer is not None  # its record (offset 9) is past the checkpoint's positions
    assert answer.reply is None


def test_key_rules() -> None:
    assert check_key("a-key") is None
    assert check_key("") is not None
    assert check_key("x" * 256) is not None
    assert check_key("bad\nkey") is not None
