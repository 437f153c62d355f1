"""The cluster checkpoint simulation: ``python -m bench.cluster_sim`` from the repository root.

Owns one measurement: what two-phase commit over the decision log
(``runtime/cluster/decisions.py``, ``runtime/cluster/coordinator.py``) costs against the
number of members, 1 to 32 (``--members``), in one process on the in-memory log. Each
simulated member tails the decision log with a ``DecisionLog`` of its own, as a real
member does, and answers every ``Take`` with a ``Part`` for the partitions the ``Begin``
gives it, writing nothing else (no partition store: what is measured is the protocol).
The coordinator is a ``ClusterCoordinator`` with a ``DecisionLog`` of its own (as on
the member that coordinates, beside its member side), driven by calling
``checkpoint()`` back to back (no interval).

Per member count, over ``--checkpoints`` checkpoints after ``--warmup`` (the chains
grow to ``full_every`` links and start over at a full snapshot, as in a real run):

* ``p50 ms`` / ``p99 ms``: a checkpoint's duration, from the ``Take`` appended to the
  ``Manifest`` folded. Every member runs on this one event loop, so their folds and
  parts are served one after another: the duration is an upper bound that grows with
  the members' CPU, not what members on their own machines would see.
* ``coordinator ms``: CPU of the coordinator's tasks (its ``DecisionLog``'s tail,
  decoding and folding every record, and its checkpoint step: encoding the take and
  the manifest, waiting, building the manifest) per checkpoint, measured by a task
  factory that adds up ``time.thread_time()`` around each step of a task to the account
  of the code that created it.
* ``member ms``: CPU of one member's tasks per checkpoint (its fold of every record and
  its part), averaged over the members.
* ``process ms``: the whole process's CPU per checkpoint (the in-memory log included).
* ``records``: decision-log records per checkpoint (a take, a part per member, a
  manifest); ``manifest KiB``: the encoded manifest, which grows with the partitions
  (``--partitions``, default 32, the same for every row) and the chains' length.
* ``epoch``: the decision log's epoch at the end (the coordinator moves it to a new one
  every ``--epoch-records`` records); ``join ms``: how long a member that starts then
  takes to open the decision log (read the newest epoch and fold it).

Every checkpoint must commit; otherwise it prints ``FAILED:`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import statistics
import sys
import time
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench._support import format_table, percentile
from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.cluster.coordinator import DEFAULT_FULL_EVERY, ClusterCoordinator
from runtime.cluster.decisions import (
    DEFAULT_EPOCH_RECORDS,
    DecisionLog,
    Effect,
    Part,
    Take,
    encode,
)
from runtime.cluster.locations import PartitionLocation
from runtime.log.memory import MemoryLog
from runtime.progress import steps

T = TypeVar("T")

TOPIC = "sim-decisions"
MODULE = "sim-module"
MEMBER_COUNTS = (1, 2, 4, 8, 16, 32)
TIMEOUT = 30.0


class Failed(Exception):
    """A checkpoint did not commit."""


# --- CPU per task ------------------------------------------------------------------------


@dataclass(slots=True)
class Account:
    seconds: float = 0.0


_ACCOUNT: contextvars.ContextVar[Account | None] = contextvars.ContextVar("account", default=None)


class _Metered(Coroutine[Any, Any, T]):
    """A coroutine that adds the CPU time of each of its steps to an account."""

    def __init__(self, coro: Coroutine[Any, Any, T], account: Account):
        self._coro = coro
        self._account = account

    def send(self, value: Any) -> Any:
        start = time.thread_time()
        try:
            return self._coro.send(value)
        finally:
            self._account.seconds += time.thread_time() - start

    def throw(self, *args: Any) -> Any:
        start = time.thread_time()
        try:
            return self._coro.throw(*args)
        finally:
            self._account.seconds += time.thread_time() - start

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()


def _metering_factory(
    loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
) -> asyncio.Task[Any]:
    # The account of whoever creates the task; tasks copy the context, so the tasks
    # they create in turn inherit it.
    account = _ACCOUNT.get()
    wrapped = coro if account is None else _Metered(coro, account)
    return asyncio.Task(wrapped, loop=loop, **kwargs)


def charged(account: Account, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``coro`` as a task whose CPU (and its tasks') goes to ``account``."""
    token = _ACCOUNT.set(account)
    try:
        return asyncio.create_task(coro)
    finally:
        _ACCOUNT.reset(token)


# --- the simulation ----------------------------------------------------------------------


class SimulatedMember:
    """Answers every valid Take with a Part for its partitions, at once."""

    def __init__(self, log: MemoryLog, member: str):
        self.member = member
        self.decisions = DecisionLog(log, TOPIC)
        self._appends: set[asyncio.Task[int]] = set()

    async def open(self) -> None:
        await self.decisions.open()
        self.decisions.subscribe(self._heard)

    def _heard(self, effect: Effect) -> None:
        take = effect.record
        if not effect.applied or not isinstance(take, Take):
            return
        state = self.decisions.state
        if self.member not in state.owners():
            return
        topic = f"sim-checkpoints-{take.segment}"
        part = Part(
            take.generation,
            take.checkpoint,
            self.member,
            {
                p: PartitionLocation(topic, p, 100 * take.checkpoint, 3, take.checkpoint, take.full)
                for p in state.partitions_of(self.member)
            },
            {},
            False,
            4096,
            10,
        )
        task = asyncio.create_task(self.decisions.append(part))
        self._appends.add(task)
        task.add_done_callback(self._appends.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._appends)
        await self.decisions.close()


