"""Global checkpoints and rollback, end to end: every rollback trigger (a function failing
under the strict policy ``fail``), the skip rule, timers and cancellation across a
rollback, the contained default (a poison message parked, nothing rolled back), and state
surviving a restart of the runtime."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from functions import make_test_functions
from support import RuntimeThread, client, module_for, running_runtime, serve, wait_until

from runtime.checkpoints.coordinator import CheckpointConfig
from statefun import native_codec

pytestmark = pytest.mark.timeout(90)

MANUAL = CheckpointConfig(interval=0)  # checkpoints only when a test takes one


def send(http: httpx.Client, address: str, value: int | str) -> None:
    if isinstance(value, str):
        answer = http.post(
            f"/v1/messages/{address}", content=value, headers={"content-type": "text/plain"}
        )
    else:
        answer = http.post(
            f"/v1/messages/{address}",
            content=str(value),
            params={"type": "io.statefun.types/int"},
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 202, answer.text


def count(http: httpx.Client, address: str) -> int:
    value: int = http.get(f"/v1/state/{address}").json()["state"].get("count", {}).get("value", 0)
    return value


def checkpoint(rt: RuntimeThread) -> int:
    assert rt.runtime is not None
    manifest = rt.run(rt.runtime.coordinator.checkpoint())
    assert manifest is not None
    return manifest.checkpoint


def generation(http: httpx.Client) -> int:
    value: int = http.get("/v1/checkpoints").json()["generation"]
    return value


def roll_back(rt: RuntimeThread, http: httpx.Client, control: dict[str, Any]) -> None:
    """Make test/flaky exhaust its call budget under policy ``fail``, wait for the rollback
    and the recovery."""
    before = generation(http)
    control["fail"] = True
    send(http, "test/flaky/trigger", 1)
    wait_until(lambda: generation(http) > before, timeout=20)
    control["fail"] = False


def test_a_rollback_skips_the_output_of_rolled_back_work(
    functions_url: str, control: dict[str, Any]
) -> None:
    spec = module_for(
        functions_url, functions="test/*", egresses=("test/out",), call="1s", policy="fail"
    )
    with (
        running_runtime(spec, checkpoints=MANUAL, rollback_backoff=0.05) as rt,
        client(rt.url) as http,
    ):
        for _ in range(3):
            send(http, "test/forward/a", 1)
        wait_until(lambda: count(http, "test/counter/a") == 3)
        checkpoint(rt)
        for _ in range(2):
            send(http, "test/forward/a", 1)
        wait_until(lambda: count(http, "test/counter/a") == 5)
        roll_back(rt, http, control)
        # back to checkpoint 1 (3 each), then the two later messages once more: their
        # first processing's messages to test/counter are skipped, not counted twice
        wait_until(lambda: count(http, "test/forward/a") == 5)
        wait_until(lambda: count(http, "test/counter/a") == 5)
        assert rt.runtime is not None
        assert rt.runtime.worker is not None
        assert rt.runtime.worker.skipped >= 2
        assert count(http, "test/counter/a") == 5


def test_a_protocol_violation_rolls_back_at_once(
    functions_url: str, control: dict[str, Any]
) -> None:
    sdk_app = make_test_functions(control).asgi_app()
    broken = {"on": True}

    async def app(scope: Any, receive: Any, send_: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and broken["on"]:
            await send_(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/html")],
                }
            )
            await send_({"type": "http.response.body", "body": b"<html>not the protocol</html>"})
            return
        await sdk_app(scope, receive, send_)

    with (
        serve(app) as server,
        running_runtime(
            module_for(
                f"{server.url}/statefun",
                functions="test/*",
                egresses=("test/out",),
                call="30s",
                policy="fail",
            ),
            rollback_backoff=0.05,
        ) as rt,
        client(rt.url) as http,
    ):
        send(http, "test/counter/p", 1)
        # no retries for 30 s: the first answer that breaks the protocol rolls back
        ready = wait_until(
            lambda: (r := http.get("/ready")).status_code == 503 and r.json(), timeout=10
        )
        assert "protocol violation" in ready["reasons"]["generation"]
        assert native_codec.CONTENT_TYPE in ready["reasons"]["generation"]
        broken["on"] = False
        wait_until(lambda: count(http, "test/counter/p") == 1)


def test_timers_and_cancellation_survive_a_rollback(
    functions_url: str, control: dict[str, Any]
) -> None:
    spec = module_for(
        functions_url, functions="test/*", egresses=("test/out",), call="1s", policy="fail"
    )
    with (
        running_runtime(spec, checkpoints=MANUAL, rollback_backoff=0.05) as rt,
        client(rt.url) as http,
    ):
        # test/later "start" sends test/counter 100 after 300 ms, token "t"; "cancel" cancels
        send(http, "test/later/fires", "start")
        send(http, "test/later/cancelled", "start")
        wait_until(lambda: len(rt.call_soon(lambda: rt.runtime.worker._timers)) == 2)  # type: ignore[union-attr]
        checkpoint(rt)  # both timers are pending in the checkpoint
        send(http, "test/later/cancelled", "cancel")
        wait_until(lambda: count(http, "test/counter/fires") == 100)  # fired before the rollback
        roll_back(rt, http, control)
        # restored from the checkpoint: "fires" fires again (its first firing is skipped),
        # "cancelled" is pending again until the cancel is processed again
        wait_until(lambda: rt.call_soon(lambda: len(rt.runtime.worker._timers)) == 0)  # type: ignore[union-attr]
        time.sleep(0.5)  # anything still to come from the restored timers has come
        assert count(http, "test/counter/fires") == 100
        assert count(http, "test/counter/cancelled") == 0


def test_by_default_a_poison_message_is_parked_readable_and_nothing_rolls_back(
    functions_url: str,
) -> None:
    policy = """kind: statefun.v1/failure-policy
