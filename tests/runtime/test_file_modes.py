"""The embedded log's and the checkpoint store's directories are 0700 and their files
0600, whatever the umask: they hold every message, state and egress record."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from runtime.checkpoints.store import CheckpointStore
from runtime.log.sqlite import SqliteLog


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private(folders: list[Path]) -> dict[str, str]:
    """Every folder's mode and every file's in them; asserted all private."""
    files = [p for folder in folders for p in folder.iterdir() if p.is_file()]
    modes = {str(f): oct(mode(f)) for f in folders} | {str(f): oct(mode(f)) for f in files}
    assert modes == {path: "0o700" if Path(path) in folders else "0o600" for path in modes}
    return modes


def test_data_and_checkpoint_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folders = [data, data / "checkpoints"]

    async def scenario() -> dict[str, str]:
        log = await SqliteLog.open(data)
        store = await CheckpointStore.open(data / "checkpoints")
        try:
            return private(folders)  # with SQLite's -wal and -shm files, while open
        finally:
            await log.close()
            await store.close()

    data.mkdir(mode=0o755)  # an existing folder is made private too
    previous = os.umask(0o000)
    try:
        seen = asyncio.run(scenario())
    finally:
        os.umask(previous)
    names = {Path(p).name for p in seen}
    assert names >= {"log.db", "log.db-wal", "log.db-shm", "log.lock", "checkpoints.db"}
    private(folders)
