"""The runtime end to end: a real uvicorn function server, the runtime and its ingress
on loopback ports, messages in through HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from functions import RecordingApp, make_test_functions
from support import (
    RuntimeThread,
    client,
    module_for,
    running_runtime,
    serve,
    unique_app_id,
    wait_until,
)

from examples.greeter.functions import app as greeter_app
from runtime.dispatcher import DispatchConfig
from runtime.worker import WorkerConfig
from statefun.address import TypeName

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def control() -> dict[str, Any]:
    return {}


@pytest.fixture
def recorder(control: dict[str, Any]) -> RecordingApp:
    return RecordingApp(make_test_functions(control).asgi_app())


@pytest.fixture
def functions_url(recorder: RecordingApp) -> Iterator[str]:
    with serve(recorder) as server:
        yield f"{server.url}/statefun"


@pytest.fixture(params=["memory", "sqlite", pytest.param("kafka", marks=pytest.mark.kafka)])
def log_kind(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Runtime settings for each log: in memory, embedded SQLite, Kafka (the test broker)."""
    if request.param == "sqlite":
        return {"data_dir": request.getfixturevalue("tmp_path") / "data"}
    if request.param == "kafka":
        return {"kafka": request.getfixturevalue("kafka_bootstrap"), "app_id": unique_app_id()}
    return {}


@pytest.fixture
def runtime(functions_url: str, log_kind: dict[str, Any]) -> Iterator[RuntimeThread]:
    with running_runtime(
        module_for(functions_url, functions="test/*", egresses=("test/out",)), **log_kind
    ) as rt:
        yield rt


def send_int(http: httpx.Client, address: str, value: int) -> dict[str, Any]:
    answer = http.post(
        f"/v1/messages/{address}",
        content=str(value),
        headers={"content-type": "application/json"},
        params={"type": "io.statefun.types/int"},
    )
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    return body


def egress_values(http: httpx.Client, egress: str, count: int) -> list[Any]:
    """The values in an embedded egress, once it holds at least ``count`` records."""
    records = wait_until(
        lambda: len(r := http.get(f"/v1/egress/{egress}").json()["records"]) >= count and r
    )
    return [record["value"] for record in records]


def state(http: httpx.Client, address: str) -> dict[str, Any]:
    answer = http.get(f"/v1/state/{address}")
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["state"]
    return result


def test_greeter_example_replies_keeps_state_and_emits_egress(log_kind: dict[str, Any]) -> None:
    with (
        serve(greeter_app) as functions,
        running_runtime(
            module_for(f"{functions.url}/statefun", egresses=("example/greetings",)), **log_kind
        ) as rt,
        client(rt.url) as http,
    ):
        first = http.post(
            "/v1/call/example/greeter/Alice",
            content="Alice",
            headers={"content-type": "text/plain"},
        )
        second = http.post(
            "/v1/call/example/greeter/Alice",
            content="Alice",
            headers={"content-type": "text/plain"},
        )
        assert first.json() == {
            "type": "io.statefun.types/string",
            "value": "Hello Alice! Nice to meet you.",
        }
        assert second.json()["value"] == "Hello again Alice! This is visit number 2."
        assert state(http, "example/greeter/Alice") == {
            "visits": {"type": "io.statefun.types/int", "value": 2}
        }
        # egress records become readable on their own schedule, not with the reply
        egress = wait_until(
            lambda: (
                len((e := http.get("/v1/egress/example/greetings").json())["records"]) == 2 and e
            )
        )
        assert [r["value"] for r in egress["records"]] == [
            "Hello Alice! Nice to meet you.",
            "Hello again Alice! This is visit number 2.",
        ]
        assert egress["next"] == 2
        assert (
            http.get("/v1/egress/example/greetings", params={"from": 1}).json()["records"][0][
                "offset"
            ]
            == 1
        )


def test_messages_to_one_address_are_processed_in_order(runtime: RuntimeThread) -> None:
    with client(runtime.url) as http:
        for i in range(150):
            send_int(http, "test/log/a", i)
        wait_until(lambda: len(state(http, "test/log/a").get("seen", {}).get("value", [])) == 150)
        assert state(http, "test/log/a")["seen"]["value"] == list(range(150))


def test_messages_arriving_during_a_call_go_in_the_next_batch(
    runtime: RuntimeThread, recorder: RecordingApp, control: dict[str, Any]
) -> None:
    # The first call is held until all ten have been appended: on a loaded machine ten
    # POSTs can take longer than any fixed slowness.
    control["slow_gate"] = gate = threading.Event()
    with client(runtime.url) as http:
        send_int(http, "test/slow/x", 1)
        wait_until(lambda: recorder.requests)  # the first call is in flight
        for i in range(10):
            send_int(http, "test/slow/x", i)
        gate.set()
        wait_until(lambda: state(http, "test/slow/x").get("count", {}).get("value") == 11)
    batches = [
        n for request in recorder.requests for address, n in request if address == "test/slow/x"
    ]
    # the first call carried 1 message (maybe preceded by a spec-learning round trip);
    # everything that arrived while it ran came in one batch, not ten
    # one message in the first call (sent twice when the state specs are learned on it),
    # then the ten that arrived while it ran, together in one batch
    assert batches[-1] == 10
    assert batches[:-1] in ([1], [1, 1])


