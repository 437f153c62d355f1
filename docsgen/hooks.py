"""MkDocs hooks (``mkdocs.yml``'s ``hooks:``): add the generated reference pages.

The CLI, HTTP API and module spec references are made from the code each time the site
builds (``docsgen.reference``), never checked in, so they cannot drift from it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # mkdocs loads this file by path: make the repository importable
    sys.path.insert(0, str(ROOT))

from docsgen.reference import cli_page, http_page, module_spec_page  # noqa: E402

GENERATED: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_page,
    "reference/http.md": http_page,
    "reference/module-spec.md": module_spec_page,
}
"""The generated pages, by their path under ``docs/``."""


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    for path, page in GENERATED.items():
        files.append(File.generated(config, path, content=page()))
    return files
