"""Failures contained to what they touch, end to end: unknown types refused at the door or
dead-lettered, a stuck address that does not stop the others, each bound (attempt
deadline, answer, state and message size), pause and resume across a restart."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from functions import make_test_functions
from support import (
    asgi_body,
    client,
    dead_letters,
    module_for,
    post_message,
    running_runtime,
    serve,
    state_values,
    wait_until,
)

from runtime.dispatcher import DispatchConfig
from runtime.worker import WorkerConfig
from statefun.module_spec import parse_module_spec
from statefun.native_codec import decode_request

pytestmark = pytest.mark.timeout(90)

FAST_PARKING = """kind: statefun.v1/failure-policy
spec: {functions: test/*, deadLetterAfter: 1s}
"""


def while_healthy_traffic(
    http: httpx.Client, address: str, value: int | str, done: Callable[[], Any], timeout: float = 30
) -> Any:
    """Keep other messages of a type succeeding (evidence that a failure is one message's)
    until ``done`` answers something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert post_message(http, address, value).status_code == 202
        if found := done():
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_type_the_endpoint_does_not_serve_is_refused_at_the_door(functions_url: str) -> None:
    with (
        running_runtime(module_for(functions_url, functions="test/*")) as rt,
        client(rt.url) as http,
    ):
        for path in ("/v1/messages/test/nosuch/x", "/v1/call/test/nosuch/x"):
            answer = http.post(path, content="x", headers={"content-type": "text/plain"})
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"] == "unknown_function_type"
            assert "serves no function type test/nosuch" in answer.json()["detail"]
        assert post_message(http, "test/counter/x", 1).status_code == 202
        wait_until(lambda: state_values(http, "test/counter/x").get("count") == 1)


def test_a_send_to_a_type_nobody_serves_is_a_dead_letter_and_the_rest_applies(
    functions_url: str,
) -> None:
    with (
        running_runtime(module_for(functions_url, functions="test/*")) as rt,
        client(rt.url) as http,
    ):
        assert post_message(http, "test/sender/s", "elsewhere/kind/k1").status_code == 202
        (letter,) = wait_until(lambda: dead_letters(http))
        assert letter["kind"] == "message"
        assert letter["target"] == "elsewhere/kind/k1"
        assert letter["caller"] == "test/sender/s"
        assert letter["message"] == {"type": "io.statefun.types/int", "value": 1}
        assert re.fullmatch(r"test/sender/s answering \d+@\d+", letter["origin"]), letter
        assert (
            "no endpoint in the module spec serves function type elsewhere/kind"
            in (letter["reason"])
        )
        assert state_values(http, "test/sender/s") == {"count": 1}  # the rest of its result applied
        assert http.get("/v1/checkpoints").json()["rollbacks"] == []


def test_a_stuck_address_does_not_stop_reading_for_the_others(
    functions_url: str, control: dict[str, Any]
) -> None:
    gate = control["gate"] = threading.Event()
    spec = parse_module_spec(
        f"""
kind: io.statefun.endpoints.v2/http
spec:
  functions: test/*
  urlPathTemplate: {functions_url}
  maxNumBatchRequests: 5
  transport: {{timeouts: {{call: 60s}}}}
"""
    )
    worker = WorkerConfig(DispatchConfig(max_buffered_messages=50))
    try:
        with running_runtime(spec, worker=worker) as rt, client(rt.url) as http:
            for i in range(200):  # far more than the batch cap and the whole buffer
                assert post_message(http, "test/gate/stuck", i).status_code == 202
            for i in range(50):
                assert post_message(http, f"test/gate/free{i % 5}", i).status_code == 202
            # the others are processed while "stuck" waits, its messages left in the log
            for f in range(5):
                wait_until(
                    lambda f=f: len(state_values(http, f"test/gate/free{f}").get("seen", [])) == 10
                )
            assert rt.call_soon(lambda: rt.runtime.worker.buffered) <= 10  # type: ignore[union-attr]
            gate.set()
            wait_until(lambda: len(state_values(http, "test/gate/stuck").get("seen", [])) == 200)
            assert state_values(http, "test/gate/stuck")["seen"] == list(range(200))
    finally:
        gate.set()


def test_an_answer_that_trickles_fails_at_the_attempt_deadline(
    control: dict[str, Any],
) -> None:
    sdk_app = make_test_functions(control).asgi_app()
    trickling = {"on": True}

    async def app(scope: Any, receive: Any, send_: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            body = await asgi_body(receive)
            request = decode_request(body)
            if trickling["on"] and any(b.target.id == "slowpoke" for b in request.batches):
                import asyncio

                await send_(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/vnd.statefun.native+msgpack")],
                    }
                )
                for _ in range(100):  # one byte every 0.2 s: each read is quick, the whole is not
                    await send_({"type": "http.response.body", "body": b"\x90", "more_body": True})
                    await asyncio.sleep(0.2)
                return

            async def again() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            await sdk_app(scope, again, send_)
            return
        await sdk_app(scope, receive, send_)

    with serve(app) as server:
        spec = module_for(f"{server.url}/statefun", functions="test/*", call="1s")
        with running_runtime(spec) as rt, client(rt.url) as http:
            assert post_message(http, "test/counter/slowpoke", 1).status_code == 202
            assert post_message(http, "test/counter/other", 1).status_code == 202
            wait_until(lambda: state_values(http, "test/counter/other").get("count") == 1)
            (failing,) = wait_until(lambda: http.get("/v1/admin/functions").json()["functions"])
            assert "no complete answer within 1 s" in failing["last_error"]
            assert failing["failing_addresses"] == 1
            trickling["on"] = False
            wait_until(lambda: state_values(http, "test/counter/slowpoke").get("count") == 1)


@pytest.mark.parametrize(
    ("command", "limits", "why"),
    [
        ("state 6000", {"extra": "    payload_max_bytes: 4KB\n"}, "larger than the endpoint's"),
        ("state 3000", {"max_state_bytes": 1000}, "over the limit of 1000"),
        ("send 3000", {"max_message_bytes": 1000}, "over the limit of 1000"),
    ],
)
def test_each_size_bound_fails_the_message_alone(
    functions_url: str, command: str, limits: dict[str, Any], why: str
) -> None:
    extra = limits.pop("extra", "")
    spec = module_for(
        functions_url,
        functions="test/*",
        extra=extra,
        documents=(FAST_PARKING,),
        egresses=("test/out",),
    )
    worker = WorkerConfig(DispatchConfig(retry_max_backoff=0.2), **limits)
    with running_runtime(spec, worker=worker) as rt, client(rt.url) as http:
        assert post_message(http, "test/big/huge", command).status_code == 202
        (letter,) = while_healthy_traffic(
            http, "test/big/small", "state 10", lambda: dead_letters(http)
        )
        assert letter["target"] == "test/big/huge"
        assert why in letter["reason"]
        assert state_values(http, "test/big/huge") == {}
        assert state_values(http, "test/big/small")["count"] >= 1


def test_a_pause_holds_a_storm_in_the_log_and_survives_a_restart(
    functions_url: str, tmp_path: Path
) -> None:
    spec = module_for(functions_url, functions="test/*")
    data = tmp_path / "data"
    with running_runtime(spec, data_dir=data) as rt, client(rt.url) as http:
        assert post_message(http, "test/storm/s", 1).status_code == 202
        wait_until(lambda: state_values(http, "test/storm/s").get("count", 0) > 20)
        paused = http.post("/v1/admin/functions/test/storm/pause")
        assert paused.json() == {"function_type": "test/storm", "paused": True}

        # The loop's next message is held, not sent: in the log (the type overflows), or,
        # if it reached the address's mailbox before the pause, in memory (a held mailbox
        # keeps what it has and overflows the rest).
        def held() -> bool:
            dispatcher = rt.runtime.worker.dispatcher  # type: ignore[union-attr]
            return bool(dispatcher.overflow()) or any(
                load.function_type == "test/storm" and load.backlog and not load.requests_in_flight
                for load in dispatcher.load()
            )

        wait_until(lambda: rt.call_soon(held))
        listed = http.get("/v1/admin/functions").json()["functions"]
        assert [(f["function_type"], f["paused"]) for f in listed] == [("test/storm", True)]
        assert post_message(http, "test/counter/c", 1).status_code == 202  # others go on
        wait_until(lambda: state_values(http, "test/counter/c").get("count") == 1)
        before = state_values(http, "test/storm/s")["count"]
    with running_runtime(spec, data_dir=data) as rt, client(rt.url) as http:
        listed = http.get("/v1/admin/functions").json()["functions"]
        assert [(f["function_type"], f["paused"]) for f in listed] == [("test/storm", True)]
        assert state_values(http, "test/storm/s")["count"] == before
        http.post("/v1/admin/functions/test/storm/resume").raise_for_status()
        wait_until(lambda: state_values(http, "test/storm/s")["count"] > before + 20)
        http.post("/v1/admin/functions/test/storm/pause").raise_for_status()
        unknown = http.post("/v1/admin/functions/other/x/pause")
        assert unknown.status_code == 404
