"""The checkpoint store: snapshots, the commit point, and the record of generations.

One SQLite database in a directory (``checkpoints.db``; in Compose, a volume every
runtime process can reach). It holds, per checkpoint, the state of the addresses that
changed since the previous one, and likewise the idempotency keys added, answered or
forgotten since (two versioned key-value tables: the state of an address
as of checkpoint c is its newest row at or below c), each participant's part
(pending inputs, timers, read positions, ...), and the manifest. Writing a
checkpoint's manifest row is its commit point: everything of the checkpoint is written
in the same transaction, so a checkpoint is either complete or absent. The
``generations`` table is the decision log of rollbacks: "generation g was rolled back
to checkpoint c", written before generation g+1 processes anything.

Each store has an id, created once and kept (``meta``), which the log records as its
identity (``runtime.identity``): a log is resumed only with the store that holds its
checkpoints. A store that starts over a log (``--start-over``) records the generation
below which every tag is skipped and the checkpoint id after which epochs continue,
and the read positions the first generation starts from (the parts of checkpoint 0).

Every database call runs on one thread of its own; the event loop only awaits.

A damaged database (SQLite finds it malformed, or it is not a database) is
:class:`StoreDamaged`, with the file and what to do: checked whole at open
(``PRAGMA quick_check``) and on every call. Any other SQLite failure is a
:class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, TypeVar

from runtime.directories import lock_directory, unlock
from runtime.errors import CheckpointNotRetained, CheckpointStoreInUse, StoreDamaged, StoreError
from runtime.sqlite_db import connect, insert_rows
from statefun.address import TypeName

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (
    checkpoint INTEGER PRIMARY KEY, generation INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL, size_bytes INTEGER NOT NULL, addresses INTEGER NOT NULL,
    released TEXT
);
CREATE TABLE IF NOT EXISTS state (
    address BLOB NOT NULL, checkpoint INTEGER NOT NULL, value BLOB,
    PRIMARY KEY (address, checkpoint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    key BLOB NOT NULL, checkpoint INTEGER NOT NULL, value BLOB,
    PRIMARY KEY (key, checkpoint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts (
    checkpoint INTEGER NOT NULL, participant TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (checkpoint, participant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letter_marks (
    dead_letter INTEGER PRIMARY KEY, status TEXT NOT NULL, at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS paused (function_type TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);
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
    released: str | None = None
    """What the commit released to the outside (the names of the participants whose
    egress or replies it let out, comma-separated), or None: nothing, so the checkpoint
    can be given up for an older one if it turns out damaged."""


@dataclass(frozen=True, slots=True)
class Rollback:
    """Generation ``generation`` was rolled back to checkpoint ``rolled_back_to`` (0: none)."""

    generation: int
    rolled_back_to: int
    at_ms: int
    reason: str
    cause_address: str | None
    cause_messages: tuple[str, ...]


class ApplicationRecords(Protocol):
    """What the ingress and operators read and write of an application's records: its
    checkpoints and rollbacks, and operators' decisions. The checkpoint store keeps them
    for one process; the decision log (``runtime.cluster``) for a cluster."""

    async def manifests(self) -> list[Manifest]: ...

    async def rollbacks(self) -> list[Rollback]: ...

    async def dead_letter_marks(self, offsets: Sequence[int]) -> dict[int, str]: ...

    async def mark_dead_letter(self, offset: int, status: str) -> None: ...

    async def paused(self) -> set[TypeName]: ...

    async def set_paused(self, function_type: TypeName, paused: bool) -> None: ...


def _now_ms() -> int:
    return int(time.time() * 1000)


_DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _failure(path: Path, error: sqlite3.Error) -> StoreError:
    """The store error for a SQLite error: :class:`StoreDamaged` if the file is damaged."""
    if getattr(error, "sqlite_errorcode", None) in _DAMAGED:
        return damaged(path, str(error))
    return StoreError(f"the checkpoint store {path} failed: {error}")


def damaged(path: Path, what: str) -> StoreDamaged:
    return StoreDamaged(
        f"the checkpoint store {path} is damaged ({what}): restore the directory "
        f"{path.parent} from a backup, or move it away and start with --start-over to "
        "rebuild the state from the input the log still holds"
    )


def _prune_every_row(db: sqlite3.Connection, oldest: int) -> None:
    """Drop every state and key row no checkpoint from ``oldest`` on needs: one older than
    its address's newest row at or below ``oldest``, or a deletion that is that row."""
    for table, key in (("state", "address"), ("keys", "key")):
        db.execute(
            f"DELETE FROM {table} WHERE checkpoint < ("
            f"  SELECT MAX(t.checkpoint) FROM {table} t"
            f"  WHERE t.{key} = {table}.{key} AND t.checkpoint <= ?)",
            (oldest,),
        )
        db.execute(f"DELETE FROM {table} WHERE value IS NULL AND checkpoint <= ?", (oldest,))


