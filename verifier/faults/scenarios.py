"""The faults: how each is injected, what heals it, and what its row checks.

Every fault runs as a :class:`~verifier.faults.trial.Trial`: the steady load on fresh
healthy addresses, a window before the fault, the fault's window, the fix (where the
fault does not end by itself), the wait for service to resume, and the exact count.
Each row checks what the issue asks of that fault; see ``verifier/README.md``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from verifier.fault_functions import COUNTER, FLAKY, POISONS, STORM, UNKNOWN_TARGET
from verifier.faults.stack import MAX_BATCH
from verifier.faults.timings import SIGTERM_LIMIT
from verifier.faults.trial import Trial

Run = Callable[[Trial], Awaitable[None]]

PARK_POLL = 0.5
FLAKY_ADDRESSES = 10
FLAKY_RATE = 20.0
"""Messages per second to ``faults/flaky`` (the type whose endpoint goes down)."""
STOP_PROBE = 1.0
"""Seconds between two reads that show a paused storm no longer moves."""
ONE_LINE_ERROR = re.compile(r"^[\w.]+: error: ")
"""How a CLI refuses in one line (``statefun: error: ...``)."""


@dataclass(frozen=True)
class Fault:
    name: str
    run: Run
    summary: str
    logs: tuple[str, ...] = ("embedded", "kafka")
    seams: tuple[str, ...] = ()
    """The logs on which it is injected through the fault-injection seams
    (``verifier.faulty_runtime``)."""
    fresh: bool = False
    """Runs on a fresh runtime over a fresh log."""
    retain: int | None = None
    """``--checkpoint-retain`` of that fresh runtime."""


# --- poison messages ------------------------------------------------------------------


def _letter_target(kind: str, id_: str) -> str:
    """Whom the dead letter of a poison of ``kind`` sent to ``id_`` is addressed to: the
    poison itself, or for ``unknown-target`` the send to the type nobody serves."""
    return f"{UNKNOWN_TARGET}/{id_}" if kind == "unknown-target" else f"{COUNTER}/{id_}"


def poisons(kinds: tuple[str, ...], *, door: bool = False) -> Run:
    """A poison message of each kind, to an address of its own of ``faults/counter``
    (the healthy type: its endpoint keeps answering other messages), switched on until
    every poison is parked or ``poison_window`` has passed; then the function is fixed.
    With ``door``, the unknown-type probes too (see :func:`unknown_type`)."""

    async def run(trial: Trial) -> None:
        timings = trial.timings
        await trial.before()
        await trial.stack.switches(poisons=list(kinds), unknown_types_fail=door)
        trial.fault_begins()
        probes = await _probe_the_door(trial) if door else []
        targets = {kind: f"{trial.name}-poison-{kind}" for kind in kinds}
        sent_at: dict[str, float] = {}
        for kind, id_ in targets.items():
            await trial.load.send(COUNTER, id_, {"op": "poison", "kind": kind})
            sent_at[kind] = time.monotonic()
        parked: dict[str, dict[str, Any]] = {}
        parked_after: dict[str, float] = {}
        shortest = trial.fault_at + timings.window
        deadline = trial.fault_at + timings.poison_window
        while time.monotonic() < deadline:
            await asyncio.sleep(PARK_POLL)
            await trial.letters.poll()
            for kind, id_ in targets.items():
                letters = trial.letters.targeting(_letter_target(kind, id_))
                if kind not in parked and letters:
                    parked[kind] = letters[0]
                    seen = trial.letters.seen_at[int(letters[0].get("offset", -1))]
                    parked_after[kind] = seen - sent_at[kind]
            if len(parked) == len(kinds) and time.monotonic() >= shortest:
                break
        await trial.end_window()
        hits = (await trial.stack.switches(poisons=[], unknown_types_fail=False)).get("hits", {})
        fixed_at = time.monotonic()
        resumed = await trial.resumed(fixed_at)
        await trial.settle()
        trial.check_ratio()
        _check_the_door(trial, probes)
        for kind in kinds:
            if kind in parked:
                trial.check(f"{kind} parked", True, f"after {parked_after[kind]:.1f} s")
                message = parked[kind].get("message")
                readable = isinstance(message, dict) and message.get("encoding") != "base64"
                trial.check(
                    f"{kind} dead letter readable",
                    readable and message is not None and message.get("value") is not None,
                    f"message {message!r}"[:200],
                )
            else:
                trial.check(
                    f"{kind} parked",
                    False,
                    f"not within {timings.poison_window:g} s (it misbehaved "
                    f"{hits.get(kind, 0)} times)",
                )
        trial.check_ready_stays()
        trial.check_answers()
        if len(parked) == len(kinds):
            trial.row.outcome = f"parked {max(parked_after.values()):.1f}s"
        else:
            after_fix = "not resumed" if resumed is None else f"resumed {resumed:.1f}s"
            trial.row.outcome = f"{len(parked)}/{len(kinds)} parked; fixed: {after_fix}"

    return run


# --- a hot, slow address ------------------------------------------------------------

HOT_BURST = 2 * MAX_BATCH + MAX_BATCH // 2
"""Messages sent to the hot address at once: one batch in flight, one waiting, and more
behind it in the log."""


async def hot_address(trial: Trial) -> None:
    """One address gets more than ``maxNumBatchRequests`` messages at once, then a steady
    stream, and every request carrying one of them is answered ``hot_slow`` seconds
    late: its backlog stays over the batch limit. Reading must go on for the others."""
    timings = trial.timings
    await trial.before()
    await trial.stack.switches(slow=timings.hot_slow)
    trial.fault_begins()
    hot = f"{trial.name}-hot"
    trial.tracked.add((COUNTER, hot))
    burst = [trial.load.send(COUNTER, hot, {"op": "hot"}) for _ in range(HOT_BURST)]
    await asyncio.gather(*burst)
    stream = trial.load.senders(COUNTER, [hot], {"op": "hot"}, 4, timings.hot_rate)
    await asyncio.sleep(timings.window)
    await trial.end_window()
    await stream.stop(timings.settle_timeout)
    await trial.stack.switches(slow=0)
    fixed_at = time.monotonic()

    async def drained() -> bool:
        return await _counts_reached(trial, COUNTER, [hot])

    resumed = await trial.resumed(fixed_at, drained)
    await trial.settle()
    trial.check_ratio()
    trial.check_ready_stays()
    trial.check_answers()
    trial.check_resumed(resumed, "the hot address drained")


# --- an endpoint outage ---------------------------------------------------------------


async def endpoint_outage(trial: Trial) -> None:
    """The second function server (``faults/flaky``) is killed for ``outage`` seconds
    while messages for it keep coming; then started again. Nothing of it may be parked
    (its endpoint fails everything: it is unavailable, not poisoned)."""
    timings = trial.timings
    ids = [f"{trial.name}-flaky-{i}" for i in range(FLAKY_ADDRESSES)]
    trial.tracked.update((FLAKY, i) for i in ids)
    stream = trial.load.senders(FLAKY, ids, {"op": "inc"}, 2, FLAKY_RATE)
    await trial.before()
    trial.fault_begins()
    server = trial.stack.flaky
    # Off the event loop: reaping the process must not hold the load's senders back.
    await asyncio.to_thread(server.kill)
    await asyncio.sleep(timings.outage)
    # The window is the outage: the server's start (a Python process importing its
    # framework, a core for a second) is the machine's load, not the runtime's doing.
    await trial.end_window()
    server.start()
    await server.ready()
    back = time.monotonic()
    await stream.stop(timings.settle_timeout)

    async def caught_up() -> bool:
        return await _counts_reached(trial, FLAKY, ids)

    resumed = await trial.resumed(back, caught_up)
    await trial.letters.poll()
    parked = trial.letters.under(FLAKY)
    await trial.settle()
    trial.check_ratio()
    trial.check(
        "nothing of the unavailable type parked",
        not parked,
        "none" if not parked else f"{len(parked)} dead letters, e.g. {parked[0]}"[:200],
    )
    trial.check_ready_stays()
    trial.check_answers()
    trial.check_resumed(resumed, "faults/flaky caught up after the restart")


# --- message storms -------------------------------------------------------------------


def storms(kinds: tuple[str, ...]) -> Run:
    """A storm of each kind (``storm-self``: a function sending to itself forever;
    ``storm-fanout``: two sends per message, up to ``fanout_cap``) on ``faults/storm``;
    half-way through the window the type is paused (admin endpoint), which must stop it
    without losing what is accepted; then the function is fixed and the type resumed."""

    async def run(trial: Trial) -> None:
        timings = trial.timings
        trial.row.ratio_gated = False
        await trial.before()
        await trial.stack.switches(storm=True)
        trial.fault_begins()
        ids = {kind: f"{trial.name}-{kind}" for kind in kinds}
        caps = {"storm-self": 10**9, "storm-fanout": timings.fanout_cap}
        for kind, id_ in ids.items():
            await trial.load.send(STORM, id_, {"op": kind, "cap": caps[kind]})
        await asyncio.sleep(timings.window / 2)
        pause = await trial.load.post_json(f"/v1/admin/functions/{STORM}/pause")
        paused = pause[0] == 200 and isinstance(pause[1], dict) and pause[1].get("paused") is True
        stopped = (
            await _stands_still(trial, list(ids.values()), timings.window) if paused else False
        )
        await trial.end_window()
        warnings = [
            line
            for line in trial.runtime_log().splitlines()
            if " WARNING " in line and STORM in line
        ]
        await trial.stack.switches(storm=False)
        resume = await trial.load.post_json(f"/v1/admin/functions/{STORM}/resume")
        resumed_ok = (
            resume[0] == 200 and isinstance(resume[1], dict) and resume[1].get("paused") is False
        )
        fixed_at = time.monotonic()

        async def over() -> bool:
            return await _storms_over(trial, list(ids.values()))

        ended = await trial.resumed(fixed_at, over)
        final = await trial.load.states(STORM, ids.values(), ("received", "sent"))
        await trial.settle()
        trial.check(
            "a warning names the type",
            bool(warnings),
            warnings[0][-200:] if warnings else "no WARNING line names faults/storm",
        )
        trial.check("pause", paused, f"POST .../pause answered {pause[0]} {pause[1]}"[:200])
        trial.check(
            "paused: the storm stands still",
            stopped,
            "stood still" if stopped else "not paused" if not paused else "kept going",
        )
        trial.check("resume", resumed_ok, f"POST .../resume answered {resume[0]} {resume[1]}"[:200])
        trial.check(
            "nothing lost or twice (received = 1 + sent)",
            ended is not None,
            ", ".join(f"{i}: {s}" for i, s in final.items()),
        )
        trial.check_ready_stays()
        trial.check_answers()
        trial.row.outcome = "not over" if ended is None else f"over {ended:.1f}s"

    return run


async def _stands_still(trial: Trial, ids: list[str], within: float) -> bool:
    """Whether the storms' states stop changing (two reads ``STOP_PROBE`` apart agree)
    within ``within`` seconds."""
    deadline = time.monotonic() + within
    last = await trial.load.states(STORM, ids, ("received",))
    while time.monotonic() < deadline:
        await asyncio.sleep(STOP_PROBE)
        now = await trial.load.states(STORM, ids, ("received",))
        if now == last and None not in now.values():
            return True
        last = now
    return False


async def _storms_over(trial: Trial, ids: list[str]) -> bool:
    states = await trial.load.states(STORM, ids, ("received", "sent"))
    return all(s is not None and s["received"] == 1 + s["sent"] for s in states.values())


async def _counts_reached(trial: Trial, function_type: str, ids: Iterable[str]) -> bool:
    states = await trial.load.states(function_type, ids)
    return all(
        s is not None and s["count"] == trial.load.accepted[(function_type, i)]
        for i, s in states.items()
    )


# --- unknown function types and bad paths ---------------------------------------------

PROBES = (
    ("/v1/messages/faults/nosuch/x", 404),
    ("/v1/messages/faults/coun%2Fter/x", 400),
    ("/v1/messages/faults/counter/%2E%2E", 400),
    ("/v1/messages/faults/counter/%2E", 400),
)
"""Paths (sent as they are) and the status each must get: ``faults/nosuch`` is under
the endpoint's ``faults/*`` but no function serves it; the others have a path segment
that decodes to ``/``, ``..`` or ``.``."""


async def unknown_type(trial: Trial) -> None:
    """POSTs to a type no function serves and to paths whose segments decode to ``/``,
    ``..`` or ``.``: refused at the door, nothing appended. The function server fails an
    unknown type meanwhile, as the SDK does; the fix deploys a no-op for it."""
    timings = trial.timings
    await trial.before()
    await trial.stack.switches(unknown_types_fail=True)
    trial.fault_begins()
    probes = await _probe_the_door(trial)
    await asyncio.sleep(timings.window)
    await trial.end_window()
    await trial.stack.switches(unknown_types_fail=False)
    resumed = await trial.resumed(time.monotonic())
    await trial.settle()
    _check_the_door(trial, probes)
    trial.check_ratio()
    trial.check_ready_stays()
    trial.check_answers()
    if all(status == want for _, want, status, _ in probes):
        trial.row.outcome = "refused"
    else:
        trial.row.outcome = "accepted; fixed: " + (
            "not resumed" if resumed is None else f"resumed {resumed:.1f}s"
        )


async def _probe_the_door(trial: Trial) -> list[tuple[str, int, int, str]]:
    """(path, status wanted, status got, body) of each probe."""
    return [
        (path, want, *(await trial.load.post_raw(path, {"op": "noop"}))) for path, want in PROBES
    ]


def _check_the_door(trial: Trial, probes: list[tuple[str, int, int, str]]) -> None:
    for path, want, status, body in probes:
        trial.check(f"POST {path}", status == want, f"{status} {body}"[:160] + f" (want {want})")


# --- the log and the checkpoint store failing -----------------------------------------


def seam(target: str) -> Run:
    """``log``: every append fails (a full disk, through ``verifier.faulty_runtime``'s
    fault file) for ``window`` seconds; ``store``: every checkpoint store write fails
    for ``store_window`` seconds. The runtime must degrade (``/ready`` 503, POSTs 503
    JSON with ``Retry-After``, never a plain 500) and heal by itself once it clears."""

    async def run(trial: Trial) -> None:
        timings = trial.timings
        trial.row.ratio_gated = False
        await trial.before()
        trial.fault_begins()
        trial.stack.set_seam(target)
        await asyncio.sleep(timings.window if target == "log" else timings.store_window)
        await trial.end_window()
        trial.stack.set_seam(None)
        cleared = time.monotonic()
        resumed = await trial.resumed(cleared)
        await trial.settle()
        trial.check_answers()
        if target == "log":
            refused = trial.answers.counts["503 JSON + Retry-After"]
            trial.check(
                "POSTs refused with 503 while appends fail",
                refused > 0,
                f"{refused} answers 503 JSON + Retry-After",
            )
        trial.check_ready_degraded(cleared)
        trial.check_resumed(resumed)

    return run


async def broker_stall(trial: Trial) -> None:
    """The Tansu broker stopped (SIGSTOP) for ``stall`` seconds, then continued. If the
    ingress answered any POST with a 5xx meanwhile, ``/ready`` must have said so; service
    resumes by itself. (POSTs merely held until the broker is back are not failures.)"""
    timings = trial.timings
    trial.row.ratio_gated = False
    await trial.before()
    trial.fault_begins()
    trial.stack.stall_broker()
    try:
        await asyncio.sleep(timings.stall)
    finally:
        trial.stack.resume_broker()
    cleared = time.monotonic()
    await trial.end_window()
    resumed = await trial.resumed(cleared)
    await trial.settle()
    trial.check_answers()
    if trial.answers.server_errors:
        trial.check_ready_degraded(cleared)
    trial.check_resumed(resumed)


# --- restarts ---------------------------------------------------------------------------


def _last_line(output: str) -> str:
    """What a start that ended said last: the exception of its last traceback, or its
    last line."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("=====")]
    if not lines:
        return "(no output)"
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if tracebacks:
        after = lines[tracebacks[-1] + 1 :]
        exception = next((line for line in after if not line.startswith(" ")), None)
        if exception is not None:
            return exception
    return lines[-1]


