"""The ingress tells the truth and answers in JSON: addresses are read from the raw
path (no '/' hidden in a namespace or type, no '.' or '..' segment), an unexpected
error is a 500 JSON answer logged once, ``/health`` is liveness and ``/ready`` lists
degraded function types without failing."""

from __future__ import annotations

import http.client
import json
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from functions import make_test_functions
from support import (
    ROOT,
    RuntimeProcess,
    RuntimeThread,
    client,
    free_port,
    module_for,
    running_runtime,
    serve,
    wait_until,
)

from runtime import cli
from runtime.health import FunctionTypeHealth
from statefun.address import Address

INT = {"content-type": "application/json"}


@pytest.fixture
def runtime() -> Iterator[RuntimeThread]:
    with (
        serve(make_test_functions().asgi_app()) as functions,
        running_runtime(
            module_for(f"{functions.url}/statefun", functions="test/*", egresses=("test/out",))
        ) as rt,
    ):
        yield rt


def raw(rt: RuntimeThread, method: str, path: str, body: str = "") -> tuple[int, dict[str, Any]]:
    """A request with ``path`` sent as is (httpx would normalize dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", rt.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"content-type": "text/plain"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "problem"),
    [
        ("POST", "/v1/messages/test/coun%2Fter/x", "contains '/'"),
        ("POST", "/v1/messages/te%2Fst/counter/x", "contains '/'"),
        ("POST", "/v1/messages/test/counter/..", "'..'"),
        ("POST", "/v1/messages/test/counter/%2E%2E", "'..'"),
        ("POST", "/v1/messages/test/counter/a/./b", "'.'"),
        ("POST", "/v1/messages/test/counter/a%2F..%2Fb", "'..'"),
        ("POST", "/v1/messages/test/../x", "'..'"),
        ("POST", "/v1/call/test/coun%2Fter/x", "contains '/'"),
        ("POST", "/v1/call/%2E/counter/x", "'.'"),
        ("GET", "/v1/state/test/coun%2Fter/x", "contains '/'"),
        ("GET", "/v1/state/test/counter/x/..", "'..'"),
    ],
)
def test_path_segments_that_hide_a_slash_or_a_dot_segment_are_refused(
    runtime: RuntimeThread, method: str, path: str, problem: str
) -> None:
    status, body = raw(runtime, method, path, "1")
    assert status == 400, body
    assert body["error"] == "bad_address"
    assert problem in body["detail"]


def test_an_id_may_contain_slashes_however_it_is_written(
    runtime: RuntimeThread, capsys: pytest.CaptureFixture[str]
) -> None:
    with client(runtime.url) as http:
        for path in ("/v1/messages/test/counter/a/b", "/v1/messages/test/counter/a%2Fb"):
            assert (
                http.post(
                    path, content="2", params={"type": "io.statefun.types/int"}, headers=INT
                ).status_code
                == 202
            )
        # and from the command line, which quotes every part of the address
        assert (
            cli.main(
                [
                    "send",
                    "test/counter/a/b",
                    "3",
                    "--type",
                    "io.statefun.types/int",
                    "--ingress",
                    runtime.url,
                ]
            )
            == 0
        )
        capsys.readouterr()

        def count() -> Any:
            return (
                http.get("/v1/state/test/counter/a/b").json()["state"].get("count", {}).get("value")
            )

        wait_until(lambda: count() == 7)
        assert http.get("/v1/state/test/counter/a%2Fb").json()["state"]["count"]["value"] == 7


def test_an_unexpected_error_is_a_json_500_logged_once(
    runtime: RuntimeThread, caplog: pytest.LogCaptureFixture
) -> None:
    rt = runtime.runtime
    assert rt is not None

    def broken(address: Address) -> Any:
        raise RuntimeError("a bug")

    rt.state_of = broken  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    with client(runtime.url) as http:
        answer = http.get("/v1/state/test/counter/x")
    assert answer.status_code == 500
    assert answer.json()["error"] == "internal"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is not None
    assert "GET /v1/state/test/counter/x" in errors[0].getMessage()


def test_health_is_liveness_and_ready_lists_degraded_function_types(
    runtime: RuntimeThread,
) -> None:
    rt = runtime.runtime
    assert rt is not None
    with client(runtime.url) as http:
        assert http.get("/health").json() == {"status": "ok"}
        wait_until(lambda: http.get("/ready").status_code == 200)
        ready = http.get("/ready").json()
        assert ready["ready"] is True
        assert ready["reasons"] == {}
        assert ready["functions"] == []
        degraded = FunctionTypeHealth(
            "test/flaky",
            failing_addresses=2,
            unavailable=True,
            last_error="answered 500",
            failing_since_ms=0,
        )
        rt.health.functions = lambda: [degraded]
        answer = http.get("/ready")
        assert answer.status_code == 200  # one bad function does not take the ingress out
        assert answer.json()["functions"] == [
            {
                "function_type": "test/flaky",
                "failing_addresses": 2,
                "unavailable": True,
                "paused": False,
                "dead_lettered": 0,
                "last_error": "answered 500",
                "failing_since": "1970-01-01T00:00:00.000+00:00",
            }
        ]


def test_a_port_in_use_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    module = tmp_path / "module.yaml"
    module.write_text(
        "kind: io.statefun.endpoints.v2/http\n"
        "spec: {functions: test/*, urlPathTemplate: 'http://127.0.0.1:9/statefun'}\n"
    )
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "runtime.cli", "run", "--module", str(module)),
                *("--data-dir", str(tmp_path / "data"), "--ingress-port", str(port)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"statefun: error: the ingress cannot listen on 127.0.0.1:{port}:")
    )
    assert "Traceback" not in done.stderr
    assert "ingress listening" not in done.stderr
    assert "generation" not in done.stderr  # nothing started


def test_the_startup_summary_comes_once_the_ingress_listens(tmp_path: Path) -> None:
    module = tmp_path / "module.yaml"
    module.write_text(
        "kind: io.statefun.endpoints.v2/http\n"
        "spec: {functions: test/*, urlPathTemplate: 'http://127.0.0.1:9/statefun'}\n"
    )
    runtime = RuntimeProcess(module, tmp_path / "data", free_port(), "--app-id", "summary")
    runtime.start()
    try:
        status, output = runtime.signal(signal.SIGTERM)
    finally:
        if runtime.process and runtime.process.poll() is None:
            runtime.kill()
    assert status == 0, output
    (summary,) = [line for line in output.splitlines() if "ingress listening" in line]
    for part in (
        f"http://127.0.0.1:{runtime.port}",
        f"module {module}",
        "test/* -> http://127.0.0.1:9/statefun",
        f"data {tmp_path / 'data'}",
        f"checkpoints {tmp_path / 'data' / 'checkpoints'}",
        "app id summary",
        f"log embedded, {tmp_path / 'data' / 'log.db'}",
    ):
        assert part in summary
    assert output.index("generation 1 resumed") < output.index("ingress listening")
