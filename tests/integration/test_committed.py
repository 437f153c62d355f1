"""Committed replies and checkpoints on demand, end to end: a committed call is answered
by a checkpoint it demanded (not by the interval), never before that checkpoint's
manifest is durable (an abandoned commit holds it to the next one that succeeds), and a
``kill -9`` right after the answer can only ever show the state the answer reported,
even from a function whose replay would answer otherwise: on the embedded log, and on
Kafka with two members, the calls sent to the one that does not coordinate (its demand
crosses to the coordinator over HTTP)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    RuntimeProcess,
    RuntimeThread,
    client,
    free_port,
    module_for,
    running_runtime,
    unique_app_id,
    wait_until,
    write_module,
)

from runtime.app import Runtime, RuntimeConfig, open_log, open_store
from runtime.checkpoints.coordinator import CheckpointConfig
from verifier.injection import FaultSwitch, fail_store_writes

pytestmark = pytest.mark.timeout(90)

HOUR = CheckpointConfig(interval=3600)
"""Checkpoints on demand, and an interval no test outlives: what commits was demanded."""


def call_committed(http: httpx.Client, address: str) -> httpx.Response:
    return http.post(
        f"/v1/call/{address}",
        content="go",
        params={"consistency": "committed", "timeout": "60"},
        headers={"content-type": "text/plain"},
    )


def nonce(http: httpx.Client, address: str) -> str | None:
    """The address's nonce; None if it has none, or while its owner restores it (503)."""
    answer = http.get(f"/v1/state/{address}")
    if answer.status_code == 503:
        return None
    value: str | None = answer.json()["state"].get("nonce", {}).get("value")
    return value


def checkpoints(http: httpx.Client) -> list[int]:
    return [int(c["id"]) for c in http.get("/v1/checkpoints").json()["checkpoints"]]


def first_checkpoint(rt: RuntimeThread) -> int:
    """Take a checkpoint by hand: the first of a generation waits for the interval, and
    demand starts checkpoints at once only after one committed."""
    assert rt.runtime is not None
    manifest = rt.run(rt.runtime.coordinator.checkpoint())
    assert manifest is not None
    return manifest.checkpoint


def test_a_committed_call_is_answered_by_the_checkpoint_it_demands(functions_url: str) -> None:
    spec = module_for(functions_url, functions="test/*")
    with running_runtime(spec, checkpoints=HOUR) as rt, client(rt.url) as http:
        before = first_checkpoint(rt)
        for i in range(3):
            answer = call_committed(http, f"test/nonce/n{i}")
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-statefun-consistency"] == "committed"
            assert answer.json()["value"] == nonce(http, f"test/nonce/n{i}")
        # Each answer came from a checkpoint it demanded, an hour before the interval's.
        taken = max(checkpoints(http)) - before
        assert 3 <= taken <= 6, taken


def opener(store_fault: FaultSwitch) -> Callable[[RuntimeConfig], Awaitable[Runtime]]:
    async def open_runtime(config: RuntimeConfig) -> Runtime:
        store = fail_store_writes(await open_store(config), store_fault)
        return await Runtime.open(config, log=await open_log(config), store=store)

    return open_runtime


