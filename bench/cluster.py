"""The cluster benchmark: ``python -m bench.cluster`` from the repository root.

Owns what running one application as several runtime processes costs
(``statefun run --kafka B --app-id X``, ``runtime.cluster``), measured with
real processes:

* throughput with 1, 2 and 3 members (``--members``), each on a fresh Tansu broker
  (``bench/_kafka.py``) and application id, with the bench functions
  (``bench/functions.py``) in their own process. Once every member holds one
  generation with all of them, a fixed workload goes to the one-hop counter
  ``bench/counter``, message ``i`` to address ``i % addresses`` through the ingress of
  member ``i % members`` (the load spread over every process's ingress, whichever owns
  the address): ``send`` (``POST /v1/messages``; ``send accepted`` until the last
  ``202``, ``send processed`` until every message's output has been read back from the
  exactly-once ``bench/done`` egress, published once a checkpoint commits) and ``call``
  (``POST /v1/call``, its reply crossing members when the owner is not the member
  asked). Every address's count (``GET /v1/state``, each through another member) must
  equal the messages sent to it, its outputs ``1..n``. CPU seconds of each runtime
  process, the functions, the broker and this load generator, from ``/proc``.
* recovery, on the 3-member application afterwards: ``kill -9`` of a worker, then of
  the coordinator (``--kills`` times each, a new member started after each to be
  three again). From the SIGKILL: ``view`` until a survivor's ``GET /v1/cluster``
  shows a generation without the dead member, ``processing`` until a round of calls
  to one address on every partition, through the survivors' ingresses, all answer.

On a 2-core machine the processes share two cores, with the broker and the load
generator: the throughput rows measure what each member costs, not how the cluster
scales. A wrong result prints ``FAILED:`` and exits with status 1; a benchmark that
could not run, status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.__main__ import module_yaml
from bench._kafka import HOW_TO_GET_ONE, Broker, find_broker, start_tansu
from bench._support import (
    HOST,
    BenchError,
    Child,
    Children,
    Workload,
    format_table,
    free_port,
    percentile,
    runtime_command,
)
from bench.functions import COUNTER
from runtime.progress import steps
from runtime.routing import partition_for
from statefun.address import Address

MEMBERS = [1, 2, 3]
PARTITIONS = 8
SESSION_TIMEOUT = 2.0
"""The members' ``--session-timeout``: about what the issue asks on the test broker (a
join waits half of it there); a killed member is noticed after about this long."""
DEFAULTS = {"messages": 2_000, "addresses": 200, "concurrency": 48, "kills": 3}
QUICK = {"messages": 400, "addresses": 80, "concurrency": 32, "kills": 1}
JOIN_TIMEOUT = 60.0
PROGRESS_TIMEOUT = 60.0
CALL_TIMEOUT = 60.0
PROBE_CALL_TIMEOUT = 1.0
"""Seconds a recovery probe's call waits for its reply (``?timeout=``): a call whose
message went to a generation that was rolled back never answers."""
RECOVERY_TIMEOUT = 60.0
POLL = 0.05
TEXT = {"content-type": "text/plain; charset=utf-8"}
say = steps("bench.cluster")
"""A line per step on standard error."""


class Failed(Exception):
    """A wrong answer: the results cannot be trusted."""


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU seconds of each member, the functions, the broker (if ours) and this process."""

    members: tuple[float, ...]
    functions: float
    broker: float | None
    client: float

    def since(self, before: Cpu) -> Cpu:
        return Cpu(
            tuple(a - b for a, b in zip(self.members, before.members, strict=True)),
            self.functions - before.functions,
            None if self.broker is None or before.broker is None else self.broker - before.broker,
            self.client - before.client,
        )


@dataclass(frozen=True, slots=True)
class Row:
    members: int
    mode: str
    workload: Workload
    elapsed: float
    latencies: Sequence[float] | None
    """Seconds, sorted; None where there is no per-message latency."""
    cpu: Cpu

    def cells(self) -> list[str]:
        w, cpu = self.workload, self.cpu
        if self.latencies:
            p50 = f"{percentile(self.latencies, 50) * 1000:.1f}"
            p99 = f"{percentile(self.latencies, 99) * 1000:.1f}"
        else:
            p50 = p99 = "-"
        spent = sum(cpu.members) + cpu.functions + (cpu.broker or 0.0)
        return [
            str(self.members),
            self.mode,
            str(w.messages),
            f"{self.elapsed:.2f}",
            f"{w.messages / self.elapsed:.0f}",
            p50,
            p99,
            " ".join(f"{c:.2f}" for c in cpu.members),
            f"{sum(cpu.members):.2f}",
            f"{cpu.functions:.2f}",
            "-" if cpu.broker is None else f"{cpu.broker:.2f}",
            f"{cpu.client:.2f}",
            f"{spent / w.messages * 1000:.2f}",
        ]


