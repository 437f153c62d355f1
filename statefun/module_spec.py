"""The module spec: which endpoints serve which function types, and which egresses exist.

Reads StateFun's ``module.yaml`` format (several YAML documents, each ``kind`` and
``spec``) into a typed :class:`ModuleSpec`. Every problem is a
:class:`~statefun.errors.ModuleSpecError` naming the document and the field; an unknown
kind or field is an error, never ignored.

Kinds understood:

* ``io.statefun.endpoints.v2/http`` - ``functions`` (``ns/name`` or ``ns/*``),
  ``urlPathTemplate`` (``{function.name}`` is replaced by the type's name),
  ``maxNumBatchRequests``, ``transport: {type, timeouts: {call, connect, read, write}}``
  and our ``protocol`` (``native``).
* ``statefun.v1/egress`` - ``id``: an egress kept in the runtime's log and readable over
  the ingress API (``GET /v1/egress/{namespace}/{name}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from statefun.address import TypeName
from statefun.errors import InvalidNameError, ModuleSpecError

__all__ = [
    "ENDPOINT_KIND",
    "LOG_EGRESS_KIND",
    "FunctionTypePattern",
    "HttpEndpoint",
    "HttpTimeouts",
    "LogEgress",
    "ModuleSpec",
    "load_module_spec",
    "parse_duration",
    "parse_module_spec",
]

ENDPOINT_KIND = "io.statefun.endpoints.v2/http"
LOG_EGRESS_KIND = "statefun.v1/egress"
_TRANSPORT_TYPES = ("io.statefun.transports.v1/async", "io.statefun.transports.v1/okhttp")
_PROTOCOLS = ("native",)

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


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    functions: FunctionTypePattern
    url_path_template: str
    max_num_batch_requests: int = 1000
    timeouts: HttpTimeouts = HttpTimeouts()
    protocol: str = "native"

    def url_for(self, function_type: TypeName) -> str:
        return self.url_path_template.replace("{function.name}", function_type.name)


@dataclass(frozen=True, slots=True)
class LogEgress:
    """An egress whose records the runtime keeps in its own log."""

    id: TypeName


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    endpoints: tuple[HttpEndpoint, ...] = ()
    egresses: tuple[LogEgress, ...] = ()

    def endpoint_for(self, function_type: TypeName) -> HttpEndpoint | None:
        """The endpoint serving ``function_type``: an exact pattern wins over ``ns/*``."""
        wildcard = None
        for endpoint in self.endpoints:
            if endpoint.functions.matches(function_type):
                if endpoint.functions.name is not None:
                    return endpoint
                wildcard = endpoint
        return wildcard

    def egress(self, egress_id: TypeName) -> LogEgress | None:
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

    def field_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, message: str, field: str | None) -> ModuleSpecError:
        return ModuleSpecError(message, source=self.source, document=self.document, field=field)

    def take(self, name: str, kind: type[V], default: V | None = None, required: bool = False) -> V:
        if name not in self.raw:
            if required:
                raise self.error("is required", self.field_path(name))
            return default  # type: ignore[return-value]
        value = self.raw.pop(name)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        raise self.error(
            f"must be {kind.__name__}, got {type(value).__name__} {value!r}", self.field_path(name)
        )

    def nested(self, name: str) -> _Fields | None:
        if name not in self.raw:
            return None
        return _Fields(self.raw.pop(name), self.source, self.document, self.field_path(name))

    def done(self) -> None:
        for name in self.raw:
            raise self.error("is not a known field", self.field_path(str(name)))


def _duration(fields: _Fields, name: str, default: float) -> float:
    raw = fields.take(name, object, default)
    try:
        return parse_duration(raw)  # type: ignore[arg-type]
    except ValueError as e:
        raise fields.error(str(e), fields.field_path(name)) from None


def _endpoint(spec: _Fields) -> HttpEndpoint:
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
    protocol = spec.take("protocol", str, "native")
    if protocol not in _PROTOCOLS:
        raise spec.error(f"must be one of {', '.join(_PROTOCOLS)}", spec.field_path("protocol"))
    timeouts = HttpTimeouts()
    transport = spec.nested("transport")
    if transport is not None:
        transport_type = transport.take("type", str, _TRANSPORT_TYPES[0])
        if transport_type not in _TRANSPORT_TYPES:
            raise transport.error(
                f"must be one of {', '.join(_TRANSPORT_TYPES)}", transport.field_path("type")
            )
        t = transport.nested("timeouts")
        if t is not None:
            timeouts = HttpTimeouts(
                call=_duration(t, "call", timeouts.call),
                connect=_duration(t, "connect", timeouts.connect),
                read=_duration(t, "read", timeouts.read),
                write=_duration(t, "write", timeouts.write),
            )
            t.done()
        transport.done()
    spec.done()
    return HttpEndpoint(pattern, template, batch, timeouts, protocol)


def _log_egress(spec: _Fields) -> LogEgress:
    raw = spec.take("id", str, required=True)
    try:
        egress_id = TypeName.parse(raw)
    except InvalidNameError as e:
        raise spec.error(str(e), spec.field_path("id")) from None
    spec.done()
    return LogEgress(egress_id)


def _documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    try:
        for index, doc in enumerate(yaml.safe_load_all(text), start=1):
            if doc is not None:
                yield index, doc
    except yaml.YAMLError as e:
        raise ModuleSpecError(
            f"is not valid YAML: {e}", source=source, document=None, field=None
        ) from None


def parse_module_spec(text: str, source: str = "<module spec>") -> ModuleSpec:
    endpoints: list[HttpEndpoint] = []
    egresses: list[LogEgress] = []
    for index, raw in _documents(text, source):
        doc = _Fields(raw, source, index, "")
        kind = doc.take("kind", str, required=True)
        spec = doc.nested("spec")
        if spec is None:
            raise doc.error("is required", "spec")
        doc.done()
        if kind == ENDPOINT_KIND:
            endpoint = _endpoint(spec)
            if any(e.functions == endpoint.functions for e in endpoints):
                raise spec.error(
                    f"{endpoint.functions} is served by an earlier endpoint already",
                    "spec.functions",
                )
            endpoints.append(endpoint)
        elif kind == LOG_EGRESS_KIND:
            egress = _log_egress(spec)
            if any(e.id == egress.id for e in egresses):
                raise spec.error(f"egress {egress.id} is declared twice", "spec.id")
            egresses.append(egress)
        else:
            raise doc.error(
                f"unknown kind {kind!r}; this runtime understands {ENDPOINT_KIND}, {LOG_EGRESS_KIND}",
                "kind",
            )
    return ModuleSpec(tuple(endpoints), tuple(egresses))


def load_module_spec(path: str | Path) -> ModuleSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ModuleSpecError(
            f"cannot be read: {e.strerror}", source=str(p), document=None, field=None
        ) from None
    return parse_module_spec(text, str(p))