def _stop_for_a_restart(trial: Trial) -> None:
    """SIGTERM, noted, before a fault that needs the runtime down."""
    status, seconds = trial.stack.stop_runtime()
    trial.row.notes.append(f"SIGTERM: exit {status} after {seconds:.1f} s")


async def _resumed_after(trial: Trial, restarted: float) -> None:
    """The fault's window ends; service must resume after the restart at ``restarted``
    and every count settle exact."""
    await trial.end_window()
    resumed = await trial.resumed(restarted)
    await trial.settle()
    trial.check_resumed(resumed)


async def damaged_store(trial: Trial) -> None:
    """SIGTERM, garbage in the newest checkpoint's worker part (``checkpoints.db``),
    start: the runtime must fall back to an older retained checkpoint (nothing of the
    newer one was released) and end with every count exact."""
    stack, timings = trial.stack, trial.timings
    trial.row.ratio_gated = False
    await trial.before()
    trial.fault_begins()
    _stop_for_a_restart(trial)
    damage = stack.damage_newest_part()
    restarted = time.monotonic()
    outcome = await stack.start_runtime(within=timings.resume_timeout)
    assert stack.runtime is not None
    output = stack.runtime.output_of_latest_start()
    trial.check(
        "starts from an older checkpoint",
        outcome == "ready",
        f"{outcome}: {_last_line(output)[:200]}"
        + (" (with a traceback)" if "Traceback" in output else ""),
    )
    if outcome != "ready":
        # Put the part back, so that the rest of the run has its runtime.
        stack.stop_runtime(grace=5)
        stack.repair(damage)
        restarted = time.monotonic()
        await stack.start_runtime(within=timings.resume_timeout)
    await _resumed_after(trial, restarted)


