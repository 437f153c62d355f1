"""The how-to pages' code blocks, run against the tutorial's application (its files,
functions and embedded runtime started first, as the pages say), or marked not run with
the reason on the page (tests/docs/runnable.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runnable import blocks, setup_blocks
from test_tutorial import DOCS, run_page

RUNNABLE = [
    "how-to/operating.md",
    "how-to/replies.md",
    "how-to/exactly-once-egress.md",
    "how-to/state-schema.md",
    "how-to/kafka-without-docker.md",
]
"""The how-to pages whose blocks run; the others' blocks all say why they are not run."""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", RUNNABLE)
def test_every_block_of_a_how_to_page_runs(page: str, tmp_path: Path) -> None:
    prelude = setup_blocks((DOCS / "tutorial.md").read_text(encoding="utf-8"))
    run = run_page(DOCS / page, tmp_path, prelude)
    assert (
        sum(line.endswith(" run") for line in run.ran)
        >= len([b for b in prelude if b.kind == "run"]) + 1
    )


def test_every_other_how_to_block_says_why_it_is_not_run() -> None:
    for path in sorted((DOCS / "how-to").glob("*.md")):
        page = str(path.relative_to(DOCS))
        if page in RUNNABLE:
            continue
        for block in blocks(path.read_text(encoding="utf-8")):
            where = f'{page}:{block.line}: run it (add the page to RUNNABLE) or title it "... (not run: why)"'
            assert block.kind == "skip", where
            assert "not run:" in (block.title or ""), where
