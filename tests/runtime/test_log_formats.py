"""The lines ``statefun run --log-format`` writes."""

from __future__ import annotations

import json
import logging
import sys

from runtime.log_formats import TEXT_FORMAT, JsonLogFormatter, LogFormat, formatter


def record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    return logging.LogRecord(
        "runtime.worker",
        logging.WARNING,
        __file__,
        1,
        message,
        args,
        sys.exc_info() if exc_info else None,
    )


def test_a_json_line_has_time_level_logger_and_the_formatted_message() -> None:
    line = JsonLogFormatter().format(record("%d messages to %s", 3, "tést/x"))
    assert "\n" not in line
    parsed = json.loads(line)
    assert set(parsed) == {"time", "level", "logger", "message"}
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "runtime.worker"
    assert parsed["message"] == "3 messages to tést/x"
    assert parsed["time"].endswith("+00:00")


def test_a_json_line_carries_the_exception_text_on_one_line() -> None:
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError:
        line = JsonLogFormatter().format(record("it failed", exc_info=True))
    assert "\n" not in line
    exception = json.loads(line)["exception"]
    assert exception.startswith("Traceback (most recent call last):")
    assert exception.endswith("ValueError: bad value\nsecond line")


def test_each_format_has_its_formatter() -> None:
    assert isinstance(formatter(LogFormat.JSON), JsonLogFormatter)
    text = formatter(LogFormat.TEXT)
    assert not isinstance(text, JsonLogFormatter)
    assert text._fmt == TEXT_FORMAT
