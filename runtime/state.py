"""Per-address state and the state specs of each function type.

Specs are learned lazily: a function answers "missing state specs" and the runtime
registers them. A registered state's type never changes; a function declaring the
same name with another type is an error. Values live in memory, keyed by address;
the addresses changed since the last checkpoint are tracked, so a checkpoint writes
only those.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from runtime.checkpoints.snapshot import decode_state, encode_state
from runtime.errors import StateSpecConflict
from runtime.progress import Progress
from runtime.routing import address_key
from statefun.address import Address, TypeName
from statefun.protocol import ExpireMode, StateMutation, StateSpec
from statefun.values import TypedValue


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
    """Per-address state values, their expiry deadlines, and which addresses changed since
    the last checkpoint.

    Expiry as in StateFun: a state declared ``expire_after_write`` is gone once it has not
    been written for its duration; ``expire_after_call``, once its address has not been
    invoked for it. Deadlines are absolute (wall-clock milliseconds) and part of every
    checkpoint. An expired value is never handed out (reads check its deadline), and a
    sweep (:meth:`expire`) drops expired values from memory: deadlines are filed in
    one-second buckets, so an idle address costs nothing between sweeps and a sweep
    looks only at the buckets that came due.
    """

    def __init__(self) -> None:
        self._values: dict[Address, dict[str, TypedValue]] = {}
        self._deadlines: dict[Address, dict[str, int]] = {}
        self._buckets: dict[int, set[Address]] = {}
        self._swept_to = 0
        self._changed: set[Address] = set()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, address: Address, now_ms: int | None = None) -> Mapping[str, TypedValue]:
        values = self._values.get(address)
        if values is None:
            return {}
        deadlines = self._deadlines.get(address)
        if deadlines:
            now = _now_ms() if now_ms is None else now_ms
            if any(d <= now for d in deadlines.values()):
                self._drop_expired(address, now)
                return self._values.get(address, {})
        return values

    def apply(
        self,
        address: Address,
        mutations: Iterable[StateMutation],
        specs: Mapping[str, StateSpec],
        now_ms: int,
    ) -> None:
        """Apply a batch's mutations; an ``expire_after_write`` state gets a new deadline."""
        values = self._values.get(address)
        for m in mutations:
            if m.value is not None:
                if values is None:
                    values = self._values[address] = {}
                values[m.name] = m.value
                spec = specs.get(m.name)
                if spec is not None and spec.expiration.mode is ExpireMode.AFTER_WRITE:
                    self._set_deadline(address, m.name, now_ms + spec.expiration.after_ms)
            elif values is not None:
                values.pop(m.name, None)
                self._clear_deadline(address, m.name)
        if values is not None and not values:
            del self._values[address]
        self._changed.add(address)

    def touch(self, address: Address, specs: Mapping[str, StateSpec], now_ms: int) -> None:
        """The address was invoked: its ``expire_after_call`` states get new deadlines."""
        values = self._values.get(address)
        if not values:
            return
        for name in values:
            spec = specs.get(name)
            if spec is not None and spec.expiration.mode is ExpireMode.AFTER_CALL:
                self._set_deadline(address, name, now_ms + spec.expiration.after_ms)
                self._changed.add(address)

    def expire(self, now_ms: int) -> int:
        """Drop the values whose deadline has passed; how many were dropped."""
        dropped = 0
        now_s = now_ms // 1000
        for second in [s for s in self._buckets if s <= now_s]:
            for address in self._buckets.pop(second):
                dropped += self._drop_expired(address, now_ms)
        return dropped

    def _set_deadline(self, address: Address, name: str, deadline: int) -> None:
        self._deadlines.setdefault(address, {})[name] = deadline
        self._buckets.setdefault(deadline // 1000, set()).add(address)

    def _clear_deadline(self, address: Address, name: str) -> None:
        deadlines = self._deadlines.get(address)
        if deadlines is not None:
            deadlines.pop(name, None)
            if not deadlines:
                del self._deadlines[address]

    def _drop_expired(self, address: Address, now_ms: int) -> int:
        deadlines = self._deadlines.get(address)
        values = self._values.get(address)
        if not deadlines or values is None:
            return 0
        expired = [name for name, deadline in deadlines.items() if deadline <= now_ms]
        for name in expired:
            values.pop(name, None)
            del deadlines[name]
        if not deadlines:
            del self._deadlines[address]
        if not values:
            del self._values[address]
        if expired:
            self._changed.add(address)
        return len(expired)

    def take_changes(self) -> tuple[list[tuple[bytes, bytes | None]], set[Address]]:
        """The changed addresses' state as checkpoint rows (None: no state), and the set
        of those addresses; the set of changes starts empty again."""
        changed = self.take_changed()
        return self.rows(changed), changed

    def rows(self, addresses: Iterable[Address]) -> list[tuple[bytes, bytes | None]]:
        """These addresses' state now, as checkpoint rows (None: no state)."""
        rows = []
        for address in addresses:
            values = self._values.get(address)
            rows.append(
                (
                    address_key(address),
                    encode_state(values, self._deadlines.get(address)) if values else None,
                )
            )
        return rows

    def addresses(self) -> Iterable[Address]:
        """Every address with state in memory."""
        return self._values.keys()

    def take_changed(self) -> set[Address]:
        """The addresses changed since the last call; none from then on."""
        changed, self._changed = self._changed, set()
        return changed

    def changed_again(self, addresses: Iterable[Address]) -> None:
        """Count these as changed since the last checkpoint (their capture was abandoned)."""
        self._changed.update(addresses)

    def load(self, rows: Iterable[tuple[bytes, bytes]], progress: Progress | None = None) -> None:
        """Replace everything with checkpointed state (rows of address key, state),
        advancing ``progress`` by one per address."""
        self._values, self._deadlines, self._buckets = {}, {}, {}
        self._changed = set()
        for key, data in rows:
            address = Address.parse(key.decode())
            values, deadlines = decode_state(data)
            self._values[address] = values
            for name, deadline in deadlines.items():
                self._set_deadline(address, name, deadline)
            if progress is not None:
                progress.advance()
        if progress is not None:
            progress.finish()


def _now_ms() -> int:
    return int(time.time() * 1000)
