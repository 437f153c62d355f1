"""The processes a fault run drives, for one log: two function servers
(``verifier.fault_functions``; the second serves ``faults/flaky`` and is the one an
outage stops), the runtime, and on Kafka a Tansu broker; and the levers the faults pull
on them (switches, the seams' fault file, SIGSTOP of the broker, the checkpoint store).

The runtime runs as ``python -m runtime.cli run ...``, or, when the fault-injection
seams are present (``verifier.faulty_runtime``), as ``python -m verifier.faulty_runtime
--log-fault-file PATH --store-fault-file PATH ...`` with the same arguments: while one
of those files exists, the log's appends or the checkpoint store's writes fail as on a
full disk. What the runtime supports is found out once (:class:`Features`), so the
suite runs against today's runtime and the one the issue asks for alike.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._support import free_port
from statefun.errors import ModuleSpecError
from statefun.module_spec import parse_module_spec
from verifier.fault_functions import FLAKY
from verifier.faults.timings import Timings
from verifier.processes import ROOT, ChildProcess, FunctionServer, ProcessError, TansuBroker

MAX_BATCH = 20
"""The endpoints' ``maxNumBatchRequests``: the hot address gets more than this waiting.
Small, so that the hot address's messages are few next to the healthy load whose
throughput is gated: at 100, the burst and the stream it took were 40% on top of the
healthy load, and a machine already saturated by other work (pytest-xdist's other worker)
showed that as a throughput ratio of 0.73-0.79."""
CALL_TIMEOUTS = "{call: 3s, connect: 1s, read: 2s, write: 2s}"
"""The endpoints' timeouts: ``call`` is each attempt's deadline; ``read`` is above the
trickling answer's gap between bytes, so only the deadline can end it."""
STORM_RATE = 100
"""``--storm-rate``: a self-sending function exceeds it many times over."""
FAULTY_RUNTIME = "verifier.faulty_runtime"
READY_POLL = 0.1


@dataclass(frozen=True)
class Features:
    """What the runtime under test supports."""

    dead_letter_after: bool
    """The module spec takes ``deadLetterAfter`` in a failure policy."""
    storm_rate: bool
    """``statefun run --storm-rate``."""
    start_over: bool
    """``statefun run --start-over``."""
    seams: bool
    """``verifier.faulty_runtime`` exists (the log and store fault seams)."""

    @classmethod
    def detect(cls) -> Features:
        probe = """kind: io.statefun.endpoints.v2/http
spec:
  functions: faults/*
  urlPathTemplate: http://127.0.0.1:1/statefun
---
kind: statefun.v1/failure-policy
spec:
  functions: faults/*
  policy: dead-letter
  deadLetterAfter: 3s
"""
        try:
            parse_module_spec(probe)
            dead_letter_after = True
        except ModuleSpecError:
            dead_letter_after = False
        usage = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "run", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return cls(
            dead_letter_after=dead_letter_after,
            storm_rate="--storm-rate" in usage,
            start_over="--start-over" in usage,
            seams=importlib.util.find_spec(FAULTY_RUNTIME) is not None,
        )

    def describe(self) -> str:
        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        return (
            f"deadLetterAfter {yes(self.dead_letter_after)}, --storm-rate {yes(self.storm_rate)}, "
            f"--start-over {yes(self.start_over)}, {FAULTY_RUNTIME} {yes(self.seams)}"
        )


class RuntimeChild(ChildProcess):
    """The runtime process; ``args`` may change between starts."""

    def __init__(self, args: list[str], log_path: Path, port: int):
        super().__init__("runtime", args, log_path)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.start_offset = 0
        """Where the output of the latest start begins in the log file."""

    def start(self) -> None:
        self.start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        super().start()

    def output_of_latest_start(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self.start_offset)
            return log.read().decode("utf-8", "replace")


@dataclass(frozen=True)
class Damage:
    """A part of a checkpoint overwritten with garbage (and what it held)."""

    database: Path
    checkpoint: int
    participant: str
    original: bytes


class Stack:
    """Everything one log's faults run against."""

    def __init__(
        self,
        log: str,
        work: Path,
        timings: Timings,
        features: Features,
        *,
        kafka_bootstrap: str | None = None,
    ):
        if log not in ("embedded", "kafka"):
            raise ValueError(f"log must be embedded or kafka, not {log!r}")
        self.log = log
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.timings = timings
        self.features = features
        self.broker: TansuBroker | None = None
        self.bootstrap = kafka_bootstrap
        self.functions = FunctionServer(
            free_port(), work / "functions.log", app="verifier.fault_functions:app"
        )
        self.flaky = FunctionServer(
            free_port(),
            work / "flaky-functions.log",
            app="verifier.fault_functions:app",
            name="second function server",
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.module = work / "module.yaml"
        self.fault_files = {"log": work / "log-fault", "store": work / "store-fault"}
        self.serial = 0
        self.app_id = ""
        self.data_dir = work
        self.checkpoint_dir = work
        self.retain: int | None = None
        self.runtime: RuntimeChild | None = None
        self.broker_stopped = False

    # --- starting and stopping ----------------------------------------------------------

    async def open(self) -> None:
        if self.log == "kafka" and self.bootstrap is None:
            self.broker = TansuBroker(self.work / "tansu.log")
            self.broker.start()
            await self.broker.ready()
            self.bootstrap = self.broker.bootstrap
        for server in (self.functions, self.flaky):
            server.start()
        for server in (self.functions, self.flaky):
            await server.ready()
        self.module.write_text(self._module_yaml())
        await self.fresh()

    def _module_yaml(self) -> str:
        endpoint = """kind: io.statefun.endpoints.v2/http
spec:
  functions: {functions}
  urlPathTemplate: {url}/statefun
  maxNumBatchRequests: {batch}
  transport:
    timeouts: {timeouts}
"""
        documents = [
            endpoint.format(
                functions="faults/*",
                url=self.functions.url,
                batch=MAX_BATCH,
                timeouts=CALL_TIMEOUTS,
            ),
            endpoint.format(
                functions=FLAKY, url=self.flaky.url, batch=MAX_BATCH, timeouts=CALL_TIMEOUTS
            ),
        ]
        if self.features.dead_letter_after:
            documents.append(
                f"""kind: statefun.v1/failure-policy
spec:
  functions: faults/*
  policy: dead-letter
  deadLetterAfter: {self.timings.dead_letter_after:g}s
"""
            )
        return "---\n".join(documents)

    async def fresh(self, *, retain: int | None = None) -> None:
        """A new runtime over a new log and checkpoint store (the old one killed)."""
        if self.runtime is not None:
            self.runtime.kill()
        self.set_seam(None)
        self.serial += 1
        self.app_id = f"faults-{self.serial}-{uuid.uuid4().hex[:8]}"
        self.data_dir = self.work / f"run-{self.serial}" / "data"
        self.checkpoint_dir = self.work / f"run-{self.serial}" / "checkpoints"
        self.retain = retain
        self.runtime = RuntimeChild(self.runtime_args(), self.work / "runtime.log", self.port)
        self.runtime.start()
        outcome = await self.until_ready(60.0)
        if outcome != "ready":
            raise ProcessError(f"the runtime did not start ({outcome}):\n{self.runtime.tail()}")

    def runtime_args(self, *extra: str, checkpoint_dir: Path | None = None) -> list[str]:
        args = [
            "--module",
            str(self.module),
            "--ingress-port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--checkpoint-dir",
            str(checkpoint_dir or self.checkpoint_dir),
            "--checkpoint-interval",
            "1",
        ]
        if self.retain is not None:
            args += ["--checkpoint-retain", str(self.retain)]
        if self.log == "kafka":
            assert self.bootstrap is not None
            # The faults of a process's own store and log: a process alone.
            args += ["--kafka", self.bootstrap, "--app-id", self.app_id, "--alone"]
        if self.features.storm_rate:
            args += ["--storm-rate", str(STORM_RATE)]
        args += list(extra)
        if self.features.seams:
            return [
                sys.executable,
                "-m",
                FAULTY_RUNTIME,
                "--log-fault-file",
                str(self.fault_files["log"]),
                "--store-fault-file",
                str(self.fault_files["store"]),
                *args,
            ]
        return [sys.executable, "-m", "runtime.cli", "run", *args]

    async def start_runtime(
        self, *extra: str, checkpoint_dir: Path | None = None, within: float = 60.0
    ) -> str:
        """Start the runtime (with ``extra`` arguments this once); ``ready``, ``exited``
        or ``timeout``."""
        runtime = self._runtime
        runtime.args = self.runtime_args(*extra, checkpoint_dir=checkpoint_dir)
        runtime.start()
        return await self.until_ready(within)

    def stop_runtime(self, grace: float | None = None) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if it had to be killed, seconds until it ended)."""
        started = time.monotonic()
        status = self._runtime.stop(self.timings.stop_grace if grace is None else grace)
        return status, time.monotonic() - started

    async def until_ready(self, within: float) -> str:
        """``ready`` once ``/ready`` answers 200 (a runtime without ``/ready``: once
        ``/health`` does), ``exited`` if the process ends first, else ``timeout``."""
        runtime = self._runtime
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not runtime.alive:
                    return "exited"
                try:
                    async with http.get(f"{self.url}/ready") as answer:
                        status = answer.status
                    if status == 404:
                        async with http.get(f"{self.url}/health") as answer:
                            status = answer.status
                    if status == 200:
                        return "ready"
                except (TimeoutError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(READY_POLL)
        return "timeout"

    @property
    def _runtime(self) -> RuntimeChild:
        if self.runtime is None:
            raise ProcessError("the runtime was never started")
        return self.runtime

    async def close(self) -> None:
        self.set_seam(None)
        if self.broker_stopped:
            self.resume_broker()
        if self.runtime is not None and self.runtime.alive:
            self.runtime.stop(grace=10)
        for server in (self.functions, self.flaky):
            server.kill()
        if self.broker is not None:
            self.broker.stop(grace=2)

    async def ensure_functions(self) -> None:
        """Both function servers up (one a broken-off fault left down is started)."""
        for server in (self.functions, self.flaky):
            if not server.alive:
                server.start()
                await server.ready()

    # --- levers -------------------------------------------------------------------------

    async def switches(self, **switches: Any) -> dict[str, Any]:
        """Set the switches of both function servers; the first one's answer."""
        answers = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for server in (self.functions, self.flaky):
                if not server.alive:
                    continue
                async with http.post(f"{server.url}/faults", json=switches) as answer:
                    answers.append(await answer.json())
        return answers[0] if answers else {}

    def set_seam(self, target: str | None) -> None:
        """Make what ``target`` names fail as on a full disk (``log``: its appends;
        ``store``: the checkpoint store's writes), or nothing (None)."""
        for name, path in self.fault_files.items():
            if name == target:
                path.touch()
            else:
                path.unlink(missing_ok=True)

    def stall_broker(self) -> None:
        self._broker_signal(signal.SIGSTOP)
        self.broker_stopped = True

    def resume_broker(self) -> None:
        self._broker_signal(signal.SIGCONT)
        self.broker_stopped = False

    def _broker_signal(self, sig: int) -> None:
        if self.broker is None or self.broker.pid is None:
            raise ProcessError("no broker of the suite's own to stop (an external broker?)")
        os.kill(self.broker.pid, sig)

    def damage_newest_part(self, participant: str = "worker") -> Damage:
        """Overwrite ``participant``'s part of the newest checkpoint with garbage (the
        runtime must be stopped)."""
        database = self.checkpoint_dir / "checkpoints.db"
        db = sqlite3.connect(database, isolation_level=None)
        try:
            (newest,) = db.execute("SELECT MAX(checkpoint) FROM manifests").fetchone()
            if newest is None:
                raise ProcessError(f"{database} holds no completed checkpoint")
            row = db.execute(
                "SELECT data FROM parts WHERE checkpoint = ? AND participant = ?",
                (newest, participant),
            ).fetchone()
            if row is None:
                raise ProcessError(f"checkpoint {newest} in {database} has no {participant} part")
            db.execute(
                "UPDATE parts SET data = ? WHERE checkpoint = ? AND participant = ?",
                (b"\xc1garbage\xc1" * 8, newest, participant),
            )
            return Damage(database, newest, participant, bytes(row[0]))
        finally:
            db.close()

    @staticmethod
    def repair(damage: Damage) -> None:
        db = sqlite3.connect(damage.database, isolation_level=None)
        try:
            db.execute(
                "UPDATE parts SET data = ? WHERE checkpoint = ? AND participant = ?",
                (damage.original, damage.checkpoint, damage.participant),
            )
        finally:
            db.close()

    def hide_checkpoint_store(self) -> Path:
        """Move the checkpoint store aside and leave an empty directory in its place;
        where it went."""
        aside = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".aside")
        shutil.rmtree(aside, ignore_errors=True)
        self.checkpoint_dir.rename(aside)
        self.checkpoint_dir.mkdir()
        return aside

    def restore_checkpoint_store(self, aside: Path) -> None:
        shutil.rmtree(self.checkpoint_dir)
        aside.rename(self.checkpoint_dir)

    def runtime_log_since(self, offset: int) -> str:
        with self._runtime.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def runtime_log_size(self) -> int:
        path = self._runtime.log_path
        return path.stat().st_size if path.exists() else 0
