"""The tutorial, run as a reader would: every file written, every command run (the
long-running ones in the background), every output shown checked (tests/docs/runnable.py)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from docs_site import ROOT
from runnable import PORTS, Block, PageRun
from support import free_port

DOCS = ROOT / "docs"


def run_page(page: Path, folder: Path, prelude: Sequence[Block] = ()) -> PageRun:
    """Run ``page``'s blocks (after ``prelude``'s) in ``folder``, on free ports."""
    if shutil.which("curl") is None:
        pytest.fail("the pages' commands use curl: apt-get install curl")
    run = PageRun(folder, {port: free_port() for port in PORTS})
    try:
        run.run(page, prelude=prelude)
    finally:
        run.close()
    return run


@pytest.mark.timeout(120)
def test_every_block_of_the_tutorial_runs(tmp_path: Path) -> None:
    run = run_page(DOCS / "tutorial.md", tmp_path)
    kinds = [line.rsplit(" ", 1)[1] for line in run.ran]
    assert kinds.count("run") >= 10, run.ran
    assert kinds.count("background") >= 4, run.ran
    assert kinds.count("output") >= 5
