import logging
from pathlib import Path

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
from statefun.signing import public_keys, write_key_pair

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


def test_environment_variables_fill_in_string_values() -> None:
    text = """
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: ${FUNCTIONS_URL:-http://127.0.0.1:8000/statefun}
  transport: {timeouts: {call: "${CALL_TIMEOUT}"}}
"""
    spec = parse_module_spec(text, environ={"CALL_TIMEOUT": "5s"})
    assert spec.endpoints[0].url_path_template == "http://127.0.0.1:8000/statefun"
    assert spec.endpoints[0].timeouts.call == 5.0
    spec = parse_module_spec(text, environ={"CALL_TIMEOUT": "5s", "FUNCTIONS_URL": "http://f:1/x"})
    assert spec.endpoints[0].url_path_template == "http://f:1/x"


def test_an_unset_environment_variable_is_named_with_its_field() -> None:
    text = "kind: statefun.v1/egress\nspec: {id: '${EGRESS}'}\n"
    with pytest.raises(ModuleSpecError) as info:
        parse_module_spec(text, "m.yaml", environ={})
    assert "m.yaml, document 1, field 'spec.id': environment variable EGRESS is not set" in str(
        info.value
    )


def test_a_doubled_dollar_is_a_literal() -> None:
    text = "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/$${y}'}\n"
    assert parse_module_spec(text, environ={}).endpoints[0].url_path_template == "http://x/${y}"


KAFKA = """
kind: io.statefun.endpoints.v2/http
spec: {functions: example/*, urlPathTemplate: "http://f/"}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: example/names
  address: kafka:9092
  consumerGroupId: my-group
  startupPosition:
    type: earliest
  topics:
    - topic: names
      valueType: io.statefun.types/string
      targets:
        - example/greeter
        - example/counter
  properties:
    - max.poll.records: 100
---
kind: io.statefun.kafka.v1/egress
spec:
  id: example/out
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 15min
"""


def test_kafka_ingress_and_egress() -> None:
    from statefun.module_spec import KafkaEgress, KafkaIngress, KafkaIngressTopic, StartupPosition

    spec = parse_module_spec(KAFKA)
    (ingress,) = spec.ingresses
    assert ingress == KafkaIngress(
        id=TypeName("example", "names"),
        address="kafka:9092",
        topics=(
            KafkaIngressTopic(
                "names",
                "io.statefun.types/string",
                (TypeName("example", "greeter"), TypeName("example", "counter")),
            ),
        ),
        consumer_group_id="my-group",
        startup_position=StartupPosition("earliest"),
        auto_offset_reset="latest",
        properties=(("max.poll.records", "100"),),
    )
    egress = spec.egress(TypeName("example", "out"))
    assert egress == KafkaEgress(TypeName("example", "out"), None, "exactly-once", 900.0)


def test_kafka_ingress_defaults_and_startup_positions() -> None:
    from statefun.module_spec import StartupPosition

    base = """
kind: io.statefun.endpoints.v2/http
spec: {functions: example/*, urlPathTemplate: "http://f/"}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: example/names
  topics: [{topic: t, valueType: a/b, targets: [example/g]}]
"""
    spec = parse_module_spec(base)
    assert spec.ingresses[0].startup_position == StartupPosition("latest")
    assert spec.ingresses[0].address is None
    specific = base + "  startupPosition: {type: specific-offsets, offsets: [{t/0: 5}, {t/2: 7}]}\n"
    assert parse_module_spec(specific).ingresses[0].startup_position == StartupPosition(
        "specific-offsets", (("t", 0, 5), ("t", 2, 7))
    )
    dated = base + "  startupPosition: {type: date, date: '2024-01-31 12:00:00.000 +0000'}\n"
    assert parse_module_spec(dated).ingresses[0].startup_position.date_ms == 1706702400000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("  topics: []\n", "field 'spec.topics': must list at least one topic"),
        (
            "  startupPosition: {type: middle}\n",
            "field 'spec.startupPosition.type': must be one of",
        ),
        ("  startupPosition: {type: date, date: yesterday}\n", "field 'spec.startupPosition.date'"),
        (
            "  startupPosition: {type: specific-offsets, offsets: [{t: 1}]}\n",
            "spec.startupPosition.offsets[0]",
        ),
        ("  autoOffsetResetPosition: middle\n", "field 'spec.autoOffsetResetPosition'"),
        (
            "  topics: [{topic: t, valueType: a/b, targets: [other/g]}]\n",
            "field 'spec.topics[0].targets[0]': no endpoint in the module spec serves other/g",
        ),
        (
            "  topics: [{topic: t, valueType: nope, targets: [example/g]}]\n",
            "field 'spec.topics[0].valueType'",
        ),
        (
            "  topics: [{topic: t, valueType: a/b, targets: [example/g], extra: 1}]\n",
            "field 'spec.topics[0].extra'",
        ),
        ("  address: ''\n", "field 'spec.address': must not be empty"),
    ],
)
def test_kafka_ingress_errors(change: str, message: str) -> None:
    text = (
        "kind: io.statefun.endpoints.v2/http\nspec: {functions: example/*, urlPathTemplate: 'http://f/'}\n---\n"
        "kind: io.statefun.kafka.v1/ingress\nspec:\n  id: example/names\n"
    )
    if "topics" not in change:
        text += "  topics: [{topic: t, valueType: a/b, targets: [example/g]}]\n"
    with pytest.raises(ModuleSpecError) as info:
        parse_module_spec(text + change, "m.yaml")
    assert message in str(info.value)
    assert "document 2" in str(info.value)


