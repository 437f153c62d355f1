"""Many rows in few statements: every row lands, in order, whatever the row width."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.sqlite_db import ROWS_PER_STATEMENT, connect, insert_rows, statements_for


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE narrow (k INTEGER PRIMARY KEY, v BLOB)")
    conn.execute("CREATE TABLE wide (" + ", ".join(f"c{i}" for i in range(10)) + ")")
    yield conn
    conn.close()


@pytest.mark.parametrize("rows", [1, ROWS_PER_STATEMENT, ROWS_PER_STATEMENT + 1, 1000])
def test_every_row_lands_in_order(db: sqlite3.Connection, rows: int) -> None:
    insert_rows(db, "INSERT INTO narrow", [(i, bytes([i % 256])) for i in range(rows)])
    assert db.execute("SELECT k, v FROM narrow ORDER BY k").fetchall() == [
        (i, bytes([i % 256])) for i in range(rows)
    ]


def test_wide_rows_stay_under_the_parameter_limit(db: sqlite3.Connection) -> None:
    # 10 values a row: 99 rows a statement (999 parameters), not ROWS_PER_STATEMENT.
    rows = [tuple(range(r, r + 10)) for r in range(250)]
    insert_rows(db, "INSERT INTO wide", rows)
    assert db.execute("SELECT * FROM wide ORDER BY c0").fetchall() == rows
    assert statements_for(250, 10) == 3
    assert statements_for(ROWS_PER_STATEMENT, 2) == 1
    assert statements_for(ROWS_PER_STATEMENT + 1, 2) == 2


def test_a_later_row_replaces_an_earlier_one_as_row_by_row_would(
    db: sqlite3.Connection,
) -> None:
    insert_rows(db, "INSERT OR REPLACE INTO narrow", [(1, b"a"), (2, b"b"), (1, b"c")])
    assert db.execute("SELECT k, v FROM narrow ORDER BY k").fetchall() == [(1, b"c"), (2, b"b")]


def test_no_rows_runs_nothing(db: sqlite3.Connection) -> None:
    insert_rows(db, "INSERT INTO no_such_table", [])
    assert db.execute("SELECT count(*) FROM narrow").fetchone() == (0,)


def test_a_failing_statement_inserts_none_of_its_rows(db: sqlite3.Connection) -> None:
    insert_rows(db, "INSERT INTO narrow", [(5, b"x")])
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(db, "INSERT INTO narrow", [(4, b"y"), (5, b"dup"), (6, b"z")])
    assert db.execute("SELECT k FROM narrow ORDER BY k").fetchall() == [(5,)]
