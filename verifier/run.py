"""One verification run: processes, the sender, the fault schedule, the checks.

1. Generate the trees (seeded) and the oracle's expectation of every address.
2. Start the function server (``uvicorn verifier.functions:app``), for Kafka a Tansu
   broker, and the runtime (``python -m runtime.cli run``), each a child process with
   its own log file in the work dir.
3. Send every tree's root through the HTTP ingress, a few at a time, keeping at most
   ``window`` commands sent but not yet seen applied. Meanwhile scan the state of every
   address and check it (:func:`verifier.checks.invariant_problems`): never above the
   oracle's final count, no command twice, no cancelled or foreign command, no failed
   causal check, a count that matches the commands applied.
4. Once the first checkpoint is complete, inject faults: ``kill -9`` of the runtime and
   a restart (``kills`` times, spread over the run by progress), the function server
   killed and restarted (``function_restarts`` times), and endpoint spells every 1-4 s:
   the protocol route answers 500, or hangs past the read timeout, for 0.2-3 s, or (one
   spell in four) for longer than the call budget (under the default failure policy
   the failing addresses are held and retried alone, the endpoint reported unavailable;
   under ``--failure-policy fail`` the budget runs out and the runtime rolls back); or
   it answers late but within the read timeout for 1-5 s, so that responses arrive
   after the checkpoint that captured their inputs. Some kills
   come 0-1.5 s after the previous restart, while the runtime recovers. Before each
   ``kill -9`` the sender is quiesced: no ingress request is in flight, so the oracle
   knows what was accepted.
5. When everything is sent and every fault done, wait (bounded) until every address
   equals the oracle exactly, check again a few seconds later, and stop the runtime
   cleanly.

A POST whose outcome is unknown (the connection broke after the request was sent, a
timeout, a 5xx) makes its tree *uncertain*; at the end the tree counts if and only if
its root command is in its address's state. A connection refused before sending is
retried. Uncertain trees are reported; with the quiescing above there should be none.

With ``processes`` above 1 the application runs as a cluster of runtime processes
(``statefun run --kafka``, one Kafka broker, one app id), and the run differs so:

- every request (sends, reads) goes to the live processes in turn (round robin,
  :class:`verifier.cluster.IngressPool`), and one tree in ``calls_every`` is sent by
  ``POST /v1/call`` (its reply must reach the request, wherever the address lives);
- every POST carries an ``Idempotency-Key``, and any failure that may have reached a
  process (a broken connection, a timeout, a 5xx, a call's 504) is retried with it,
  through the next process, as a client would: a tree is uncertain only if no process
  answered it within 120 s;
- the faults are membership changes (:func:`verifier.cluster.membership_schedule`),
  with requests in flight: ``kill -9`` of a worker and of the coordinator (each
  restarted once a generation without it began: a new process joins), a process
  joining, one leaving on SIGTERM; for each kill, the time until a generation without
  the dead member began and until the next checkpoint committed, from ``GET
  /v1/cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._support import free_port
from verifier import forensics
from verifier.checks import EMPTY, AddressState, final_difference, invariant_problems
from verifier.cluster import (
    JOIN,
    KILL_COORDINATOR,
    LEAVE,
    ClusterMember,
    ClusterView,
    FailoverTransport,
    IngressPool,
    excluded,
    membership_schedule,
    same_origin,
)
from verifier.commands import (
    COMMAND_TYPE,
    EGRESS_ID,
    FUNCTION_TYPE,
    KAFKA_EGRESS_ID,
    REPLY_TYPE,
    address_id,
)
from verifier.egress_audit import (
    EgressAudit,
    EmbeddedEgressReader,
    KafkaEgressReader,
    create_topic,
)
from verifier.generator import Tree, TreeShape, generate
from verifier.oracle import Oracle, expect_tree, expected_counts
from verifier.processes import (
    EXTERNAL_BROKER_ENV,
    FunctionServer,
    ProcessError,
    RuntimeProcess,
    TansuBroker,
)

Echo = Callable[[str], None]
EgressReader = EmbeddedEgressReader | KafkaEgressReader
KAFKA_EGRESS_PARTITIONS = 2
REPLAYED_HEADER = "idempotent-replayed"
"""The runtime's answer to a request whose Idempotency-Key it knew: nothing was appended."""
SEND_DEADLINE = 120.0
"""How long a POST is retried (a refused connection; with a key, any failure)."""
MEMBERSHIP_TIMEOUT = 120.0
"""How long a membership change may take to show in ``GET /v1/cluster``."""