def test_many_addresses_are_in_flight_at_once_and_share_requests(
    functions_url: str, recorder: RecordingApp, control: dict[str, Any]
) -> None:
    control["slow_seconds"] = 0.2
    worker = WorkerConfig(DispatchConfig(max_concurrent_requests=2, retry_max_backoff=0.2))
    with (
        running_runtime(module_for(functions_url, functions="test/*"), worker=worker) as rt,
        client(rt.url) as http,
    ):
        for i in range(40):
            send_int(http, f"test/slow/k{i}", 1)
        wait_until(
            lambda: all(state(http, f"test/slow/k{i}").get("count") for i in range(40)), timeout=20
        )
    # 40 addresses of a 0.2 s function through 2 connections finish in a few rounds only
    # because requests carry several addresses' batches
    assert max(len(request) for request in recorder.requests) > 1


def test_function_to_function_messages_and_egress(runtime: RuntimeThread) -> None:
    with client(runtime.url) as http:
        for _ in range(3):
            send_int(http, "test/forward/f1", 0)
        wait_until(lambda: state(http, "test/counter/f1").get("count", {}).get("value") == 3)
        assert state(http, "test/forward/f1")["count"]["value"] == 3
        assert egress_values(http, "test/out", 3) == ["f1=1", "f1=2", "f1=3"]


def test_an_egress_read_with_wait_answers_when_the_next_record_comes(
    runtime: RuntimeThread,
) -> None:
    rt = runtime.runtime
    assert rt is not None
    egress = TypeName("test", "out")
    with client(runtime.url) as http:
        send_int(http, "test/forward/w", 0)
        assert egress_values(http, "test/out", 1) == ["w=1"]
        answers: list[httpx.Response] = []

        def read_from(offset: int) -> threading.Thread:
            def read() -> None:
                with client(runtime.url) as own:
                    params = {"from": offset, "wait": 30}
                    answers.append(own.get("/v1/egress/test/out", params=params))

            reader = threading.Thread(target=read)
            reader.start()
            wait_until(lambda: rt.egresses.waiting_reads(egress) == 1)
            return reader

        # Woken as the egress's follower takes the record (reading again would take longer
        # than the test waits).
        rt.egresses.wait_recheck = 60.0
        reader = read_from(1)
        send_int(http, "test/forward/w", 0)
        reader.join(timeout=20)
        assert [r["value"] for r in answers[0].json()["records"]] == ["w=2"]
        assert answers[0].json()["next"] == 2
        # Nothing comes: the answer comes at the end of the wait, empty.
        assert http.get("/v1/egress/test/out", params={"from": 2, "wait": "0.05"}).json() == {
            "records": [],
            "next": 2,
        }
        assert rt.egresses.waiting_reads(egress) == 0


def test_call_gets_the_reply_of_the_called_function(runtime: RuntimeThread) -> None:
    with client(runtime.url) as http:
        answer = http.post(
            "/v1/call/test/echo/e", content="hi", headers={"content-type": "text/plain"}
        )
        assert answer.status_code == 200
        assert answer.json() == {"type": "io.statefun.types/string", "value": "echo: hi"}


def test_call_without_reply_times_out_with_504_but_the_message_is_kept(
    runtime: RuntimeThread,
) -> None:
    with client(runtime.url) as http:
        answer = http.post(
            "/v1/call/test/silent/s",
            content="x",
            params={"timeout": "0.3"},
            headers={"content-type": "text/plain"},
        )
        assert answer.status_code == 504
        body = answer.json()
        assert body["error"] == "timeout"
        assert "accepted" in body["detail"]
        assert {"partition", "offset"} <= body.keys()


def test_delayed_messages_fire_and_can_be_cancelled(runtime: RuntimeThread) -> None:
    with client(runtime.url) as http:
        for address, commands in (
            ("test/later/fire", ["start"]),
            ("test/later/stop", ["start", "cancel"]),
        ):
            for command in commands:
                http.post(
                    f"/v1/messages/{address}",
                    content=command,
                    headers={"content-type": "text/plain"},
                ).raise_for_status()
        wait_until(lambda: state(http, "test/counter/fire").get("count", {}).get("value") == 100)
        assert state(http, "test/counter/stop") == {}