HEADERS = [
    "members",
    "mode",
    "messages",
    "elapsed s",
    "messages/s",
    "p50 ms",
    "p99 ms",
    "cpu s per member",
    "members cpu s",
    "functions cpu s",
    "broker cpu s",
    "client cpu s",
    "cpu ms/msg",
]


@dataclass(slots=True)
class Recovery:
    """Seconds from a SIGKILL: until a survivor's view dropped the member, until calls to
    every partition answer again."""

    view: list[float] = field(default_factory=list)
    processing: list[float] = field(default_factory=list)


class Application:
    """The child processes of one application: broker, functions, members."""

    def __init__(self, children: Children, workdir: Path, broker: Broker):
        self.children = children
        self.workdir = workdir
        self.app_id = f"bench-{uuid.uuid4().hex[:12]}"
        self.broker: Child | None = None
        if broker.tansu is not None:
            self.broker, self.bootstrap = start_tansu(children, broker.tansu, workdir / "kafka.log")
        elif broker.external is not None:
            self.bootstrap = broker.external
        else:
            raise BenchError(f"no Kafka broker in {broker}")
        functions_port = free_port()
        self.functions_url = f"http://{HOST}:{functions_port}"
        self.module = workdir / "module.yaml"
        self.module.write_text(module_yaml(functions_port))
        self.functions = children.start_functions(functions_port, workdir, HOST)
        self.members: list[tuple[Child, str]] = []
        """The live members: (process, ingress URL), oldest first."""
        self.started = 0

    def start_member(self) -> None:
        port = free_port()
        self.started += 1
        child = self.children.start(
            f"member {self.started}",
            runtime_command(
                self.module,
                port,
                "--kafka",
                self.bootstrap,
                "--app-id",
                self.app_id,
                "--session-timeout",
                f"{SESSION_TIMEOUT:g}",
                "--partitions",
                str(PARTITIONS),
            ),
            self.workdir / f"member-{self.started}.log",
        )
        self.members.append((child, f"http://{HOST}:{port}"))

    @property
    def urls(self) -> list[str]:
        return [url for _, url in self.members]

    def processes(self) -> list[Child]:
        own = [self.functions, *(c for c, _ in self.members)]
        return own if self.broker is None else [self.broker, *own]

    def check_alive(self) -> None:
        for child in self.processes():
            child.check_alive()

    def cpu(self) -> Cpu:
        return Cpu(
            tuple(c.cpu_seconds() for c, _ in self.members),
            self.functions.cpu_seconds(),
            None if self.broker is None else self.broker.cpu_seconds(),
            time.process_time(),
        )


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    """The JSON of a 200 answer; None for anything else (the member is not up yet)."""
    try:
        async with session.get(url) as response:
            if response.status != 200:
                return None
            return await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def one_generation(app: Application, session: aiohttp.ClientSession) -> dict[str, Any]:
    """Wait until every member is ready and holds one generation of all of them, each
    owning partitions; that view."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    urls = set(app.urls)
    while time.monotonic() < deadline:
        app.check_alive()
        views = [await get_json(session, f"{url}/v1/cluster") for url in app.urls]
        ready = [await get_json(session, f"{url}/ready") for url in app.urls]
        if all(v is not None for v in views) and all(r is not None for r in ready):
            first = views[0]
            if all(
                {m["url"] for m in v["members"]} == urls
                and all(m["partitions"] for m in v["members"])
                and not v["unowned"]
                and v["generation"] == first["generation"]
                for v in views
            ):
                return dict(first)
        await asyncio.sleep(POLL)
    raise BenchError(f"the members did not form one generation within {JOIN_TIMEOUT:g} s")


async def drive(
    app: Application, session: aiohttp.ClientSession, w: Workload, ids: list[str], kind: str
) -> tuple[list[float], list[bytes]]:
    """POST message ``i`` to ``/v1/{kind}/bench/counter/{ids[i % len(ids)]}`` through
    member ``i % members``, ``w.concurrency`` at a time; each answer's latency and body."""
    expected = 200 if kind == "call" else 202
    params = {"timeout": f"{CALL_TIMEOUT:g}"} if kind == "call" else None
    urls = app.urls
    latencies: list[float] = []
    bodies: list[bytes] = []
    errors: list[str] = []
    numbers = iter(range(w.messages))

    async def one_worker() -> None:
        for i in numbers:  # shared: each message is taken by exactly one worker
            url = f"{urls[i % len(urls)]}/v1/{kind}/{COUNTER}/{ids[i % len(ids)]}"
            started = time.perf_counter()
            async with session.post(url, data=str(i).encode(), headers=TEXT, params=params) as r:
                body = await r.read()
            if r.status != expected:
                errors.append(f"{url}: {r.status} {body[:300]!r}")
                continue
            latencies.append(time.perf_counter() - started)
            bodies.append(body)

    await asyncio.gather(*(one_worker() for _ in range(w.concurrency)))
    if errors:
        raise Failed(f"{kind}: {len(errors)} requests were refused, e.g. {errors[0]}")
    return latencies, bodies


