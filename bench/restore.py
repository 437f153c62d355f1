"""The restore benchmark: ``python -m bench.restore`` from the repository root.

Owns one measurement: how long restoring one messages partition from the partition
checkpoint store (``runtime/cluster/partition_store.py``) takes against the size of its
state, on the in-memory log and on Kafka (a Tansu broker started for the run, or the
one ``$STATEFUN_BENCH_KAFKA`` names, as ``python -m bench --log kafka`` finds it).

For each size (``--sizes``, default 1k, 10k and 100k addresses) a writer writes the
partition's chain as a member does: a full snapshot of every address's state (one
``count`` value of about 100 bytes per address, encoded as ``StateStore`` encodes it)
at checkpoint 1, then ``--deltas`` deltas (default 10), each changing ``--changed`` of
the addresses (default 10%) and deleting a few. Then, ``--repeats`` times (default 3):

* ``restore ms``: ``PartitionStore.read(chain)``, reading and folding every snapshot of
  the chain; on Kafka by a log opened for the purpose (as a member that takes the
  partition over: it opens the segment topic another member created; opening the log
  itself is not timed);
* ``load ms``: decoding the restored rows into a fresh ``StateStore`` (``load``), what
  the worker does next.

Every restore must give back exactly the state the chain describes (otherwise
``FAILED:`` and status 1). Columns: the chain's records and megabytes, the time to
write the full snapshot and the median delta, the medians of the restore and the load,
and the restore's throughput. Each size on Kafka uses an application id of its own,
whose segment is deleted afterwards (Tansu keeps every record in memory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._kafka import HOW_TO_GET_ONE, find_broker, start_tansu
from bench._support import BenchError, Children, format_table
from runtime.checkpoints.snapshot import encode_state
from runtime.cluster.locations import PartitionLocation
from runtime.cluster.partition_store import PartitionSnapshot, PartitionStore
from runtime.errors import StatefunRuntimeError
from runtime.log.base import Log
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog
from runtime.progress import steps
from runtime.routing import address_key
from runtime.state import StateStore
from statefun.address import Address
from statefun.values import TypedValue

SIZES = [1_000, 10_000, 100_000]
PARTITIONS = 4
PARTITION = 1
"""The one partition measured (of a segment topic with :data:`PARTITIONS`)."""
VALUE_BYTES = 60
"""Random bytes per address's value: with its type name and encoding, ~100 B of state."""
DELETED_PER_DELTA = 0.01
"""The share of addresses a delta deletes (their state cleared)."""


class Failed(Exception):
    """A restore gave back the wrong state."""


def state_of(rng: random.Random) -> bytes:
    return encode_state({"count": TypedValue("bench/blob", rng.randbytes(VALUE_BYTES))}, None)


@dataclass(frozen=True, slots=True)
class Chain:
    locations: list[PartitionLocation]
    expected: dict[bytes, bytes]
    full_write: float
    delta_writes: list[float]


async def write_chain(
    store: PartitionStore, size: int, deltas: int, changed: float, seed: int
) -> Chain:
    rng = random.Random(seed)
    keys = [address_key(Address("bench", "counter", f"{i}")) for i in range(size)]
    expected = {key: state_of(rng) for key in keys}
    await store.ensure_segment(0)  # creating the topic is not part of a write's time
    started = time.perf_counter()
    full = PartitionSnapshot(PARTITION, 1, True, list(expected.items()), [], {"worker": b"w1"})
    locations = [await store.write(0, full)]
    full_write = time.perf_counter() - started
    delta_writes = []
    for checkpoint in range(2, deltas + 2):
        rows: list[tuple[bytes, bytes | None]] = [
            (key, state_of(rng)) for key in rng.sample(keys, int(size * changed))
        ]
        rows += [(key, None) for key in rng.sample(keys, int(size * DELETED_PER_DELTA))]
        for key, value in rows:
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = value
        delta = PartitionSnapshot(
            PARTITION, checkpoint, False, rows, [], {"worker": f"w{checkpoint}".encode()}
        )
        started = time.perf_counter()
        locations.append(await store.write(0, delta))
        delta_writes.append(time.perf_counter() - started)
    return Chain(locations, expected, full_write, delta_writes)


@dataclass(frozen=True, slots=True)
class Restore:
    read: float
    load: float
    bytes_read: int


