"""How long each phase of a fault lasts, in the long form and in the short one (CI)."""

from __future__ import annotations

from dataclasses import dataclass

RATIO_GATE = 0.8
"""Healthy addresses keep at least this share of their throughput during a fault (the
issue's gate)."""
SIGTERM_LIMIT = 10.0
"""Seconds within which SIGTERM must end the runtime, in every state (the issue's)."""


@dataclass(frozen=True)
class Timings:
    warmup: float
    """Load on a fault's fresh addresses before its first measurement."""
    before: float
    """The window measured before the fault."""
    window: float
    """How long a fault lasts (at least): longer than the endpoints' call deadline (3 s),
    after which a failing call has its effect."""
    dead_letter_after: float
    """The module's ``deadLetterAfter`` (where the runtime takes it)."""
    poison_window: float
    """How long a poison fault waits, at most, for every poison to be parked. The
    trickling answer is the slowest: every attempt runs into the call deadline (3 s),
    the first in a batch, the next alone, and it is parked at the first failure
    ``dead_letter_after`` past the one that held it; about 9.5 s in the short form."""
    outage: float
    """Seconds the second function server is down: longer than the call deadline."""
    stall: float
    """Seconds the Kafka broker is stopped (SIGSTOP): past the runtime's Kafka request
    timeout (10 s); its appends fail after 30 s."""
    store_window: float
    """How long checkpoint store writes fail."""
    resume_timeout: float
    """After a fault ends, how long the suite waits for service to resume."""
    settle_timeout: float
    """At the end of a fault, how long the suite waits for every count to be exact."""
    stop_grace: float
    """SIGTERM, then SIGKILL after this long."""
    fanout_cap: int
    """A fan-out storm stops sending after this many messages (the Tansu test broker
    slows down as its partitions fill)."""
    hot_slow: float
    """Seconds a request carrying a hot address's message is answered late: under the
    endpoints' read timeout (``stack.CALL_TIMEOUTS``), or every attempt of the hot
    address fails while the others succeed, and its messages are rightly parked."""
    hot_rate: float
    """Messages per second sent to the hot address: more than it can take (a batch of
    ``maxNumBatchRequests`` per ``hot_slow`` seconds), so its backlog grows. No more than
    that: the same machine serves it and the healthy load whose throughput is gated."""
    fresh_kafka_log: bool
    """On Kafka, every fault on a fresh runtime over fresh topics: the Tansu test broker
    walks every stored batch of a partition on each fetch, so a log that many long
    faults filled would slow every row after them (the measurement would be the
    broker's)."""


LONG = Timings(
    warmup=1.0,
    before=5.0,
    window=15.0,
    dead_letter_after=10.0,
    poison_window=30.0,
    outage=15.0,
    stall=30.0,
    store_window=15.0,
    resume_timeout=60.0,
    settle_timeout=60.0,
    stop_grace=30.0,
    fanout_cap=20_000,
    hot_slow=1.5,
    hot_rate=30.0,
    fresh_kafka_log=True,
)

SHORT = Timings(
    warmup=0.5,
    before=2.0,
    window=5.0,
    dead_letter_after=3.0,
    poison_window=15.0,
    outage=5.0,
    stall=12.0,
    store_window=5.0,
    resume_timeout=15.0,
    settle_timeout=20.0,
    stop_grace=20.0,
    fanout_cap=5_000,
    hot_slow=1.0,
    hot_rate=30.0,
    fresh_kafka_log=False,
)
