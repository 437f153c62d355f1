"""The checkpoint store: snapshots, the commit point, and the record of generations.

One SQLite database in a directory (``checkpoints.db``; in Compose, a volume every
runtime process can reach). It holds, per checkpoint, the state of the addresses that
changed since the previous one (a versioned key-value table: the state of an address
as of checkpoint c is its newest row at or below c), each participant's part
(pending inputs, timers, read positions, ...), and the manifest. Writing a
checkpoint's manifest row is its commit point: everything of the checkpoint is written
in the same transaction, so a checkpoint is either complete or absent. The
``generations`` table is the decision log of rollbacks: "generation g was rolled back
to checkpoint c", written before generation g+1 processes anything.

Every database call runs on one thread of its own; the event loop only awaits. A
failed call raises :class:`~runtime.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from runtime.directories import lock_directory, unlock
from runtime.errors import CheckpointStoreInUse, StoreError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (
    checkpoint INTEGER PRIMARY KEY, generation INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL, size_bytes INTEGER NOT NULL, addresses INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    address BLOB NOT NULL, checkpoint INTEGER NOT NULL, value BLOB,
    PRIMARY KEY (address, checkpoint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts (
    checkpoint INTEGER NOT NULL, participant TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (checkpoint, participant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_lettered (message TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY, rolled_back_to INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL, cause_address TEXT, cause_messages TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A completed checkpoint."""

    checkpoint: int
    generation: int
    created_ms: int
    duration_ms: int
    size_bytes: int
    addresses: int
    """Addresses whose state the checkpoint wrote (changed since the previous one)."""


@dataclass(frozen=True, slots=True)
class Rollback:
    """Generation ``generation`` was rolled back to checkpoint ``rolled_back_to`` (0: none)."""

    generation: int
    rolled_back_to: int
    at_ms: int
    reason: str
    cause_address: str | None
    cause_messages: tuple[str, ...]


def _now_ms() -> int:
    return int(time.time() * 1000)


