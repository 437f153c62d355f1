"""The official Apache Flink StateFun Python SDK, for the compatibility tests.

Its top-level package is ``statefun``, the name of our contract package, so it cannot
live in the project's virtualenv. :func:`official_sdk_python` makes a virtualenv of its
own for one pinned SDK release (once: it is kept under pytest's cache directory and
reused while it imports), and :class:`FunctionService` runs an official-SDK function
module of this directory (``official_functions.py``, written as StateFun users write
them: ``from statefun import *`` and an aiohttp app) in it, as a subprocess on a free
loopback port.

The test dependency is declared here rather than in pyproject.toml, because pip cannot
install it beside the project: ``SDKS`` pins the releases (``flink-statefun`` 3.5.0 from
the maintained fork, and Apache's last release ``apache-flink-statefun`` 3.3.0, which
needs protobuf 3.20.x), installed from PyPI with their ``aiohttp``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

HERE = Path(__file__).resolve().parent
OFFICIAL_FUNCTIONS = HERE / "official_functions.py"
OFFICIAL_HANDLE = HERE / "official_handle.py"

LATEST = "flink-statefun==3.5.0"
APACHE_LAST = "apache-flink-statefun==3.3.0"
SDKS = {
    LATEST: (LATEST, "aiohttp>=3.9"),
    APACHE_LAST: (APACHE_LAST, "protobuf>=3.20,<3.21", "aiohttp>=3.9"),
}
_CHECK = "import statefun, aiohttp; statefun.RequestReplyHandler"


def _bin(venv: Path, name: str) -> Path:
    return venv / "bin" / name


def _usable(venv: Path, requirements: str) -> bool:
    marker = venv / "requirements.txt"
    python = _bin(venv, "python")
    if not python.exists() or not marker.exists() or marker.read_text() != requirements:
        return False
    # from this directory: `-c` puts the working directory on the path, and the project's
    # root holds our own `statefun`
    done = subprocess.run(
        [python, "-c", _CHECK], cwd=HERE, env=_clean_env(), capture_output=True, timeout=60
    )
    return done.returncode == 0


def official_sdk_python(root: Path, sdk: str = LATEST) -> Path:
    """The python of a virtualenv under ``root`` with the official SDK ``sdk`` installed."""
    requirements = "\n".join(SDKS[sdk]) + "\n"
    root = root.resolve()
    venv = root / sdk.replace("==", "-")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator, if several sessions start at once
        if not _usable(venv, requirements):
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
            done = subprocess.run(
                [_bin(venv, "python"), "-m", "pip", "install", "-q", *SDKS[sdk]],
                env=_clean_env(),
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"could not install the official StateFun SDK ({sdk}) from PyPI:\n"
                    + done.stdout[-2000:]
                    + done.stderr[-4000:]
                )
            (venv / "requirements.txt").write_text(requirements)
    return _bin(venv, "python")


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put our ``statefun`` on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def handle_with_official_sdk(python: Path, requests: list[bytes]) -> list[bytes | None]:
    """The official SDK's answers to serialized ``ToFunction`` requests for the functions
    of ``official_functions.py`` (None where a function raised), in one subprocess."""
    stdin = b"".join(struct.pack(">I", len(r)) + r for r in requests)
    done = subprocess.run(
        [python, OFFICIAL_HANDLE],
        cwd=HERE,
        env=_clean_env(FLAKY_FLAG=str(HERE / "no-such-file")),
        input=stdin,
        capture_output=True,
        timeout=60,
        check=True,
    )
    answers: list[bytes | None] = []
    out, pos = done.stdout, 0
    while pos < len(out):
        (size,) = struct.unpack_from(">I", out, pos)
        pos += 4
        if size == 0xFFFFFFFF:
            answers.append(None)
        else:
            answers.append(out[pos : pos + size])
            pos += size
    return answers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FunctionService:
    """An official-SDK function module served by its own aiohttp app, in a subprocess.

    The module reads its port from ``$PORT`` and serves ``POST /statefun``; :attr:`url`
    is what a module.yaml's ``urlPathTemplate`` names.
    """

    def __init__(self, python: Path, module: Path, log_dir: Path, **env: str):
        self.python = python
        self.module = module
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/statefun"
        self._env = _clean_env(PORT=str(self.port), **env)
        self._log_path = log_dir / f"{module.stem}-{self.port}.log"
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> FunctionService:
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [self.python, self.module],
            cwd=self.module.parent,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.module.name} exited:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.module.name} did not listen on {self.port}:\n{self.output()}"
                    ) from None
                time.sleep(0.05)

    def output(self) -> str:
        """What the service printed so far (its tracebacks, for one)."""
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> FunctionService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
