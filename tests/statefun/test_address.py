import pytest

from statefun.address import Address, TypeName
from statefun.errors import InvalidNameError


def test_typename_splits_at_the_last_slash() -> None:
    tn = TypeName.parse("type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord")
    assert tn.namespace == "type.googleapis.com"
    assert tn.name == "io.statefun.sdk.egress.KafkaProducerRecord"
    assert str(tn) == "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord"
    assert TypeName.parse("a/b/c") == TypeName("a/b", "c")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("greeter", "not of the form"),
        ("/greeter", "namespace of '/greeter' is empty"),
        ("example/", "name of 'example/' is empty"),
        ("exa mple/greeter", "whitespace"),
        ("example/gree\tter", "whitespace"),
    ],
)
def test_malformed_typenames_are_named_in_the_error(text: str, problem: str) -> None:
    with pytest.raises(InvalidNameError, match=problem):
        TypeName.parse(text)


def test_invalid_name_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not of the form"):
        TypeName.parse("x")


def test_address_parse_keeps_slashes_in_the_id() -> None:
    a = Address.parse("example/greeter/some/path")
    assert (a.namespace, a.type, a.id) == ("example", "greeter", "some/path")
    assert a.typename == "example/greeter"
    assert a.function_type == TypeName("example", "greeter")
    assert str(a) == "example/greeter/some/path"
    assert Address.of("example/greeter", "x") == Address("example", "greeter", "x")


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        (("", "greeter", "x"), "namespace .* is empty"),
        (("example", "", "x"), "function type name .* is empty"),
        (("example", "greeter", ""), "id .* is empty"),
        (("a/b", "greeter", "x"), "contains '/'"),
        (("example", "greeter", "bad\nid"), "control characters"),
    ],
)
def test_malformed_addresses_are_rejected(parts: tuple[str, str, str], problem: str) -> None:
    with pytest.raises(InvalidNameError, match=problem):
        Address(*parts)


def test_address_parse_needs_three_parts() -> None:
    with pytest.raises(InvalidNameError, match="namespace/type/id"):
        Address.parse("example/greeter")


def test_addresses_are_values() -> None:
    assert Address("a", "b", "c") == Address("a", "b", "c")
    assert len({Address("a", "b", "c"), Address("a", "b", "c")}) == 1


def test_a_function_type_checked_once_still_checks_every_id_and_bad_types_every_time() -> None:
    assert Address("known", "kind", "a").function_type == TypeName("known", "kind")
    assert (
        Address("known", "kind", "a").function_type is Address("known", "kind", "b").function_type
    )
    with pytest.raises(InvalidNameError, match="the id of 'known/kind/' is empty"):
        Address("known", "kind", "")
    with pytest.raises(InvalidNameError, match="control characters"):
        Address("known", "kind", "a\x00")
    for _ in range(2):  # a refused type is never remembered as checked
        with pytest.raises(InvalidNameError, match="whitespace"):
            Address("bad space", "kind", "a")