def outputs_of(texts: Sequence[str]) -> dict[str, list[int]]:
    outputs: dict[str, list[int]] = defaultdict(list)
    for text in texts:
        id_, count = text.rsplit(":", 1)
        outputs[id_].append(int(count))
    return outputs


async def read_egress(
    app: Application, session: aiohttp.ClientSession, start: int, count: int
) -> list[str]:
    """``count`` records of the ``bench/done`` egress from offset ``start``, read through
    the members in turn."""
    texts: list[str] = []
    next_, last_progress, turn = start, time.monotonic(), 0
    while len(texts) < count:
        url = f"{app.urls[turn % len(app.urls)]}/v1/egress/bench/done"
        turn += 1
        params = {"from": str(next_), "limit": "10000"}
        async with session.get(url, params=params) as response:
            if response.status != 200:
                raise Failed(f"GET {url} answered {response.status}: {await response.text()}")
            page = await response.json()
        texts += [str(record["value"]) for record in page["records"]]
        next_ = page["next"]
        if page["records"]:
            last_progress = time.monotonic()
            continue
        if time.monotonic() - last_progress > PROGRESS_TIMEOUT:
            raise Failed(f"only {len(texts)} of {count} outputs came out of the egress")
        app.check_alive()
        await asyncio.sleep(POLL)
    if len(texts) > count:
        raise Failed(f"{len(texts)} egress records for {count} messages")
    return texts


async def egress_end(app: Application, session: aiohttp.ClientSession) -> int:
    """The ``bench/done`` egress's next offset now."""
    position = 0
    while True:
        url = f"{app.urls[0]}/v1/egress/bench/done"
        async with session.get(url, params={"from": str(position), "limit": "10000"}) as r:
            page = await r.json()
        if not page["records"]:
            return int(page["next"])
        position = page["next"]


async def verify(
    app: Application,
    session: aiohttp.ClientSession,
    w: Workload,
    ids: list[str],
    outputs: dict[str, list[int]],
    mode: str,
) -> None:
    """Each address's count (read through another member each time) equals the messages
    sent to it, and its outputs are ``1..n``."""
    wrong: list[str] = []
    for n, (id_, expected) in enumerate(zip(ids, w.expected(), strict=True)):
        url = f"{app.urls[n % len(app.urls)]}/v1/state/{COUNTER}/{id_}"
        async with session.get(url) as response:
            if response.status != 200:
                raise Failed(f"GET {url} answered {response.status}: {await response.text()}")
            state = (await response.json())["state"]
        count = int(state["count"]["value"]) if "count" in state else 0
        got = sorted(outputs.get(id_, []))
        if count != expected:
            wrong.append(f"{id_}: count {count}, sent {expected}")
        elif got != list(range(1, expected + 1)):
            wrong.append(f"{id_}: outputs {got[:5]}... ({len(got)}), expected 1..{expected}")
    if wrong:
        raise Failed(f"{mode}: {len(wrong)} of {len(ids)} addresses are wrong, e.g. {wrong[:3]}")


async def run_send(
    app: Application, session: aiohttp.ClientSession, w: Workload, prefix: str
) -> list[Row]:
    ids = w.ids(prefix)
    members = len(app.members)
    start_offset = await egress_end(app, session)
    cpu0, start = app.cpu(), time.perf_counter()
    reader = asyncio.create_task(read_egress(app, session, start_offset, w.messages))
    try:
        latencies, _ = await drive(app, session, w, ids, "messages")
        accepted = Row(
            members,
            "send accepted",
            w,
            time.perf_counter() - start,
            sorted(latencies),
            app.cpu().since(cpu0),
        )
        texts = await reader
    finally:
        reader.cancel()
    processed = Row(
        members, "send processed", w, time.perf_counter() - start, None, app.cpu().since(cpu0)
    )
    await verify(app, session, w, ids, outputs_of(texts), "send")
    return [accepted, processed]


