"""``python -m runtime.cli`` on uvloop, for ``python -m bench --runtime-loop uvloop``.

``statefun run`` runs on asyncio's default loop (``asyncio.run`` in runtime/cli.py);
this entry point is the same command with uvloop's loop, to measure what it changes.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from runtime.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main())
