"""Retention: what the runtime drops from its own log, so the log stays bounded.

* The messages topic, on the embedded logs: after the checkpoint coordinator prunes
  the store to its retained checkpoints, each partition's records below the lowest
  read floor (``WorkerPart.read_floor``: the read position, or an earlier offset an
  overflowed address still needs) over every retained checkpoint are dropped, and never
  above where the records of idempotency keys held at a retained checkpoint may be (its
  key floors). A restore, from any retained checkpoint (a fallback from a damaged one
  included), and the idempotency keys' recovery (from the restored read positions, or
  lower where keys were held) only read at or above that floor. Nothing is dropped while no checkpoint is retained.
* The embedded egress topics and the dead-letter topic keep a time window
  (``--egress-retention``, default 7 days, 0 to keep everything): older records are
  dropped, every minute.
* On Kafka, the runtime's topics are created with retention settings instead
  (:meth:`Retention.create_topics`): ``retention.ms`` of the window for the egress and
  dead-letter topics, and a long one for the messages topic (``--messages-retention``,
  default 30 days, 0 to keep everything), since Kafka cannot know which records a
  checkpoint still needs: a checkpoint older than that, or a backlog that waited
  longer, cannot be replayed. The control topic (the log's identity) is kept forever.
  Settings apply when a topic is created; an existing topic keeps its own.

Deleting runs off the event loop (the SQLite log's writer thread, in bounded steps);
decoding the retained checkpoints' parts runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from runtime.checkpoints.snapshot import KEYS_PART, WORKER_PART, decode_worker_part
from runtime.checkpoints.store import CheckpointStore
from runtime.config import EGRESS_RETENTION, KAFKA_MESSAGES_RETENTION
from runtime.idempotency import decode_floors
from runtime.identity import CONTROL_TOPIC_CONFIG
from runtime.log import Log
from runtime.log.local import LocalLog
from runtime.routing import Topics
from statefun.module_spec import LogEgress, ModuleSpec

log = logging.getLogger(__name__)

WINDOW_INTERVAL = 60.0
"""Seconds between two passes over the windowed topics."""


def read_floors(
    parts: Sequence[bytes], partitions: int, key_parts: Sequence[bytes] = ()
) -> dict[int, int]:
    """Per partition, the lowest offset any of these worker parts reads again (0 where
    one of them does not say), or below it any of these idempotency-key parts."""
    floors: dict[int, int] = {}
    for data in parts:
        floor = decode_worker_part(data).read_floor()
        for partition in range(partitions):
            offset = floor.get(partition, 0)
            floors[partition] = min(floors.get(partition, offset), offset)
    for data in key_parts:
        for partition, offset in decode_floors(data).items():
            if partition in floors:
                floors[partition] = min(floors[partition], offset)
    return floors


def windowed_topics(topics: Topics, module: ModuleSpec) -> list[str]:
    """The topics that keep a record for the egress window: the embedded egresses' and
    the dead letters'."""
    return [
        *(topics.egress(e.id) for e in module.egresses if isinstance(e, LogEgress)),
        topics.dead_letters,
    ]


def topic_configs(
    topics: Topics,
    windowed: Sequence[str],
    partitions: int,
    *,
    egress_window: float,
    messages_retention: float,
) -> dict[str, tuple[int, Mapping[str, str]]]:
    """The runtime's own topics: their partition counts and creation settings (Kafka's
    ``retention.ms``; the embedded logs keep none, retention truncates them)."""
    window, messages = (
        str(int(seconds * 1000) if seconds else -1)
        for seconds in (egress_window, messages_retention)
    )
    return {
        topics.messages: (partitions, {"retention.ms": messages}),
        topics.control: (1, CONTROL_TOPIC_CONFIG),
        **{topic: (1, {"retention.ms": window}) for topic in windowed},
    }


async def create_topics(log_: Log, configs: Mapping[str, tuple[int, Mapping[str, str]]]) -> None:
    """Create these topics with their settings (before anything else creates them without)."""
    for topic, (partitions, config) in configs.items():
        await log_.ensure_topic(topic, partitions, config)


class Retention:
    def __init__(
        self,
        log_: Log,
        store: CheckpointStore,
        topics: Topics,
        module: ModuleSpec,
        partitions: int,
        *,
        egress_window: float = EGRESS_RETENTION,
        messages_retention: float = KAFKA_MESSAGES_RETENTION,
        clock: Callable[[], float] = time.time,
    ):
        self._log = log_
        self._store = store
        self._topics = topics
        self._partitions = partitions
        self._egress_window = egress_window
        self._messages_retention = messages_retention
        self._clock = clock
        self._windowed = windowed_topics(topics, module)
        self._truncating: asyncio.Task[None] | None = None
        self._again = False
        self._windows: asyncio.Task[None] | None = None

    @property
    def embedded(self) -> LocalLog | None:
        return self._log if isinstance(self._log, LocalLog) else None

    def topic_configs(self) -> dict[str, tuple[int, Mapping[str, str]]]:
        """The runtime's own topics: their partition counts and creation settings."""
        return topic_configs(
            self._topics,
            self._windowed,
            self._partitions,
            egress_window=self._egress_window,
            messages_retention=self._messages_retention,
        )

    async def create_topics(self) -> None:
        """Create the runtime's own topics with their retention settings (before anything
        else creates them without)."""
        await create_topics(self._log, self.topic_configs())

    # --- the messages topic -----------------------------------------------------------------

    def pruned(self) -> None:
        """The store was pruned to its retained checkpoints: drop what none of them needs."""
        if self.embedded is None:
            return
        if self._truncating is not None:
            self._again = True  # once more when this pass ends, with the newer floors
            return
        self._truncating = asyncio.create_task(self._truncate_messages(), name="retention")

    async def _truncate_messages(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self.truncate_messages()
                except Exception as e:
                    log.warning("dropping old records of %s failed: %s", self._topics.messages, e)
                if not self._again:
                    return
        finally:
            self._truncating = None

    async def truncate_messages(self) -> dict[int, int]:
        """Drop the messages below the lowest read floor over every retained checkpoint;
        the new start of each partition ({} if nothing can be dropped)."""
        embedded = self.embedded
        if embedded is None:
            return {}
        parts = await self._store.retained_parts(WORKER_PART)
        if not parts:
            return {}
        keys = await self._store.retained_parts(KEYS_PART)
        floors = await asyncio.to_thread(read_floors, parts, self._partitions, keys)
        return {
            partition: await embedded.truncate(self._topics.messages, partition, floor)
            for partition, floor in floors.items()
        }

    # --- the windowed topics ----------------------------------------------------------------

    def start(self) -> None:
        if self.embedded is not None and self._egress_window and self._windows is None:
            self._windows = asyncio.create_task(self._keep_windows(), name="retention-windows")

    async def _keep_windows(self) -> None:
        while True:
            try:
                await self.apply_windows()
            except Exception as e:
                log.warning("dropping old egress and dead-letter records failed: %s", e)
            await asyncio.sleep(WINDOW_INTERVAL)

    async def apply_windows(self) -> None:
        """Drop the egress and dead-letter records appended before the window."""
        embedded = self.embedded
        if embedded is None:
            return
        horizon = int((self._clock() - self._egress_window) * 1000)
        for topic in self._windowed:
            starts = await embedded.start_offsets(topic, horizon)
            for partition, start in enumerate(starts):
                await embedded.truncate(topic, partition, start)

    async def stop(self) -> None:
        for task in (self._windows, self._truncating):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._windows = self._truncating = None
