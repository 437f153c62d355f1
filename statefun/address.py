"""Type names and addresses: what a value is and who a message is for.

Owns the rules for ``namespace/name`` type names and for function addresses
``namespace/type/id``. Nothing else in the system validates names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from statefun.errors import InvalidNameError

__all__ = ["Address", "TypeName"]


_WHITESPACE = re.compile(r"\s")
_KNOWN_MAX = 4096
"""Function types remembered as checked (a handful in practice; bounded for safety)."""
_CHECKED_TYPES: set[tuple[str, str]] = set()
"""(namespace, type) pairs of addresses that passed their checks: an address of a known
function type checks only its id (a name once valid is always valid)."""
_TYPE_NAMES: dict[tuple[str, str], TypeName] = {}
"""The :class:`TypeName` of each known function type, made once."""


def _check_part(text: str, what: str, whole: str) -> None:
    if not text:
        raise InvalidNameError(f"{what} of {whole!r} is empty")
    if not text.isprintable() or _WHITESPACE.search(text):
        raise InvalidNameError(f"{what} of {whole!r} contains whitespace or control characters")


@dataclass(frozen=True, slots=True, order=True)
class TypeName:
    """A type name ``namespace/name``: of a function type, a value type or an egress.

    The namespace may itself contain ``/`` (``type.googleapis.com/x.Y`` style names
    split at the last one); the name may not.
    """

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TypeName:
        if not isinstance(text, str):
            raise InvalidNameError(f"a type name must be a string, not {type(text).__name__}")
        namespace, slash, name = text.rpartition("/")
        if not slash:
            raise InvalidNameError(f"type name {text!r} is not of the form 'namespace/name'")
        _check_part(namespace, "the namespace", text)
        _check_part(name, "the name", text)
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A function instance: its function type ``namespace/type`` and its id.

    Function type namespaces contain no ``/`` so an address reads unambiguously as
    ``namespace/type/id``; the id may contain anything printable, ``/`` included.
    """

    namespace: str
    type: str
    id: str

    def __post_init__(self) -> None:
        # Addresses are made for every message: the function type's checks run once per
        # type, and the message naming the whole address is only built for an error.
        kind = (self.namespace, self.type)
        if kind not in _CHECKED_TYPES:
            self._check_function_type()
            if len(_CHECKED_TYPES) < _KNOWN_MAX:
                _CHECKED_TYPES.add(kind)
        if not self.id:
            raise InvalidNameError(f"the id of {str(self)!r} is empty")
        if not self.id.isprintable():
            raise InvalidNameError(f"the id of {str(self)!r} contains control characters")

    def _check_function_type(self) -> None:
        whole = str(self)
        _check_part(self.namespace, "the namespace", whole)
        if "/" in self.namespace:
            raise InvalidNameError(f"the namespace of function address {whole!r} contains '/'")
        _check_part(self.type, "the function type name", whole)
        if "/" in self.type:
            raise InvalidNameError(f"the function type name of {whole!r} contains '/'")

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``namespace/type/id``."""
        parts = text.split("/", 2)
        if len(parts) != 3:
            raise InvalidNameError(f"address {text!r} is not of the form 'namespace/type/id'")
        return cls(*parts)

    @classmethod
    def of(cls, function_type: str | TypeName, id: str) -> Address:
        tn = function_type if isinstance(function_type, TypeName) else TypeName.parse(function_type)
        return cls(tn.namespace, tn.name, id)

    @property
    def function_type(self) -> TypeName:
        kind = (self.namespace, self.type)
        name = _TYPE_NAMES.get(kind)
        if name is None:
            name = TypeName(self.namespace, self.type)
            if len(_TYPE_NAMES) < _KNOWN_MAX:
                _TYPE_NAMES[kind] = name
        return name

    @property
    def typename(self) -> str:
        return f"{self.namespace}/{self.type}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.type}/{self.id}"
