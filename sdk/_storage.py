"""The state of one address during one batch: ``context.storage`` and the mutations it yields.

Owns how declared states are read, written and deleted, and which ``StateMutation`` s
a batch produces. One ``Storage`` is shared by every invocation of a batch:

* a read deserializes the value once and caches it for the rest of the batch, so
  changing a value you read in place is not persisted until you assign it back;
* an assignment serializes at once, so a value of the wrong type fails at the line
  that assigned it; the assigned object is kept for later reads only when it is
  immutable (otherwise later reads deserialize what was stored, which is what will
  be persisted);
* ``del`` deletes. A state that ends the batch without a value, and had none when the
  batch began, yields no mutation even if it was written in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sdk._message import serialize
from sdk._spec import ValueSpec
from statefun.errors import ValueTypeError
from statefun.protocol import StateMutation, StateSpec
from statefun.values import TypedValue, TypeSerializer

__all__ = ["Storage", "StorageLayout", "collect_mutations"]

# Values of these types cannot change after assignment, so caching them is safe.
_IMMUTABLE: frozenset[type] = frozenset({int, float, bool, str, bytes})


class _Cell:
    """One declared state within a batch: what it held, what it holds, and its cached value."""

    __slots__ = ("data", "dirty", "loaded", "name", "original", "serializer", "typename", "value")

    def __init__(
        self, name: str, typename: str, serializer: TypeSerializer[Any], data: bytes | None
    ) -> None:
        self.name = name
        self.typename = typename
        self.serializer = serializer
        self.original = data
        self.data = data
        self.value: Any = None
        self.loaded = False
        self.dirty = False

    def load(self) -> Any:
        data = self.data
        if data is None:
            value = None
        else:
            try:
                value = self.serializer.deserialize(data)
            except Exception as e:
                raise ValueTypeError(
                    f"state {self.name!r} holds bytes that are not a valid {self.typename} "
                    f"value: {e}"
                ) from e
        self.value = value
        self.loaded = True
        return value

    def set(self, value: Any) -> None:
        if value is None:
            raise ValueError(
                f"cannot set state {self.name!r} to None; delete it with "
                f"'del context.storage.{self.name}'"
            )
        self.data = serialize(self.serializer, self.typename, value, f"state {self.name!r}")
        self.dirty = True
        if type(value) in _IMMUTABLE:
            self.value = value
            self.loaded = True
        else:
            self.value = None
            self.loaded = False

    def delete(self) -> None:
        self.data = None
        self.value = None
        self.loaded = True
        self.dirty = True


class Storage:
    """The declared states of the current address, one attribute each.

    Reading a state without a value gives None; assigning stores a value (checked
    against the state's type at once); ``del`` deletes it. Names that were not
    declared with a ``ValueSpec`` raise AttributeError.

    A value read is cached for the invocation: changing a list or dict you read does not
    persist it; assign it back.

    Example:

    ```python
    @functions.bind("shop/cart", specs=[ValueSpec("items", make_json_type("shop/Items"))])
    def cart(context: Context, message: Message) -> None:
        items = context.storage.items or []      # None until first written
        items.append(message.as_string())
        context.storage.items = items            # assign back: this is what persists
        if len(items) > 100:
            del context.storage.items            # deleted: reads give None again
    ```
    """

    # Internal names contain upper-case letters so that no state name (always lower
    # case) can shadow them; state names never match a class attribute either, so
    # every state access goes through the methods below.
    __slots__ = ("_Cells", "_Function")

    def __init__(self, function_type: str, cells: dict[str, _Cell]) -> None:
        object.__setattr__(self, "_Function", function_type)
        object.__setattr__(self, "_Cells", cells)

    def __getattr__(self, name: str) -> Any:
        cell = _cell(self, name)
        return cell.value if cell.loaded else cell.load()

    def __setattr__(self, name: str, value: Any) -> None:
        _cell(self, name).set(value)

    def __delattr__(self, name: str) -> None:
        _cell(self, name).delete()

    def __dir__(self) -> list[str]:
        return list(_cells(self))

    def __repr__(self) -> str:
        return (
            f"<Storage of {object.__getattribute__(self, '_Function')}: {', '.join(_cells(self))}>"
        )


def _cells(storage: Storage) -> dict[str, _Cell]:
    # object.__getattribute__ never falls back to Storage.__getattr__, so even a
    # half-built Storage (copy, pickle) cannot recurse.
    cells: dict[str, _Cell] = object.__getattribute__(storage, "_Cells")
    return cells


def _cell(storage: Storage, name: str) -> _Cell:
    cells = _cells(storage)
    cell = cells.get(name)
    if cell is None:
        function_type = object.__getattribute__(storage, "_Function")
        declared = ", ".join(cells) or "none"
        raise AttributeError(
            f"{name!r} is not a declared state of {function_type} (declared: {declared}); "
            "declare it with a ValueSpec when registering the function"
        )
    return cell


class StorageLayout:
    """The states a function type declares, resolved once at registration."""

    __slots__ = ("_entries", "function_type", "specs")

    def __init__(self, function_type: str, specs: Sequence[ValueSpec]) -> None:
        seen: set[str] = set()
        for spec in specs:
            if not isinstance(spec, ValueSpec):
                raise TypeError(
                    f"the specs of {function_type} must be ValueSpecs, not {type(spec).__name__}"
                )
            if spec.name in seen:
                raise ValueError(f"{function_type} declares state {spec.name!r} more than once")
            seen.add(spec.name)
        self.function_type = function_type
        self.specs = tuple(specs)
        self._entries = tuple((s.name, s.type.typename, s.type.serializer()) for s in self.specs)

    def missing(self, state: Mapping[str, TypedValue | None]) -> list[StateSpec]:
        """The declared states the runtime did not send, in declaration order."""
        return [spec.to_state_spec() for spec in self.specs if spec.name not in state]

    def open(self, state: Mapping[str, TypedValue | None]) -> Storage:
        """A storage over ``state``, which holds every declared name (see ``missing``).

        A value whose type name differs from the declared type raises ValueTypeError:
        the runtime holds state written under another type, which must not be misread.
        """
        cells: dict[str, _Cell] = {}
        for name, typename, serializer in self._entries:
            typed_value = state[name]
            if typed_value is None or typed_value.value is None:
                data = None
            elif typed_value.typename == typename:
                data = typed_value.value
            else:
                raise ValueTypeError(
                    f"state {name!r} of {self.function_type} holds a value of type "
                    f"{typed_value.typename}, but the function declares it as {typename}"
                )
            cells[name] = _Cell(name, typename, serializer, data)
        return Storage(self.function_type, cells)


def collect_mutations(storage: Storage) -> list[StateMutation]:
    """One mutation per state the batch changed, with its final value (None deletes)."""
    return [
        StateMutation(
            cell.name, None if cell.data is None else TypedValue(cell.typename, cell.data)
        )
        for cell in _cells(storage).values()
        if cell.dirty and (cell.data is not None or cell.original is not None)
    ]
