"""StateFun's Kafka ingress and egress kinds driving official-SDK functions, with the
runtime's own log embedded and on Kafka."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import OfficialFunctions
from kafka_broker import consume, create_topic, int_bytes, produce, string_bytes
from statefun_app import state, statefun_module
from support import client, running_runtime, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def test_kafka_ingress_and_egress_with_official_sdk_functions(
    official: OfficialFunctions, ours_url: str, kafka_bootstrap: str, own_log: dict[str, Any]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    numbers, commands, out = f"numbers-{suffix}", f"commands-{suffix}", f"out-{suffix}"
    create_topic(kafka_bootstrap, numbers, 2)
    create_topic(kafka_bootstrap, commands, 2)
    # StateFun's Kafka kinds, unchanged; the address is left out when the runtime's own
    # log is on Kafka (then it is the runtime's cluster, as in StateFun)
    address = "" if "kafka" in own_log else f"\n  address: {kafka_bootstrap}"
    module = statefun_module(
        official.url,
        ours_url,
        extra=f"""---
kind: io.statefun.kafka.v1/ingress
spec:
  id: official/in{address}
  consumerGroupId: compat
  startupPosition:
    type: earliest
  topics:
    - topic: {numbers}
      valueType: io.statefun.types/int
      targets: [official/counter]
    - topic: {commands}
      valueType: io.statefun.types/string
      targets: [official/to_kafka]
---
kind: io.statefun.kafka.v1/egress
spec:
  id: official/kafka{address}
  deliverySemantic:
    type: at-least-once
""",
    )
    produce(
        kafka_bootstrap, numbers, [(b"a", int_bytes(5)), (b"b", int_bytes(1)), (b"a", int_bytes(2))]
    )
    produce(kafka_bootstrap, commands, [(b"x", string_bytes(out)), (b"y", string_bytes(out))])
    with running_runtime(module, **own_log) as rt, client(rt.url) as http:
        wait_until(lambda: state(http, "official/counter/a").get("count") == 7)
        assert state(http, "official/counter/b") == {"count": 1, "callers": [None]}
        produce(kafka_bootstrap, commands, [(b"x", string_bytes(out))])
        records = consume(kafka_bootstrap, out, 3)
    # the official SDK's KafkaProducerRecords: keyed by the function's id
    assert sorted(records) == [(b"x", b"x:1"), (b"x", b"x:2"), (b"y", b"y:1")]
