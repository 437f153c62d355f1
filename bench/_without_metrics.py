"""``statefun run`` with the runtime's metrics switched off, for ``python -m bench.metrics``
to compare the pipeline against: every counter and histogram of ``runtime.metrics``
counts nothing, the log's appends are not observed and the ingress's requests not
timed. What is left is the runtime without its metrics (the dictionary look-ups of
the labelled children remain: a few hundred nanoseconds a message).

    python -m bench._without_metrics run --module module.yaml ...
"""

from __future__ import annotations

import sys
from typing import Any

from runtime import metrics
from runtime.log.base import Log


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def switch_off() -> None:
    metrics.Count.inc = _nothing  # type: ignore[method-assign]
    metrics.Distribution.observe = _nothing  # type: ignore[method-assign]
    Log.observe_appends = _nothing  # type: ignore[method-assign]
    metrics.Metrics.ingress_request = _nothing  # type: ignore[method-assign]  # the fast path's

    async def untimed(self: metrics.IngressMetrics, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)

    metrics.IngressMetrics.__call__ = untimed  # type: ignore[method-assign]


if __name__ == "__main__":
    switch_off()
    from runtime.cli import main

    sys.exit(main())