spec: {functions: test/poison, deadLetterAfter: 1s}
"""
    spec = module_for(functions_url, functions="test/*", call="0.5s", documents=(policy,))
    with running_runtime(spec) as rt, client(rt.url) as http:
        before = generation(http)
        for value in (1, 13, 2):
            send(http, "test/poison/p", value)
        # other addresses of the type succeed meanwhile: the failure is the message's
        for i in range(6):
            send(http, f"test/poison/ok{i}", 1)
            time.sleep(0.3)
        wait_until(lambda: count(http, "test/poison/p") == 3, timeout=30)
        (letter,) = http.get("/v1/dead-letters").json()["records"]
        assert letter["kind"] == "message"
        assert letter["status"] == "parked"
        assert letter["target"] == "test/poison/p"
        assert letter["message"] == {"type": "io.statefun.types/int", "value": 13}
        assert "13 is poison" in letter["reason"]
        assert "failed alone" in letter["reason"]
        assert generation(http) == before  # nothing was rolled back
        assert http.get("/v1/checkpoints").json()["rollbacks"] == []
        # later messages are processed as usual
        send(http, "test/poison/p", 4)
        wait_until(lambda: count(http, "test/poison/p") == 7)
        # discarding it is remembered; replaying a discarded letter is refused
        offset = letter["offset"]
        assert http.post(f"/v1/admin/dead-letters/{offset}/discard").status_code == 200
        (letter,) = http.get("/v1/dead-letters").json()["records"]
        assert letter["status"] == "discarded"
        refused = http.post(f"/v1/admin/dead-letters/{offset}/replay")
        assert refused.status_code == 409
        assert refused.json()["error"] == "discarded"


def test_a_replayed_dead_letter_is_appended_once(
    functions_url: str, control: dict[str, Any]
) -> None:
    policy = """kind: statefun.v1/failure-policy