async def missing_store(trial: Trial) -> None:
    """SIGTERM, the checkpoint store moved away, start over the same log with an empty
    ``--checkpoint-dir``: refused in one line. Then ``--start-over``: every count exact
    (a replay that repeats the runtime's own records counts the relays twice)."""
    stack, timings = trial.stack, trial.timings
    trial.row.ratio_gated = False
    await trial.before()
    trial.fault_begins()
    _stop_for_a_restart(trial)
    aside = stack.hide_checkpoint_store()
    outcome = await stack.start_runtime(within=timings.resume_timeout)
    assert stack.runtime is not None
    output = stack.runtime.output_of_latest_start()
    last = _last_line(output)
    restarted = time.monotonic()
    if outcome == "exited":
        # The refusal, wherever it is: a client library may log a line or two after it.
        refusals = [line for line in output.splitlines() if ONE_LINE_ERROR.match(line)]
        one_line = "Traceback" not in output and len(refusals) == 1
        trial.check(
            "refused in one line",
            one_line,
            (refusals[0] if refusals else last)[:200]
            + (" (with a traceback)" if "Traceback" in output else ""),
        )
        if stack.features.start_over:
            restarted = time.monotonic()
            outcome = await stack.start_runtime("--start-over", within=timings.resume_timeout)
            trial.check("--start-over starts", outcome == "ready", outcome)
        else:
            trial.check("--start-over", False, "statefun run has no --start-over")
            stack.restore_checkpoint_store(aside)
            restarted = time.monotonic()
            await stack.start_runtime(within=timings.resume_timeout)
    else:
        trial.check(
            "refused in one line",
            False,
            f"{outcome}: it started over an empty checkpoint store (last line: {last[:120]})",
        )
        if outcome != "ready":
            stack.stop_runtime(grace=5)
            stack.restore_checkpoint_store(aside)
            restarted = time.monotonic()
            await stack.start_runtime(within=timings.resume_timeout)
    await _resumed_after(trial, restarted)


