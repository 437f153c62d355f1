"""The idempotency-key benchmark: ``python -m bench.idempotency`` from the repository root.

Owns one measurement: what a checkpoint of the idempotency-key table
(``runtime/idempotency.py``) costs against the size of the table (100k and 1M keys,
``--keys`` to choose), in process, without a runtime. The table is filled as the
ingress fills it (``begin`` then ``accepted``) and checkpointed once into a checkpoint
store in a temporary directory; then each round accepts ``--changed`` new keys (the
requests of one checkpoint interval) and takes a checkpoint as the coordinator does:

* ``capture``: the synchronous ``capture()`` step, on the event loop (the pause of
  processing: what the table used to cost whole, re-encoded at every checkpoint);
* ``encode``: encoding the captured rows, on the store's thread;
* ``commit``: the store's whole transaction (encoding included);
* ``rows``: the rows written, which must be exactly the keys changed.

Medians of ``--rounds`` rounds (default 5). A wrong row count prints ``FAILED:`` and
exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._support import format_table
from runtime.checkpoints.store import CheckpointStore
from runtime.idempotency import IdempotencyKeys
from runtime.progress import steps
from statefun.address import Address

FINGERPRINT = bytes(16)
TARGET = Address("bench", "f", "a")


async def fill(keys: IdempotencyKeys, prefix: str, count: int, offset: int) -> None:
    for n in range(count):
        request = await keys.begin(f"{prefix}-{n:08d}", FINGERPRINT, TARGET)
        keys.accepted(request, n % 8, offset + n)


async def measure(size: int, changed: int, rounds: int) -> list[str]:
    keys = IdempotencyKeys(retention=24 * 3600)
    await fill(keys, "old", size, 0)
    with tempfile.TemporaryDirectory(prefix="bench-idempotency-") as directory:
        store = await CheckpointStore.open(Path(directory))
        try:
            first = keys.capture()
            assert first.key_rows is not None
            await store.commit(1, 1, [], [], time.monotonic(), key_rows=[first.key_rows])
            captures, encodes, commits = [], [], []
            for round_ in range(rounds):
                await fill(keys, f"new{round_}", changed, size + round_ * changed)
                started = time.perf_counter()
                capture = keys.capture()
                captures.append(time.perf_counter() - started)
                assert capture.key_rows is not None
                started = time.perf_counter()
                rows = capture.key_rows()
                encodes.append(time.perf_counter() - started)
                if len(rows) != changed:
                    print(f"FAILED: {len(rows)} rows written for {changed} keys changed")
                    sys.exit(1)
                started = time.perf_counter()
                await store.commit(
                    round_ + 2, 1, [], [], time.monotonic(), key_rows=[capture.key_rows]
                )
                commits.append(time.perf_counter() - started)
        finally:
            await store.close()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.2f}"

    return [f"{size:,}", f"{changed:,}", ms(captures), ms(encodes), ms(commits), f"{changed:,}"]


async def main(sizes: list[int], changed: int, rounds: int) -> None:
    say = steps("bench.idempotency")
    rows = []
    for size in sizes:
        say(f"{size:,} keys: {rounds} rounds of {changed:,} changed")
        rows.append(await measure(size, changed, rounds))
    headers = ["keys", "changed", "capture ms", "encode ms", "commit ms", "rows"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--keys", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--changed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    asyncio.run(main(options.keys, options.changed, options.rounds))