@dataclass(frozen=True)
class VerifierConfig:
    commands: int = 10_000
    addresses: int = 100
    seed: int = 1
    log: str = "embedded"
    """``embedded`` (the runtime's SQLite log) or ``kafka``."""
    kills: int | None = None
    """``kill -9`` of the runtime; None: 3, or one per 10,000 commands if that is more."""
    function_restarts: int = 1
    spells: bool = True
    checkpoint_interval: float = 1.0
    kafka_bootstrap: str | None = None
    """A running broker for ``log="kafka"``; None: ``$STATEFUN_TEST_KAFKA``, or a Tansu
    broker the run starts."""
    work_dir: Path | None = None
    """Where the logs and data go; None: a temporary directory, removed after a run
    that passed (unless ``keep``)."""
    keep: bool = False
    window: int | None = None
    """Commands sent but not yet seen applied, at most; None: 1,500, or 3 per address if
    that is more (a scan of many addresses takes a while, and paces the sender)."""
    concurrency: int = 8
    """Ingress requests in flight, at most."""
    call_timeout: float = 6.0
    """The endpoint's call budget (module.yaml ``timeouts.call``)."""
    failure_policy: str | None = None
    """The functions' ``statefun.v1/failure-policy`` (None: the runtime's default,
    ``dead-letter``, which holds a failing address alone; ``fail`` rolls everything back
    when a call's budget runs out)."""
    read_timeout: float = 2.0
    stall_timeout: float = 90.0
    """Fail when nothing new is applied for this long."""
    final_timeout: float = 300.0
    """At the end, wait at most this long for every address to equal the oracle."""
    shape: TreeShape = field(default_factory=TreeShape)
    runtime_command: tuple[str, ...] = ()
    """What runs the runtime instead of ``python -m runtime.cli`` (then ``run`` and its
    flags), e.g. a script that patches the runtime before calling its CLI."""
    cancel_wait: bool = True
    """At the end, wait until every cancelled send is due (``shape.cancelled_delay_ms``
    after its tree was sent), so that one whose cancel was lost shows up."""
    hot_kills: bool = False
    """Every other kill with ingress requests in flight (not quiesced): their trees are
    uncertain, and count if and only if their root ran; a request answered 202 before
    the kill must never be lost."""
    sabotage: str | None = None
    """Break the functions on purpose (``overcount`` or ``lose``, see
    ``verifier.functions``), to see the verifier fail."""
    processes: int = 1
    """Runtime processes of the application; above 1, a cluster on Kafka (see the
    module docstring)."""
    calls_every: int = 3
    """In a cluster, one tree in this many is sent by ``POST /v1/call``."""
    session_timeout: float | None = None
    """A cluster's ``--session-timeout`` (None: the runtime's default): how long a
    killed member goes unnoticed."""

    @property
    def cluster(self) -> bool:
        return self.processes > 1

    @property
    def kill_count(self) -> int:
        if self.kills is not None:
            return self.kills
        # A cluster kills a worker and the coordinator at least once each.
        return max(2 if self.cluster else 3, self.commands // 10_000)

    @property
    def window_size(self) -> int:
        return max(1500, 3 * self.addresses) if self.window is None else self.window


@dataclass
class Result:
    ok: bool
    rows: list[tuple[str, str]]
    problems: list[str]
    notes: list[str]
    work_dir: Path | None
    stats: dict[str, Any] = field(default_factory=dict)
    """Numbers for tests: kills, function_restarts, spells, rollbacks, uncertain, ..."""

    def report(self) -> str:
        width = max(len(k) for k, _ in self.rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in self.rows]
        if self.problems:
            lines.append("")
            lines.append(f"PROBLEMS ({len(self.problems)}):")
            lines += [f"  - {p}" for p in self.problems[:40]]
        if self.notes:
            lines.append("")
            lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class Stalled(Exception):
    pass


class Verification:
    def __init__(self, config: VerifierConfig, echo: Echo | None = None):
        self.config = config
        self.echo: Echo = echo or (lambda line: None)
        self.rng = random.Random(config.seed + 1)
        self.trees: list[Tree] = []
        self.oracle: Oracle | None = None
        self.addresses = [address_id(i) for i in range(config.addresses)]
        self.latest: dict[str, AddressState] = {}
        self.fresh: dict[str, AddressState] = {}
        """The states the last scan read (``latest`` may hold older ones)."""
        self.observed = 0
        self.last_progress_at = time.monotonic()
        self.sent_commands = 0
        self.sent_trees = 0
        self.in_flight = 0
        self.idle = asyncio.Event()
        """Set while no ingress request is in flight."""
        self.idle.set()
        self.sending_done = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.uncertain: set[int] = set()
        self.sent_at: dict[int, float] = {}
        """Tree index -> when its POST was accepted (monotonic)."""
        self.retried_refused = 0
        self.problems: list[str] = []
        self._problem_keys: set[tuple[str, str]] = set()
        self.notes: list[str] = []
        self.kill_restarts: list[float] = []
        self.hot_kills = 0
        self.function_restart_count = 0
        self.spells = {"error500": 0, "timeout": 0, "slow": 0}
        self.long_spells = 0
        self.first_checkpoint_at: float | None = None
        self.rollbacks: dict[int, dict[str, Any]] = {}
        self.checkpoint_info: dict[str, Any] = {}
        self.started = time.monotonic()
        self.winding_down = False
        """Everything is sent and every kill done: spells end soon."""
        self.final_phase = False
        self.converged = False
        """Every address equalled the oracle at the end."""
        self.runtime: RuntimeProcess | None = None
        """The runtime (of a cluster: its first process)."""
        self.runtimes: list[RuntimeProcess] = []
        """Every runtime process started, dead or alive (a cluster's slots)."""
        self.pool = IngressPool()
        """The ingress base URLs of the runtime processes that are up."""
        self.transports: list[FailoverTransport] = []
        self.app_id: str | None = None
        self.keyed_retries = 0
        """POSTs sent again with their Idempotency-Key after a failure that may have
        reached a process (a cluster's sender)."""
        self.replayed = 0
        """Retried POSTs the runtime recognised by their key (nothing appended)."""
        self.calls = {"sent": 0, "answered": 0, "late": 0}
        self._late_calls: set[int] = set()
        """``POST /v1/call``: trees sent so; answered with their reply; answered 504 at
        least once (no reply within the call's timeout; retried with the key)."""
        self.view: ClusterView | None = None
        """The last answer of ``GET /v1/cluster``."""
        self.generations: set[int] = set()
        self.recoveries: list[dict[str, Any]] = []
        """One per membership change: what happened, and when the cluster showed it."""
        self.exits: dict[str, int | None] = {}
        """A cluster's processes stopped with SIGTERM: name -> exit status."""
        self.functions: FunctionServer | None = None
        self.broker: TansuBroker | None = None
        self.sender_http: httpx.AsyncClient | None = None
        self.retired_senders: list[httpx.AsyncClient] = []
        """Senders replaced at a kill, closed with the last one (see ``_close_sender``)."""
        self.http: httpx.AsyncClient | None = None
        self.kafka: str | None = None
        self.kafka_egress_topic: str | None = None
        self.egress: list[tuple[EgressAudit, EgressReader]] = []
        """The egress auditors: the embedded egress, and on Kafka the Kafka egress."""

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> Result:
        config = self.config
        if config.log not in ("embedded", "kafka"):
            raise ValueError(f"log must be embedded or kafka, not {config.log!r}")
        if config.checkpoint_interval <= 0:
            raise ValueError("faults start after the first checkpoint: checkpoints must be on")
        if config.cluster and config.log != "kafka":
            raise ValueError("several runtime processes form a cluster on Kafka: use log kafka")
        work = config.work_dir or Path(tempfile.mkdtemp(prefix="verifier-"))
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.trees = list(generate(config.commands, config.addresses, config.seed, config.shape))
        self.oracle = Oracle(expect_tree(t.index, t.address, t.command) for t in self.trees)
        self.echo(
            f"verifier: {self.oracle.commands} commands in {len(self.trees)} trees over "
            f"{config.addresses} addresses, seed {config.seed}, {config.log} log"
            + (f", {config.processes} runtime processes" if config.cluster else "")
            + f"; work dir {work}"
        )
        runtime_exit: int | None = None
        error: str | None = None
        try:
            await self._start_processes()
            assert self.runtime is not None
            async with self._client(timeout=10) as http:
                self.http = http
                if config.cluster:
                    await self._cluster_formed()
                try:
                    await self._drive()
                finally:
                    await self._close_sender()
                await self._read_checkpoints()
                egress = self._egress_summary()
            if config.cluster:
                runtime_exit = await self._stop_cluster()
            else:
                runtime_exit = self.runtime.stop()
                if runtime_exit != 0:
                    self.notes.append(
                        f"the runtime did not stop cleanly on SIGTERM (exit status {runtime_exit})"
                    )
        except (Stalled, ProcessError) as e:
            error = str(e)
            egress = "-"
            await self._diagnose()
        finally:
            self._stop_processes()
        if error is not None:
            self._problem("run", error)
        self._scan_logs()
        ok = not self.problems
        keep = config.keep or not ok or config.work_dir is not None
        rows = self._rows(ok, egress, runtime_exit)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
            rows[-1] = ("work dir", f"{work} (removed: the run passed)")
        stats = {
            "commands": self.oracle.commands,
            "kills": len(self.kill_restarts),
            "function_restarts": self.function_restart_count,
            "spells": dict(self.spells),
            "long_spells": self.long_spells,
            "rollbacks": len(self.rollbacks),
            "uncertain": len(self.uncertain),
            "egress": {
                audit.name: {
                    "distinct": len(audit.by_id),
                    "read": audit.delivered,
                    "repeats": audit.repeats,
                }
                for audit, _ in self.egress
            },
            "egress_expected": len(self.oracle.egress(self._excluded())),
            "elapsed": self._elapsed(),
            "processes": config.processes,
            "recoveries": list(self.recoveries),
            "calls": dict(self.calls),
            "keyed_retries": self.keyed_retries,
            "replayed": self.replayed,
            "generations": sorted(self.generations),
            "exits": dict(self.exits),
        }
        return Result(ok, rows, self.problems, self.notes, work if keep else None, stats)

    async def _start_processes(self) -> None:
        config, work = self.config, self.work
        kafka = None
        app_id = None
        if config.log == "kafka":
            kafka = config.kafka_bootstrap or _env_broker()
            if kafka is None:
                self.broker = TansuBroker(work / "tansu.log")
                self.broker.start()
                await self.broker.ready()
                kafka = self.broker.bootstrap
            app_id = f"verify-{config.seed}-{uuid.uuid4().hex[:8]}"
            self.app_id = app_id
            self.kafka, self.kafka_egress_topic = kafka, f"{app_id}-out"
            await asyncio.to_thread(
                create_topic, kafka, self.kafka_egress_topic, KAFKA_EGRESS_PARTITIONS
            )
        self.functions = FunctionServer(
            free_port(), work / "functions.log", config.sabotage, self.kafka_egress_topic
        )
        self.functions.start()
        await self.functions.ready()
        kafka_egress = (
            ""
            if kafka is None
            else f"""---
kind: io.statefun.kafka.v1/egress
spec:
  id: {KAFKA_EGRESS_ID}
  address: {kafka}
"""
        )
        policy = ""
        if config.failure_policy is not None:
            policy = (
                "---\nkind: statefun.v1/failure-policy\n"
                f"spec: {{functions: verify/*, policy: {config.failure_policy}}}\n"
            )
        module = work / "module.yaml"
        module.write_text(
            f"""kind: io.statefun.endpoints.v2/http
spec:
  functions: verify/*
  urlPathTemplate: {self.functions.url}/statefun
  transport:
    timeouts: {{call: {config.call_timeout}s, connect: 1s, read: {config.read_timeout}s, write: {config.read_timeout}s}}
---
kind: statefun.v1/egress
spec:
  id: {EGRESS_ID}
{kafka_egress}{policy}"""
        )
        self.egress = [(EgressAudit(EGRESS_ID), EmbeddedEgressReader(EGRESS_ID))]
        if kafka is not None and self.kafka_egress_topic is not None:
            reader = KafkaEgressReader(kafka, self.kafka_egress_topic, KAFKA_EGRESS_PARTITIONS)
            self.egress.append((EgressAudit(KAFKA_EGRESS_ID), reader))
        self.module = module
        if config.cluster:
            slots = [self._runtime_slot() for _ in range(config.processes)]
            for runtime in slots:
                runtime.start()
            for runtime in slots:
                await runtime.ready()
                self.pool.add(runtime.url)
            self.runtime = slots[0]
            return
        self.runtime = RuntimeProcess(
            module,
            free_port(),
            work / "data",
            work / "checkpoints",
            work / "runtime.log",
            checkpoint_interval=config.checkpoint_interval,
            kafka=kafka,
            app_id=app_id,
            command=list(config.runtime_command) or None,
            # On Kafka, a member of an application of one (what `statefun run --kafka`
            # runs); a restart after a kill -9 joins once the dead member's session ends.
            cluster=kafka is not None,
            session_timeout=config.session_timeout or 2.0,
        )
        self.runtimes.append(self.runtime)
        self.pool.add(self.runtime.url)
        self.runtime.start()
        await self.runtime.ready()

    def _runtime_slot(self) -> RuntimeProcess:
        """A new runtime process of the cluster (not started): its own port, data dir and
        log file (``runtime-N.log``; a restart in the slot appends to it)."""
        n = len(self.runtimes) + 1
        runtime = RuntimeProcess(
            self.module,
            free_port(),
            self.work / f"data-{n}",
            self.work / "checkpoints",
            self.work / f"runtime-{n}.log",
            checkpoint_interval=self.config.checkpoint_interval,
            kafka=self.kafka,
            app_id=self.app_id,
            command=list(self.config.runtime_command) or None,
            cluster=True,
            session_timeout=self.config.session_timeout,
            name=f"runtime-{n}",
        )
        self.runtimes.append(runtime)
        return runtime

    def _client(self, **options: Any) -> httpx.AsyncClient:
        """A client of the runtime: of the one process, or of a cluster's live processes
        in turn (failing over when one refuses the connection)."""
        if not self.config.cluster:
            assert self.runtime is not None
            return httpx.AsyncClient(base_url=self.runtime.url, **options)
        limits = options.pop("limits", httpx.Limits())
        transport = FailoverTransport(self.pool, httpx.AsyncHTTPTransport(limits=limits))
        self.transports.append(transport)
        return httpx.AsyncClient(base_url="http://ingress", transport=transport, **options)

    def _stop_processes(self) -> None:
        """Stop whatever still runs (after a run that broke off): the runtime with SIGTERM
        first, so that its log shows how it shuts down from where it was."""
        for runtime in self.runtimes:
            if runtime.alive:
                status = runtime.stop(grace=15)
                self.notes.append(
                    f"{runtime.name} was still running; on SIGTERM it "
                    + ("did not stop within 15 s" if status is None else f"exited with {status}")
                )
        if self.functions is not None and self.functions.alive:
            self.functions.kill()
        for _, reader in self.egress:
            if isinstance(reader, KafkaEgressReader):
                reader.close()
        if self.broker is not None:
            self.broker.stop(grace=2)

    async def _drive(self) -> None:
        self._new_sender()
        tasks = [
            asyncio.create_task(self._send_all(), name="sender"),
            asyncio.create_task(self._scanner(), name="scanner"),
            asyncio.create_task(self._faults(), name="faults"),
        ]
        reporter = asyncio.create_task(self._reporter(), name="reporter")
        try:
            # The sender and the fault schedule end; the scanner runs until cancelled.
            while not (tasks[0].done() and tasks[2].done()):
                pending = [t for t in tasks if not t.done()]
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    if task.done():
                        task.result()  # raises what the task raised
        finally:
            for task in (*tasks, reporter):
                task.cancel()
            for task in (*tasks, reporter):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._final()
        await self._audit_egress_at_the_end()

    # --- sending ------------------------------------------------------------------------

    def _new_sender(self) -> None:
        self.sender_http = self._client(
            timeout=httpx.Timeout(30.0, connect=2.0),
            limits=httpx.Limits(max_connections=self.config.concurrency),
        )

    async def _close_sender(self) -> None:
        """Close the sender and those a kill retired (the sending is over)."""
        senders, self.retired_senders = self.retired_senders, []
        if self.sender_http is not None:
            senders.append(self.sender_http)
            self.sender_http = None
        for sender in senders:
            await sender.aclose()

    async def _send_all(self) -> None:
        slots = asyncio.Semaphore(self.config.concurrency)
        pending: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        def done(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            error = None if task.cancelled() else task.exception()
            if error is not None:
                errors.append(error)

        for tree in self.trees:
            if errors:
                raise errors[0]
            await slots.acquire()
            while True:
                await self.gate.wait()
                if self.sent_commands - self.observed <= self.config.window_size:
                    if self.gate.is_set():
                        break
                    continue
                self._check_stall()
                await asyncio.sleep(0.05)
            self.in_flight += 1  # no await between the gate check and this
            self.idle.clear()
            self.sent_commands += tree.commands
            self.sent_trees += 1
            task = asyncio.create_task(self._send(tree, slots))
            pending.add(task)
            task.add_done_callback(done)
        if pending:
            await asyncio.wait(set(pending))
        if errors:
            raise errors[0]
        self.sending_done.set()

    async def _send(self, tree: Tree, slots: asyncio.Semaphore) -> None:
        if self.config.cluster:
            await self._send_keyed(tree, slots)
        else:
            await self._send_once(tree, slots)

    async def _send_once(self, tree: Tree, slots: asyncio.Semaphore) -> None:
        """POST the root, retried only if the connection was refused (nothing sent)."""
        try:
            body = json.dumps(tree.command, separators=(",", ":")).encode()
            deadline = time.monotonic() + SEND_DEADLINE
            while True:
                http = self.sender_http
                if http is None:  # a hot kill: the runtime restarts
                    await asyncio.sleep(0.05)
                    continue
                try:
                    answer = await http.post(
                        f"/v1/messages/{FUNCTION_TYPE}/{tree.address}",
                        content=body,
                        params={"type": COMMAND_TYPE},
                        headers={"content-type": "application/json"},
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                    # Nothing was sent: safe to try again.
                    self.retried_refused += 1
                    if time.monotonic() > deadline:
                        raise ProcessError(f"the ingress refused connections for 120 s: {e}") from e
                    await asyncio.sleep(0.2)
                    continue
                except httpx.HTTPError as e:
                    self._uncertain(tree, f"{type(e).__name__}: {e}")
                    return
                if answer.status_code == 202:
                    self.sent_at[tree.index] = time.monotonic()
                    return
                if 400 <= answer.status_code < 500:
                    raise RuntimeError(
                        f"the ingress refused tree {tree.index}: {answer.status_code} {answer.text}"
                    )
                self._uncertain(tree, f"{answer.status_code} {answer.text[:200]}")
                return
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
            slots.release()

    async def _send_keyed(self, tree: Tree, slots: asyncio.Semaphore) -> None:
        """POST the root with an Idempotency-Key (by ``POST /v1/call`` for one tree in
        ``calls_every``), and retry it with the key through the next process after any
        failure, as a client would, until it is answered (202, or a call's reply)."""
        call = tree.index % self.config.calls_every == self.config.calls_every - 1
        route = "call" if call else "messages"
        params = {"type": COMMAND_TYPE, **({"timeout": "20"} if call else {})}
        headers = {
            "content-type": "application/json",
            "idempotency-key": f"{self.app_id}/tree-{tree.index}",
        }
        body = json.dumps(tree.command, separators=(",", ":")).encode()
        deadline = time.monotonic() + SEND_DEADLINE
        why = ""
        self.calls["sent"] += call
        try:
            for attempt in itertools.count():
                if attempt:
                    self.keyed_retries += 1
                http = self.sender_http
                assert http is not None
                pause = 0.2
                try:
                    answer = await http.post(
                        f"/v1/{route}/{FUNCTION_TYPE}/{tree.address}",
                        content=body,
                        params=params,
                        headers=headers,
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                    self.retried_refused += 1  # no process could be reached: nothing sent
                    why = f"no process answered: {e}"
                except httpx.HTTPError as e:
                    why = f"{type(e).__name__}: {e}"
                else:
                    self.replayed += answer.headers.get(REPLAYED_HEADER) == "true"
                    status = answer.status_code
                    if status == 202 and not call:
                        self.sent_at.setdefault(tree.index, time.monotonic())
                        return
                    if status == 200 and call:
                        self.sent_at.setdefault(tree.index, time.monotonic())
                        self._check_reply(tree, answer)
                        return
                    if call and status == 504:
                        # Accepted, but no reply within the call's timeout: the reply is
                        # still owed, and a retry with the key waits for it.
                        self.sent_at.setdefault(tree.index, time.monotonic())
                        self.calls["late"] += tree.index not in self._late_calls
                        self._late_calls.add(tree.index)
                    elif 400 <= status < 500:
                        # A retry refused (422: its key taken for another request) is the
                        # runtime's fault; its first attempt may have been accepted.
                        self._problem(
                            f"tree {tree.index}",
                            f"refused on attempt {attempt + 1}: {status} {answer.text[:200]}",
                            "refused",
                        )
                        self._uncertain(tree, f"refused: {status}")
                        return
                    pause = _retry_after(answer) if status == 503 else 0.2
                    why = f"{status} {answer.text[:200]}"
                if time.monotonic() > deadline:
                    if tree.index in self.sent_at:
                        self._problem(
                            f"call {tree.index}",
                            f"accepted, but no reply reached a request within "
                            f"{SEND_DEADLINE:.0f} s ({why})",
                            "no reply",
                        )
                    else:
                        self._uncertain(tree, f"retried for {SEND_DEADLINE:.0f} s; last: {why}")
                    return
                await asyncio.sleep(pause)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
            slots.release()

    def _check_reply(self, tree: Tree, answer: httpx.Response) -> None:
        self.calls["answered"] += 1
        try:
            reply = answer.json()
            value = reply["value"]
            good = reply["type"] == REPLY_TYPE and value == {
                "cmd": tree.command["id"],
                "at": tree.address,
            }
        except (ValueError, KeyError, TypeError):
            good = False
        if not good:
            self._problem(
                f"call {tree.index}",
                f"answered with {answer.text[:200]}, not the reply of command "
                f"{tree.command['id']} at {tree.address}",
                "wrong reply",
            )

    def _uncertain(self, tree: Tree, why: str) -> None:
        self.uncertain.add(tree.index)
        self.echo(f"verifier: tree {tree.index}: the outcome of its POST is unknown ({why})")

    @contextlib.asynccontextmanager
    async def _quiesced(self) -> AsyncIterator[None]:
        """No ingress request in flight (and none starts) inside."""
        self.gate.clear()
        try:
            await self.idle.wait()
            yield
        finally:
            self.gate.set()

    # --- scanning -----------------------------------------------------------------------

    async def _scanner(self) -> None:
        while True:
            started = time.monotonic()
            await self._read_egress()  # before the scan: the states are read after
            await self._scan()
            self._check_egress_states()
            await self._read_checkpoints()
            # At most half the time scanning: reading 1,000 addresses loads the runtime.
            await asyncio.sleep(max(1.0, time.monotonic() - started))

    async def _scan(self) -> int:
        """Read and check every address's state; how many could be read."""
        assert self.http is not None
        assert self.oracle is not None
        http, oracle = self.http, self.oracle
        slots = asyncio.Semaphore(16)
        read = 0
        fresh: dict[str, AddressState] = {}

        async def one(address: str) -> None:
            nonlocal read
            async with slots:
                try:
                    answer = await http.get(f"/v1/state/{FUNCTION_TYPE}/{address}")
                except httpx.HTTPError:
                    return
            if answer.status_code != 200:
                return
            state = AddressState.from_json(answer.json())
            self.latest[address] = fresh[address] = state
            read += 1
            for kind, problem in invariant_problems(oracle, address, state):
                self._problem(address, problem, kind)

        await asyncio.gather(*(one(a) for a in self.addresses))
        self.fresh = fresh
        observed = sum(s.commands for s in self.latest.values())
        if observed != self.observed:
            self.last_progress_at = time.monotonic()
        self.observed = observed
        return read

    def _problem(self, where: str, problem: str, kind: str = "") -> None:
        """Record a problem, once per place and kind (the first time it is seen)."""
        key = (where, kind or problem)
        if key in self._problem_keys:
            return
        self._problem_keys.add(key)
        phase = "at the end" if self.final_phase else f"at {self._elapsed():.1f} s"
        line = f"{where}: {problem} ({phase}, after {len(self.kill_restarts)} kills)"
        self.problems.append(line)
        self.echo(f"verifier: PROBLEM {line}")

    def _check_stall(self) -> None:
        stalled = time.monotonic() - self.last_progress_at
        if stalled > self.config.stall_timeout:
            raise Stalled(
                f"nothing new was applied for {stalled:.0f} s ({self.observed} of "
                f"{self._total()} commands seen); see the runtime's log"
            )

    def _total(self) -> int:
        assert self.oracle is not None
        return self.oracle.commands

    def _progress(self) -> float:
        return self.observed / max(1, self._total())

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    async def _read_checkpoints(self) -> None:
        assert self.http is not None
        if self.config.cluster:
            await self._cluster_view()
        try:
            answer = await self.http.get("/v1/checkpoints")
        except httpx.HTTPError:
            return
        if answer.status_code != 200:
            return
        info = answer.json()
        self.checkpoint_info = info
        for rollback in info.get("rollbacks", []):
            self.rollbacks[rollback["generation"]] = rollback
        if info.get("checkpoints") and self.first_checkpoint_at is None:
            self.first_checkpoint_at = self._elapsed()

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(5)
            generation = self.checkpoint_info.get("generation")
            checkpoints = self.checkpoint_info.get("checkpoints") or [{}]
            self.echo(
                f"verifier: {self._elapsed():6.1f} s  sent {self.sent_commands}/{self._total()}"
                f"  applied {self.observed}  generation {generation}"
                f"  checkpoint {checkpoints[-1].get('id')}  kills {len(self.kill_restarts)}"
                f"  spells {sum(self.spells.values())}  problems {len(self.problems)}"
            )

    # --- faults -------------------------------------------------------------------------

    async def _faults(self) -> None:
        config = self.config
        while self.first_checkpoint_at is None:
            self._check_stall()
            if self._all_applied() and time.monotonic() - self.last_progress_at > 60:
                raise Stalled("everything was applied, and no checkpoint completed in 60 s")
            await asyncio.sleep(0.1)
        self.echo(f"verifier: first checkpoint complete at {self.first_checkpoint_at:.1f} s")
        events: list[tuple[float, str]] = []
        kills = config.kill_count
        for k in range(kills):
            if events and self.rng.random() < 0.3:
                # Again soon after the restart: a kill while the runtime recovers.
                events.append((events[-1][0], "kill-again"))
                continue
            point = 0.1 + 0.8 * (k + 0.5) / kills
            events.append((point + self.rng.uniform(-0.3, 0.3) * 0.8 / kills, "kill"))
        events += [
            (self.rng.uniform(0.15, 0.85), "functions") for _ in range(config.function_restarts)
        ]
        if config.cluster:
            events = [e for e in events if not e[1].startswith("kill")]
            events += [(f.at, f.kind) for f in membership_schedule(kills, self.rng)]
        events.sort()
        spells = asyncio.create_task(self._spells()) if config.spells else None
        try:
            for point, kind in events:
                while self._progress() < point and not self._all_applied():
                    self._check_stall()
                    await asyncio.sleep(0.05)
                if kind == "kill-again":
                    await asyncio.sleep(self.rng.uniform(0.0, 1.5))
                if kind == "functions":
                    await self._restart_functions()
                elif config.cluster:
                    await self._membership_fault(kind)
                else:
                    await self._kill_runtime()
            await self.sending_done.wait()
            self.winding_down = True
            if spells is not None:
                await spells
        finally:
            if spells is not None:
                spells.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await spells
        await self._set_fault("none", 0)

    def _all_applied(self) -> bool:
        return self.sending_done.is_set() and self.observed >= self._total()

    async def _kill_runtime(self) -> None:
        """``kill -9`` and a restart; the sender quiesced, unless this is a hot kill."""
        hot = self.config.hot_kills and len(self.kill_restarts) % 2 == 1
        async with contextlib.AsyncExitStack() as stack:
            if not hot:
                await stack.enter_async_context(self._quiesced())
            await self._kill_and_restart(hot)

    async def _kill_and_restart(self, hot: bool) -> None:
        runtime = self.runtime
        assert runtime is not None
        self.echo(
            f"verifier: kill -9 of the runtime (pid {runtime.pid}) at {self._elapsed():.1f} s, "
            f"{100 * self._progress():.0f}% applied"
            + (f", {self.in_flight} ingress requests in flight" if hot else "")
        )
        runtime.kill()
        started = time.monotonic()
        old, self.sender_http = self.sender_http, None
        runtime.start()
        await runtime.ready()
        self._new_sender()  # the old one's pooled connections died with the runtime
        if old is not None:
            # Closed once nothing is in flight: a request still waiting for a connection
            # of its pool would open one after an aclose() here, which nothing then closes.
            self.retired_senders.append(old)
        self.kill_restarts.append(time.monotonic() - started)
        self.hot_kills += hot
        self.last_progress_at = time.monotonic()

    async def _restart_functions(self) -> None:
        functions = self.functions
        assert functions is not None
        down = self.rng.uniform(0.5, 3.0)
        self.echo(
            f"verifier: function server killed for {down:.1f} s at {self._elapsed():.1f} s, "
            f"{100 * self._progress():.0f}% applied"
        )
        functions.kill()
        await asyncio.sleep(down)
        functions.start()
        await functions.ready()
        self.function_restart_count += 1
        self.last_progress_at = time.monotonic()

    # --- a cluster's membership -----------------------------------------------------------

    async def _cluster_view(self) -> ClusterView | None:
        """``GET /v1/cluster`` from the next live process (None if none answers)."""
        assert self.http is not None
        try:
            answer = await self.http.get("/v1/cluster", timeout=5)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        try:
            view = ClusterView.parse(answer.json())
        except (ValueError, KeyError, TypeError) as e:
            self._problem("cluster", f"GET /v1/cluster answered {answer.text[:300]!r}: {e}")
            return None
        self.view = view
        if view.generation is not None:
            self.generations.add(view.generation)
        if view.last_checkpoint is not None and self.first_checkpoint_at is None:
            self.first_checkpoint_at = self._elapsed()
        return view

    async def _await_view(
        self, wanted: Callable[[ClusterView], bool], within: float = MEMBERSHIP_TIMEOUT
    ) -> ClusterView | None:
        """The first view (polled every 0.1 s) that is ``wanted``; None after ``within``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            view = await self._cluster_view()
            if view is not None and wanted(view):
                return view
            await asyncio.sleep(0.1)
        return None

    async def _cluster_formed(self) -> None:
        """Wait until one generation holds every process started (bounded)."""
        urls = [r.url for r in self.runtimes]
        view = await self._await_view(
            lambda v: v.generation is not None and all(v.member_at(u) for u in urls), 60
        )
        if view is None:
            assert self.http is not None
            try:
                answer = await self.http.get("/v1/cluster", timeout=5)
                last = f"{answer.status_code} {answer.text[:500]}"
            except httpx.HTTPError as e:
                last = f"no answer: {e}"
            raise ProcessError(
                f"the {len(urls)} runtime processes did not form one generation within 60 s; "
                f"GET /v1/cluster: {last}"
            )
        self.echo(
            f"verifier: the cluster formed at {self._elapsed():.1f} s: generation "
            f"{view.generation}, coordinator {view.coordinator}, "
            + ", ".join(f"{m.id} {m.url} {len(m.partitions)} partitions" for m in view.members)
        )

    def _process_of(self, member: ClusterMember | None) -> RuntimeProcess | None:
        if member is None:
            return None
        return next((r for r in self.runtimes if r.alive and same_origin(r.url, member.url)), None)

    async def _membership_fault(self, kind: str) -> None:
        view = await self._await_view(lambda v: v.generation is not None, 30)
        if view is None:
            self._problem("cluster", f"no process answered GET /v1/cluster before the {kind}")
            return
        if kind == JOIN:
            await self._join()
            return
        coordinator = next((m for m in view.members if m.id == view.coordinator), None)
        if kind == KILL_COORDINATOR:
            member = coordinator
        else:
            others = [m for m in view.members if m is not coordinator and self._process_of(m)]
            member = self.rng.choice(others) if others else None
        victim = self._process_of(member)
        if member is None or victim is None:
            self._problem(
                "cluster",
                f"{kind}: no live process of ours is the member to stop in generation "
                f"{view.generation} (coordinator {view.coordinator}, members "
                f"{sorted(view.ids)})",
            )
            return
        if kind == LEAVE:
            await self._leave(victim, member, view)
        else:
            await self._kill_member(victim, member, view, kind)
        self.last_progress_at = time.monotonic()

    async def _kill_member(
        self, victim: RuntimeProcess, member: ClusterMember, before: ClusterView, kind: str
    ) -> None:
        """``kill -9``; once a generation without it began (or after the timeout), a new
        process in its place. Requests in flight to it fail and are retried elsewhere."""
        role = "coordinator" if kind == KILL_COORDINATOR else "worker"
        self.echo(
            f"verifier: kill -9 of the {role} {member.id} ({victim.name}, pid {victim.pid}) at "
            f"{self._elapsed():.1f} s, {100 * self._progress():.0f}% applied, generation "
            f"{before.generation}, {self.in_flight} ingress requests in flight"
        )
        victim.kill()
        killed = time.monotonic()
        recovery: dict[str, Any] = {
            "kind": role,
            "member": member.id,
            "at": self._elapsed(),
            "progress": self._progress(),
        }
        self.recoveries.append(recovery)
        self.kill_restarts.append(0.0)
        gone = await self._await_view(lambda v: excluded(before, v, member.id))
        if gone is None:
            self._problem(
                "cluster",
                f"no generation without the killed {role} {member.id} within "
                f"{MEMBERSHIP_TIMEOUT:.0f} s",
            )
        else:
            recovery["generation"] = gone.generation
            recovery["excluded"] = time.monotonic() - killed
            if gone.coordinator == member.id:
                self._problem("cluster", f"generation {gone.generation} names the dead coordinator")
            self.echo(
                f"verifier: generation {gone.generation} without {member.id} began "
                f"{recovery['excluded']:.1f} s after the kill (coordinator {gone.coordinator})"
            )
            last = gone.last_checkpoint
            committed = await self._await_view(
                lambda v: (
                    v.last_checkpoint is not None and (last is None or v.last_checkpoint > last)
                )
            )
            if committed is None:
                self._problem(
                    "cluster",
                    f"no checkpoint committed within {MEMBERSHIP_TIMEOUT:.0f} s after generation "
                    f"{gone.generation} began",
                )
            else:
                recovery["checkpoint"] = time.monotonic() - killed
        started = time.monotonic()
        victim.start()
        await victim.ready()
        back = await self._await_view(lambda v: self._in_generation(v, victim.url))
        if back is not None:
            recovery["rejoined"] = time.monotonic() - started
        self.kill_restarts[-1] = time.monotonic() - killed

    @staticmethod
    def _in_generation(view: ClusterView, url: str) -> bool:
        """The process at ``url`` is a member of a generation that began (a process that
        has just joined the group lists itself before any generation holds it)."""
        member = view.member_at(url)
        return view.generation is not None and member is not None and bool(member.partitions)

    async def _join(self) -> None:
        """One more process joins the application."""
        runtime = self._runtime_slot()
        self.echo(f"verifier: {runtime.name} joins at {self._elapsed():.1f} s")
        started = time.monotonic()
        recovery: dict[str, Any] = {
            "kind": "join",
            "at": self._elapsed(),
            "progress": self._progress(),
        }
        self.recoveries.append(recovery)
        runtime.start()
        await runtime.ready()
        self.pool.add(runtime.url)
        joined = await self._await_view(lambda v: self._in_generation(v, runtime.url))
        if joined is None:
            self._problem(
                "cluster", f"{runtime.name} was not a member within {MEMBERSHIP_TIMEOUT:.0f} s"
            )
            return
        recovery["generation"] = joined.generation
        recovery["joined"] = time.monotonic() - started
        self.echo(
            f"verifier: {runtime.name} is a member in generation {joined.generation}, "
            f"{recovery['joined']:.1f} s after its start"
        )

    async def _leave(
        self, victim: RuntimeProcess, member: ClusterMember, before: ClusterView
    ) -> None:
        """SIGTERM (not restarted): it hands its partitions over after a last checkpoint."""
        self.echo(
            f"verifier: SIGTERM to {member.id} ({victim.name}) at {self._elapsed():.1f} s: "
            "it leaves"
        )
        recovery: dict[str, Any] = {
            "kind": "leave",
            "member": member.id,
            "at": self._elapsed(),
            "progress": self._progress(),
        }
        self.recoveries.append(recovery)
        started = time.monotonic()
        status = await asyncio.to_thread(victim.stop, 60.0)
        self.pool.remove(victim.url)
        self.exits[victim.name] = status
        recovery["exit"] = status
        recovery["stopped"] = time.monotonic() - started
        if status != 0:
            self.notes.append(
                f"{victim.name} ({member.id}) did not leave cleanly on SIGTERM (exit status "
                f"{status}, after {recovery['stopped']:.1f} s)"
            )
        gone = await self._await_view(lambda v: excluded(before, v, member.id))
        if gone is None:
            self._problem(
                "cluster",
                f"no generation without {member.id} within {MEMBERSHIP_TIMEOUT:.0f} s of its "
                "SIGTERM",
            )
            return
        recovery["generation"] = gone.generation
        recovery["excluded"] = time.monotonic() - started
        self.echo(
            f"verifier: generation {gone.generation} without {member.id} began "
            f"{recovery['excluded']:.1f} s after its SIGTERM (it exited with {status})"
        )

    async def _stop_cluster(self) -> int | None:
        """SIGTERM to every live process at once; the worst exit status (None if one had
        to be killed)."""
        live = [r for r in self.runtimes if r.alive]
        statuses = await asyncio.gather(*(asyncio.to_thread(r.stop, 30.0) for r in live))
        for runtime, status in zip(live, statuses, strict=True):
            self.exits[runtime.name] = status
            if status != 0:
                self.notes.append(
                    f"{runtime.name} did not stop cleanly on SIGTERM (exit status {status})"
                )
        if any(status is None for status in statuses):
            return None
        return max((s for s in statuses if s is not None), default=0)

    async def _spells(self) -> None:
        """Endpoint spells until the final phase, at least one of each mode."""
        rng, budget = self.rng, self.config.call_timeout
        while not (self.winding_down and all(self.spells.values())):
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            if self.winding_down and all(self.spells.values()):
                break
            modes = [m for m, n in self.spells.items() if n == 0] if self.winding_down else []
            mode = rng.choice(modes or list(self.spells))
            long = mode != "slow" and rng.random() < 0.25
            if long:
                seconds = rng.uniform(budget + 0.5, budget + 3.0)
            elif mode == "slow":
                seconds = rng.uniform(1.0, 5.0)
            else:
                seconds = rng.uniform(0.2, 3.0)
            if await self._set_fault(mode, seconds):
                self.spells[mode] += 1
                self.long_spells += long
                self.echo(
                    f"verifier: endpoint spell: {mode} for {seconds:.1f} s at "
                    f"{self._elapsed():.1f} s{' (past the call budget)' if long else ''}"
                )
                await asyncio.sleep(seconds)

    async def _set_fault(self, mode: str, seconds: float) -> bool:
        assert self.functions is not None
        # Slow answers stay under the read timeout: they are late, not failed.
        fault = {"mode": mode, "seconds": seconds, "max_delay": 0.75 * self.config.read_timeout}
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                answer = await http.post(f"{self.functions.url}/faults", json=fault)
            return answer.status_code == 200
        except httpx.HTTPError:
            return False  # the function server is down (being restarted)

    # --- the end ------------------------------------------------------------------------

    async def _final(self) -> None:
        assert self.oracle is not None
        self.final_phase = True
        self.echo(f"verifier: everything sent and every fault done at {self._elapsed():.1f} s")
        deadline = time.monotonic() + self.config.final_timeout
        self.last_progress_at = time.monotonic()
        while True:
            await self._scan()
            differences = self._differences()
            if not differences:
                break
            stalled = time.monotonic() - self.last_progress_at > self.config.stall_timeout
            if stalled or time.monotonic() > deadline:
                why = "nothing new applied" if stalled else "the final timeout passed"
                self._problem(
                    "end",
                    f"{len(differences)} addresses differ from the oracle ({why}); the first: "
                    + " | ".join(differences[:10]),
                )
                await self._trace_missing()
                return
            await asyncio.sleep(0.5)
        self.echo(f"verifier: every address equals the oracle at {self._elapsed():.1f} s")
        self.converged = True
        # Nothing may arrive after that: a late duplicate, or a cancelled send firing (wait
        # until every cancelled send is due; scans record any that shows up).
        assert self.oracle is not None
        cancelling = [t.index for t in self.oracle.trees if t.never]
        due = time.monotonic() + 3
        if self.config.cancel_wait and cancelling:
            delay = self.config.shape.cancelled_delay_ms / 1000
            last = max(self.sent_at.get(i, time.monotonic()) for i in cancelling)
            due = max(due, last + delay + 3)
            self.echo(
                f"verifier: waiting {due - time.monotonic():.0f} s, until every cancelled "
                "send is due"
            )
        while (left := due - time.monotonic()) > 0:
            await asyncio.sleep(min(2.0, left))
            await self._read_egress()
            await self._scan()
            self._check_egress_states()
        if await self._scan() < len(self.addresses):
            self._problem("end", "could not read every address for the last check")
        differences = self._differences()
        if differences:
            self._problem(
                "end",
                f"{len(differences)} addresses changed after equalling the oracle; the first: "
                + " | ".join(differences[:10]),
            )

    def _excluded(self) -> set[int]:
        """Uncertain trees whose root did not run: their POST was not accepted."""
        excluded = set()
        for index in self.uncertain:
            tree = self.trees[index]
            if tree.command["id"] not in self.latest.get(tree.address, EMPTY).applied:
                excluded.add(index)
        return excluded

    def _missing(self) -> list[str]:
        """The commands the oracle expects that no address has applied."""
        assert self.oracle is not None
        expected_ids = self.oracle.expected(self._excluded())
        missing: list[str] = []
        for address in self.addresses:
            state = self.latest.get(address)
            have = set(state.applied) if state is not None else set()
            missing.extend(set(expected_ids.get(address, ())) - have)
        # Tree by tree, each tree's commands in the order they were built: a lost message
        # comes before the commands it would have sent.
        return sorted(missing, key=lambda i: tuple(int(n) for n in i.split(".")))

    async def _trace_missing(self) -> None:
        """Print where the missing commands are in the messages log (Kafka only), while
        the broker still holds it."""
        missing = self._missing()
        if not missing or self.kafka is None or self.app_id is None:
            return
        try:
            lines = await forensics.trace(self.kafka, self.app_id, missing)
        except Exception as e:  # a diagnosis must not hide the problem it diagnoses
            self.echo(f"verifier: tracing the missing commands failed: {type(e).__name__}: {e}")
            return
        self.notes.extend(f"trace: {line}" for line in lines)
        for line in lines:
            self.echo(f"verifier: trace: {line}")

    def _differences(self) -> list[str]:
        assert self.oracle is not None
        expected_ids = self.oracle.expected(self._excluded())
        expected = expected_counts(expected_ids)
        differences = []
        for address in self.addresses:
            state = self.latest.get(address)
            if state is None:
                differences.append(f"{address}: not read")
                continue
            difference = final_difference(expected, expected_ids, address, state)
            if difference is not None:
                differences.append(difference)
        return differences

    # --- the egress auditor ---------------------------------------------------------------

    async def _read_egress(self) -> None:
        """Read what each egress delivered since the last read, and check it."""
        assert self.http is not None
        assert self.oracle is not None
        possible = self.oracle.egress()
        for audit, reader in self.egress:
            try:
                records = await reader.read(self.http)
            except (httpx.HTTPError, TimeoutError):
                continue  # the runtime is being restarted: next time
            self._egress_problems(audit, audit.add(records))
            self._egress_problems(audit, audit.unexpected(possible))

    def _check_egress_states(self, final: bool = False) -> None:
        for audit, _ in self.egress:
            self._egress_problems(audit, audit.check_states(self.fresh, final))

    async def _audit_egress_at_the_end(self) -> None:
        """The last read of each egress, a read of the whole of it from its start (no
        position may hold another record than the one delivered there), and the checks
        of the end: every record of committed work delivered, none of work never meant
        to run, every one from the execution the state kept."""
        assert self.http is not None
        assert self.oracle is not None
        expected = self.oracle.egress(self._excluded())
        # An exactly-once record comes out when its checkpoint commits: wait for the
        # commits of the last work (bounded; not after a run whose state never converged).
        deadline = time.monotonic() + max(30.0, 10 * self.config.checkpoint_interval)
        while True:
            await self._read_egress()
            lost = any(expected - audit.by_command.keys() for audit, _ in self.egress)
            if not lost or not self.converged or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        for audit, reader in self.egress:
            again: EgressReader
            if isinstance(reader, KafkaEgressReader):
                assert self.kafka is not None
                again = KafkaEgressReader(self.kafka, reader.topic, KAFKA_EGRESS_PARTITIONS)
            else:
                again = EmbeddedEgressReader(reader.egress_id)
            try:
                self._egress_problems(audit, audit.reread(await again.read(self.http)))
            except (httpx.HTTPError, TimeoutError) as e:
                self._problem(f"egress {audit.name}", f"could not be read again: {e}")
            finally:
                if isinstance(again, KafkaEgressReader):
                    again.close()
        if await self._scan() < len(self.addresses):
            self._problem("end", "could not read every address for the egress audit")
        self._check_egress_states(final=True)
        for audit, _ in self.egress:
            self._egress_problems(audit, audit.unexpected(expected))
            self._egress_problems(audit, audit.missing(expected))

    def _cluster_rows(
        self, ok: bool, egress: str, reasons: Mapping[str, int]
    ) -> list[tuple[str, str]]:
        """The summary of a cluster's run."""
        assert self.oracle is not None
        config = self.config
        kills = [r for r in self.recoveries if r["kind"] in ("worker", "coordinator")]
        joins = [r for r in self.recoveries if r["kind"] == "join"]
        leaves = [r for r in self.recoveries if r["kind"] == "leave"]
        kill_lines = "; ".join(
            f"{r['kind']} {r['member']} at {r['at']:.0f} s ({100 * r['progress']:.0f}% "
            "applied): generation without it after "
            f"{_seconds(r, 'excluded')}, a checkpoint committed after "
            f"{_seconds(r, 'checkpoint')}, its replacement a member "
            f"{_seconds(r, 'rejoined')} after its start"
            for r in kills
        )
        membership = ", ".join(
            [
                f"joined at {r['at']:.0f} s ({100 * r['progress']:.0f}% applied; a member "
                f"after {_seconds(r, 'joined')})"
                for r in joins
            ]
            + [
                f"{r['member']} left at {r['at']:.0f} s ({100 * r['progress']:.0f}% applied; "
                f"exit {r.get('exit')} after "
                f"{_seconds(r, 'stopped')}; generation without it after "
                f"{_seconds(r, 'excluded')})"
                for r in leaves
            ]
        )
        generations = sorted(self.generations)
        rollbacks = (
            f"{generations[-1] - generations[0]} (generations {generations[0]} to "
            f"{generations[-1]} seen in /v1/cluster: every new generation rolls back)"
            if generations
            else "- (no generation seen in /v1/cluster)"
        )
        if self.rollbacks:
            rollbacks += f"; {len(self.rollbacks)} in /v1/checkpoints: " + ", ".join(
                f"{n} {r}" for r, n in sorted(reasons.items())
            )
        view = self.view
        last_view = (
            "-"
            if view is None
            else f"generation {view.generation}, coordinator {view.coordinator}, last "
            f"checkpoint {view.last_checkpoint}; "
            + ", ".join(f"{m.id} ({len(m.partitions)} partitions)" for m in view.members)
        )
        exits = ", ".join(f"{name} {status}" for name, status in sorted(self.exits.items()))
        failovers = sum(t.failovers for t in self.transports)
        return [
            ("result", "PASSED" if ok else "FAILED"),
            ("log", f"{config.log}, {config.processes} runtime processes, one application"),
            ("seed", str(config.seed)),
            (
                "commands",
                f"{self.oracle.commands} delivered, in {len(self.trees)} trees "
                f"({self.sent_trees} sent); {self.oracle.cancelled} more sent and cancelled",
            ),
            ("addresses", str(config.addresses)),
            ("kills (kill -9)", f"{len(kills)}: {kill_lines or '-'}"),
            ("membership", membership or "-"),
            ("rollbacks", rollbacks),
            (
                "calls",
                f"{self.calls['sent']} trees sent by /v1/call, {self.calls['answered']} "
                f"answered with their reply ({self.calls['late']} after a 504 and a retry)",
            ),
            (
                "retries",
                f"{self.keyed_retries} POSTs sent again with their Idempotency-Key "
                f"({self.replayed} answered as replayed); {self.retried_refused} refused by "
                f"every process; {failovers} connections failed over to another process",
            ),
            ("function restarts", str(self.function_restart_count)),
            (
                "endpoint spells",
                f"{self.spells['error500']} error500, {self.spells['timeout']} timeout "
                f"({self.long_spells} of them past the {config.call_timeout:g} s call budget), "
                f"{self.spells['slow']} slow",
            ),
            (
                "checkpoints",
                f"every {config.checkpoint_interval:g} s; first complete "
                + (
                    "never"
                    if self.first_checkpoint_at is None
                    else f"at {self.first_checkpoint_at:.1f} s"
                ),
            ),
            ("cluster at the end", last_view),
            (
                "uncertain sends",
                f"{len(self.uncertain)}, {len(self.uncertain) - len(self._excluded())} of them "
                "accepted",
            ),
            ("egress", egress),
            ("runtime exits", exits or "-"),
            ("elapsed", f"{self._elapsed():.1f} s"),
            ("work dir", str(self.work)),
        ]

    def _egress_problems(self, audit: EgressAudit, problems: list[tuple[str, str]]) -> None:
        for kind, detail in problems:
            self._problem(f"egress {audit.name}", detail, kind)

    def _egress_summary(self) -> str:
        assert self.oracle is not None
        expected = len(self.oracle.egress(self._excluded()))
        return "; ".join(f"{audit.name}: {audit.summary(expected)}" for audit, _ in self.egress)

    async def _diagnose(self) -> None:
        """What the runtime says about itself, for a run that stalled or broke."""
        for runtime in self.runtimes:
            # A cluster's processes by name; the one runtime as "the runtime".
            whose = f"{runtime.name}'s" if self.config.cluster else "the runtime's"
            if runtime.alive:
                for path in ("/ready", "/v1/cluster") if self.config.cluster else ("/ready",):
                    try:
                        async with httpx.AsyncClient(timeout=5) as http:
                            answer = await http.get(f"{runtime.url}{path}")
                        self.notes.append(
                            f"{whose} {path}: {answer.status_code} {answer.text[:500]}"
                        )
                    except httpx.HTTPError as e:
                        self.notes.append(f"{whose} {path} did not answer: {e}")
            elif runtime.name not in self.exits:
                self.notes.append(f"{runtime.name} is not running")
            if not runtime.log_path.exists():
                continue
            text = runtime.log_path.read_text(errors="replace").splitlines()
            lines = [line for line in text if " WARNING " not in line][-6:]
            self.notes.append(
                f"{whose} last log lines (warnings left out):\n    "
                + "\n    ".join(line[:300] for line in lines)
            )

    def _scan_logs(self) -> None:
        for runtime in self.runtimes:
            if not runtime.log_path.exists():
                continue
            whose = f"{runtime.name}'s" if self.config.cluster else "the runtime's"
            text = runtime.log_path.read_text(errors="replace")
            tracebacks = text.count("Traceback (most recent call last)")
            if tracebacks:
                self.notes.append(f"{whose} log has {tracebacks} tracebacks ({runtime.log_path})")
            failures = [line for line in text.splitlines() if " CRITICAL " in line]
            if failures:
                self.notes.append(
                    f"{runtime.name if self.config.cluster else 'the runtime'} logged "
                    f"{len(failures)} CRITICAL lines; the first: {failures[0][:300]}"
                )

    def _rows(self, ok: bool, egress: str, runtime_exit: int | None) -> list[tuple[str, str]]:
        assert self.oracle is not None
        config = self.config
        reasons: dict[str, int] = {}
        for rollback in self.rollbacks.values():
            reason = rollback["reason"]
            key = (
                "restart"
                if reason == "start"
                else re.sub(r" after \d+ attempts", "", reason.split(":")[0])
            )
            reasons[key] = reasons.get(key, 0) + 1
        generation = self.checkpoint_info.get("generation")
        checkpoints = self.checkpoint_info.get("checkpoints") or [{}]
        restarts = ", ".join(f"{s:.1f}" for s in self.kill_restarts) or "-"
        if config.cluster:
            return self._cluster_rows(ok, egress, reasons)
        return [
            ("result", "PASSED" if ok else "FAILED"),
            ("log", config.log),
            ("seed", str(config.seed)),
            (
                "commands",
                f"{self.oracle.commands} delivered, in {len(self.trees)} trees "
                f"({self.sent_trees} sent); {self.oracle.cancelled} more sent and cancelled",
            ),
            ("addresses", str(config.addresses)),
            (
                "kills (kill -9)",
                f"{len(self.kill_restarts)}"
                + (f" ({self.hot_kills} with requests in flight)" if config.hot_kills else "")
                + f"; seconds to ready again: {restarts}",
            ),
            ("function restarts", str(self.function_restart_count)),
            (
                "endpoint spells",
                f"{self.spells['error500']} error500, {self.spells['timeout']} timeout "
                f"({self.long_spells} of them past the {config.call_timeout:g} s call budget), "
                f"{self.spells['slow']} slow",
            ),
            (
                "rollbacks",
                f"{len(self.rollbacks)} seen in /v1/checkpoints (generation {generation}): "
                + (", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"),
            ),
            (
                "checkpoints",
                f"last {checkpoints[-1].get('id')}, every {config.checkpoint_interval:g} s; "
                f"first complete at {self.first_checkpoint_at or 0:.1f} s",
            ),
            (
                "uncertain sends",
                f"{len(self.uncertain)}, {len(self.uncertain) - len(self._excluded())} of them "
                f"accepted (refused connections retried: {self.retried_refused})",
            ),
            ("egress", egress),
            ("runtime exit", "-" if runtime_exit is None else str(runtime_exit)),
            ("elapsed", f"{self._elapsed():.1f} s"),
            ("work dir", str(self.work)),
        ]


def _seconds(recovery: Mapping[str, Any], key: str) -> str:
    value = recovery.get(key)
    return "never" if value is None else f"{value:.1f} s"


def _retry_after(answer: httpx.Response) -> float:
    """The answer's Retry-After in seconds, between 0.1 and 2 (0.5 without one)."""
    try:
        return min(2.0, max(0.1, float(answer.headers.get("retry-after", "0.5"))))
    except ValueError:
        return 0.5


def _env_broker() -> str | None:
    import os

    return os.environ.get(EXTERNAL_BROKER_ENV) or None


def run(config: VerifierConfig, echo: Echo | None = None) -> Result:
    """Run one verification (blocking)."""
    return asyncio.run(Verification(config, echo).run())
