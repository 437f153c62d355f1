"""The console's small plots, drawn on the server as inline SVG: no script, no assets.

:func:`sparkline` draws a series of values evenly spaced in time (a gap where a value is
unknown); :func:`timeline` marks checkpoints and rollbacks along a span of time. Both
return markup ready to place in a page (every text in it escaped).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def sparkline(
    values: Sequence[float | None],
    *,
    title: str,
    width: int = 160,
    height: int = 32,
) -> Markup:
    """``values`` oldest first, from 0 (the bottom) to their maximum (the top); each run
    of known values is one line, a lone value a dot. ``title`` names the series (shown
    on hover, read by screen readers), with its latest and highest value appended by the
    caller as it sees fit."""
    known = [v for v in values if v is not None]
    top = max(known, default=0.0) or 1.0
    step = width / max(len(values) - 1, 1)
    pad = 2

    def y(v: float) -> float:
        return pad + (height - 2 * pad) * (1 - v / top)

    runs: list[list[tuple[float, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i * step, y(v)))
    shapes = []
    for run in runs:
        if len(run) == 1:
            (x0, y0) = run[0]
            shapes.append(f'<circle cx="{x0:.1f}" cy="{y0:.1f}" r="1.5"/>')
        elif run:
            points = " ".join(f"{x:.1f},{y_:.1f}" for x, y_ in run)
            shapes.append(f'<polyline points="{points}"/>')
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<line class="base" x1="0" y1="{height - pad}" x2="{width}" y2="{height - pad}"/>'
        f"{''.join(shapes)}</svg>"
    )


def timeline(
    start: float,
    end: float,
    checkpoints: Sequence[tuple[float, str]],
    rollbacks: Sequence[tuple[float, str]],
    *,
    width: int = 720,
    height: int = 56,
) -> Markup:
    """Checkpoints (ticks) and rollbacks (red diamonds) at their times, between ``start``
    and ``end`` (seconds since the epoch); each mark titled with its text (on hover)."""
    span = max(end - start, 1e-9)
    pad = 8

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * (min(max(t, start), end) - start) / span

    marks = [
        f'<line class="checkpoint" x1="{x(t):.1f}" y1="14" x2="{x(t):.1f}" y2="{height - 14}">'
        f"<title>{escape(text)}</title></line>"
        for t, text in checkpoints
    ]
    marks += [
        f'<path class="rollback" d="{_diamond(x(t), height / 2)}"><title>{escape(text)}</title></path>'
        for t, text in rollbacks
    ]
    return Markup(
        f'<svg class="timeline" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="checkpoints and rollbacks over time">'
        f'<line class="axis" x1="{pad}" y1="{height / 2}" x2="{width - pad}" y2="{height / 2}"/>'
        f"{''.join(marks)}</svg>"
    )


def _diamond(cx: float, cy: float, r: float = 6) -> str:
    return f"M{cx:.1f},{cy - r:.1f} L{cx + r:.1f},{cy:.1f} L{cx:.1f},{cy + r:.1f} L{cx - r:.1f},{cy:.1f} Z"
