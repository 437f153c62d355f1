"""Progress of long work: quiet while short, a line per interval while long."""

from __future__ import annotations

from runtime.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_work_shorter_than_the_interval_says_nothing() -> None:
    lines: list[str] = []
    clock = Clock()
    progress = Progress("restoring", 10, "addresses", lines.append, interval=5, clock=clock)
    for _ in range(10):
        clock.now += 0.4
        progress.advance()
    progress.finish()
    assert lines == []
    assert progress.done == 10


def test_long_work_reports_what_is_done_of_how_much_once_per_interval() -> None:
    lines: list[str] = []
    clock = Clock()
    progress = Progress("restoring", 8, "partitions read", lines.append, interval=5, clock=clock)
    for _ in range(4):
        clock.now += 2
        progress.advance(2)
    progress.finish()
    # At 6 s (6 done) the first interval is over; the next would be due at 11 s.
    assert lines == [
        "restoring: 6 of 8 partitions read (75%) after 6 s",
        "restoring: 8 of 8 partitions read (100%) after 8 s, done",
    ]
