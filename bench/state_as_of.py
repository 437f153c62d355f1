"""The as-of benchmark: ``python -m bench.state_as_of`` from the repository root.

Owns one measurement: what reading state as of a retained checkpoint, and a page of a
function type's addresses, cost with ``--addresses`` (default 100k) addresses of one
function type in the checkpoint. In process, without a runtime or HTTP: the calls the
ingress's ``/v1/state?checkpoint=N`` and ``/v1/addresses`` make.

* **lone store** (``runtime/checkpoints/store.py``, SQLite in a temporary directory):
  checkpoint 1 writes every address's state (a ``count`` of ~100 bytes, encoded as
  ``StateStore`` encodes it), then ``--deltas`` checkpoints (default 5) each change
  10% of the addresses, so the versioned table holds several rows for many of them.
  Measured as of the middle checkpoint: one address's state (``state_as_of`` and its
  decoding, at random addresses) and a page of 100 ids (``keys_as_of``, after a random
  id).
* **live** (``runtime/state.py``): the same addresses in a ``StateStore``; a page of
  100 ids after a random id while nothing changes, and the first page after 1,000 new
  addresses (what folding them into the sorted index costs).
* **partition store** (``runtime/cluster/as_of.py`` over ``partition_store.py`` on the
  in-memory log; Kafka's read costs are ``python -m bench.restore``'s): the addresses
  spread over ``--partitions`` (8) full snapshots; the first lookup (a cold cache:
  restoring one partition), the first page (restoring every partition and sorting its
  ids), then warm lookups and pages.

Every answer is checked against what was written (``FAILED:`` and status 1 otherwise).
Columns: the store, the operation, how many were timed, median and p99 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench._support import format_table, percentile
from bench.restore import VALUE_BYTES, state_of
from runtime.checkpoints.snapshot import decode_state
from runtime.checkpoints.store import CheckpointStore
from runtime.cluster.as_of import PartitionsAsOf
from runtime.cluster.decisions import Manifest
from runtime.cluster.partition_store import PartitionSnapshot, PartitionStore
from runtime.log.memory import MemoryLog
from runtime.routing import address_key, partition_for_key, type_key_prefix
from runtime.state import StateStore
from statefun.address import Address, TypeName
from statefun.protocol import StateMutation
from statefun.values import TypedValue

FUNCTION_TYPE = TypeName("bench", "counter")
PAGE = 100
NEW_ADDRESSES = 1_000
"""Addresses that gain state before each "first page after new addresses"."""


class Failed(Exception):
    """An answer differs from what was written."""


def ids_of(count: int) -> list[str]:
    return [f"{i:08d}" for i in range(count)]


def row(store: str, what: str, samples: Sequence[float]) -> list[str]:
    ordered = sorted(samples)
    return [
        store,
        what,
        f"{len(ordered):,}",
        f"{statistics.median(ordered) * 1e6:,.0f}",
        f"{percentile(ordered, 99) * 1e6:,.0f}",
    ]


async def timed(
    calls: int, call: Callable[[int], Awaitable[None]], before: Callable[[], None] | None = None
) -> list[float]:
    """Seconds each of ``calls`` calls took (``before`` each, untimed)."""
    samples = []
    for i in range(calls):
        if before is not None:
            before()
        started = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - started)
    return samples


def check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise Failed(f"{what}: got {got!r:.200}, expected {expected!r:.200}")


async def lone_store(args: argparse.Namespace, workdir: Path) -> list[list[str]]:
    rng = random.Random(1)
    ids = ids_of(args.addresses)
    keys = [address_key(Address("bench", "counter", i)) for i in ids]
    store = await CheckpointStore.open(workdir / "checkpoints")
    try:
        history: list[dict[bytes, bytes]] = []
        current = {key: state_of(rng) for key in keys}
        await store.commit(1, 1, list(current.items()), [], time.monotonic())
        history.append(dict(current))
        for checkpoint in range(2, args.deltas + 2):
            changed = {key: state_of(rng) for key in rng.sample(keys, len(keys) // 10)}
            current.update(changed)
            await store.commit(checkpoint, 1, list(changed.items()), [], time.monotonic())
            history.append(dict(current))
        as_of = 1 + len(history) // 2
        expected = history[as_of - 1]
        prefix = type_key_prefix(FUNCTION_TYPE)
        picks = [rng.randrange(len(ids)) for _ in range(args.calls)]

        async def lookup(i: int) -> None:
            key = keys[picks[i]]
            stored = await store.state_as_of(key, as_of)
            check("state", stored, expected[key])
            decode_state(stored or b"")

        async def page(i: int) -> None:
            start = min(picks[i], len(ids) - PAGE - 1)
            got = await store.keys_as_of(prefix, keys[start], PAGE + 1, as_of)
            check("page", got, keys[start + 1 : start + PAGE + 2])

        return [
            row("lone store", f"state as of checkpoint {as_of}", await timed(args.calls, lookup)),
            row("lone store", f"page of {PAGE}, as of {as_of}", await timed(args.calls, page)),
        ]
    finally:
        await store.close()


async def live(args: argparse.Namespace) -> list[list[str]]:
    rng = random.Random(2)
    ids = ids_of(args.addresses)
    state = StateStore()
    state.load((address_key(Address("bench", "counter", i)), state_of(rng)) for i in ids)
    picks = [rng.randrange(len(ids) - PAGE - 1) for _ in range(args.calls)]
    now = int(time.time() * 1000)
    state.page(FUNCTION_TYPE, None, PAGE, now)  # the index built once, as after a restore

    async def page(i: int) -> None:
        got = state.page(FUNCTION_TYPE, ids[picks[i]], PAGE, now)
        check("live page", got.ids, ids[picks[i] + 1 : picks[i] + PAGE + 1])

    new_ids: list[str] = []

    async def after_new(_: int) -> None:
        got = state.page(FUNCTION_TYPE, new_ids[0], PAGE, now)
        check("page after new addresses", got.ids[:3], new_ids[1:4])

    after_new_samples = []
    for r in range(max(args.calls // 50, 3)):
        new_ids = [f"n{r:03d}-{i:05d}" for i in range(NEW_ADDRESSES)]
        for id_ in new_ids:  # as the worker applies a function's first write
            mutation = StateMutation("count", TypedValue("bench/blob", rng.randbytes(VALUE_BYTES)))
            state.apply(Address("bench", "counter", id_), [mutation], {}, now)
        after_new_samples += await timed(1, after_new)
    return [
        row("live", f"page of {PAGE}", await timed(args.calls, page)),
        row("live", f"first page after {NEW_ADDRESSES:,} new addresses", after_new_samples),
    ]


async def partition_store(args: argparse.Namespace) -> list[list[str]]:
    rng = random.Random(3)
    ids = ids_of(args.addresses)
    keys = [address_key(Address("bench", "counter", i)) for i in ids]
    expected = {key: state_of(rng) for key in keys}
    log = MemoryLog()
    try:
        store = PartitionStore(log, "bench", args.partitions)
        rows: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for key, data in expected.items():
            rows.setdefault(partition_for_key(key, args.partitions), []).append((key, data))
        chains = {
            p: (await store.write(0, PartitionSnapshot(p, 1, True, r, [], {})),)
            for p, r in rows.items()
        }
        retained = [Manifest(1, 1, 0, 0, chains, {}, 0, len(keys), None)]
        picks = [rng.randrange(len(ids)) for _ in range(args.calls)]

        as_of = PartitionsAsOf(store, lambda: retained, args.partitions)

        def cold() -> None:
            nonlocal as_of
            as_of = PartitionsAsOf(store, lambda: retained, args.partitions)

        async def lookup(i: int) -> None:
            key = keys[picks[i]]
            stored = await as_of.state(key, partition_for_key(key, args.partitions), 1)
            check("state", stored, expected[key])
            decode_state(stored or b"")

        async def page(i: int) -> None:
            start = min(picks[i], len(ids) - PAGE - 1)
            got = await as_of.page(FUNCTION_TYPE, ids[start], PAGE, 1)
            check("page", got.ids, ids[start + 1 : start + PAGE + 1])

        return [
            row(
                "partition store",
                "state, cold (restores a partition)",
                await timed(3, lookup, cold),
            ),
            row(
                "partition store",
                f"page of {PAGE}, cold (restores all)",
                await timed(3, page, cold),
            ),
            row("partition store", "state, warm", await timed(args.calls, lookup)),
            row("partition store", f"page of {PAGE}, warm", await timed(args.calls, page)),
        ]
    finally:
        await log.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.state_as_of",
        description="State and pages of addresses as of a retained checkpoint, and live "
        "pages, with many addresses in the checkpoint.",
    )
    parser.add_argument("--addresses", type=int, default=100_000)
    parser.add_argument("--deltas", type=int, default=5, help="checkpoints after the first")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1_000, help="timed calls per row")
    args = parser.parse_args(argv)
    if args.addresses < 2 * PAGE or args.deltas < 0 or args.partitions < 1 or args.calls < 1:
        parser.error(
            f"--addresses must be at least {2 * PAGE}, --deltas at least 0, "
            "--partitions and --calls at least 1"
        )
    return args


async def run(args: argparse.Namespace, workdir: Path) -> list[list[str]]:
    rows = await lone_store(args, workdir)
    print("lone store: done", flush=True)
    rows += await live(args)
    print("live: done", flush=True)
    rows += await partition_store(args)
    print("partition store: done", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="statefun-bench-as-of-"))
    try:
        rows = asyncio.run(run(args, workdir))
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{args.addresses:,} addresses of {FUNCTION_TYPE} in the checkpoint")
    print(format_table(["store", "operation", "calls", "median us", "p99 us"], rows, left=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
