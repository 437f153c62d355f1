"""The web console at ``/ui``: what a runtime process is doing, for a person, in a browser.

It owns the pages (``runtime.console.pages``: the function types with their rates, error
rates and latencies; the checkpoints and rollbacks; the dead letters, with replay and
discard; a state browser), their templates and static files (package data, no build
step, nothing fetched from elsewhere: it works offline), the history of the metrics the
pages plot (``runtime.console.history``) and the plots themselves
(``runtime.console.plots``). :func:`install` serves it on the ingress's app.

The console reads what the HTTP API serves, from the same place (``runtime.reports``),
and its buttons and state browser call the public API from the page: it never acts on
the runtime by a way of its own. In a cluster, any member's console shows that member's
metrics and the application's checkpoints, rollbacks and dead letters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from runtime.console.pages import create_router

if TYPE_CHECKING:
    from runtime.app import RuntimeBase

__all__ = ["install"]


def install(app: FastAPI, runtime: RuntimeBase) -> list[BaseRoute]:
    """Serve the console of ``runtime`` at ``/ui`` (its files at ``/ui/static``); its
    routes (the access layer's to check: FastAPI hides an included router's)."""
    app.mount(
        "/ui/static",
        StaticFiles(packages=[("runtime.console", "static")]),
        name="console-static",
    )
    router = create_router(runtime)
    app.include_router(router)
    return list(router.routes)
