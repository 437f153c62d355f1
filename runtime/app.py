"""One runtime process: the log, the router, the worker, the egresses, the Kafka
ingresses and the HTTP ingress, started and stopped together.

``Runtime.open`` picks the log: Kafka (``kafka`` set), the durable embedded log under
a data directory, or the in-memory one; ``serve`` runs until SIGINT or SIGTERM, then
stops taking requests, lets calls in flight finish (bounded) and closes the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from runtime.dead_letters import DeadLetters
from runtime.egress import Egresses
from runtime.ingress import create_ingress_app
from runtime.kafka_clusters import KafkaClusters
from runtime.kafka_ingress import KafkaIngressReader
from runtime.log import Log
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog
from runtime.log.sqlite import SqliteLog
from runtime.replies import ReplyWaiters
from runtime.router import Router
from runtime.routing import Topics
from runtime.worker import Worker, WorkerConfig
from statefun.address import Address
from statefun.module_spec import ModuleSpec
from statefun.values import TypedValue

log = logging.getLogger("runtime")

SHUTDOWN_GRACE = 5
"""Seconds the ingress lets requests in flight finish when the runtime stops."""


@dataclass(frozen=True)
class RuntimeConfig:
    module: ModuleSpec
    data_dir: Path | None = None
    """Where the embedded log lives; None keeps everything in memory (tests)."""
    kafka: str | None = None
    """Bootstrap servers of the Kafka cluster holding the log; None: the embedded log."""
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8090
    messages_partitions: int = 8
    app_id: str = "statefun"
    """Names the runtime's own topics and consumer group (see ``runtime.routing.Topics``)."""
    max_body_bytes: int = 1 << 20
    worker: WorkerConfig = field(default_factory=WorkerConfig)


class Runtime:
    def __init__(
        self, config: RuntimeConfig, log_: Log, *, transport: httpx.AsyncBaseTransport | None = None
    ):
        self.config = config
        self.module = config.module
        self.log = log_
        self.replies = ReplyWaiters()
        topics = Topics(config.app_id)
        self.router = Router(log_, config.module, self.replies, topics, config.messages_partitions)
        self.kafka_clusters = KafkaClusters(log_, config.kafka)
        self.egresses = Egresses(log_, topics, config.module, self.kafka_clusters)
        self.dead_letters = DeadLetters(log_, topics.dead_letters)
        self.worker = Worker(
            log_,
            config.module,
            self.router,
            self.egresses,
            config=config.worker,
            transport=transport,
        )
        self.kafka_ingresses: list[KafkaIngressReader] = []
        self.ingress_app: FastAPI = create_ingress_app(self)

    @classmethod
    async def open(
        cls, config: RuntimeConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> Runtime:
        log_: Log
        if config.kafka:
            log_ = await KafkaLog.open(config.kafka)
        elif config.data_dir:
            log_ = await SqliteLog.open(config.data_dir)
        else:
            log_ = MemoryLog()
        return cls(config, log_, transport=transport)

    async def start(self) -> None:
        await self.router.create_topics()
        await self.dead_letters.create_topic()
        await self.egresses.start()
        await self.worker.start()
        for spec in self.module.ingresses:
            cluster = await self.kafka_clusters.get(spec.address, f"ingress {spec.id}")
            reader = KafkaIngressReader(
                spec, cluster, self.router, self.dead_letters, self.config.app_id
            )
            await reader.start()
            self.kafka_ingresses.append(reader)

    def begin_shutdown(self) -> None:
        """Answer the calls waiting for replies now, so the ingress can stop promptly."""
        self.replies.close()

    async def stop(self) -> None:
        for reader in self.kafka_ingresses:
            await reader.stop()
        await self.worker.stop()
        await self.kafka_clusters.close()
        await self.log.close()

    async def append_message(
        self, target: Address, caller: Address | None, value: TypedValue
    ) -> tuple[int, int]:
        """Append a message from outside; (partition, offset) once it is durable."""
        partition, append = self.router.append(target, caller, value)
        (offset,) = await append
        return partition, offset

    async def serve(self) -> None:
        """Start, serve the ingress until SIGINT or SIGTERM, then stop cleanly."""
        server = _IngressServer(
            uvicorn.Config(
                self.ingress_app,
                host=self.config.ingress_host,
                port=self.config.ingress_port,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=SHUTDOWN_GRACE,
            )
        )

        def on_signal(sig: int) -> None:
            log.info("received %s", signal.Signals(sig).name)
            self.begin_shutdown()
            server.request_exit()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        await self.start()
        try:
            log.info(
                "ingress listening on http://%s:%d",
                self.config.ingress_host,
                self.config.ingress_port,
            )
            await server.serve()
            if not server.started:
                raise OSError(
                    f"the ingress could not listen on {self.config.ingress_host}:"
                    f"{self.config.ingress_port}"
                )
        finally:
            log.info("stopping: finishing calls in flight")
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            log.info("stopped")


class _IngressServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