async def sigterm_degraded(trial: Trial) -> None:
    """SIGTERM while degraded (embedded: appends failing through the seam; Kafka: the
    broker stopped): the runtime must end within ``SIGTERM_LIMIT`` seconds; then the
    fault is cleared, the runtime started again, and every count must be exact."""
    stack, timings = trial.stack, trial.timings
    trial.row.ratio_gated = False
    await trial.before()
    trial.fault_begins()
    if stack.log == "kafka":
        stack.stall_broker()
    else:
        stack.set_seam("log")
    await trial.ready.wait_for("503", timings.window)
    state = trial.ready.current
    try:
        status, seconds = stack.stop_runtime()
    finally:
        if stack.log == "kafka":
            stack.resume_broker()
        else:
            stack.set_seam(None)
    ended = status is not None and seconds <= SIGTERM_LIMIT
    trial.check(
        f"SIGTERM ends within {SIGTERM_LIMIT:g} s",
        ended,
        f"{seconds:.1f} s, exit {status} (killed)"
        if status is None
        else f"{seconds:.1f} s, exit {status}",
    )
    trial.row.notes.append(f"SIGTERM sent in /ready state {state!r}")
    restarted = time.monotonic()
    outcome = await stack.start_runtime(within=timings.resume_timeout)
    trial.check("starts again", outcome == "ready", outcome)
    await _resumed_after(trial, restarted)
    trial.row.outcome = f"exit {seconds:.1f}s; " + trial.row.outcome