def _prune_rows_of(
    db: sqlite3.Connection, table: str, key: str, names: set[bytes], oldest: int
) -> None:
    """:func:`_prune_every_row` for the rows of these addresses (or keys) alone: each
    delete a lookup of the primary key."""
    db.executemany(
        f"DELETE FROM {table} WHERE {key} = ?1 AND checkpoint < ("
        f"  SELECT MAX(checkpoint) FROM {table} WHERE {key} = ?1 AND checkpoint <= ?2)",
        ((name, oldest) for name in names),
    )
    db.executemany(
        f"DELETE FROM {table} WHERE {key} = ? AND checkpoint <= ? AND value IS NULL",
        ((name, oldest) for name in names),
    )


class CheckpointStore:
    """Use :meth:`open`."""

    def __init__(self, path: Path, lock: IO[bytes]):
        self.path = path
        self._lock = lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-store")
        self._written: dict[int, tuple[list[bytes], list[bytes]]] = {}
        """Per checkpoint committed since the open and not yet pruned through, the
        addresses and the idempotency keys it wrote rows of: where the next prune looks
        (the store's thread only)."""
        self._pruned_through: int | None = None
        """The oldest retained checkpoint at the last prune (None: no prune since the open)."""
        db: sqlite3.Connection | None = None
        try:
            self._db = db = connect(path)
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise damaged(path, "; ".join(" ".join(p.split()) for p in problems[:3]))
            self._db.executescript(_SCHEMA)
            self._migrate()
            self.id = self._identify()
            newest = self._db.execute("SELECT MAX(checkpoint) FROM manifests").fetchone()[0]
            self._written_above: int = newest or 0
            """Every state or key row of a checkpoint above this one was written since the
            open, and is in :attr:`_written`."""
        except BaseException as e:
            if db is not None:
                db.close()
            self._executor.shutdown()
            if isinstance(e, sqlite3.Error):
                raise _failure(path, e) from None
            raise

    def _identify(self) -> str:
        """The store's id: created with the store, never changed."""
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (f"store-{uuid.uuid4()}",)
        )
        found: str = self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
        return found

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(manifests)")}
        if "released" not in columns:
            # A store written before the flag existed: whether its checkpoints released
            # anything is unknown, so none of them is given up for an older one.
            self._db.execute(
                "ALTER TABLE manifests ADD COLUMN released TEXT DEFAULT 'unknown (older store)'"
            )

    @classmethod
    async def open(cls, directory: str | Path) -> CheckpointStore:
        directory = Path(directory)
        lock = lock_directory(
            directory, "checkpoints.lock", "checkpoint directory", CheckpointStoreInUse
        )
        try:
            return await asyncio.to_thread(cls, directory / "checkpoints.db", lock)
        except BaseException:
            unlock(lock)
            raise

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._guarded, fn)

    def _guarded(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except sqlite3.Error as e:
            raise _failure(self.path, e) from e

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
        checkpoint: int | None = None,
    ) -> tuple[int, int]:
        """Record that the current generation rolls back to the latest checkpoint and
        start the next: ``(new generation, checkpoint rolled back to)``. The first start
        ever begins generation 1 and records nothing. ``reason`` None: a (re)start, whose
        reason says whether the previous process stopped cleanly (:meth:`stopped_cleanly`).

        ``checkpoint``: roll back to this older checkpoint instead (the newer ones are
        damaged and released nothing). The newer ones are dropped, and every generation
        recorded as rolled back to one of them is recorded as rolled back to this one:
        their work after it is replayed, so their output after it must be skipped."""

        def begin(db: sqlite3.Connection) -> tuple[int, int]:
            nonlocal reason
            row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            previous = row[0] if row else 0
            below = db.execute("SELECT value FROM meta WHERE key = 'skip_below'").fetchone()
            latest = db.execute("SELECT MAX(checkpoint) FROM manifests").fetchone()[0] or 0
            if checkpoint is not None and checkpoint < latest:
                latest = checkpoint
                db.execute("DELETE FROM manifests WHERE checkpoint > ?", (latest,))
                db.execute(
                    "UPDATE generations SET rolled_back_to = ? WHERE rolled_back_to > ?",
                    (latest, latest),
                )
            clean = db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
            db.execute("DELETE FROM meta WHERE key = 'clean'")
            if reason is None:
                reason = (
                    "restart after a clean stop"
                    if clean
                    else "restart: the previous runtime process did not stop cleanly "
                    "(killed, crashed or lost)"
                )
            if previous and previous >= (below[0] if below else 0):
                db.execute(
                    "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?)",
                    (previous, latest, _now_ms(), reason, cause_address, "\n".join(cause_messages)),
                )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (previous + 1,))
            # Rows of a checkpoint that never got its manifest are garbage.
            db.execute("DELETE FROM state WHERE checkpoint > ?", (latest,))
            db.execute("DELETE FROM keys WHERE checkpoint > ?", (latest,))
            db.execute("DELETE FROM parts WHERE checkpoint > ?", (latest,))
            return previous + 1, latest

        return await self._run(lambda: self._transaction(begin))

    async def started(self) -> bool:
        """Whether a generation was ever begun with this store."""
        row = await self._run(
            lambda: self._db.execute("SELECT 1 FROM meta WHERE key = 'generation'").fetchone()
        )
        return row is not None

    async def start_over(
        self, generation: int, epoch: int, origin: Sequence[tuple[str, bytes]]
    ) -> None:
        """Prepare a store that was never started to start a log over: its first generation
        is ``generation`` and every tag of an earlier one is skipped, its checkpoint ids
        continue after ``epoch``, and until its first checkpoint every generation starts
        from the ``origin`` parts (read positions: the log's retained start)."""

        def prepare(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [
                    ("generation", generation - 1),
                    ("skip_below", generation),
                    ("epoch_floor", epoch),
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO parts VALUES (0, ?, ?)", [(n, d) for n, d in origin]
            )

        await self._run(lambda: self._transaction(prepare))

    async def floors(self) -> tuple[int, int]:
        """(The generation below which every tag is skipped, the checkpoint id after which
        epochs continue): (0, 0) unless the store started a log over."""

        def read() -> tuple[int, int]:
            rows = dict(
                self._db.execute(
                    "SELECT key, value FROM meta WHERE key IN ('skip_below', 'epoch_floor')"
                ).fetchall()
            )
            return int(rows.get("skip_below", 0)), int(rows.get("epoch_floor", 0))

        return await self._run(read)

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

    # --- operators' decisions (not part of any checkpoint: they outlive rollbacks) -----

    async def mark_dead_letter(self, offset: int, status: str) -> None:
        """Note what was done with the dead letter at ``offset`` (replayed, discarded)."""
        await self._run(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO dead_letter_marks VALUES (?, ?, ?)",
                (offset, status, _now_ms()),
            )
        )

    async def dead_letter_marks(self, offsets: Sequence[int]) -> dict[int, str]:
        """What was done with each of these dead letters (absent: nothing)."""
        if not offsets:
            return {}

        def read() -> dict[int, str]:
            rows = self._db.execute(
                "SELECT dead_letter, status FROM dead_letter_marks WHERE dead_letter BETWEEN ? AND ?",
                (min(offsets), max(offsets)),
            ).fetchall()
            return dict(rows)

        return await self._run(read)

    async def set_paused(self, function_type: TypeName, paused: bool) -> None:
        """Keep a function type paused across restarts, or not."""

        def write() -> None:
            if paused:
                self._db.execute(
                    "INSERT OR REPLACE INTO paused VALUES (?, ?)", (str(function_type), _now_ms())
                )
            else:
                self._db.execute(
                    "DELETE FROM paused WHERE function_type = ?", (str(function_type),)
                )

        await self._run(write)

    async def paused(self) -> set[TypeName]:
        rows = await self._run(
            lambda: self._db.execute("SELECT function_type FROM paused").fetchall()
        )
        return {TypeName.parse(name) for (name,) in rows}

    # --- checkpoints ------------------------------------------------------------------

    async def commit(
        self,
        checkpoint: int,
        generation: int,
        state: Sequence[tuple[bytes, bytes | None]],
        parts: Sequence[tuple[str, bytes]],
        started: float,
        released: Sequence[str] = (),
        key_rows: Sequence[Callable[[], Sequence[tuple[bytes, bytes | None]]]] = (),
    ) -> Manifest:
        """Write a checkpoint whole; the manifest row, in the same transaction, commits it.
        ``state`` maps address keys to their serialized state (None: no state any more);
        ``started`` is the ``time.monotonic()`` at which the checkpoint began;
        ``released`` names the participants whose output its commit lets out; ``key_rows``
        give the rows of the idempotency-key table (key, answer or None), encoded when
        called, here on the store's thread."""

        def write(db: sqlite3.Connection) -> Manifest:
            insert_rows(
                db,
                "INSERT OR REPLACE INTO state",
                [(key, checkpoint, value) for key, value in state],
            )
            keys = [row for encode in key_rows for row in encode()]
            insert_rows(
                db,
                "INSERT OR REPLACE INTO keys",
                [(key, checkpoint, value) for key, value in keys],
            )
            insert_rows(
                db,
                "INSERT OR REPLACE INTO parts",
                [(checkpoint, name, data) for name, data in parts],
            )
            self._written[checkpoint] = ([key for key, _ in state], [key for key, _ in keys])
            size = sum(len(k) + len(v or b"") for k, v in (*state, *keys)) + sum(
                len(d) for _, d in parts
            )
            manifest = Manifest(
                checkpoint,
                generation,
                _now_ms(),
                int((time.monotonic() - started) * 1000),
                size,
                len(state),
                ", ".join(released) or None,
            )
            db.execute(
                "INSERT INTO manifests VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    manifest.checkpoint,
                    manifest.generation,
                    manifest.created_ms,
                    manifest.duration_ms,
                    manifest.size_bytes,
                    manifest.addresses,
                    manifest.released,
                ),
            )
            return manifest

        return await self._run(lambda: self._transaction(write))

    async def manifests(self) -> list[Manifest]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT checkpoint, generation, created_ms, duration_ms, size_bytes, addresses,"
                " released FROM manifests ORDER BY checkpoint"
            ).fetchall()
        )
        return [Manifest(*row) for row in rows]

    async def mark_released(self, epoch: int, what: str) -> None:
        """Something produced in ``epoch`` went out after its checkpoint committed (a
        committed reply given to a retried call): mark the checkpoint that covers it,
        the first at or after ``epoch``, as released."""
        await self._run(
            lambda: self._db.execute(
                "UPDATE manifests SET released = COALESCE(released || ', ', '') || ?"
                " WHERE checkpoint = (SELECT MIN(checkpoint) FROM manifests WHERE checkpoint >= ?)"
                " AND COALESCE(released, '') NOT LIKE '%' || ? || '%'",
                (what, epoch, what),
            )
        )

    async def latest(self) -> Manifest | None:
        manifests = await self.manifests()
        return manifests[-1] if manifests else None

    async def load_state(self, checkpoint: int) -> list[tuple[bytes, bytes]]:
        """Every address's state as of ``checkpoint`` (addresses without state left out)."""
        return await self._run(lambda: self._as_of("state", "address", checkpoint))

    async def load_keys(self, checkpoint: int) -> list[tuple[bytes, bytes]]:
        """The idempotency-key table as of ``checkpoint`` (forgotten keys left out)."""
        return await self._run(lambda: self._as_of("keys", "key", checkpoint))

    def _as_of(self, table: str, key: str, checkpoint: int) -> list[tuple[bytes, bytes]]:
        """Each key's newest row at or below ``checkpoint`` in a versioned table."""
        rows = self._db.execute(
            f"SELECT t.{key}, t.value FROM {table} t JOIN ("
            f"  SELECT {key}, MAX(checkpoint) AS checkpoint FROM {table}"
            f"  WHERE checkpoint <= ? GROUP BY {key}"
            f") newest USING ({key}, checkpoint) WHERE t.value IS NOT NULL",
            (checkpoint,),
        ).fetchall()
        return [(bytes(k), bytes(v)) for k, v in rows]

    # --- reading state as of a retained checkpoint -------------------------------------
    # The primary key (address, checkpoint) serves both: one address's newest row at or
    # below the checkpoint is one index seek; the addresses of a function type are a range
    # of keys (one prefix), walked in order from the page's start, each checked with a
    # seek for its newest row. Each runs whole on the store's thread, so retention cannot
    # drop the checkpoint between the check and the read.

    async def state_as_of(self, key: bytes, checkpoint: int) -> bytes | None:
        """The state of the address with key ``key`` as of the retained ``checkpoint``
        (None: it had none); :class:`CheckpointNotRetained` if it is not retained."""

        def read() -> bytes | None:
            self._check_retained(checkpoint)
            row = self._db.execute(
                "SELECT value FROM state WHERE address = ? AND checkpoint <= ?"
                " ORDER BY checkpoint DESC LIMIT 1",
                (key, checkpoint),
            ).fetchone()
            return None if row is None or row[0] is None else bytes(row[0])

        return await self._run(read)

    async def keys_as_of(
        self, prefix: bytes, after: bytes | None, limit: int, checkpoint: int
    ) -> list[bytes]:
        """The keys starting with ``prefix`` of the addresses that held state as of the
        retained ``checkpoint``, in order, strictly after the key ``after`` (default:
        from the first), at most ``limit``; :class:`CheckpointNotRetained` if it is not
        retained."""
        end = prefix[:-1] + bytes([prefix[-1] + 1])  # the first key past the prefix

        def read() -> list[bytes]:
            self._check_retained(checkpoint)
            rows = self._db.execute(
                "SELECT s.address FROM state s WHERE s.address > ? AND s.address < ?"
                " AND s.checkpoint = (SELECT MAX(t.checkpoint) FROM state t"
                "   WHERE t.address = s.address AND t.checkpoint <= ?)"
                " AND s.value IS NOT NULL ORDER BY s.address LIMIT ?",
                (after or prefix, end, checkpoint, limit),
            ).fetchall()
            return [bytes(k) for (k,) in rows]

        return await self._run(read)

    def _check_retained(self, checkpoint: int) -> None:
        found = self._db.execute(
            "SELECT 1 FROM manifests WHERE checkpoint = ?", (checkpoint,)
        ).fetchone()
        if found is None:
            retained = self._db.execute("SELECT checkpoint FROM manifests ORDER BY checkpoint")
            raise CheckpointNotRetained(checkpoint, [c for (c,) in retained.fetchall()])

    async def load_parts(self, checkpoint: int) -> dict[str, bytes]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT participant, data FROM parts WHERE checkpoint = ?", (checkpoint,)
            ).fetchall()
        )
        return {name: bytes(data) for name, data in rows}

    async def retained_parts(self, participant: str) -> list[bytes]:
        """The parts of ``participant`` in every retained checkpoint, oldest first."""
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT p.data FROM parts p JOIN manifests m USING (checkpoint)"
                " WHERE p.participant = ? ORDER BY p.checkpoint",
                (participant,),
            ).fetchall()
        )
        return [bytes(data) for (data,) in rows]

    async def retain(self, keep: int) -> None:
        """Keep the newest ``keep`` checkpoints; drop older manifests, parts and the state
        and key rows no retained checkpoint can need.

        A row is needed while it is its address's (or key's) newest at or below the
        oldest retained checkpoint, and holds a value. A row stops being needed only when
        a newer one of its address lands at or below that checkpoint: so a prune looks
        only at the addresses written since the oldest retained checkpoint of the one
        before (:attr:`_written`), and costs what changed, not the whole state. The first
        prune after the open, and any until the retained checkpoints are all of this
        open, look at every row."""

        def prune(db: sqlite3.Connection) -> int | None:
            kept = db.execute(
                "SELECT checkpoint FROM manifests ORDER BY checkpoint DESC LIMIT ?", (keep,)
            ).fetchall()
            if len(kept) < keep:
                return None
            oldest: int = kept[-1][0]
            db.execute("DELETE FROM manifests WHERE checkpoint < ?", (oldest,))
            db.execute("DELETE FROM parts WHERE checkpoint < ?", (oldest,))
            since = self._pruned_through
            if since is None or since < self._written_above:
                _prune_every_row(db, oldest)
            else:
                written = [w for c, w in self._written.items() if since < c <= oldest]
                _prune_rows_of(db, "state", "address", {a for w, _ in written for a in w}, oldest)
                _prune_rows_of(db, "keys", "key", {k for _, w in written for k in w}, oldest)
            return oldest

        def pruned() -> None:
            oldest = self._transaction(prune)
            if oldest is not None:
                self._pruned_through = oldest
                for checkpoint in [c for c in self._written if c <= oldest]:
                    del self._written[checkpoint]

        await self._run(pruned)

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
        unlock(self._lock)
