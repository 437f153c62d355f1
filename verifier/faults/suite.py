"""A fault run: the chosen faults, one after the other, on each chosen log; and its table.

One stack per log (:class:`~verifier.faults.stack.Stack`): its processes start once and
every fault runs against them, each on fresh healthy addresses. A fault that leaves the
runtime not serving, or a count not exact, gets the next fault a fresh runtime over a
fresh log, so that one failure does not spill into the rows after it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from verifier.faults.load import Load
from verifier.faults.scenarios import ALL, LONG_ORDER, SHORT_ORDER, Fault
from verifier.faults.stack import FAULTY_RUNTIME, Features, Stack
from verifier.faults.timings import LONG, SHORT, Timings
from verifier.faults.trial import Echo, Row, Trial
from verifier.faults.watch import ReadyWatch
from verifier.processes import ProcessError

LOAD_CONCURRENCY = 64
LOAD_RATE = 800.0
"""Messages per second the steady load offers by default (1,000 increments per second
with the relays): under what either log takes on this kind of machine, so that the
windows measure the healthy addresses keeping up rather than the machine's other load
(a closed loop at capacity swung by 30% between consecutive windows here)."""
FAULT_TIMEOUT = 600.0
"""A fault that has not finished after this long fails (and the next gets a fresh runtime)."""


@dataclass(frozen=True)
class SuiteConfig:
    logs: tuple[str, ...] = ("embedded", "kafka")
    short: bool = False
    only: tuple[str, ...] = ()
    """Fault names to run (default: every fault of the form)."""
    concurrency: int = LOAD_CONCURRENCY
    rate: float | None = LOAD_RATE
    """Messages per second the steady load offers at most (None: closed loop, as fast
    as the ingress accepts them)."""
    work_dir: Path | None = None
    keep: bool = False
    kafka_bootstrap: str | None = None

    @property
    def timings(self) -> Timings:
        return SHORT if self.short else LONG

    def faults(self) -> list[Fault]:
        names = self.only or tuple(SHORT_ORDER if self.short else LONG_ORDER)
        unknown = [n for n in names if n not in ALL]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {sorted(ALL)}")
        return [ALL[n] for n in names]


@dataclass
class SuiteResult:
    rows: list[Row]
    features: Features
    work_dir: Path | None
    elapsed: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(row.result == "FAIL" for row in self.rows)

    def table(self) -> str:
        header = (
            "fault",
            "log",
            "before/s",
            "during/s",
            "ratio",
            "max lag",
            "parked / resumed",
            "/ready (or /health) from the fault on",
            "count at the end",
            "result",
        )
        lines = [header]
        for row in self.rows:
            ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
            lines.append(
                (
                    row.fault,
                    row.log,
                    _number(row.before),
                    _number(row.during),
                    ratio if row.ratio_gated else f"({ratio})",
                    "-" if row.lag is None else f"{row.lag:.1f}s",
                    row.outcome,
                    row.ready,
                    row.exact,
                    row.result,
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        ]
        text.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(text)

    def report(self) -> str:
        passed = sum(row.result == "PASS" for row in self.rows)
        failed = sum(row.result == "FAIL" for row in self.rows)
        skipped = sum(row.result == "SKIP" for row in self.rows)
        lines = [
            self.table(),
            "",
            "ratio: healthy throughput during the fault / before it (processed increments per "
            "second, from the state); in parentheses where it is not a check. max lag: the "
            "most the healthy addresses fell behind the increments accepted for them during "
            "the fault, in seconds of the throughput before (shown, not checked).",
            f"runtime: {self.features.describe()}",
            f"{passed} passed, {failed} failed, {skipped} skipped in {self.elapsed:.0f} s"
            + (f"; work dir {self.work_dir}" if self.work_dir else ""),
        ]
        for row in self.rows:
            if row.skipped is not None:
                lines.append(f"SKIP {row.fault} ({row.log}): {row.skipped}")
            for failure in row.failures():
                lines.append(f"FAIL {row.fault} ({row.log}): {failure}")
        details = [(row, note) for row in self.rows for note in row.notes]
        if details:
            lines.append("")
            lines += [f"note {row.fault} ({row.log}): {note}" for row, note in details]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _work_dir(chosen: Path | None) -> Path:
    if chosen is None:
        return Path(tempfile.mkdtemp(prefix="faults-"))
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


async def run_suite(config: SuiteConfig, echo: Echo | None = None) -> SuiteResult:
    say: Echo = echo or (lambda line: None)
    faults = config.faults()
    features = await asyncio.to_thread(Features.detect)
    say(f"faults: runtime supports {features.describe()}")
    work = _work_dir(config.work_dir)
    started = time.monotonic()
    rows: list[Row] = []
    notes: list[str] = []
    for log in config.logs:
        try:
            rows += await _run_log(log, faults, config, features, work / log, say)
        except ProcessError as e:
            notes.append(f"the {log} run broke off: {e}")
            say(f"faults: the {log} run broke off: {e}")
    result = SuiteResult(rows, features, work, time.monotonic() - started, notes)
    if result.ok and not notes and not config.keep and config.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
        result.work_dir = None
    return result


async def _run_log(
    log: str,
    faults: Sequence[Fault],
    config: SuiteConfig,
    features: Features,
    work: Path,
    echo: Echo,
) -> list[Row]:
    runnable = [f for f in faults if log in f.logs]
    if not runnable:
        return []
    timings = config.timings
    stack = Stack(log, work, timings, features, kafka_bootstrap=config.kafka_bootstrap)
    rows: list[Row] = []
    load = Load(stack.url, concurrency=config.concurrency, rate=config.rate)
    watch = ReadyWatch(stack.url)
    try:
        echo(f"faults: starting the {log} stack in {work}")
        await stack.open()
        await load.open()
        watch.start()
        fresh_needed = False
        for fault in runnable:
            if log in fault.seams and not features.seams:
                rows.append(Row(fault.name, log, skipped=f"needs {FAULTY_RUNTIME} (the seams)"))
                echo(f"faults: {fault.name} ({log}): skipped, needs {FAULTY_RUNTIME}")
                continue
            if fault.fresh or fresh_needed or (log == "kafka" and timings.fresh_kafka_log):
                await stack.fresh(retain=fault.retain)
            echo(f"faults: {fault.name} ({log}): {fault.summary}")
            row = await _run_fault(fault, stack, load, watch, timings, echo)
            rows.append(row)
            fresh_needed = not row.recovered
            echo(f"faults: {fault.name} ({log}): {row.result} in {row.elapsed:.0f} s")
            for failure in row.failures():
                echo(f"    {failure}")
    finally:
        await watch.stop()
        await load.close()
        await stack.close()
    return rows


async def _run_fault(
    fault: Fault, stack: Stack, load: Load, watch: ReadyWatch, timings: Timings, echo: Echo
) -> Row:
    # Whatever an earlier fault left switched on (or off) is back to normal.
    await stack.ensure_functions()
    await stack.switches(poisons=[], slow=0, storm=False, unknown_types_fail=False)
    stack.set_seam(None)
    if stack.broker_stopped:
        stack.resume_broker()
    trial = Trial(fault.name, stack, load, watch, timings, echo)
    try:
        async with asyncio.timeout(FAULT_TIMEOUT):
            await fault.run(trial)
    except (ProcessError, TimeoutError, aiohttp.ClientError, OSError) as e:
        trial.check("the fault ran to its end", False, f"{type(e).__name__}: {e}"[:300])
        trial.row.recovered = False
        trial.row.elapsed = time.monotonic() - trial.started
        await load.stop(grace=5)
    finally:
        await trial.close()
    return trial.row
