"""A reply to a call answers only from input the log holds: a default reply waits until
the records the worker took early are durable, and a committed one is held for its
checkpoint whatever the log is doing."""

from __future__ import annotations

import asyncio

import pytest

from runtime.checkpoints.epochs import Tag
from runtime.replies import ReplyWaiters
from statefun.values import TypedValue

pytestmark = pytest.mark.anyio

VALUE = TypedValue("t/x", b"v")
TAG = Tag(1, 4, "worker")


def _with_unsettled_append() -> tuple[ReplyWaiters, asyncio.Future[list[int]]]:
    replies = ReplyWaiters()
    unsettled: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    replies.unsettled = lambda: None if unsettled.done() else unsettled
    return replies, unsettled


async def test_a_default_reply_answers_once_the_log_has_made_its_input_durable() -> None:
    replies, unsettled = _with_unsettled_append()
    caller, reply = replies.new_caller()
    assert replies.deliver(caller, VALUE, TAG)
    assert not reply.done()  # its input may not be durable yet
    unsettled.set_result([7])
    assert await asyncio.wait_for(reply, 5.0) == VALUE


async def test_a_default_reply_is_not_given_when_the_log_fails_but_by_the_replay() -> None:
    replies, unsettled = _with_unsettled_append()
    caller, reply = replies.new_caller()
    replies.deliver(caller, VALUE, TAG)
    unsettled.set_exception(OSError("disk full"))
    called_back = asyncio.Event()
    asyncio.get_running_loop().call_soon(called_back.set)  # after the future's callbacks
    await called_back.wait()
    assert not reply.done()  # the generation rolls back; the call still waits
    replay = TypedValue("t/x", b"from the replay")
    assert replies.deliver(caller, replay, Tag(2, 1, "worker"))  # the log is settled now
    assert await asyncio.wait_for(reply, 5.0) == replay


async def test_a_committed_reply_is_held_for_its_checkpoint_without_waiting_for_the_log() -> None:
    replies, unsettled = _with_unsettled_append()
    caller, reply = replies.new_caller(committed=True)
    demanded: list[bool] = []
    replies.on_demand = lambda: demanded.append(True)
    assert replies.deliver(caller, VALUE, TAG)
    assert demanded == [True]
    assert replies.capture().releases  # this checkpoint's commit releases it
    replies.committed(TAG.generation, TAG.epoch)
    assert await asyncio.wait_for(reply, 5.0) == VALUE
    assert not unsettled.done()
