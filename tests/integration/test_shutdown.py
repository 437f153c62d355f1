"""SIGTERM ends ``statefun run`` within 10 s in every state: function calls stuck, the
Kafka broker stopped, the disk full (the runtime degraded, trying generation after
generation), in the middle of a rollback's backoff. The 10 s bound is on how long a
test waits for the exit."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from functions import make_test_functions
from kafka_broker import TansuBroker, tansu_binary
from support import (
    RuntimeProcess,
    ServerThread,
    free_port,
    serve,
    unique_app_id,
    wait_until,
    write_module,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SIGTERM_BOUND = 10.0


class StuckFunctions:
    """The test functions, except that every invocation request hangs forever."""

    def __init__(self) -> None:
        self.app = make_test_functions().asgi_app()
        self.stuck = 0

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.stuck += 1
            await asyncio.sleep(3600)
        await self.app(scope, receive, send)


def post(url: str, address: str, value: int, timeout: float = 10) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/messages/{address}",
        content=str(value),
        params={"type": "io.statefun.types/int"},
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


def terminate(runtime: RuntimeProcess) -> float:
    """SIGTERM; the seconds until the process exited (at most the bound, or the test
    fails); the exit must be clean."""
    assert runtime.process is not None
    started = time.monotonic()
    runtime.process.send_signal(signal.SIGTERM)
    status = runtime.process.wait(timeout=SIGTERM_BOUND)
    took = time.monotonic() - started
    output = runtime.log_path.read_text()
    assert status == 0, output
    assert "stopped" in output
    print(f"exited {took:.2f} s after SIGTERM")
    return took


@pytest.fixture
def stuck() -> Iterator[tuple[StuckFunctions, ServerThread]]:
    functions = StuckFunctions()
    with serve(functions) as server:
        yield functions, server


def test_sigterm_ends_in_time_while_function_calls_are_stuck(
    stuck: tuple[StuckFunctions, ServerThread], tmp_path: Path
) -> None:
    functions, server = stuck
    module = write_module(
        tmp_path / "module.yaml", f"{server.url}/statefun", call="2 min", read="2 min"
    )
    runtime = RuntimeProcess(module, tmp_path / "data", free_port()).start()
    try:
        for i in range(3):
            assert post(runtime.url, f"test/counter/{i}", 1).status_code == 202
        wait_until(lambda: functions.stuck >= 3)
        terminate(runtime)
    finally:
        if runtime.process and runtime.process.poll() is None:
            runtime.kill()


def test_sigterm_ends_in_time_with_the_disk_full(tmp_path: Path) -> None:
    full = tmp_path / "disk-full"
    with serve(make_test_functions().asgi_app()) as server:
        module = write_module(
            tmp_path / "module.yaml", f"{server.url}/statefun", call="2 min", read="2 min"
        )
        runtime = RuntimeProcess(
            module,
            tmp_path / "data",
            free_port(),
            "--fault-file",
            str(full),
            launcher=("verifier.faulty_runtime",),
        ).start(recovered=True)
        try:
            assert post(runtime.url, "test/counter/f", 1).status_code == 202
            full.touch()
            wait_until(lambda: post(runtime.url, "test/counter/f", 1).status_code == 503)
            wait_until(
                lambda: (
                    "starting a generation failed"
                    in httpx.get(f"{runtime.url}/ready").json()["reasons"].get("generation", "")
                )
            )
            terminate(runtime)
        finally:
            if runtime.process and runtime.process.poll() is None:
                runtime.kill()


def test_sigterm_ends_in_time_in_the_middle_of_a_rollback_backoff(tmp_path: Path) -> None:
    policy = """---
kind: statefun.v1/failure-policy
spec: {functions: test/poison, policy: fail}
"""
    with serve(make_test_functions().asgi_app()) as server:
        module = write_module(
            tmp_path / "module.yaml",
            f"{server.url}/statefun",
            call="2 min",
            read="2 min",
            extra=policy,
        )
        module.write_text(module.read_text().replace("call: 2 min", "call: 0.2s"))
        runtime = RuntimeProcess(module, tmp_path / "data", free_port()).start()
        try:
            assert post(runtime.url, "test/poison/p", 13).status_code == 202
            # Rollbacks back off 0.5 s, 1 s, 2 s, ...: the third waits 2 s.
            wait_until(
                lambda: len(httpx.get(f"{runtime.url}/v1/checkpoints").json()["rollbacks"]) >= 3,
                timeout=30,
            )
            terminate(runtime)
        finally:
            if runtime.process and runtime.process.poll() is None:
                runtime.kill()


needs_tansu = pytest.mark.skipif(tansu_binary() is None, reason="needs the Tansu binary")


@pytest.mark.kafka
@needs_tansu
def test_sigterm_ends_in_time_while_the_kafka_broker_is_stopped(tmp_path: Path) -> None:
    with TansuBroker() as broker, serve(make_test_functions().asgi_app()) as server:
        broker.start()
        module = write_module(
            tmp_path / "module.yaml", f"{server.url}/statefun", call="2 min", read="2 min"
        )
        runtime = RuntimeProcess(
            module,
            tmp_path / "data",
            free_port(),
            "--kafka",
            broker.bootstrap,
            "--app-id",
            unique_app_id(),
            "--checkpoint-dir",
            str(tmp_path / "checkpoints"),
        ).start(recovered=True)
        try:
            assert post(runtime.url, "test/counter/b", 1).status_code == 202
            broker.pause()
            # A request whose append the broker will not acknowledge, in flight.
            with socket.create_connection(("127.0.0.1", runtime.port), timeout=10) as waiting:
                waiting.sendall(
                    b"POST /v1/messages/test/counter/b?type=io.statefun.types/int HTTP/1.1\r\n"
                    b"host: x\r\ncontent-type: application/json\r\ncontent-length: 1\r\n\r\n1"
                )
                terminate(runtime)
            # kafka-python's chatter stays below the runtime's log level (info)
            assert " INFO kafka." not in runtime.log_path.read_text()
        finally:
            broker.resume()
            if runtime.process and runtime.process.poll() is None:
                runtime.kill()
