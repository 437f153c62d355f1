"""Storm warnings and quiet logs, with an injected clock."""

from __future__ import annotations

import logging

import pytest

from runtime.quiet_log import QuietLog
from runtime.routing import INGRESS_CALLER_TYPE
from runtime.storms import StormWatch
from statefun.address import TypeName

LOOP, CALM = TypeName("ex", "loop"), TypeName("ex", "calm")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_storm_is_named_with_its_rate_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "runtime.storms")
    clock = Clock()
    watch = StormWatch(100, clock=clock)
    for _ in range(7200):  # 12 minutes of 500 messages/s to LOOP, 10/s to CALM
        for _ in range(50):
            watch.count(LOOP)
        watch.count(CALM)
        clock.t += 0.1
    warnings = [r.getMessage() for r in caplog.records if r.name == "runtime.storms"]
    assert 11 <= len(warnings) <= 13  # about once a minute, and only for LOOP
    assert all("ex/loop" in w and "statefun pause ex/loop" in w for w in warnings)
    assert "500 messages/s" in warnings[0]
    assert watch.storms == {LOOP: len(warnings)}


def test_replies_to_the_ingress_callers_are_no_storm(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "runtime.storms")
    clock = Clock()
    watch = StormWatch(100, clock=clock)
    for _ in range(200):  # 20 s of 500 replies/s to calls, and 500 messages/s to LOOP
        for _ in range(50):
            watch.count(INGRESS_CALLER_TYPE)
            watch.count(LOOP)
        clock.t += 0.1
    assert watch.storms == {LOOP: 1}


def test_a_rate_of_zero_turns_the_watch_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    watch = StormWatch(0, clock=clock)
    for _ in range(1000):
        watch.count(LOOP)
        clock.t += 0.001
    clock.t += 20
    watch.count(LOOP)
    assert watch.storms == {}


def test_a_quiet_log_lets_a_few_through_then_about_one_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    quiet = QuietLog(logging.getLogger("test.quiet"), clock=clock)
    for i in range(100):  # 100 lines in 10 s
        quiet.log("a", logging.INFO, "line %d", i)
        clock.t += 0.1
    quiet.log("b", logging.INFO, "another key")
    lines = [r.getMessage() for r in caplog.records if r.name == "test.quiet"]
    assert 14 <= len(lines) <= 16  # 5 at once, then one a second, plus the other key
    assert lines[-1] == "another key"
    assert "more such lines left out" in lines[5]
