"""Per-address state and the state specs of each function type.

Specs are learned lazily: a function answers "missing state specs" and the runtime
registers them. A registered state's type never changes; a function declaring the
same name with another type is an error. Values live in memory, keyed by address;
the addresses changed since the last checkpoint are tracked, so a checkpoint writes
only those.

Pages of the addresses of a function type that hold state (:class:`AddressPage`) are
also this module's: ids in codepoint order, strictly after a given id. The store keeps,
per function type, a sorted list of its ids; addresses that gain or lose all their
state are noted in two sets and folded into the list when the next page is read (a
linear merge, never a full sort), so the hot path pays a set insertion and an idle
listing a binary search. :func:`page_of` pages any sorted list of ids and
:func:`merge_pages` merges the pages of disjoint sets (partitions, members).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class AddressPage:
    """A page of the ids of a function type's addresses that hold state, in order."""

    ids: list[str]
    more: bool
    """Whether ids follow the last one of the page."""

    @property
    def next(self) -> str | None:
        """The id to ask the next page after; None on the last page."""
        return self.ids[-1] if self.more else None


def page_of(
    ids: Sequence[str],
    after: str | None,
    limit: int,
    holds: Callable[[str], bool] | None = None,
) -> AddressPage:
    """The first ``limit`` of the sorted ``ids`` strictly after ``after`` (and for which
    ``holds`` is true, if given)."""
    found: list[str] = []
    index = 0 if after is None else bisect.bisect_right(ids, after)
    while index < len(ids) and len(found) <= limit:
        id_ = ids[index]
        if holds is None or holds(id_):
            found.append(id_)
        index += 1
    return AddressPage(found[:limit], len(found) > limit)


def merge_pages(pages: Iterable[AddressPage], limit: int) -> AddressPage:
    """One page from the pages (each after the same id, with the same ``limit``) of
    disjoint sets of ids."""
    pages = list(pages)
    merged = list(itertools.islice(heapq.merge(*(p.ids for p in pages)), limit + 1))
    return AddressPage(merged[:limit], len(merged) > limit or any(p.more for p in pages))


class _SortedIds:
    """The ids of one function type's addresses with state: a sorted list, and the ids
    added to and removed from it since it was last read."""

    __slots__ = ("_added", "_ids", "_removed")

    def __init__(self, ids: list[str] | None = None) -> None:
        self._ids: list[str] = ids or []
        self._added: set[str] = set()
        self._removed: set[str] = set()

    def add(self, id_: str) -> None:
        if id_ in self._removed:
            self._removed.discard(id_)  # still in the list
        else:
            self._added.add(id_)

    def remove(self, id_: str) -> None:
        if id_ in self._added:
            self._added.discard(id_)  # never in the list
        else:
            self._removed.add(id_)

    def ids(self) -> list[str]:
        if self._removed:
            removed, self._removed = self._removed, set()
            self._ids = [i for i in self._ids if i not in removed]
        if self._added:
            self._ids.extend(sorted(self._added))
            self._ids.sort()  # two sorted runs: Timsort merges them in linear time
            self._added = set()
        return self._ids


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
        self._index: dict[TypeName, _SortedIds] = {}

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
                    self._indexed(address).add(address.id)
                values[m.name] = m.value
                spec = specs.get(m.name)
                if spec is not None and spec.expiration.mode is ExpireMode.AFTER_WRITE:
                    self._set_deadline(address, m.name, now_ms + spec.expiration.after_ms)
            elif values is not None:
                values.pop(m.name, None)
                self._clear_deadline(address, m.name)
        if values is not None and not values:
            self._forget(address)
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
            self._forget(address)
        if expired:
            self._changed.add(address)
        return len(expired)

    def _indexed(self, address: Address) -> _SortedIds:
        index = self._index.get(address.function_type)
        if index is None:
            index = self._index[address.function_type] = _SortedIds()
        return index

    def _forget(self, address: Address) -> None:
        """The address holds no state any more."""
        del self._values[address]
        self._indexed(address).remove(address.id)

    def page(
        self, function_type: TypeName, after: str | None, limit: int, now_ms: int | None = None
    ) -> AddressPage:
        """The ids of ``function_type``'s addresses that hold state now, strictly after
        ``after``, at most ``limit``."""
        index = self._index.get(function_type)
        if index is None:
            return AddressPage([], False)
        now = _now_ms() if now_ms is None else now_ms
        ns, name = function_type.namespace, function_type.name
        return page_of(
            index.ids(), after, limit, lambda id_: bool(self.get(Address(ns, name, id_), now))
        )

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
        ids: dict[TypeName, list[str]] = {}
        for key, data in rows:
            address = Address.parse(key.decode())
            values, deadlines = decode_state(data)
            self._values[address] = values
            ids.setdefault(address.function_type, []).append(address.id)
            for name, deadline in deadlines.items():
                self._set_deadline(address, name, deadline)
            if progress is not None:
                progress.advance()
        self._index = {t: _SortedIds(sorted(i)) for t, i in ids.items()}
        if progress is not None:
            progress.finish()


def _now_ms() -> int:
    return int(time.time() * 1000)
