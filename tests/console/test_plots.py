"""The console's inline SVG plots: where the points go, gaps, and escaped titles."""

from __future__ import annotations

import re

from runtime.console.plots import sparkline, timeline


def test_a_sparkline_scales_from_zero_to_its_maximum_with_gaps_for_unknown_values() -> None:
    svg = sparkline([None, 0.0, 5.0, 10.0, None, 4.0], title="rate", width=50, height=24)
    # x: 10 per step; y: 2 (the top, 10) to 22 (the bottom, 0).
    assert re.findall(r'points="([^"]*)"', svg) == ["10.0,22.0 20.0,12.0 30.0,2.0"]
    assert re.findall(r'<circle cx="([^"]*)" cy="([^"]*)"', svg) == [("50.0", "14.0")]


def test_a_sparkline_of_nothing_draws_only_its_base_line() -> None:
    svg = sparkline([None, None], title="p99")
    assert "polyline" not in svg
    assert "circle" not in svg
    assert 'class="base"' in svg


def test_titles_are_escaped() -> None:
    svg = sparkline([1.0], title='<script>alert("x")</script>')
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    marks = timeline(0.0, 10.0, [(5.0, "checkpoint <7>")], [(10.0, "rolled back & why")])
    assert "checkpoint &lt;7&gt;" in marks
    assert "rolled back &amp; why" in marks


def test_the_timeline_places_marks_by_time() -> None:
    svg = timeline(100.0, 200.0, [(100.0, "a"), (150.0, "b")], [(200.0, "c")], width=216)
    # 8 px of padding each side: 200 px for 100 s.
    assert re.findall(r'class="checkpoint" x1="([^"]*)"', svg) == ["8.0", "108.0"]
    assert 'd="M208.0,' in svg
