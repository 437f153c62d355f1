"""Test support: free loopback ports, uvicorn servers and a runtime in background threads."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from runtime.app import Runtime, RuntimeConfig
from runtime.dispatcher import DispatchConfig
from runtime.http_server import IngressServer, bind
from runtime.log.base import Record, StoredRecord
from runtime.log.kafka import KafkaLog
from runtime.log.memory import MemoryLog
from runtime.worker import WorkerConfig
from statefun.module_spec import ModuleSpec, parse_module_spec

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def asgi_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    """The whole body of an ASGI request, from its ``http.request`` messages."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


async def poll_until(predicate: Callable[[], Any], interval: float = 0.01) -> Any:
    """:func:`wait_until` inside an event loop, without blocking it; the caller bounds
    it (``asyncio.timeout``)."""
    while True:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(interval)


class ServerThread:
    """A uvicorn server for an ASGI app, in a thread with its own event loop."""

    def __init__(self, app: Any, port: int | None = None, **tls: Any):
        """``tls``: uvicorn's ``ssl_*`` settings, to serve https."""
        self.port = port or free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            # Requests a test left hanging are cut at stop, not waited for.
            timeout_graceful_shutdown=1,
            **tls,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve()), daemon=True
        )

    def start(self) -> ServerThread:
        self._thread.start()
        wait_until(lambda: self.server.started, timeout=10)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)


@contextmanager
def serve(app: Any, port: int | None = None, **tls: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, port, **tls).start()
    try:
        yield server
    finally:
        server.stop()


def module_for(
    function_url: str,
    *,
    functions: str = "example/*",
    egresses: tuple[str, ...] = (),
    extra: str = "",
    call: str = "3s",
    documents: tuple[str, ...] = (),
    policy: str | None = None,
) -> ModuleSpec:
    """A module spec: one endpoint for ``functions``, embedded egresses, more documents;
    ``policy`` the failure policy of ``functions`` (``fail`` rolls everything back)."""
    docs = [
        f"""
kind: io.statefun.endpoints.v2/http
spec:
  functions: {functions}
  urlPathTemplate: {function_url}
  transport:
    timeouts:
      call: {call}
      read: 2s
{extra}"""
    ]
    docs += [f"kind: statefun.v1/egress\nspec:\n  id: {e}\n" for e in egresses]
    if policy is not None:
        docs.append(
            f"kind: statefun.v1/failure-policy\nspec: {{functions: {functions}, policy: {policy}}}\n"
        )
    docs += list(documents)
    return parse_module_spec("---\n".join(docs))


class RuntimeThread:
    """A runtime with its ingress on a loopback port, in a background thread, served as
    ``statefun run`` serves it (the same bounded HTTP server); ``opener`` replaces
    ``Runtime.open`` (to wrap the log or the store)."""

    def __init__(
        self,
        config: RuntimeConfig,
        opener: Callable[[RuntimeConfig], Awaitable[Runtime]] = Runtime.open,
    ):
        self.config = config
        self.port = config.ingress_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime: Runtime | None = None
        self._opener = opener
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to the test thread
            self._error = e
            self._ready.set()
        finally:
            # Closed here, or its self-pipe is left for the garbage collector, which
            # warns (an error under this suite's filterwarnings) in whatever test runs then.
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _serve(self) -> None:
        self.runtime = await self._opener(self.config)
        try:
            await self.runtime.start()
        except BaseException:
            await self.runtime.stop()  # what it opened is closed, as serve() does
            raise
        self._server = IngressServer(
            self.runtime.ingress_app,
            self.config.ingress_timeouts,
            graceful_shutdown=self.config.ingress_shutdown_grace,
        )
        task = asyncio.create_task(self._server.serve(sockets=[bind("127.0.0.1", self.port)]))
        while not self._server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no started event
            await asyncio.sleep(0.01)
        self._ready.set()
        try:
            await task
        finally:
            await self.runtime.stop()

    def start(self) -> RuntimeThread:
        self._thread.start()
        self._ready.wait(20)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._server is not None:
            runtime = self.runtime
            if runtime is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(runtime.begin_shutdown)
            self._server.should_exit = True
        self._thread.join(timeout=20)
        if self._error is not None:
            raise self._error

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the runtime's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def call_soon(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the runtime's loop and return its result (for inspecting state)."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)
        return box[0]


@contextmanager
def running_runtime(
    module: ModuleSpec,
    *,
    data_dir: Path | None = None,
    worker: WorkerConfig | None = None,
    opener: Callable[[RuntimeConfig], Awaitable[Runtime]] = Runtime.open,
    **config: Any,
) -> Iterator[RuntimeThread]:
    rt = RuntimeThread(
        RuntimeConfig(
            module=module,
            data_dir=data_dir,
            ingress_port=free_port(),
            worker=worker or WorkerConfig(DispatchConfig(retry_max_backoff=0.2)),
            **config,
        ),
        opener,
    )
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()


