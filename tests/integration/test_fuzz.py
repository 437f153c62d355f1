"""The ingress fuzzed against its own OpenAPI document (``bench.fuzz``), lean enough for
CI: few examples per operation, with and without tokens; and the fuzz's own checks
shown to catch what they look for."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.fuzz import fuzz, problems, tokens_file

EXAMPLES = 10
"""Valid and invalid requests per operation and run: ~4 s each."""
ERROR = json.dumps({"error": "bad_request", "detail": "no"}).encode()
DOCUMENTED = {"200": {}, "400": {}, "503": {}}


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
def test_every_answer_is_documented_and_no_rejected_request_appends(
    tokens: bool, tmp_path: Path
) -> None:
    tally = asyncio.run(fuzz(EXAMPLES, tokens_file(tmp_path) if tokens else None))
    assert tally.failures == []
    statuses = {status for _, status in tally.statuses}
    # The fuzz reached both sides: accepted messages, and rejected requests.
    assert {202, 400, 404} <= statuses
    if tokens:
        assert {401, 403} <= statuses
    assert tally.requests >= 10 * EXAMPLES


def test_the_checks_catch_a_500_a_bare_4xx_and_an_append_by_a_rejection() -> None:
    assert problems(200, b"{}", 0, DOCUMENTED) == []
    assert problems(400, ERROR, 0, DOCUMENTED) == []
    assert problems(503, ERROR, 0, DOCUMENTED) == []
    assert problems(202, b"{}", 1, DOCUMENTED) == []  # accepted: it may append
    assert "500, which the document does not list" in problems(500, ERROR, 0, DOCUMENTED)[0]
    assert "without a JSON error body" in problems(404, b"Not Found", 0, DOCUMENTED)[0]
    assert "without a JSON error body" in problems(400, b'{"detail": "x"}', 0, DOCUMENTED)[0]
    assert problems(400, ERROR, 2, DOCUMENTED) == ["400 but 2 records were appended"]