spec: {functions: test/flaky, deadLetterAfter: 1s}
"""
    spec = module_for(
        functions_url, functions="test/*", egresses=("test/out",), call="0.5s", documents=(policy,)
    )
    with running_runtime(spec) as rt, client(rt.url) as http:
        control["fail_address"] = "bad"
        send(http, "test/flaky/bad", 1)
        for i in range(8):
            send(http, f"test/flaky/ok{i}", 1)
            time.sleep(0.25)
        letters = wait_until(lambda: http.get("/v1/dead-letters").json()["records"], timeout=30)
        assert [d["target"] for d in letters] == ["test/flaky/bad"]
        offset = letters[0]["offset"]
        control.pop("fail_address")  # the bug is fixed: replay the message
        first = http.post(f"/v1/admin/dead-letters/{offset}/replay")
        again = http.post(f"/v1/admin/dead-letters/{offset}/replay")
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json()
        assert again.headers.get("idempotent-replayed") == "true"
        wait_until(lambda: count(http, "test/flaky/bad") == 1)
        assert http.get("/v1/dead-letters").json()["records"][0]["status"] == "replayed"
        # A message after the replays: one address's messages are processed in order, so
        # a second copy of the replayed one would be counted before it.
        send(http, "test/flaky/bad", 1)
        wait_until(lambda: count(http, "test/flaky/bad") >= 2)
        assert count(http, "test/flaky/bad") == 2
        assert http.post("/v1/admin/dead-letters/999/replay").status_code == 404


def test_the_fail_policy_keeps_rolling_back_with_a_growing_backoff(functions_url: str) -> None:
    spec = module_for(functions_url, functions="test/*", call="0.3s", policy="fail")
    with running_runtime(spec, rollback_backoff=0.2) as rt, client(rt.url) as http:
        send(http, "test/poison/p", 13)
        wait_until(lambda: len(http.get("/v1/checkpoints").json()["rollbacks"]) >= 3, timeout=30)
        rollbacks = http.get("/v1/checkpoints").json()["rollbacks"]
        assert all(r["address"] == "test/poison/p" for r in rollbacks)
        assert all("13 is poison" in r["reason"] for r in rollbacks)
        assert http.get("/ready").status_code == 503
        assert http.get("/v1/dead-letters").json()["records"] == []


def test_state_survives_a_restart_from_the_last_checkpoint(
    functions_url: str, tmp_path: Path
) -> None:
    spec = module_for(functions_url, functions="test/*", egresses=("test/out",))
    with running_runtime(spec, data_dir=tmp_path, checkpoints=MANUAL) as rt, client(rt.url) as http:
        for _ in range(4):
            send(http, "test/counter/s", 1)
        wait_until(lambda: count(http, "test/counter/s") == 4)
    # a clean stop took a last checkpoint: nothing is replayed
    with running_runtime(spec, data_dir=tmp_path, checkpoints=MANUAL) as rt, client(rt.url) as http:
        assert count(http, "test/counter/s") == 4
        send(http, "test/counter/s", 1)
        wait_until(lambda: count(http, "test/counter/s") == 5)
        checkpoints = http.get("/v1/checkpoints").json()
        assert checkpoints["generation"] == 2
        assert [c["id"] for c in checkpoints["checkpoints"]] == [1]


def test_state_expires_after_write_and_after_call_across_a_restart(
    functions_url: str, tmp_path: Path
) -> None:
    spec = module_for(functions_url, functions="test/*")

    def names(http: httpx.Client) -> set[str]:
        return set(http.get("/v1/state/test/expiring/e").json()["state"])

    with running_runtime(spec, data_dir=tmp_path) as rt, client(rt.url) as http:
        send(http, "test/expiring/e", "write")
        wait_until(lambda: names(http) == {"written", "called"})
    # the deadlines are in the last checkpoint: they hold across the restart
    with running_runtime(spec, data_dir=tmp_path) as rt, client(rt.url) as http:
        assert names(http) == {"written", "called"}
        for _ in range(4):  # invocations keep "called", not "written"
            time.sleep(0.5)
            send(http, "test/expiring/e", "ping")
        wait_until(lambda: names(http) == {"called"})
        wait_until(lambda: names(http) == set(), timeout=5)
        # and the sweep took it out of memory
        assert rt.runtime is not None
        wait_until(lambda: rt.call_soon(lambda: len(rt.runtime.worker.state)) == 0)  # type: ignore[union-attr]


def test_a_committed_reply_never_comes_from_rolled_back_work(
    functions_url: str, control: dict[str, Any]
) -> None:
    spec = module_for(
        functions_url, functions="test/*", egresses=("test/out",), call="1s", policy="fail"
    )
    with (
        running_runtime(spec, checkpoints=MANUAL, rollback_backoff=0.05) as rt,
        client(rt.url) as http,
    ):
        answers: list[httpx.Response] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                http.post(
                    "/v1/call/test/nonce/n",
                    content="go",
                    params={"consistency": "committed", "timeout": "60"},
                    headers={"content-type": "text/plain"},
                )
            )
        )
        caller.start()

        def nonce() -> str | None:
            value: str | None = (
                http.get("/v1/state/test/nonce/n").json()["state"].get("nonce", {}).get("value")
            )
            return value

        first = wait_until(nonce)  # the work is done, its reply held back
        time.sleep(0.3)
        assert not answers
        roll_back(rt, http, control)
        replayed = wait_until(lambda: (n := nonce()) != first and n)
        assert not answers
        checkpoint(rt)
        caller.join(10)
        (answer,) = answers
        assert answer.status_code == 200
        assert answer.headers["x-statefun-consistency"] == "committed"
        assert answer.json()["value"] == replayed  # the committed work's reply, not `first`


def test_an_uncommitted_reply_answers_at_once_and_says_so(functions_url: str) -> None:
    spec = module_for(functions_url, functions="test/*")
    with running_runtime(spec, checkpoints=MANUAL) as rt, client(rt.url) as http:
        answer = http.post(
            "/v1/call/test/nonce/u", content="go", headers={"content-type": "text/plain"}
        )
        assert answer.status_code == 200
        assert answer.headers["x-statefun-consistency"] == "uncommitted"
        bad = http.post(
            "/v1/call/test/nonce/u",
            content="go",
            params={"consistency": "maybe"},
            headers={"content-type": "text/plain"},
        )
        assert bad.status_code == 400
        assert "consistency must be" in bad.json()["detail"]


def egress_records(http: httpx.Client, prefix: str = "") -> list[dict[str, Any]]:
    """test/out's records whose value starts with ``prefix``."""
    records: list[dict[str, Any]] = http.get("/v1/egress/test/out").json()["records"]
    return [r for r in records if r["value"].startswith(prefix)]


