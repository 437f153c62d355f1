"""A full disk under the log or the checkpoint store (injected through the seams, see
``verifier.injection``), or a stalled Kafka broker, degrades the runtime visibly:
``/ready`` says why, every POST is answered 503 JSON with ``Retry-After``. Once the
fault clears the runtime heals by itself, with nothing lost and nothing applied twice
(a marker message sent last proves the exact count)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from functions import make_test_functions
from kafka_broker import TansuBroker, tansu_binary
from support import client, module_for, running_runtime, serve, unique_app_id, wait_until

from runtime.app import Runtime, RuntimeConfig, open_log, open_store
from runtime.checkpoints.coordinator import CheckpointConfig
from statefun.module_spec import ModuleSpec
from verifier.injection import DISK_FULL, FaultSwitch, FaultyLog, fail_store_writes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FAST = {
    "rollback_backoff": 0.05,
    "restart_backoff_max": 0.5,
    "checkpoints": CheckpointConfig(interval=0.2),
}
MARKER = 100


@pytest.fixture
def spec() -> Iterator[ModuleSpec]:
    with serve(make_test_functions().asgi_app()) as functions:
        yield module_for(f"{functions.url}/statefun", functions="test/*", egresses=("test/out",))


def opener(
    log_fault: FaultSwitch, store_fault: FaultSwitch
) -> Callable[[RuntimeConfig], Awaitable[Runtime]]:
    async def open_runtime(config: RuntimeConfig) -> Runtime:
        log = FaultyLog(await open_log(config), log_fault)
        store = fail_store_writes(await open_store(config), store_fault)
        return await Runtime.open(config, log=log, store=store)

    return open_runtime


def post(http: httpx.Client, address: str, value: int, key: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["idempotency-key"] = key
    return http.post(
        f"/v1/messages/{address}",
        content=str(value),
        params={"type": "io.statefun.types/int"},
        headers=headers,
    )


def count(http: httpx.Client, address: str) -> int | None:
    value = http.get(f"/v1/state/{address}").json()["state"].get("count")
    return None if value is None else int(value["value"])


def ready(http: httpx.Client) -> dict[str, Any]:
    answer = http.get("/ready")
    body: dict[str, Any] = answer.json()
    assert (answer.status_code == 200) == body["ready"]
    return body


def reasons_not_ready(http: httpx.Client) -> dict[str, str] | None:
    """Why the runtime is not ready, or None while it is."""
    body = ready(http)
    return None if body["ready"] else dict(body["reasons"])


def unavailable(answer: httpx.Response) -> str:
    """The detail of a 503 unavailable answer, checked for its form."""
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "unavailable"
    assert int(answer.headers["retry-after"]) >= 1
    detail: str = answer.json()["detail"]
    return detail


def exact_count(http: httpx.Client, address: str, expected: int) -> None:
    """The count is ``expected`` and stays so: a marker sent last lands on top of it."""
    wait_until(lambda: count(http, address) == expected, timeout=30)
    assert post(http, address, MARKER).status_code == 202
    wait_until(lambda: (count(http, address) or 0) >= expected + MARKER, timeout=30)
    assert count(http, address) == expected + MARKER


def test_a_full_disk_under_the_log_answers_503_and_heals(
    spec: ModuleSpec, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_fault, store_fault = FaultSwitch(), FaultSwitch()
    with (
        running_runtime(
            spec, data_dir=tmp_path / "data", opener=opener(log_fault, store_fault), **FAST
        ) as rt,
        client(rt.url) as http,
    ):
        for _ in range(5):
            assert post(http, "test/counter/a", 1).status_code == 202
        wait_until(lambda: ready(http)["ready"])

        log_fault.set(True)
        first = post(http, "test/counter/a", 1, key="k1")
        assert "may or may not have been accepted" in unavailable(first)
        assert "Idempotency-Key" in first.json()["detail"]
        reasons = wait_until(lambda: reasons_not_ready(http))
        assert DISK_FULL in reasons["log"]
        assert "generation" in reasons
        assert "cannot take messages" in unavailable(post(http, "test/counter/a", 1))
        assert http.get("/health").json() == {"status": "ok"}  # alive all along

        cleared = time.monotonic()
        log_fault.set(False)
        wait_until(lambda: ready(http)["ready"], timeout=30)
        print(f"ready {time.monotonic() - cleared:.2f} s after the disk had room again")
        assert post(http, "test/counter/a", 1, key="k1").status_code == 202
        exact_count(http, "test/counter/a", 6)
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("runtime")]
    assert tracebacks == []


def test_failing_checkpoint_writes_make_the_runtime_unready_until_one_commits(
    spec: ModuleSpec, tmp_path: Path
) -> None:
    log_fault, store_fault = FaultSwitch(), FaultSwitch()
    with (
        running_runtime(
            spec, data_dir=tmp_path / "data", opener=opener(log_fault, store_fault), **FAST
        ) as rt,
        client(rt.url) as http,
    ):
        assert post(http, "test/counter/s", 1).status_code == 202
        wait_until(lambda: ready(http)["ready"])
        store_fault.set(True)
        reasons = wait_until(lambda: reasons_not_ready(http))
        assert DISK_FULL in reasons["store"]
        assert "store" in unavailable(post(http, "test/counter/s", 1))
        store_fault.set(False)
        wait_until(lambda: ready(http)["ready"], timeout=30)
        assert post(http, "test/counter/s", 1).status_code == 202
        exact_count(http, "test/counter/s", 2)


def test_generations_that_cannot_start_are_tried_again_until_the_disk_has_room(
    spec: ModuleSpec, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk_full = FaultSwitch()  # under the log and the store: the same disk
    with (
        running_runtime(
            spec, data_dir=tmp_path / "data", opener=opener(disk_full, disk_full), **FAST
        ) as rt,
        client(rt.url) as http,
    ):
        for _ in range(3):
            assert post(http, "test/counter/d", 1).status_code == 202
        wait_until(lambda: ready(http)["ready"])
        caplog.set_level(logging.INFO)
        disk_full.set(True)
        unavailable(post(http, "test/counter/d", 1))
        wait_until(
            lambda: "starting a generation failed" in ready(http)["reasons"].get("generation", ""),
            timeout=30,
        )
        wait_until(
            lambda: (
                len([r for r in caplog.records if "starting a generation failed" in r.message]) >= 2
            ),
            timeout=30,
        )
        disk_full.set(False)
        wait_until(lambda: ready(http)["ready"], timeout=30)
        exact_count(http, "test/counter/d", 3)
    attempts = [r for r in caplog.records if "starting a generation failed" in r.message]
    assert all(r.exc_info is None and "\n" not in r.message for r in attempts)  # one line each


needs_tansu = pytest.mark.skipif(tansu_binary() is None, reason="needs the Tansu binary")


@pytest.mark.kafka
@needs_tansu
def test_a_stalled_kafka_broker_degrades_and_heals(spec: ModuleSpec) -> None:
    with TansuBroker() as broker:
        broker.start()
        with (
            running_runtime(
                spec,
                kafka=broker.bootstrap,
                app_id=unique_app_id(),
                # appends fail after ~2 s of silence instead of the production 30 s
                kafka_options={"request_timeout_ms": 1000, "delivery_timeout_ms": 2000},
                **FAST,
            ) as rt,
            client(rt.url) as http,
        ):
            for i in range(3):
                assert post(http, "test/counter/k", 1, key=f"before-{i}").status_code == 202
            wait_until(lambda: ready(http)["ready"])
            broker.pause()
            try:
                # Waits for the delivery timeout; the message may or may not have landed.
                unavailable(post(http, "test/counter/k", 1, key="during"))
                wait_until(lambda: not ready(http)["ready"], timeout=30)
            finally:
                resumed = time.monotonic()
                broker.resume()
            wait_until(lambda: ready(http)["ready"], timeout=60)
            print(f"ready {time.monotonic() - resumed:.2f} s after the broker resumed")
            assert post(http, "test/counter/k", 1, key="during").status_code == 202
            exact_count(http, "test/counter/k", 4)


@pytest.mark.kafka
@needs_tansu
def test_an_idle_runtime_reads_again_after_a_long_broker_stall(spec: ModuleSpec) -> None:
    """Nothing to write while the broker is stalled: the readers only get nothing back,
    and read again once it is back. (An idle runtime cannot tell a stalled broker from
    a quiet one: /ready notices the stall at the first append that fails.)"""
    with TansuBroker() as broker:
        broker.start()
        with (
            running_runtime(
                spec,
                kafka=broker.bootstrap,
                app_id=unique_app_id(),
                kafka_options={"request_timeout_ms": 500, "delivery_timeout_ms": 1000},
                **FAST,
            ) as rt,
            client(rt.url) as http,
        ):
            assert post(http, "test/counter/i", 1).status_code == 202
            wait_until(lambda: count(http, "test/counter/i") == 1)
            broker.pause()
            try:
                time.sleep(3)  # the stall: many request timeouts of every client
            finally:
                broker.resume()
            # An egress record published during the stall may have failed, and the
            # runtime healed since: it is ready again.
            wait_until(lambda: ready(http)["ready"], timeout=60)
            assert post(http, "test/counter/i", 1).status_code == 202
            exact_count(http, "test/counter/i", 2)


def test_no_checkpoint_for_five_intervals_makes_the_runtime_unready(
    spec: ModuleSpec, tmp_path: Path
) -> None:
    """Checkpoints that hang (a store that does not answer) are not an error anyone
    raises: the runtime notices that none completes, and says so, taking messages on."""
    held = threading.Event()

    async def open_runtime(config: RuntimeConfig) -> Runtime:
        store = await open_store(config)
        commit = store.commit

        async def slow_commit(*args: Any) -> Any:
            while held.is_set():  # noqa: ASYNC110 - the test thread flips it
                await asyncio.sleep(0.01)
            return await commit(*args)

        store.commit = slow_commit  # type: ignore[method-assign]
        return await Runtime.open(config, store=store)

    interval = 0.1
    with (
        running_runtime(
            spec,
            data_dir=tmp_path / "data",
            opener=open_runtime,
            checkpoints=CheckpointConfig(interval=interval, timeout=60),
        ) as rt,
        client(rt.url) as http,
    ):
        wait_until(lambda: ready(http)["ready"])
        held.set()
        reasons = wait_until(lambda: reasons_not_ready(http))
        assert set(reasons) == {"checkpoints"}
        assert "no checkpoint completed" in reasons["checkpoints"]
        assert post(http, "test/counter/c", 1).status_code == 202  # still taking messages
        held.clear()
        wait_until(lambda: ready(http)["ready"])
        exact_count(http, "test/counter/c", 1)
