"""The checkpoint store as operators meet it: a damaged store is survived when that is
safe and refused in one line otherwise."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from functions import make_test_functions
from kafka_broker import create_topic, int_bytes, produce
from support import (
    ROOT,
    RuntimeProcess,
    ServerThread,
    free_port,
    running_runtime,
    serve,
    unique_app_id,
    wait_until,
    write_module,
)

from statefun.module_spec import parse_module_spec

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def functions() -> Iterator[ServerThread]:
    control: dict[str, Any] = {}
    with serve(make_test_functions(control).asgi_app()) as server:
        yield server


def run_statefun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def send_ones(url: str, address: str, count: int) -> None:
    for _ in range(count):
        httpx.post(
            f"{url}/v1/messages/{address}",
            content="1",
            params={"type": "io.statefun.types/int"},
            headers={"content-type": "application/json"},
        ).raise_for_status()


def counted(url: str, address: str) -> int:
    state = httpx.get(f"{url}/v1/state/{address}").json()["state"]
    value: int = state.get("count", {}).get("value", 0)
    return value


def assert_one_line_refusal(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("statefun: error:")]
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_a_store_damaged_mid_file_is_refused_in_one_line_naming_it(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    data = tmp_path / "data"
    runtime = RuntimeProcess(module, data, free_port(), "--checkpoint-interval", "0.1").start()
    send_ones(runtime.url, "test/counter/k", 20)
    wait_until(lambda: counted(runtime.url, "test/counter/k") == 20)
    assert runtime.signal(signal.SIGTERM)[0] == 0
    database = data / "checkpoints" / "checkpoints.db"
    size = database.stat().st_size
    assert size >= 4 * 4096
    with database.open("r+b") as file:  # a page in the middle: a table's b-tree
        file.seek((size // 4096 // 2) * 4096)
        file.write(os.urandom(4096))
    done = run_statefun(
        "--module", str(module), "--data-dir", str(data), "--ingress-port", str(free_port())
    )
    assert_one_line_refusal(done, str(database), "is damaged", "--start-over")


def three_checkpoints(module: Path, data: Path, port: int) -> None:
    """Three runs of 10 messages to test/forward/a (which sends test/counter/a one each),
    each ending with a clean stop, whose last checkpoint is the only one: checkpoints
    1, 2 and 3 hold 10, 20 and 30."""
    for run in range(1, 4):
        runtime = RuntimeProcess(module, data, port, "--checkpoint-interval", "0").start()
        send_ones(runtime.url, "test/forward/a", 10)
        wait_until(lambda: counted(runtime.url, "test/counter/a") == 10 * run)  # noqa: B023
        assert runtime.signal(signal.SIGTERM)[0] == 0


def damage_newest(data: Path, how: str) -> int:
    # Closed on leaving (the connection's own context only commits), then committed.
    with contextlib.closing(sqlite3.connect(data / "checkpoints" / "checkpoints.db")) as db, db:
        (newest,) = db.execute("SELECT MAX(checkpoint) FROM manifests").fetchone()
        if how == "garbage part":
            db.execute(
                "UPDATE parts SET data = ? WHERE checkpoint = ? AND participant = 'worker'",
                (os.urandom(64), newest),
            )
        else:  # a truncated state row: msgpack cut in the middle
            db.execute(
                "UPDATE state SET value = substr(value, 1, length(value) / 2) WHERE checkpoint = ?",
                (newest,),
            )
    return int(newest)


@pytest.mark.parametrize("how", ["garbage part", "truncated state row"])
def test_a_damaged_newest_checkpoint_that_released_nothing_falls_back_exactly_once(
    functions: ServerThread, tmp_path: Path, how: str
) -> None:
    # at-least-once egress: the commits release nothing, so the fallback is safe
    module = write_module(
        tmp_path / "module.yaml", f"{functions.url}/statefun", egress="at-least-once"
    )
    data, port = tmp_path / "data", free_port()
    three_checkpoints(module, data, port)
    assert damage_newest(data, how) == 3
    runtime = RuntimeProcess(module, data, port, "--checkpoint-interval", "0.2").start()
    try:
        # Back to checkpoint 2 (20 each); run 3's messages to test/forward/a are replayed,
        # and the messages it sent test/counter/a in its epoch 3 are skipped, not counted
        # again. One more message proves every earlier record of both addresses is read.
        send_ones(runtime.url, "test/forward/a", 1)
        wait_until(lambda: counted(runtime.url, "test/counter/a") >= 31, timeout=20)
        assert counted(runtime.url, "test/forward/a") == 31
        assert counted(runtime.url, "test/counter/a") == 31
        rollbacks = httpx.get(f"{runtime.url}/v1/checkpoints").json()["rollbacks"]
        assert {r["generation"]: r["rolled_back_to"] for r in rollbacks}[3] == 2
    finally:
        status, err = runtime.signal(signal.SIGTERM)
    assert status == 0, err
    assert "checkpoint 3 cannot be decoded" in err
    assert "resuming from the one before it" in err


def test_a_damaged_newest_checkpoint_that_released_egress_is_refused_in_one_line(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    data, port = tmp_path / "data", free_port()
    three_checkpoints(module, data, port)  # each commit publishes that run's egress
    damage_newest(data, "garbage part")
    done = run_statefun(
        "--module", str(module), "--data-dir", str(data), "--ingress-port", str(port)
    )
    assert_one_line_refusal(
        done, "checkpoint 3", "cannot be decoded", "released", "(egress)", "--start-over"
    )


def messages_log(data: Path) -> tuple[int, int]:
    """(records kept, sum of the partitions' starts) of the messages topic in log.db."""
    with contextlib.closing(sqlite3.connect(data / "log.db")) as db:
        kept = db.execute(
            "SELECT COUNT(*) FROM records WHERE topic = 'statefun-messages'"
        ).fetchone()[0]
        starts = db.execute(
            "SELECT COALESCE(SUM(offset), 0) FROM starts WHERE topic = 'statefun-messages'"
        ).fetchone()[0]
    return int(kept), int(starts)


def test_the_embedded_log_keeps_only_what_a_retained_checkpoint_needs_and_restarts_exactly(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    data, port = tmp_path / "data", free_port()
    flags = ("--checkpoint-interval", "0.05", "--checkpoint-retain", "2")
    runtime = RuntimeProcess(module, data, port, *flags).start()
    try:
        send_ones(runtime.url, "test/forward/a", 100)
        wait_until(lambda: counted(runtime.url, "test/counter/a") == 100, timeout=20)
        # 100 ingress records and the 100 messages test/forward/a sent: once processed
        # and past every retained checkpoint, none of them is kept
        wait_until(lambda: messages_log(data) == (0, 200), timeout=30)
        send_ones(runtime.url, "test/forward/a", 50)
        runtime.kill()  # kill -9 with some of them processed: replayed from a checkpoint
        runtime.start()
        send_ones(runtime.url, "test/forward/a", 1)  # behind every replayed record
        wait_until(lambda: counted(runtime.url, "test/counter/a") >= 151, timeout=30)
        assert counted(runtime.url, "test/forward/a") == 151
        assert counted(runtime.url, "test/counter/a") == 151
        # after the restart too (302 records, and the messages of work rolled back by
        # the kill, skipped at replay)
        wait_until(lambda: (log := messages_log(data))[0] == 0 and log[1] >= 302, timeout=30)
    finally:
        status, err = runtime.signal(signal.SIGTERM)
    assert status == 0, err


def egress_records(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/v1/egress/test/out", params={"limit": 10_000})
    records: list[dict[str, Any]] = answer.json()["records"]
    return records


def distinct_ids(url: str) -> set[str]:
    return {r["id"] for r in egress_records(url)}


def test_a_log_of_the_runtime_with_an_empty_checkpoint_store_is_refused_or_started_over(
    functions: ServerThread, tmp_path: Path
) -> None:
    module = write_module(tmp_path / "module.yaml", f"{functions.url}/statefun")
    data, port = tmp_path / "data", free_port()
    # Retention drops nothing from the log: every checkpoint is kept, the first taken
    # before any message is read. (Egress records ask for checkpoints on demand, dozens
    # here, and retention trims the log below the oldest retained one.)
    runtime = RuntimeProcess(
        module, data, port, "--checkpoint-interval", "0.1", "--checkpoint-retain", "1000"
    ).start()
    wait_until(lambda: httpx.get(f"{runtime.url}/v1/checkpoints").json()["checkpoints"])
    send_ones(runtime.url, "test/forward/a", 20)
    wait_until(lambda: counted(runtime.url, "test/counter/a") == 20)
    runtime.kill()  # a rollback in the log's history too
    runtime.start()
    send_ones(runtime.url, "test/forward/a", 10)
    # (a reader drops repeats by id: a kill while publishing may repeat a record)
    wait_until(lambda: len(distinct_ids(runtime.url)) == 30, timeout=20)
    first = distinct_ids(runtime.url)
    assert runtime.signal(signal.SIGTERM)[0] == 0

    elsewhere = tmp_path / "elsewhere"  # the checkpoints are lost
    run = ["--module", str(module), "--data-dir", str(data), "--ingress-port", str(port)]
    refused = run_statefun(*run, "--checkpoint-dir", str(elsewhere))
    assert_one_line_refusal(refused, "holds the records of a runtime", "--start-over")

    over = RuntimeProcess(
        module, data, port, "--checkpoint-dir", str(elsewhere), "--start-over"
    ).start()
    try:
        # every message from outside applied once more from nothing, none twice: one more
        # message behind them all proves every earlier record is read
        send_ones(over.url, "test/forward/a", 1)
        wait_until(lambda: counted(over.url, "test/counter/a") >= 31, timeout=30)
        assert counted(over.url, "test/forward/a") == 31
        assert counted(over.url, "test/counter/a") == 31
        # the start over publishes its own records again, with ids never used before
        wait_until(lambda: len(distinct_ids(over.url)) == 30 + 31)
        new = {r["id"]: r["value"] for r in egress_records(over.url) if r["id"] not in first}
        assert sorted(new.values(), key=lambda v: int(v[2:])) == [f"a={n}" for n in range(1, 32)]
    finally:
        status, err = over.signal(signal.SIGTERM)
    assert status == 0, err
    assert "starting the embedded log in" in err
    assert "retention dropped" not in err  # nothing was trimmed yet

    # the log now belongs to the new store: it restarts with it, and refuses the old one
    again = RuntimeProcess(module, data, port, "--checkpoint-dir", str(elsewhere)).start()
    try:
        assert counted(again.url, "test/counter/a") == 31
    finally:
        assert again.signal(signal.SIGTERM)[0] == 0
    old = run_statefun(*run)
    assert_one_line_refusal(old, "was taken of another log", "checkpoint store")
    twice = run_statefun(*run, "--checkpoint-dir", str(elsewhere), "--start-over")
    assert_one_line_refusal(twice, "--start-over needs an empty checkpoint store")


@pytest.mark.kafka
def test_starting_over_on_kafka_replays_the_ingress_topics_from_their_start(
    functions: ServerThread, kafka_bootstrap: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, "numbers", 2)
    module = tmp_path / "module.yaml"
    module.write_text(
        f"""kind: io.statefun.endpoints.v2/http
spec: {{functions: test/*, urlPathTemplate: "{functions.url}/statefun"}}
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: test/numbers
  startupPosition: {{type: latest}}
  topics: [{{topic: numbers, valueType: io.statefun.types/int, targets: [test/counter]}}]
---
kind: statefun.v1/egress
spec: {{id: test/out}}
"""
    )
    spec = parse_module_spec(module.read_text())
    kafka = {"kafka": kafka_bootstrap, "app_id": unique_app_id()}
    with running_runtime(spec, checkpoint_dir=tmp_path / "lost", **kafka) as rt:
        produce(kafka_bootstrap, "numbers", [(b"k", int_bytes(1))] * 3)
        send_ones(rt.url, "test/forward/k", 4)
        wait_until(lambda: counted(rt.url, "test/counter/k") == 7, timeout=20)

    run = [
        "--module",
        str(module),
        "--kafka",
        kafka_bootstrap,
        "--app-id",
        kafka["app_id"],
        "--alone",
    ]
    refused = run_statefun(*run, "--data-dir", str(tmp_path / "empty"))
    assert_one_line_refusal(refused, "holds the records of a runtime", "--start-over")

    # the ingress topic from its start, although its startup position says latest
    with running_runtime(spec, checkpoint_dir=tmp_path / "new", start_over=True, **kafka) as rt:
        send_ones(rt.url, "test/forward/k", 1)
        wait_until(lambda: counted(rt.url, "test/counter/k") >= 8, timeout=30)
        assert counted(rt.url, "test/forward/k") == 5
        assert counted(rt.url, "test/counter/k") == 8