def test_egress_shows_only_committed_work_and_never_rolled_back_work(
    functions_url: str, control: dict[str, Any]
) -> None:
    spec = module_for(
        functions_url, functions="test/*", egresses=("test/out",), call="1s", policy="fail"
    )
    with (
        running_runtime(spec, checkpoints=MANUAL, rollback_backoff=0.05) as rt,
        client(rt.url) as http,
    ):
        send(http, "test/counter/e", 1)
        wait_until(lambda: count(http, "test/counter/e") == 1)
        time.sleep(0.3)
        assert egress_records(http) == []  # applied, not committed: not visible
        checkpoint(rt)
        wait_until(lambda: [r["value"] for r in egress_records(http, "e=")] == ["e=1"])
        send(http, "test/counter/e", 1)
        wait_until(lambda: count(http, "test/counter/e") == 2)
        roll_back(rt, http, control)  # "e=2" was never committed: it never shows
        wait_until(lambda: count(http, "test/counter/e") == 2)  # replayed
        assert [r["value"] for r in egress_records(http, "e=")] == ["e=1"]
        checkpoint(rt)
        records = wait_until(lambda: len(r := egress_records(http, "e=")) == 2 and r)
        assert [r["value"] for r in records] == ["e=1", "e=2"]
        assert len({r["id"] for r in records}) == 2


def test_an_at_least_once_egress_does_not_wait_for_the_commit(functions_url: str) -> None:
    egress = (
        "kind: statefun.v1/egress\nspec: {id: test/out, deliverySemantic: {type: at-least-once}}\n"
    )
    spec = module_for(functions_url, functions="test/*", documents=(egress,))
    with running_runtime(spec, checkpoints=MANUAL) as rt, client(rt.url) as http:
        send(http, "test/counter/a", 1)
        records = wait_until(lambda: egress_records(http))
        assert [r["value"] for r in records] == ["a=1"]
        assert records[0]["id"]
