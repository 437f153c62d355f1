"""Kafka client properties, as Kafka's (Java) and librdkafka's clients name them, turned
into the settings of kafka-python's clients: the security ones (TLS and SASL).

The Kafka ingresses and egresses of a module spec (their ``properties``) and
``statefun run --kafka-config FILE`` (a Java ``.properties`` file, what Kafka's own tools
take as ``--command-config``) name settings the Kafka way; kafka-python takes keyword
arguments. :func:`security_settings` maps one to the other:

===================================================  ========================================
Kafka property                                       kafka-python setting
===================================================  ========================================
``security.protocol``                                ``security_protocol``
``sasl.mechanism``                                   ``sasl_mechanism`` (PLAIN, SCRAM-SHA-256,
                                                     SCRAM-SHA-512, GSSAPI)
``sasl.jaas.config`` (``username="…" password="…"``  ``sasl_plain_username``,
of the Plain or Scram login module)                  ``sasl_plain_password``
``sasl.username``, ``sasl.password`` (librdkafka)    ``sasl_plain_username``, ``sasl_plain_password``
``sasl.kerberos.service.name``                       ``sasl_kerberos_service_name``
``ssl.ca.location`` (librdkafka), or                 ``ssl_cafile``
``ssl.truststore.location`` with ``ssl.truststore.type=PEM``
``ssl.certificate.location`` (librdkafka)            ``ssl_certfile``
``ssl.key.location`` (librdkafka)                    ``ssl_keyfile``
``ssl.keystore.location`` with ``ssl.keystore.type=PEM``  ``ssl_certfile`` and ``ssl_keyfile`` (one
                                                     file holding the key and its certificate)
``ssl.key.password`` (or ``ssl.keystore.password``)  ``ssl_password``
``ssl.crl.location`` (librdkafka)                    ``ssl_crlfile``
``ssl.endpoint.identification.algorithm``            ``ssl_check_hostname`` (``https``, the
                                                     default: checked; empty: not, warned)
===================================================  ========================================

kafka-python reads PEM files only: a JKS or PKCS12 trust or key store is an error saying
how to convert it, as is any other ``security.``, ``sasl.`` or ``ssl.`` property (OAUTHBEARER,
inline PEM, protocol and cipher lists): a security setting is never dropped silently. A
file named is checked to be readable, naming the property when it is not. Properties
outside those three families (``client.id``, ``isolation.level``, ...) are not security
settings: :func:`security_settings` leaves them to the caller (see :func:`other_properties`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from statefun.errors import StatefunError

log = logging.getLogger(__name__)

__all__ = [
    "KafkaPropertyError",
    "is_security_property",
    "other_properties",
    "parse_properties_file",
    "security_settings",
    "security_settings_file",
]

_SECURITY_PREFIXES = ("security.", "sasl.", "ssl.")
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI")
_FILES = {
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.crl.location": "ssl_crlfile",
}
_PASSWORD_MODULES = ("PlainLoginModule", "ScramLoginModule")
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


class KafkaPropertyError(StatefunError, ValueError):
    """A Kafka client property this runtime's Kafka client cannot honour, or a bad value;
    ``name`` is the property's."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name


def is_security_property(name: str) -> bool:
    return name.startswith(_SECURITY_PREFIXES)


def other_properties(properties: Mapping[str, str]) -> list[str]:
    """The names among ``properties`` that are not security settings."""
    return [name for name in properties if not is_security_property(name)]


