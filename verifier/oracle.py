"""The oracle: what every address must hold once every tree has run, exactly.

It reads the command trees themselves (not the generator's intentions): a command is
delivered if it is a root, the ``cmd`` of a ``send``, or the ``cmd`` of a
``send_after`` that is not cancelled. A ``send_after`` with token ``T`` issued at
address X is cancelled when a delivered command at X issues ``cancel T`` and that
cancel causally follows the send (a later op of the same command, or a command
descending from it); the cancelled send's delay must be far longer than the
cancellation can take, which the generator ensures. Anything else (a cancel that
might race its send, a token or id used twice, a ``verify`` expecting a command that
is not a causal ancestor at that address) is an :class:`OracleError`, a bug of the
generator: the oracle refuses trees whose outcome depends on timing.

For each tree it gives the ids of the commands that run at each address (each with
its number of ``inc`` ops), the ids that must never run anywhere (cancelled sends),
and the egress records ``(command id, n)`` the tree emits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from verifier.commands import Command


class OracleError(Exception):
    """A tree whose outcome is not determined (a generator bug)."""


@dataclass(slots=True)
class TreeExpectation:
    index: int
    root_address: str
    root_id: str
    by_address: dict[str, dict[str, int]] = field(default_factory=dict)
    """Address id -> {command id: its inc ops} of the commands that run there."""
    never: set[str] = field(default_factory=set)
    """Ids of commands that are sent and cancelled: they must never run."""
    egress: set[tuple[str, int]] = field(default_factory=set)

    @property
    def commands(self) -> int:
        return sum(len(ids) for ids in self.by_address.values())

    @property
    def incs(self) -> int:
        return sum(sum(ids.values()) for ids in self.by_address.values())


@dataclass(slots=True)
class _Node:
    address: str
    command: Command
    lineage: tuple[tuple[str, str], ...]
    """(address, id) of its causal ancestors, then itself."""


def expect_tree(index: int, address: str, root: Command) -> TreeExpectation:
    expectation = TreeExpectation(index, address, root["id"])
    seen_ids: set[str] = set()
    seen_tokens: set[str] = set()

    def incs(command: Command) -> int:
        return sum(1 for op in command["ops"] if op["op"] == "inc")

    def mark_never(command: Command) -> None:
        _unique(command["id"], seen_ids, "command id")
        expectation.never.add(command["id"])
        for op in command["ops"]:
            if op["op"] in ("send", "send_after"):
                if "token" in op:
                    _unique(op["token"], seen_tokens, "token")
                mark_never(op["cmd"])

    def deliver(start: _Node) -> None:
        """Deliver the region of commands ``start`` reaches by sends that always arrive,
        then decide the tokened delayed sends the region issues."""
        region: list[_Node] = []
        frontier = [start]
        while frontier:
            node = frontier.pop()
            region.append(node)
            for op in node.command["ops"]:
                if op["op"] == "send" or (op["op"] == "send_after" and "token" not in op):
                    child = op["cmd"]
                    frontier.append(
                        _Node(op["to"], child, (*node.lineage, (op["to"], child["id"])))
                    )
        issued: dict[tuple[str, str], tuple[_Node, int, dict[str, Any]]] = {}
        for node in region:
            for i, op in enumerate(node.command["ops"]):
                if op["op"] == "send_after" and "token" in op:
                    _unique(op["token"], seen_tokens, "token")
                    issued[node.address, op["token"]] = (node, i, op)
        cancelled: set[tuple[str, str]] = set()
        for node in region:
            command = node.command
            _unique(command["id"], seen_ids, "command id")
            expectation.by_address.setdefault(node.address, {})[command["id"]] = incs(command)
            ancestors = set(node.lineage[:-1])
            for i, op in enumerate(command["ops"]):
                if op["op"] == "egress":
                    expectation.egress.add((command["id"], int(op["n"])))
                elif op["op"] == "verify":
                    for expected in op["expect"]:
                        if (node.address, expected) not in ancestors:
                            raise OracleError(
                                f"command {command['id']} verifies {expected}, which is not "
                                f"a causal ancestor at {node.address}"
                            )
                elif op["op"] == "cancel":
                    key = (node.address, op["token"])
                    if key not in issued:
                        raise OracleError(
                            f"command {command['id']} cancels {op['token']}, which no "
                            f"command it surely follows issued at {node.address}"
                        )
                    sender, index, _ = issued[key]
                    same = sender.command["id"] == command["id"]
                    if not ((same and index < i) or (not same and sender.lineage[-1] in ancestors)):
                        raise OracleError(
                            f"the cancel of {op['token']} in {command['id']} may race its send"
                        )
                    cancelled.add(key)
        for key, (node, _, op) in issued.items():
            child = op["cmd"]
            if key in cancelled:
                mark_never(child)
            else:
                deliver(_Node(op["to"], child, (*node.lineage, (op["to"], child["id"]))))

    deliver(_Node(address, root, ((address, root["id"]),)))
    return expectation


def _unique(value: str, seen: set[str], what: str) -> None:
    if value in seen:
        raise OracleError(f"{what} {value!r} is used twice")
    seen.add(value)


class Oracle:
    """Every tree's expectation, and what they add up to per address."""

    def __init__(self, trees: Iterable[TreeExpectation]):
        self.trees = list(trees)
        self.incs_of: dict[str, int] = {}
        """Command id -> inc ops, for every command that may run."""
        self.possible: dict[str, set[str]] = defaultdict(set)
        """Address -> ids of the commands that may run there (every tree sent)."""
        self.never: set[str] = set()
        for tree in self.trees:
            for address, ids in tree.by_address.items():
                self.possible[address].update(ids)
                for command_id, n in ids.items():
                    if command_id in self.incs_of:
                        raise OracleError(f"command id {command_id!r} is in two trees")
                    self.incs_of[command_id] = n
            self.never |= tree.never
        self.max_count = {a: sum(self.incs_of[i] for i in ids) for a, ids in self.possible.items()}
        """Address -> the largest count it may ever hold."""

    @property
    def commands(self) -> int:
        return len(self.incs_of)

    @property
    def cancelled(self) -> int:
        return len(self.never)

    def expected(self, excluded: Iterable[int] = ()) -> dict[str, dict[str, int]]:
        """Address -> {command id: incs} once every tree not in ``excluded`` has run."""
        skip = set(excluded)
        result: dict[str, dict[str, int]] = defaultdict(dict)
        for tree in self.trees:
            if tree.index not in skip:
                for address, ids in tree.by_address.items():
                    result[address].update(ids)
        return result

    def egress(self, excluded: Iterable[int] = ()) -> set[tuple[str, int]]:
        skip = set(excluded)
        return {r for t in self.trees if t.index not in skip for r in t.egress}


def expected_counts(expected: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    return {a: sum(ids.values()) for a, ids in expected.items()}
