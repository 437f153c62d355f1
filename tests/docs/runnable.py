"""Running the code blocks of a documentation page, as a reader would, in order.

A fenced block is classified by its language and its ``title`` (the fence's
``title="..."``, which the site shows above the block):

* ``python``/``yaml``/``properties`` with a title: a file of that name, written into the
  work folder;
* ``bash`` without a title: commands run to completion (``bash -euo pipefail``), which
  must exit 0; a ``text`` block titled ``output`` right after it lists lines its output
  must contain, in order (``...`` stands for anything);
* ``bash`` titled ``terminal N``: a long-running command started in the background, as
  in a terminal of its own; a later block with the same title stops it first (Ctrl-C);
* any block whose title says ``not run``: skipped; the page says why.

Any other block fails the test, so a page cannot carry a block nobody runs by mistake.
The default ports of the pages (8000 for functions, 8090 for the ingress, 9092 for
Kafka) are replaced by free ports, so the tests run beside anything else.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(
    r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S
)
TITLE = re.compile(r'title="([^"]*)"')
PORTS = (8000, 8090, 9092)


@dataclass(frozen=True)
class Block:
    language: str
    title: str | None
    body: str
    line: int

    @property
    def kind(self) -> str:
        if self.title is not None and "not run" in self.title:
            return "skip"
        if self.language == "bash":
            if self.title is None:
                return "run"
            if self.title.startswith("terminal"):
                return "background"
        if self.language == "text" and self.title == "output":
            return "output"
        if self.language in ("python", "yaml", "properties") and self.title:
            return "file"
        return "unknown"


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of a page, in order."""
    found = []
    for match in FENCE.finditer(markdown):
        info = match.group("info").strip()
        language = info.split(" ", 1)[0] if info else ""
        title = TITLE.search(info)
        indent = len(match.group("indent"))
        body = "\n".join(line[indent:] for line in match.group("body").splitlines()) + "\n"
        line = markdown.count("\n", 0, match.start()) + 1
        found.append(Block(language, title.group(1) if title else None, body, line))
    return found


def setup_blocks(markdown: str) -> list[Block]:
    """The blocks of a page up to and including its first command run to completion:
    its files and terminals, and the wait for them (the tutorial's application, which
    the how-to pages run against)."""
    found = blocks(markdown)
    first_run = next(i for i, b in enumerate(found) if b.kind == "run")
    return found[: first_run + 1]


def _matches(expected: str, output: str) -> bool:
    """Whether ``output`` holds the lines of ``expected`` in order (``...``: anything)."""
    pattern = ".*?".join(
        ".*".join(re.escape(part) for part in line.split("..."))
        for line in expected.strip().splitlines()
    )
    return re.search(pattern, output, re.S) is not None


@dataclass
class PageRun:
    """Runs one page's blocks in ``folder`` with ``ports`` standing for the pages' own."""

    folder: Path
    ports: dict[int, int]
    env: dict[str, str] = field(default_factory=dict)
    terminals: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)

    def _text(self, text: str) -> str:
        for ours, free in self.ports.items():
            text = re.sub(rf"\b{ours}\b", str(free), text)
        return text

    def _environment(self) -> dict[str, str]:
        """The reader's shell: the virtualenv on PATH, and the statefun commands pointed
        at the ingress's port (as ``$STATEFUN_INGRESS`` does)."""
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STATEFUN_INGRESS": f"http://127.0.0.1:{self._text('8090')}",
            **self.env,
        }

    def run(self, page: Path, timeout: float = 60, prelude: Sequence[Block] = ()) -> None:
        """Every block of ``page`` in order, after the blocks of ``prelude`` (e.g. another
        page's setup); an AssertionError names the failing block."""
        found = blocks(page.read_text(encoding="utf-8"))
        assert found, f"{page} has no code blocks"
        last_output = ""
        for block in [*prelude, *found]:
            where = f"{page.name}:{block.line}"
            kind = block.kind
            assert kind != "unknown", (
                f"{where}: a {block.language or 'plain'} block that is neither run nor marked "
                '`title="... (not run: why)"`'
            )
            if kind == "file":
                path = self.folder / block.title  # type: ignore[operator]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(self._text(block.body), encoding="utf-8")
            elif kind == "background":
                self.stop(block.title)  # type: ignore[arg-type]
                with open(self.folder / f"{block.title}.log", "ab") as log:
                    self.terminals[block.title] = subprocess.Popen(  # type: ignore[index]
                        ["bash", "-c", "exec " + self._text(block.body).strip()],
                        cwd=self.folder,
                        env=self._environment(),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        start_new_session=True,
                    )
            elif kind == "run":
                done = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", self._text(block.body)],
                    cwd=self.folder,
                    env=self._environment(),
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
                assert done.returncode == 0, (
                    f"{where}: exit status {done.returncode}\n{block.body}\nstdout: "
                    f"{done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}\n{self.logs()}"
                )
                last_output = done.stdout
            elif kind == "output":
                expected = self._text(block.body)
                assert _matches(expected, last_output), (
                    f"{where}: the output of the block before is not what the page shows\n"
                    f"shown:\n{expected}\ngot:\n{last_output}"
                )
            self.ran.append(f"{where} {kind}")

    def logs(self) -> str:
        """The end of each terminal's stderr, for a failure's message."""
        out = []
        for title in self.terminals:
            path = self.folder / f"{title}.log"
            if path.exists():
                out.append(f"--- {title}:\n{path.read_text(errors='replace')[-1500:]}")
        return "\n".join(out)

    def stop(self, title: str, grace: float = 20) -> None:
        """Stop a terminal's command as Ctrl-C would, then wait for it."""
        process = self.terminals.pop(title, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def close(self) -> None:
        """Stop every terminal still running, latest first."""
        for title in reversed(list(self.terminals)):
            self.stop(title)
