"""Replies to ``POST /v1/call``: the ingress's caller addresses and the requests waiting on them.

Each call gets an ordinary address of type ``statefun.ingress/caller``; any message
sent to it (a ``reply`` from the called function, or a ``send`` from anywhere further
down a chain) completes the waiting request. Messages to a caller that has stopped
waiting are dropped: its HTTP client already got its timeout answer.

In a cluster every caller address names where its reply goes (see :func:`caller_home`):
the member holding the HTTP request (``<member>.<random>-<n>``), or, for a call with an
idempotency key, the partition of its target (``<partition>.key-<digest>``), whose
owner checks the key and holds the request, whoever owns it by the time the reply is
produced. Without a member id (one process) the address names nothing: it is local.

A call may ask for a *committed* reply: the reply is held until the checkpoint of the
epoch that produced it commits, so rolled-back work can never answer a call (replay
produces the reply again). Otherwise the first reply answers at once, but not before the
records the worker took early from the embedded log (``Log.early_consumer``) are
durable: a reply always comes from input that replay would find.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

from runtime.checkpoints.coordinator import Capture
from runtime.checkpoints.epochs import SkipRule, Tag
from runtime.errors import ConfigurationError, ShuttingDown
from runtime.routing import INGRESS_CALLER_TYPE
from statefun.address import Address
from statefun.values import TypedValue


def caller_home(address: Address) -> str | int | None:
    """Where a reply to the caller address ``address`` goes: a member id, the partition
    whose owner holds the call, or None (no home named: the process that produced it)."""
    head, dot, _ = address.id.partition(".")
    if not dot:
        return None
    return int(head) if head.isdigit() else head


async def reply_within(reply: asyncio.Future[TypedValue], seconds: float) -> TypedValue:
    """The reply, or ``TimeoutError`` once ``seconds`` have passed without one.

    The future is the waiting call's own (:meth:`ReplyWaiters.new_caller`), so the timeout
    ends it rather than a task: one timer per call, where ``asyncio.timeout`` around
    ``asyncio.shield`` costs a context manager, a second future and their callbacks. A
    reply after the timeout finds the future done and goes nowhere, as one to a caller
    that stopped waiting."""
    timer = reply.get_loop().call_later(seconds, _time_out, reply)
    try:
        return await reply
    finally:
        timer.cancel()


def _time_out(reply: asyncio.Future[TypedValue]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


def check_member_id(member: str) -> None:
    """Refuse a member id a caller address could not name unambiguously."""
    if not member or "." in member or member.isdigit():
        raise ConfigurationError(
            f"member id {member!r} must be non-empty, without '.', and not only digits"
        )


@dataclass(slots=True)
class _Waiter:
    futures: list[asyncio.Future[TypedValue]]
    committed: bool
    held: tuple[TypedValue, Tag] | None = None
    """A reply of work not yet committed (only for committed calls)."""


class ReplyWaiters:
    """The ingress's waiting calls; a checkpoint participant that keeps no part, but
    says whether a checkpoint's commit releases replies held for it."""

    name = "replies"

    def __init__(self, member: str | None = None) -> None:
        """``member``: this process's member id in a cluster; its caller addresses name it."""
        # Unique across restarts of the process, so a late reply can never reach a new caller.
        self._prefix = os.urandom(6).hex()
        if member is not None:
            check_member_id(member)
            self._prefix = f"{member}.{self._prefix}"
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The event loop of the calls, once one came: on Python 3.11 each
        ``asyncio.get_running_loop()`` is a system call (``getpid``)."""
        self._waiting: dict[Address, _Waiter] = {}
        self._closed = False
        self.on_reply: Callable[[Address, TypedValue, Tag | None], None] = lambda a, v, t: None
        """Sees every message to a caller address, waited for or not (idempotency keys)."""
        self.on_demand: Callable[[], None] = lambda: None
        """Called when a reply is held for a commit: a checkpoint should come soon."""
        self.unsettled: Callable[[], asyncio.Future[list[int]] | None] = lambda: None
        """The log's newest append not yet durable (``Log.unsettled``): a reply answers
        only once it is, since the work that produced the reply may have read a record
        of it."""

    def new_caller(
        self, *, committed: bool = False, address: Address | None = None
    ) -> tuple[Address, asyncio.Future[TypedValue]]:
        """A caller address (``address``, or a fresh one) and a future for its reply;
        several calls may wait on one address (retries with an idempotency key)."""
        if self._closed:
            raise ShuttingDown("the runtime is stopping")
        if address is None:
            address = Address(
                INGRESS_CALLER_TYPE.namespace,
                INGRESS_CALLER_TYPE.name,
                f"{self._prefix}-{next(self._ids)}",
            )
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[TypedValue] = loop.create_future()
        waiter = self._waiting.get(address)
        if waiter is None:
            self._waiting[address] = _Waiter([future], committed)
        else:
            waiter.futures.append(future)
            waiter.committed = waiter.committed or committed
        return address, future

    def hold(self, address: Address, value: TypedValue, tag: Tag) -> None:
        """Hold a reply known already (of work not yet committed) for ``address``."""
        waiter = self._waiting.get(address)
        if waiter is not None and waiter.held is None:
            waiter.held = (value, tag)
            self.on_demand()

    def forget(self, address: Address, future: asyncio.Future[TypedValue]) -> None:
        waiter = self._waiting.get(address)
        if waiter is not None:
            if future in waiter.futures:
                waiter.futures.remove(future)
            if not waiter.futures:
                del self._waiting[address]

    def deliver(self, address: Address, value: TypedValue, tag: Tag | None) -> bool:
        """A reply for ``address`` from work tagged ``tag``; False if nobody waits (any more)."""
        self.on_reply(address, value, tag)
        waiter = self._waiting.get(address)
        if waiter is None:
            return False
        unsettled = None if waiter.committed else self.unsettled()
        if unsettled is None:
            self._release(address, value, tag)
        else:
            unsettled.add_done_callback(lambda done: self._settled(address, value, tag, done))
        return True

    def _settled(
        self, address: Address, value: TypedValue, tag: Tag | None, done: asyncio.Future[list[int]]
    ) -> None:
        """What the reply may derive from is durable now; if the log failed instead, the
        generation rolls back, and replay answers the call again."""
        if not done.cancelled() and done.exception() is None:
            self._release(address, value, tag)

    def _release(self, address: Address, value: TypedValue, tag: Tag | None) -> None:
        """Answer the call waiting at ``address``, or hold the reply until its commit (a
        committed reply needs no wait for the log: its checkpoint flushes it first)."""
        waiter = self._waiting.get(address)
        if waiter is None:
            return
        if waiter.committed and tag is not None:
            if waiter.held is None:
                waiter.held = (value, tag)
                self.on_demand()
            return
        self._answer(address, value)

    def capture(self) -> Capture:
        """The replies held now are of work up to this checkpoint: its commit releases them."""
        return Capture(
            None, releases=any(waiter.held is not None for waiter in self._waiting.values())
        )

    def committed(self, generation: int, checkpoint: int) -> None:
        """Checkpoint ``checkpoint`` of ``generation`` committed: release what it covers."""
        for address, waiter in list(self._waiting.items()):
            if waiter.held is not None:
                value, tag = waiter.held
                if tag.generation == generation and tag.epoch <= checkpoint:
                    self._answer(address, value)

    def rolled_back(self, skip: SkipRule) -> None:
        """A new generation began: held replies of rolled-back work are dropped (replay
        produces them again); those of work the restored checkpoint covers are released."""
        for address, waiter in list(self._waiting.items()):
            if waiter.held is not None:
                value, tag = waiter.held
                if not skip.accepts(tag):
                    waiter.held = None
                elif tag.generation != skip.current:
                    self._answer(address, value)

    def _answer(self, address: Address, value: TypedValue) -> None:
        for future in self._waiting.pop(address).futures:
            if not future.done():
                future.set_result(value)

    def close(self) -> None:
        """Stop waiting: every waiting call fails with :class:`ShuttingDown`, and new ones too."""
        self._closed = True
        for waiter in self._waiting.values():
            for future in waiter.futures:
                if not future.done():
                    future.set_exception(ShuttingDown("the runtime is stopping"))
        self._waiting.clear()
