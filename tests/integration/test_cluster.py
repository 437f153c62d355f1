"""Several runtime processes over one Kafka broker as one application (``runtime.cluster``):
partitions shared, one coordinator, one global checkpoint, replies and requests across
members, handover on a clean stop, takeover by a new coordinator, restore from the
checkpoints in Kafka. Members run in this test process, each on its own event loop and
its own ingress port, as ``statefun run --kafka ...`` runs them."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from functions import make_test_functions
from kafka_broker import create_topic, int_bytes, produce
from support import (
    RuntimeProcess,
    RuntimeThread,
    client,
    free_port,
    module_for,
    serve,
    unique_app_id,
    wait_until,
    write_module,
)

from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.cluster.decisions import Effect, Fail, Part, Take
from runtime.cluster.node import ClusterRuntime
from runtime.config import ClusterConfig, RuntimeConfig, WorkerConfig
from runtime.dispatcher import DispatchConfig
from runtime.envelope import Envelope
from runtime.errors import ConfigurationError
from runtime.idempotency import KeyedRequest, key_of
from runtime.log.kafka import SOLE_WRITER_FETCH_PAUSE, KafkaLog
from runtime.routing import partition_for
from statefun.address import Address
from statefun.module_spec import parse_module_spec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

PARTITIONS = 4


@pytest.fixture
def functions_url() -> Iterator[str]:
    with serve(make_test_functions({}).asgi_app()) as server:
        yield f"{server.url}/statefun"


def member_config(functions_url: str, kafka: str, app_id: str, **changes: Any) -> RuntimeConfig:
    config = RuntimeConfig(
        module=module_for(functions_url, functions="test/*", egresses=("test/out",)),
        kafka=kafka,
        app_id=app_id,
        ingress_port=free_port(),
        messages_partitions=PARTITIONS,
        worker=WorkerConfig(DispatchConfig(retry_max_backoff=0.2)),
        checkpoints=CheckpointConfig(interval=0.2),
        cluster=ClusterConfig(enabled=True, session_timeout=2.0, heartbeat_interval=0.5),
    )
    return dataclasses.replace(config, **changes)


def start_member(config: RuntimeConfig) -> RuntimeThread:
    async def opener(config: RuntimeConfig) -> ClusterRuntime:
        return await ClusterRuntime.open_member(config)

    return RuntimeThread(config, opener).start()  # type: ignore[arg-type]


def cluster_of(http: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = http.get("/v1/cluster").json()
    return answer


def count(http: httpx.Client, address: str) -> int | None:
    """The address's count, or None while its owner restores it (503)."""
    answer = http.get(f"/v1/state/{address}")
    if answer.status_code == 503:
        return None
    assert answer.status_code == 200, answer.text
    value: int = answer.json()["state"].get("count", {}).get("value", 0)
    return value