async def run_call(
    app: Application, session: aiohttp.ClientSession, w: Workload, prefix: str
) -> list[Row]:
    ids = w.ids(prefix)
    cpu0, start = app.cpu(), time.perf_counter()
    latencies, bodies = await drive(app, session, w, ids, "call")
    row = Row(
        len(app.members),
        "call",
        w,
        time.perf_counter() - start,
        sorted(latencies),
        app.cpu().since(cpu0),
    )
    texts = [str(json.loads(body)["value"]) for body in bodies]
    await verify(app, session, w, ids, outputs_of(texts), "call")
    return [row]


# --- recovery from kill -9 ---------------------------------------------------------------


def probe_ids() -> list[str]:
    """One address id of ``bench/counter`` on each messages partition."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < PARTITIONS:
        id_ = f"probe-{n}"
        found.setdefault(partition_for(Address.parse(f"{COUNTER}/{id_}"), PARTITIONS), id_)
        n += 1
    return [found[p] for p in range(PARTITIONS)]


async def probe_round(session: aiohttp.ClientSession, urls: list[str], probes: list[str]) -> bool:
    """One call to every probe address, through the given members in turn; all answered?"""

    async def one(n: int, id_: str) -> bool:
        url = f"{urls[n % len(urls)]}/v1/call/{COUNTER}/{id_}"
        try:
            async with session.post(
                url,
                data=b"probe",
                headers=TEXT,
                params={"timeout": f"{PROBE_CALL_TIMEOUT:g}"},
                timeout=aiohttp.ClientTimeout(total=PROBE_CALL_TIMEOUT + 2),
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    return all(await asyncio.gather(*(one(n, id_) for n, id_ in enumerate(probes))))


async def kill_and_recover(
    app: Application, session: aiohttp.ClientSession, victim: str, probes: list[str]
) -> tuple[float, float]:
    """SIGKILL the member ``victim`` (its id); seconds until a survivor's view dropped it,
    until every probe answers through the survivors."""
    view = await one_generation(app, session)
    by_url = {m["url"]: m["id"] for m in view["members"]}
    [(child, url)] = [(c, u) for c, u in app.members if by_url[u] == victim]
    survivors = [u for _, u in app.members if u != url]
    app.members.remove((child, url))
    killed = time.monotonic()
    child.process.kill()
    child.process.wait()

    async def view_changed() -> float:
        while True:
            answer = await get_json(session, f"{survivors[0]}/v1/cluster")
            if answer is not None and victim not in {m["id"] for m in answer["members"]}:
                return time.monotonic() - killed
            await asyncio.sleep(POLL)

    async def processing() -> float:
        while not await probe_round(session, survivors, probes):
            app.check_alive()
            await asyncio.sleep(POLL)
        return time.monotonic() - killed

    async with asyncio.timeout(RECOVERY_TIMEOUT):
        seen, done = await asyncio.gather(view_changed(), processing())
    return seen, done


async def poll_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check`` answers True, polling; a BenchError after :data:`JOIN_TIMEOUT`."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"no {what} within {JOIN_TIMEOUT:g} s")
        await asyncio.sleep(POLL)


async def last_checkpoint(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether the member at ``url`` knows a committed checkpoint."""
    view = await get_json(session, f"{url}/v1/cluster")
    return view is not None and view["last_checkpoint"] is not None


async def recoveries(
    app: Application, session: aiohttp.ClientSession, kills: int
) -> dict[str, Recovery]:
    """``kills`` of a worker, then as many of the coordinator, three members each time."""
    probes = probe_ids()
    results = {"worker": Recovery(), "coordinator": Recovery()}
    for role in ("worker", "coordinator"):
        for _ in range(kills):
            view = await one_generation(app, session)
            # Processing before the kill, and a checkpoint to go back to.
            await poll_until(
                lambda: probe_round(session, app.urls, probes), "calls to every partition"
            )
            await poll_until(lambda: last_checkpoint(session, app.urls[0]), "a checkpoint")
            coordinator = view["coordinator"]
            others = [m["id"] for m in view["members"] if m["id"] != coordinator]
            victim = coordinator if role == "coordinator" else others[0]
            seen, done = await kill_and_recover(app, session, victim, probes)
            results[role].view.append(seen)
            results[role].processing.append(done)
            app.start_member()
    return results