@dataclass(slots=True)
class Row:
    members: int
    partitions: int
    checkpoints: int
    durations: list[float] = field(default_factory=list)
    coordinator_cpu: float = 0.0
    member_cpu: float = 0.0
    process_cpu: float = 0.0
    records: int = 0
    manifest_bytes: int = 0
    epoch: int = 1
    join: float = 0.0

    def cells(self) -> list[str]:
        durations = sorted(self.durations)
        per = 1000 / self.checkpoints
        return [
            f"{self.members}",
            f"{self.partitions}",
            f"{self.checkpoints}",
            f"{self.records / self.checkpoints:.0f}",
            f"{self.manifest_bytes / 1024:.1f}",
            f"{statistics.median(durations) * 1000:.2f}",
            f"{percentile(durations, 99) * 1000:.2f}",
            f"{self.coordinator_cpu * per:.3f}",
            f"{self.member_cpu * per / self.members:.3f}",
            f"{self.process_cpu * per:.2f}",
            f"{self.epoch}",
            f"{self.join * 1000:.1f}",
        ]


HEADERS = [
    "members",
    "partitions",
    "checkpoints",
    "records",
    "manifest KiB",
    "p50 ms",
    "p99 ms",
    "coordinator ms",
    "member ms",
    "process ms",
    "epoch",
    "join ms",
]


async def simulate(
    members: int,
    partitions: int,
    checkpoints: int,
    warmup: int,
    epoch_records: int = DEFAULT_EPOCH_RECORDS,
) -> Row:
    asyncio.get_running_loop().set_task_factory(_metering_factory)
    log = MemoryLog()
    coordinator_account, member_account = Account(), Account()
    ids = [f"m-{i:08x}" for i in range(members)]
    simulated = [SimulatedMember(log, m) for m in ids]
    for m in simulated:
        await charged(member_account, m.open())
    decisions = DecisionLog(log, TOPIC, epoch_records=epoch_records)
    await charged(coordinator_account, decisions.open())
    coordinator = ClusterCoordinator(
        decisions,
        ids[0],
        MODULE,
        CheckpointConfig(interval=0, timeout=TIMEOUT),
        full_every=DEFAULT_FULL_EVERY,
    )
    row = Row(members, partitions, checkpoints)
    try:
        begun = await charged(
            coordinator_account,
            coordinator.begin(
                view=1,
                owners={p: ids[p % members] for p in range(partitions)},
                ingress_owners={},
                members={m: f"http://127.0.0.1:{9000 + i}" for i, m in enumerate(ids)},
                reason="simulation",
            ),
        )
        if not begun.applied:
            raise Failed(f"the simulation's Begin was void: {begun.void}")
        for i in range(warmup + checkpoints):
            measured = i >= warmup
            cpu0 = (coordinator_account.seconds, member_account.seconds, time.process_time())
            position = decisions.state.position
            started = time.perf_counter()
            manifest = await charged(coordinator_account, coordinator.checkpoint())
            elapsed = time.perf_counter() - started
            if manifest is None:
                raise Failed(f"{members} members: checkpoint {i + 1} did not commit")
            if not measured:
                continue
            row.durations.append(elapsed)
            row.coordinator_cpu += coordinator_account.seconds - cpu0[0]
            row.member_cpu += member_account.seconds - cpu0[1]
            row.process_cpu += time.process_time() - cpu0[2]
            row.records += decisions.state.position - position
            row.manifest_bytes = max(row.manifest_bytes, len(encode(manifest)))
        row.epoch = decisions.state.epoch
        joining = DecisionLog(log, TOPIC)
        started = time.perf_counter()
        await joining.open()
        row.join = time.perf_counter() - started
        await joining.close()
    finally:
        for m in simulated:
            await m.close()
        await decisions.close()
        await log.close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster_sim", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--members", type=int, nargs="+", default=list(MEMBER_COUNTS))
    parser.add_argument("--partitions", type=int, default=32)
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="50 checkpoints per row")
    parser.add_argument(
        "--epoch-records",
        type=int,
        default=DEFAULT_EPOCH_RECORDS,
        help="records per epoch of the decision log (a huge number: never move)",
    )
    args = parser.parse_args(argv)
    checkpoints = 50 if args.quick else args.checkpoints
    rows: list[Row] = []
    try:
        say = steps("bench.cluster_sim")
        for members in args.members:
            say(f"{members} members: {args.warmup} + {checkpoints} checkpoints")
            rows.append(
                asyncio.run(
                    simulate(members, args.partitions, checkpoints, args.warmup, args.epoch_records)
                )
            )
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(format_table(HEADERS, [r.cells() for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
