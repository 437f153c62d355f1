"""The module spec: which endpoints serve which function types, and which egresses exist.

Reads StateFun's ``module.yaml`` format (several YAML documents, each ``kind`` and
``spec``) into a typed :class:`ModuleSpec`. Every problem is a
:class:`~statefun.errors.ModuleSpecError` naming the document and the field; an unknown
kind or field is an error, never ignored. A StateFun field this runtime reads but does
not honour is logged as a warning (logger ``statefun.module_spec``) naming the document
and the field; one it cannot honour safely is an error.

String values may name environment variables, as Docker Compose files do:
``${NAME}`` (an error if unset) or ``${NAME:-default}``; ``$${`` is a literal ``${``.
A file without ``${`` reads exactly as StateFun reads it.

Kinds understood:

* ``io.statefun.endpoints.v2/http`` - ``functions`` (``ns/name`` or ``ns/*``),
  ``urlPathTemplate`` (``{function.name}`` is replaced by the type's name),
  ``maxNumBatchRequests``, ``transport: {type, timeouts: {call, connect, read, write}}``
  (``call`` is the total deadline of each attempt; the ``async`` transport's ``call``,
  ``connect`` and ``payload_max_bytes``, the largest answer taken, are read too, and its
  TLS settings ``trust_cacerts``, ``client_cert``, ``client_key``, ``client_key_password``
  and our ``insecure_skip_verify`` (see :class:`EndpointTls`); its pool settings are
  warned about) and our ``protocol``:
  ``native``, ``statefun`` (StateFun's protobuf protocol) or ``auto`` (the default: the
  runtime asks each URL once which one it speaks), and our ``signing``: ``{keyFile: PATH}``
  (a PEM file; a relative path is read from the module spec's folder) or ``{key: PEM}``
  (e.g. ``${STATEFUN_SIGNING_KEY}``), the Ed25519 private key the runtime signs each
  request to the endpoint with (see ``statefun.signing``); read when the spec is. An
  empty value (``keyFile: ${NAME:-}`` with NAME unset) signs nothing, so one spec serves
  a deployment with a key and one without.
* ``io.statefun.endpoints.v1/http`` - StateFun's older endpoint kind: the same, with
  ``timeouts`` directly under ``spec`` and ``maxRetries`` (warned about: retries are
  bounded by the call timeout instead).
* ``statefun.v1/egress`` - ``id`` and ``deliverySemantic``: an egress kept in the
  runtime's log and readable over the ingress API (``GET /v1/egress/{namespace}/{name}``).
* ``io.statefun.kafka.v1/ingress`` - ``id``, ``address``, ``consumerGroupId``,
  ``startupPosition`` (``group-offsets``, ``earliest``, ``latest``, ``specific-offsets``
  with ``offsets: [{"topic/partition": offset}]``, ``date`` with ``date: "yyyy-MM-dd
  HH:mm:ss.SSS Z"``), ``autoOffsetResetPosition``, ``topics: [{topic, valueType,
  targets}]`` and ``properties`` (Kafka client settings: the security ones, TLS and SASL,
  are passed to the Kafka client, see ``statefun.kafka_properties``; the others are
  warned about).
* ``io.statefun.kafka.v1/egress`` - ``id``, ``address``, ``deliverySemantic: {type,
  transactionTimeout}`` and ``properties`` (as the ingress's).
* ``io.statefun.playground.v1/ingress`` and ``io.statefun.playground.v1/egress`` - the
  StateFun playground's, so its examples run unchanged: the runtime's own HTTP ingress
  stands in for the playground ingress, and the playground egress becomes an egress kept
  in the runtime's log (``io.statefun.playground/egress``); the ``port`` and ``topics``
  they name are warned about.
* ``statefun.v1/failure-policy`` - ``functions`` (``ns/name`` or ``ns/*``), ``policy``
  (``dead-letter``, the default, ``retry`` or ``fail``) and ``deadLetterAfter`` (a
  duration, for ``dead-letter``); see :class:`FailurePolicy`. ``maxRollbacks``, read by
  earlier versions, is refused with an error saying what replaced it.

As in StateFun, a Kafka ``address`` may be left out; the runtime then uses its own
Kafka cluster (``statefun run --kafka``). An egress's ``deliverySemantic`` is
``exactly-once`` unless it says ``at-least-once`` (or ``none``): its records become
visible when the checkpoint of the work that produced them commits; an exactly-once
Kafka egress publishes them in Kafka transactions, ``transactionTimeout`` their timeout.
(StateFun's Kafka egress defaults to at-least-once; ours holds records back unless told
not to.)
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from statefun.address import TypeName
from statefun.errors import InvalidNameError, ModuleSpecError, StatefunError
from statefun.kafka_properties import KafkaPropertyError, other_properties, security_settings
from statefun.signing import load_private_key, private_key_from_pem

log = logging.getLogger(__name__)

__all__ = [
    "ENDPOINT_KIND",
    "ENDPOINT_V1_KIND",
    "FAILURE_POLICY_KIND",
    "KAFKA_EGRESS_KIND",
    "KAFKA_INGRESS_KIND",
    "LOG_EGRESS_KIND",
    "PLAYGROUND_EGRESS_ID",
    "PLAYGROUND_EGRESS_KIND",
    "PLAYGROUND_INGRESS_KIND",
    "POLICIES",
    "PROTOCOLS",
    "EndpointTls",
    "FailurePolicy",
    "FunctionTypePattern",
    "HttpEndpoint",
    "HttpTimeouts",
    "KafkaEgress",
    "KafkaIngress",
    "KafkaIngressTopic",
    "LogEgress",
    "ModuleSpec",
    "StartupPosition",
    "TlsSettingError",
    "load_module_spec",
    "parse_duration",
    "parse_module_spec",
]

ENDPOINT_KIND = "io.statefun.endpoints.v2/http"
ENDPOINT_V1_KIND = "io.statefun.endpoints.v1/http"
PLAYGROUND_INGRESS_KIND = "io.statefun.playground.v1/ingress"
PLAYGROUND_EGRESS_KIND = "io.statefun.playground.v1/egress"
PLAYGROUND_EGRESS_ID = TypeName("io.statefun.playground", "egress")
LOG_EGRESS_KIND = "statefun.v1/egress"
KAFKA_INGRESS_KIND = "io.statefun.kafka.v1/ingress"
KAFKA_EGRESS_KIND = "io.statefun.kafka.v1/egress"
FAILURE_POLICY_KIND = "statefun.v1/failure-policy"
_KINDS = (
    ENDPOINT_KIND,
    ENDPOINT_V1_KIND,
    LOG_EGRESS_KIND,
    KAFKA_INGRESS_KIND,
    KAFKA_EGRESS_KIND,
    FAILURE_POLICY_KIND,
    PLAYGROUND_INGRESS_KIND,
    PLAYGROUND_EGRESS_KIND,
)
_STARTUP_POSITIONS = ("group-offsets", "earliest", "latest", "specific-offsets", "date")
_DELIVERY_SEMANTICS = ("at-least-once", "exactly-once", "none")
_STARTUP_DATE = "%Y-%m-%d %H:%M:%S.%f %z"
_ASYNC_TRANSPORT = "io.statefun.transports.v1/async"
_TRANSPORT_TYPES = (_ASYNC_TRANSPORT, "io.statefun.transports.v1/okhttp")
_ASYNC_TRANSPORT_IGNORED = ("pool_ttl", "pool_size")
_ASYNC_TRANSPORT_TLS = ("trust_cacerts", "client_cert", "client_key", "client_key_password")
_SKIP_VERIFY = "insecure_skip_verify"
PROTOCOLS = ("native", "statefun", "auto")
"""``HttpEndpoint.protocol`` values: our native protocol, StateFun's, or ask the endpoint."""
DEFAULT_MAX_ANSWER_BYTES = 32 << 20
"""StateFun's default ``payload_max_bytes``: the largest answer taken from an endpoint."""
POLICIES = ("dead-letter", "retry", "fail")
"""``FailurePolicy.policy`` values."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]*)\s*$")
_UNIT_SECONDS = {
    **dict.fromkeys(("", "ms", "milli", "millis", "millisecond", "milliseconds"), 0.001),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}


def parse_duration(value: str | int | float) -> float:
    """A duration in seconds from Flink's notation (``10s``, ``1 min``, ``500ms``; a bare
    number is milliseconds)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = value / 1000.0
    else:
        match = _DURATION.match(str(value))
        if not match or match.group(2).lower() not in _UNIT_SECONDS:
            raise ValueError(f"{value!r} is not a duration like '10s', '500ms' or '1 min'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    return seconds


@dataclass(frozen=True, slots=True)
class FunctionTypePattern:
    """``ns/name`` (one function type) or ``ns/*`` (every type of a namespace)."""

    namespace: str
    name: str | None

    @classmethod
    def parse(cls, text: str) -> FunctionTypePattern:
        tn = TypeName.parse(text)
        if "/" in tn.namespace:
            raise InvalidNameError(f"function type namespace of {text!r} contains '/'")
        return cls(tn.namespace, None if tn.name == "*" else tn.name)

    def matches(self, function_type: TypeName) -> bool:
        return function_type.namespace == self.namespace and self.name in (None, function_type.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name or '*'}"


@dataclass(frozen=True, slots=True)
class HttpTimeouts:
    """Seconds. ``call`` bounds a whole call, retries included (StateFun's call timeout)."""

    call: float = 60.0
    connect: float = 10.0
    read: float = 10.0
    write: float = 10.0


class TlsSettingError(StatefunError, ValueError):
    """A TLS setting of an endpoint cannot be used; ``field`` names the transport field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class EndpointTls:
    """How the runtime talks TLS to an ``https://`` endpoint (the ``async`` transport's
    ``trust_cacerts``, ``client_cert``, ``client_key``, ``client_key_password`` and our
    ``insecure_skip_verify``).

    The endpoint's certificate and host name are always checked, against the CA
    certificates of ``trust_cacerts`` (PEM, one or more) or else the system's trust
    store, unless ``verify`` is False (``insecure_skip_verify: true``, warned about).
    ``client_cert`` (PEM, the certificate chain, or the certificate and key in one file)
    and ``client_key`` (PEM, PKCS#8 or traditional, encrypted when ``client_key_password``
    names the file holding its password) are presented for mutual TLS.
    """

    trust_cacerts: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    client_key_password: Path | None = None
    verify: bool = True
    context: ssl.SSLContext = field(init=False, compare=False, repr=False)
    """The client context of these settings, built (the files read) when the settings are
    made, so a file that cannot be used is found with the module spec."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "context", self._ssl_context())

    def _ssl_context(self) -> ssl.SSLContext:
        """:class:`TlsSettingError` naming the field whose file cannot be used."""
        cafile = str(self.trust_cacerts) if self.trust_cacerts is not None else None
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (ssl.SSLError, OSError) as e:
            raise TlsSettingError(
                "trust_cacerts", f"{cafile} holds no usable PEM CA certificate: {e}"
            ) from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            password: str | Callable[[], str] = _no_password
            if self.client_key_password is not None:
                password = _read_text(self.client_key_password, "client_key_password")
                password = password.rstrip("\r\n")
            try:
                context.load_cert_chain(self.client_cert, self.client_key, password=password)
            except (ssl.SSLError, OSError) as e:
                raise self._cert_chain_error(e) from None
        return context

    def _cert_chain_error(self, e: Exception) -> TlsSettingError:
        """Which field a failure to load the client certificate and key points at."""
        reason = str(e)
        key = self.client_key or self.client_cert
        if self.client_key_password is not None and key is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if "ENCRYPTED" in key.read_text(encoding="utf-8"):
                    return TlsSettingError(
                        "client_key_password", f"does not decrypt client_key: {reason}"
                    )
        if "KEY_VALUES_MISMATCH" in reason:
            return TlsSettingError("client_key", f"is not the key of client_cert: {reason}")
        return TlsSettingError(
            "client_cert",
            f"client_cert and client_key are not a PEM certificate and key: {reason}",
        )


