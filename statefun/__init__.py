"""The contract shared by the SDK and the runtime.

Addresses and type names, typed values and the type system, the invocation protocol
model and its codecs, and the module spec. It imports neither ``sdk`` nor ``runtime``.
"""

from statefun.address import Address, TypeName
from statefun.errors import (
    InvalidNameError,
    ModuleSpecError,
    ProtocolError,
    StatefunError,
    ValueTypeError,
)
from statefun.values import TypedValue

__all__ = [
    "Address",
    "InvalidNameError",
    "ModuleSpecError",
    "ProtocolError",
    "StatefunError",
    "TypeName",
    "TypedValue",
    "ValueTypeError",
]
