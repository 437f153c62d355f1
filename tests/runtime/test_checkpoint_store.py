"""The checkpoint store: atomic checkpoints, state as of a checkpoint, retention, and the
record of generations; and the skip rule built from it."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.checkpoints.epochs import EpochClock, SkipRule, Tag
from runtime.checkpoints.store import CheckpointStore
from runtime.errors import CheckpointNotRetained, CheckpointStoreInUse, StoreDamaged, StoreError
from statefun.address import TypeName

pytestmark = pytest.mark.anyio


async def commit(store: CheckpointStore, checkpoint: int, state: dict[bytes, bytes | None]) -> None:
    await store.commit(
        checkpoint, 1, list(state.items()), [("worker", b"part%d" % checkpoint)], time.monotonic()
    )


async def test_state_as_of_a_checkpoint_is_each_addresss_newest_row(tmp_path: Path) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        await commit(store, 1, {b"a": b"a1", b"b": b"b1"})
        await commit(store, 2, {b"a": b"a2", b"c": b"c2"})
        await commit(store, 3, {b"b": None})  # b's state was deleted
        assert sorted(await store.load_state(1)) == [(b"a", b"a1"), (b"b", b"b1")]
        assert sorted(await store.load_state(2)) == [(b"a", b"a2"), (b"b", b"b1"), (b"c", b"c2")]
        assert sorted(await store.load_state(3)) == [(b"a", b"a2"), (b"c", b"c2")]
        assert await store.load_parts(2) == {"worker": b"part2"}
        manifests = await store.manifests()
        assert [m.checkpoint for m in manifests] == [1, 2, 3]
        assert manifests[1].addresses == 2
        assert manifests[1].size_bytes > 0
    finally:
        await store.close()


async def test_retention_keeps_what_the_retained_checkpoints_need(tmp_path: Path) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        await commit(store, 1, {b"a": b"a1", b"b": b"b1", b"gone": b"x"})
        await commit(store, 2, {b"a": b"a2", b"gone": None})
        await commit(store, 3, {b"c": b"c3"})
        await commit(store, 4, {b"a": b"a4"})
        await store.retain(2)
        assert [m.checkpoint for m in await store.manifests()] == [3, 4]
        assert sorted(await store.load_state(3)) == [(b"a", b"a2"), (b"b", b"b1"), (b"c", b"c3")]
        assert sorted(await store.load_state(4)) == [(b"a", b"a4"), (b"b", b"b1"), (b"c", b"c3")]
        assert await store.load_parts(1) == {}
        rows = store._db.execute("SELECT address, checkpoint FROM state ORDER BY 1, 2").fetchall()
        assert rows == [(b"a", 2), (b"a", 4), (b"b", 1), (b"c", 3)]
    finally:
        await store.close()


def needed_rows(
    history: dict[int, dict[bytes, bytes | None]], oldest: int
) -> list[tuple[bytes, int]]:
    """The rows the checkpoints from ``oldest`` on need: each address's rows above
    ``oldest``, and its newest at or below ``oldest`` if that holds a value."""
    rows: dict[bytes, list[tuple[int, bytes | None]]] = {}
    for checkpoint, written in sorted(history.items()):
        for name, value in written.items():
            rows.setdefault(name, []).append((checkpoint, value))
    needed = []
    for name, versions in rows.items():
        below = [(c, v) for c, v in versions if c <= oldest]
        if below and below[-1][1] is not None:
            needed.append((name, below[-1][0]))
        needed += [(name, c) for c, _ in versions if c > oldest]
    return sorted(needed)


async def test_pruning_after_each_retain_leaves_exactly_the_rows_still_needed(
    tmp_path: Path,
) -> None:
    """Retention prunes only what changed since the last prune (the first after an open
    looks at every row): across opens, both kinds leave exactly the rows the retained
    checkpoints need, in the state table and the key table alike."""
    rng = random.Random(7)
    names = [b"a%d" % i for i in range(12)]
    state: dict[int, dict[bytes, bytes | None]] = {}
    keys: dict[int, dict[bytes, bytes | None]] = {}
    checkpoint = 0
    for _open in range(3):
        store = await CheckpointStore.open(tmp_path)
        try:
            for _ in range(25):
                checkpoint += 1
                state[checkpoint] = {
                    n: rng.choice([None, b"v%d" % checkpoint])
                    for n in rng.sample(names, rng.randint(0, 4))
                }
                keys[checkpoint] = {
                    n: rng.choice([None, b"k%d" % checkpoint])
                    for n in rng.sample(names, rng.randint(0, 3))
                }
                rows = keys[checkpoint]
                await store.commit(
                    checkpoint,
                    1,
                    list(state[checkpoint].items()),
                    [("worker", b"p")],
                    time.monotonic(),
                    key_rows=[lambda rows=rows: list(rows.items())],  # type: ignore[misc]
                )
                if rng.random() < 0.4:
                    await store.retain(3)
                    oldest = checkpoint - 2
                    assert store._db.execute(
                        "SELECT address, checkpoint FROM state ORDER BY 1, 2"
                    ).fetchall() == needed_rows(state, oldest)
                    assert store._db.execute(
                        "SELECT key, checkpoint FROM keys ORDER BY 1, 2"
                    ).fetchall() == needed_rows(keys, oldest)
                    for c in (oldest, checkpoint):
                        expected = {}
                        for n in range(1, c + 1):
                            expected.update(state[n])
                        assert sorted(await store.load_state(c)) == sorted(
                            (k, v) for k, v in expected.items() if v is not None
                        )
        finally:
            await store.close()


async def test_prunes_after_an_open_reach_the_rows_written_before_it(tmp_path: Path) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        await commit(store, 1, {b"a": b"a1"})
        await commit(store, 2, {b"b": b"b2"})
        await commit(store, 3, {b"a": b"a3"})
    finally:
        await store.close()
    store = await CheckpointStore.open(tmp_path)
    try:
        await commit(store, 4, {b"a": b"a4"})
        await store.retain(3)  # oldest 2: a1 is still a's newest row at or below it
        await commit(store, 5, {b"c": b"c5"})
        await store.retain(3)  # oldest 3: a3, written before the open, supersedes a1
        rows = store._db.execute("SELECT address, checkpoint FROM state ORDER BY 1, 2").fetchall()
        assert rows == [(b"a", 3), (b"a", 4), (b"b", 2), (b"c", 5)]
    finally:
        await store.close()


async def test_generations_record_their_rollbacks_and_discard_half_written_checkpoints(
    tmp_path: Path,
) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        assert await store.begin_generation(None) == (1, 0)
        assert await store.rollbacks() == []
        await commit(store, 1, {b"a": b"a1"})
        # rows of a checkpoint 2 that never got its manifest (the process died)
        store._db.execute("INSERT INTO state VALUES (?, 2, ?)", (b"a", b"half"))
        assert await store.begin_generation(
            "crash", cause_address="x/y/z", cause_messages=["0@5", "0@6"]
        ) == (2, 1)
        (rollback,) = await store.rollbacks()
        assert (rollback.generation, rollback.rolled_back_to) == (1, 1)
        assert (rollback.reason, rollback.cause_address) == ("crash", "x/y/z")
        assert rollback.cause_messages == ("0@5", "0@6")
        assert await store.load_state(5) == [(b"a", b"a1")]
        await store.stopped_cleanly()
    finally:
        await store.close()
    reopened = await CheckpointStore.open(tmp_path)
    try:
        assert await reopened.begin_generation(None) == (3, 1)
        assert [r.generation for r in await reopened.rollbacks()] == [1, 2]
        assert (await reopened.rollbacks())[-1].reason == "restart after a clean stop"
        assert await reopened.begin_generation(None) == (4, 1)
        assert "did not stop cleanly" in (await reopened.rollbacks())[-1].reason
    finally:
        await reopened.close()


async def test_one_runtime_at_a_time_per_checkpoint_directory(tmp_path: Path) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        with pytest.raises(CheckpointStoreInUse, match="in use by another runtime process"):
            await CheckpointStore.open(tmp_path)
    finally:
        await store.close()


async def test_operators_decisions_outlive_the_process(tmp_path: Path) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        await store.mark_dead_letter(17, "replayed")
        await store.mark_dead_letter(20, "discarded")
        await store.set_paused(TypeName("ex", "storm"), True)
        await store.set_paused(TypeName("ex", "calm"), True)
        await store.set_paused(TypeName("ex", "calm"), False)
    finally:
        await store.close()
    store = await CheckpointStore.open(tmp_path)
    try:
        assert await store.dead_letter_marks([17, 18, 20]) == {17: "replayed", 20: "discarded"}
        assert await store.dead_letter_marks([]) == {}
        assert await store.paused() == {TypeName("ex", "storm")}
    finally:
        await store.close()


def test_the_skip_rule() -> None:
    # generation 1 rolled back to checkpoint 4, generation 2 to checkpoint 7; 3 is current
    rule = SkipRule(3, {1: 4, 2: 7})
    assert rule.accepts(None)  # input from outside
    assert rule.accepts(Tag(3, 99, "p"))  # the current generation
    assert rule.accepts(Tag(1, 4, "p"))
    assert not rule.accepts(Tag(1, 5, "p"))  # produced after checkpoint 4: rolled back
    assert rule.accepts(Tag(2, 7, "p"))
    assert not rule.accepts(Tag(2, 8, "p"))
    assert not rule.accepts(Tag(9, 1, "p"))  # unknown generation


def test_tags_round_trip_through_headers_and_the_clock_advances() -> None:
    clock = EpochClock(2, 5, "app", SkipRule(2, {}))
    assert Tag.from_headers((("other", b"x"), clock.header)) == Tag(2, 5, "app")
    clock.advance()
    assert Tag.from_headers((clock.header,)) == Tag(2, 6, "app")
    assert Tag.from_headers((("other", b"x"),)) is None


async def test_a_file_that_is_not_a_database_is_damaged_and_named(tmp_path: Path) -> None:
    (tmp_path / "checkpoints.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreDamaged, match=r"checkpoints.db is damaged \(file is not a database\)"):
        await CheckpointStore.open(tmp_path)
    # the directory is not left locked: a repaired store opens
    (tmp_path / "checkpoints.db").unlink()
    await (await CheckpointStore.open(tmp_path)).close()


def raising(error: Exception) -> Callable[[], None]:
    def fail() -> None:
        raise error

    return fail


async def test_a_read_of_a_damaged_page_is_store_damaged(tmp_path: Path) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        corrupt = sqlite3.DatabaseError("database disk image is malformed")
        corrupt.sqlite_errorcode = sqlite3.SQLITE_CORRUPT  # type: ignore[attr-defined]
        with pytest.raises(StoreDamaged, match="restore the directory"):
            await store._run(raising(corrupt))
        with pytest.raises(StoreError, match="failed: disk I/O error"):
            await store._run(raising(sqlite3.OperationalError("disk I/O error")))
    finally:
        await store.close()


async def test_a_checkpoint_records_what_its_commit_released(tmp_path: Path) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        await store.commit(1, 1, [], [("worker", b"p")], time.monotonic())
        await store.commit(2, 1, [], [("worker", b"p")], time.monotonic(), released=["worker"])
        await store.commit(3, 1, [], [("worker", b"p")], time.monotonic())
        # a committed reply of epoch 3 given to a retried call, twice
        await store.mark_released(3, "retried call")
        await store.mark_released(3, "retried call")
        released = {m.checkpoint: m.released for m in await store.manifests()}
        assert released == {1: None, 2: "worker", 3: "retried call"}
    finally:
        await store.close()


async def test_rolling_back_to_an_older_checkpoint_drops_the_newer_and_lowers_rollbacks(
    tmp_path: Path,
) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        assert await store.begin_generation(None) == (1, 0)
        for checkpoint in (1, 2):
            await commit(store, checkpoint, {b"a": b"a%d" % checkpoint})
        assert await store.begin_generation("crash") == (2, 2)  # generation 1 -> 2
        await commit(store, 3, {b"a": b"a3"})
        # checkpoint 3 turns out damaged: generation 3 begins from checkpoint 1
        assert await store.begin_generation(None, checkpoint=1) == (3, 1)
        assert [m.checkpoint for m in await store.manifests()] == [1]
        assert await store.load_state(9) == [(b"a", b"a1")]
        assert {r.generation: r.rolled_back_to for r in await store.rollbacks()} == {1: 1, 2: 1}
    finally:
        await store.close()


async def test_a_store_from_before_the_released_flag_counts_as_released(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "checkpoints.db")) as db, db:
        db.execute(
            "CREATE TABLE manifests (checkpoint INTEGER PRIMARY KEY, generation INTEGER NOT NULL,"
            " created_ms INTEGER NOT NULL, duration_ms INTEGER NOT NULL,"
            " size_bytes INTEGER NOT NULL, addresses INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO manifests VALUES (1, 1, 0, 0, 0, 0)")
    store = await CheckpointStore.open(tmp_path)
    try:
        (manifest,) = await store.manifests()
        assert manifest.released
    finally:
        await store.close()


async def test_the_key_table_is_versioned_like_state(tmp_path: Path) -> None:
    store = await CheckpointStore.open(tmp_path)

    async def commit_keys(checkpoint: int, rows: dict[bytes, bytes | None]) -> None:
        await store.commit(
            checkpoint, 1, [], [], time.monotonic(), key_rows=[lambda: list(rows.items())]
        )

    try:
        await commit_keys(1, {b"k1": b"a", b"k2": b"b"})
        await commit_keys(2, {b"k1": b"a2", b"k2": None})  # k1 answered, k2 expired
        await commit_keys(3, {b"k3": b"c"})
        assert sorted(await store.load_keys(1)) == [(b"k1", b"a"), (b"k2", b"b")]
        assert sorted(await store.load_keys(3)) == [(b"k1", b"a2"), (b"k3", b"c")]
        await store.retain(2)
        rows = store._db.execute("SELECT key, checkpoint FROM keys ORDER BY 1, 2").fetchall()
        assert rows == [(b"k1", 2), (b"k3", 3)]
        await store.begin_generation(None, checkpoint=2)
        assert sorted(await store.load_keys(9)) == [(b"k1", b"a2")]
    finally:
        await store.close()


async def test_one_address_and_a_prefix_of_keys_as_of_each_retained_checkpoint(
    tmp_path: Path,
) -> None:
    store = await CheckpointStore.open(tmp_path)
    try:
        await commit(store, 1, {b"t/f/a": b"a1", b"t/f/b": b"b1", b"t/g/a": b"x", b"t/f0": b"y"})
        await commit(store, 2, {b"t/f/a": b"a2", b"t/f/c": b"c2"})
        await commit(store, 3, {b"t/f/b": None, b"t/f/d": b"d3"})
        await commit(store, 4, {b"t/f/a": b"a4"})
        assert [await store.state_as_of(b"t/f/a", c) for c in (1, 2, 3, 4)] == [
            b"a1",
            b"a2",
            b"a2",
            b"a4",
        ]
        assert await store.state_as_of(b"t/f/b", 2) == b"b1"
        assert await store.state_as_of(b"t/f/b", 3) is None  # deleted
        assert await store.state_as_of(b"t/f/c", 1) is None  # not yet
        # The keys of one prefix only ("t/g/..." and "t/f0" are not "t/f/..."), in order.
        assert await store.keys_as_of(b"t/f/", None, 10, 1) == [b"t/f/a", b"t/f/b"]
        assert await store.keys_as_of(b"t/f/", None, 10, 3) == [b"t/f/a", b"t/f/c", b"t/f/d"]
        assert await store.keys_as_of(b"t/f/", b"t/f/a", 1, 3) == [b"t/f/c"]
        assert await store.keys_as_of(b"t/f/", b"t/f/c", 5, 2) == []
        await store.retain(2)
        assert await store.keys_as_of(b"t/f/", None, 10, 3) == [b"t/f/a", b"t/f/c", b"t/f/d"]
        assert await store.state_as_of(b"t/f/a", 3) == b"a2"
        for dropped in (1, 2, 5):
            with pytest.raises(CheckpointNotRetained, match=r"retained: 3, 4$") as raised:
                await store.state_as_of(b"t/f/a", dropped)
            assert raised.value.retained == [3, 4]
            with pytest.raises(CheckpointNotRetained):
                await store.keys_as_of(b"t/f/", None, 10, dropped)
    finally:
        await store.close()