def _no_password() -> str:
    """Asked for when the client key is encrypted and no password was given (OpenSSL would
    otherwise prompt on the terminal)."""
    raise TlsSettingError(
        "client_key_password",
        "is required: client_key is encrypted; name the file holding its password",
    )


def _read_text(path: Path, field: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TlsSettingError(field, f"cannot read {path}: {e}") from None


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """Where the functions of ``functions`` are served, and how to call them.

    ``protocol``: ``native`` (msgpack, several addresses per request), ``statefun``
    (StateFun's protobuf request-reply protocol, what the official SDK speaks) or
    ``auto``: the runtime negotiates once per URL (see ``runtime.function_client``).
    """

    functions: FunctionTypePattern
    url_path_template: str
    max_num_batch_requests: int = 1000
    timeouts: HttpTimeouts = HttpTimeouts()
    protocol: str = "auto"
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    """The largest answer taken from the endpoint (StateFun's ``payload_max_bytes``); a
    larger one fails the attempt."""
    tls: EndpointTls | None = None
    """TLS settings of an ``https://`` endpoint; None: the defaults, ``EndpointTls()``
    (the system's trust store, host names checked, no client certificate)."""
    signing_key: Ed25519PrivateKey | None = field(default=None, repr=False, compare=False)
    """The key every request to the endpoint is signed with (None: unsigned)."""

    def url_for(self, function_type: TypeName) -> str:
        return self.url_path_template.replace("{function.name}", function_type.name)


@dataclass(frozen=True, slots=True)
class LogEgress:
    """An egress whose records the runtime keeps in its own log."""

    id: TypeName
    delivery_semantic: str = "exactly-once"


@dataclass(frozen=True, slots=True)
class KafkaIngressTopic:
    """One topic of a Kafka ingress: each record becomes a ``value_type`` message to every
    target function type, at the id given by the record's key."""

    topic: str
    value_type: str
    targets: tuple[TypeName, ...]


@dataclass(frozen=True, slots=True)
class StartupPosition:
    """Where a Kafka ingress starts reading when its consumer group has no offsets."""

    kind: str = "latest"
    offsets: tuple[tuple[str, int, int], ...] = ()
    """(topic, partition, offset) for ``specific-offsets``."""
    date_ms: int | None = None
    """Milliseconds since the epoch for ``date``."""


@dataclass(frozen=True, slots=True)
class KafkaIngress:
    id: TypeName
    address: str | None
    topics: tuple[KafkaIngressTopic, ...]
    consumer_group_id: str | None = None
    startup_position: StartupPosition = StartupPosition()
    auto_offset_reset: str = "latest"
    properties: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """The Kafka client properties as given; like ``security``, kept out of the repr: they
    may hold passwords, and each process may have credentials of its own."""
    security: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    """kafka-python's settings for the security ``properties`` (TLS, SASL)."""


@dataclass(frozen=True, slots=True)
class KafkaEgress:
    """An egress producing ``KafkaProducerRecord`` s to a Kafka cluster."""

    id: TypeName
    address: str | None
    delivery_semantic: str = "exactly-once"
    transaction_timeout: float | None = None
    properties: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """The Kafka client properties as given; like ``security``, kept out of the repr: they
    may hold passwords, and each process may have credentials of its own."""
    security: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    """kafka-python's settings for the security ``properties`` (TLS, SASL)."""


Egress = LogEgress | KafkaEgress


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """What to do when a call for an address of a function type fails (the function raised,
    its answer broke the protocol or was refused, or the endpoint did not answer).

    A failed attempt applies nothing. ``dead-letter`` (the default) and ``retry`` contain
    the failure: the address is held and retried on its own, one message at a time, while
    every other address goes on. Under ``dead-letter`` a message that keeps failing alone
    while other messages of its type succeed is parked in the dead letters after
    ``dead_letter_after`` seconds; ``retry`` never parks. A type whose every recent attempt
    fails (an outage, a broken deploy) parks nothing under either. ``fail`` is StateFun's
    strict behaviour: once a call's budget (the endpoint's call timeout) runs out, or an
    answer breaks the protocol, the whole system rolls back to the last checkpoint and
    replays, retrying forever.
    """

    functions: FunctionTypePattern
    policy: str = "dead-letter"
    dead_letter_after: float = 30.0


DEFAULT_POLICY = FailurePolicy(FunctionTypePattern("*", None))


class _ForFunctions(Protocol):
    @property
    def functions(self) -> FunctionTypePattern: ...


_Item = TypeVar("_Item", bound=_ForFunctions)


def _most_specific(items: Iterable[_Item], function_type: TypeName) -> _Item | None:
    """The first item whose pattern names ``function_type`` exactly, else the last whose
    ``ns/*`` pattern matches it, else None."""
    wildcard = None
    for item in items:
        if item.functions.matches(function_type):
            if item.functions.name is not None:
                return item
            wildcard = item
    return wildcard


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    endpoints: tuple[HttpEndpoint, ...] = ()
    egresses: tuple[Egress, ...] = ()
    ingresses: tuple[KafkaIngress, ...] = ()
    failure_policies: tuple[FailurePolicy, ...] = ()

    def failure_policy_for(self, function_type: TypeName) -> FailurePolicy:
        """The policy of ``function_type``: an exact pattern wins over ``ns/*``."""
        policy = _most_specific(self.failure_policies, function_type)
        return DEFAULT_POLICY if policy is None else policy

    def endpoint_for(self, function_type: TypeName) -> HttpEndpoint | None:
        """The endpoint serving ``function_type``: an exact pattern wins over ``ns/*``."""
        return _most_specific(self.endpoints, function_type)

    def egress(self, egress_id: TypeName) -> Egress | None:
        return next((e for e in self.egresses if e.id == egress_id), None)


# --- parsing -----------------------------------------------------------------------------

V = TypeVar("V")


class _Fields:
    """One mapping of a document being read: takes fields by name, rejects leftovers."""

    def __init__(self, raw: Any, source: str, document: int, path: str):
        self.source, self.document, self.path = source, document, path
        if not isinstance(raw, dict):
            raise self.error(f"must be a mapping, got {type(raw).__name__}", path)
        self.raw = dict(raw)
        self.known: set[str] = set()
        """The field names asked for: what a leftover field may be a misspelling of."""

    def field_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, message: str, field: str | None) -> ModuleSpecError:
        return ModuleSpecError(message, source=self.source, document=self.document, field=field)

    def missing(self, name: str) -> ModuleSpecError:
        """The error for a required field that is absent, naming a given field that looks
        like a misspelling of it."""
        close = difflib.get_close_matches(name, [str(k) for k in self.raw], n=1, cutoff=0.6)
        hint = f" ('{close[0]}' is given: a misspelling?)" if close else ""
        return self.error(f"is required{hint}", self.field_path(name))

    def has(self, name: str) -> bool:
        """Whether the field is given (``name`` becomes a known field of this mapping)."""
        self.known.add(name)
        return name in self.raw

    def take(self, name: str, kind: type[V], default: V | None = None, required: bool = False) -> V:
        if not self.has(name):
            if required:
                raise self.missing(name)
            return default  # type: ignore[return-value]
        value = self.raw.pop(name)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        raise self.error(
            f"must be {kind.__name__}, got {type(value).__name__} {value!r}", self.field_path(name)
        )

    def sequence(self, name: str, required: bool = False) -> list[tuple[str, Any]]:
        """The items of a list field, each with its own dotted path."""
        items = self.take(name, list, [], required=required)
        path = self.field_path(name)
        return [(f"{path}[{i}]", item) for i, item in enumerate(items)]

    def mapping(self, raw: Any, path: str) -> _Fields:
        return _Fields(raw, self.source, self.document, path)

    def nested(self, name: str) -> _Fields | None:
        if not self.has(name):
            return None
        return _Fields(self.raw.pop(name), self.source, self.document, self.field_path(name))

    def done(self) -> None:
        """Refuse a field nothing asked for, naming the known field it most resembles."""
        for name in self.raw:
            close = difflib.get_close_matches(str(name), sorted(self.known), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            known = ", ".join(sorted(self.known)) or "none"
            raise self.error(
                f"is not a known field{hint} (known here: {known})", self.field_path(str(name))
            )

    def warn(self, message: str, field: str) -> None:
        """Log a warning about ``field`` (a path): read but not honoured, or unsafe."""
        log.warning("%s, document %d, field '%s': %s", self.source, self.document, field, message)


def _duration(fields: _Fields, name: str, default: float) -> float:
    """The field as seconds, or ``default`` (already seconds) when it is absent."""
    if not fields.has(name):
        return default
    raw = fields.take(name, object)
    try:
        return parse_duration(raw)  # type: ignore[arg-type]
    except ValueError as e:
        raise fields.error(str(e), fields.field_path(name)) from None


def _timeouts(fields: _Fields | None, timeouts: HttpTimeouts) -> HttpTimeouts:
    """``timeouts: {call, connect, read, write}``, each defaulting to ``timeouts``'."""
    if fields is None:
        return timeouts
    timeouts = HttpTimeouts(
        call=_duration(fields, "call", timeouts.call),
        connect=_duration(fields, "connect", timeouts.connect),
        read=_duration(fields, "read", timeouts.read),
        write=_duration(fields, "write", timeouts.write),
    )
    fields.done()
    return timeouts


def _async_transport(transport: _Fields, timeouts: HttpTimeouts) -> HttpTimeouts:
    """StateFun's ``io.statefun.transports.v1/async`` settings beside ``timeouts``."""
    for name in _ASYNC_TRANSPORT_IGNORED:
        if transport.has(name):
            transport.take(name, object)
            transport.warn(
                "is not honoured: the runtime's HTTP client keeps its own connection pool "
                "(max_concurrent_requests per endpoint)",
                transport.field_path(name),
            )
    return HttpTimeouts(
        call=_duration(transport, "call", timeouts.call),
        connect=_duration(transport, "connect", timeouts.connect),
        read=timeouts.read,
        write=timeouts.write,
    )


def _endpoint_tls(transport: _Fields, url: str, base: Path) -> EndpointTls | None:
    """The async transport's TLS fields (see :class:`EndpointTls`), their files checked."""
    given = [name for name in (*_ASYNC_TRANSPORT_TLS, _SKIP_VERIFY) if transport.has(name)]
    if not given:
        return None
    if not url.startswith("https://"):
        raise transport.error(
            f"applies to https:// endpoints only, not {url!r}", transport.field_path(given[0])
        )
    trust, cert, key, password = (_tls_file(transport, name, base) for name in _ASYNC_TRANSPORT_TLS)
    skip = transport.take(_SKIP_VERIFY, bool, False)
    if key is not None and cert is None:
        raise transport.error("needs client_cert", transport.field_path("client_key"))
    if password is not None and cert is None:
        raise transport.error("needs client_cert", transport.field_path("client_key_password"))
    if skip and trust is not None:
        raise transport.error(
            "cannot be given with insecure_skip_verify: nothing is verified",
            transport.field_path("trust_cacerts"),
        )
    try:
        tls = EndpointTls(trust, cert, key, password, verify=not skip)
    except TlsSettingError as e:
        raise transport.error(str(e).partition(": ")[2], transport.field_path(e.field)) from None
    if skip:
        transport.warn(
            f"the certificate and host name of {url} are NOT checked: anyone on the path "
            "can read and change the calls and their state",
            transport.field_path(_SKIP_VERIFY),
        )
    return tls


def _tls_file(transport: _Fields, name: str, base: Path) -> Path | None:
    """A file named as StateFun names it: a path (``~`` expanded; a relative one is read
    from ``base``, the module spec's folder, as every file the spec names) or a ``file:``
    URL; a ``classpath:`` resource is refused (no Java here)."""
    if not transport.has(name):
        return None
    raw = transport.take(name, str)
    where = transport.field_path(name)
    if raw.startswith("classpath:"):
        raise transport.error(
            f"{raw!r} names a Java classpath resource; this runtime has no classpath: give "
            "a file path (absolute, relative to the module spec's folder, ~/... or file:...)",
            where,
        )
    text = raw
    if raw.startswith("file:"):
        parsed = urlparse(raw)
        if parsed.netloc not in ("", "localhost"):
            raise transport.error(f"{raw!r} names a file on another host", where)
        text = url2pathname(parsed.path)
    path = base / Path(text).expanduser()
    if not path.is_file():
        raise transport.error(f"{raw!r} is not a file", where)
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise transport.error(f"{raw!r} cannot be read: {e.strerror}", where) from None
    return path


def _payload_max_bytes(transport: _Fields) -> int:
    raw = transport.take("payload_max_bytes", object, DEFAULT_MAX_ANSWER_BYTES)
    try:
        value = _bytes(raw)
    except ValueError as e:
        raise transport.error(str(e), transport.field_path("payload_max_bytes")) from None
    if value < 1:
        raise transport.error("must be at least 1 byte", transport.field_path("payload_max_bytes"))
    return value


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?i?[bB]?)\s*$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _bytes(value: object) -> int:
    """A size: an integer number of bytes, or a string such as ``32MB`` or ``512 KiB``
    (binary multiples, as StateFun reads them)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size in bytes, got {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"must be a size such as 32MB or 1048576, got {value!r}")
    unit = match.group(2)[:1].lower()
    return int(match.group(1)) * _SIZE_UNITS[unit if unit != "b" else ""]


def _endpoint(spec: _Fields, kind: str, base: Path) -> HttpEndpoint:
    functions = spec.take("functions", str, required=True)
    try:
        pattern = FunctionTypePattern.parse(functions)
    except InvalidNameError as e:
        raise spec.error(str(e), spec.field_path("functions")) from None
    template = spec.take("urlPathTemplate", str, required=True)
    if not template.startswith(("http://", "https://")):
        raise spec.error(
            f"must be an http:// or https:// URL, got {template!r}",
            spec.field_path("urlPathTemplate"),
        )
    batch = spec.take("maxNumBatchRequests", int, 1000)
    if batch < 1:
        raise spec.error("must be at least 1", spec.field_path("maxNumBatchRequests"))
    protocol = spec.take("protocol", str, "auto")
    if protocol not in PROTOCOLS:
        raise spec.error(f"must be one of {', '.join(PROTOCOLS)}", spec.field_path("protocol"))
    max_answer = DEFAULT_MAX_ANSWER_BYTES
    tls = None
    if kind == ENDPOINT_V1_KIND:
        if spec.has("maxRetries"):
            spec.take("maxRetries", int)
            spec.warn(
                "is not honoured: a failed call is retried with backoff until the call "
                "timeout (timeouts.call) runs out",
                spec.field_path("maxRetries"),
            )
        timeouts = _timeouts(spec.nested("timeouts"), HttpTimeouts())
    else:
        timeouts = HttpTimeouts()
        transport = spec.nested("transport")
        if transport is not None:
            transport_type = transport.take("type", str, _ASYNC_TRANSPORT)
            if transport_type not in _TRANSPORT_TYPES:
                raise transport.error(
                    f"must be one of {', '.join(_TRANSPORT_TYPES)}", transport.field_path("type")
                )
            timeouts = _timeouts(transport.nested("timeouts"), timeouts)
            if transport_type == _ASYNC_TRANSPORT:
                timeouts = _async_transport(transport, timeouts)
                max_answer = _payload_max_bytes(transport)
                tls = _endpoint_tls(transport, template, base)
            transport.done()
    signing_key = _signing_key(spec.nested("signing"), base)
    spec.done()
    return HttpEndpoint(pattern, template, batch, timeouts, protocol, max_answer, tls, signing_key)


def _signing_key(signing: _Fields | None, base: Path) -> Ed25519PrivateKey | None:
    """``signing: {keyFile: PATH}`` or ``{key: PEM}``: the endpoint's private key."""
    if signing is None:
        return None
    given = [name for name in ("keyFile", "key") if signing.has(name)]
    if len(given) != 1:
        raise signing.error("must give exactly one of keyFile and key", signing.path)
    name = given[0]
    value = signing.take(name, str)
    signing.done()
    if not value:
        # What ``${NAME:-}`` gives when NAME is unset: the spec signs where a key is
        # configured (Compose) and runs unsigned where none is (the example's demo).
        log.info(
            "%s, document %d, field '%s' is empty: calls to the endpoint are not signed",
            signing.source,
            signing.document,
            signing.field_path(name),
        )
        return None
    path = base / value if name == "keyFile" else None
    try:
        if path is None:
            return private_key_from_pem(value.encode("utf-8"))
        key = load_private_key(path)
    except ValueError as e:
        where = "" if path is None else f"{path} "
        raise signing.error(f"{where}{e}", signing.field_path(name)) from None
    if path.stat().st_mode & 0o077:
        signing.warn(
            f"{path} may be read by others than its owner: chmod 600 it", signing.field_path(name)
        )
    return key


