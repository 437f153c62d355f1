"""The ``statefun`` command as users run it: separate processes, signals, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from functions import make_test_functions
from support import (
    ROOT,
    RuntimeProcess,
    ServerThread,
    free_port,
    serve,
    wait_until,
    write_module,
)

from runtime import cli
from runtime.cli import _parser, checkpoint_dir

pytestmark = pytest.mark.timeout(90)

INT = "io.statefun.types/int"
STRING = "io.statefun.types/string"


def statefun(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def control() -> dict[str, Any]:
    return {}


@pytest.fixture
def functions(control: dict[str, Any]) -> Iterator[ServerThread]:
    with serve(make_test_functions(control).asgi_app()) as server:
        yield server


def egress_values(url: str) -> list[str]:
    return [
        r["value"]
        for r in httpx.get(f"{url}/v1/egress/test/out", params={"limit": 1000}).json()["records"]
    ]


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["send"],
        ["call"],
        ["functions"],
        ["pause"],
        ["resume"],
        ["dead-letters"],
        ["status"],
        ["state"],
        ["addresses"],
        ["egress"],
    ],
)
def test_help_everywhere(command: list[str]) -> None:
    done = statefun(*command, "--help")
    assert done.returncode == 0
    assert "usage: statefun" in done.stdout


@pytest.mark.parametrize("mode", [[], ["--kafka", "127.0.0.1:9092", "--alone"]])
def test_checkpoints_of_a_process_alone_default_to_a_folder_under_the_data_directory(
    mode: list[str],
) -> None:
    run = ["run", "--module", "module.yaml", "--data-dir", "/srv/data", *mode]
    assert checkpoint_dir(_parser().parse_args(run)) == Path("/srv/data/checkpoints")
    given = _parser().parse_args([*run, "--checkpoint-dir", "/elsewhere"])
    assert checkpoint_dir(given) == Path("/elsewhere")


def test_an_invalid_module_spec_is_a_clear_error(tmp_path: Path) -> None:
    module = tmp_path / "module.yaml"
    module.write_text(
        "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/b, urlPathTemplate: 'http://x/', bogus: 1}\n"
    )
    done = statefun("run", "--module", str(module), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert "document 1, field 'spec.bogus': is not a known field" in done.stderr


def test_send_and_call_from_the_command_line(functions: ServerThread, tmp_path: Path) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(module, tmp_path / "data", free_port()).start()
    try:
        sent = statefun(
            "send",
            "test/counter/c",
            "5",
            "--type",
            "io.statefun.types/int",
            "--ingress",
            runtime.url,
        )
        assert sent.returncode == 0, sent.stderr
        assert set(json.loads(sent.stdout)) == {"partition", "offset"}
        called = statefun("call", "test/echo/e", "héllo", "--ingress", runtime.url)
        assert called.returncode == 0, called.stderr
        assert called.stdout.strip() == "echo: héllo"
        wait_until(lambda: egress_values(runtime.url) == ["c=5"])

        bad = statefun("send", "not-an-address", "x", "--ingress", runtime.url)
        assert bad.returncode == 2
        assert "namespace/type/id" in bad.stderr
        unknown = statefun("send", "nope/fn/x", "x", "--ingress", runtime.url)
        assert unknown.returncode == 1
        assert "404 unknown_function_type" in unknown.stderr.replace(":", "")
        not_json = statefun(
            "send",
            "test/counter/c",
            "five",
            "--type",
            "io.statefun.types/int",
            "--ingress",
            runtime.url,
        )
        assert not_json.returncode == 2
        assert "must be JSON" in not_json.stderr
    finally:
        status, err = runtime.signal(signal.SIGTERM)
    assert status == 0, err
    assert "stopped" in err


@pytest.mark.parametrize(
    "command",
    [
        ["send", "test/echo/x", "hi"],
        ["state", "test/echo/x"],
        ["addresses", "test/echo"],
        ["egress", "test/out"],
    ],
)
def test_an_unreachable_ingress_is_reported(command: list[str]) -> None:
    done = statefun(*command, "--ingress", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "cannot reach the ingress" in done.stderr


def test_version_is_the_installed_package_version() -> None:
    done = statefun("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"statefun {version('pystatefun')}\n"


def test_state_and_egress_from_the_command_line(functions: ServerThread, tmp_path: Path) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(module, tmp_path / "data", free_port()).start()
    ingress = ("--ingress", runtime.url)
    try:
        for fn_id, value in (("c", "5"), ("d/with/slashes", "7")):
            sent = statefun("send", f"test/counter/{fn_id}", value, "--type", INT, *ingress)
            assert sent.returncode == 0, sent.stderr
        wait_until(lambda: sorted(egress_values(runtime.url)) == ["c=5", "d/with/slashes=7"])

        shown = statefun("state", "test/counter/d/with/slashes", *ingress)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == f"count ({INT}): 7\n"
        as_json = statefun("state", "test/counter/c", "--json", *ingress)
        assert json.loads(as_json.stdout) == {"state": {"count": {"type": INT, "value": 5}}}
        empty = statefun("state", "test/counter/never", *ingress)
        assert empty.stdout == "test/counter/never has no state\n"
        unknown = statefun("state", "nope/fn/x", *ingress)
        assert unknown.returncode == 1
        assert "404: unknown_function_type" in unknown.stderr
        bad = statefun("state", "test/counter", *ingress)
        assert bad.returncode == 2
        assert "namespace/type/id" in bad.stderr

        records = [
            json.loads(line)
            for line in statefun("egress", "test/out", "--json", *ingress).stdout.splitlines()
        ]
        assert sorted(r["value"] for r in records) == ["c=5", "d/with/slashes=7"]
        assert [r["type"] for r in records] == [STRING, STRING]
        first, second = records
        listed = statefun("egress", "test/out", *ingress)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [
            f"{first['offset']} {first['value']}",
            f"{second['offset']} {second['value']}",
        ]
        assert statefun("egress", "test/out", "--limit", "1", *ingress).stdout.splitlines() == [
            f"{first['offset']} {first['value']}"
        ]
        after = statefun("egress", "test/out", "--from", str(second["offset"] + 1), *ingress)
        assert after.returncode == 0, after.stderr
        assert after.stdout == ""
        missing = statefun("egress", "test/nothing", *ingress)
        assert missing.returncode == 1
        assert "404: unknown_egress" in missing.stderr

        follower = [sys.executable, "-m", "runtime.cli", "egress", "test/out", "--follow", *ingress]
        # Started the way a shell without job control starts a background command: with
        # SIGINT ignored, which Python would otherwise inherit and never raise on.
        sigint_ignored = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]
        printed = [f"{r['offset']} {r['value']}\n" for r in (first, second)]
        for ending, command, new_value in (
            (signal.SIGINT, sigint_ignored + follower, "c=6"),
            (signal.SIGTERM, follower, "c=7"),
        ):
            with subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ) as follow:
                try:
                    assert follow.stdout is not None
                    for line in printed:
                        assert follow.stdout.readline() == line
                    statefun("send", "test/counter/c", "1", "--type", INT, *ingress)
                    printed.append(follow.stdout.readline())
                    assert printed[-1].split(" ", 1)[1] == f"{new_value}\n"
                    follow.send_signal(ending)
                    assert follow.wait(timeout=10) == 0
                    assert follow.stderr is not None
                    assert "Traceback" not in follow.stderr.read()
                finally:
                    if follow.poll() is None:  # a failed assertion: do not wait for it
                        follow.kill()
    finally:
        status, err = runtime.signal(signal.SIGTERM)
    assert status == 0, err


def test_run_logs_one_json_object_a_line_with_log_format_json(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(module, tmp_path / "data", free_port(), "--log-format", "json").start()
    status, err = runtime.signal(signal.SIGTERM)
    assert status == 0, err
    lines = [json.loads(line) for line in err.splitlines()]
    assert lines, "the runtime logged nothing"
    for line in lines:
        assert set(line) == {"time", "level", "logger", "message"}
        assert line["time"].endswith("+00:00")
    messages = [line["message"] for line in lines]
    assert any("received SIGTERM" in m for m in messages), messages
    assert any(line["logger"].startswith("runtime.") for line in lines)
    assert {line["level"] for line in lines} <= {"INFO", "WARNING"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_runtime_cleanly(
    functions: ServerThread, tmp_path: Path, sig: int
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(module, tmp_path / "data", free_port()).start()
    status, err = runtime.signal(sig)
    assert status == 0, err
    assert f"received {signal.Signals(sig).name}" in err
    assert "Traceback" not in err


def test_records_survive_restarts_and_accepted_messages_are_processed_after_one(
    tmp_path: Path, control: dict[str, Any]
) -> None:
    port, functions_port = free_port(), free_port()
    module = write_module(tmp_path / "module.yaml", f"http://127.0.0.1:{functions_port}/statefun")
    data = tmp_path / "data"
    app = make_test_functions(control).asgi_app()

    def send(runtime: RuntimeProcess, fn_id: str) -> None:
        httpx.post(
            f"{runtime.url}/v1/messages/test/counter/{fn_id}",
            content="1",
            params={"type": "io.statefun.types/int"},
            headers={"content-type": "application/json"},
        ).raise_for_status()

    with serve(app, functions_port):
        runtime = RuntimeProcess(module, data, port).start()
        for _ in range(3):
            send(runtime, "r")
        wait_until(lambda: egress_values(runtime.url) == ["r=1", "r=2", "r=3"])
        status, err = runtime.signal(signal.SIGTERM)
        assert status == 0, err

    # the functions are down: what is accepted now is durable but cannot be processed
    runtime = RuntimeProcess(module, data, port).start()
    assert egress_values(runtime.url) == ["r=1", "r=2", "r=3"]
    send(runtime, "later")
    send(runtime, "later")
    runtime.kill()  # kill -9: nothing gets to shut down cleanly

    with serve(app, functions_port):
        runtime = RuntimeProcess(module, data, port).start()
        try:
            wait_until(
                lambda: egress_values(runtime.url) == ["r=1", "r=2", "r=3", "later=1", "later=2"]
            )
        finally:
            runtime.signal(signal.SIGTERM)


def test_a_call_waiting_for_a_reply_does_not_hold_up_shutdown(
    functions: ServerThread, tmp_path: Path
) -> None:
    import threading
    import time

    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(module, tmp_path / "data", free_port()).start()
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{runtime.url}/v1/call/test/silent/s",
                content="x",
                params={"timeout": "120"},
                headers={"content-type": "text/plain"},
                timeout=60,
            )
        )
    )
    waiting.start()
    time.sleep(1.0)  # the call is accepted and waits for a reply that never comes
    started = time.monotonic()
    status, err = runtime.signal(signal.SIGTERM)
    waiting.join(10)
    assert status == 0, err
    assert time.monotonic() - started < 10
    (answer,) = answers
    assert answer.status_code == 503
    assert answer.json()["error"] == "shutting_down"
    assert "accepted" in answer.json()["detail"]


def test_kill_9_resumes_from_the_last_checkpoint_exactly_once(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    port = free_port()
    runtime = RuntimeProcess(module, tmp_path / "data", port)
    runtime.args += ["--checkpoint-interval", "0.2"]
    runtime.start()

    def send_ones(count: int) -> None:
        for _ in range(count):
            httpx.post(
                f"{runtime.url}/v1/messages/test/counter/k",
                content="1",
                params={"type": "io.statefun.types/int"},
                headers={"content-type": "application/json"},
            ).raise_for_status()

    def counted() -> int:
        state = httpx.get(f"{runtime.url}/v1/state/test/counter/k").json()["state"]
        value: int = state.get("count", {}).get("value", 0)
        return value

    try:
        send_ones(30)
        wait_until(lambda: counted() == 30)
        shown = statefun("checkpoints", "--ingress", runtime.url)
        assert shown.returncode == 0, shown.stderr
        assert "generation 1" in shown.stdout
        send_ones(30)  # accepted; some processed, some not, when the runtime dies
        runtime.kill()
        runtime.start()
        wait_until(lambda: counted() == 60, timeout=30)
        time.sleep(0.5)
        assert counted() == 60  # each message counted exactly once across the kill
        listed = httpx.get(f"{runtime.url}/v1/checkpoints").json()
        assert listed["generation"] == 2
        assert "did not stop cleanly" in listed["rollbacks"][-1]["reason"]
    finally:
        runtime.signal(signal.SIGTERM)


def test_a_checkpoint_of_another_log_is_refused_with_a_clear_error(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    checkpoints = tmp_path / "checkpoints"
    first = RuntimeProcess(module, tmp_path / "data-1", free_port())
    first.args += ["--checkpoint-dir", str(checkpoints)]
    first.start()
    for _ in range(3):
        httpx.post(
            f"{first.url}/v1/messages/test/counter/k",
            content="1",
            params={"type": "io.statefun.types/int"},
            headers={"content-type": "application/json"},
        ).raise_for_status()
    wait_until(lambda: egress_values(first.url) == ["k=1", "k=2", "k=3"])
    assert first.signal(signal.SIGTERM)[0] == 0
    # a fresh log (another data directory) with the first log's checkpoints
    done = statefun(
        "run",
        "--module",
        str(module),
        "--data-dir",
        str(tmp_path / "data-2"),
        "--checkpoint-dir",
        str(checkpoints),
        "--ingress-port",
        str(free_port()),
    )
    assert done.returncode == 1
    assert "was taken of another log" in done.stderr
    assert "--checkpoint-dir" in done.stderr


@pytest.mark.slow
def test_egress_is_exactly_once_across_kill_9_for_a_reader_that_drops_repeats(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(module, tmp_path / "data", free_port())
    runtime.args += ["--checkpoint-interval", "0.1"]
    runtime.start()
    sent = 0
    try:
        for _ in range(3):
            for _ in range(40):
                httpx.post(
                    f"{runtime.url}/v1/messages/test/counter/k",
                    content="1",
                    params={"type": "io.statefun.types/int"},
                    headers={"content-type": "application/json"},
                ).raise_for_status()
                sent += 1
            time.sleep(0.15)
            runtime.kill()  # with work applied, checkpoints committed, egress being published
            runtime.start()

        def records() -> list[dict[str, Any]]:
            answer = httpx.get(f"{runtime.url}/v1/egress/test/out", params={"limit": 10_000})
            found: list[dict[str, Any]] = answer.json()["records"]
            return found

        def distinct() -> dict[str, str]:
            seen: dict[str, str] = {}
            for record in records():
                assert seen.setdefault(record["id"], record["value"]) == record["value"]
            return seen

        wait_until(lambda: len(distinct()) == sent, timeout=60)
        time.sleep(0.5)
        by_id = distinct()
        # dropping repeats by id leaves every committed record once, and nothing else
        assert sorted(by_id.values(), key=lambda v: int(v.split("=")[1])) == [
            f"k={n}" for n in range(1, sent + 1)
        ]
    finally:
        runtime.signal(signal.SIGTERM)


@pytest.mark.timeout(120)
def test_the_readme_demo_shows_replies_state_and_every_egress_record() -> None:
    ports = {"DEMO_FUNCTIONS_PORT": str(free_port()), "DEMO_INGRESS_PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, "-m", "examples.greeter.demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **ports},
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Hello Alice! Nice to meet you." in out
    assert "Hello Bob! Nice to meet you." in out
    assert "Hello again Alice! This is visit number 2." in out
    assert '"visits":{"type":"io.statefun.types/int","value":2}' in out
    egress = json.loads(out[out.index("{\n") :])
    assert [r["value"] for r in egress["records"]] == [
        "Hello Alice! Nice to meet you.",
        "Hello Bob! Nice to meet you.",
        "Hello again Alice! This is visit number 2.",
    ]


def test_functions_pause_resume_and_dead_letters_from_the_command_line(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(module, tmp_path / "data", free_port()).start()
    ingress = ("--ingress", runtime.url)
    try:
        healthy = statefun("functions", *ingress)
        assert healthy.returncode == 0, healthy.stderr
        assert "every function type is healthy" in healthy.stdout
        paused = statefun("pause", "test/counter", *ingress)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.strip() == "test/counter: paused"
        listed = statefun("functions", "--json", *ingress)
        assert json.loads(listed.stdout)["functions"][0]["paused"] is True
        assert (
            statefun("resume", "test/counter", *ingress).stdout.strip() == "test/counter: resumed"
        )
        assert statefun("pause", "nope/x", *ingress).returncode == 1

        # a function sending to a type nobody serves: a dead letter
        sent = statefun("send", "test/sender/s", "elsewhere/kind/k", *ingress)
        assert sent.returncode == 0, sent.stderr
        letters = wait_until(
            lambda: json.loads(statefun("dead-letters", "--json", *ingress).stdout)["records"]
        )
        offset = str(letters[0]["offset"])
        shown = statefun("dead-letters", *ingress)
        assert f"{offset} [parked]" in shown.stdout
        assert "to elsewhere/kind/k: 1" in shown.stdout
        discarded = statefun("dead-letters", "discard", offset, *ingress)
        assert discarded.stdout.strip() == f"dead letter {offset} discarded"
        refused = statefun("dead-letters", "replay", offset, *ingress)
        assert refused.returncode == 1
        assert "409" in refused.stderr
        assert "discarded" in refused.stderr
        missing = statefun("dead-letters", "replay", *ingress)
        assert missing.returncode == 2
        assert "needs the OFFSET" in missing.stderr
    finally:
        status, err = runtime.signal(signal.SIGTERM)
    assert status == 0, err


def test_status_shows_a_process_alone_as_one_member_owning_every_partition(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(
        module, tmp_path / "data", free_port(), "--partitions", "3", "--checkpoint-interval", "0.2"
    ).start()
    try:
        answer = wait_until(
            lambda: (
                (a := json.loads(statefun("status", "--json", "--ingress", runtime.url).stdout))
                and a["last_checkpoint"]
                and a
            )
        )
        assert answer["mode"] == "single"
        assert answer["coordinator"] == answer["me"] == "local"
        assert answer["members"] == [
            {
                "id": "local",
                "url": runtime.url,
                "partitions": [0, 1, 2],
                "coordinator": True,
                "me": True,
            }
        ]
        assert answer["unowned"] == []
        shown = statefun("status", "--ingress", runtime.url)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(
            f"single mode, generation {answer['generation']}, last checkpoint "
        )
        assert lines[1] == "coordinator local"
        assert lines[3].split() == ["local", "(this", "one)", runtime.url, "0-2"]
    finally:
        status, err = runtime.signal(signal.SIGTERM)
    assert status == 0, err


def test_status_shows_every_member_of_a_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {
        "mode": "cluster",
        "me": "m-2",
        "coordinator": "m-1",
        "generation": 4,
        "last_checkpoint": {"id": 9, "generation": 4, "time": "2025-01-01T00:00:00.000+00:00"},
        "partitions": 8,
        "members": [
            {
                "id": "m-1",
                "url": "http://h1:8090",
                "partitions": [0, 1, 2, 5],
                "coordinator": True,
                "me": False,
            },
            {
                "id": "m-2",
                "url": "http://h2:8090",
                "partitions": [3, 4],
                "coordinator": False,
                "me": True,
            },
        ],
        "unowned": [6, 7],
    }
    monkeypatch.setattr(cli, "_request", lambda args, method, path: answer)
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "cluster mode, generation 4, last checkpoint 9 (generation 4, 2025-01-01T00:00:00.000+00:00)",
        "coordinator m-1",
        "member          url             partitions",
        "m-1             http://h1:8090  0-2, 5",
        "m-2 (this one)  http://h2:8090  3-4",
        "owned by nobody now: 6-7",
    ]


def test_tokens_from_the_command_line_and_a_reload_on_sighup(
    functions: ServerThread, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.yaml"
    client, reader, rotated = "client-token-0123456789", "reader-token-0123456789", "n" * 24
    tokens.write_text(
        f"- {{token: {client}, role: client, functions: ['test/*']}}\n"
        f"- {{token: {reader}, role: reader}}\n"
    )
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    runtime = RuntimeProcess(
        module, tmp_path / "data", free_port(), "--tokens", str(tokens)
    ).start()
    send = ("send", "test/counter/c", "5", "--type", INT, "--ingress", runtime.url)
    try:
        refused = statefun(*send)
        assert refused.returncode == 1
        assert "401: unauthenticated: this route needs a Bearer token" in refused.stderr
        assert statefun(*send, "--token", client).returncode == 0
        forbidden = statefun(*send, "--token", reader)
        assert forbidden.returncode == 1
        assert "403: forbidden: a reader token may not send messages" in forbidden.stderr
        read = statefun("state", "test/counter/c", "--ingress", runtime.url, "--token", reader)
        assert read.returncode == 0, read.stderr

        tokens.write_text(f"- {{token: {rotated}, role: client}}\n")
        assert runtime.process is not None
        runtime.process.send_signal(signal.SIGHUP)
        wait_until(lambda: statefun(*send, "--token", rotated).returncode == 0)
        assert statefun(*send, "--token", client).returncode == 1
        tokens.write_text("not: a list\n")
        runtime.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "tokens not reloaded" in runtime.log_path.read_text())
        assert statefun(*send, "--token", rotated).returncode == 0
    finally:
        status, err = runtime.signal(signal.SIGTERM)
    assert status == 0, err
    for token in (client, reader, rotated):
        assert token not in err


def test_without_tokens_the_ingress_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    module = write_module(tmp_path / "module.yaml", "http://127.0.0.1:9/statefun")
    done = statefun(
        "run",
        "--module",
        str(module),
        "--data-dir",
        str(tmp_path / "data"),
        "--ingress-host",
        "0.0.0.0",
        "--ingress-port",
        str(free_port()),
    )
    assert done.returncode == 1
    assert "no token asked of anyone" in done.stderr
    assert "--insecure" in done.stderr