def test_kafka_egress_semantic_is_checked() -> None:
    text = "kind: io.statefun.kafka.v1/egress\nspec: {id: a/b, deliverySemantic: {type: maybe}}\n"
    with pytest.raises(ModuleSpecError, match=r"spec\.deliverySemantic\.type"):
        parse_module_spec(text)


def test_timeouts_left_out_keep_their_defaults() -> None:
    text = """
kind: io.statefun.endpoints.v2/http
spec:
  functions: a/b
  urlPathTemplate: http://x/
  transport: {timeouts: {call: 2 min}}
"""
    assert parse_module_spec(text).endpoints[0].timeouts == HttpTimeouts(call=120.0)


def test_failure_policies_per_function_type() -> None:
    from statefun.module_spec import FailurePolicy, FunctionTypePattern

    text = """
kind: statefun.v1/failure-policy
spec: {functions: example/*, policy: dead-letter, deadLetterAfter: 30s}
---
kind: statefun.v1/failure-policy
spec: {functions: example/strict, policy: fail}
---
kind: statefun.v1/failure-policy
spec: {functions: example/patient, policy: retry}
"""
    spec = parse_module_spec(text)
    assert spec.failure_policy_for(TypeName("example", "any")) == FailurePolicy(
        FunctionTypePattern("example", None), "dead-letter", 30.0
    )
    assert spec.failure_policy_for(TypeName("example", "strict")).policy == "fail"
    assert spec.failure_policy_for(TypeName("example", "patient")).policy == "retry"
    # Without a policy: contained, parked after 30 s.
    assert spec.failure_policy_for(TypeName("other", "x")) == FailurePolicy(
        FunctionTypePattern("*", None), "dead-letter", 30.0
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "{functions: a/b, policy: skip}",
            "field 'spec.policy': must be one of dead-letter, retry, fail",
        ),
        ("{functions: a/b, maxRollbacks: 3}", "field 'spec.maxRollbacks': is no longer read"),
        (
            "{functions: a/b, deadLetterAfter: 0s}",
            "field 'spec.deadLetterAfter': must be a positive",
        ),
        (
            "{functions: a/b, policy: retry, deadLetterAfter: 1s}",
            "field 'spec.deadLetterAfter': applies to policy dead-letter only",
        ),
        ("{policy: fail}", "field 'spec.functions': is required"),
    ],
)
def test_failure_policy_errors(body: str, message: str) -> None:
    with pytest.raises(ModuleSpecError) as info:
        parse_module_spec(f"kind: statefun.v1/failure-policy\nspec: {body}\n")
    assert message in str(info.value)


# --- signing ------------------------------------------------------------------------------


def signing_spec(signing: str) -> str:
    return (
        "kind: io.statefun.endpoints.v2/http\n"
        f"spec: {{functions: a/*, urlPathTemplate: 'http://x/', signing: {signing}}}\n"
    )