def _delivery(spec: _Fields) -> tuple[str, float | None]:
    """``deliverySemantic: {type, transactionTimeout}`` (default exactly-once)."""
    semantic, timeout = "exactly-once", None
    delivery = spec.nested("deliverySemantic")
    if delivery is not None:
        semantic = delivery.take("type", str, required=True)
        if semantic not in _DELIVERY_SEMANTICS:
            raise delivery.error(
                f"must be one of {', '.join(_DELIVERY_SEMANTICS)}", delivery.field_path("type")
            )
        for name in ("transactionTimeoutMillis", "transactionTimeout"):
            if delivery.has(name):
                path = delivery.field_path(name)
                raw = delivery.take(name, object)
                try:
                    timeout = parse_duration(raw)  # type: ignore[arg-type]
                except ValueError as e:
                    raise delivery.error(str(e), path) from None
                if timeout <= 0:
                    raise delivery.error("must be a positive duration", path)
        delivery.done()
    return semantic, timeout


def _log_egress(spec: _Fields) -> LogEgress:
    raw = spec.take("id", str, required=True)
    try:
        egress_id = TypeName.parse(raw)
    except InvalidNameError as e:
        raise spec.error(str(e), spec.field_path("id")) from None
    semantic, _ = _delivery(spec)
    spec.done()
    return LogEgress(egress_id, semantic)


