"""The state store: values, expiry after write and after call, and checkpoint rows."""

from __future__ import annotations

from runtime.state import StateStore
from statefun.address import Address
from statefun.protocol import Expiration, ExpireMode, StateMutation, StateSpec
from statefun.values import TypedValue

A = Address("ex", "fn", "a")
B = Address("ex", "fn", "b")
SPECS = {
    "plain": StateSpec("plain", "x/T"),
    "written": StateSpec("written", "x/T", Expiration(ExpireMode.AFTER_WRITE, 1000)),
    "called": StateSpec("called", "x/T", Expiration(ExpireMode.AFTER_CALL, 1000)),
}


def value(text: str) -> TypedValue:
    return TypedValue("x/T", text.encode())


def write(store: StateStore, address: Address, now: int, **values: str | None) -> None:
    store.apply(
        address,
        [StateMutation(n, None if v is None else value(v)) for n, v in values.items()],
        SPECS,
        now,
    )
    store.touch(address, SPECS, now)


def test_values_without_expiry_stay() -> None:
    store = StateStore()
    write(store, A, 0, plain="p")
    assert store.get(A, now_ms=10**12) == {"plain": value("p")}
    assert store.expire(10**12) == 0


def test_expire_after_write_counts_from_the_last_write_only() -> None:
    store = StateStore()
    write(store, A, 0, written="w1")
    write(store, A, 800)  # a call without a write does not extend it
    assert store.get(A, now_ms=999) == {"written": value("w1")}
    assert store.get(A, now_ms=1000) == {}
    write(store, B, 0, written="w1")
    write(store, B, 900, written="w2")
    assert store.get(B, now_ms=1800) == {"written": value("w2")}
    assert store.get(B, now_ms=1900) == {}


def test_expire_after_call_counts_from_the_last_invocation() -> None:
    store = StateStore()
    write(store, A, 0, called="c", plain="p")
    write(store, A, 900)  # invoked: the deadline moves to 1900
    assert store.get(A, now_ms=1500) == {"called": value("c"), "plain": value("p")}
    assert store.get(A, now_ms=1900) == {"plain": value("p")}


def test_a_sweep_drops_expired_values_from_memory_and_marks_them_changed() -> None:
    store = StateStore()
    write(store, A, 0, written="w")
    write(store, B, 0, plain="p", called="c")
    store.take_changes()
    assert store.expire(999) == 0
    assert store.expire(1000) == 2
    assert len(store) == 1  # A had nothing else: gone; B keeps "plain"
    rows, changed = store.take_changes()
    assert changed == {A, B}
    assert dict(rows)[b"ex/fn/a"] is None


def test_deadlines_survive_a_checkpoint() -> None:
    store = StateStore()
    write(store, A, 0, written="w", plain="p")
    rows, _ = store.take_changes()
    restored = StateStore()
    restored.load([(k, v) for k, v in rows if v is not None])
    assert restored.get(A, now_ms=999) == {"written": value("w"), "plain": value("p")}
    assert restored.expire(1000) == 1
    assert restored.get(A, now_ms=1000) == {"plain": value("p")}


def test_deleting_a_value_forgets_its_deadline() -> None:
    store = StateStore()
    write(store, A, 0, written="w")
    write(store, A, 10, written=None)
    write(store, A, 20, plain="p")
    assert store.expire(5000) == 0
    assert store.get(A, now_ms=5000) == {"plain": value("p")}