# --- the catalogue ----------------------------------------------------------------------

_POISON_SUMMARY = {
    "raise": "the function raises on one message",
    "reply": "context.reply on a message from /v1/messages (the SDK raises)",
    "garbage": "the answer is bytes that are not msgpack",
    "truncated": "the answer is cut in half",
    "undeclared-state": "the result mutates a state the function never declared",
    "unknown-target": "the function sends to a type no endpoint serves",
    "missing-specs": "the function asks again for the states it was given",
    "trickle": "the answer trickles, one byte a second",
}

ONE_BY_ONE = [
    *(
        Fault(
            "trickle" if kind == "trickle" else f"poison-{kind}",
            poisons((kind,)),
            _POISON_SUMMARY[kind],
        )
        for kind in POISONS
    ),
    Fault("hot-address", hot_address, "an address with a slow backlog over maxNumBatchRequests"),
    Fault("endpoint-outage", endpoint_outage, "the second function server down, then back"),
    Fault("storm-self", storms(("storm-self",)), "a function sending to itself forever"),
    Fault("storm-fanout", storms(("storm-fanout",)), "a fan-out of 2 per message"),
    Fault("unknown-type", unknown_type, "an unknown type and bad path segments at the ingress"),
    Fault(
        "log-full", seam("log"), "appends fail (a full disk)", ("embedded",), seams=("embedded",)
    ),
    Fault(
        "store-full",
        seam("store"),
        "checkpoint store writes fail (a full disk)",
        seams=("embedded", "kafka"),
    ),
    Fault("broker-stall", broker_stall, "the Kafka broker stopped (SIGSTOP)", ("kafka",)),
    Fault("damaged-store", damaged_store, "garbage in the newest checkpoint, then a restart"),
    Fault(
        "sigterm-degraded",
        sigterm_degraded,
        "SIGTERM while appends fail (embedded) or the broker is stopped (Kafka)",
        seams=("embedded",),
    ),
    Fault(
        "missing-store",
        missing_store,
        "a restart with an empty checkpoint store, then --start-over",
        fresh=True,
        retain=1000,
    ),
]

COMBINED = {
    "poisons": Fault(
        "poisons", poisons(POISONS), "every poison kind at once, each at its own address"
    ),
    "storms": Fault("storms", storms(("storm-self", "storm-fanout")), "both storms at once"),
}

ALL = {fault.name: fault for fault in [*ONE_BY_ONE, *COMBINED.values()]}

SHORT_ORDER = [
    "poisons",
    "hot-address",
    "endpoint-outage",
    "storms",
    "log-full",
    "store-full",
    "broker-stall",
    "damaged-store",
    "sigterm-degraded",
    "missing-store",
]
"""The short form: the poisons (with the unknown-type probes) and the storms each in
one row."""
LONG_ORDER = [fault.name for fault in ONE_BY_ONE]