_VARIABLE = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(
    raw: Any, environ: Mapping[str, str], source: str, document: int, path: str
) -> Any:
    """``raw`` with ``${NAME}`` / ``${NAME:-default}`` in its strings replaced from ``environ``."""
    if isinstance(raw, dict):
        return {
            k: _interpolate(v, environ, source, document, f"{path}.{k}" if path else str(k))
            for k, v in raw.items()
        }
    if isinstance(raw, list):
        return [
            _interpolate(v, environ, source, document, f"{path}[{i}]") for i, v in enumerate(raw)
        ]
    if not isinstance(raw, str) or "${" not in raw:
        return raw

    def substitute(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        value = environ.get(name, default)
        if value is None:
            raise ModuleSpecError(
                f"environment variable {name} is not set (write ${{{name}:-default}} for a default)",
                source=source,
                document=document,
                field=path,
            )
        return value

    return _VARIABLE.sub(substitute, raw)


def _typename(fields: _Fields, raw: Any, path: str) -> TypeName:
    if not isinstance(raw, str):
        raise fields.error(f"must be a type name 'namespace/name', got {raw!r}", path)
    try:
        return TypeName.parse(raw)
    except InvalidNameError as e:
        raise fields.error(str(e), path) from None


def _properties(
    spec: _Fields,
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, Any], ...]]:
    """StateFun's ``properties`` (a list of one-entry mappings, or one mapping), and the
    Kafka client settings of its security properties (``statefun.kafka_properties``)."""
    if not spec.has("properties"):
        return (), ()
    raw = spec.raw.pop("properties")
    entries = [raw] if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise spec.error("must be a list of 'name: value' entries", spec.field_path("properties"))
    properties = tuple((str(k), str(v)) for entry in entries for k, v in entry.items())
    try:
        security = tuple(security_settings(dict(properties)).items())
    except KafkaPropertyError as e:
        raise spec.error(str(e), spec.field_path("properties")) from None
    others = other_properties(dict(properties))
    if others:
        spec.warn(
            f"{', '.join(others)}: not honoured, the runtime configures its Kafka clients "
            "itself (only security.*, sasl.* and ssl.* settings are passed through)",
            spec.field_path("properties"),
        )
    return properties, security


