"""Declared state: ``ValueSpec``, the rules for state names, and its protocol form.

A state name becomes an attribute of ``context.storage``, so it must be a lower-case
Python identifier that is not a keyword (the official SDK's rules); dunder names are
refused as well because they would collide with Python's own attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from keyword import iskeyword
from typing import Any

from statefun.errors import InvalidNameError
from statefun.protocol import NO_EXPIRATION, Expiration, ExpireMode, StateSpec
from statefun.values import Type

__all__ = ["ValueSpec"]

_ONE_MS = timedelta(milliseconds=1)


def _check_state_name(name: object) -> None:
    if not isinstance(name, str):
        raise InvalidNameError(f"a state name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidNameError("a state name must not be empty")
    if not name.isidentifier():
        raise InvalidNameError(
            f"invalid state name {name!r}: it must be a Python identifier (letters, digits "
            "and underscores, not starting with a digit) because it becomes an attribute "
            "of context.storage"
        )
    if iskeyword(name):
        raise InvalidNameError(
            f"invalid state name {name!r}: it is a Python keyword, so context.storage.{name} "
            "could not be written"
        )
    if not name.islower():
        raise InvalidNameError(f"invalid state name {name!r}: only lower-case names are allowed")
    if name.startswith("__") and name.endswith("__"):
        raise InvalidNameError(
            f"invalid state name {name!r}: dunder names are reserved for Python itself"
        )


def _check_expiration(value: object, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, timedelta):
        raise TypeError(f"{what} must be a datetime.timedelta, not {type(value).__name__}")
    if value < _ONE_MS:
        raise ValueError(f"{what} must be at least one millisecond, got {value!r}")


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """A state a function declares: its name, its value type and an optional expiration.

    At most one of ``expire_after_call`` (no call to the address for that long) and
    ``expire_after_write`` (not written for that long) may be given; the runtime keeps
    the expiration with millisecond precision. The name must be a lower-case Python
    identifier: it becomes an attribute of ``context.storage``.

    Example:

    ```python
    >>> from datetime import timedelta
    >>> from sdk import IntType, ValueSpec, make_json_type
    >>> visits = ValueSpec("visits", IntType)
    >>> cart = ValueSpec("cart", make_json_type("shop/Cart"), expire_after_call=timedelta(days=1))
    >>> ValueSpec("Visits", IntType)
    Traceback (most recent call last):
    statefun.errors.InvalidNameError: invalid state name 'Visits': only lower-case names are allowed

    ```
    """

    name: str
    type: Type[Any]
    expire_after_call: timedelta | None = None
    expire_after_write: timedelta | None = None

    def __post_init__(self) -> None:
        _check_state_name(self.name)
        if not isinstance(self.type, Type):
            raise TypeError(
                f"the type of state {self.name!r} must be a Type (IntType, make_json_type(...), "
                f"simple_type(...), ...), not {type(self.type).__name__}"
            )
        _check_expiration(self.expire_after_call, "expire_after_call")
        _check_expiration(self.expire_after_write, "expire_after_write")
        if self.expire_after_call is not None and self.expire_after_write is not None:
            raise ValueError(
                f"state {self.name!r} sets both expire_after_call and expire_after_write; "
                "choose one"
            )

    def to_state_spec(self) -> StateSpec:
        """This spec as the protocol declares it to the runtime."""
        if self.expire_after_call is not None:
            expiration = Expiration(ExpireMode.AFTER_CALL, self.expire_after_call // _ONE_MS)
        elif self.expire_after_write is not None:
            expiration = Expiration(ExpireMode.AFTER_WRITE, self.expire_after_write // _ONE_MS)
        else:
            expiration = NO_EXPIRATION
        return StateSpec(self.name, self.type.typename, expiration)
