"""Per-address state and the state specs of each function type.

Specs are learned lazily: a function answers "missing state specs" and the runtime
registers them. A registered state's type never changes; a function declaring the
same name with another type is an error. Values live in memory, keyed by address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
    def __init__(self) -> None:
        self._values: dict[Address, dict[str, TypedValue]] = {}

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