def _address(spec: _Fields) -> str | None:
    address = spec.take("address", str, None)
    if address is not None and not address.strip():
        raise spec.error("must not be empty", spec.field_path("address"))
    return address


def _startup_position(spec: _Fields) -> StartupPosition:
    fields = spec.nested("startupPosition")
    if fields is None:
        return StartupPosition()
    kind = fields.take("type", str, required=True)
    if kind not in _STARTUP_POSITIONS:
        raise fields.error(
            f"must be one of {', '.join(_STARTUP_POSITIONS)}", fields.field_path("type")
        )
    offsets: list[tuple[str, int, int]] = []
    date_ms = None
    if kind == "specific-offsets":
        for path, entry in fields.sequence("offsets", required=True):
            if not isinstance(entry, dict) or len(entry) != 1:
                raise fields.error("must be one 'topic/partition: offset' entry", path)
            ((where, offset),) = entry.items()
            topic, _, partition = str(where).rpartition("/")
            if not topic or not partition.isdigit() or not isinstance(offset, int) or offset < 0:
                raise fields.error(f"{where!r}: {offset!r} is not 'topic/partition: offset'", path)
            offsets.append((topic, int(partition), offset))
    elif kind == "date":
        raw = fields.take("date", str, required=True)
        try:
            moment = datetime.strptime(raw, _STARTUP_DATE)
        except ValueError:
            raise fields.error(
                f"{raw!r} is not a date like '2024-01-31 12:00:00.000 +0000'",
                fields.field_path("date"),
            ) from None
        date_ms = int(moment.timestamp() * 1000)
    fields.done()
    return StartupPosition(kind, tuple(offsets), date_ms)


