"""Kafka security settings reach every Kafka client the runtime builds: those of its log
(admin, producer, consumers, extra producers), the clusters its ingresses and egresses
name, and ``statefun run --kafka-config``'s reading.

A broker with TLS or SASL is not available here (the Tansu test broker speaks plaintext),
so the wiring is checked where the clients are built: each client class records its
settings and connects to Tansu with settings that change nothing on plaintext
(``security_protocol=PLAINTEXT``, ``ssl_check_hostname=False``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import write_module

import runtime.log.kafka as kafka_log
import runtime.log.kafka_appender as kafka_appender
from runtime.cli import CliError, _parser, runtime_config
from runtime.kafka_clusters import KafkaClusters
from runtime.log.kafka import KafkaLog

pytestmark = pytest.mark.anyio

SECURITY = {"security_protocol": "PLAINTEXT", "ssl_check_hostname": False}


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """(client class, settings) of every Kafka client ``runtime.log.kafka`` builds."""
    clients: list[tuple[str, dict[str, Any]]] = []

    def recording(cls: type) -> Callable[..., Any]:
        def build(**settings: Any) -> Any:
            clients.append((cls.__name__, settings))
            return cls(**settings)

        return build

    for name in ("KafkaAdminClient", "KafkaProducer", "KafkaConsumer"):
        monkeypatch.setattr(kafka_log, name, recording(getattr(kafka_log, name)))
    librdkafka = kafka_appender.Producer

    def build_librdkafka(config: dict[str, Any]) -> Any:
        clients.append(("Producer", config))
        return librdkafka(config)

    monkeypatch.setattr(kafka_appender, "Producer", build_librdkafka)
    return clients


LIBRDKAFKA_SECURITY = {
    "security.protocol": "PLAINTEXT",
    "ssl.endpoint.identification.algorithm": "none",
}
"""``SECURITY`` under librdkafka's names (the producer of the log's appends)."""


def security_of(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in [*SECURITY, *LIBRDKAFKA_SECURITY] if k in settings}


def has_security(name: str, settings: dict[str, Any]) -> bool:
    """Whether a client was built with ``SECURITY``, under its library's names."""
    return security_of(settings) == (LIBRDKAFKA_SECURITY if name == "Producer" else SECURITY)


@pytest.mark.kafka
async def test_every_client_of_a_log_takes_its_security_settings(
    kafka_bootstrap: str, built: list[tuple[str, dict[str, Any]]]
) -> None:
    log = await KafkaLog.open(kafka_bootstrap, security=SECURITY, request_timeout_ms=5000)
    try:
        log.new_consumer("reader").close()
        log.new_producer(transactional_id="t-1").close()
    finally:
        await log.close()
    assert sorted(name for name, _ in built) == [
        "KafkaAdminClient",
        "KafkaConsumer",
        "KafkaProducer",  # the transactional one
        "Producer",  # librdkafka's, for appends
    ]
    assert all(has_security(name, settings) for name, settings in built)


@pytest.mark.kafka
async def test_a_cluster_named_with_other_security_settings_is_a_connection_of_its_own(
    kafka_bootstrap: str, built: list[tuple[str, dict[str, Any]]]
) -> None:
    own = await KafkaLog.open(kafka_bootstrap, request_timeout_ms=5000)
    clusters = KafkaClusters(own, kafka_bootstrap)
    try:
        assert await clusters.get(None, "ingress a/b") is own
        assert await clusters.get(kafka_bootstrap, "egress a/c") is own
        secured = await clusters.get(None, "ingress a/d", tuple(SECURITY.items()))
        assert secured is not own
        assert await clusters.get(kafka_bootstrap, "egress a/e", tuple(SECURITY.items())) is secured
    finally:
        await clusters.close()
        await own.close()
    opened_secured = [(name, s) for name, s in built if security_of(s)]
    assert sorted(name for name, _ in opened_secured) == ["KafkaAdminClient", "Producer"]
    assert all(has_security(name, s) for name, s in opened_secured)


async def test_the_own_logs_settings_are_reused_by_what_names_them_too() -> None:
    own = object.__new__(KafkaLog)  # never connected: the clusters only compare settings
    clusters = KafkaClusters(own, "kafka:9092", SECURITY)
    assert await clusters.get(None, "ingress a/b", tuple(SECURITY.items())) is own
    assert await clusters.get("kafka:9092", "ingress a/b") is own


def run_args(tmp_path: Path, *more: str) -> list[str]:
    module = write_module(tmp_path / "module.yaml", "http://127.0.0.1:1/statefun")
    return ["run", "--module", str(module), *more]


def test_kafka_config_is_read_as_a_properties_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "client.properties"
    config.write_text(
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism=PLAIN\n"
        "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
        'username="runtime" password="pw";\n'
        f"ssl.ca.location={ca}\n"
    )
    args = _parser().parse_args(
        run_args(tmp_path, "--kafka", "kafka:9093", "--kafka-config", str(config))
    )
    assert runtime_config(args).kafka_security == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "runtime",
        "sasl_plain_password": "pw",
        "ssl_cafile": str(ca),
    }


@pytest.mark.parametrize(
    ("content", "kafka", "message"),
    [
        (
            "security.protocol=SSL\n",
            (),
            "--kafka-config applies to the Kafka cluster of --kafka",
        ),
        (
            "linger.ms=5\n",
            ("--kafka", "k:9092"),
            r"client.properties: linger.ms: is not read: the runtime configures its Kafka "
            "clients itself",
        ),
        (
            "ssl.truststore.location=/etc/hostname\n",
            ("--kafka", "k:9092"),
            r"client.properties: ssl.truststore.location: a JKS \(the default\) store",
        ),
        (None, ("--kafka", "k:9092"), r"client.properties: cannot be read: No such file"),
    ],
)
def test_a_kafka_config_that_cannot_be_used_is_a_clear_error(
    tmp_path: Path, content: str | None, kafka: tuple[str, ...], message: str
) -> None:
    config = tmp_path / "client.properties"
    if content is not None:
        config.write_text(content)
    args = _parser().parse_args(run_args(tmp_path, *kafka, "--kafka-config", str(config)))
    with pytest.raises(CliError, match=message) as raised:
        runtime_config(args)
    assert raised.value.status == 2
