"""One fault's trial: the steady load on fresh healthy addresses, the throughput windows
before and during the fault, the wait for service to resume, the exact count at the end,
and the checks that make its row pass or fail.

Throughput is *processed increments per second*, read from the state: the sum of the
``count`` of the trial's healthy addresses (``GET /v1/state``), read at the start and the
end of each window. A rollback makes the live state go back to the checkpoint, and that
shows as lost throughput, as it should.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from verifier.fault_functions import COUNTER
from verifier.faults.load import Answers, Load
from verifier.faults.stack import Stack
from verifier.faults.timings import RATIO_GATE, Timings
from verifier.faults.watch import DeadLetterWatch, ReadyWatch, describe

Echo = Callable[[str], None]
"""Where progress lines go."""

HEALTHY_ADDRESSES = 200
RESUME_PROBE = 0.5
"""Seconds between throughput probes while waiting for service to resume."""
LAG_PROBE = 1.0
"""Seconds between reads of the processing lag during a fault's window."""
LOOP_PROBE = 0.05
"""Seconds between two looks at how late this process's event loop runs."""
WINDOW_END_ATTEMPTS = 3
"""Scans of the healthy counts a window's end may take (see :meth:`Trial.measure`)."""
CAUGHT_UP = 0.1
"""The window before a fault starts once the healthy addresses are at most this many
seconds of their offered load behind (and the probe's period while they are not)."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Row:
    """One fault on one log: the numbers of the table and the checks behind its result."""

    fault: str
    log: str
    before: float | None = None
    """Healthy increments processed per second before the fault."""
    during: float | None = None
    ratio_gated: bool = True
    """Whether the ratio is one of the checks (it is not for faults that stop the whole
    runtime by nature: a full disk, a restart)."""
    lag: float | None = None
    """The most the healthy addresses fell behind during the fault's window: increments
    accepted but not processed, in seconds of the throughput before. The ratio averages
    over the window, so a stall the runtime catches up on within it shows here only."""
    outcome: str = "-"
    """Time until the poison was parked, or until service resumed."""
    ready: str = "-"
    """``/ready`` from the fault's start to the end of the trial."""
    exact: str = "-"
    checks: list[Check] = field(default_factory=list)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    recovered: bool = True
    """Whether the runtime was left serving with every count exact (otherwise the next
    fault gets a fresh runtime)."""

    @property
    def ratio(self) -> float | None:
        if self.before is None or self.during is None or self.before <= 0:
            return None
        return self.during / self.before

    @property
    def result(self) -> str:
        if self.skipped is not None:
            return "SKIP"
        return "PASS" if self.checks and all(c.ok for c in self.checks) else "FAIL"

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]


def rate(first: tuple[float, int | None], second: tuple[float, int | None]) -> float | None:
    (t0, s0), (t1, s1) = first, second
    if s0 is None or s1 is None or t1 <= t0:
        return None
    return (s1 - s0) / (t1 - t0)


def steady(processed: float | None, *limits: float | None) -> float | None:
    """The healthy throughput of a window: what was processed per second, but no more
    than the ingress accepted meanwhile, nor than the load offers at its pace (the
    ``limits`` that are known). Processing faster than the ingress accepted is catching
    up on what was accepted before the window (a window that began behind, within
    ``CAUGHT_UP``): 300 increments/s before a fault against 255/s accepted, in a CI run
    whose healthy load was then served at 238/s during the fault, 251/s accepted.
    Accepting faster than the pace is the senders catching up on messages they owed
    from before the window: 277/s accepted before a fault against 250/s offered, in a CI
    run that then failed its gate at 212/s (0.78), every increment accepted processed
    within the window (no lag). No window without such a debt can match either."""
    known = [limit for limit in limits if limit is not None]
    if processed is None or not known:
        return processed
    return min(processed, *known)