# --- the run -------------------------------------------------------------------------------


async def measure_members(
    app: Application, members: int, w: Workload, kills: int
) -> tuple[list[Row], dict[str, Recovery]]:
    connector = aiohttp.TCPConnector(limit=w.concurrency + 16)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await app.functions.wait_healthy(session, f"{app.functions_url}/health")
        say(f"{members} members: starting them")
        for _ in range(members):
            app.start_member()
        await one_generation(app, session)
        # Warm up every member (connections, code paths, the spec); checked, not shown.
        warm = Workload(20 * members, 10 * members, 8)
        say(f"{members} members: warming up")
        await run_call(app, session, warm, "warm-call")
        await run_send(app, session, warm, "warm-send")
        say(f"{members} members: send, {w.messages} messages")
        rows = await run_send(app, session, w, "send")
        say(f"{members} members: call, {w.messages} messages")
        rows += await run_call(app, session, w, "call")
        if kills:
            say(f"{members} members: kill -9 of a worker and of the coordinator, {kills} each")
        found = await recoveries(app, session, kills) if kills else {}
        return rows, found


def run(args: argparse.Namespace, workdir: Path, broker: Broker) -> int:
    w = Workload(args.messages, args.addresses, args.concurrency)
    rows: list[Row] = []
    recovered: dict[str, Recovery] = {}
    status = 0
    for members in args.members:
        kills = args.kills if members == max(args.members) and members > 1 else 0
        run_dir = workdir / f"members-{members}"
        run_dir.mkdir()
        app: Application | None = None
        with Children() as children:
            try:
                app = Application(children, run_dir, broker)
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    member_rows, found = runner.run(measure_members(app, members, w, kills))
                rows += member_rows
                recovered.update(found)
                print(f"{members} members: OK", flush=True)
            except Failed as e:
                print(f"{members} members: FAILED: {e}", flush=True)
                status = max(status, 1)
            except (BenchError, aiohttp.ClientError, TimeoutError) as e:
                print(f"{members} members: bench: error: {type(e).__name__}: {e}", file=sys.stderr)
                for child in [] if app is None else app.processes():
                    print(
                        f"--- {child.name}, {child.log_path}:\n{child.log_tail()}", file=sys.stderr
                    )
                status = 2
    print(
        f"\nthroughput: {w.messages} messages per mode over {w.addresses} addresses of "
        f"{COUNTER}, {w.concurrency} in flight, spread over every member's ingress; "
        f"{PARTITIONS} partitions, checkpoints every 1 s, exactly-once egress"
    )
    if rows:
        print(format_table(HEADERS, [r.cells() for r in rows], left=2))
    if recovered:
        print(
            f"\nkill -9 of a member of 3 (session timeout {SESSION_TIMEOUT:g} s), "
            f"{args.kills} each; seconds from SIGKILL"
        )
        table = []
        for role, r in recovered.items():
            for what, values in (("view without it", r.view), ("processing again", r.processing)):
                table.append(
                    [
                        role,
                        what,
                        f"{statistics.median(values):.2f}",
                        f"{min(values):.2f}",
                        f"{max(values):.2f}",
                    ]
                )
        print(format_table(["killed", "until", "median", "min", "max"], table, left=2))
    return status


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description="Throughput and CPU of an application of 1-3 runtime processes over "
        "Kafka, and the time from kill -9 of a member to processing again.",
    )
    parser.add_argument("--quick", action="store_true", help="a small run (under a minute)")
    parser.add_argument("--members", type=int, nargs="+", default=MEMBERS, metavar="N")
    parser.add_argument("--messages", type=int, metavar="N")
    parser.add_argument("--addresses", type=int, metavar="N")
    parser.add_argument("--concurrency", type=int, metavar="N")
    parser.add_argument(
        "--kills", type=int, metavar="N", help="kill -9 of a worker, and of the coordinator"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULTS
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    broker = find_broker()
    if broker is None:
        print(f"bench: error: no Kafka broker: {HOW_TO_GET_ONE}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="statefun-bench-cluster-"))
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, Kafka: {broker.describe()}, "
        f"work directory {workdir}",
        flush=True,
    )
    try:
        status = run(args, workdir, broker)
    except KeyboardInterrupt as e:
        print(f"bench: interrupted ({str(e) or 'SIGINT'}); the processes were stopped")
        status = 130
    if args.keep or status not in (0, 130):
        print(f"kept {workdir} (per run: module.yaml, the children's logs)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
