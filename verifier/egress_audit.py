"""The egress auditor: reads an egress all along a run, as a downstream reader would,
and judges what it delivered.

A reader (:class:`EmbeddedEgressReader` for ``GET /v1/egress/verify/out``,
:class:`KafkaEgressReader` for the Kafka egress topic) is polled about once a second
from the first record on, across every ``kill -9`` and rollback, and at the end. Every
record carries the runtime's id (the ``statefun.egress-id`` header; ``id`` in the
ingress API) and the verifier's content ``{"cmd", "at", "n", "nonce"}``, where
``nonce`` is drawn afresh by every execution of the command (``verifier.functions``)
and kept in the address's ``emitted`` state. :class:`EgressAudit` drops repeats by id,
as a reader told to do so would, and finds:

- ``id reused``: one id delivered with two different contents (ids are not unique, so
  dropping repeats by id would lose a record);
- ``position rewritten``: a position of the egress (offset, or partition and offset)
  that holds another record, in a read of the whole egress at the end, than the one
  delivered there during the run (a record a reader saw was lost, its place taken);
- ``twice``: after dropping repeats by id, one command's record delivered more than
  once (under another id: a reader still sees it twice);
- ``rolled back``: a record whose nonce is not the one the address's state kept for its
  command, or whose command the state does not hold at all: the execution that emitted
  it was rolled back (checked against a state read after the record was delivered);
- ``unexpected``: a record the oracle does not expect (of a cancelled send, or foreign);
- ``missing`` (at the end): a record the oracle expects that was never delivered.

The repeats dropped by id are counted, not failed: where the runtime may deliver them
(a crash while publishing, on a broker without transactions) is documented.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from verifier.checks import AddressState

ID_HEADER = "statefun.egress-id"


@dataclass(frozen=True, slots=True)
class Delivered:
    """One record as a reader got it."""

    id: str
    position: str
    cmd: str
    at: str
    n: int
    nonce: str

    @property
    def content(self) -> tuple[str, str, int, str]:
        return (self.cmd, self.at, self.n, self.nonce)

    @classmethod
    def parse(cls, record_id: str, position: str, value: Mapping[str, Any]) -> Delivered:
        return cls(
            record_id,
            position,
            str(value["cmd"]),
            str(value["at"]),
            int(value["n"]),
            str(value["nonce"]),
        )


@dataclass
class EgressAudit:
    """What one egress delivered, and what is wrong with it (see the module docstring)."""

    name: str
    by_id: dict[str, Delivered] = field(default_factory=dict)
    by_position: dict[str, Delivered] = field(default_factory=dict)
    by_command: dict[tuple[str, int], Delivered] = field(default_factory=dict)
    delivered: int = 0
    """Records read, repeats included."""
    repeats: int = 0
    """Records dropped because their id was delivered before (with the same content)."""
    unchecked: list[Delivered] = field(default_factory=list)
    """Distinct records not yet checked against a state read after their delivery."""

    def add(self, records: Iterable[Delivered]) -> list[tuple[str, str]]:
        """Take newly read records; the problems they show, ``(kind, detail)``."""
        problems: list[tuple[str, str]] = []
        for record in records:
            self.delivered += 1
            self.by_position[record.position] = record
            first = self.by_id.get(record.id)
            if first is not None:
                if first.content != record.content:
                    problems.append(
                        (
                            "id reused",
                            f"id {record.id} delivered as {first.content} and as {record.content}",
                        )
                    )
                else:
                    self.repeats += 1
                continue
            self.by_id[record.id] = record
            self.unchecked.append(record)
            other = self.by_command.setdefault((record.cmd, record.n), record)
            if other is not record:
                same = "the same execution" if other.nonce == record.nonce else "two executions"
                problems.append(
                    (
                        "twice",
                        f"command {record.cmd}'s record delivered under ids {other.id} and "
                        f"{record.id} ({same})",
                    )
                )
        return problems

    def check_states(
        self, states: Mapping[str, AddressState], final: bool = False
    ) -> list[tuple[str, str]]:
        """Check the records delivered before ``states`` were read against them: each
        must come from the execution whose effects the state kept. A record whose
        address was not read waits for the next check, unless this is the ``final`` one."""
        problems: list[tuple[str, str]] = []
        waiting: list[Delivered] = []
        for record in self.unchecked:
            state = states.get(record.at)
            if state is None and not final:
                waiting.append(record)
                continue
            kept = None if state is None else state.emitted.get(record.cmd)
            if kept == record.nonce:
                continue
            why = (
                "its address could not be read"
                if state is None
                else "the state does not hold its command"
                if kept is None
                else f"the state kept nonce {kept}"
            )
            problems.append(
                (
                    "rolled back",
                    f"record {record.id} of command {record.cmd} at {record.at} has nonce "
                    f"{record.nonce}, but {why}: it came from rolled-back work",
                )
            )
        self.unchecked = waiting
        return problems

    def reread(self, records: Iterable[Delivered]) -> list[tuple[str, str]]:
        """Compare a read of the whole egress from its start with what was delivered
        all along: a position that now holds another record was rewritten (what a reader
        saw there was lost); a record at a new position is delivered now."""
        problems: list[tuple[str, str]] = []
        new: list[Delivered] = []
        for record in records:
            before = self.by_position.get(record.position)
            if before is None:
                new.append(record)
            elif before != record:
                problems.append(
                    (
                        "position rewritten",
                        f"{record.position} delivered {before.id} {before.content}, now "
                        f"holds {record.id} {record.content}",
                    )
                )
        return problems + self.add(new)

    def unexpected(self, possible: set[tuple[str, int]]) -> list[tuple[str, str]]:
        """Records of commands the oracle never runs (cancelled sends, foreign ids)."""
        extra = sorted(k for k in self.by_command if k not in possible)
        if not extra:
            return []
        return [("unexpected", f"{len(extra)} records of work never meant to run: {extra[:5]}")]

    def missing(self, expected: set[tuple[str, int]]) -> list[tuple[str, str]]:
        lost = sorted(expected - self.by_command.keys())
        if not lost:
            return []
        return [("missing", f"{len(lost)} records of committed work never delivered: {lost[:5]}")]

    def summary(self, expected: int) -> str:
        return (
            f"{len(self.by_id)} distinct of {expected} expected, {self.delivered} read "
            f"({self.repeats} repeats dropped by id)"
        )


class EmbeddedEgressReader:
    """Reads an embedded egress through ``GET /v1/egress/{id}``, from where it left off."""

    def __init__(self, egress_id: str, start: int = 0):
        self.egress_id = egress_id
        self.next = start

    async def read(self, http: httpx.AsyncClient) -> list[Delivered]:
        """Everything new; raises ``httpx.HTTPError`` if the ingress does not answer."""
        out: list[Delivered] = []
        while True:
            answer = await http.get(
                f"/v1/egress/{self.egress_id}", params={"from": self.next, "limit": 5_000}
            )
            answer.raise_for_status()
            page = answer.json()
            out += [
                Delivered.parse(r["id"], f"offset {r['offset']}", r["value"])
                for r in page["records"]
            ]
            if not page["records"]:
                return out
            self.next = page["next"]


class KafkaEgressReader:
    """Reads a Kafka egress topic from the beginning with its own consumer (assigned
    partitions, no group), keeping its position across the runtime's restarts."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            allow_auto_create_topics=False,
        )
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer.assign(self._partitions)

    def _poll(self) -> list[Delivered]:
        """Everything up to the end offsets as of now (at most 30 s of polling)."""
        end = self._consumer.end_offsets(self._partitions)
        deadline = time.monotonic() + 30
        out: list[Delivered] = []
        while any(self._consumer.position(tp) < end[tp] for tp in self._partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.topic} to its end within 30 s")
            for tp, records in self._consumer.poll(timeout_ms=200, max_records=5_000).items():
                for r in records:
                    headers = dict(r.headers or [])
                    out.append(
                        Delivered.parse(
                            headers.get(ID_HEADER, b"").decode(),
                            f"partition {tp.partition} offset {r.offset}",
                            json.loads(r.value),
                        )
                    )
        return out

    async def read(self, http: httpx.AsyncClient | None = None) -> list[Delivered]:
        return await asyncio.to_thread(self._poll)

    def close(self) -> None:
        self._consumer.close()


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create the Kafka egress topic before the runtime writes to it."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
