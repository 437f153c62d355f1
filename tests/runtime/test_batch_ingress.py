"""The batch ingress (``POST /v1/messages``, ``runtime.ingress_batch``): every kind of
value the single route takes, all or nothing with the bad message's index named, limits,
token patterns per message, an Idempotency-Key for the whole batch (also found again by a
restore from the log), and in a cluster appended where it arrives unless keyed."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_access import ELSEWHERE, SCOPED, TOKENS, bearer, tokens_file
from test_peers import appended, two_members

from runtime.checkpoints.epochs import SkipRule
from runtime.config import AccessConfig
from runtime.idempotency import IdempotencyKeys
from runtime.ingress_batch import MAX_BATCH_MESSAGES
from runtime.routing import Topics

pytestmark = pytest.mark.timeout(60)


def batch(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages)}


def tally(id_: str, value: int = 1) -> dict[str, Any]:
    return {"address": f"test/tally/{id_}", "value": value, "type": "io.statefun.types/int"}


def test_a_batch_appends_every_kind_of_value_and_answers_each_position() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("b") as b:
            before = await appended(cluster.log)
            body = batch(
                tally("x", 2),
                tally("x", 3),
                tally("a/b", 4),  # an id with '/'
                {"address": "test/tally/y", "value": "text"},  # a string, no type
                {"address": "test/tally/y", "value": {"k": [1]}, "type": "test/Json"},
                {
                    "address": "test/tally/y",
                    "value": base64.b64encode(b"\x00\xff").decode(),
                    "type": "test/Raw",
                    "encoding": "base64",
                },
            )
            response = await b.post("/v1/messages", json=body)
            assert response.status_code == 202, response.text
            positions = response.json()["messages"]
            assert len(positions) == 6
            assert await appended(cluster.log) == before + 6
            for p in positions:
                records = await cluster.log.read(Topics().messages, p["partition"], p["offset"], 1)
                assert records
                assert records[0].offset == p["offset"]
            # One partition's messages are appended in the batch's order.
            x = positions[:2]
            assert x[0]["partition"] == x[1]["partition"]
            assert x[1]["offset"] == x[0]["offset"] + 1

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("message", "status", "error"),
    [
        ({"address": "test/tally", "value": "1"}, 400, "bad_address"),
        ({"address": "test/tally/..", "value": "1"}, 400, "bad_address"),
        ({"address": "test/tally/x"}, 400, "bad_request"),
        ({"address": "test/tally/x", "value": "1", "extra": 1}, 400, "bad_request"),
        ({"address": "test/tally/x", "value": 5}, 400, "missing_type"),
        (
            {"address": "test/tally/x", "value": "z", "type": "io.statefun.types/int"},
            400,
            "bad_value",
        ),
        ({"address": "test/tally/x", "value": "1", "type": "nope"}, 400, "bad_type"),
        (
            {"address": "test/tally/x", "value": "!", "type": "a/b", "encoding": "base64"},
            400,
            "bad_value",
        ),
        ({"address": "test/tally/x", "value": "AA==", "encoding": "base64"}, 400, "missing_type"),
        ({"address": "shop/cart/x", "value": "1"}, 404, "unknown_function_type"),
        ({"address": "test/tally/x", "value": "x" * 2_000_000}, 413, "body_too_large"),
    ],
)
def test_one_bad_message_refuses_the_whole_batch_naming_it(
    message: dict[str, Any], status: int, error: str
) -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("b") as b:
            before = await appended(cluster.log)
            response = await b.post("/v1/messages", json=batch(tally("x"), tally("y"), message))
            assert response.status_code == status, response.text
            assert response.json()["error"] == error
            assert response.json()["detail"].startswith("messages[2]: ")
            assert await appended(cluster.log) == before

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"messages": []}', {"content-type": "application/json"}, 400),
        (b'{"messages": [], "x": 1}', {"content-type": "application/json"}, 400),
        (b"[1]", {"content-type": "application/json"}, 400),
        (b"{", {"content-type": "application/json"}, 400),
        (b'{"messages": []}', {"content-type": "text/plain"}, 415),
        (
            b'{"messages": ['
            + b",".join([b'{"address":"test/tally/x","value":"1"}'] * 10_001)
            + b"]}",
            {"content-type": "application/json"},
            413,
        ),
        (b"x" * (17 << 20), {"content-type": "application/json"}, 413),
    ],
    ids=[
        "empty",
        "extra key",
        "not an object",
        "not json",
        "not json media",
        "too many",
        "too big",
    ],
)
def test_a_batch_body_that_is_none_is_refused(
    content: bytes, headers: dict[str, str], status: int
) -> None:
    assert MAX_BATCH_MESSAGES == 10_000

    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("b") as b:
            before = await appended(cluster.log)
            response = await b.post("/v1/messages", content=content, headers=headers)
            assert response.status_code == status, response.text
            assert set(response.json()) == {"error", "detail"}
            assert await appended(cluster.log) == before

    asyncio.run(scenario())


def test_a_tokens_function_patterns_apply_to_every_message(tmp_path: Path) -> None:
    access = AccessConfig(tokens_file=tokens_file(tmp_path / "tokens.yaml"))

    async def scenario() -> None:
        async with two_members(access=access) as cluster, cluster.client("b") as b:
            before = await appended(cluster.log)
            body = batch(tally("x"), {"address": "test/idle/x", "value": "1"})
            refused = await b.post("/v1/messages", json=body, headers=bearer(SCOPED))
            assert refused.status_code == 403
            assert refused.json()["detail"].startswith("messages[1]: ")
            assert "test/idle" in refused.json()["detail"]
            elsewhere = await b.post("/v1/messages", json=body, headers=bearer(ELSEWHERE))
            assert elsewhere.status_code == 403
            assert elsewhere.json()["detail"].startswith("messages[0]: ")
            reader = await b.post("/v1/messages", json=body, headers=bearer(TOKENS["reader"]))
            assert reader.status_code == 403
            assert await appended(cluster.log) == before
            taken = await b.post("/v1/messages", json=batch(tally("x")), headers=bearer(SCOPED))
            assert taken.status_code == 202, taken.text
            admin = await b.post(
                "/v1/messages",
                json=batch(tally("x"), tally("y")),
                headers=bearer(TOKENS["admin"]),
            )
            assert admin.status_code == 202, admin.text

    asyncio.run(scenario())


def test_an_idempotency_key_covers_the_whole_batch_and_a_restore_finds_it() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("b") as b:
            keyed = {"idempotency-key": "batch-1"}
            body = batch(*(tally(f"k{i}") for i in range(8)))
            first = await b.post("/v1/messages", json=body, headers=keyed)
            assert first.status_code == 202, first.text
            assert "idempotent-replayed" not in first.headers
            after = await appended(cluster.log)
            again = await b.post("/v1/messages", json=body, headers=keyed)
            assert again.status_code == 202
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json() == first.json()
            assert await appended(cluster.log) == after
            other = await b.post("/v1/messages", json=batch(tally("z")), headers=keyed)
            assert other.status_code == 422
            assert await appended(cluster.log) == after

            # A restart before any checkpoint held the key: found again from the records.
            ends = await cluster.log.end_offsets(Topics().messages)
            restarted = IdempotencyKeys(retention=60)
            restarted.restore({}, {}, SkipRule(1, {}))
            await restarted.recover(cluster.log, Topics().messages, {}, ends)
            ((_, found),) = restarted.entries(["batch-1"])
            assert found is not None
            assert found.positions is not None
            assert None not in found.positions
            recovered = [
                {"partition": p[0], "offset": p[1]} for p in found.positions if p is not None
            ]
            assert recovered == first.json()["messages"]

    asyncio.run(scenario())


def test_in_a_cluster_a_batch_is_appended_where_it_arrives_and_a_keyed_one_at_the_owner() -> None:
    async def scenario() -> None:
        async with two_members() as cluster, cluster.client("a") as a:
            before = await appended(cluster.log)
            body = batch(*(tally(f"c{i}") for i in range(6)))
            plain = await a.post("/v1/messages", json=body)
            assert plain.status_code == 202, plain.text
            assert not cluster.peers.received  # a appended it: the topic is shared
            assert await appended(cluster.log) == before + 6
            keyed = await a.post("/v1/messages", json=body, headers={"idempotency-key": "c"})
            assert keyed.status_code == 202, keyed.text
            assert ("b", "/v1/messages", "a") in cluster.peers.received  # the key is b's
            again = await a.post("/v1/messages", json=body, headers={"idempotency-key": "c"})
            assert again.headers["idempotent-replayed"] == "true"
            assert await appended(cluster.log) == before + 12

    asyncio.run(scenario())


def test_the_batch_route_is_documented() -> None:
    async def scenario() -> None:
        async with two_members() as cluster:
            transport = httpx.ASGITransport(app=cluster.b.ingress_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as b:
                document = (await b.get("/openapi.json")).json()
            operation = document["paths"]["/v1/messages"]["post"]
            assert set(operation["responses"]) == {
                "202",
                "400",
                "401",
                "403",
                "404",
                "413",
                "415",
                "422",
                "503",
            }
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema["required"] == ["messages"]
            # The fast path's two routes stay documented as the FastAPI routes say.
            send = document["paths"]["/v1/messages/{namespace}/{type_}/{id_}"]["post"]
            assert set(send["responses"]) == {
                "202",
                "400",
                "401",
                "403",
                "404",
                "413",
                "415",
                "422",
                "503",
            }
            call = document["paths"]["/v1/call/{namespace}/{type_}/{id_}"]["post"]
            assert "504" in call["responses"]
            assert {p["name"] for p in call["parameters"]} >= {"type", "timeout", "consistency"}

    asyncio.run(scenario())


def test_a_batch_answer_is_kept_in_checkpoints_with_every_position() -> None:
    from runtime.idempotency import Answer, decode_rows, encode_rows

    answer = Answer(b"fp", 1, 2, 30, positions=((2, 30), (0, 7), None))
    ((key, row),) = encode_rows([("k", answer)])
    assert row is not None
    assert decode_rows([(key, row)]) == {"k": answer}
    single = Answer(b"fp", 1, 2, 30)
    ((key, row),) = encode_rows([("k", single)])
    assert row is not None
    assert decode_rows([(key, row)]) == {"k": single}  # rows of a single message as before