class Trial:
    def __init__(
        self,
        name: str,
        stack: Stack,
        load: Load,
        ready: ReadyWatch,
        timings: Timings,
        echo: Echo,
        *,
        healthy: int = HEALTHY_ADDRESSES,
    ):
        self.name = name
        self.stack = stack
        self.load = load
        self.ready = ready
        self.timings = timings
        self.echo = echo
        self.row = Row(name, stack.log)
        self.ids = [f"{name}-{i}" for i in range(healthy)]
        self.tracked: set[tuple[str, str]] = set()
        """Addresses of other types, or of ``faults/counter`` outside the healthy set,
        whose counts must be exact at the end too."""
        self.letters = DeadLetterWatch(load)
        self.answers = Answers()
        self.started = time.monotonic()
        self.fault_at = self.started
        self.log_offset = stack.runtime_log_size()
        self._fault_window: tuple[float, int | None] = (self.started, None)
        self._lag: asyncio.Task[None] | None = None
        self._most_behind = 0
        self._load_started = self.started
        self._accepted_at_window: tuple[float, int | None] = (self.started, None)
        self._accepted_before: float | None = None
        self._accepted_during: float | None = None
        self._busy_during: tuple[int, int] | None = None
        """The most senders of the steady load that waited for the runtime at once during
        the fault's window, and how many there are."""
        self._stall = 0.0
        """The longest this process's event loop (the load's) was late during the window."""
        self._loop_watch: asyncio.Task[None] | None = None
        """Increments the ingress accepted per second for the healthy addresses in the two
        windows: a failed ratio with them as low tells the load's sending fell, not the
        processing of what was accepted."""

    # --- phases -------------------------------------------------------------------------

    async def before(self) -> None:
        """Start the load and measure the window before the fault."""
        await self.letters.begin()
        self.answers = self.load.answers = Answers()
        self.load.start(self.ids)
        self._load_started = time.monotonic()
        await asyncio.sleep(self.timings.warmup)
        first = await self._caught_up()
        accepted_first = (first[0], self._accepted())
        await asyncio.sleep(self.timings.before)
        self._fault_window = await self.measure(WINDOW_END_ATTEMPTS)
        self._accepted_at_window = (self._fault_window[0], self._accepted())
        self.load.most_busy()  # counted from the fault's window on
        self._loop_watch = asyncio.create_task(self._follow_loop())
        self._accepted_before = rate(accepted_first, self._accepted_at_window)
        self.row.before = steady(
            rate(first, self._fault_window), self._accepted_before, self.load.offered()
        )
        self.fault_at = time.monotonic()
        self._lag = asyncio.create_task(self._follow_lag())
        self.echo(f"  {self.name}: {self._per_second(self.row.before)} before the fault")

    async def _caught_up(self) -> tuple[float, int | None]:
        """A measurement taken once the steady load is on its pace and the healthy
        addresses have processed what was accepted for them, each give or take
        ``CAUGHT_UP`` seconds (bounded by the resume timeout). A window that starts behind
        counts the catching up as throughput: 732 increments/s before a fault against
        500/s offered, in a CI run where the ingress was slow as the load began and the
        senders then made up for it; no healthy rate afterwards reached the gate's share
        of that."""
        started = time.monotonic()
        deadline = started + self.timings.resume_timeout
        while True:
            accepted = self._accepted()
            now = await self.measure()
            offered = accepted / max(now[0] - self._load_started, CAUGHT_UP)
            unprocessed = accepted - (now[1] or 0)
            behind = self.load.behind()
            if now[1] is not None and behind <= CAUGHT_UP and unprocessed <= CAUGHT_UP * offered:
                return now
            if time.monotonic() >= deadline:
                self.row.notes.append(
                    f"the healthy load was behind when the window before the fault began, "
                    f"after {now[0] - started:.1f} s: {unprocessed} increments not processed, "
                    f"the senders {behind:.1f} s behind their pace"
                )
                return now
            await asyncio.sleep(CAUGHT_UP)

    def _accepted(self) -> int:
        """Increments accepted for the healthy addresses so far."""
        return sum(self.load.accepted[(COUNTER, i)] for i in self.ids)

    def fault_begins(self) -> None:
        """The fault is injected now (``before`` set a default: its end)."""
        self.fault_at = time.monotonic()

    async def end_window(self) -> None:
        """The fault's window ends: its throughput and the most it fell behind."""
        end = await self.measure(WINDOW_END_ATTEMPTS)
        await self.close()
        self.row.during = rate(self._fault_window, end)
        self._accepted_during = rate(self._accepted_at_window, (end[0], self._accepted()))
        self._busy_during = self.load.most_busy()
        if self.row.before:
            self.row.lag = self._most_behind / self.row.before
        self.echo(f"  {self.name}: {self._per_second(self.row.during)} during the fault")

    async def close(self) -> None:
        """Stop following the lag and the event loop (idempotent)."""
        for task in (self._lag, self._loop_watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._lag = self._loop_watch = None

    async def _follow_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(LOOP_PROBE)
            self._stall = max(self._stall, loop.time() - asked - LOOP_PROBE)

    async def _follow_lag(self) -> None:
        while True:
            accepted = self._accepted()
            _, processed = await self.measure()
            if processed is not None:
                self._most_behind = max(self._most_behind, accepted - processed)
            await asyncio.sleep(LAG_PROBE)

    async def measure(self, attempts: int = 1) -> tuple[float, int | None]:
        """(when, the sum of the healthy counts); the time is the middle of the reads.

        A scan with a read that failed is taken again, up to ``attempts`` scans in all;
        the sum stays unknown (None) only if every scan had a failed read. The ends of
        the measured windows take ``WINDOW_END_ATTEMPTS``: one read that timed out on a
        machine under load (a 2.5 s connection timeout in a CI run, while the runtime
        answered the other reads) says nothing of the throughput, and a window without
        its end cannot be judged."""
        for _ in range(attempts):
            start = time.monotonic()
            total = await self.load.total(COUNTER, self.ids)
            if total is not None:
                break
        return (start + time.monotonic()) / 2, total

    async def resumed(
        self, since: float, extra: Callable[[], Awaitable[bool]] | None = None
    ) -> float | None:
        """Seconds from ``since`` until the runtime is ready, healthy throughput is back
        (at least the gate's share of the throughput before) and ``extra`` holds; None
        if that does not happen within the resume timeout."""
        deadline = since + self.timings.resume_timeout
        last = await self.measure()
        while time.monotonic() < deadline:
            await asyncio.sleep(RESUME_PROBE)
            now = await self.measure()
            current = rate(last, now)
            last = now
            before = self.row.before or 0.0
            if (
                self.ready.ready
                and current is not None
                and current >= RATIO_GATE * before
                and (extra is None or await extra())
            ):
                return now[0] - since
        return None

    async def settle(self) -> None:
        """Stop the load, wait (bounded) until every count is exact, and record it."""
        await self.close()
        await self.load.stop(self.timings.settle_timeout)
        expected = {(COUNTER, i): self.load.accepted[(COUNTER, i)] for i in self.ids}
        expected.update({address: self.load.accepted[address] for address in self.tracked})
        deadline = time.monotonic() + self.timings.settle_timeout
        while True:
            got = await self._counts(expected)
            missing = sum(max(0, n - (got.get(a) or 0)) for a, n in expected.items())
            twice = sum(max(0, (got.get(a) or 0) - n) for a, n in expected.items())
            unread = sum(1 for a in expected if got.get(a) is None)
            if (not missing and not twice and not unread) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        total = sum(expected.values())
        refused = sum(self.load.refused[a] for a in expected)
        unresolved = self.load.unresolved
        self.load.unresolved = 0
        exact = not (missing or twice or unread or refused or unresolved)
        if exact:
            self.row.exact = f"exact ({total})"
        else:
            parts = [f"missing {missing}", f"twice {twice}"]
            parts += [f"{unread} unreadable"] if unread else []
            parts += [f"{refused} refused"] if refused else []
            parts += [f"{unresolved} unresolved"] if unresolved else []
            self.row.exact = ", ".join(parts) + f" of {total}"
        self.check("exact count", exact, self.row.exact)
        self.row.recovered = exact and self.stack.runtime is not None and self.stack.runtime.alive
        self.row.ready = describe(self.ready.between(self.fault_at, time.monotonic()))
        self.row.elapsed = time.monotonic() - self.started
        if self.answers.failed:
            self.row.notes.append(f"ingress answers: {self.answers.summary()}")
            for kind, example in self.answers.examples.items():
                self.row.notes.append(f"  first {kind}: {example[:200]}")

    async def _counts(
        self, expected: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], int | None]:
        by_type: dict[str, list[str]] = {}
        for function_type, id_ in expected:
            by_type.setdefault(function_type, []).append(id_)
        got: dict[tuple[str, str], int | None] = {}
        for function_type, ids in by_type.items():
            states = await self.load.states(function_type, ids)
            for id_, state in states.items():
                got[(function_type, id_)] = None if state is None else state["count"]
        return got

    # --- checks -------------------------------------------------------------------------

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.row.checks.append(Check(name, ok, detail))

    def check_ratio(self) -> None:
        """Healthy throughput during the fault, at least the gate's share of the throughput
        before; or, when the load itself fell behind its pace, of what the ingress
        accepted meanwhile.

        The load offers messages at a pace from ``concurrency`` senders: a sender waits
        for its message's answer, so the runtime holds the load back only when every
        sender waits for it at once. If none ever did during the window and the ingress
        still accepted less than before, the senders were late on their own: this
        process (the load generator, on a machine another test shares) did not run them.
        Two CI runs failed so, each with every increment accepted processed within the
        window (no lag): 0.78 of before, 277/s accepted before and 209/s during (a hot
        address), and 0.76, 256/s and 193/s (poisons). Nor does "every sender waited"
        say anything once this process's event loop was late by longer than the pace
        lets all senders wait (``concurrency / rate``): answers that had come sat unread
        meanwhile. A CI run failed so, 0.76 of before, every sender waiting once and the
        loop 1.56 s late (an endpoint outage). Such windows are judged against what was
        accepted; a runtime that held the load back is judged as before."""
        ratio = self.row.ratio
        if ratio is None:
            why = f": {self.load.failed_reads[-1]}" if self.load.failed_reads else ""
            self.check("throughput", False, f"could not be measured{why}"[:300])
            return
        detail = f"{ratio:.2f} of the throughput before (gate {RATIO_GATE})"
        if ratio >= RATIO_GATE or not (self._accepted_before and self._accepted_during):
            self.check("throughput", ratio >= RATIO_GATE, detail)
            return
        detail += (
            f"; accepted {self._accepted_before:.0f}/s before, {self._accepted_during:.0f}/s "
            f"during; the load's event loop was late by {self._stall:.2f} s at most"
        )
        busy = self._busy_during
        assert self.row.before is not None
        assert self.row.during is not None
        if busy is not None:
            detail += f"; at most {busy[0]} of the load's {busy[1]} senders waited at once"
        patience = None if busy is None or not self.load.rate else busy[1] / self.load.rate
        late_on_its_own = busy is not None and (
            busy[0] < busy[1] or (patience is not None and self._stall > patience)
        )
        if not late_on_its_own or self._accepted_during >= self.row.before:
            self.check("throughput", False, detail)
            return
        judged = self.row.during / self._accepted_during
        detail += f": the load was late on its own, {judged:.2f} of what was accepted"
        self.check("throughput", judged >= RATIO_GATE, detail)

    def check_ready_stays(self) -> None:
        """Function faults never make ``/ready`` 503 (nor the ingress go away)."""
        now = time.monotonic()
        seen = self.ready.between(self.fault_at, now)
        if self.ready.supported is False:
            self.check("/ready", False, "GET /ready answers 404: the runtime has none")
            return
        bad = [s for _, s in seen if s != "200"]
        detail = "200 throughout" if not bad else describe(seen)
        why = self.ready.why_missed(self.fault_at, now)
        if why:
            detail += f" (polls unanswered: {'; '.join(why[:3])})"
        self.check("/ready stays 200", not bad, detail)

    def check_ready_degraded(self, until: float) -> None:
        """``/ready`` went 503 during the fault (before ``until``) and is 200 again now."""
        if self.ready.supported is False:
            self.check("/ready", False, "GET /ready answers 404: the runtime has none")
            return
        seen = self.ready.between(self.fault_at, time.monotonic())
        degraded = self.ready.saw("503", self.fault_at, until)
        back = self.ready.current == "200"
        self.check(
            "/ready 503 during, 200 after",
            degraded and back,
            describe(seen),
        )

    def check_answers(self) -> None:
        """Never a plain-text 5xx; every 503 is JSON with ``Retry-After``."""
        bad = self.answers.plain_errors + self.answers.unavailable_without_retry_after
        self.check(
            "ingress errors are 503 JSON + Retry-After",
            bad == 0,
            "none other" if bad == 0 else self.answers.summary(),
        )

    def check_resumed(self, seconds: float | None, what: str = "service resumed") -> None:
        if seconds is None:
            self.row.outcome = "not resumed"
            self.check(what, False, f"not within {self.timings.resume_timeout:g} s")
        else:
            self.row.outcome = f"resumed {seconds:.1f}s"
            self.check(what, True, f"after {seconds:.1f} s")

    def runtime_log(self) -> str:
        return self.stack.runtime_log_since(self.log_offset)

    @staticmethod
    def _per_second(value: float | None) -> str:
        return "unmeasured" if value is None else f"{value:.0f} increments/s"