def test_a_signing_key_file_is_read_from_the_module_spec_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    private, public = write_key_pair(tmp_path / "keys")
    module = tmp_path / "module.yaml"
    module.write_text(signing_spec("{keyFile: keys/signing-key.pem}"))
    key = load_module_spec(module).endpoints[0].signing_key
    assert key is not None
    assert key.public_key() == public_keys(public)[0]
    assert not caplog.records
    private.chmod(0o644)
    load_module_spec(module)
    assert "may be read by others than its owner" in caplog.text
    assert "field 'spec.signing.keyFile'" in caplog.text


def test_a_signing_key_inline_from_the_environment(tmp_path: Path) -> None:
    private, _ = write_key_pair(tmp_path)
    text = signing_spec("{key: '${SIGNING_KEY}'}")
    endpoint = parse_module_spec(text, environ={"SIGNING_KEY": private.read_text()}).endpoints[0]
    assert endpoint.signing_key is not None
    assert "signing" not in repr(endpoint)  # never printed
    assert parse_module_spec(FULL).endpoints[0].signing_key is None


@pytest.mark.parametrize(
    ("signing", "field", "message"),
    [
        ("{keyFile: absent.pem}", "spec.signing.keyFile", "absent.pem cannot be read"),
        ("{keyFile: bad.pem}", "spec.signing.keyFile", "not an unencrypted PEM private key"),
        ("{keyFile: k/signing-key.pub.pem}", "spec.signing.keyFile", "not an unencrypted PEM"),
        ("{key: 'not pem'}", "spec.signing.key", "not an unencrypted PEM private key"),
        ("{}", "spec.signing", "exactly one of keyFile and key"),
        ("{key: x, keyFile: y}", "spec.signing", "exactly one of keyFile and key"),
        ("{keyFile: 7}", "spec.signing.keyFile", "must be str"),
        ("{keyFile: k/signing-key.pem, secret: x}", "spec.signing.secret", "not a known field"),
        ("yes", "spec.signing", "must be a mapping"),
    ],
)
def test_a_bad_signing_key_names_its_field(
    tmp_path: Path, signing: str, field: str, message: str
) -> None:
    write_key_pair(tmp_path / "k")
    (tmp_path / "bad.pem").write_text("garbage")
    with pytest.raises(ModuleSpecError) as info:
        parse_module_spec(signing_spec(signing), "m.yaml", base=tmp_path)
    assert f"m.yaml, document 1, field '{field}'" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["keyFile", "key"])
def test_an_empty_signing_key_signs_nothing(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """``${NAME:-}`` with NAME unset: one spec for a deployment with a key and one without."""
    text = signing_spec(f"{{{name}: '${{SIGNING:-}}'}}")
    with caplog.at_level(logging.INFO, logger="statefun.module_spec"):
        assert parse_module_spec(text, "m.yaml").endpoints[0].signing_key is None
    assert f"field 'spec.signing.{name}' is empty: calls to the endpoint are not signed" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplete: 'http://x/'}",
            "field 'spec.urlPathTemplate': is required ('urlPathTemplete' is given: a misspelling?)",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/', transport: {timeouts: {cal: 2s}}}",
            "field 'spec.transport.timeouts.cal': is not a known field; did you mean 'call'?",
        ),
        (
            "kind: statefun.v1/failure-policy\nspec: {functions: a/*, policy: dead-letter, deadLetterAftr: 5s}",
            "field 'spec.deadLetterAftr': is not a known field; did you mean 'deadLetterAfter'?",
        ),
        (
            "kind: statefun.v1/egress\nspce: {id: a/b}",
            "field 'spec': is required ('spce' is given: a misspelling?)",
        ),
    ],
)
def test_a_misspelled_field_names_the_nearest_known_field(text: str, message: str) -> None:
    with pytest.raises(ModuleSpecError) as raised:
        parse_module_spec(text, "m.yaml")
    assert message in str(raised.value)


def test_a_field_like_no_known_one_lists_the_known_fields() -> None:
    text = "kind: statefun.v1/egress\nspec: {id: a/b, colour: red}"
    with pytest.raises(ModuleSpecError) as raised:
        parse_module_spec(text, "m.yaml")
    assert "field 'spec.colour': is not a known field (known here: deliverySemantic, id)" in str(
        raised.value
    )
