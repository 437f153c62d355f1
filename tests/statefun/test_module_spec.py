import pytest

from statefun.address import TypeName
from statefun.errors import ModuleSpecError
from statefun.module_spec import (
    FunctionTypePattern,
    HttpTimeouts,
    load_module_spec,
    parse_duration,
    parse_module_spec,
)

FULL = """
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: http://functions:8000/statefun/{function.name}
  maxNumBatchRequests: 50
  transport:
    type: io.statefun.transports.v1/async
    timeouts:
      call: 2 min
      connect: 5s
      read: 15 s
      write: 500ms
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/special
  urlPathTemplate: http://special:9000/
---
kind: statefun.v1/egress
spec:
  id: example/greetings
"""


def test_a_full_module_spec() -> None:
    spec = parse_module_spec(FULL, "module.yaml")
    wildcard, special = spec.endpoints
    assert wildcard.functions == FunctionTypePattern("example", None)
    assert wildcard.max_num_batch_requests == 50
    assert wildcard.timeouts == HttpTimeouts(call=120.0, connect=5.0, read=15.0, write=0.5)
    assert (
        wildcard.url_for(TypeName("example", "greeter")) == "http://functions:8000/statefun/greeter"
    )
    assert special.max_num_batch_requests == 1000
    assert special.timeouts == HttpTimeouts()
    assert spec.endpoint_for(TypeName("example", "special")) is special
    assert spec.endpoint_for(TypeName("example", "greeter")) is wildcard
    assert spec.endpoint_for(TypeName("other", "greeter")) is None
    assert spec.egress(TypeName("example", "greetings")) is not None
    assert spec.egress(TypeName("example", "nope")) is None


def test_an_exact_pattern_wins_regardless_of_order() -> None:
    text = """
kind: io.statefun.endpoints.v2/http
spec: {functions: example/special, urlPathTemplate: "http://a/"}
---
kind: io.statefun.endpoints.v2/http
spec: {functions: example/*, urlPathTemplate: "http://b/"}
"""
    spec = parse_module_spec(text)
    assert spec.endpoint_for(TypeName("example", "special")).url_path_template == "http://a/"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {urlPathTemplate: 'http://x/'}",
            "m.yaml, document 1, field 'spec.functions': is required",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/', colour: red}",
            "document 1, field 'spec.colour': is not a known field",
        ),
        (
            "kind: statefun.v1/egress\nspec: {id: a/b}\n---\nkind: io.statefun.nope/x\nspec: {}",
            "document 2, field 'kind': unknown kind 'io.statefun.nope/x'",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: greeter, urlPathTemplate: 'http://x/'}",
            "field 'spec.functions': type name 'greeter' is not of the form",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'ftp://x/'}",
            "field 'spec.urlPathTemplate': must be an http",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/', maxNumBatchRequests: 0}",
            "field 'spec.maxNumBatchRequests': must be at least 1",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/', maxNumBatchRequests: ten}",
            "field 'spec.maxNumBatchRequests': must be int",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/', transport: {timeouts: {call: soon}}}",
            "field 'spec.transport.timeouts.call': 'soon' is not a duration",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/', transport: {type: tcp}}",
            "field 'spec.transport.type': must be one of",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/', protocol: grpc}",
            "field 'spec.protocol': must be one of native",
        ),
        ("kind: io.statefun.endpoints.v2/http", "document 1, field 'spec': is required"),
        ("spec: {}", "document 1, field 'kind': is required"),
        ("- just a list", "document 1: must be a mapping"),
        (
            "kind: statefun.v1/egress\nspec: {id: a/b}\n---\nkind: statefun.v1/egress\nspec: {id: a/b}",
            "document 2, field 'spec.id': egress a/b is declared twice",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/'}\n---\n"
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://y/'}",
            "document 2, field 'spec.functions': a/b is served by an earlier endpoint",
        ),
        ("kind: [unclosed", "m.yaml: is not valid YAML"),
    ],
)
def test_errors_name_the_document_and_field(text: str, message: str) -> None:
    with pytest.raises(ModuleSpecError) as info:
        parse_module_spec(text, "m.yaml")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("1 min", 60.0),
        ("500ms", 0.5),
        ("2 minutes", 120.0),
        ("1h", 3600.0),
        (250, 0.25),
        ("1.5 s", 1.5),
        ("750", 0.75),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_load_module_spec_reports_a_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModuleSpecError, match="cannot be read"):
        load_module_spec(tmp_path / "missing.yaml")