def test_a_failing_function_is_held_alone_reported_and_recovers(
    functions_url: str, control: dict[str, Any], log_kind: dict[str, Any]
) -> None:
    control["fail"] = True
    spec = module_for(functions_url, functions="test/*", egresses=("test/out",))
    with running_runtime(spec, **log_kind) as rt, client(rt.url) as http:
        before = http.get("/v1/checkpoints").json()["generation"]
        send_int(http, "test/flaky/z", 1)
        failing = wait_until(
            lambda: [
                f
                for f in http.get("/v1/admin/functions").json()["functions"]
                if f["function_type"] == "test/flaky" and f["failing_addresses"]
            ],
            timeout=15,
        )
        assert "flaky is failing on purpose" in failing[0]["last_error"]
        ready = http.get("/ready").json()  # a failing function type is listed, not unready
        assert ready["ready"] is True
        assert [f["function_type"] for f in ready["functions"]] == ["test/flaky"]
        assert http.get("/health").json() == {"status": "ok"}
        # every other function type goes on meanwhile, and nothing is rolled back
        send_int(http, "test/counter/c", 5)
        wait_until(lambda: state(http, "test/counter/c").get("count", {}).get("value") == 5)
        assert state(http, "test/flaky/z") == {}
        control["fail"] = False
        wait_until(lambda: state(http, "test/flaky/z").get("count", {}).get("value") == 1)
        wait_until(lambda: http.get("/v1/admin/functions").json()["functions"] == [])
        assert http.get("/v1/checkpoints").json()["generation"] == before
        # the message was processed once, and its egress record written once
        written = egress_values(http, "test/out", 2)
        assert [v for v in written if v.startswith("flaky")] == ["flaky z"]


def test_backpressure_bounds_what_the_worker_buffers(
    functions_url: str, control: dict[str, Any]
) -> None:
    control["slow_seconds"] = 0.01
    worker = WorkerConfig(
        DispatchConfig(max_buffered_messages=20, max_concurrent_requests=1, retry_max_backoff=0.2)
    )
    with (
        running_runtime(module_for(functions_url, functions="test/*"), worker=worker) as rt,
        client(rt.url) as http,
    ):
        peak = 0
        for i in range(120):
            send_int(http, f"test/slow/b{i % 30}", 1)
            peak = max(peak, rt.call_soon(lambda: rt.runtime.worker.buffered))  # type: ignore[union-attr]
        wait_until(
            lambda: (
                sum(
                    state(http, f"test/slow/b{i}").get("count", {}).get("value", 0)
                    for i in range(30)
                )
                == 120
            ),
            timeout=30,
        )
    # the bound, plus at most one record per partition read in the same poll
    assert peak <= 20 + rt.config.messages_partitions


def test_rejected_requests_leave_no_record(runtime: RuntimeThread) -> None:
    rt = runtime.runtime
    assert rt is not None
    with client(runtime.url) as http:
        cases = [
            (
                http.post(
                    "/v1/messages/nope/fn/x", content="x", headers={"content-type": "text/plain"}
                ),
                404,
                "unknown_function_type",
            ),
            (
                http.post(
                    "/v1/messages/bad%20ns/fn/x",
                    content="x",
                    headers={"content-type": "text/plain"},
                ),
                400,
                "bad_address",
            ),
            (
                http.post(
                    "/v1/messages/test/echo/x",
                    content="{}",
                    headers={"content-type": "application/json"},
                ),
                400,
                "missing_type",
            ),
            (
                http.post(
                    "/v1/messages/test/echo/x",
                    content="1",
                    params={"type": "no-slash"},
                    headers={"content-type": "application/json"},
                ),
                400,
                "bad_type",
            ),
            (
                http.post(
                    "/v1/messages/test/echo/x", content="x", headers={"content-type": "image/png"}
                ),
                415,
                "unsupported_media_type",
            ),
            (
                http.post(
                    "/v1/messages/test/echo/x",
                    content=b"x" * (1 << 20 + 1),
                    headers={"content-type": "text/plain"},
                ),
                413,
                "body_too_large",
            ),
            (
                http.post(
                    "/v1/call/test/echo/x",
                    content="x",
                    params={"timeout": "-1"},
                    headers={"content-type": "text/plain"},
                ),
                400,
                "bad_request",
            ),
            (http.get("/v1/state/nope/fn/x"), 404, "unknown_function_type"),
            (http.get("/v1/egress/test/missing"), 404, "unknown_egress"),
            (http.get("/v1/egress/test/out", params={"from": "-3"}), 400, "bad_request"),
            (http.get("/v1/egress/test/out", params={"wait": "61"}), 400, "bad_request"),
            (http.get("/v1/egress/test/out", params={"wait": "-1"}), 400, "bad_request"),
            (http.get("/v1/egress/test/out", params={"wait": "nan"}), 400, "bad_request"),
            (http.get("/v1/nothing-here"), 404, "not_found"),
        ]
        for answer, status, error in cases:
            assert answer.status_code == status, (answer.request.url, answer.text)
            body = answer.json()
            assert body["error"] == error, body
            assert body["detail"]
    assert (
        runtime.run(rt.log.end_offsets(rt.router.topics.messages))
        == [0] * rt.config.messages_partitions
    )
