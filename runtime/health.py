"""Health: what keeps this runtime process from taking and processing messages, and what is
degraded without stopping it.

Components report a *problem* while they have one (``Health.fail``) and clear it when it
is over (``Health.clear``): the generation while it recovers or rolls back, the log while
appends fail, the checkpoint store while its writes fail. A process with any problem is
not ready (``GET /ready`` answers 503 with the reasons). Function types that fail, are
paused or are unavailable are *degraded*: listed, never a reason to be unready, since one
bad function must not take the whole ingress out of a load balancer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FunctionTypeHealth:
    """How one function type fares, as the dispatcher sees it."""

    function_type: str
    failing_addresses: int = 0
    """Addresses held because their last attempt failed (retried on their own)."""
    unavailable: bool = False
    """Every recent attempt of the type failed: its endpoint (or the type) fails
    everything; its addresses are held and probed with backoff, nothing is parked."""
    paused: bool = False
    dead_lettered: int = 0
    """Messages of the type parked in the dead letters by this process."""
    last_error: str | None = None
    failing_since_ms: int | None = None
    """Wall-clock time of the oldest failure still unresolved."""


@dataclass(slots=True)
class Health:
    """Problems by component, and where to read the function types' health from."""

    _problems: dict[str, tuple[str, float]] = field(default_factory=dict)
    functions: Callable[[], list[FunctionTypeHealth]] = list
    """Set by whoever dispatches function calls; the degraded types, any order."""

    def fail(self, component: str, reason: str) -> None:
        """``component`` cannot do its part until :meth:`clear`; ``reason`` says why."""
        since = self._problems.get(component, (reason, time.time()))[1]
        self._problems[component] = (reason, since)

    def clear(self, component: str) -> None:
        self._problems.pop(component, None)

    def problem(self, component: str) -> str | None:
        found = self._problems.get(component)
        return None if found is None else found[0]

    def problems(self) -> dict[str, str]:
        """Every current problem: component -> reason."""
        return {component: reason for component, (reason, _) in self._problems.items()}

    def since(self, component: str) -> float | None:
        """Wall-clock seconds at which the component's current problem began."""
        found = self._problems.get(component)
        return None if found is None else found[1]

    @property
    def ready(self) -> bool:
        return not self._problems