def _kafka_ingress(spec: _Fields) -> KafkaIngress:
    ingress_id = _typename(spec, spec.take("id", str, required=True), spec.field_path("id"))
    address = _address(spec)
    group = spec.take("consumerGroupId", str, None)
    reset = spec.take("autoOffsetResetPosition", str, "latest").lower()
    if reset not in ("latest", "earliest"):
        raise spec.error("must be latest or earliest", spec.field_path("autoOffsetResetPosition"))
    startup = _startup_position(spec)
    topics = []
    for path, raw in spec.sequence("topics", required=True):
        fields = spec.mapping(raw, path)
        topic = fields.take("topic", str, required=True)
        value_type = fields.take("valueType", str, required=True)
        _typename(fields, value_type, fields.field_path("valueType"))
        targets = tuple(
            _typename(fields, target, target_path)
            for target_path, target in fields.sequence("targets", required=True)
        )
        if not targets:
            raise fields.error("must name at least one function type", fields.field_path("targets"))
        fields.done()
        topics.append(KafkaIngressTopic(topic, value_type, targets))
    if not topics:
        raise spec.error("must list at least one topic", spec.field_path("topics"))
    properties, security = _properties(spec)
    spec.done()
    return KafkaIngress(
        ingress_id, address, tuple(topics), group, startup, reset, properties, security
    )


