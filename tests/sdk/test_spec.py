"""ValueSpec: the state name rules, the expiration rules and the protocol form."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sdk import IntType, ValueSpec, make_json_type
from statefun.errors import InvalidNameError
from statefun.protocol import Expiration, ExpireMode, StateSpec


@pytest.mark.parametrize("name", ["count", "seen_at", "_private", "v2", "x"])
def test_valid_names_are_accepted(name: str) -> None:
    assert ValueSpec(name, IntType).name == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("Count", "lower-case"),
        ("camelCase", "lower-case"),
        ("2fast", "identifier"),
        ("has space", "identifier"),
        ("with-dash", "identifier"),
        ("class", "keyword"),
        ("lambda", "keyword"),
        ("__init__", "dunder"),
    ],
)
def test_invalid_names_are_refused(name: str, fragment: str) -> None:
    with pytest.raises(InvalidNameError, match=fragment):
        ValueSpec(name, IntType)


def test_invalid_name_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="'Bad'"):
        ValueSpec("Bad", IntType)


def test_a_name_must_be_a_string() -> None:
    bad: Any = 42
    with pytest.raises(InvalidNameError, match="must be a str"):
        ValueSpec(bad, IntType)


def test_the_type_must_be_a_statefun_type() -> None:
    bad: Any = int
    with pytest.raises(TypeError, match="'count' must be a Type"):
        ValueSpec("count", bad)


def test_both_expirations_are_refused() -> None:
    with pytest.raises(ValueError, match="both expire_after_call and expire_after_write"):
        ValueSpec(
            "count",
            IntType,
            expire_after_call=timedelta(seconds=1),
            expire_after_write=timedelta(seconds=1),
        )


@pytest.mark.parametrize(
    "delay", [timedelta(0), timedelta(seconds=-1), timedelta(microseconds=999)]
)
def test_expirations_below_one_millisecond_are_refused(delay: timedelta) -> None:
    with pytest.raises(ValueError, match="at least one millisecond"):
        ValueSpec("count", IntType, expire_after_write=delay)


def test_an_expiration_must_be_a_timedelta() -> None:
    bad: Any = 1000
    with pytest.raises(TypeError, match=r"expire_after_call must be a datetime\.timedelta"):
        ValueSpec("count", IntType, expire_after_call=bad)


def test_state_spec_without_expiration() -> None:
    spec = ValueSpec("profile", make_json_type("example/Profile"))
    assert spec.to_state_spec() == StateSpec("profile", "example/Profile", Expiration())


def test_state_spec_expiring_after_call_in_milliseconds() -> None:
    spec = ValueSpec("count", IntType, expire_after_call=timedelta(minutes=1, milliseconds=5))
    assert spec.to_state_spec() == StateSpec(
        "count", "io.statefun.types/int", Expiration(ExpireMode.AFTER_CALL, 60_005)
    )


def test_state_spec_expiring_after_write_truncates_to_milliseconds() -> None:
    spec = ValueSpec("count", IntType, expire_after_write=timedelta(microseconds=2_999))
    assert spec.to_state_spec() == StateSpec(
        "count", "io.statefun.types/int", Expiration(ExpireMode.AFTER_WRITE, 2)
    )


def test_value_spec_is_immutable() -> None:
    spec = ValueSpec("count", IntType)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