async def restore(store: PartitionStore, chain: Chain) -> Restore:
    started = time.perf_counter()
    restored = await store.read(chain.locations)
    read = time.perf_counter() - started
    if restored.state != chain.expected:
        raise Failed(
            f"restored {len(restored.state)} addresses, expected {len(chain.expected)}"
            f" ({sum(restored.state.get(k) != v for k, v in chain.expected.items())} differ)"
        )
    if restored.parts != {"worker": f"w{chain.locations[-1].checkpoint}".encode()}:
        raise Failed(f"restored the parts {restored.parts}, not the last snapshot's")
    started = time.perf_counter()
    StateStore().load(restored.state.items())
    return Restore(read, time.perf_counter() - started, restored.bytes_read)


LogOpener = Callable[[], Awaitable[Log]]


async def measure(name: str, open_log: LogOpener, size: int, args: argparse.Namespace) -> list[str]:
    """One row: write a chain of ``size`` addresses on a log, restore it ``repeats`` times,
    each on a log of its own (on the in-memory log, the same one: it is the only copy)."""
    app = f"bench-restore-{uuid.uuid4().hex[:8]}"
    writer_log = await open_log()
    try:
        writer = PartitionStore(writer_log, app, PARTITIONS)
        chain = await write_chain(writer, size, args.deltas, args.changed, seed=size)
        restores = []
        for _ in range(args.repeats):
            reader_log = writer_log if isinstance(writer_log, MemoryLog) else await open_log()
            try:
                restores.append(await restore(PartitionStore(reader_log, app, PARTITIONS), chain))
            finally:
                if reader_log is not writer_log:
                    await reader_log.close()
        await writer.delete_segments_below(1)
    finally:
        await writer_log.close()
    read = statistics.median(r.read for r in restores)
    megabytes = restores[0].bytes_read / 1e6
    return [
        name,
        f"{size:,}",
        f"{sum(loc.count for loc in chain.locations)}",
        f"{megabytes:.2f}",
        f"{chain.full_write * 1000:.1f}",
        f"{statistics.median(chain.delta_writes) * 1000:.1f}",
        f"{read * 1000:.1f}",
        f"{statistics.median(r.load for r in restores) * 1000:.1f}",
        f"{megabytes / read:.0f}",
    ]


HEADERS = [
    "log",
    "addresses",
    "records",
    "MB",
    "write full ms",
    "write delta ms",
    "restore ms",
    "load ms",
    "restore MB/s",
]


async def run(logs: dict[str, LogOpener], args: argparse.Namespace) -> list[list[str]]:
    rows = []
    say = steps("bench.restore")
    for name, open_log in logs.items():
        for size in args.sizes:
            say(f"{name}, {size:,} addresses: {args.repeats} restores")
            rows.append(await measure(name, open_log, size, args))
    return rows


async def open_memory_log() -> Log:
    return MemoryLog()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.restore",
        description="Restore time of one partition from the partition checkpoint store "
        "against its state size, on the in-memory log and on Kafka.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, metavar="ADDRESSES")
    parser.add_argument("--deltas", type=int, default=10, help="deltas after the full snapshot")
    parser.add_argument(
        "--changed", type=float, default=0.1, help="share of addresses each delta changes"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log", choices=["memory", "kafka", "both"], default="both")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.deltas < 0 or not 0 <= args.changed <= 1:
        parser.error("--repeats must be at least 1, --deltas at least 0, --changed in [0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="statefun-bench-restore-"))
    status = 0
    try:
        with Children() as children:
            logs: dict[str, LogOpener] = {}
            if args.log in ("memory", "both"):
                logs["memory"] = open_memory_log
            if args.log in ("kafka", "both"):
                broker = find_broker()
                if broker is None:
                    raise BenchError(f"--log kafka needs a Kafka broker: {HOW_TO_GET_ONE}")
                bootstrap = broker.external
                if bootstrap is None:
                    assert broker.tansu is not None
                    _, bootstrap = start_tansu(children, broker.tansu, workdir / "kafka.log")
                print(f"Kafka: {broker.describe()}", flush=True)

                async def open_kafka_log(bootstrap: str = bootstrap) -> Log:
                    return await KafkaLog.open(bootstrap, client_id="bench-restore")

                logs["kafka"] = open_kafka_log
            print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores", flush=True)
            rows = asyncio.run(run(logs, args))
        print(format_table(HEADERS, rows))
    except Failed as e:
        print(f"FAILED: {e}", flush=True)
        status = 1
    except (BenchError, StatefunRuntimeError) as e:
        print(f"bench: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        status = 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
