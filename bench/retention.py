"""The retention benchmark: ``python -m bench.retention`` from the repository root.

Owns one measurement: what pruning the embedded checkpoint store
(``CheckpointStore.retain``, run by the coordinator every 10 checkpoints) costs against
the size of the state it holds. Pruning runs on the store's one thread, so a commit
behind it waits: with checkpoints on demand, a committed reply waits too.

For each size (``--sizes``, default 1k, 10k and 100k addresses) a fresh store gets the
state in checkpoints of 1,000 addresses each, is closed and opened again, then takes
``--checkpoints`` checkpoints (default 100) of ``--changed`` addresses each (default 1,
as a call at concurrency 1 changes one), keeping the newest 3 after every 10 as the
coordinator does. Columns: the first prune after the open (it looks at every row),
the median and the largest of the prunes after it (they look only at the addresses
written since the prune before), and the median commit. After the last prune the store
must hold one row per address, and a second only for those the two newest checkpoints
wrote again (otherwise ``FAILED:`` and status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench._support import format_table
from runtime.checkpoints.store import CheckpointStore

RETAIN = 3
PRUNE_EVERY = 10
BATCH = 1_000


class Failed(Exception):
    """The store holds other rows than the retained checkpoints need."""


def _key(i: int) -> bytes:
    return b"bench/counter/%08d" % i


async def _commit(store: CheckpointStore, checkpoint: int, keys: Sequence[bytes]) -> float:
    state = [(key, b"v%d" % checkpoint) for key in keys]
    started = time.perf_counter()
    await store.commit(checkpoint, 1, state, [("worker", b"part")], time.monotonic())
    return time.perf_counter() - started


async def measure(size: int, checkpoints: int, changed: int, directory: Path) -> list[str]:
    store = await CheckpointStore.open(directory)
    checkpoint = 0
    try:
        for start in range(0, size, BATCH):
            checkpoint += 1
            await _commit(
                store, checkpoint, [_key(i) for i in range(start, min(size, start + BATCH))]
            )
    finally:
        await store.close()
    store = await CheckpointStore.open(directory)
    prunes: list[float] = []
    commits: list[float] = []
    try:
        for n in range(checkpoints):
            checkpoint += 1
            keys = [_key((n * changed + j) % size) for j in range(changed)]
            commits.append(await _commit(store, checkpoint, keys))
            if checkpoint % PRUNE_EVERY == 0:
                started = time.perf_counter()
                await store.retain(RETAIN)
                prunes.append(time.perf_counter() - started)
        await store.retain(RETAIN)
        rows = store._db.execute("SELECT COUNT(*), COUNT(DISTINCT address) FROM state").fetchone()
    finally:
        await store.close()
    # One row per address, and a second for those the retained checkpoints after the
    # oldest wrote again.
    if rows[1] != size or not size <= rows[0] <= size + (RETAIN - 1) * changed:
        raise Failed(f"{size:,} addresses: {rows[0]:,} rows of {rows[1]:,} addresses remain")
    first, later = prunes[0], prunes[1:]
    return [
        f"{size:,}",
        f"{first * 1000:.2f}",
        f"{statistics.median(later) * 1000:.2f}",
        f"{max(later) * 1000:.2f}",
        f"{statistics.median(commits) * 1000:.2f}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retention",
        description="What pruning the embedded checkpoint store costs against its state.",
    )
    parser.add_argument("--sizes", default="1000,10000,100000", help="addresses, comma-separated")
    parser.add_argument("--checkpoints", type=int, default=100, help="checkpoints after the open")
    parser.add_argument("--changed", type=int, default=1, help="addresses each checkpoint changes")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes comma-separated numbers, not {args.sizes!r}")
    if any(s < 1 for s in args.sizes) or args.checkpoints < 2 * PRUNE_EVERY or args.changed < 1:
        parser.error(
            f"sizes and --changed must be positive, --checkpoints {2 * PRUNE_EVERY} or more"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    try:
        for size in args.sizes:
            with tempfile.TemporaryDirectory(prefix="statefun-bench-retention-") as directory:
                rows.append(
                    asyncio.run(
                        measure(size, args.checkpoints, min(args.changed, size), Path(directory))
                    )
                )
            print(f"{size:,} addresses: done", flush=True)
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print()
    print(
        f"{args.checkpoints} checkpoints of {args.changed} changed address(es) after the open; "
        f"the newest {RETAIN} kept every {PRUNE_EVERY}"
    )
    print(
        format_table(
            [
                "addresses",
                "first prune ms",
                "later prunes ms (median)",
                "max",
                "commit ms (median)",
            ],
            rows,
            left=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
