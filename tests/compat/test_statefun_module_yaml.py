"""StateFun module.yaml files as users have them: the kinds and fields we read, the ones
we warn about, the ones we refuse; and the StateFun playground's greeter, run unchanged."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import OfficialFunctions
from statefun_app import statefun_module_yaml
from support import client, running_runtime, wait_until

from statefun.errors import ModuleSpecError
from statefun.module_spec import (
    PLAYGROUND_EGRESS_ID,
    FunctionTypePattern,
    HttpEndpoint,
    HttpTimeouts,
    KafkaEgress,
    LogEgress,
    parse_module_spec,
)

pytestmark = pytest.mark.timeout(180)  # the last test may install the official SDK


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "statefun.module_spec"]


def test_an_unchanged_module_yaml_negotiates_the_protocol_of_each_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    module = parse_module_spec(
        statefun_module_yaml("http://official:8000/statefun", "http://ours/statefun")
    )
    v2, v1 = module.endpoints
    assert v2 == HttpEndpoint(
        FunctionTypePattern("official", None),
        "http://official:8000/statefun",
        timeouts=HttpTimeouts(call=3.0, connect=2.0),
        protocol="auto",
    )
    assert v1 == HttpEndpoint(
        FunctionTypePattern("ours", None),
        "http://ours/statefun",
        timeouts=HttpTimeouts(call=3.0),
        protocol="auto",
    )
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("protocol", ["native", "statefun", "auto"])
def test_our_protocol_field_picks_the_protocol(protocol: str) -> None:
    for kind in ("io.statefun.endpoints.v2/http", "io.statefun.endpoints.v1/http"):
        module = parse_module_spec(
            f"kind: {kind}\nspec: {{functions: a/*, urlPathTemplate: 'http://a/', protocol: {protocol}}}\n"
        )
        assert module.endpoints[0].protocol == protocol


def test_v1_endpoints_read_timeouts_and_warn_about_max_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    module = parse_module_spec(
        """
kind: io.statefun.endpoints.v1/http
spec:
  functions: com.example/greeter
  urlPathTemplate: https://bar.foo.com:8080/{function.name}
  maxNumBatchRequests: 10000
  maxRetries: 5
  timeouts: {call: 1minute, connect: 20seconds, read: 30seconds, write: 3seconds}
""",
        "module.yaml",
    )
    assert module.endpoints[0] == HttpEndpoint(
        FunctionTypePattern("com.example", "greeter"),
        "https://bar.foo.com:8080/{function.name}",
        10000,
        HttpTimeouts(call=60.0, connect=20.0, read=30.0, write=3.0),
    )
    (warning,) = warnings_of(caplog)
    assert warning.startswith("module.yaml, document 1, field 'spec.maxRetries': is not honoured")


def test_the_async_transport_reads_its_timeouts_and_payload_limit_and_warns_about_its_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    module = parse_module_spec(
        """
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: http://functions:8000/statefun
  transport:
    type: io.statefun.transports.v1/async
    call: 2m
    connect: 20s
    pool_ttl: 15s
    pool_size: 1024
    payload_max_bytes: 2MB
""",
        "module.yaml",
    )
    assert module.endpoints[0].timeouts == HttpTimeouts(call=120.0, connect=20.0)
    assert module.endpoints[0].max_answer_bytes == 2 << 20
    assert [w.split(":")[0] for w in warnings_of(caplog)] == [
        "module.yaml, document 1, field 'spec.transport.pool_ttl'",
        "module.yaml, document 1, field 'spec.transport.pool_size'",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("33554432", 33554432), ("32MB", 32 << 20), ("512 KiB", 512 << 10), ("1g", 1 << 30)],
)
def test_payload_max_bytes_takes_bytes_or_sizes(raw: str, expected: int) -> None:
    module = parse_module_spec(
        "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'http://a/', "
        f"transport: {{type: io.statefun.transports.v1/async, payload_max_bytes: {raw}}}}}\n"
    )
    assert module.endpoints[0].max_answer_bytes == expected


def test_a_bad_payload_max_bytes_names_the_field() -> None:
    text = (
        "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'http://a/', "
        "transport: {type: io.statefun.transports.v1/async, payload_max_bytes: lots}}\n"
    )
    with pytest.raises(
        ModuleSpecError, match=r"field 'spec.transport.payload_max_bytes': must be a size"
    ):
        parse_module_spec(text)


def test_the_tls_settings_of_statefuns_docs_are_read_and_a_classpath_is_refused() -> None:
    # the example of StateFun's documentation: paths, ~ and classpath: resources
    text = (
        "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'https://a/', "
        "transport: {type: io.statefun.transports.v1/async, "
        "client_cert: 'classpath:clientPublic.crt', client_key: ~/clientPrivate.key}}\n"
    )
    with pytest.raises(
        ModuleSpecError,
        match=r"field 'spec.transport.client_cert': 'classpath:clientPublic.crt' names a Java "
        "classpath resource; this runtime has no classpath",
    ):
        parse_module_spec(text)


def test_kafka_fields_not_honoured_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    module = parse_module_spec(
        """
