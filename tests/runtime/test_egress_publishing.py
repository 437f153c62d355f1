"""The egress outbox: exactly-once records held until their checkpoint commits, published
one checkpoint after another, and never a checkpoint noted as published past records
that are not out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from runtime import egress
from runtime.checkpoints.epochs import EpochClock, SkipRule
from runtime.checkpoints.snapshot import EgressItem, decode_egress_items
from runtime.egress import EgressOutbox
from runtime.errors import LogError
from runtime.log import Record
from runtime.log.memory import MemoryLog
from runtime.routing import Topics
from statefun.address import TypeName
from statefun.egress import KafkaProducerRecord
from statefun.module_spec import KafkaEgress, ModuleSpec
from statefun.values import TypedValue

OUT = TypeName("test", "out")


class Egresses:
    """A fake of ``runtime.egress.Egresses``: ``fail`` says what the next publication does."""

    def __init__(self) -> None:
        self.published: list[tuple[int, list[str]]] = []
        self.fail: str | None = None

    def exactly_once(self, egress_id: TypeName) -> bool:
        return True

    def published_already(self, item: EgressItem) -> bool:
        return False

    async def publish_committed(
        self, checkpoint: int, items: Sequence[EgressItem]
    ) -> list[EgressItem]:
        await asyncio.sleep(0.001)
        failure, self.fail = self.fail, None
        if failure == "kafka":
            return list(items)  # a Kafka egress took none of them
        if failure == "log":
            raise LogError("the disk is full")
        self.published.append((checkpoint, [i.id for i in items]))
        return []


def value() -> TypedValue:
    return TypedValue("t/x", b"v")


def outbox_at(
    epoch: int, egresses: Egresses, noted: list[int], log_failures: list[str]
) -> tuple[EgressOutbox, EpochClock]:
    clock = EpochClock(1, epoch, "p", SkipRule(1, {}))

    async def note(checkpoint: int) -> None:
        noted.append(checkpoint)

    outbox = EgressOutbox(
        egresses,  # type: ignore[arg-type]
        clock,
        note_published=note,
        on_log_failure=log_failures.append,
    )
    return outbox, clock


def test_a_failed_kafka_publication_is_published_with_the_next_checkpoint() -> None:
    async def scenario() -> tuple[Egresses, list[int], list[str], int]:
        egresses, noted, failures = Egresses(), [], []
        outbox, clock = outbox_at(5, egresses, noted, failures)
        outbox.emit(OUT, value())  # 1.5.p.1, epoch 5
        egresses.fail = "kafka"
        first = outbox.publish_committed(5)
        clock.advance()
        outbox.emit(OUT, value())  # 1.6.p.2, epoch 6
        second = outbox.publish_committed(6)  # waits for the first
        assert first is not None
        assert second is not None
        await asyncio.gather(first, second)
        return egresses, noted, failures, len(outbox)

    egresses, noted, failures, held = asyncio.run(scenario())
    assert egresses.published == [(6, ["1.5.p.1", "1.6.p.2"])]  # 5's records went with 6's
    assert noted == [6]  # never 5 alone, whose records had not gone out
    assert failures == []  # a Kafka egress failing is not a failure of the runtime's log
    assert held == 0


def test_a_failure_of_the_runtime_log_is_reported_and_nothing_is_noted() -> None:
    async def scenario() -> tuple[Egresses, list[int], list[str], int]:
        egresses, noted, failures = Egresses(), [], []
        outbox, _ = outbox_at(5, egresses, noted, failures)
        outbox.emit(OUT, value())
        egresses.fail = "log"
        task = outbox.publish_committed(5)
        assert task is not None
        await task
        return egresses, noted, failures, len(outbox)

    egresses, noted, failures, held = asyncio.run(scenario())
    assert egresses.published == []
    assert noted == []
    assert len(failures) == 1
    assert "publishing egress of checkpoint 5 failed: the disk is full" in failures[0]
    assert held == 1  # kept for the rollback's restore to publish again


@pytest.mark.parametrize("published_through", [0, 5])
def test_a_restore_holds_what_is_not_out_yet(published_through: int) -> None:
    async def scenario() -> list[str]:
        egresses, noted, failures = Egresses(), [], []
        before, clock = outbox_at(5, egresses, noted, failures)
        before.emit(OUT, value())
        clock.advance()
        before.emit(OUT, value())
        part = before.capture()
        assert part.releases
        after, _ = outbox_at(7, egresses, noted, failures)
        assert part.part is not None
        after.restore(decode_egress_items(part.part), published_through)
        task = after.publish_committed(6)
        if task is not None:
            await task
        return [i for _, ids in egresses.published for i in ids]

    published = asyncio.run(scenario())
    assert published == (["1.5.p.1", "1.6.p.2"] if published_through == 0 else ["1.6.p.2"])


class KafkaWriter:
    """A fake of the at-least-once Kafka egress writer: what it was given, in order."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, topic: str, record: Record) -> asyncio.Future[list[int]]:
        self.sent.append(record.value)
        done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        done.set_result([len(self.sent) - 1])
        return done


def kafka_item(n: int) -> EgressItem:
    record = KafkaProducerRecord("topic", b"%d" % n).encode()
    return EgressItem(f"1.1.p.{n}", OUT, TypedValue("type/kafka", record), 1)


def test_an_at_least_once_kafka_record_waits_until_the_log_holds_its_input() -> None:
    # The worker takes records early (before they are durable): what it sends to Kafka
    # at once must not be out before they are, or a failed write would leave a record
    # out that no replay produces again.
    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes], bool]:
        log = MemoryLog()
        await log.ensure_topic("in", 1)
        module = ModuleSpec(egresses=(KafkaEgress(OUT, "kafka:9092", "at-least-once"),))
        egresses = egress.Egresses(log, Topics("app"), module, None)  # type: ignore[arg-type]
        writer = KafkaWriter()
        egresses._kafka[OUT] = writer  # type: ignore[assignment]
        appended = log.append("in", 0, [Record(b"input")])
        first = egresses.publish_at_once(kafka_item(1))
        second = egresses.publish_at_once(kafka_item(2))
        before = list(writer.sent)
        await appended
        await asyncio.gather(first, second)
        after = list(writer.sent)
        failing = MemoryLog()
        await failing.ensure_topic("in", 1)
        lost = egress.Egresses(failing, Topics("app"), module, None)  # type: ignore[arg-type]
        lost_writer = KafkaWriter()
        lost._kafka[OUT] = lost_writer  # type: ignore[assignment]
        doomed = failing.append("in", 0, [Record(b"input")])
        never = lost.publish_at_once(kafka_item(3))
        doomed.set_exception(LogError("the disk is full"))  # the write failed
        failed = False
        try:
            await never
        except LogError:
            failed = True
        return before, after, lost_writer.sent, failed

    before, after, lost, failed = asyncio.run(scenario())
    assert before == []  # nothing out while the input is not durable
    assert after == [b"1", b"2"]  # then in the order they were sent
    assert lost == []
    assert failed