def security_settings(properties: Mapping[str, str]) -> dict[str, Any]:
    """kafka-python's settings for the security properties among ``properties`` (others
    are skipped); :class:`KafkaPropertyError` for one it cannot honour."""
    props = {k: v.strip() for k, v in properties.items() if is_security_property(k)}
    settings: dict[str, Any] = {}

    def take(name: str) -> str | None:
        return props.pop(name, None)

    protocol = take("security.protocol")
    if protocol is not None:
        if protocol.upper() not in _PROTOCOLS:
            raise KafkaPropertyError(
                "security.protocol", f"must be one of {', '.join(_PROTOCOLS)}, not {protocol!r}"
            )
        settings["security_protocol"] = protocol.upper()
    mechanism = take("sasl.mechanism")
    if mechanism is not None:
        if mechanism.upper() not in _MECHANISMS:
            raise KafkaPropertyError(
                "sasl.mechanism",
                f"{mechanism!r} is not supported by the runtime's Kafka client (kafka-python); "
                f"it supports {', '.join(_MECHANISMS)}",
            )
        settings["sasl_mechanism"] = mechanism.upper()
    jaas = take("sasl.jaas.config")
    if jaas is not None:
        settings.update(_jaas_credentials(jaas))
    for name, setting in (
        ("sasl.username", "sasl_plain_username"),
        ("sasl.password", "sasl_plain_password"),
        ("sasl.kerberos.service.name", "sasl_kerberos_service_name"),
    ):
        value = take(name)
        if value is not None:
            settings[setting] = value
    for name, setting in _FILES.items():
        path = take(name)
        if path is not None:
            settings[setting] = _readable(name, path)
    _pem_store(props, "ssl.truststore", settings, ("ssl_cafile",))
    _pem_store(props, "ssl.keystore", settings, ("ssl_certfile", "ssl_keyfile"))
    for name in ("ssl.key.password", "ssl.keystore.password"):
        value = take(name)
        if value is not None:
            settings.setdefault("ssl_password", value)
    algorithm = take("ssl.endpoint.identification.algorithm")
    if algorithm is not None:
        if algorithm.lower() not in ("", "https"):
            raise KafkaPropertyError(
                "ssl.endpoint.identification.algorithm",
                f"must be https or empty, not {algorithm!r}",
            )
        settings["ssl_check_hostname"] = algorithm.lower() == "https"
        if not settings["ssl_check_hostname"]:
            log.warning(
                "ssl.endpoint.identification.algorithm is empty: the Kafka brokers' host "
                "names are not checked against their certificates"
            )
    for name in props:
        raise KafkaPropertyError(
            name,
            "is not supported by the runtime's Kafka client (kafka-python); see "
            "statefun.kafka_properties for the security properties it honours",
        )
    return settings


def _jaas_credentials(jaas: str) -> dict[str, str]:
    """The user name and password of a Plain or Scram login module's JAAS line."""
    if not any(module in jaas for module in _PASSWORD_MODULES):
        raise KafkaPropertyError(
            "sasl.jaas.config",
            "only the PlainLoginModule and ScramLoginModule (username and password) are "
            "supported; for GSSAPI kafka-python uses the system's Kerberos ticket",
        )
    options = {k: re.sub(r"\\(.)", r"\1", v) for k, v in _JAAS_OPTION.findall(jaas)}
    if "username" not in options or "password" not in options:
        raise KafkaPropertyError("sasl.jaas.config", 'must give username="..." and password="..."')
    return {"sasl_plain_username": options["username"], "sasl_plain_password": options["password"]}


def _pem_store(
    props: dict[str, str], store: str, settings: dict[str, Any], into: tuple[str, ...]
) -> None:
    """``<store>.location`` and ``<store>.type``: a PEM file, set as each of ``into``."""
    location, kind = props.pop(f"{store}.location", None), props.pop(f"{store}.type", None)
    if location is None:
        if kind is not None and kind.upper() != "PEM":
            raise KafkaPropertyError(f"{store}.type", _not_pem(kind))
        return
    if (kind or "JKS").upper() != "PEM":
        raise KafkaPropertyError(f"{store}.location", _not_pem(kind or "JKS (the default)"))
    path = _readable(f"{store}.location", location)
    for setting in into:
        settings[setting] = path


def _not_pem(kind: str) -> str:
    return (
        f"a {kind} store cannot be read by the runtime's Kafka client (kafka-python reads "
        "PEM only): convert it (keytool -exportcert -rfc, or openssl pkcs12 -nodes) and "
        "set the type to PEM, or give ssl.ca.location / ssl.certificate.location / "
        "ssl.key.location"
    )


def _readable(name: str, path: str) -> str:
    p = Path(path).expanduser()
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise KafkaPropertyError(name, f"cannot read {path}: {e.strerror}") from None
    return str(p)


def parse_properties_file(lines: Iterable[str]) -> dict[str, str]:
    """A Java ``.properties`` file's entries: ``name=value`` or ``name: value`` per line,
    ``#`` and ``!`` comments, a trailing backslash continuing a line."""
    entries: dict[str, str] = {}
    pending = ""
    for number, raw in enumerate(lines, start=1):
        line = pending + raw.strip() if pending else raw.strip()
        if not pending and (not line or line.startswith(("#", "!"))):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        pending = ""
        match = re.match(r"^([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if not match:
            raise ValueError(f"line {number}: {line!r} is not 'name=value'")
        entries[match.group(1)] = match.group(2)
    return entries


def security_settings_file(path: Path) -> dict[str, Any]:
    """kafka-python's settings for a ``.properties`` file of security settings only (any
    other property is an error: the runtime configures its Kafka clients itself); every
    error is a ValueError naming the file."""
    try:
        properties = parse_properties_file(path.read_text(encoding="utf-8").splitlines())
        others = other_properties(properties)
        if others:
            raise KafkaPropertyError(
                others[0],
                "is not read: the runtime configures its Kafka clients itself; this file "
                "gives security.*, sasl.* and ssl.* settings only",
            )
        return security_settings(properties)
    except OSError as e:
        raise ValueError(f"{path}: cannot be read: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