def _kafka_egress(spec: _Fields) -> KafkaEgress:
    egress_id = _typename(spec, spec.take("id", str, required=True), spec.field_path("id"))
    address = _address(spec)
    semantic, timeout = _delivery(spec)
    properties, security = _properties(spec)
    spec.done()
    return KafkaEgress(egress_id, address, semantic, timeout, properties, security)


def _failure_policy(spec: _Fields) -> FailurePolicy:
    raw = spec.take("functions", str, required=True)
    try:
        pattern = FunctionTypePattern.parse(raw)
    except InvalidNameError as e:
        raise spec.error(str(e), spec.field_path("functions")) from None
    policy = spec.take("policy", str, DEFAULT_POLICY.policy)
    if policy not in POLICIES:
        raise spec.error(f"must be one of {', '.join(POLICIES)}", spec.field_path("policy"))
    if spec.has("maxRollbacks"):
        raise spec.error(
            "is no longer read: a failing message no longer rolls the system back; it is "
            "retried on its own and, under policy dead-letter, parked after deadLetterAfter "
            "(default 30 s)",
            spec.field_path("maxRollbacks"),
        )
    if spec.has("deadLetterAfter") and policy != "dead-letter":
        raise spec.error(
            f"applies to policy dead-letter only, not {policy}", spec.field_path("deadLetterAfter")
        )
    after = _duration(spec, "deadLetterAfter", DEFAULT_POLICY.dead_letter_after)
    if after <= 0:
        raise spec.error("must be a positive duration", spec.field_path("deadLetterAfter"))
    spec.done()
    return FailurePolicy(pattern, policy, after)


