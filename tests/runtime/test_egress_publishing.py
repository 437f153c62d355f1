"""Publishing exactly-once egress after commits: one checkpoint's records after another's,
and never a checkpoint noted as published past one whose publication failed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from runtime.checkpoints.snapshot import EgressItem
from runtime.log import LogError
from runtime.worker import Worker
from statefun.address import TypeName
from statefun.module_spec import ModuleSpec
from statefun.values import TypedValue


class Log:
    def consumer(self) -> None:
        return None


class Egresses:
    """Fails the first publication, after the second one is queued."""

    def __init__(self) -> None:
        self.published: list[tuple[int, list[str]]] = []

    async def publish_committed(self, checkpoint: int, items: Sequence[EgressItem]) -> None:
        if not self.published and checkpoint == 5:
            await asyncio.sleep(0.01)
            raise LogError("the broker went away")
        self.published.append((checkpoint, [i.id for i in items]))


def item(epoch: int) -> EgressItem:
    return EgressItem(f"1.{epoch}.1", TypeName("test", "out"), TypedValue("t/x", b"v"), epoch)


def test_a_failed_publication_is_never_covered_by_a_later_one() -> None:
    async def scenario() -> tuple[Egresses, list[int], Any]:
        egresses = Egresses()
        noted: list[int] = []
        failures: list[Any] = []

        async def on_published(checkpoint: int) -> None:
            noted.append(checkpoint)

        worker = Worker(
            Log(),  # type: ignore[arg-type]
            ModuleSpec(),
            None,  # type: ignore[arg-type]
            egresses,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            on_failure=failures.append,
            on_published=on_published,
        )
        worker._outbox = [item(5)]
        first = worker.publish_committed(5)
        worker._outbox.append(item(6))
        second = worker.publish_committed(6)  # waits for the first
        assert first is not None
        assert second is not None
        await asyncio.gather(first, second)
        return egresses, noted, (worker.failed, [i.id for i in worker._outbox], failures)

    egresses, noted, (failed, outbox, failures) = asyncio.run(scenario())
    assert failed
    assert len(failures) == 1
    assert "publishing egress of checkpoint 5 failed" in failures[0].describe()
    assert egresses.published == []  # checkpoint 6 did not go out past the failed 5 ...
    assert noted == []  # ... nor was it noted as published, which would cover 5's records
    assert outbox == ["1.5.1", "1.6.1"]  # both stay for the rollback to publish again
