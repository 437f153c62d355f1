"""Kafka's security properties as kafka-python's settings, and a clear error for each one
the client cannot honour; the module spec's Kafka ``properties`` read through them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from statefun.errors import ModuleSpecError
from statefun.kafka_properties import (
    KafkaPropertyError,
    parse_properties_file,
    security_settings,
)
from statefun.module_spec import parse_module_spec


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return path


def test_sasl_ssl_with_a_jaas_line_and_pem_files(pem: Path) -> None:
    assert security_settings(
        {
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
            'required username="alice" password="s3cr\\"et";',
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(pem),
            "ssl.endpoint.identification.algorithm": "https",
            "client.id": "not a security setting",
        }
    ) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": 's3cr"et',
        "ssl_cafile": str(pem),
        "ssl_check_hostname": True,
    }


def test_librdkafka_names_and_a_pem_key_store(pem: Path) -> None:
    assert security_settings(
        {
            "security.protocol": "SSL",
            "ssl.ca.location": str(pem),
            "ssl.certificate.location": str(pem),
            "ssl.key.location": str(pem),
            "ssl.key.password": "pw",
            "sasl.username": "bob",
            "sasl.password": "pw2",
        }
    ) == {
        "security_protocol": "SSL",
        "ssl_cafile": str(pem),
        "ssl_certfile": str(pem),
        "ssl_keyfile": str(pem),
        "ssl_password": "pw",
        "sasl_plain_username": "bob",
        "sasl_plain_password": "pw2",
    }
    assert security_settings({"ssl.keystore.type": "PEM", "ssl.keystore.location": str(pem)}) == {
        "ssl_certfile": str(pem),
        "ssl_keyfile": str(pem),
    }


def test_host_name_checking_off_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "statefun.kafka_properties")
    assert security_settings({"ssl.endpoint.identification.algorithm": ""}) == {
        "ssl_check_hostname": False
    }
    assert "host names are not checked" in caplog.text


@pytest.mark.parametrize(
    ("properties", "name", "message"),
    [
        ({"security.protocol": "TLS"}, "security.protocol", "must be one of PLAINTEXT"),
        (
            {"sasl.mechanism": "OAUTHBEARER"},
            "sasl.mechanism",
            "'OAUTHBEARER' is not supported by the runtime's Kafka client",
        ),
        (
            {"ssl.truststore.location": "{pem}"},
            "ssl.truststore.location",
            "a JKS \\(the default\\) store cannot be read .*kafka-python reads PEM only",
        ),
        (
            {"ssl.keystore.location": "{pem}", "ssl.keystore.type": "PKCS12"},
            "ssl.keystore.location",
            "a PKCS12 store cannot be read",
        ),
        ({"ssl.ca.location": "/nonexistent/ca.pem"}, "ssl.ca.location", "cannot read"),
        (
            {"sasl.jaas.config": "com.sun.security.auth.module.Krb5LoginModule required;"},
            "sasl.jaas.config",
            "only the PlainLoginModule and ScramLoginModule",
        ),
        (
            {"sasl.jaas.config": 'PlainLoginModule required username="a";'},
            "sasl.jaas.config",
            "must give username",
        ),
        ({"ssl.enabled.protocols": "TLSv1.3"}, "ssl.enabled.protocols", "is not supported"),
        (
            {"ssl.endpoint.identification.algorithm": "none"},
            "ssl.endpoint.identification.algorithm",
            "must be https or empty",
        ),
    ],
)
def test_a_setting_the_client_cannot_honour_is_an_error_naming_it(
    pem: Path, properties: dict[str, str], name: str, message: str
) -> None:
    given = {k: v.format(pem=pem) for k, v in properties.items()}
    with pytest.raises(KafkaPropertyError, match=rf"^{name}: {message}") as raised:
        security_settings(given)
    assert raised.value.name == name


def test_a_properties_file_is_read_as_java_reads_it() -> None:
    text = """
# a comment
! another
security.protocol=SASL_SSL
sasl.mechanism : PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \\
    username="alice" password="secret";
"""
    assert parse_properties_file(text.splitlines()) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule "
        'required username="alice" password="secret";',
    }
    with pytest.raises(ValueError, match="line 1: 'nonsense' is not 'name=value'"):
        parse_properties_file(["nonsense"])


KAFKA_EGRESS = """
kind: io.statefun.kafka.v1/egress
spec:
  id: example/out
  address: kafka:9093
  properties:
    - security.protocol: SASL_SSL
    - sasl.mechanism: PLAIN
    - sasl.jaas.config: PlainLoginModule required username="u" password="p";
    - {extra}
"""


def test_the_module_specs_kafka_properties_pass_security_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "statefun.module_spec")
    (egress,) = parse_module_spec(KAFKA_EGRESS.format(extra="linger.ms: 5")).egresses
    assert dict(egress.security) == {  # type: ignore[union-attr]
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "field 'spec.properties': linger.ms: not honoured" in warning
    # the repr may be logged, and is the module's fingerprint: no credentials in it
    assert "password" not in repr(egress)


def test_a_kafka_property_the_client_cannot_honour_fails_the_module_spec() -> None:
    with pytest.raises(
        ModuleSpecError,
        match=r"document 1, field 'spec.properties': ssl.keystore.location: a JKS",
    ):
        parse_module_spec(KAFKA_EGRESS.format(extra="ssl.keystore.location: /etc/hostname"))
