"""A scan of the log (``runtime.worker.scan_log``, what the worker reads again for the
dispatcher's overflow): what it takes and where it stops, and that it gives the event
loop a turn before every chunk even over a log that never suspends (the embedded one)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.log import StoredRecord
from runtime.worker import SCAN_CHUNK, scan_log


def _records(count: int) -> list[StoredRecord]:
    return [StoredRecord(i, f"v{i}".encode(), None, (), 0) for i in range(count)]


class _Partition:
    """A partition in memory whose reads never suspend, as the embedded log's."""

    def __init__(self, count: int) -> None:
        self.records = _records(count)
        self.reads: list[tuple[int, int]] = []

    async def read(self, start: int, count: int) -> list[StoredRecord]:
        self.reads.append((start, count))
        return self.records[start : start + count]


def _even(record: StoredRecord) -> int | None:
    return record.offset if record.offset % 2 == 0 else None


def test_a_scan_takes_what_is_wanted_up_to_the_limit_and_says_where_it_stopped() -> None:
    log = _Partition(100)
    found, scanned = asyncio.run(scan_log(log.read, _even, 10, lambda: 100, 5, 10_000))
    assert found == [10, 12, 14, 16, 18]
    assert scanned == 19  # the record that made the limit is the last looked at


def test_a_scan_stops_at_the_end_and_at_its_budget() -> None:
    log = _Partition(100)
    assert asyncio.run(scan_log(log.read, _even, 90, lambda: 95, 100, 10_000)) == (
        [90, 92, 94],
        95,
    )
    found, scanned = asyncio.run(scan_log(log.read, _even, 0, lambda: 100, 100, 7))
    assert (found, scanned) == ([0, 2, 4, 6], 7)


@pytest.mark.parametrize("chunks", [1, 4])
def test_a_scan_gives_the_event_loop_a_turn_before_each_chunk(chunks: int) -> None:
    # One chunk too: the dispatcher chains scans while it has room.
    log = _Partition(chunks * SCAN_CHUNK)

    async def scan_beside_a_ticker() -> tuple[int, list[int], int]:
        ticks = 0
        stopped = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stopped.is_set():
                ticks += 1
                await asyncio.sleep(0)

        beside = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # the ticker is running
        before = ticks
        found, scanned = await scan_log(log.read, _even, 0, lambda: len(log.records), 10**6, 10**6)
        during = ticks - before
        stopped.set()
        await beside
        return during, found, scanned

    during, found, scanned = asyncio.run(scan_beside_a_ticker())
    assert len(log.reads) == chunks
    assert during >= chunks  # a turn before every chunk
    assert found == list(range(0, chunks * SCAN_CHUNK, 2))
    assert scanned == chunks * SCAN_CHUNK


def test_the_end_is_read_again_before_each_chunk() -> None:
    log = _Partition(3 * SCAN_CHUNK)
    ends = iter([SCAN_CHUNK, 2 * SCAN_CHUNK, 2 * SCAN_CHUNK])  # appended during a turn

    found, scanned = asyncio.run(
        scan_log(log.read, lambda r: r.offset, 0, lambda: next(ends), 10**6, 10**6)
    )
    assert scanned == 2 * SCAN_CHUNK
    assert found == list(range(2 * SCAN_CHUNK))
    assert log.reads == [(0, SCAN_CHUNK), (SCAN_CHUNK, SCAN_CHUNK)]
