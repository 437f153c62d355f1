"""SQLite as the runtime writes it: from a thread of its own, beside a busy event loop.

Both SQLite files of a data directory (the embedded log and the checkpoint store) open
their connections here: WAL, ``synchronous=FULL``, autocommit unless a transaction is
begun, and prepared statements kept.

**Few statements, not one per row.** SQLite runs each statement without the GIL, and the
writing thread must take the GIL back after each one; while the event loop keeps it busy,
that waits up to the interpreter's switch interval. Written with ``executemany`` (one
statement per row), a group commit of a dozen log appends took 6-13 ms under load, against
0.3 ms alone, and every call waiting for it waited that long. :func:`insert_rows` writes
many rows with one multi-row ``INSERT`` per :data:`ROWS_PER_STATEMENT` rows.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from runtime.directories import private_file

__all__ = ["ROWS_PER_STATEMENT", "connect", "insert_rows", "statements_for"]

ROWS_PER_STATEMENT = 128
"""Rows of one insert statement, at most (every size up to it stays prepared)."""
_PARAMETERS_MAX = 999
"""The most parameters a statement may have in every SQLite version (newer ones: 32,766)."""


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the database at ``path`` (a file only its owner may read, created
    if missing), in WAL mode with ``synchronous=FULL``: a commit is on disk when it returns."""
    conn = sqlite3.connect(
        private_file(path),
        isolation_level=None,
        check_same_thread=False,
        # Preparing a statement is a step without the GIL too: keep every insert size.
        cached_statements=4 * ROWS_PER_STATEMENT,
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[Sequence[object]]) -> None:
    """Run ``insert`` (``INSERT [OR ...] INTO table``, without ``VALUES``) for every row,
    in order, with as few statements as the parameter limit allows. Not a transaction:
    several statements are atomic only inside one."""
    if not rows:
        return
    width = len(rows[0])
    step = _rows_per_statement(width)
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        conn.execute(_values(insert, width, len(chunk)), [v for row in chunk for v in row])


def statements_for(rows: int, width: int) -> int:
    """How many statements :func:`insert_rows` runs for ``rows`` rows of ``width`` values."""
    return -(-rows // _rows_per_statement(width))


def _rows_per_statement(width: int) -> int:
    return max(1, min(ROWS_PER_STATEMENT, _PARAMETERS_MAX // width))


@functools.cache
def _values(insert: str, width: int, rows: int) -> str:
    row = "(" + ", ".join(["?"] * width) + ")"
    return f"{insert} VALUES " + ", ".join([row] * rows)