def send(http: httpx.Client, address: str, value: int = 1) -> None:
    answer = http.post(
        f"/v1/messages/{address}",
        content=str(value),
        params={"type": "io.statefun.types/int"},
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 202, answer.text


def caught_up(member: RuntimeThread, ends: list[int]) -> bool:
    """Whether ``member`` read its partitions of the messages log to ``ends`` and
    answered everything it read: the replay after a rollback is over."""

    def check() -> bool:
        runtime = member.runtime
        assert isinstance(runtime, ClusterRuntime)
        worker, clock = runtime.worker, runtime.clock
        if (
            worker is None
            or clock is None
            or clock.generation != runtime.decisions.state.generation
        ):
            return False  # still in the generation before, or restoring
        return worker.buffered == 0 and all(worker.position(p) >= ends[p] for p in worker.owned)

    return bool(member.call_soon(check))


def quiet(*members: RuntimeThread) -> bool:
    """Whether every member answered everything in the messages log, and nothing was
    appended meanwhile (replies and forwards append more while work goes on)."""
    first = members[0]
    assert first.runtime is not None
    log_, topic = first.runtime.log, first.runtime.topics.messages
    ends = first.run(log_.end_offsets(topic))
    return all(caught_up(m, ends) for m in members) and first.run(log_.end_offsets(topic)) == ends


def both_in_one_generation(a: httpx.Client, b: httpx.Client) -> bool:
    """Both members are in one generation with partitions each, and both have restored
    their partitions (ready: a member restoring answers keyed requests 503)."""
    ca, cb = cluster_of(a), cluster_of(b)
    return (
        len(ca["members"]) == 2
        and ca["generation"] == cb["generation"]
        and all(m["partitions"] for m in ca["members"])
        and a.get("/ready").status_code == 200
        and b.get("/ready").status_code == 200
    )


@contextmanager
def two_members(
    functions_url: str, kafka: str, **changes: Any
) -> Iterator[tuple[RuntimeThread, RuntimeThread, httpx.Client, httpx.Client]]:
    """Two members of a new application, in one generation, and a client of each
    (``changes``: to their configuration, as :func:`member_config` takes them)."""
    app_id = unique_app_id()
    with ExitStack() as stack:
        a = start_member(member_config(functions_url, kafka, app_id, **changes))
        stack.callback(a.stop)
        b = start_member(member_config(functions_url, kafka, app_id, **changes))
        stack.callback(b.stop)
        http_a = stack.enter_context(client(a.url))
        http_b = stack.enter_context(client(b.url))
        wait_until(lambda: both_in_one_generation(http_a, http_b), timeout=30)
        yield a, b, http_a, http_b


def test_two_members_share_the_partitions_and_serve_any_request(
    functions_url: str, kafka_bootstrap: str
) -> None:
    with two_members(functions_url, kafka_bootstrap) as (_a, _b, http_a, http_b):
        owners = {p: m["id"] for m in cluster_of(http_a)["members"] for p in m["partitions"]}
        assert sorted(owners) == list(range(PARTITIONS))
        assert len(set(owners.values())) == 2
        # Messages through both ingresses, to addresses spread over both members.
        ids = [f"k{i}" for i in range(12)]
        for i, id_ in enumerate(ids):
            send(http_a if i % 2 else http_b, f"test/counter/{id_}")
            send(http_b if i % 2 else http_a, f"test/counter/{id_}")
        for id_ in ids:
            wait_until(lambda id_=id_: count(http_a, f"test/counter/{id_}") == 2, timeout=30)
            assert count(http_b, f"test/counter/{id_}") == 2
        # A call through either member, answered by whichever owns the address.
        for id_ in ids[:4]:
            for http in (http_a, http_b):
                answer = call(http, f"test/echo/{id_}", '"hi"')
                assert answer.status_code == 200, answer.text
                assert answer.json()["value"] == "echo: hi"
        wait_until(lambda: cluster_of(http_a)["last_checkpoint"] is not None, timeout=30)


def test_a_member_that_stops_hands_its_partitions_over_with_their_state(
    functions_url: str, kafka_bootstrap: str
) -> None:
    app_id = unique_app_id()
    with ExitStack() as stack:
        a = start_member(member_config(functions_url, kafka_bootstrap, app_id))
        stack.callback(a.stop)
        http_a = stack.enter_context(client(a.url))
        # Alone, a member polls Kafka for others' records seldom; not alone, as often as set.
        wait_until(lambda: fetch_pause_max(a) == SOLE_WRITER_FETCH_PAUSE, timeout=30)
        b = start_member(member_config(functions_url, kafka_bootstrap, app_id))
        with client(b.url) as http_b:
            wait_until(lambda: both_in_one_generation(http_a, http_b), timeout=30)
            assert fetch_pause_max(a) == fetch_pause_max(b) < SOLE_WRITER_FETCH_PAUSE
            ids = [f"h{i}" for i in range(12)]
            for id_ in ids:
                send(http_b, f"test/counter/{id_}", 3)
            for id_ in ids:
                wait_until(lambda id_=id_: count(http_b, f"test/counter/{id_}") == 3, timeout=30)
        b.stop()
        wait_until(lambda: len(cluster_of(http_a)["members"]) == 1, timeout=30)
        wait_until(lambda: count(http_a, f"test/counter/{ids[0]}") is not None, timeout=30)
        for id_ in ids:
            assert count(http_a, f"test/counter/{id_}") == 3
            send(http_a, f"test/counter/{id_}", 1)
        for id_ in ids:
            wait_until(lambda id_=id_: count(http_a, f"test/counter/{id_}") == 4, timeout=30)
        assert fetch_pause_max(a) == SOLE_WRITER_FETCH_PAUSE  # alone again


def fetch_pause_max(member: RuntimeThread) -> float:
    assert member.runtime is not None
    log = member.runtime.log
    assert isinstance(log, KafkaLog)
    return log.fetch_pause_max


def nonce_of(http: httpx.Client, address: str) -> str | None:
    answer = http.get(f"/v1/state/{address}")
    if answer.status_code == 503:
        return None
    value: str | None = answer.json()["state"].get("nonce", {}).get("value")
    return value


def draw_nonce(http: httpx.Client, address: str) -> str:
    answer = call(http, address, '"x"')
    assert answer.status_code == 200, answer.text
    value: str = answer.json()["value"]
    return value


def restored_nonces(
    functions_url: str, kafka: str, app_id: str, ids: list[str]
) -> dict[str, str | None]:
    """The nonces of ``test/nonce/<id>`` a new member of the application restores."""
    c = start_member(member_config(functions_url, kafka, app_id))
    try:
        with client(c.url) as http:
            wait_until(lambda: nonce_of(http, f"test/nonce/{ids[0]}") is not None, timeout=30)
            assert c.runtime is not None
            assert c.runtime.log.partitions  # the log is Kafka's, the store too
            return {id_: nonce_of(http, f"test/nonce/{id_}") for id_ in ids}
    finally:
        c.stop()


def test_a_new_member_restores_from_the_checkpoints_in_kafka(
    functions_url: str, kafka_bootstrap: str
) -> None:
    """The state comes back from the checkpoint, not from replaying the log: a replay of
    test/nonce would draw other nonces."""
    app_id = unique_app_id()
    ids = [f"n{i}" for i in range(8)]
    a = start_member(member_config(functions_url, kafka_bootstrap, app_id))
    try:
        with client(a.url) as http:
            wait_until(lambda: cluster_of(http)["generation"] is not None, timeout=30)
            drawn = {id_: draw_nonce(http, f"test/nonce/{id_}") for id_ in ids}
    finally:
        a.stop()  # a last checkpoint holds every nonce
    assert restored_nonces(functions_url, kafka_bootstrap, app_id, ids) == drawn


def test_a_member_alone_writes_only_the_partitions_that_changed_and_restores_them_all(
    functions_url: str, kafka_bootstrap: str
) -> None:
    """A take that is not full leaves out a partition whose snapshot would hold nothing
    new: its chain stands. An idle member's parts then name no partition, a call names
    its address's partition alone, and a new member restores every partition, whichever
    checkpoint each one's last link is from."""
    app_id = unique_app_id()
    ids = [f"s{i}" for i in range(8)]
    a = start_member(member_config(functions_url, kafka_bootstrap, app_id))
    try:
        assert a.runtime is not None
        runtime = a.runtime
        assert isinstance(runtime, ClusterRuntime)
        parts: list[Part] = []

        def heard(effect: Effect) -> None:
            if effect.applied and isinstance(effect.record, Part):
                parts.append(effect.record)

        a.call_soon(lambda: runtime.decisions.subscribe(heard))
        with client(a.url) as http:
            wait_until(lambda: cluster_of(http)["generation"] is not None, timeout=30)
            drawn = {id_: draw_nonce(http, f"test/nonce/{id_}") for id_ in ids}
            assert {
                partition_for(Address.parse(f"test/nonce/{i}"), PARTITIONS) for i in ids
            } == set(range(PARTITIONS))
            # Idle: two parts in a row that name nothing.
            wait_until(
                lambda: len(parts) >= 2 and not parts[-1].locations and not parts[-2].locations,
                timeout=30,
            )
            seen = len(parts)
            drawn[ids[0]] = draw_nonce(http, f"test/nonce/{ids[0]}")
            changed = partition_for(Address.parse(f"test/nonce/{ids[0]}"), PARTITIONS)
            wait_until(lambda: any(p.locations for p in parts[seen:]), timeout=30)
            assert {p for part in parts[seen:] for p in part.locations} == {changed}
    finally:
        a.stop()  # a last checkpoint holds every nonce
    assert restored_nonces(functions_url, kafka_bootstrap, app_id, ids) == drawn


def test_the_epoch_rule_keeps_snapshots_consistent_when_a_take_reaches_a_member_late(
    functions_url: str, kafka_bootstrap: str
) -> None:
    """Member b reads every Take 0.3 s late, while test/forward on one member sends to
    test/counter on the other: b reads messages of epochs it has not snapshotted yet.
    It must snapshot first (the epoch rule); otherwise a rollback to such a checkpoint
    applies a message twice (its effect in b's snapshot, its sending not in a's)."""
    app_id = unique_app_id()

    async def late_takes(config: RuntimeConfig) -> ClusterRuntime:
        runtime = await ClusterRuntime.open_member(config)
        decided = runtime._decided
        loop = asyncio.get_running_loop()

        def late(effect: Effect) -> None:
            if isinstance(effect.record, Take):
                loop.call_later(0.3, decided, effect)
            else:
                decided(effect)

        runtime._decided = late  # type: ignore[method-assign]
        return runtime

    with ExitStack() as stack:
        a = start_member(member_config(functions_url, kafka_bootstrap, app_id))
        stack.callback(a.stop)
        b = RuntimeThread(
            member_config(functions_url, kafka_bootstrap, app_id),
            late_takes,  # type: ignore[arg-type]
        ).start()
        stack.callback(b.stop)
        http_a = stack.enter_context(client(a.url))
        http_b = stack.enter_context(client(b.url))
        wait_until(lambda: both_in_one_generation(http_a, http_b), timeout=30)
        ids = [f"e{i}" for i in range(16)]
        rounds = 6
        for _ in range(rounds):
            for i, id_ in enumerate(ids):
                send(http_a if i % 2 else http_b, f"test/forward/{id_}")
            time.sleep(0.25)  # spread the sends over several checkpoints
        for id_ in ids:
            wait_until(lambda id_=id_: count(http_a, f"test/counter/{id_}") == rounds, timeout=30)
        assert b.runtime is not None
        assert isinstance(b.runtime, ClusterRuntime)
        assert b.runtime.early_snapshots > 0  # the rule was exercised
        # Roll everything back to the last checkpoint: the replay must apply each
        # message once more than the checkpoint holds, never twice.
        generation = cluster_of(http_a)["generation"]
        b.run(b.runtime.decisions.append(Fail(generation, b.runtime.member.id, "a test")))
        wait_until(lambda: cluster_of(http_a)["generation"] > generation, timeout=30)
        wait_until(lambda: quiet(a, b), timeout=30)
        for id_ in ids:
            wait_until(lambda id_=id_: count(http_a, f"test/counter/{id_}") is not None, timeout=30)
            assert count(http_a, f"test/forward/{id_}") == rounds
            assert count(http_a, f"test/counter/{id_}") == rounds


def call(http: httpx.Client, address: str, body: str, key: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["idempotency-key"] = key
    return http.post(
        f"/v1/call/{address}",
        content=body,
        params={"type": "io.statefun.types/string"},
        headers=headers,
    )


def test_a_keyed_call_retried_through_another_member_is_answered_once(
    functions_url: str, kafka_bootstrap: str
) -> None:
    """The owner of the target's partition holds the keys: a retry through any member
    gets the first answer, and nothing more is appended."""
    with two_members(functions_url, kafka_bootstrap) as (a, _b, http_a, http_b):
        assert a.runtime is not None
        log_, topic = a.runtime.log, a.runtime.topics.messages
        for i in range(6):  # addresses of both members' partitions
            address, key = f"test/nonce/k{i}", f"key-{i}"
            first = call(http_a, address, '"x"', key)
            assert first.status_code == 200, first.text
            before = sum(a.run(log_.end_offsets(topic)))
            for http in (http_b, http_a):
                again = call(http, address, '"x"', key)
                assert again.status_code == 200, again.text
                assert again.json() == first.json()  # the same nonce: not run again
                assert again.headers["idempotent-replayed"] == "true"
            assert sum(a.run(log_.end_offsets(topic))) == before
            refused = call(http_b, address, '"other"', key)
            assert refused.status_code == 422


def test_a_key_a_former_owner_appends_late_is_learnt_by_the_owner_and_handed_over(
    functions_url: str, kafka_bootstrap: str
) -> None:
    """A member learns of a new generation a little after the others, so the member that
    owned a partition before may append a keyed request for it after the new owner read
    the log's end at its restore. The owner processes the record and learns its key; the
    key is in its checkpoints, so a retry is answered from it, before and after the
    partition moves to another member."""
    with two_members(functions_url, kafka_bootstrap) as (a, b, http_a, http_b):
        assert a.runtime is not None
        assert b.runtime is not None
        log_, topic = a.runtime.log, a.runtime.topics.messages
        owned_by_b = set(b.call_soon(lambda: b.runtime.worker.owned))
        address = next(
            f"test/counter/late{i}"
            for i in itertools.count()
            if partition_for(Address("test", "counter", f"late{i}"), PARTITIONS) in owned_by_b
        )
        headers = {"content-type": "application/json", "idempotency-key": "on-time"}
        params = {"type": "io.statefun.types/int"}
        first = http_b.post(f"/v1/messages/{address}", content="1", params=params, headers=headers)
        assert first.status_code == 202, first.text
        partition, offset = first.json()["partition"], first.json()["offset"]
        [record] = a.run(log_.read(topic, partition, offset, 1))
        keyed = key_of(record.headers)
        assert keyed is not None
        # The same request, keyed "late" by its client, appended by member a as the former
        # owner would: to b's partition, without b's ingress knowing the key.
        late = Envelope.from_record(record).to_record(KeyedRequest("late", keyed[1], None).headers)

        async def append_late() -> list[int]:
            return await log_.append(topic, partition, [late])

        a.run(append_late())
        send(http_a, address, 10)
        wait_until(lambda: (count(http_b, address) or 0) >= 12, timeout=30)
        assert count(http_b, address) == 12  # 1 + 1 + 10
        headers["idempotency-key"] = "late"
        ends = a.run(log_.end_offsets(topic))
        for http in (http_a, http_b):
            again = http.post(
                f"/v1/messages/{address}", content="1", params=params, headers=headers
            )
            assert again.status_code == 202, again.text
            assert again.headers["idempotent-replayed"] == "true"
        assert a.run(log_.end_offsets(topic)) == ends  # nothing appended
        b.stop()  # a takes the partition over from b's last checkpoint
        wait_until(lambda: len(cluster_of(http_a)["members"]) == 1, timeout=30)
        wait_until(lambda: count(http_a, address) is not None, timeout=30)
        assert count(http_a, address) == 12
        again = http_a.post(f"/v1/messages/{address}", content="1", params=params, headers=headers)
        assert again.status_code == 202, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert a.run(log_.end_offsets(topic)) == ends


def test_a_process_with_another_module_is_refused(functions_url: str, kafka_bootstrap: str) -> None:
    app_id = unique_app_id()
    a = start_member(member_config(functions_url, kafka_bootstrap, app_id))
    try:
        with client(a.url) as http:
            wait_until(lambda: cluster_of(http)["generation"], timeout=30)
        other = member_config(
            functions_url,
            kafka_bootstrap,
            app_id,
            module=module_for(functions_url, functions="test/*", egresses=("test/other",)),
        )
        with pytest.raises(ConfigurationError, match="module differs from application"):
            start_member(other)
    finally:
        a.stop()


@pytest.mark.slow
def test_when_the_coordinator_is_killed_another_member_takes_over(
    functions_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """kill -9 of the coordinator's process: after the session timeout the group elects
    another leader, which begins a generation from the last checkpoint and commits the
    next ones; nothing committed is lost, nothing applied twice."""
    module = write_module(tmp_path / "module.yaml", functions_url)
    flags = (
        "--kafka",
        kafka_bootstrap,
        "--app-id",
        unique_app_id(),
        "--partitions",
        str(PARTITIONS),
        "--session-timeout",
        "2",
        "--checkpoint-interval",
        "0.2",
    )
    members = [
        RuntimeProcess(module, tmp_path / f"data-{i}", free_port(), *flags).start()
        for i in range(3)
    ]
    with ExitStack() as stack:
        for m in members:
            stack.callback(
                lambda m=m: m.process is None or m.process.poll() is not None or m.kill()
            )
        https = [stack.enter_context(client(m.url)) for m in members]
        wait_until(
            lambda: (
                len(cluster_of(https[0])["members"]) == 3
                and all(m["partitions"] for m in cluster_of(https[0])["members"])
            ),
            timeout=30,
        )
        status = cluster_of(https[0])
        coordinator = status["coordinator"]
        urls = {m["id"]: m["url"] for m in status["members"]}
        killed = next(i for i, m in enumerate(members) if m.url == urls[coordinator])
        alive = [h for i, h in enumerate(https) if i != killed]
        ids = [f"t{i}" for i in range(12)]
        for i, id_ in enumerate(ids):
            send(alive[i % 2], f"test/counter/{id_}", 2)
        for id_ in ids:
            wait_until(lambda id_=id_: count(alive[0], f"test/counter/{id_}") == 2, timeout=30)
        generation = cluster_of(alive[0])["generation"]
        members[killed].kill()
        # One message more while the dead member's partitions have no live owner: it
        # waits in the log and is applied once they are taken over.
        for i, id_ in enumerate(ids):
            send(alive[i % 2], f"test/counter/{id_}", 1)

        seen: dict[str, Any] = {}

        def taken_over() -> bool:
            now = seen["view"] = cluster_of(alive[1])
            return (
                now["generation"] > generation
                and now["coordinator"] not in (None, coordinator)
                and len(now["members"]) == 2
                and now["last_checkpoint"] is not None
                and now["last_checkpoint"]["generation"] == now["generation"]
            )

        try:
            wait_until(taken_over, timeout=30)
        except TimeoutError:
            pytest.fail(f"not taken over from {coordinator} in generation {generation}: {seen}")
        counts: dict[str, int | None] = dict.fromkeys(ids, 0)

        def counted(id_: str) -> bool:
            counts[id_] = count(alive[1], f"test/counter/{id_}")
            return counts[id_] == 3

        try:
            for id_ in ids:
                wait_until(lambda id_=id_: counted(id_), timeout=30)
        except TimeoutError:
            pytest.fail(f"counts after the takeover (3 each): {counts}; {cluster_of(alive[1])}")


def test_the_kafka_ingress_partitions_are_shared_and_resume_where_the_checkpoint_says(
    functions_url: str, kafka_bootstrap: str
) -> None:
    """Two members read an ingress topic of 4 partitions between them; after one stops,
    the other reads them all from the checkpoint's positions: every record once."""
    app_id = unique_app_id()
    topic = f"{app_id}-numbers"
    create_topic(kafka_bootstrap, topic, 4)
    spec = parse_module_spec(
        f"""
kind: io.statefun.endpoints.v2/http
spec: {{functions: test/*, urlPathTemplate: "{functions_url}"}}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: test/numbers
  startupPosition: {{type: earliest}}
  topics:
    - topic: {topic}
      valueType: io.statefun.types/int
      targets: [test/counter]
---
kind: statefun.v1/egress
spec: {{id: test/out}}
"""
    )
    keys = [f"q{i}".encode() for i in range(16)]
    produce(kafka_bootstrap, topic, [(k, int_bytes(1)) for k in keys])
    with ExitStack() as stack:
        a = start_member(member_config(functions_url, kafka_bootstrap, app_id, module=spec))
        stack.callback(a.stop)
        b = start_member(member_config(functions_url, kafka_bootstrap, app_id, module=spec))
        http_a = stack.enter_context(client(a.url))
        with client(b.url) as http_b:
            wait_until(lambda: both_in_one_generation(http_a, http_b), timeout=30)
            assert isinstance(a.runtime, ClusterRuntime)
            assert isinstance(b.runtime, ClusterRuntime)
            read_by_a, read_by_b = ingress_read_by(a), ingress_read_by(b)
            assert read_by_a
            assert read_by_b
            assert not read_by_a & read_by_b
            assert read_by_a | read_by_b == {(topic, p) for p in range(4)}
            produce(kafka_bootstrap, topic, [(k, int_bytes(10)) for k in keys])
            for k in keys:
                wait_until(
                    lambda k=k: count(http_b, f"test/counter/{k.decode()}") == 11, timeout=30
                )
        b.stop()
        wait_until(lambda: len(cluster_of(http_a)["members"]) == 1, timeout=30)
        produce(kafka_bootstrap, topic, [(k, int_bytes(100)) for k in keys])
        for k in keys:
            wait_until(lambda k=k: count(http_a, f"test/counter/{k.decode()}") == 111, timeout=30)
        assert ingress_read_by(a) == {(topic, p) for p in range(4)}


def ingress_read_by(member: RuntimeThread) -> set[tuple[str, int]]:
    """The Kafka ingress topic partitions ``member`` reads now."""

    def read() -> set[tuple[str, int]]:
        assert member.runtime is not None
        return {tp for reader in member.runtime.kafka_ingresses for tp in reader.positions}

    found: set[tuple[str, int]] = member.call_soon(read)
    return found
