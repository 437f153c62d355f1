"""Choosing the checkpoint to resume from: decoded whole, a damaged one given up for an
older one only when its commit released nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest

from runtime import progress
from runtime.checkpoints.restore import restore_point
from runtime.checkpoints.snapshot import (
    WorkerPart,
    encode_positions,
    encode_state,
    encode_worker_part,
)
from runtime.checkpoints.store import CheckpointStore
from runtime.errors import StoreDamaged
from runtime.routing import address_key
from statefun.address import Address
from statefun.values import TypedValue

pytestmark = pytest.mark.anyio

ADDRESS = Address("test", "counter", "a")


def worker_part(position: int) -> bytes:
    return encode_worker_part(WorkerPart([], [], {0: position}))


async def commit(
    store: CheckpointStore,
    checkpoint: int,
    *,
    part: bytes | None = None,
    state: bytes | None = None,
    released: tuple[str, ...] = (),
) -> None:
    value = state or encode_state({"count": TypedValue("t/int", b"%d" % checkpoint)}, None)
    await store.commit(
        checkpoint,
        1,
        [(address_key(ADDRESS), value)],
        [
            ("worker", part or worker_part(checkpoint * 10)),
            ("ingress:x/y", encode_positions({("t", 0): checkpoint})),
            ("other", b"raw"),
        ],
        time.monotonic(),
        released=released,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CheckpointStore]:
    opened = await CheckpointStore.open(tmp_path)
    yield opened
    await opened.close()


async def test_the_newest_checkpoint_decoded_whole(store: CheckpointStore) -> None:
    assert (await restore_point(store)).checkpoint == 0
    await commit(store, 1)
    await commit(store, 2)
    point = await restore_point(store)
    assert point.checkpoint == 2
    assert point.worker is not None
    assert point.worker.positions == {0: 20}
    assert point.readers == {"ingress:x/y": {("t", 0): 2}}
    assert point.parts == {"other": b"raw"}
    assert point.state.get(ADDRESS)["count"].value == b"2"
    assert point.given_up == ()


@pytest.mark.parametrize(
    "damage",
    [
        {"part": b"\xc1garbage"},
        {"part": worker_part(30)[:5]},  # truncated msgpack
        {"state": msgpack.packb({"count": ["t/int", b"3"]})[:-2]},
    ],
)
async def test_a_damaged_newest_checkpoint_that_released_nothing_gives_way(
    store: CheckpointStore, damage: dict[str, bytes]
) -> None:
    await commit(store, 1, released=("worker",))
    await commit(store, 2)
    await commit(store, 3, **damage)
    point = await restore_point(store)
    assert (point.checkpoint, point.given_up) == (2, (3,))
    assert point.state.get(ADDRESS)["count"].value == b"2"


async def test_a_damaged_checkpoint_that_released_something_is_refused(
    store: CheckpointStore,
) -> None:
    await commit(store, 1)
    await commit(store, 2, part=b"\xc1", released=("worker", "replies"))
    with pytest.raises(StoreDamaged) as refused:
        await restore_point(store)
    message = str(refused.value)
    assert "checkpoint 2" in message
    assert "released output" in message
    assert "worker, replies" in message
    assert "--start-over" in message
    assert "\n" not in message


async def test_no_decodable_checkpoint_is_refused(store: CheckpointStore) -> None:
    await commit(store, 1, part=b"\xc1")
    with pytest.raises(StoreDamaged, match=r"no retained checkpoint .* can be decoded"):
        await restore_point(store)


async def test_a_long_restore_logs_how_far_it_got(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await commit(store, 1)
    # Every piece of work counts as long: a line per address, and one at the end.
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    with caplog.at_level(logging.INFO, logger="runtime.checkpoints.restore"):
        await restore_point(store)
    lines = [r.getMessage() for r in caplog.records if r.name == "runtime.checkpoints.restore"]
    assert len(lines) == 2
    assert lines[0].startswith("restoring the state of checkpoint 1: 1 of 1 addresses (100%) after")
    assert lines[1].endswith(" s, done")
