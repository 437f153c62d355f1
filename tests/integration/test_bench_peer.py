"""``python -m bench.peer`` (the Restate comparison's workload), lean enough for CI: its
smallest form on the embedded log must finish with exact counts and print its tables;
and its profile summary read from a folded-stack file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench._kafka import Broker
from bench.peer import CASES, Settings, plans, poll_delay, summarize

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_smallest_run_on_the_embedded_log_counts_exactly_and_prints_the_tables(
    tmp_path: Path,
) -> None:
    out = tmp_path / "peer.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.peer",
            "--mode",
            "embedded",
            "--reps",
            "1",
            "--keys",
            "40",
            "--warmup-s",
            "0.2",
            "--window-s",
            "0.6",
            "--sends",
            "300",
            "--drain-cap-s",
            "15",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"| counts exact | yes ({len(CASES)} runs, 0 errors) |" in done.stdout
    for name in CASES:  # a row per case in both tables
        assert f"(`{name}`)" in done.stdout
        assert f"| embedded | {name} |" in done.stdout
    runs = json.loads(out.read_text())["modes"]["embedded"]["runs"]
    assert [r["case"] for r in runs] == list(CASES)
    for run in runs:
        assert run["errors"] == 0
        assert run["verify"]["exact"]
        assert run["verify"]["sum_read"] == run["verify"]["sum_expected"] > 0
        assert run["cpu"]["runtime"] > 0
        assert run["addresses_per_request"] >= 1  # every case called the functions
    sends = [r for r in runs if r["case"] in ("send_c64", "send_batch_c4")]
    assert len(sends) == 2  # one message per request, and 100 per batch request
    for send in sends:
        assert send["accepted"] == 300
        assert send["drained"]
        assert send["applied"] == 300  # seen on /metrics: exactly the sends, nothing else
        assert send["processed_rps"] > 0


def test_the_profile_summary_shares_samples_by_thread_category_and_own_frame(
    tmp_path: Path,
) -> None:
    folded = tmp_path / "p.folded"
    main = "thread (1): MainThread;run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118)"
    folded.write_text(
        f"{main};RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py:420) 6\n"
        f"{main};Worker._consume (runtime/worker.py:439);AsyncClient.send (httpx/_client.py:1) 3\n"
        f"{main} 1\n"
        "thread (2): sqlite-log-writer;SqliteLog._commit (runtime/log/sqlite.py:191) 10\n"
    )
    p = summarize(folded)
    assert p["samples"] == 20
    assert p["main_thread_samples"] == 10
    assert p["threads"] == {
        "thread (2): sqlite-log-writer": 0.5,
        "thread (1): MainThread": 0.5,
    }
    categories = {c.split(" (")[0]: share for c, share in p["categories"].items()}
    assert categories == {
        "ingress HTTP server and framework": 0.3,
        "function client": 0.15,
        "worker": 0.15,
        "sqlite": 0.5,
        "kafka client": 0.0,
    }
    main_only = {c.split(" (")[0]: share for c, share in p["categories_main"].items()}
    assert main_only["ingress HTTP server and framework"] == 0.6
    assert main_only["sqlite"] == 0.0
    assert p["top_own"][0] == ("SqliteLog._commit (runtime/log/sqlite.py:191)", 0.5)
    assert ("Runner.run (asyncio/runners.py:118)", 0.05) in p["top_own"]


def test_metrics_are_read_when_the_rate_seen_would_have_applied_the_rest() -> None:
    assert poll_delay(500, 0.0) == 0.1  # nothing applied yet: the longest wait
    assert poll_delay(500, 1000.0) == 0.1  # far from the end: at most 100 ms
    assert poll_delay(20, 1000.0) == pytest.approx(0.02)
    assert poll_delay(1, 1000.0) == 0.005  # near the end: at least 5 ms apart


def test_a_kafka_mode_on_our_own_tansu_gets_a_fresh_deployment_per_run() -> None:
    s = Settings(2, 10, 0.0, 1.0, 10, 10, 10, 1.0, 1.0, 0.1, ["lat_add_c1", "send_c64"], None, ROOT)
    every_run = [(1, "lat_add_c1"), (1, "send_c64"), (2, "lat_add_c1"), (2, "send_c64")]
    tansu = Broker(None, Path("tansu"))
    assert plans("kafka", s, tansu) == [[run] for run in every_run]
    assert plans("kafka3", s, tansu) == [[run] for run in every_run]
    assert plans("kafka", s, Broker("127.0.0.1:9092", None)) == [every_run]
    assert plans("embedded", s, None) == [every_run]
