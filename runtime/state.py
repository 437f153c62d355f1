"""Per-address state and the state specs of each function type.

Specs are learned lazily: a function answers "missing state specs" and the runtime
registers them. A registered state's type never changes; a function declaring the
same name with another type is an error. Values live in memory, keyed by address;
the addresses changed since the last checkpoint are tracked, so a checkpoint writes
only those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from runtime.checkpoints.snapshot import decode_state, encode_state
from runtime.routing import address_key
from statefun.address import Address, TypeName
from statefun.protocol import StateMutation, StateSpec
from statefun.values import TypedValue


class StateSpecConflict(ValueError):
    """A function declared a state under a registered name with another type."""


class StateSpecRegistry:
    def __init__(self) -> None:
        self._specs: dict[TypeName, dict[str, StateSpec]] = {}

    def specs(self, function_type: TypeName) -> Mapping[str, StateSpec]:
        return self._specs.get(function_type, {})

    def register(self, function_type: TypeName, specs: Iterable[StateSpec]) -> None:
        """Register all of ``specs``, or none of them if one conflicts."""
        specs = list(specs)
        known = self._specs.setdefault(function_type, {})
        for spec in specs:
            existing = known.get(spec.name)
            if existing is not None and existing.typename != spec.typename:
                raise StateSpecConflict(
                    f"{function_type} declares state {spec.name!r} as {spec.typename}, "
                    f"but it is registered as {existing.typename}"
                )
        for spec in specs:
            known[spec.name] = spec


class StateStore:
    """Per-address state values, and which addresses changed since the last checkpoint."""

    def __init__(self) -> None:
        self._values: dict[Address, dict[str, TypedValue]] = {}
        self._changed: set[Address] = set()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, address: Address) -> Mapping[str, TypedValue]:
        return self._values.get(address, {})

    def apply(self, address: Address, mutations: Iterable[StateMutation]) -> None:
        values = self._values.get(address)
        for m in mutations:
            if m.value is not None:
                if values is None:
                    values = self._values[address] = {}
                values[m.name] = m.value
            elif values is not None:
                values.pop(m.name, None)
        if values is not None and not values:
            del self._values[address]
        self._changed.add(address)

    def take_changes(self) -> tuple[list[tuple[bytes, bytes | None]], set[Address]]:
        """The changed addresses' state as checkpoint rows (None: no state), and the set
        of those addresses; the set of changes starts empty again."""
        changed, self._changed = self._changed, set()
        rows = []
        for address in changed:
            values = self._values.get(address)
            rows.append((address_key(address), encode_state(values) if values else None))
        return rows, changed

    def changed_again(self, addresses: Iterable[Address]) -> None:
        """Count these as changed since the last checkpoint (their capture was abandoned)."""
        self._changed.update(addresses)

    def load(self, rows: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace everything with checkpointed state (rows of address key, state)."""
        self._values = {Address.parse(key.decode()): decode_state(data) for key, data in rows}
        self._changed = set()
