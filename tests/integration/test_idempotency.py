"""Idempotency keys on the HTTP ingress: a retried request is a no-op that returns the
first answer, within the process and across a kill -9 of the runtime."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from functions import make_test_functions
from support import (
    RuntimeProcess,
    client,
    free_port,
    module_for,
    running_runtime,
    serve,
    wait_until,
)

from runtime.envelope import Envelope
from runtime.idempotency import KeyedRequest, key_of

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def functions_url() -> Iterator[str]:
    with serve(make_test_functions({}).asgi_app()) as server:
        yield f"{server.url}/statefun"


def post_one(http: httpx.Client, address: str, key: str | None, value: int = 1) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["idempotency-key"] = key
    return http.post(
        f"/v1/messages/{address}",
        content=str(value),
        params={"type": "io.statefun.types/int"},
        headers=headers,
    )


def count(http: httpx.Client, address: str) -> int:
    value: int = http.get(f"/v1/state/{address}").json()["state"].get("count", {}).get("value", 0)
    return value


def test_a_retried_message_is_appended_once_and_answered_the_same(functions_url: str) -> None:
    with (
        running_runtime(
            module_for(functions_url, functions="test/*", egresses=("test/out",))
        ) as rt,
        client(rt.url) as http,
    ):
        first = post_one(http, "test/counter/i", "k-1")
        again = post_one(http, "test/counter/i", "k-1")
        other = post_one(http, "test/counter/i", "k-2")
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert other.json() != first.json()
        wait_until(lambda: count(http, "test/counter/i") == 2)
        assert rt.runtime is not None
        # two records, not three: the retry appended nothing
        assert sum(rt.run(rt.runtime.log.end_offsets(rt.runtime.topics.messages))) == 2


def test_a_key_another_member_appended_is_learnt_from_its_record(functions_url: str) -> None:
    """In a cluster a member appends keyed requests for the partitions it believes it
    owns, and learns of a new generation a little after the others: a keyed record can
    land after the new owner restored. The worker learns the key from it, so a retry is
    answered from it, appending nothing."""
    with (
        running_runtime(
            module_for(functions_url, functions="test/*", egresses=("test/out",))
        ) as rt,
        client(rt.url) as http,
    ):
        runtime = rt.runtime
        assert runtime is not None
        topic = runtime.topics.messages
        first = post_one(http, "test/counter/d", "by-this-process").json()
        [record] = rt.run(runtime.log.read(topic, first["partition"], first["offset"], 1))
        keyed = key_of(record.headers)
        assert keyed is not None
        # The same request, keyed "by-another-member" by its client, appended by another
        # member: the ingress here never saw the key.
        other = Envelope.from_record(record).to_record(
            KeyedRequest("by-another-member", keyed.fingerprint, None).headers
        )

        async def append() -> list[int]:
            return await runtime.log.append(topic, first["partition"], [other])

        assert rt.run(append()) == [first["offset"] + 1]
        wait_until(lambda: count(http, "test/counter/d") == 2)
        ends = rt.run(runtime.log.end_offsets(topic))
        again = post_one(http, "test/counter/d", "by-another-member")
        assert again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == {"partition": first["partition"], "offset": first["offset"] + 1}
        assert rt.run(runtime.log.end_offsets(topic)) == ends  # nothing appended
        post_one(http, "test/counter/d", None, value=10)
        wait_until(lambda: count(http, "test/counter/d") >= 12)
        assert count(http, "test/counter/d") == 12


def test_a_key_reused_for_another_request_is_refused(functions_url: str) -> None:
    with (
        running_runtime(
            module_for(functions_url, functions="test/*", egresses=("test/out",))
        ) as rt,
        client(rt.url) as http,
    ):
        assert post_one(http, "test/counter/c", "same", value=1).status_code == 202
        refused = post_one(http, "test/counter/c", "same", value=2)
        assert refused.status_code == 422
        assert refused.json()["error"] == "idempotency_key_reused"
        assert post_one(http, "test/counter/other", "same", value=1).status_code == 422
        too_long = post_one(http, "test/counter/c", "x" * 300)
        assert too_long.status_code == 400
        assert too_long.json()["error"] == "bad_idempotency_key"


def test_concurrent_retries_wait_for_the_first(functions_url: str) -> None:
    import concurrent.futures

    with running_runtime(
        module_for(functions_url, functions="test/*", egresses=("test/out",))
    ) as rt:

        def post() -> dict[str, Any]:
            with client(rt.url) as http:
                answer: dict[str, Any] = post_one(http, "test/counter/p", "racing").json()
                return answer

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(), range(8)))
        assert all(a == answers[0] for a in answers)
        with client(rt.url) as http:
            wait_until(lambda: count(http, "test/counter/p") == 1)


def test_a_retried_call_gets_the_first_reply_without_calling_again(functions_url: str) -> None:
    with (
        running_runtime(
            module_for(functions_url, functions="test/*", egresses=("test/out",))
        ) as rt,
        client(rt.url) as http,
    ):

        def call() -> httpx.Response:
            return http.post(
                "/v1/call/test/nonce/n",
                content="go",
                headers={"content-type": "text/plain", "idempotency-key": "call-1"},
            )

        first, again = call(), call()
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()  # the same random nonce: not drawn twice
        assert again.headers["idempotent-replayed"] == "true"
        state = http.get("/v1/state/test/nonce/n").json()["state"]
        assert state["nonce"]["value"] == first.json()["value"]


def test_keys_survive_a_kill_9_of_the_runtime(functions_url: str, tmp_path: Path) -> None:
    module = tmp_path / "module.yaml"
    url = functions_url
    module.write_text(
        "kind: io.statefun.endpoints.v2/http\n"
        f"spec: {{functions: test/*, urlPathTemplate: '{url}'}}\n"
        "---\nkind: statefun.v1/egress\nspec: {id: test/out}\n"
    )
    runtime = RuntimeProcess(
        module, tmp_path / "data", free_port(), "--checkpoint-interval", "0.2"
    ).start(recovered=True)
    try:
        with httpx.Client(base_url=runtime.url, timeout=30) as http:
            first = post_one(http, "test/counter/r", "before-the-crash")
            called = http.post(
                "/v1/call/test/nonce/r",
                content="go",
                params={"consistency": "committed"},
                headers={"content-type": "text/plain", "idempotency-key": "call-before-the-crash"},
            )
            assert called.status_code == 200
            runtime.kill()  # at once: the key of the message may not be in a checkpoint yet
            runtime.start(recovered=True)
            again = post_one(http, "test/counter/r", "before-the-crash")
            assert again.json() == first.json()
            assert again.headers["idempotent-replayed"] == "true"
            recalled = http.post(
                "/v1/call/test/nonce/r",
                content="go",
                params={"consistency": "committed"},
                headers={"content-type": "text/plain", "idempotency-key": "call-before-the-crash"},
            )
            assert recalled.json() == called.json()
            wait_until(lambda: count(http, "test/counter/r") == 1)
    finally:
        runtime.signal(signal.SIGTERM)
