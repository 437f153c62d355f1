"""The exactly-once verifier across 3 runtime processes on one broker (issue 11): the
short form of ``python -m verifier --log kafka --processes 3 --short``.

5,000 commands over 50 addresses (members dropped 2 s after they go silent), sent to every process's ingress in turn (one tree in
three by ``POST /v1/call``), with ``kill -9`` of a worker and of the coordinator (each
replaced by a new process), a fourth process joining and one leaving on SIGTERM, a
function server restart and endpoint spells. It must end with every address equal to
the oracle, the egress audit clean, every call answered with its own reply, and each
membership change seen in ``GET /v1/cluster``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import VERIFIER_RUNS

from verifier.run import VerifierConfig, run

SEED = int(os.environ.get("VERIFIER_SEED", "1"))


@pytest.mark.xdist_group(VERIFIER_RUNS)
@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.timeout(420)
def test_a_short_run_across_three_processes(tmp_path: Path, kafka_bootstrap: str) -> None:
    result = run(
        VerifierConfig(
            commands=5_000,
            addresses=50,
            seed=SEED,
            log="kafka",
            kafka_bootstrap=kafka_bootstrap,
            processes=3,
            session_timeout=2.0,
            cancel_wait=False,
            work_dir=tmp_path,
        ),
        echo=print,
    )
    report = result.report()
    print(report)
    assert result.ok, report
    stats = result.stats
    kinds = [r["kind"] for r in stats["recoveries"]]
    assert sorted(kinds) == ["coordinator", "join", "leave", "worker"], stats["recoveries"]
    for recovery in stats["recoveries"]:
        if recovery["kind"] in ("worker", "coordinator", "leave"):
            assert recovery.get("excluded") is not None, recovery  # a generation without it
        if recovery["kind"] in ("worker", "coordinator"):
            assert recovery.get("checkpoint") is not None, recovery  # and a commit after
            assert recovery.get("rejoined") is not None, recovery  # its replacement joined
        if recovery["kind"] == "join":
            assert recovery.get("joined") is not None, recovery
        if recovery["kind"] == "leave":
            assert recovery.get("exit") == 0, recovery  # it left cleanly
    generations = stats["generations"]
    assert generations[-1] - generations[0] >= 6  # a rollback per membership change
    calls = stats["calls"]
    assert calls["sent"] > 100, calls
    assert calls["answered"] == calls["sent"], calls
    assert stats["uncertain"] == 0
    assert stats["function_restarts"] == 1
    audits = stats["egress"]
    assert set(audits) == {"verify/out", "verify/kafka-out"}
    assert all(a["distinct"] == stats["egress_expected"] for a in audits.values()), audits
    assert all(status == 0 for status in stats["exits"].values()), stats["exits"]
