"""A seeded generator of random command trees over N addresses.

Every tree is one root command, sent through the HTTP ingress to a random address;
its ops send more commands (at once, or after a delay) to other addresses, and so on
down to ``max_depth``. A run counts *commands*: command messages that reach a
function (the root and every delivered ``send``/``send_after``), not ops and not
trees; a tree holds about five of them on average with the default shape.

Some commands schedule a delayed send that they cancel: the delayed send has a long
delay (``cancelled_delay_ms``, 30 s) and its ``cancel`` is issued at the same address
by a causal successor (a later op of the same command, a command the address sends
itself, or one that comes back through another address), so it always arrives first.
Delayed sends that must fire have short delays (50-1000 ms), some with a token that is
never cancelled. ``verify`` ops list the ancestors that ran at the same address: they
must be in its state already (a causal check of the restored state). With
``p_back``, a child goes back to an ancestor's address, so such checks are common.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from verifier.commands import Command, address_id

Op = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TreeShape:
    max_depth: int = 3
    """Sends below the root, at most (delayed sends included)."""
    max_children: int = 3
    """Children of the root; one fewer per level below."""
    max_incs: int = 3
    p_delay: float = 0.25
    """Chance that a child is sent with a short delay."""
    p_token: float = 0.3
    """Chance that a short delayed send carries a (never cancelled) token."""
    p_cancel: float = 0.12
    """Chance that a command schedules a long delayed send and cancels it."""
    p_egress: float = 0.2
    p_verify: float = 0.5
    """Chance of a causal check, when an ancestor ran at the same address."""
    p_back: float = 0.3
    """Chance that a child goes to an ancestor's address."""
    short_delay_ms: tuple[int, int] = (50, 1000)
    cancelled_delay_ms: int = 30_000
    """Far longer than a cancel can take (a hop or two, even through a rollback), and
    short enough for a run to wait for every cancelled send to come due."""


@dataclass(frozen=True, slots=True)
class Tree:
    index: int
    address: str
    """The id of the root's target address."""
    command: Command
    commands: int
    """Commands that reach a function (as the generator meant it; the oracle recounts)."""


class _Builder:
    def __init__(self, rng: random.Random, shape: TreeShape, addresses: int, index: int):
        self.rng = rng
        self.shape = shape
        self.addresses = addresses
        self.index = index
        self.nodes = 0
        self.delivered = 0

    def _id(self) -> str:
        node = self.nodes
        self.nodes += 1
        return f"{self.index}.{node}"

    def _random_address(self) -> str:
        return address_id(self.rng.randrange(self.addresses))

    def command(
        self,
        address: str,
        depth: int,
        ancestors: tuple[tuple[str, str], ...],
        *,
        delivered: bool = True,
    ) -> Command:
        """A command run at ``address``; ``ancestors``: (address, id) of its causal
        ancestors; ``delivered`` False for a subtree that is sent and then cancelled."""
        rng, shape = self.rng, self.shape
        command_id = self._id()
        if delivered:
            self.delivered += 1
        lineage = (*ancestors, (address, command_id))
        ops: list[Op] = []
        children = max(0, shape.max_children - depth) if depth < shape.max_depth else 0
        for _ in range(rng.randint(0, children)):
            if ancestors and rng.random() < shape.p_back:
                to = rng.choice(ancestors)[0]
            else:
                to = self._random_address()
            child = self.command(to, depth + 1, lineage, delivered=delivered)
            if rng.random() < shape.p_delay:
                op: Op = {
                    "op": "send_after",
                    "to": to,
                    "delay_ms": rng.randint(*shape.short_delay_ms),
                    "cmd": child,
                }
                if rng.random() < shape.p_token:
                    op["token"] = f"t{child['id']}"
                ops.append(op)
            else:
                ops.append({"op": "send", "to": to, "cmd": child})
        if depth < shape.max_depth and rng.random() < shape.p_cancel:
            ops.extend(self._cancelled_send(address, depth, lineage, delivered))
        for _ in range(rng.randint(1 if depth == 0 else 0, shape.max_incs)):
            ops.insert(rng.randint(0, len(ops)), {"op": "inc"})
        if rng.random() < shape.p_egress:
            ops.insert(rng.randint(0, len(ops)), {"op": "egress", "n": rng.randrange(1000)})
        expect = [i for a, i in ancestors if a == address]
        if expect and rng.random() < shape.p_verify:
            ops.insert(rng.randint(0, len(ops)), {"op": "verify", "expect": expect})
        return {"id": command_id, "ops": ops}

    def _cancelled_send(
        self,
        address: str,
        depth: int,
        lineage: tuple[tuple[str, str], ...],
        delivered: bool,
    ) -> list[Op]:
        """A long delayed send from ``address`` and the cancel that beats it."""
        rng = self.rng
        to = self._random_address()
        never = self.command(to, self.shape.max_depth, lineage, delivered=False)
        if not never["ops"]:
            never["ops"].append({"op": "inc"})  # were it to fire, it must show
        token = f"t{never['id']}"
        ops: list[Op] = [
            {
                "op": "send_after",
                "to": to,
                "delay_ms": self.shape.cancelled_delay_ms,
                "cmd": never,
                "token": token,
            }
        ]
        cancel = {"op": "cancel", "token": token}
        way = rng.randrange(3)
        if way == 0:  # later in the same command
            ops.append(cancel)
        elif way == 1:  # a command the address sends itself
            back = self._plain(address, lineage, [cancel], delivered)
            ops.append({"op": "send", "to": address, "cmd": back})
        else:  # through another address and back
            via = self._random_address()
            via_id = self._id()
            if delivered:
                self.delivered += 1
            via_lineage = (*lineage, (via, via_id))
            via_command: Command = {"id": via_id, "ops": [{"op": "inc"}]}
            back = self._plain(address, via_lineage, [cancel], delivered)
            via_command["ops"].append({"op": "send", "to": address, "cmd": back})
            ops.append({"op": "send", "to": via, "cmd": via_command})
        return ops

    def _plain(
        self,
        address: str,
        ancestors: tuple[tuple[str, str], ...],
        ops: list[Op],
        delivered: bool,
    ) -> Command:
        command_id = self._id()
        if delivered:
            self.delivered += 1
        ops = [*ops, *({"op": "inc"} for _ in range(self.rng.randint(0, 1)))]
        expect = [i for a, i in ancestors if a == address]
        if expect and self.rng.random() < self.shape.p_verify:
            ops.append({"op": "verify", "expect": expect})
        return {"id": command_id, "ops": ops}


def generate(
    commands: int, addresses: int, seed: int, shape: TreeShape | None = None
) -> Iterator[Tree]:
    """Trees until they hold at least ``commands`` delivered commands."""
    rng = random.Random(seed)
    shape = shape or TreeShape()
    total = 0
    index = 0
    while total < commands:
        builder = _Builder(rng, shape, addresses, index)
        address = address_id(rng.randrange(addresses))
        root = builder.command(address, 0, ())
        yield Tree(index, address, root, builder.delivered)
        total += builder.delivered
        index += 1
