"""The console's pages: what each shows, read from the runtime, rendered by the templates.

The overview reads the process's metrics (totals now, rates and latencies from
:class:`~runtime.console.history.MetricsHistory`) and its function types' health; the
checkpoints and dead-letter pages render the same reports the HTTP API serves
(``runtime.reports``); the state browser is a page of script reading the public API
(``GET /v1/addresses/...``, ``GET /v1/state/...``). Nothing here changes anything: the
page's buttons post to the admin routes of the API. With tokens, ``/ui/login`` takes an
admin token once and keeps it in an HttpOnly, SameSite=Strict cookie, which
``runtime.access`` accepts on the console's pages and its own requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from runtime.access import COOKIE, Role
from runtime.console.history import MetricsHistory, TypeCounters, read_counters
from runtime.console.plots import sparkline, timeline
from runtime.reports import checkpoints_report, dead_letters_report, functions_report

if TYPE_CHECKING:
    from runtime.app import RuntimeBase

RECENT = 60.0
"""Seconds the overview's rates, error rates and latencies are taken over."""
DEAD_LETTERS_PAGE = 50
"""Dead letters shown per page."""
REFRESH_SECONDS = 5
"""How often the overview's figures refresh themselves."""
LOGIN_BODY_LIMIT = 4096
"""Bytes of the login form read (a token and its field name)."""
UNKNOWN = "\u2013"
"""An en dash: what a figure shows while there is nothing to say."""


@dataclass(frozen=True, slots=True)
class FunctionTypeRow:
    """One function type on the overview."""

    function_type: str
    status: str
    """``ok``, ``failing`` (some addresses held), ``unavailable`` or ``paused``."""
    last_error: str | None
    invocations: int
    failures: int
    dead_letters: int
    rate: float | None
    """Messages per second over the last :data:`RECENT` seconds (None: too early to say)."""
    error_rate: float | None
    p50: float | None
    p99: float | None
    in_flight: int
    backlog: int
    rate_plot: Markup
    error_plot: Markup
    p99_plot: Markup


def function_type_rows(
    runtime: RuntimeBase, counters: Mapping[str, TypeCounters]
) -> list[FunctionTypeRow]:
    """Every function type this process has sent messages to, or knows the health of,
    with its ``counters`` now."""
    history = runtime.history
    load = {entry.function_type: entry for entry in runtime.metrics.load()}
    health = {h["function_type"]: h for h in functions_report(runtime)}
    rows = []
    for function_type in sorted(counters.keys() | load.keys() | health.keys()):
        now = counters.get(function_type)
        recent = history.recent(function_type, RECENT)
        h = health.get(function_type, {})
        status = (
            "paused"
            if h.get("paused")
            else "unavailable"
            if h.get("unavailable")
            else "failing"
            if h.get("failing_addresses")
            else "ok"
        )
        rows.append(
            FunctionTypeRow(
                function_type=function_type,
                status=status,
                last_error=h.get("last_error"),
                invocations=round(now.invocations) if now else 0,
                failures=round(now.failures) if now else 0,
                dead_letters=round(now.dead_letters) if now else 0,
                rate=recent.rate if recent else None,
                error_rate=recent.error_rate if recent else None,
                p50=recent.latency(0.5) if recent else None,
                p99=recent.latency(0.99) if recent else None,
                in_flight=load[function_type].requests_in_flight if function_type in load else 0,
                backlog=load[function_type].backlog if function_type in load else 0,
                **plots(history, function_type),
            )
        )
    return rows


def plots(history: MetricsHistory, function_type: str) -> dict[str, Markup]:
    """The sparklines of a type's rate, error rate and p99 over the history's span (the
    oldest slots empty while the history is younger than that)."""
    slots = round(history.span / history.every)
    intervals = history.intervals(function_type)  # at most the ring's slots
    pad: list[float | None] = [None] * (slots - len(intervals))
    minutes = f"the last {history.span / 60:g} minutes"
    p99s = [i.latency(0.99) for i in intervals]
    return {
        "rate_plot": sparkline(
            pad + [i.rate for i in intervals], title=f"messages per second over {minutes}"
        ),
        "error_plot": sparkline(
            pad + [i.error_rate for i in intervals], title=f"failed attempts over {minutes}"
        ),
        "p99_plot": sparkline(
            pad + [None if p is None else p * 1000 for p in p99s],
            title=f"p99 call latency (ms) over {minutes}",
        ),
    }


