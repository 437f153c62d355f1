"""Directories a runtime process owns: an exclusive lock keeps a second process out.

The embedded log and the checkpoint store each live in a directory that exactly one
runtime process may write; two writers would corrupt offsets and checkpoints.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from runtime.errors import DirectoryInUse


def lock_directory(
    directory: Path, lock_name: str, what: str, in_use: type[DirectoryInUse] = DirectoryInUse
) -> IO[bytes]:
    """Create ``directory`` if need be and lock it for this process; the lock lasts as long
    as the returned file stays open (the process's death releases it too)."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = (directory / lock_name).open("wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise in_use(f"{what} {directory} is in use by another runtime process") from None
    return lock


def unlock(lock: IO[bytes]) -> None:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
