"""Replies to ``POST /v1/call``: the ingress's caller addresses and the requests waiting on them.

Each call gets an ordinary address of type ``statefun.ingress/caller``; any message
sent to it (a ``reply`` from the called function, or a ``send`` from anywhere further
down a chain) completes the waiting request. Messages to a caller that has stopped
waiting are dropped: its HTTP client already got its timeout answer.
"""

from __future__ import annotations

import asyncio
import itertools
import os

from runtime.routing import INGRESS_CALLER_TYPE
from statefun.address import Address
from statefun.values import TypedValue


class ShuttingDown(Exception):
    """The runtime is stopping; calls waiting for replies are answered now."""


class ReplyWaiters:
    def __init__(self) -> None:
        # Unique across restarts of the process, so a late reply can never reach a new caller.
        self._prefix = os.urandom(6).hex()
        self._ids = itertools.count()
        self._waiting: dict[Address, asyncio.Future[TypedValue]] = {}
        self._closed = False

    def new_caller(self) -> tuple[Address, asyncio.Future[TypedValue]]:
        if self._closed:
            raise ShuttingDown("the runtime is stopping")
        address = Address(
            INGRESS_CALLER_TYPE.namespace,
            INGRESS_CALLER_TYPE.name,
            f"{self._prefix}-{next(self._ids)}",
        )
        future: asyncio.Future[TypedValue] = asyncio.get_running_loop().create_future()
        self._waiting[address] = future
        return address, future

    def forget(self, address: Address) -> None:
        self._waiting.pop(address, None)

    def deliver(self, address: Address, value: TypedValue) -> bool:
        """Complete the call waiting on ``address``; False if nobody waits (any more)."""
        future = self._waiting.pop(address, None)
        if future is None or future.done():
            return False
        future.set_result(value)
        return True

    def close(self) -> None:
        """Stop waiting: every waiting call fails with :class:`ShuttingDown`, and new ones too."""
        self._closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ShuttingDown("the runtime is stopping"))
        self._waiting.clear()