kind: io.statefun.endpoints.v2/http
spec: {functions: example/*, urlPathTemplate: "http://functions:8000/statefun"}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: example/names
  address: kafka:9092
  consumerGroupId: my-group-id
  topics:
    - topic: names
      valueType: example/GreetRequest
      targets: [example/person]
  properties:
    - max.poll.records: 100
---
kind: io.statefun.kafka.v1/egress
spec:
  id: example/greets
  address: kafka:9092
  deliverySemantic:
    type: exactly-once
    transactionTimeoutMillis: 100000
""",
        "module.yaml",
    )
    assert module.egresses == (
        KafkaEgress(module.egresses[0].id, "kafka:9092", "exactly-once", 100.0),
    )
    # the transaction timeout is honoured (the exactly-once Kafka egress's transactions)
    assert [w.split(": ")[0] for w in warnings_of(caplog)] == [
        "module.yaml, document 2, field 'spec.properties'",
    ]


def test_the_module_format_of_statefun_3_0_is_refused_with_a_hint() -> None:
    text = """
version: "3.0"
module:
  meta: {type: remote}
  spec:
    endpoints: []
"""
    with pytest.raises(ModuleSpecError, match=r"module format of StateFun 3\.0 and older"):
        parse_module_spec(text)


def test_unknown_fields_of_the_v1_kind_are_errors() -> None:
    text = "kind: io.statefun.endpoints.v1/http\nspec: {functions: a/*, urlPathTemplate: 'http://a/', transport: {}}\n"
    with pytest.raises(ModuleSpecError, match=r"field 'spec\.transport': is not a known field"):
        parse_module_spec(text)


# --- the StateFun playground's python/greeter ---------------------------------------------------

PLAYGROUND_MODULE = """
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: {url}
  transport:
    type: io.statefun.transports.v1/async
---
kind: io.statefun.playground.v1/ingress
spec:
  port: 8090
---
kind: io.statefun.playground.v1/egress
spec:
  port: 8091
  topics:
    - greetings
"""


def test_the_playground_kinds_map_onto_the_runtimes_ingress_and_an_embedded_egress(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    module = parse_module_spec(
        PLAYGROUND_MODULE.format(url="http://functions:8000/statefun"), "module.yaml"
    )
    assert module.egresses == (LogEgress(PLAYGROUND_EGRESS_ID),)
    assert [w.split(": ")[0] for w in warnings_of(caplog)] == [
        "module.yaml, document 2, field 'kind'",
        "module.yaml, document 2, field 'spec.port'",
        "module.yaml, document 3, field 'kind'",
        "module.yaml, document 3, field 'spec.port'",
        "module.yaml, document 3, field 'spec.topics'",
    ]
    assert "POST /v1/messages/{namespace}/{type}/{id}" in warnings_of(caplog)[0]
    assert "GET /v1/egress/io.statefun.playground/egress" in warnings_of(caplog)[2]


def test_the_playground_greeter_runs_with_its_module_yaml(
    official: OfficialFunctions, own_log: dict[str, Any]
) -> None:
    module = parse_module_spec(PLAYGROUND_MODULE.format(url=official.url))
    with running_runtime(module, **own_log) as rt, client(rt.url) as http:
        for _ in range(2):
            # the playground's `curl -X PUT -H "Content-Type: application/vnd.example/GreetRequest"
            # -d '{"name": "Bob"}' localhost:8090/example/person/Bob`, on our ingress
            answer = http.post(
                "/v1/messages/example/person/Bob",
                content=b'{"name": "Bob"}',
                headers={"content-type": "application/vnd.example/GreetRequest"},
                params={"type": "example/GreetRequest"},
            )
            assert answer.status_code == 202, answer.text
        records = wait_until(
            lambda: (
                len(r := http.get(f"/v1/egress/{PLAYGROUND_EGRESS_ID}").json()["records"]) == 2
                and r
            )
        )
    assert [r["value"] for r in records] == [
        {"topic": "greetings", "payload": "Hello Bob"},
        {"topic": "greetings", "payload": "Hello again Bob"},
    ]
