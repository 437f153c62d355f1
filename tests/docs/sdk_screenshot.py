"""Take the screenshot of the documentation site's SDK reference page for the docs
(``docs/sdk-reference.png``): the site built as CI builds it, the page opened from the
files in headless Chromium (tests/browser.py).

Run from the repository root:

    .venv/bin/python tests/docs/sdk_screenshot.py [--out docs/sdk-reference.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "docs")]

from browser import headless_chromium  # noqa: E402
from docs_site import build_site  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sdk-reference.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="statefun-site-") as folder:
        done = build_site(Path(folder))
        if done.returncode != 0:
            raise SystemExit(f"mkdocs build failed:\n{done.stderr[-4000:]}")
        browser = headless_chromium(1440, 1000)
        try:
            page = Path(folder) / "reference" / "sdk.html"
            browser.get(page.as_uri())
            args.out.write_bytes(browser.get_screenshot_as_png())
        finally:
            browser.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
