"""The membership benchmark: ``python -m bench.membership`` from the repository root.

Owns the timing of ``runtime.cluster.membership`` on the broker: how long until every
member holds the new view after a member joins, leaves (``Membership.stop``), or is
killed with SIGKILL (found only by the group's session timeout), as a worker and as the
coordinator (the group leader). Each session timeout (``--session-timeouts``, with the
heartbeat interval beside it) gets a fresh broker (``bench/_kafka.py``); each repeat a
fresh application id.

Two members run in this process (asyncio, each its own ``Membership``), the third in a
child process (``python -m bench.membership --member ...``) so it can be killed for
real; started first, the child is the group's first member, hence its leader, for the
coordinator rows. Times run from the act (``start()`` called, ``stop()`` called,
SIGKILL sent) to the moment both in-process members hold a view with the change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._kafka import HOW_TO_GET_ONE, find_broker, start_tansu
from bench._support import ROOT, BenchError, Children, format_table
from runtime.cluster.membership import Member, Membership, View
from runtime.progress import steps

PARTITIONS = 8
VIEW_WAIT = 60.0
HEARTBEATS = {2.0: 0.5, 6.0: 1.0}
say = steps("bench.membership")
"""A line per step on standard error."""
"""Heartbeat interval per session timeout: a quarter, or the default of one second."""


class Tracked:
    """A member in this process and the views it has received."""

    def __init__(self, bootstrap: str, app_id: str, session: float, heartbeat: float):
        self.views: list[View] = []
        self.arrived = asyncio.Event()
        self.membership = Membership(
            bootstrap,
            app_id,
            Member.new("http://127.0.0.1:8090"),
            partitions=PARTITIONS,
            ingress_topics={},
            on_view=self._on_view,
            session_timeout=session,
            heartbeat_interval=heartbeat,
        )

    def _on_view(self, view: View) -> None:
        self.views.append(view)
        self.arrived.set()

    async def wait_for(self, predicate: Callable[[set[str]], bool]) -> None:
        async with asyncio.timeout(VIEW_WAIT):
            while not self.views or not predicate({m.id for m in self.views[-1].members}):
                self.arrived.clear()
                await self.arrived.wait()


async def all_see(tracked: Sequence[Tracked], predicate: Callable[[set[str]], bool]) -> float:
    """Wait until every member's latest view satisfies ``predicate``; the time it happened."""
    await asyncio.gather(*(t.wait_for(predicate) for t in tracked))
    return time.monotonic()


async def start_child(
    bootstrap: str, app_id: str, session: float
) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.membership",
        "--member",
        bootstrap,
        app_id,
        str(session),
        str(HEARTBEATS[session]),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    if not line:
        raise BenchError("the child member exited before joining")
    return process, line.decode().strip()


async def kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.wait()


async def one_round(bootstrap: str, session: float) -> dict[str, float]:
    """One of each event, on a fresh application id: seconds per event."""
    heartbeat = HEARTBEATS[session]
    times: dict[str, float] = {}
    app = f"bench-{uuid.uuid4().hex[:8]}"
    # The child first: the group's first member leads it.
    child, child_id = await start_child(bootstrap, app, session)
    a = Tracked(bootstrap, app, session, heartbeat)
    b = Tracked(bootstrap, app, session, heartbeat)
    try:
        t0 = time.monotonic()
        await asyncio.gather(a.membership.start(), b.membership.start())
        await all_see([a, b], lambda ids: len(ids) == 3)
        assert a.views[-1].coordinator == child_id, "the child did not lead the group"
        t0 = time.monotonic()
        await kill(child)
        times["kill -9 coordinator"] = await all_see([a, b], lambda ids: child_id not in ids) - t0

        child, child_id = await start_child(bootstrap, app, session)
        await all_see([a, b], lambda ids: child_id in ids)
        t0 = time.monotonic()
        await kill(child)
        times["kill -9 worker"] = await all_see([a, b], lambda ids: child_id not in ids) - t0

        c = Tracked(bootstrap, app, session, heartbeat)
        t0 = time.monotonic()
        await c.membership.start()
        me = c.membership.me.id
        times["join"] = await all_see([a, b, c], lambda ids: me in ids) - t0
        t0 = time.monotonic()
        await c.membership.stop()
        times["leave (stop)"] = await all_see([a, b], lambda ids: me not in ids) - t0
    finally:
        await kill(child)
        await asyncio.gather(a.membership.stop(), b.membership.stop())
    return times


async def measure(bootstrap: str, session: float, repeats: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for i in range(repeats):
        say(f"session timeout {session:g} s: round {i + 1} of {repeats}")
        for event, seconds in (await one_round(bootstrap, session)).items():
            samples.setdefault(event, []).append(seconds)
    return samples


async def child_member(bootstrap: str, app_id: str, session: float, heartbeat: float) -> None:
    """The child process: join, say our id, and wait to be killed."""
    me = Member.new("http://127.0.0.1:8091")
    membership = Membership(
        bootstrap,
        app_id,
        me,
        partitions=PARTITIONS,
        ingress_topics={},
        on_view=lambda view: None,
        session_timeout=session,
        heartbeat_interval=heartbeat,
    )
    await membership.start()
    print(me.id, flush=True)
    await asyncio.Event().wait()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.membership", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--session-timeouts",
        type=float,
        nargs="+",
        default=sorted(HEARTBEATS),
        choices=sorted(HEARTBEATS),
    )
    parser.add_argument(
        "--member",
        nargs=4,
        metavar=("BOOTSTRAP", "APP", "SESSION", "HEARTBEAT"),
        help=argparse.SUPPRESS,
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.member:
        bootstrap, app, session, heartbeat = args.member
        asyncio.run(child_member(bootstrap, app, float(session), float(heartbeat)))
        return 0
    broker = find_broker()
    if broker is None:
        print(f"bench: no Kafka broker: {HOW_TO_GET_ONE}", file=sys.stderr)
        return 2
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as work, Children() as children:
        for session in args.session_timeouts:
            if broker.external is not None:
                bootstrap = broker.external
            else:
                assert broker.tansu is not None
                _, bootstrap = start_tansu(
                    children, broker.tansu, Path(work) / f"tansu-{session:g}.log"
                )
            samples = asyncio.run(measure(bootstrap, session, args.repeats))
            for event, values in samples.items():
                rows.append(
                    [
                        f"{session:g} s / {HEARTBEATS[session]:g} s",
                        event,
                        f"{statistics.median(values):.2f}",
                        f"{min(values):.2f}",
                        f"{max(values):.2f}",
                    ]
                )
    print(
        f"membership on {broker.describe()}, {args.repeats} repeats; seconds until every member holds the new view"
    )
    print(format_table(["session / heartbeat", "event", "median", "min", "max"], rows, left=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
