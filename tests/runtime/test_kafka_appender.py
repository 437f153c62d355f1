"""The producer of the Kafka log's appends (librdkafka): its settings, and its refusals."""

from __future__ import annotations

import pytest

from runtime.log.base import LogError, Record
from runtime.log.kafka_appender import Appender, librdkafka_security


def test_every_security_setting_has_its_librdkafka_name() -> None:
    settings = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "secret",
        "sasl_kerberos_service_name": "kafka",
        "ssl_cafile": "/ca.pem",
        "ssl_certfile": "/cert.pem",
        "ssl_keyfile": "/key.pem",
        "ssl_password": "key-secret",
        "ssl_crlfile": "/crl.pem",
        "ssl_check_hostname": False,
    }
    assert librdkafka_security(settings) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "secret",
        "sasl.kerberos.service.name": "kafka",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/cert.pem",
        "ssl.key.location": "/key.pem",
        "ssl.key.password": "key-secret",
        "ssl.crl.location": "/crl.pem",
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert librdkafka_security({"ssl_check_hostname": True}) == {
        "ssl.endpoint.identification.algorithm": "https"
    }
    assert librdkafka_security({}) == {}


def test_a_security_setting_without_a_librdkafka_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="ssl_context"):
        librdkafka_security({"security_protocol": "SSL", "ssl_context": object()})


def test_a_bad_producer_setting_is_a_log_error() -> None:
    with pytest.raises(LogError, match="cannot be made"):
        Appender.connect({"bootstrap.servers": "127.0.0.1:1", "acks": "sometimes"}, "bad")


def test_a_record_the_producer_refuses_is_a_log_error_naming_the_partition() -> None:
    # No broker is needed to refuse a record: this one is larger than the producer takes.
    appender = Appender.connect(
        {"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 1000}, "refusing"
    )
    reports: list[object] = []
    try:
        with pytest.raises(LogError, match=r"appending to t\[3\] failed"):
            appender.produce(
                "t", 3, [Record(b"x" * 2000)], lambda error, message: reports.append(error)
            )
    finally:
        appender.close(0)
    assert reports == []  # a refused record is never reported on
