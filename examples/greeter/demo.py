"""The whole greeter example in one command, on the embedded log (no Kafka, no Docker).

Starts the example's functions (uvicorn, port 8000) and the runtime (ingress on port
8090, log in a fresh temporary directory), sends messages through the HTTP ingress,
prints the replies, the state and the egress, and stops both. Run it from the
repository root: ``python -m examples.greeter.demo``. ``$DEMO_FUNCTIONS_PORT`` and
``$DEMO_INGRESS_PORT`` choose other ports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
FUNCTIONS_PORT = int(os.environ.get("DEMO_FUNCTIONS_PORT", "8000"))
INGRESS_PORT = int(os.environ.get("DEMO_INGRESS_PORT", "8090"))
INGRESS = f"http://127.0.0.1:{INGRESS_PORT}"


def wait_healthy(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"demo: {what} exited with status {process.returncode} (is its port in use?)"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not become healthy at {url}")


def statefun(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args, "--ingress", INGRESS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    if done.returncode != 0:
        raise SystemExit(f"demo: statefun {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="statefun-demo-") as data_dir:
        functions = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.greeter.functions:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(FUNCTIONS_PORT),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
        )
        runtime = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "run",
                "--module",
                str(HERE / "module.yaml"),
                "--data-dir",
                data_dir,
                "--ingress-port",
                str(INGRESS_PORT),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "GREETER_FUNCTIONS_URL": f"http://127.0.0.1:{FUNCTIONS_PORT}/statefun",
            },
        )
        try:
            wait_healthy(f"http://127.0.0.1:{FUNCTIONS_PORT}/health", functions, "the functions")
            wait_healthy(f"{INGRESS}/health", runtime, "the runtime")
            print(f"functions on :{FUNCTIONS_PORT}, runtime ingress on :{INGRESS_PORT}\n")
            for name in ("Alice", "Bob", "Alice"):
                print(f"$ statefun call example/greeter/{name} {name}")
                print(statefun("call", f"example/greeter/{name}", name), "\n")
            print(f"$ curl localhost:{INGRESS_PORT}/v1/state/example/greeter/Alice")
            print(httpx.get(f"{INGRESS}/v1/state/example/greeter/Alice").text, "\n")
            # The egress is exactly-once: a record comes out when the checkpoint of the
            # work that produced it commits (every second by default).
            deadline = time.monotonic() + 10
            while True:
                egress = httpx.get(
                    f"{INGRESS}/v1/egress/example/greetings", params={"from": 0}
                ).json()
                if len(egress["records"]) >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            print("# egress records come out when their checkpoint commits (every 1 s)")
            print(f"$ curl 'localhost:{INGRESS_PORT}/v1/egress/example/greetings?from=0'")
            print(json.dumps(egress, indent=1))
        finally:
            for process in (runtime, functions):
                process.terminate()
            for process in (runtime, functions):
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
