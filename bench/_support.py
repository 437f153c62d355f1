"""What both benchmarks share: child processes (started on loopback, always stopped),
free ports, CPU seconds from ``/proc``, percentiles and plain-text tables."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def runtime_command(
    module: Path, port: int, *options: str, log_level: str = "warning"
) -> list[str]:
    """``statefun run`` as users run it (``python -m runtime.cli run``) with ``module``,
    the ingress on ``port`` of the loopback address, and ``options`` (the log, ...)."""
    return [
        sys.executable,
        "-m",
        "runtime.cli",
        "run",
        "--module",
        str(module),
        *options,
        "--ingress-host",
        HOST,
        "--ingress-port",
        str(port),
        "--log-level",
        log_level,
    ]


def endpoint_yaml(functions: str, functions_port: int) -> str:
    """A module spec document: the endpoint serving ``functions`` (``ns/*``) on
    ``functions_port``, every timeout spelled out (an omitted one was once read as
    milliseconds)."""
    return f"""\
kind: io.statefun.endpoints.v2/http
spec:
  functions: {functions}
  urlPathTemplate: http://{HOST}:{functions_port}/statefun
  transport:
    timeouts:
      call: 2 min
      connect: 10 s
      read: 10 s
      write: 10 s
"""


_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LIBC = ctypes.CDLL(None, use_errno=True)


def free_port() -> int:
    """A port that was free a moment ago (bound to port 0 on loopback, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads included (/proc/<pid>/stat)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def cpu_seconds_of(stat_path: Path) -> float:
    """User + system CPU seconds from a ``stat`` file of /proc (a process's or a thread's)."""
    stat = stat_path.read_bytes()
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / _CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread and of all its other threads together."""
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = cpu_seconds_of(task / "stat")
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        if int(task.name) == pid:
            main = seconds
        else:
            others += seconds
    return main, others


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns separated by two spaces, the first ``left`` left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the benchmark process dies (even by SIGKILL)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Child:
    """A process started from the repository root, its output going to ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, grace: float | None = None):
        self.name = name
        self.log_path = log_path
        self.grace = grace
        """Seconds from SIGTERM to SIGKILL when stopped; None: the :class:`Children`'s."""
        self._log: IO[bytes] = log_path.open("wb")
        # Its own session: a Ctrl-C in the terminal reaches only the benchmark, which then
        # stops its children itself (in order, and after reading their CPU use).
        self.process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def problems(self) -> list[str]:
        """Lines of its log at WARNING or above, or from a traceback."""
        self._log.flush()
        keys = ("WARNING", "ERROR", "CRITICAL", "Traceback")
        return [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if any(k in line for k in keys)
        ]

    def check_alive(self) -> None:
        status = self.process.poll()
        if status is not None:
            raise BenchError(
                f"{self.name} exited with status {status}; its output:\n{self.log_tail()}"
            )

    async def wait_healthy(self, session: aiohttp.ClientSession, url: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise BenchError(f"{self.name} did not become healthy at {url}:\n{self.log_tail()}")


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


class Children:
    """Child processes that are always stopped on exit: SIGTERM, then SIGKILL after ``grace``.

    Entering it also turns the benchmark's own SIGTERM into an exception, so ``with``
    blocks unwind (and stop the children) as on Ctrl-C.
    """

    def __init__(self, grace: float = 10.0):
        self.grace = grace
        self._children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], log_path: Path, grace: float | None = None
    ) -> Child:
        child = Child(name, argv, log_path, grace)
        self._children.append(child)
        return child

    def start_functions(
        self, port: int, workdir: Path, host: str = "127.0.0.1", app: str = "bench.functions:app"
    ) -> Child:
        """A benchmark's function server on ``port``: uvicorn serving ``app`` (by default
        ``bench.functions``; ``python -m bench.peer``: ``bench.peer_functions``)."""
        return self.start(
            "the function server",
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            workdir / "functions.log",
        )

    def stop(self) -> None:
        """Stop the children one by one, the last started first: the runtime goes while the
        functions (and the Kafka broker) still answer, so it can finish what it has in
        flight."""
        children, self._children = self._children, []
        for child in reversed(children):
            if child.process.poll() is None:
                grace = self.grace if child.grace is None else child.grace
                child.process.terminate()
                try:
                    child.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    print(
                        f"bench: {child.name} did not stop within {grace:g} s of SIGTERM; "
                        "killing it",
                        file=sys.stderr,
                    )
                    child.process.kill()
                    child.process.wait()
            child._log.close()

    def __enter__(self) -> Children:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Stop before giving SIGTERM back its default: a second one must not kill us mid-way.
        self.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


@dataclass(frozen=True, slots=True)
class Workload:
    """``messages`` to ``addresses`` addresses, ``concurrency`` in flight (``mode``: what
    the table calls it)."""

    messages: int
    addresses: int
    concurrency: int
    mode: str = ""

    def ids(self, prefix: str) -> list[str]:
        return [f"{prefix}-{a}" for a in range(self.addresses)]

    def expected(self) -> list[int]:
        """Messages per address: address ``a`` gets messages ``a, a + A, a + 2A, ...``."""
        base, extra = divmod(self.messages, self.addresses)
        return [base + (1 if a < extra else 0) for a in range(self.addresses)]
