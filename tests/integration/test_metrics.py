"""``GET /metrics``: a known workload through a runtime's ingress, and each metric's value
checked exactly in the Prometheus exposition."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from support import (
    RuntimeThread,
    client,
    free_port,
    labelled,
    module_for,
    running_runtime,
    scrape,
    unique_app_id,
    value,
    wait_until,
)

from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.checkpoints.store import Manifest
from runtime.cluster.node import ClusterRuntime
from runtime.config import ClusterConfig, RuntimeConfig, WorkerConfig
from runtime.dispatcher import DispatchConfig

pytestmark = pytest.mark.timeout(60)


def send(http: httpx.Client, address: str, n: int = 1) -> None:
    response = http.post(
        f"/v1/messages/{address}",
        content=str(n),
        params={"type": "io.statefun.types/int"},
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text


def count(http: httpx.Client, address: str) -> int | None:
    state = http.get(f"/v1/state/{address}").json()["state"]
    return state["count"]["value"] if "count" in state else None


def test_a_known_workload_is_counted_exactly(functions_url: str) -> None:
    n = 5
    module = module_for(functions_url, functions="test/*", egresses=("test/out",))
    with (
        running_runtime(module, checkpoints=CheckpointConfig(interval=0)) as rt,
        client(rt.url) as http,
    ):
        state_reads = 0
        # One message at a time, each to an address of its own and answered before the
        # next is sent: each is one request of one batch of one message.
        for i in range(n):
            send(http, f"test/counter/c{i}")

            def counted(address: str = f"test/counter/c{i}") -> bool:
                nonlocal state_reads
                state_reads += 1
                return count(http, address) == 1

            wait_until(counted)
        samples = scrape(http)

    counter = {"function_type": "test/counter"}
    # The first batch goes once more, with the states the function declared in answer.
    sent = n + 1
    assert value(samples, "statefun_function_invocations_total", **counter) == sent
    assert value(samples, "statefun_function_batches_total", **counter) == sent
    assert value(samples, "statefun_function_batch_size_messages_count", **counter) == sent
    assert value(samples, "statefun_function_batch_size_messages_sum", **counter) == sent
    assert (
        value(samples, "statefun_function_batch_size_messages_bucket", le="1.0", **counter) == sent
    )
    assert value(samples, "statefun_function_call_latency_seconds_count", **counter) == sent
    assert value(samples, "statefun_function_call_latency_seconds_sum", **counter) > 0
    assert value(samples, "statefun_function_retries_total", **counter) == 0
    assert value(samples, "statefun_function_dead_letters_total", **counter) == 0
    assert not [key for key in samples if key[0] == "statefun_function_failures_total"]
    # Everything answered: nothing in flight, nothing waiting.
    assert value(samples, "statefun_function_requests_in_flight", **counter) == 0
    assert value(samples, "statefun_function_backlog_messages", **counter) == 0
    # No checkpoint (interval 0): every exactly-once egress record is held.
    assert value(samples, "statefun_egress_pending_records", egress="test/out") == n
    assert value(samples, "statefun_egress_published_total", egress="test/out") == 0

    assert (
        value(samples, "statefun_route_messages_total", source="ingress", target="test/counter")
        == n
    )

    messages = "/v1/messages/{namespace}/{type_}/{id_:path}"
    states = "/v1/state/{namespace}/{type_}/{id_:path}"
    posted = {"route": messages, "method": "POST"}
    read = {"route": states, "method": "GET"}
    assert value(samples, "statefun_ingress_requests_total", status="202", **posted) == n
    assert value(samples, "statefun_ingress_requests_total", status="200", **read) == state_reads
    assert value(samples, "statefun_ingress_request_latency_seconds_count", **posted) == n
    # The scrape counts itself only once it is answered.
    assert value(samples, "statefun_ingress_requests_total", route="/metrics", method="GET") == 0

    # Bounded labels: no address id anywhere.
    for name, labels in samples:
        for label, text in labels:
            assert not any(f"c{i}" in text for i in range(n)), (name, label, text)


def test_an_unmatched_path_is_counted_without_its_path(functions_url: str) -> None:
    module = module_for(functions_url, functions="test/*", egresses=("test/out",))
    with running_runtime(module) as rt, client(rt.url) as http:
        assert http.get("/no/such/secret-id").status_code == 404
        samples = scrape(http)
    assert (
        value(
            samples,
            "statefun_ingress_requests_total",
            route="unmatched",
            method="other",
            status="404",
        )
        == 1
    )
    assert not [labels for _, labels in samples if ("route", "/no/such/secret-id") in labels]


def test_failures_and_retries_of_one_address(functions_url: str, control: dict[str, Any]) -> None:
    module = module_for(functions_url, functions="test/*", egresses=("test/out",))
    control["fail_address"] = "bad"
    with running_runtime(module) as rt, client(rt.url) as http:
        send(http, "test/flaky/bad")
        flaky = {"function_type": "test/flaky"}
        wait_until(lambda: value(scrape(http), "statefun_function_retries_total", **flaky) >= 2)
        control["fail_address"] = None
        wait_until(lambda: count(http, "test/flaky/bad") == 1)
        samples = scrape(http)

    failures = value(samples, "statefun_function_failures_total", kind="function", **flaky)
    # Every failed attempt was sent again once, and the last attempt succeeded.
    assert failures >= 2
    assert value(samples, "statefun_function_retries_total", **flaky) == failures
    # Each failed attempt, the last one, and the first sent again with the declared states.
    assert value(samples, "statefun_function_invocations_total", **flaky) == failures + 2
    assert value(samples, "statefun_function_batches_total", **flaky) == failures + 2
    assert value(samples, "statefun_function_call_latency_seconds_count", **flaky) == failures + 2
    assert value(samples, "statefun_function_backlog_messages", **flaky) == 0
    route = {"source": "ingress", "target": "test/flaky"}
    assert value(samples, "statefun_route_calls_total", outcome="failure", **route) == failures
    assert value(samples, "statefun_route_calls_total", outcome="success", **route) == 1
    assert value(samples, "statefun_route_call_seconds_count", **route) == failures + 1


def test_checkpoints_are_measured_as_committed(functions_url: str) -> None:
    module = module_for(functions_url, functions="test/*", egresses=("test/out",))
    with (
        running_runtime(module, checkpoints=CheckpointConfig(interval=0)) as rt,
        client(rt.url) as http,
    ):
        assert rt.runtime is not None
        coordinator = rt.runtime.coordinator
        manifests: list[Manifest] = []
        for i in range(3):
            send(http, f"test/counter/k{i}")
            wait_until(lambda i=i: count(http, f"test/counter/k{i}") == 1)
            manifest = rt.run(coordinator.checkpoint())
            assert manifest is not None
            manifests.append(manifest)
        # Each commit publishes the egress records it covers.
        wait_until(
            lambda: value(scrape(http), "statefun_egress_published_total", egress="test/out") == 3
        )
        samples = scrape(http)

    assert value(samples, "statefun_checkpoints_total") == 3
    assert value(samples, "statefun_checkpoint_duration_seconds_count") == 3
    assert value(samples, "statefun_checkpoint_duration_seconds_sum") == pytest.approx(
        sum(m.duration_ms for m in manifests) / 1000
    )
    assert value(samples, "statefun_checkpoint_size_bytes_total") == sum(
        m.size_bytes for m in manifests
    )
    assert value(samples, "statefun_checkpoint_changed_addresses_total") == sum(
        m.addresses for m in manifests
    )
    assert [m.addresses for m in manifests] == [1, 1, 1]
    assert value(samples, "statefun_checkpoints_abandoned_total") == 0
    assert value(samples, "statefun_egress_pending_records", egress="test/out") == 0
    assert 0 <= value(samples, "statefun_checkpoint_last_completed_age_seconds") < 30


def test_abandoned_checkpoints_are_counted(functions_url: str) -> None:
    module = module_for(functions_url, functions="test/*", egresses=("test/out",))
    # A timeout no checkpoint can meet: every one is abandoned.
    config = CheckpointConfig(interval=0, timeout=1e-9)
    with running_runtime(module, checkpoints=config) as rt, client(rt.url) as http:
        assert rt.runtime is not None
        coordinator = rt.runtime.coordinator
        assert rt.run(coordinator.checkpoint()) is None
        assert rt.run(coordinator.checkpoint()) is None
        samples = scrape(http)
    assert value(samples, "statefun_checkpoints_abandoned_total") == 2
    assert value(samples, "statefun_checkpoints_total") == 0
    assert ("statefun_checkpoint_last_completed_age_seconds", frozenset()) not in samples


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_cluster_member_measures_the_applications_checkpoints_and_rollbacks(
    functions_url: str, kafka_bootstrap: str
) -> None:
    app_id = unique_app_id()

    def member() -> RuntimeThread:
        config = RuntimeConfig(
            module=module_for(functions_url, functions="test/*", egresses=("test/out",)),
            kafka=kafka_bootstrap,
            app_id=app_id,
            ingress_port=free_port(),
            messages_partitions=2,
            checkpoints=CheckpointConfig(interval=0),
            cluster=ClusterConfig(enabled=True, session_timeout=2.0, heartbeat_interval=0.5),
        )

        async def opener(config: RuntimeConfig) -> ClusterRuntime:
            return await ClusterRuntime.open_member(config)

        return RuntimeThread(config, opener).start()  # type: ignore[arg-type]

    a = member()
    try:
        with client(a.url) as http_a:
            runtime = a.runtime
            assert isinstance(runtime, ClusterRuntime)
            wait_until(lambda: http_a.get("/ready").status_code == 200, timeout=30)
            send(http_a, "test/counter/m1")
            wait_until(lambda: count(http_a, "test/counter/m1") == 1, timeout=30)
            manifest = a.run(runtime.cluster_coordinator.checkpoint())
            assert manifest is not None
            wait_until(lambda: value(scrape(http_a), "statefun_checkpoints_total") == 1)
            samples = scrape(http_a)
            assert value(samples, "statefun_checkpoint_size_bytes_total") == manifest.size_bytes
            assert value(samples, "statefun_checkpoint_changed_addresses_total") == 1
            assert value(samples, "statefun_checkpoint_duration_seconds_sum") == pytest.approx(
                manifest.duration_ms / 1000
            )
            # A second member joins: the application rolls back to begin a generation
            # with both, and the first member counts each such Begin.
            b = member()
            try:
                with client(b.url) as http_b:
                    wait_until(
                        lambda: (
                            http_b.get("/v1/cluster").json()["generation"]
                            == http_a.get("/v1/cluster").json()["generation"]
                            and len(http_a.get("/v1/cluster").json()["members"]) == 2
                        ),
                        timeout=30,
                    )
            finally:
                b.stop()
            generation = runtime.decisions.state.generation
            assert generation >= 2
            wait_until(
                lambda: (
                    sum(
                        v
                        for (name, _), v in scrape(http_a).items()
                        if name == "statefun_rollbacks_total"
                    )
                    == generation - 1
                ),
                timeout=30,
            )
            samples = scrape(http_a)
            rollbacks = {
                dict(labels)["cause"]: v
                for (name, labels), v in samples.items()
                if name == "statefun_rollbacks_total"
            }
            assert set(rollbacks) == {"membership"}
            # The first member began the generations of the application, but for one a
            # newer Begin overtook while it restored.
            assert 2 <= value(samples, "statefun_recovery_seconds_count") <= generation
    finally:
        a.stop()


def test_rollbacks_are_counted_by_cause(functions_url: str, control: dict[str, Any]) -> None:
    module = module_for(
        functions_url, functions="test/*", egresses=("test/out",), call="300ms", policy="fail"
    )
    control["fail_address"] = "bad"
    with (
        running_runtime(module, rollback_backoff=0.05) as rt,
        client(rt.url) as http,
    ):
        send(http, "test/flaky/bad")
        wait_until(lambda: value(scrape(http), "statefun_rollbacks_total", cause="function") >= 1)
        control["fail_address"] = None
        wait_until(lambda: count(http, "test/flaky/bad") == 1, timeout=30)
        samples = scrape(http)
        recorded = http.get("/v1/checkpoints").json()["rollbacks"]
    assert recorded
    assert value(samples, "statefun_rollbacks_total", cause="function") == len(recorded)
    # The start, and one generation begun per rollback.
    assert value(samples, "statefun_recovery_seconds_count") == len(recorded) + 1
    assert [labels for name, labels in samples if name == "statefun_rollbacks_total"] == [
        frozenset({("cause", "function")})
    ]


def test_a_poison_message_parked_is_counted(functions_url: str) -> None:
    fast_parking = (
        "kind: statefun.v1/failure-policy\nspec: {functions: test/*, deadLetterAfter: 1s}\n"
    )
    module = module_for(
        functions_url, functions="test/*", egresses=("test/out",), documents=(fast_parking,)
    )
    poison = {"function_type": "test/poison"}
    with running_runtime(module) as rt, client(rt.url) as http:
        send(http, "test/poison/p", 13)

        def parked() -> bool:
            # Other messages of the type succeed meanwhile: the failure is the message's.
            send(http, "test/poison/ok", 1)
            return bool(http.get("/v1/dead-letters").json()["records"])

        wait_until(parked, timeout=30, interval=0.2)
        samples = scrape(http)
        records = http.get("/v1/dead-letters").json()["records"]
    assert len(records) == 1
    assert value(samples, "statefun_function_dead_letters_total", **poison) == 1
    failures = value(samples, "statefun_function_failures_total", kind="function", **poison)
    # Every failed attempt but the last was sent again; the last parked the message.
    assert failures >= 1
    assert value(samples, "statefun_function_retries_total", **poison) == failures - 1


def test_messages_are_counted_per_route(functions_url: str) -> None:
    module = module_for(functions_url, functions="test/*", egresses=("test/out",))
    # No checkpoint: no exactly-once egress record is appended meanwhile.
    checkpoints = CheckpointConfig(interval=0)
    with running_runtime(module, checkpoints=checkpoints) as rt, client(rt.url) as http:
        for i in range(3):
            send(http, f"test/forward/f{i}")
        for i in range(3):
            wait_until(lambda i=i: count(http, f"test/counter/f{i}") == 1)
        samples = scrape(http)

    def routes(name: str, **labels: str) -> dict[tuple[str, str], float]:
        return {
            (dict(key)["source"], dict(key)["target"]): v
            for (n, key), v in samples.items()
            if n == name and set(labels.items()) <= key
        }

    both = {("ingress", "test/forward"): 3, ("test/forward", "test/counter"): 3}
    assert routes("statefun_route_messages_total") == both
    # Each message answered once (the first batch of each type asked for its states
    # first: not an outcome), none failed.
    assert routes("statefun_route_calls_total", outcome="success") == both
    assert routes("statefun_route_calls_total", outcome="failure") == dict.fromkeys(both, 0)
    assert routes("statefun_route_call_seconds_count") == both
    assert all(v > 0 for v in routes("statefun_route_call_seconds_sum").values())
    # Appended: three messages from the ingress, three forwarded; the generation's record.
    appended = labelled(samples, "statefun_log_append_seconds_count", "topic_kind")
    assert appended == {"messages": 6, "control": 1}
    assert labelled(samples, "statefun_log_read_lag_records", "partition") == {
        str(p): 0 for p in range(8)
    }


def test_read_lag_is_what_the_worker_has_not_read(
    functions_url: str, control: dict[str, Any]
) -> None:
    module = module_for(functions_url, functions="test/*", egresses=("test/out",))
    gate = control["gate"] = threading.Event()
    # One message in memory at most: while the stuck address's call waits, nothing is read.
    worker = WorkerConfig(DispatchConfig(max_buffered_messages=1))
    with (
        running_runtime(module, worker=worker, messages_partitions=2) as rt,
        client(rt.url) as http,
    ):
        send(http, "test/gate/stuck")
        wait_until(
            lambda: (
                value(
                    scrape(http), "statefun_function_requests_in_flight", function_type="test/gate"
                )
                == 1
            )
        )
        for i in range(3):
            send(http, f"test/counter/l{i}")
        lag = labelled(scrape(http), "statefun_log_read_lag_records", "partition")
        assert set(lag) == {"0", "1"}
        assert sum(lag.values()) == 3
        gate.set()
        wait_until(lambda: all(count(http, f"test/counter/l{i}") == 1 for i in range(3)))
        lag = labelled(scrape(http), "statefun_log_read_lag_records", "partition")
    assert lag == {"0": 0, "1": 0}
