"""Functions written with the official StateFun SDK, unchanged, run by our runtime on its
embedded log and on Kafka, driven by an unchanged StateFun module.yaml, next to functions
written with our SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import OfficialFunctions
from statefun_app import PAYLOAD, call, send, state, statefun_module
from support import client, running_runtime, wait_until

pytestmark = pytest.mark.timeout(180)  # the first test may install the official SDK


@pytest.fixture
def http(
    official: OfficialFunctions, ours_url: str, own_log: dict[str, Any]
) -> Iterator[httpx.Client]:
    """A client of the ingress of a runtime running the official and our functions."""
    with (
        running_runtime(statefun_module(official.url, ours_url), **own_log) as rt,
        client(rt.url) as http,
    ):
        yield http


def test_state_persists_across_messages_after_lazy_registration(http: httpx.Client) -> None:
    # The first batch finds no state registered: the SDK answers with its specs, the
    # runtime registers them and sends the same batch again.
    send(http, "official/counter/a", 5)
    send(http, "official/counter/a", 2)
    wait_until(lambda: state(http, "official/counter/a").get("count") == 7)
    # the caller the function saw: none, for messages from the ingress
    assert state(http, "official/counter/a") == {"count": 7, "callers": [None, None]}
    # a request-reply call: the ingress's caller address reaches the function
    assert call(http, "official/counter/a", 3) == 10
    assert state(http, "official/counter/a")["callers"][-1] == "statefun.ingress/caller"
    # deleting a state
    send(http, "official/notes/n", "hello", None)
    wait_until(lambda: state(http, "official/notes/n") == {"note": "hello"})
    send(http, "official/notes/n", "del", None)
    wait_until(lambda: state(http, "official/notes/n") == {})


def test_functions_message_each_other_with_their_address_as_caller(http: httpx.Client) -> None:
    for _ in range(3):
        send(http, "official/forward/f", 0)
    wait_until(lambda: state(http, "official/counter/f").get("count") == 3)
    assert state(http, "official/counter/f")["callers"] == ["official/forward"] * 3
    assert state(http, "official/forward/f") == {"count": 3}


def test_delayed_messages_arrive_unless_cancelled(http: httpx.Client) -> None:
    # Before the first send: its delay may start as soon as the message is durable,
    # before the POST returns.
    sent = time.monotonic()
    send(http, "official/later/d", "start", None)
    send(http, "official/later/p", "plain", None)
    send(http, "official/later/c", "start", None)
    send(http, "official/later/c", "cancel", None)
    wait_until(lambda: state(http, "official/counter/d").get("count") == 100)
    wait_until(lambda: state(http, "official/counter/p").get("count") == 10)
    assert time.monotonic() - sent >= 0.3
    time.sleep(max(0.0, sent + 0.8 - time.monotonic()))
    assert state(http, "official/counter/c") == {}


@pytest.mark.parametrize(
    ("value", "typename", "from_ours", "from_official"),
    [
        (41, "io.statefun.types/int", 42, 42),
        ("hi", None, "HI", "HI"),
        (
            {"a": [1, "é"]},
            PAYLOAD,
            {"a": [1, "é"], "echoed_by": "ours"},
            {"a": [1, "é"], "echoed_by": "official"},
        ),
    ],
)
def test_official_and_our_functions_exchange_builtin_and_json_values(
    http: httpx.Client, value: Any, typename: str | None, from_ours: Any, from_official: Any
) -> None:
    # official/relay -> ours/echo -> official/relay -> the ingress caller
    assert call(http, "official/relay/x", value, typename) == from_ours
    # ours/relay -> official/echo -> ours/relay -> the ingress caller
    assert call(http, "ours/relay/y", value, typename) == from_official
    assert state(http, "official/relay/x") == state(http, "ours/relay/y") == {}


def test_a_failing_function_is_retried_reported_and_recovers(
    official: OfficialFunctions, ours_url: str, own_log: dict[str, Any]
) -> None:
    module = statefun_module(official.url, ours_url, call="1s")
    official.flaky_flag.touch()
    try:
        with (
            running_runtime(module, rollback_backoff=0.1, **own_log) as rt,
            client(rt.url) as http,
        ):
            send(http, "official/flaky/z", 1)
            send(http, "official/counter/ok", 1)
            wait_until(lambda: state(http, "official/counter/ok").get("count") == 1)
            (failing,) = wait_until(
                lambda: http.get("/v1/admin/functions").json()["functions"], timeout=15
            )
            assert failing["function_type"] == "official/flaky"
            assert failing["failing_addresses"] == 1
            assert "answered 500" in failing["last_error"]
            assert http.get("/ready").json()["ready"] is True  # one failing type is not unready
            assert http.get("/health").json() == {"status": "ok"}
            assert state(http, "official/flaky/z") == {}
            official.flaky_flag.unlink()
            wait_until(lambda: state(http, "official/flaky/z").get("count") == 1, timeout=15)
            wait_until(lambda: http.get("/v1/admin/functions").json()["functions"] == [])
            assert state(http, "official/flaky/z") == {"count": 1}
    finally:
        official.flaky_flag.unlink(missing_ok=True)
    assert "flaky is failing on purpose" in official.output()


def test_state_expires_after_write_and_after_call(http: httpx.Client) -> None:
    address = "official/expiring/e"

    def read() -> dict[str, Any]:
        seen: dict[str, Any] = call(http, address, "read", None)
        return seen

    assert call(http, address, "write:x", None) == {"written": None, "touched": None}
    assert call(http, address, "touch", None) == {"written": "x", "touched": None}
    # calls keep `touched` (expire_after_call), but not `written` (expire_after_write)
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        assert read()["touched"] == 1
        time.sleep(0.15)
    assert read() == {"written": None, "touched": 1}
    time.sleep(0.9)
    assert read() == {"written": None, "touched": None}
