"""Directories a runtime process owns: an exclusive lock keeps a second process out, and
their modes keep other users out.

The embedded log and the checkpoint store each live in a directory that exactly one
runtime process may write; two writers would corrupt offsets and checkpoints. Such a
directory is made 0700 and its files 0600 (:func:`private_file`, before SQLite opens
them: SQLite gives its ``-wal`` and ``-shm`` files the database's mode), whatever the
umask: they hold every message, state and egress record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from runtime.errors import DirectoryInUse

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def lock_directory(
    directory: Path, lock_name: str, what: str, in_use: type[DirectoryInUse] = DirectoryInUse
) -> IO[bytes]:
    """Create ``directory`` if need be (0700; an existing one is made 0700 too) and lock
    it for this process; the lock lasts as long as the returned file stays open (the
    process's death releases it too)."""
    directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    directory.chmod(DIRECTORY_MODE)
    lock = private_file(directory / lock_name).open("wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise in_use(f"{what} {directory} is in use by another runtime process") from None
    return lock


def private_file(path: Path) -> Path:
    """``path``, created if need be, readable and writable by this user only; with the
    side files SQLite keeps next to a database of that name, if there are any.

    An existing file is never opened here: closing a descriptor of a file drops every
    POSIX lock this process holds on it, SQLite's included, and a database whose
    locks are gone looks closed to other processes. (The embedded log opens two
    connections to its database: the second one's open used to drop the first one's
    lock, and a reader in another process that closed its connection then deleted the
    write-ahead log the runtime went on writing to.)"""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    for side in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
        if side.exists():
            side.chmod(FILE_MODE)
    return path


def unlock(lock: IO[bytes]) -> None:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