class CheckpointStore:
    """Use :meth:`open`."""

    def __init__(self, path: Path, lock: IO[bytes]):
        self.path = path
        self._lock = lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-store")
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @classmethod
    async def open(cls, directory: str | Path) -> CheckpointStore:
        directory = Path(directory)
        lock = lock_directory(
            directory, "checkpoints.lock", "checkpoint directory", CheckpointStoreInUse
        )
        return await asyncio.to_thread(cls, directory / "checkpoints.db", lock)

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as e:
            raise StoreError(f"the checkpoint store {self.path} failed: {e}") from e

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (a full disk) may or may not have rolled back already.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    # --- generations ------------------------------------------------------------------

    async def begin_generation(
        self,
        reason: str | None,
        *,
        cause_address: str | None = None,
        cause_messages: Sequence[str] = (),
    ) -> tuple[int, int]:
        """Record that the current generation rolls back to the latest checkpoint and
        start the next: ``(new generation, checkpoint rolled back to)``. The first start
        ever begins generation 1 and records nothing. ``reason`` None: a (re)start, whose
        reason says whether the previous process stopped cleanly (:meth:`stopped_cleanly`)."""

        def begin(db: sqlite3.Connection) -> tuple[int, int]:
            nonlocal reason
            row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            previous = row[0] if row else 0
            latest = db.execute("SELECT MAX(checkpoint) FROM manifests").fetchone()[0] or 0
            clean = db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
            db.execute("DELETE FROM meta WHERE key = 'clean'")
            if reason is None:
                reason = (
                    "restart after a clean stop"
                    if clean
                    else "restart: the previous runtime process did not stop cleanly "
                    "(killed, crashed or lost)"
                )
            if previous:
                db.execute(
                    "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?)",
                    (previous, latest, _now_ms(), reason, cause_address, "\n".join(cause_messages)),
                )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (previous + 1,))
            # Rows of a checkpoint that never got its manifest are garbage.
            db.execute("DELETE FROM state WHERE checkpoint > ?", (latest,))
            db.execute("DELETE FROM parts WHERE checkpoint > ?", (latest,))
            return previous + 1, latest

        return await self._run(lambda: self._transaction(begin))

    async def stopped_cleanly(self) -> None:
        """Note that this generation ended with a clean stop (and a last checkpoint)."""
        await self._run(lambda: self._db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', 1)"))

    async def egress_published(self, checkpoint: int) -> None:
        """Every egress record of checkpoints up to ``checkpoint`` is published."""
        await self._run(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('egress_published', MAX(?, COALESCE("
                "(SELECT value FROM meta WHERE key = 'egress_published'), 0)))",
                (checkpoint,),
            )
        )

    async def egress_published_through(self) -> int:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT value FROM meta WHERE key = 'egress_published'"
            ).fetchone()
        )
        return int(row[0]) if row else 0

    async def rollbacks(self) -> list[Rollback]:
        def read() -> list[Rollback]:
            rows = self._db.execute(
                "SELECT generation, rolled_back_to, at_ms, reason, cause_address, cause_messages"
                " FROM generations ORDER BY generation"
            ).fetchall()
            return [
                Rollback(g, c, at, reason, address, tuple(m for m in messages.split("\n") if m))
                for g, c, at, reason, address, messages in rows
            ]

        return await self._run(read)

    async def dead_letter(self, message: str, reason: str) -> None:
        """Remember, for every generation to come, that ``message`` is given up on."""
        await self._run(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO dead_lettered VALUES (?, ?)", (message, reason)
            )
        )

    async def dead_lettered(self) -> dict[str, str]:
        rows = await self._run(
            lambda: self._db.execute("SELECT message, reason FROM dead_lettered").fetchall()
        )
        return dict(rows)

    # --- checkpoints ------------------------------------------------------------------

    async def commit(
        self,
        checkpoint: int,
        generation: int,
        state: Sequence[tuple[bytes, bytes | None]],
        parts: Sequence[tuple[str, bytes]],
        started: float,
    ) -> Manifest:
        """Write a checkpoint whole; the manifest row, in the same transaction, commits it.
        ``state`` maps address keys to their serialized state (None: no state any more);
        ``started`` is the ``time.monotonic()`` at which the checkpoint began."""

        def write(db: sqlite3.Connection) -> Manifest:
            db.executemany(
                "INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                [(key, checkpoint, value) for key, value in state],
            )
            db.executemany(
                "INSERT OR REPLACE INTO parts VALUES (?, ?, ?)",
                [(checkpoint, name, data) for name, data in parts],
            )
            size = sum(len(k) + len(v or b"") for k, v in state) + sum(len(d) for _, d in parts)
            manifest = Manifest(
                checkpoint,
                generation,
                _now_ms(),
                int((time.monotonic() - started) * 1000),
                size,
                len(state),
            )
            db.execute(
                "INSERT INTO manifests VALUES (?, ?, ?, ?, ?, ?)",
                (
                    manifest.checkpoint,
                    manifest.generation,
                    manifest.created_ms,
                    manifest.duration_ms,
                    manifest.size_bytes,
                    manifest.addresses,
                ),
            )
            return manifest

        return await self._run(lambda: self._transaction(write))

    async def manifests(self) -> list[Manifest]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT checkpoint, generation, created_ms, duration_ms, size_bytes, addresses"
                " FROM manifests ORDER BY checkpoint"
            ).fetchall()
        )
        return [Manifest(*row) for row in rows]

    async def latest(self) -> Manifest | None:
        manifests = await self.manifests()
        return manifests[-1] if manifests else None

    async def load_state(self, checkpoint: int) -> list[tuple[bytes, bytes]]:
        """Every address's state as of ``checkpoint`` (addresses without state left out)."""

        def read() -> list[tuple[bytes, bytes]]:
            rows = self._db.execute(
                "SELECT s.address, s.value FROM state s JOIN ("
                "  SELECT address, MAX(checkpoint) AS checkpoint FROM state"
                "  WHERE checkpoint <= ? GROUP BY address"
                ") newest USING (address, checkpoint) WHERE s.value IS NOT NULL",
                (checkpoint,),
            ).fetchall()
            return [(bytes(k), bytes(v)) for k, v in rows]

        return await self._run(read)

    async def load_parts(self, checkpoint: int) -> dict[str, bytes]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT participant, data FROM parts WHERE checkpoint = ?", (checkpoint,)
            ).fetchall()
        )
        return {name: bytes(data) for name, data in rows}

    async def retain(self, keep: int) -> None:
        """Keep the newest ``keep`` checkpoints; drop older manifests, parts and the state
        rows no retained checkpoint can need."""

        def prune(db: sqlite3.Connection) -> None:
            kept = db.execute(
                "SELECT checkpoint FROM manifests ORDER BY checkpoint DESC LIMIT ?", (keep,)
            ).fetchall()
            if len(kept) < keep:
                return
            oldest = kept[-1][0]
            db.execute("DELETE FROM manifests WHERE checkpoint < ?", (oldest,))
            db.execute("DELETE FROM parts WHERE checkpoint < ?", (oldest,))
            # A row older than an address's newest row at or below the oldest retained
            # checkpoint is never read again; nor is a deletion that is that newest row.
            db.execute(
                "DELETE FROM state WHERE checkpoint < ("
                "  SELECT MAX(s.checkpoint) FROM state s"
                "  WHERE s.address = state.address AND s.checkpoint <= ?)",
                (oldest,),
            )
            db.execute("DELETE FROM state WHERE value IS NULL AND checkpoint <= ?", (oldest,))

        await self._run(lambda: self._transaction(prune))

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
        unlock(self._lock)
