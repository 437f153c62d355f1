"""The state store: values, expiry after write and after call, checkpoint rows, and
pages of a function type's addresses."""

from __future__ import annotations

from runtime.state import AddressPage, StateStore, merge_pages, page_of
from statefun.address import Address, TypeName
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


FN = TypeName("ex", "fn")


def test_pages_list_the_ids_holding_state_in_codepoint_order() -> None:
    store = StateStore()
    ids = ["b", "a", "é", "Z", "a/b", "ß", "a0"]
    for id_ in ids:
        write(store, Address("ex", "fn", id_), 0, plain="1")
    write(store, Address("ex", "other", "a"), 0, plain="1")
    assert store.page(FN, None, 100, 0) == AddressPage(sorted(ids), False)
    assert sorted(ids) == ["Z", "a", "a/b", "a0", "b", "ß", "é"]
    assert store.page(FN, None, 3, 0) == AddressPage(["Z", "a", "a/b"], True)
    assert store.page(FN, None, 3, 0).next == "a/b"
    assert store.page(FN, "a/b", 3, 0) == AddressPage(["a0", "b", "ß"], True)
    assert store.page(FN, "ß", 3, 0) == AddressPage(["é"], False)
    assert store.page(FN, "ß", 1, 0).next is None  # exactly full, and the last page
    assert store.page(FN, "a", 2, 0) == AddressPage(["a/b", "a0"], True)  # strictly after
    assert store.page(FN, "a/c", 1, 0) == AddressPage(["a0"], True)  # need not be an id
    assert store.page(TypeName("ex", "none"), None, 5, 0) == AddressPage([], False)


def test_pages_follow_addresses_that_gain_lose_and_regain_state() -> None:
    store = StateStore()
    for id_ in "abcd":
        write(store, Address("ex", "fn", id_), 0, plain="1")
    assert store.page(FN, None, 10, 0).ids == ["a", "b", "c", "d"]
    write(store, Address("ex", "fn", "b"), 0, plain=None)  # b loses its state
    write(store, Address("ex", "fn", "e"), 0, plain="1")
    write(store, Address("ex", "fn", "f"), 0, plain="1")
    write(store, Address("ex", "fn", "f"), 0, plain=None)  # f never listed
    write(store, Address("ex", "fn", "c"), 0, plain=None)
    write(store, Address("ex", "fn", "c"), 0, plain="2")  # c back before a page was read
    assert store.page(FN, None, 10, 0).ids == ["a", "c", "d", "e"]
    write(store, Address("ex", "fn", "b"), 0, plain="3")
    write(store, Address("ex", "fn", "a"), 0, plain="3")  # a value changed: still listed once
    assert store.page(FN, None, 10, 0).ids == ["a", "b", "c", "d", "e"]


def test_pages_leave_out_addresses_whose_state_expired() -> None:
    store = StateStore()
    write(store, A, 0, written="1")
    write(store, B, 0, plain="1")
    write(store, Address("ex", "fn", "c"), 0, written="1")
    assert store.page(FN, None, 1, 500) == AddressPage(["a"], True)
    # Expired at 1000 though not swept: a page holds only what reads would show.
    assert store.page(FN, None, 1, 1000) == AddressPage(["b"], False)
    assert store.page(FN, None, 10, 1000).ids == ["b"]


def test_a_loaded_store_pages_its_addresses() -> None:
    store = StateStore()
    write(store, B, 0, plain="1")
    write(store, A, 0, plain="1")
    rows, _ = store.take_changes()
    loaded = StateStore()
    loaded.load([(k, v) for k, v in rows if v is not None])
    assert loaded.page(FN, None, 10, 0).ids == ["a", "b"]


def test_page_of_and_merged_pages_of_disjoint_sets() -> None:
    evens = [f"{i:02d}" for i in range(0, 20, 2)]
    odds = [f"{i:02d}" for i in range(1, 20, 2)]
    assert page_of(evens, "03", 2) == AddressPage(["04", "06"], True)
    pages = [page_of(evens, "03", 4), page_of(odds, "03", 4), page_of([], "03", 4)]
    assert merge_pages(pages, 4) == AddressPage(["04", "05", "06", "07"], True)
    tail = [page_of(evens, "15", 4), page_of(odds, "15", 4)]
    assert merge_pages(tail, 4) == AddressPage(["16", "17", "18", "19"], False)
    # One set has more beyond its page: so does the merge.
    assert merge_pages([page_of(evens, None, 2), page_of([], None, 2)], 2).more
