"""How ``statefun run`` writes its log lines: ``text`` for people, ``json`` for machines.

Both go through the standard library's :mod:`logging`; this module only formats a
record. A JSON line is one object: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
``logger``, ``message``, and ``exception`` (the traceback's text) and ``stack`` when
the record carries them.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback's newlines are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter of ``log_format``."""
    if log_format is LogFormat.JSON:
        return JsonLogFormatter()
    return logging.Formatter(TEXT_FORMAT)