def unique_app_id() -> str:
    """An application id of its own, so runtimes sharing a broker never share topics."""
    return f"test-{uuid.uuid4().hex[:12]}"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""A ``/metrics`` exposition's samples, by name and labels."""


def scrape(http: httpx.Client) -> Samples:
    """``GET /metrics``, parsed."""
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value (0 if there is none)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` by the value of its one label ``label``."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def client(base_url: str, token: str | None = None) -> httpx.Client:
    """An HTTP client of an ingress, sending ``token`` as its Bearer token if given."""
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return httpx.Client(base_url=base_url, timeout=15, headers=headers)


def post_message(http: httpx.Client, address: str, value: int | str) -> httpx.Response:
    """``POST /v1/messages/{address}``: a string as text, an int as an int."""
    if isinstance(value, str):
        return http.post(
            f"/v1/messages/{address}", content=value, headers={"content-type": "text/plain"}
        )
    return http.post(
        f"/v1/messages/{address}",
        content=str(value),
        params={"type": "io.statefun.types/int"},
        headers={"content-type": "application/json"},
    )


def state_values(http: httpx.Client, address: str) -> dict[str, Any]:
    """The address's state values by name (as JSON)."""
    values: dict[str, Any] = http.get(f"/v1/state/{address}").json()["state"]
    return {name: v["value"] for name, v in values.items()}


def dead_letters(http: httpx.Client) -> list[dict[str, Any]]:
    """The first page of dead letters, as ``GET /v1/dead-letters`` shows them."""
    records: list[dict[str, Any]] = http.get("/v1/dead-letters").json()["records"]
    return records


ROOT = Path(__file__).resolve().parents[1]
"""The repository root, where child processes run."""


class RuntimeProcess:
    """``statefun run`` in a child process (or another ``launcher`` taking its options);
    its stderr goes to a file next to its data."""

    def __init__(
        self,
        module: Path,
        data_dir: Path,
        port: int,
        *flags: str,
        launcher: tuple[str, ...] = ("runtime.cli", "run"),
    ):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.args = [
            sys.executable,
            "-m",
            *launcher,
            "--module",
            str(module),
            "--data-dir",
            str(data_dir),
            "--ingress-port",
            str(port),
            *flags,
        ]
        self.log_path = data_dir.with_name(f"{data_dir.name}-{port}.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, recovered: bool = False) -> RuntimeProcess:
        """Start, and wait until the ingress answers (with ``recovered``, until the
        runtime is ready: ``/ready`` answers 200)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, cwd=ROOT, stderr=log)
        wait_until(lambda: self._answers("/ready" if recovered else "/health"), timeout=30)
        return self

    def _answers(self, path: str) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"runtime exited: {self.log_path.read_text()}")
        try:
            return httpx.get(f"{self.url}{path}", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def signal(self, sig: int) -> tuple[int, str]:
        """Send ``sig``, wait for the exit; the exit status and everything it logged."""
        assert self.process is not None
        self.process.send_signal(sig)
        status = self.process.wait(timeout=30)
        return status, self.log_path.read_text()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)


def write_module(
    path: Path,
    function_url: str,
    *,
    call: str = "5s",
    read: str = "2s",
    egress: str = "exactly-once",
    extra: str = "",
) -> Path:
    """A module.yaml for ``statefun run``: ``test/*`` at ``function_url`` and the embedded
    egress ``test/out``, then ``extra`` documents."""
    path.write_text(
        f"""kind: io.statefun.endpoints.v2/http
spec:
  functions: test/*
  urlPathTemplate: {function_url}
  transport: {{timeouts: {{call: {call}, read: {read}}}}}
---
kind: statefun.v1/egress
spec: {{id: test/out, deliverySemantic: {{type: {egress}}}}}
{extra}"""
    )
    return path


VERIFIER_RUNS = "verifier-runs"
"""The xdist group of the long verifier runs: one worker runs them one after another, so
no two of them load the machine at once (their checks have time bounds)."""


class CountingLog(MemoryLog):
    """A MemoryLog that counts its reads and the records they return."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.records_read = 0

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 1000
    ) -> list[StoredRecord]:
        self.reads += 1
        records = await super().read(topic, partition, offset, max_records)
        self.records_read += len(records)
        return records


async def kafka_log_with_a_record(bootstrap: str, **settings: Any) -> KafkaLog:
    """A Kafka log (``settings``: its timeouts) whose topic ``t`` holds one record, ``a``
    at offset 0: the producer is connected and the partition's leader known."""
    log = await KafkaLog.open(bootstrap, **settings)
    try:
        await log.ensure_topic("t", 1)
        assert await log.append("t", 0, [Record(b"a")]) == [0]
    except BaseException:
        await log.close()
        raise
    return log