def _timeline(report: dict[str, Any]) -> Markup | None:
    """The checkpoints and rollbacks of a checkpoints report along time."""

    def at(iso: str) -> float:
        return datetime.fromisoformat(iso).timestamp()

    checkpoints = [
        (at(c["time"]), f"checkpoint {c['id']} at {_when(c['time'])}")
        for c in report["checkpoints"]
    ]
    rollbacks = [
        (at(r["time"]), f"generation {r['generation']} rolled back: {r['reason']}")
        for r in report["rollbacks"]
    ]
    times = [t for t, _ in checkpoints + rollbacks]
    if not times:
        return None
    return timeline(min(times), max(times), checkpoints, rollbacks)


# --- how numbers read -------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.1f}/s" if value < 100 else f"{value:.0f}/s"


def _percent(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value * 100:.1f} %"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return UNKNOWN
    ms = seconds * 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.0f} ms"


def _bytes(n: float) -> str:
    units = ("B", "kB", "MB", "GB")
    unit = 0
    while n >= 1000 and unit < len(units) - 1:
        n /= 1000
        unit += 1
    return f"{n:.0f} B" if unit == 0 else f"{n:.1f} {units[unit]}"


def _when(iso: str) -> str:
    """An ISO time as the console shows it: date and time to the second, UTC."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


async def _counters(runtime: RuntimeBase) -> dict[str, TypeCounters]:
    """The function types' counters now, read on a thread (see ``bench.metrics``)."""
    return await asyncio.to_thread(read_counters, runtime.metrics)


def create_router(runtime: RuntimeBase) -> APIRouter:
    """The console's routes, under ``/ui``."""
    templates = Jinja2Templates(directory=str(files("runtime.console") / "templates"))
    templates.env.trim_blocks = templates.env.lstrip_blocks = True
    templates.env.filters.update(rate=_rate, percent=_percent, ms=_ms, bytes=_bytes, when=_when)
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def page(request: Request, template: str, **context: Any) -> HTMLResponse:
        status = runtime.cluster_status()
        return templates.TemplateResponse(
            request,
            template,
            {
                "app_id": runtime.config.app_id,
                "cluster": status,
                "problems": runtime.health.problems(),
                **context,
            },
        )

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(
            request, "login.html", {"app_id": runtime.config.app_id, "problem": None}
        )

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        """Take an admin token from the form and keep it in the console's cookie."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > LOGIN_BODY_LIMIT:
                break
        token = parse_qs(body[:LOGIN_BODY_LIMIT].decode(errors="replace")).get("token", [""])[0]
        tokens = runtime.access.tokens
        grant = None if tokens is None else tokens.grant_of(token)
        if tokens is not None and (grant is None or grant.role is not Role.ADMIN):
            return templates.TemplateResponse(
                request,
                "login.html",
                {"app_id": runtime.config.app_id, "problem": "that is not an admin token"},
                status_code=401,
            )
        answer = RedirectResponse("/ui", status_code=303)
        if tokens is not None:
            answer.set_cookie(
                COOKIE,
                token,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
        return answer

    @router.get("", response_class=HTMLResponse)
    async def overview(request: Request) -> HTMLResponse:
        return page(
            request,
            "overview.html",
            rows=function_type_rows(runtime, await _counters(runtime)),
            recent=RECENT,
            refresh=REFRESH_SECONDS,
            history=runtime.history,
        )

    @router.get("/checkpoints", response_class=HTMLResponse)
    async def checkpoints(request: Request) -> HTMLResponse:
        report = await checkpoints_report(runtime)
        return page(
            request,
            "checkpoints.html",
            report=report,
            timeline=_timeline(report),
            newest_first=list(reversed(report["checkpoints"])),
            rollbacks=list(reversed(report["rollbacks"])),
        )

    @router.get("/dead-letters", response_class=HTMLResponse)
    async def dead_letters(
        request: Request, from_: int = Query(0, alias="from", ge=0)
    ) -> HTMLResponse:
        report = await dead_letters_report(runtime, from_, DEAD_LETTERS_PAGE)
        return page(
            request,
            "dead_letters.html",
            letters=report["records"],
            start=from_,
            next=report["next"] if len(report["records"]) == DEAD_LETTERS_PAGE else None,
        )

    @router.get("/state", response_class=HTMLResponse)
    async def state(request: Request) -> HTMLResponse:
        report = await checkpoints_report(runtime)
        known = set(await _counters(runtime)) | {
            f"{e.functions.namespace}/{e.functions.name}"
            for e in runtime.module.endpoints
            if e.functions.name
        }
        return page(
            request,
            "state.html",
            function_types=sorted(known),
            checkpoints=list(reversed(report["checkpoints"])),
        )

    return router