def test_an_abandoned_commit_holds_the_reply_until_a_checkpoint_commits(
    functions_url: str, tmp_path: Path
) -> None:
    spec = module_for(functions_url, functions="test/*")
    store_fault = FaultSwitch("checkpoint store full")
    with (
        running_runtime(
            spec, data_dir=tmp_path / "data", checkpoints=HOUR, opener=opener(store_fault)
        ) as rt,
        client(rt.url) as http,
    ):
        runtime = rt.runtime
        assert runtime is not None
        first = first_checkpoint(rt)
        abandoned: list[int] = []
        runtime.coordinator.on_abandon = lambda checkpoint, error: abandoned.append(checkpoint)
        store_fault.set(True)
        answers: list[httpx.Response] = []
        caller = threading.Thread(
            target=lambda: answers.append(call_committed(http, "test/nonce/held"))
        )
        caller.start()
        # The reply demanded a checkpoint, whose commit failed: abandoned, no manifest.
        wait_until(lambda: abandoned)
        assert checkpoints(http) == [first]

        def held() -> list[str]:
            waiting = runtime.replies._waiting  # the held reply itself
            return [str(w.held[0].value) for w in waiting.values() if w.held is not None]

        # Held, not answered: the abandoned checkpoint released nothing.
        assert rt.call_soon(held) != []
        assert not answers
        # After an abandoned checkpoint the schedule waits for the interval (an hour):
        # the next commit is this one, by hand, once the store writes again.
        store_fault.set(False)
        second = first_checkpoint(rt)
        caller.join(10)
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        assert answer.json()["value"] == nonce(http, "test/nonce/held")
        assert second in checkpoints(http)  # its manifest is in the store


@pytest.mark.timeout(120)
def test_a_kill_right_after_a_committed_reply_keeps_the_state_it_reported(
    functions_url: str, control: dict[str, Any], tmp_path: Path
) -> None:
    """``test/nonce`` draws a random value, keeps it and replies with it: replaying its
    work would answer something else. Whatever a committed reply said, the state after a
    ``kill -9`` right after it and a restart is exactly that."""
    module = write_module(tmp_path / "module.yaml", functions_url)
    data, port = tmp_path / "data", free_port()
    flags = ("--checkpoint-interval", "0.5")
    for round_ in range(2):
        runtime = RuntimeProcess(module, data, port, *flags).start()
        try:
            with client(runtime.url) as http:
                # The first of a generation waits for the interval; the next are demanded.
                replies = [call_committed(http, "test/nonce/k") for _ in range(3)]
            for reply in replies:
                assert reply.status_code == 200, reply.text
                assert reply.headers["x-statefun-consistency"] == "committed"
        finally:
            runtime.kill()  # kill -9, right after the last answer
        runtime = RuntimeProcess(module, data, port, *flags).start()
        try:
            with client(runtime.url) as http:
                assert nonce(http, "test/nonce/k") == replies[-1].json()["value"], round_
        finally:
            runtime.kill()


def members_of(http: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = http.get("/v1/cluster").json()
    return answer


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_on_kafka_a_kill_after_committed_replies_keeps_the_states_they_reported(
    functions_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", functions_url)
    flags = (
        "--kafka",
        kafka_bootstrap,
        "--app-id",
        unique_app_id(),
        "--partitions",
        "4",
        "--session-timeout",
        "2",
        "--checkpoint-interval",
        "0.5",
    )
    members = [
        RuntimeProcess(module, tmp_path / f"data-{i}", free_port(), *flags).start()
        for i in range(2)
    ]
    addresses = [f"test/nonce/k{i}" for i in range(4)]
    try:
        with client(members[0].url) as http:
            wait_until(
                lambda: (
                    all(m["partitions"] for m in members_of(http)["members"])
                    and len(members_of(http)["members"]) == 2
                ),
                timeout=60,
            )
            status = members_of(http)
        urls = {m["id"]: m["url"] for m in status["members"]}
        (other,) = [m for m in members if m.url != urls[status["coordinator"]]]
        with client(other.url) as http:
            replies = {a: call_committed(http, a) for a in addresses}
        for reply in replies.values():
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-statefun-consistency"] == "committed"
    finally:
        for m in members:
            m.kill()  # kill -9, both, right after the last answer
    survivor = RuntimeProcess(module, tmp_path / "data-new", free_port(), *flags).start()
    try:
        with client(survivor.url) as http:
            wait_until(
                lambda: [len(m["partitions"]) for m in members_of(http)["members"]] == [4],
                timeout=60,
            )
            for address, reply in replies.items():
                wait_until(lambda a=address: nonce(http, a) is not None, timeout=30)
                assert nonce(http, address) == reply.json()["value"], address
    finally:
        survivor.kill()
