"""What a function sees while it runs: ``Context``, ``SdkAddress`` and the batch's effects.

``Context`` is the public, abstract type users annotate with. ``BatchContext`` is the
one implementation: a single instance serves every invocation of a batch (the handler
points ``_caller`` at each invocation's caller in turn) and records the effects as
protocol objects, in the order they were made, ready for the ``InvocationResult``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sdk._message import EgressMessage, Message, typed_value_from_keywords
from sdk._storage import Storage, collect_mutations
from statefun.address import Address
from statefun.protocol import (
    DelayCancellation,
    DelayedMessage,
    EgressRecord,
    InvocationResult,
    OutgoingMessage,
)

__all__ = ["BatchContext", "Context", "NoCallerError", "SdkAddress"]

_ONE_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class SdkAddress:
    """A function instance: ``typename`` is ``namespace/name``, ``id`` the instance.

    What ``context.address`` and ``context.caller`` give.

    Example:

    ```python
    def greeter(context: Context, message: Message) -> None:
        me = context.address          # SdkAddress(namespace='example', name='greeter', id='Alice', ...)
        assert me.typename == "example/greeter" and me.id == "Alice"
        if context.caller is not None:
            print("sent by", context.caller.typename, context.caller.id)
    ```
    """

    namespace: str
    name: str
    id: str
    typename: str


def _sdk_address(address: Address) -> SdkAddress:
    return SdkAddress(address.namespace, address.type, address.id, address.typename)


class NoCallerError(RuntimeError):
    """``reply()`` was called for a message that has no caller.

    Messages sent with ``POST /v1/messages`` (``statefun send``) or read from a Kafka
    ingress have no caller; those of ``POST /v1/call`` (``statefun call``) and those a
    function sent (``send``, ``send_after``) have one. Raising it fails the invocation
    like any other exception (the function's failure policy decides what follows), so
    guard a reply that may have nowhere to go.

    Example:

    ```python
    def greeter(context: Context, message: Message) -> None:
        greeting = f"Hello {message.as_string()}"
        if context.caller is not None:  # not there for POST /v1/messages
            context.reply(str_value=greeting)
    ```
    """


class Context(abc.ABC):
    """The running function's view of the world: who it is, who called, its state, and
    the messages it sends.

    Every effect (state written, messages sent, egress records) is applied by the
    runtime once the invocation returns, all together: if the function raises, none is.

    A message sent with :meth:`send` or :meth:`send_after` carries the sender as its
    caller: a function that answers every caller with :meth:`reply` also answers the
    functions that message it, which may not expect it. Reply only where a reply is
    wanted, e.g. when ``context.caller`` is of the type you expect, or is an ingress
    call.

    Example:

    ```python
    from datetime import timedelta

    from sdk import Context, IntType, Message, StatefulFunctions, ValueSpec, message_builder

    functions = StatefulFunctions()

    @functions.bind("example/greeter", specs=[ValueSpec("visits", IntType)])
    def greeter(context: Context, message: Message) -> None:
        visits = (context.storage.visits or 0) + 1
        context.storage.visits = visits
        context.send(message_builder("example/audit", context.address.id, int_value=visits))
        context.send_after(
            timedelta(minutes=5),
            message_builder("example/greeter", context.address.id, str_value="again"),
            cancellation_token=f"remind-{context.address.id}",
        )
        if context.caller is not None:
            context.reply(str_value=f"Hello {message.as_string()}, visit {visits}")
    ```
    """

    __slots__ = ()

    @property
    @abc.abstractmethod
    def address(self) -> SdkAddress:
        """The address of the function instance that is running."""

    @property
    @abc.abstractmethod
    def caller(self) -> SdkAddress | None:
        """The function that sent the current message, or None if it came from an ingress."""

    @property
    @abc.abstractmethod
    def storage(self) -> Storage:
        """The declared states of this address, one attribute per ``ValueSpec``."""

    @abc.abstractmethod
    def send(self, message: Message) -> None:
        """Send ``message`` to its target function."""

    @abc.abstractmethod
    def send_after(
        self, duration: timedelta, message: Message, cancellation_token: str = ""
    ) -> None:
        """Send ``message`` after ``duration`` (named as in StateFun's SDK); a non-empty token lets it be cancelled later."""

    @abc.abstractmethod
    def cancel_delayed_message(self, cancellation_token: str) -> None:
        """Cancel the delayed message sent with this token (best effort: it may have been
        delivered already, in which case nothing happens).
        """

    @abc.abstractmethod
    def send_egress(self, message: EgressMessage) -> None:
        """Send ``message`` to its egress."""

    @abc.abstractmethod
    def reply(self, **kwargs: Any) -> None:
        """Send a value back to the caller; takes ``message_builder``'s value keywords.

        Raises :class:`NoCallerError` if the current message came from an ingress.
        """


class BatchContext(Context):
    """The context of one batch; ``result()`` is its ``InvocationResult``."""

    __slots__ = (
        "_address",
        "_caller",
        "_delayed",
        "_egress",
        "_messages",
        "_pending",
        "_storage",
        "_target",
    )

    def __init__(
        self, target: Address, storage: Storage, pending_tokens: tuple[str, ...] = ()
    ) -> None:
        self._target = target
        self._address: SdkAddress | None = None  # built on first use: many functions never ask
        self._caller: Address | None = None
        self._storage = storage
        self._messages: list[OutgoingMessage] = []
        self._delayed: list[DelayedMessage | DelayCancellation] = []
        self._egress: list[EgressRecord] = []
        # Tokens of delayed messages pending: sent earlier (the runtime says which) or in
        # this batch, and not cancelled since.
        self._pending: set[str] = set(pending_tokens)

    @property
    def address(self) -> SdkAddress:
        address = self._address
        if address is None:
            address = self._address = _sdk_address(self._target)
        return address

    @property
    def caller(self) -> SdkAddress | None:
        caller = self._caller
        return None if caller is None else _sdk_address(caller)

    @property
    def storage(self) -> Storage:
        return self._storage

    def send(self, message: Message) -> None:
        if not isinstance(message, Message):
            raise TypeError(
                f"send() takes a Message (see message_builder), not {type(message).__name__}"
            )
        self._messages.append(OutgoingMessage(message.target, message.typed_value))

    def send_after(
        self, duration: timedelta, message: Message, cancellation_token: str = ""
    ) -> None:
        if not isinstance(duration, timedelta):
            raise TypeError(
                f"the duration must be a datetime.timedelta, not {type(duration).__name__}"
            )
        if duration < timedelta(0):
            raise ValueError(f"the duration must not be negative, got {duration!r}")
        if not isinstance(message, Message):
            raise TypeError(
                f"send_after() takes a Message (see message_builder), not {type(message).__name__}"
            )
        if not isinstance(cancellation_token, str):
            raise TypeError(
                f"a cancellation token must be a str, not {type(cancellation_token).__name__}"
            )
        if cancellation_token:
            if cancellation_token in self._pending:
                raise ValueError(
                    f"a delayed message with cancellation token {cancellation_token!r} is "
                    "already pending for this address (sent and neither delivered nor "
                    "cancelled); use a distinct token, or cancel the first message before "
                    "sending another with this token"
                )
            self._pending.add(cancellation_token)
        self._delayed.append(
            DelayedMessage(
                duration // _ONE_MS, message.target, message.typed_value, cancellation_token or None
            )
        )

    def cancel_delayed_message(self, cancellation_token: str) -> None:
        if not isinstance(cancellation_token, str):
            raise TypeError(
                f"a cancellation token must be a str, not {type(cancellation_token).__name__}"
            )
        if not cancellation_token:
            raise ValueError("cannot cancel with an empty cancellation token")
        self._pending.discard(cancellation_token)
        self._delayed.append(DelayCancellation(cancellation_token))

    def send_egress(self, message: EgressMessage) -> None:
        if not isinstance(message, EgressMessage):
            raise TypeError(
                "send_egress() takes an EgressMessage (see egress_message_builder, "
                f"kafka_egress_message), not {type(message).__name__}"
            )
        self._egress.append(EgressRecord(message.egress, message.typed_value))

    def reply(self, **kwargs: Any) -> None:
        caller = self._caller
        if caller is None:
            raise NoCallerError(
                f"{self._target} cannot reply: the current message has no caller (it came "
                "through POST /v1/messages, statefun send or a Kafka ingress, not from a "
                "function nor POST /v1/call); to get a reply over HTTP "
                "send it with POST /v1/call (statefun call), or reply only when "
                "context.caller is not None"
            )
        self._messages.append(OutgoingMessage(caller, typed_value_from_keywords(kwargs)))

    def result(self) -> InvocationResult:
        return InvocationResult(
            collect_mutations(self._storage), self._messages, self._delayed, self._egress
        )
