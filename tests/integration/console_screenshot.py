"""Take the console's screenshot for the docs (``docs/console.png``) after a realistic
workload: a few function types at rates that rise and fall for some minutes, one
slower than the others, a poison message parked, a message to a type nobody serves.

Run from the repository root (it takes ``--minutes``, 3 by default, plus a few seconds):

    .venv/bin/python tests/integration/console_screenshot.py [--minutes 3] [--out docs/console.png]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from browser import headless_chromium  # noqa: E402
from functions import make_test_functions  # noqa: E402
from support import client, module_for, running_runtime, serve  # noqa: E402
from test_console import POISON_POLICY, letter_to, send  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    args = parser.parse_args()
    control = {"slow_seconds": 0.05}
    with serve(make_test_functions(control).asgi_app()) as functions:
        module = module_for(
            f"{functions.url}/statefun",
            functions="test/*",
            egresses=("test/out",),
            documents=(POISON_POLICY,),
        )
        with running_runtime(module) as rt, client(rt.url) as http:
            started = time.monotonic()
            end = started + args.minutes * 60
            sent = 0
            send(http, "test/poison/p", 13)
            send(http, "test/sender/s", "elsewhere/kind/k1")
            while (now := time.monotonic()) < end:
                phase = (now - started) / 60 * math.pi  # one rise and fall every 2 minutes
                burst = 4 + round(6 * (1 + math.sin(phase)))
                for i in range(burst):
                    send(http, f"test/counter/c{(sent + i) % 40}", 1)
                    send(http, f"test/forward/f{(sent + i) % 25}", 1)
                if sent % 3 == 0:
                    send(http, f"test/slow/s{sent}", 1)  # slow on an address's first message
                send(http, f"test/poison/ok{sent % 5}", 1)
                sent += 1
                time.sleep(0.25)
            assert letter_to(http, "test/poison/p") is not None
            browser = headless_chromium(1440, 560)
            try:
                browser.get(f"{rt.url}/ui")
                args.out.write_bytes(browser.get_screenshot_as_png())
            finally:
                browser.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
