"""Kafka ingresses and egresses (StateFun's module.yaml kinds) against the test broker,
with the runtime's own log embedded and in Kafka."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from kafka_broker import consume, create_topic, int_bytes, produce
from support import (
    client,
    labelled,
    running_runtime,
    scrape,
    unique_app_id,
    value,
    wait_until,
)

from runtime.errors import UnknownTopicError
from statefun.module_spec import parse_module_spec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


def module(functions_url: str, address: str | None, topic: str, startup: str = "earliest") -> Any:
    address_line = f"  address: {address}\n" if address else ""
    return parse_module_spec(
        f"""
kind: io.statefun.endpoints.v2/http
spec: {{functions: test/*, urlPathTemplate: "{functions_url}"}}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: test/numbers
{address_line}  startupPosition: {{type: {startup}}}
  topics:
    - topic: {topic}
      valueType: io.statefun.types/int
      targets: [test/counter, test/log]
---
kind: io.statefun.kafka.v1/egress
spec:
  id: test/kafka
{address_line}---
kind: statefun.v1/egress
spec: {{id: test/out}}
"""
    )


def count(http: httpx.Client, address: str) -> int:
    value: int = http.get(f"/v1/state/{address}").json()["state"].get("count", {}).get("value", 0)
    return value


@pytest.mark.parametrize("own_log", ["embedded", "kafka"])
def test_ingress_routes_records_by_key_to_every_target_and_parks_unusable_keys(
    functions_url: str, kafka_bootstrap: str, own_log: str
) -> None:
    create_topic(kafka_bootstrap, "numbers", 3)
    produce(
        kafka_bootstrap,
        "numbers",
        [
            (b"a", int_bytes(1)),
            (None, int_bytes(50)),
            (b"b", int_bytes(2)),
            (b"\xff\xfe", int_bytes(60)),
            (b"a", int_bytes(3)),
        ],
    )
    settings: dict[str, Any] = (
        {"kafka": kafka_bootstrap, "app_id": unique_app_id()} if own_log == "kafka" else {}
    )
    spec = module(functions_url, None if own_log == "kafka" else kafka_bootstrap, "numbers")
    with running_runtime(spec, **settings) as rt, client(rt.url) as http:
        wait_until(
            lambda: count(http, "test/counter/a") == 4 and count(http, "test/counter/b") == 2
        )
        assert seen(http, "test/log/a") == [1, 3]
        letters = wait_until(
            lambda: len(r := http.get("/v1/dead-letters").json()["records"]) == 2 and r
        )
        reasons = " | ".join(letter["reason"] for letter in letters)
        assert "the record has no key" in reasons
        assert "the key is not UTF-8" in reasons
        assert all(letter["origin"] == "kafka ingress test/numbers" for letter in letters)
        assert all(letter["source"].startswith("numbers/") for letter in letters)
        # processing goes on after a dead letter
        produce(kafka_bootstrap, "numbers", [(b"b", int_bytes(10))])
        wait_until(lambda: count(http, "test/counter/b") == 12)
        wait_until(lambda: seen(http, "test/log/b") == [2, 10])
        # Four usable records, each a message to both targets along the ingress's route.
        samples = scrape(http)
        for target in ("test/counter", "test/log"):
            route = {"source": "kafka:test/numbers", "target": target}
            assert value(samples, "statefun_route_messages_total", **route) == 4
            assert value(samples, "statefun_route_calls_total", outcome="success", **route) == 4
            assert value(samples, "statefun_route_call_seconds_count", **route) == 4
        sources = labelled(samples, "statefun_route_messages_total", "source")
        assert set(sources) == {"kafka:test/numbers"}
        # Appended to the runtime's own log: the eight messages and the two dead letters.
        appended = labelled(samples, "statefun_log_append_seconds_count", "topic_kind")
        assert appended["messages"] == 8
        assert appended["dead-letters"] == 2
        # Everything read: no lag on any messages partition.
        wait_until(
            lambda: (
                labelled(scrape(http), "statefun_log_read_lag_records", "partition")
                == {str(p): 0 for p in range(8)}
            )
        )


def seen(http: httpx.Client, address: str) -> list[int]:
    seen_: list[int] = http.get(f"/v1/state/{address}").json()["state"]["seen"]["value"]
    return seen_


def test_ingress_resumes_from_its_checkpoint_after_a_restart(
    functions_url: str, kafka_bootstrap: str, tmp_path: Any
) -> None:
    create_topic(kafka_bootstrap, "numbers", 2)
    produce(kafka_bootstrap, "numbers", [(b"k", int_bytes(1)), (b"k", int_bytes(1))])
    spec = module(functions_url, kafka_bootstrap, "numbers")
    with running_runtime(spec, data_dir=tmp_path) as rt, client(rt.url) as http:
        wait_until(lambda: count(http, "test/counter/k") == 2)
    produce(kafka_bootstrap, "numbers", [(b"k2", int_bytes(5))])
    # state and the ingress's positions come back from the last checkpoint: nothing is
    # read twice, nothing is lost
    with running_runtime(spec, data_dir=tmp_path) as rt, client(rt.url) as http:
        wait_until(lambda: count(http, "test/counter/k2") == 5)
        assert count(http, "test/counter/k") == 2


def test_latest_startup_position_skips_what_is_already_there(
    functions_url: str, kafka_bootstrap: str
) -> None:
    create_topic(kafka_bootstrap, "numbers", 1)
    produce(kafka_bootstrap, "numbers", [(b"old", int_bytes(1))])
    spec = module(functions_url, kafka_bootstrap, "numbers", startup="latest")
    with running_runtime(spec) as rt, client(rt.url) as http:
        produce(kafka_bootstrap, "numbers", [(b"new", int_bytes(1))])
        wait_until(lambda: count(http, "test/counter/new") == 1)
        assert count(http, "test/counter/old") == 0


def test_a_missing_ingress_topic_stops_the_start_with_a_clear_error(
    functions_url: str, kafka_bootstrap: str
) -> None:
    spec = module(functions_url, kafka_bootstrap, "no-such-topic")
    with (
        pytest.raises(
            UnknownTopicError,
            match=r"topic no-such-topic, which Kafka ingress \S+ reads, does not exist: the "
            r"runtime creates only its own topics; create it .* before starting the runtime",
        ),
        running_runtime(spec),
    ):
        pass


@pytest.mark.parametrize("own_log", ["embedded", "kafka"])
def test_egress_produces_kafka_producer_records(
    functions_url: str, kafka_bootstrap: str, own_log: str
) -> None:
    settings: dict[str, Any] = (
        {"kafka": kafka_bootstrap, "app_id": unique_app_id()} if own_log == "kafka" else {}
    )
    create_topic(kafka_bootstrap, "numbers", 1)
    spec = module(functions_url, None if own_log == "kafka" else kafka_bootstrap, "numbers")
    with running_runtime(spec, **settings) as rt, client(rt.url) as http:
        for fn_id in ("x", "y", "x"):
            http.post(
                f"/v1/messages/test/to_kafka/{fn_id}",
                content="go",
                headers={"content-type": "text/plain"},
            ).raise_for_status()
        records = consume(kafka_bootstrap, "egress-out", 3)
    # the topic did not exist: the egress created it with one partition
    assert sorted(records) == [(b"x", b"x:1"), (b"x", b"x:2"), (b"y", b"y:1")]


def test_kafka_without_an_address_needs_the_runtime_on_kafka(functions_url: str) -> None:
    spec = module(functions_url, None, "numbers")
    with pytest.raises(Exception, match="names no Kafka address"), running_runtime(spec):
        pass
