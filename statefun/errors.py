"""The error tree of the contract.

Everything the contract raises derives from :class:`StatefunError`::

    StatefunError
    ├── InvalidNameError      a type name, address or state name is malformed (also a ValueError)
    ├── ValueTypeError        a value does not match its type (also a TypeError)
    ├── ProtocolError         bytes on the wire are not a valid message of the protocol
    └── ModuleSpecError       a module spec (module.yaml) is invalid; names the document and field

The SDK and the runtime raise their own errors on top of these; they never need to
catch anything else from ``statefun``.
"""

from __future__ import annotations


class StatefunError(Exception):
    """Base of every error raised by the contract."""


class InvalidNameError(StatefunError, ValueError):
    """A type name, an address or a state name is malformed."""


class ValueTypeError(StatefunError, TypeError):
    """A value does not match the type it is read or written as."""


class ProtocolError(StatefunError):
    """Bytes on the wire are not a valid message of the invocation protocol."""


class ModuleSpecError(StatefunError):
    """A module spec is invalid.

    ``document`` is the 1-based index of the YAML document in its file and ``field``
    the dotted path of the offending field, so the message can point at the line to fix.
    """

    def __init__(self, message: str, *, source: str, document: int | None, field: str | None):
        where = source
        if document is not None:
            where += f", document {document}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.document = document
        self.field = field
