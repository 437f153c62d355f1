"""What the verifier checks in an address's state, at any moment and at the end."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from verifier.oracle import Oracle


@dataclass(frozen=True, slots=True)
class AddressState:
    count: int
    applied: tuple[str, ...]
    duplicates: tuple[str, ...]
    violations: tuple[Any, ...]
    emitted: Mapping[str, str] = field(default_factory=dict)
    """Command id -> the nonce of the egress record its kept execution emitted."""

    @classmethod
    def from_json(cls, answer: Mapping[str, Any]) -> AddressState:
        """From ``GET /v1/state/...``'s ``{"state": {name: {"type", "value"}}}``."""
        state = answer["state"]

        def value(name: str, default: Any) -> Any:
            entry = state.get(name)
            if entry is None or entry.get("value") is None:
                return default
            if entry.get("encoding") == "base64":
                raise ValueError(f"state {name!r} is not JSON: {entry}")
            return entry["value"]

        return cls(
            int(value("count", 0)),
            tuple(value("applied", [])),
            tuple(value("duplicates", [])),
            tuple(value("violations", [])),
            dict(value("emitted", {})),
        )

    @property
    def commands(self) -> int:
        """Command messages applied here (a duplicate counts again)."""
        return len(self.applied) + len(self.duplicates)


EMPTY = AddressState(0, (), (), ())


def invariant_problems(oracle: Oracle, address: str, state: AddressState) -> list[tuple[str, str]]:
    """What is wrong with the state of ``address`` at any moment of a run: an over-count,
    a command applied twice, a cancelled or foreign command applied, a failed causal
    check, or a count that does not match the commands applied: ``(kind, detail)``."""
    problems: list[tuple[str, str]] = []
    if state.duplicates:
        problems.append(
            ("duplicate", f"commands applied more than once: {sorted(set(state.duplicates))[:10]}")
        )
    if state.violations:
        problems.append(("causal", f"causal checks failed: {list(state.violations)[:5]}"))
    cancelled = [i for i in state.applied if i in oracle.never]
    if cancelled:
        problems.append(("cancelled", f"cancelled delayed sends ran: {cancelled[:10]}"))
    possible = oracle.possible.get(address, set())
    foreign = [i for i in state.applied if i not in possible and i not in oracle.never]
    if foreign:
        problems.append(("foreign", f"commands not meant for this address: {foreign[:10]}"))
    maximum = oracle.max_count.get(address, 0)
    if state.count > maximum:
        problems.append(
            ("over-count", f"over-count: count {state.count} > {maximum}, the most it may reach")
        )
    known = oracle.incs_of
    implied = sum(known.get(i, 0) for i in (*state.applied, *state.duplicates))
    if not foreign and not cancelled and state.count != implied:
        problems.append(
            (
                "torn",
                f"count {state.count} does not match the commands applied (their incs sum "
                f"to {implied}): a state update was lost or torn",
            )
        )
    return problems


def final_difference(
    expected: Mapping[str, int], expected_ids: Mapping[str, Any], address: str, state: AddressState
) -> str | None:
    """How ``address`` differs from its final expectation, or None."""
    want_ids = set(expected_ids.get(address, ()))
    have_ids = set(state.applied)
    want = expected.get(address, 0)
    if state.count == want and have_ids == want_ids and not state.duplicates:
        return None
    missing = sorted(want_ids - have_ids)
    extra = sorted(have_ids - want_ids)
    parts = [f"{address}: count {state.count}, expected {want}"]
    if missing:
        parts.append(f"{len(missing)} commands missing (e.g. {missing[:5]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[:5]})")
    if state.duplicates:
        parts.append(f"{len(state.duplicates)} duplicates")
    return "; ".join(parts)
