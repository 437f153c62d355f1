"""The fault injectors behave as a full disk does: writes fail with SQLite's error,
reads go on, and a log that failed an append refuses appends until a reopen, which
fails while the disk is still full."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from runtime.checkpoints.store import CheckpointStore
from runtime.errors import LogError, StoreError
from runtime.log import Record
from runtime.log.memory import MemoryLog
from verifier.injection import DISK_FULL, FaultSwitch, FaultyLog, fail_store_writes

pytestmark = pytest.mark.anyio


async def test_a_faulty_log_fails_appends_as_a_full_disk_and_heals_on_reopen() -> None:
    disk_full = FaultSwitch()
    log = FaultyLog(MemoryLog(), disk_full)
    failures: list[LogError] = []
    log.on_failure(failures.append)
    await log.ensure_topic("t", 2)
    assert await log.append("t", 0, [Record(b"a")]) == [0]

    disk_full.set(True)
    with pytest.raises(LogError, match=DISK_FULL) as raised:
        await log.append("t", 0, [Record(b"b")])
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert [str(f) for f in failures] == [str(raised.value)]
    assert [r.value for r in await log.read("t", 0, 0)] == [b"a"]  # reads go on
    with pytest.raises(LogError):
        await log.flush()
    with pytest.raises(LogError, match=DISK_FULL):
        await log.reopen()  # still full

    disk_full.set(False)
    with pytest.raises(LogError):  # no append before a reopen, even with room again
        await log.append("t", 1, [Record(b"c")])
    await log.reopen()
    assert log.failure is None
    assert await log.append("t", 0, [Record(b"d")]) == [1]
    assert len(failures) == 1
    await log.close()


async def test_store_writes_fail_as_on_a_full_disk_while_reads_go_on(tmp_path: Path) -> None:
    disk_full = FaultSwitch()
    store = fail_store_writes(await CheckpointStore.open(tmp_path), disk_full)
    try:
        assert await store.begin_generation(None) == (1, 0)
        await store.commit(1, 1, [(b"k", b"v")], [("worker", b"part")], 0.0)
        disk_full.set(True)
        with pytest.raises(StoreError, match=DISK_FULL):
            await store.commit(2, 1, [(b"k", b"w")], [("worker", b"part")], 0.0)
        with pytest.raises(StoreError, match=DISK_FULL):
            await store.begin_generation("a rollback")
        assert [m.checkpoint for m in await store.manifests()] == [1]
        assert await store.load_state(1) == [(b"k", b"v")]
        disk_full.set(False)
        await store.commit(2, 1, [(b"k", b"w")], [("worker", b"part")], 0.0)
        assert await store.begin_generation("a rollback") == (2, 2)
    finally:
        await store.close()