def _playground_ingress(spec: _Fields) -> None:
    port = spec.take("port", int, None)
    spec.done()
    spec.warn(
        "the runtime's own HTTP ingress stands in for the playground ingress: send with "
        "POST /v1/messages/{namespace}/{type}/{id}?type=<value type> to the runtime's "
        "--ingress-port (default 8090)",
        "kind",
    )
    if port is not None:
        spec.warn(
            "is not honoured: the runtime's HTTP ingress listens on --ingress-port",
            spec.field_path("port"),
        )


def _playground_egress(spec: _Fields) -> LogEgress:
    port = spec.take("port", int, None)
    topics = spec.sequence("topics")
    spec.done()
    spec.warn(
        f"records sent to {PLAYGROUND_EGRESS_ID} are kept in the runtime's log: read them "
        f"with GET /v1/egress/{PLAYGROUND_EGRESS_ID} on the runtime's ingress port; each "
        "holds its {topic, payload}",
        "kind",
    )
    if port is not None:
        spec.warn("is not honoured: the egress is read through the ingress API", "spec.port")
    if topics:
        spec.warn(
            "is not honoured: records of every topic go to the one egress, each naming its topic",
            "spec.topics",
        )
    return LogEgress(PLAYGROUND_EGRESS_ID)


def _documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    try:
        for index, doc in enumerate(yaml.safe_load_all(text), start=1):
            if doc is not None:
                yield index, doc
    except yaml.YAMLError as e:
        raise ModuleSpecError(
            f"is not valid YAML: {e}", source=source, document=None, field=None
        ) from None


def parse_module_spec(
    text: str,
    source: str = "<module spec>",
    environ: Mapping[str, str] | None = None,
    base: Path | None = None,
) -> ModuleSpec:
    """Read a module spec; ``environ`` (default ``os.environ``) fills in ``${NAME}``;
    relative file paths are read from ``base`` (default: the working directory)."""
    environ = os.environ if environ is None else environ
    base = Path() if base is None else base
    endpoints: list[HttpEndpoint] = []
    egresses: list[Egress] = []
    ingresses: list[tuple[_Fields, KafkaIngress]] = []
    policies: list[FailurePolicy] = []
    for index, raw in _documents(text, source):
        doc = _Fields(_interpolate(raw, environ, source, index, ""), source, index, "")
        if "kind" not in doc.raw and "module" in doc.raw:
            raise doc.error(
                "is in the module format of StateFun 3.0 and older (version/module); write one "
                "document with 'kind' and 'spec' per endpoint, ingress and egress",
                "module",
            )
        kind = doc.take("kind", str, required=True)
        spec = doc.nested("spec")
        if spec is None:
            raise doc.missing("spec")
        doc.done()
        if kind in (ENDPOINT_KIND, ENDPOINT_V1_KIND):
            endpoint = _endpoint(spec, kind, base)
            if any(e.functions == endpoint.functions for e in endpoints):
                raise spec.error(
                    f"{endpoint.functions} is served by an earlier endpoint already",
                    "spec.functions",
                )
            endpoints.append(endpoint)
        elif kind in (LOG_EGRESS_KIND, KAFKA_EGRESS_KIND, PLAYGROUND_EGRESS_KIND):
            if kind == LOG_EGRESS_KIND:
                egress: Egress = _log_egress(spec)
            elif kind == KAFKA_EGRESS_KIND:
                egress = _kafka_egress(spec)
            else:
                egress = _playground_egress(spec)
            if any(e.id == egress.id for e in egresses):
                raise spec.error(f"egress {egress.id} is declared twice", "spec.id")
            egresses.append(egress)
        elif kind == FAILURE_POLICY_KIND:
            policy = _failure_policy(spec)
            if any(p.functions == policy.functions for p in policies):
                raise spec.error(
                    f"{policy.functions} has a failure policy already", "spec.functions"
                )
            policies.append(policy)
        elif kind == PLAYGROUND_INGRESS_KIND:
            _playground_ingress(spec)
        elif kind == KAFKA_INGRESS_KIND:
            ingress = _kafka_ingress(spec)
            if any(i.id == ingress.id for _, i in ingresses):
                raise spec.error(f"ingress {ingress.id} is declared twice", "spec.id")
            ingresses.append((spec, ingress))
        else:
            raise doc.error(
                f"unknown kind {kind!r}; this runtime understands {', '.join(_KINDS)}", "kind"
            )
    module = ModuleSpec(
        tuple(endpoints), tuple(egresses), tuple(i for _, i in ingresses), tuple(policies)
    )
    for spec, ingress in ingresses:
        for t, topic in enumerate(ingress.topics):
            for n, target in enumerate(topic.targets):
                if module.endpoint_for(target) is None:
                    raise spec.error(
                        f"no endpoint in the module spec serves {target}",
                        f"spec.topics[{t}].targets[{n}]",
                    )
    return module


def load_module_spec(path: str | Path) -> ModuleSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ModuleSpecError(
            f"cannot be read: {e.strerror}", source=str(p), document=None, field=None
        ) from None
    return parse_module_spec(text, str(p), base=p.parent)
