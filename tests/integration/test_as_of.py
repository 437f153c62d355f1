"""State as of a retained checkpoint, and pages of a function type's addresses
(``GET /v1/state/...?checkpoint=N``, ``GET /v1/addresses/...``, ``statefun state
--checkpoint``, ``statefun addresses``): a known workload on a runtime alone, the state
recorded as each checkpoint took it (no traffic between a checkpoint and the reading),
and the answers compared with those records while the live state differs; the same
from both members of a cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from functions import make_test_functions
from support import RuntimeThread, client, module_for, running_runtime, serve, wait_until
from test_cluster import cluster_of, quiet, two_members

from runtime import cli
from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.http_values import value_from_http
from statefun.address import Address
from statefun.values import TypedValue

pytestmark = pytest.mark.timeout(90)

TALLY = "test/tally"
INT = "io.statefun.types/int"
SAMPLES = ["a000", "a005", "a150", "a151", "a152", "b000", "c000", "d000", "é", "a/b"]
"""The addresses whose state is recorded at each checkpoint."""


def send(http: httpx.Client, id_: str, n: int) -> None:
    answer = http.post(
        f"/v1/messages/{TALLY}/{quote(id_, safe='')}",
        content=str(n),
        params={"type": INT},
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 202, answer.text


def state(http: httpx.Client, id_: str, **params: Any) -> dict[str, Any]:
    answer = http.get(f"/v1/state/{TALLY}/{quote(id_, safe='')}", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def every_page(http: httpx.Client, limit: int, **params: Any) -> tuple[list[str], int]:
    """Every id, walking the pages of ``limit``; and how many pages it took."""
    ids: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        query = {"limit": limit, **params, **({"after": after} if after is not None else {})}
        answer = http.get(f"/v1/addresses/{TALLY}", params=query)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["checkpoint"] == params.get("checkpoint")
        assert len(body["addresses"]) <= limit
        ids += body["addresses"]
        pages += 1
        if body["next"] is None:
            return ids, pages
        assert body["next"] == body["addresses"][-1]
        assert len(body["addresses"]) == limit
        after = body["next"]


@dataclass
class Recorded:
    """What the runtime held at each checkpoint it took, and now."""

    rt: RuntimeThread
    http: httpx.Client
    dropped: int
    """A checkpoint taken, then dropped from retention."""
    checkpoints: list[int] = field(default_factory=list)
    states: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Per checkpoint, per sample id, the live state read right after it committed."""
    ids: dict[int, list[str]] = field(default_factory=dict)
    """Per checkpoint, the ids with state then (by the workload)."""
    live: list[str] = field(default_factory=list)


class Workload:
    """Tallies appended to a runtime's log (as the ingress appends them, all at once);
    the ids holding state, by construction."""

    def __init__(self, rt: RuntimeThread):
        self.rt = rt
        self.runtime = rt.runtime
        assert self.runtime is not None
        self.sent = 0
        self.holding: set[str] = set()

    def apply(self, changes: dict[str, int]) -> None:
        runtime = self.runtime
        assert runtime is not None

        async def append() -> None:
            await asyncio.gather(
                *(
                    runtime.append_message(Address("test", "tally", id_), None, int_value(n))
                    for id_, n in changes.items()
                )
            )

        self.rt.run(append())
        for id_, n in changes.items():
            if n:
                self.holding.add(id_)
            else:
                self.holding.discard(id_)
        self.sent += len(changes)
        wait_until(lambda: self.processed() == self.sent, timeout=30)

    def processed(self) -> int:
        runtime = self.runtime
        assert runtime is not None
        return int(self.rt.call_soon(lambda: runtime.worker.processed))


def int_value(n: int) -> TypedValue:
    return value_from_http(str(n).encode(), "application/json", INT)


PHASES: list[dict[str, int]] = [
    {**{f"a{i:03d}": 1 for i in range(300)}, "é": 1, "a/b": 1, "Z": 1, "ß": 1},
    {**{f"a{i:03d}": 5 for i in range(10)}, "a150": 0, **{f"b{i:03d}": 1 for i in range(50)}},
    {"a000": 2, "a151": 0, "é": 3},
    {"a000": 1, "c000": 7},
    {"a000": 1, "a152": 0, "d000": 1},  # live only: no checkpoint after it
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """Phases 1-4 each end with a checkpoint (three retained: the first is dropped by the
    fourth), phase 5 changes the live state only."""
    with serve(make_test_functions({}).asgi_app()) as functions:
        module = module_for(f"{functions.url}/statefun", functions="test/*")
        manual = CheckpointConfig(interval=0, retain=3, prune_every=1)
        with (
            running_runtime(
                module, data_dir=tmp_path_factory.mktemp("as-of"), checkpoints=manual
            ) as rt,
            client(rt.url) as http,
        ):
            runtime = rt.runtime
            assert runtime is not None
            workload = Workload(rt)
            taken: list[int] = []
            states: dict[int, dict[str, Any]] = {}
            ids: dict[int, list[str]] = {}
            for phase in PHASES[:4]:
                workload.apply(phase)
                manifest = rt.run(runtime.coordinator.checkpoint())
                assert manifest is not None
                taken.append(manifest.checkpoint)
                states[manifest.checkpoint] = {i: state(http, i)["state"] for i in SAMPLES}
                ids[manifest.checkpoint] = sorted(workload.holding)
            workload.apply(PHASES[4])
            dropped, *kept = taken
            yield Recorded(
                rt,
                http,
                dropped,
                kept,
                {c: states[c] for c in kept},
                {c: ids[c] for c in kept},
                sorted(workload.holding),
            )


def test_state_as_of_each_retained_checkpoint_is_what_it_took(recorded: Recorded) -> None:
    http = recorded.http
    first, second, third = recorded.checkpoints
    for checkpoint in recorded.checkpoints:
        for id_ in SAMPLES:
            assert state(http, id_, checkpoint=checkpoint) == {
                "state": recorded.states[checkpoint][id_],
                "checkpoint": checkpoint,
            }
    # The records themselves differ where the workload changed state, and so does live.
    assert recorded.states[first]["a000"] == {"count": {"type": INT, "value": 6}}
    assert recorded.states[second]["a000"]["count"]["value"] == 8
    assert recorded.states[third]["a000"]["count"]["value"] == 9
    assert state(http, "a000") == {"state": {"count": {"type": INT, "value": 10}}}
    assert recorded.states[second]["a151"] == {}  # erased before the second
    assert recorded.states[first]["a151"]["count"]["value"] == 1
    assert recorded.states[third]["c000"]["count"]["value"] == 7
    assert recorded.states[first]["c000"] == {}
    assert recorded.states[third]["a152"]["count"]["value"] == 1
    assert state(http, "a152") == {"state": {}}
    assert state(http, "never", checkpoint=first) == {"state": {}, "checkpoint": first}


def test_addresses_page_exactly_live_and_as_of_each_checkpoint(recorded: Recorded) -> None:
    http = recorded.http
    # Codepoint order: "Z" < "a..." < "ß" < "é"; an id may hold "/".
    assert recorded.live[0] == "Z"
    assert recorded.live[-2:] == ["ß", "é"]
    assert "a/b" in recorded.live
    for limit in (7, 100, 1000):
        ids, pages = every_page(http, limit)
        assert ids == recorded.live
        assert pages == -(-len(recorded.live) // limit)
        for checkpoint in recorded.checkpoints:
            assert every_page(http, limit, checkpoint=checkpoint)[0] == recorded.ids[checkpoint]
    first = recorded.checkpoints[0]
    assert recorded.ids[first] != recorded.live
    # ``after`` need not be an id: strictly after it in codepoint order.
    page = http.get(f"/v1/addresses/{TALLY}", params={"after": "a05", "limit": 3}).json()
    assert page == {"addresses": ["a050", "a051", "a052"], "next": "a052", "checkpoint": None}
    last = http.get(f"/v1/addresses/{TALLY}", params={"after": "ß", "checkpoint": first}).json()
    assert last == {"addresses": ["é"], "next": None, "checkpoint": first}
    default = http.get(f"/v1/addresses/{TALLY}").json()
    assert default["addresses"] == recorded.live[:100]
    assert default["next"] == recorded.live[99]
    empty = http.get("/v1/addresses/test/counter").json()
    assert empty == {"addresses": [], "next": None, "checkpoint": None}


def test_a_checkpoint_not_retained_is_not_found(recorded: Recorded) -> None:
    http = recorded.http
    retained = ", ".join(map(str, recorded.checkpoints))
    for path in (f"/v1/state/{TALLY}/a000", f"/v1/addresses/{TALLY}"):
        for checkpoint in (recorded.dropped, recorded.checkpoints[-1] + 1):
            answer = http.get(path, params={"checkpoint": checkpoint})
            assert answer.status_code == 404
            body = answer.json()
            assert body["error"] == "checkpoint_not_retained"
            assert body["detail"].endswith(f"retained: {retained}")
            assert f"checkpoint {checkpoint} " in body["detail"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (f"/v1/state/{TALLY}/a000", {"checkpoint": "x"}),
        (f"/v1/state/{TALLY}/a000", {"checkpoint": "0"}),
        (f"/v1/addresses/{TALLY}", {"checkpoint": "-1"}),
        (f"/v1/addresses/{TALLY}", {"limit": "0"}),
        (f"/v1/addresses/{TALLY}", {"limit": "1001"}),
        (f"/v1/addresses/{TALLY}", {"limit": "ten"}),
        (f"/v1/addresses/{TALLY}", {"after": ""}),
    ],
)
def test_bad_parameters_are_refused(recorded: Recorded, path: str, params: dict[str, str]) -> None:
    answer = recorded.http.get(path, params=params)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "bad_request"
    assert next(iter(params)) in body["detail"]


def test_an_unknown_function_type_is_not_found(recorded: Recorded) -> None:
    checkpoint = recorded.checkpoints[0]
    for path in ("/v1/addresses/nope/fn", "/v1/state/nope/fn/x"):
        for params in ({}, {"checkpoint": checkpoint}):
            answer = recorded.http.get(path, params=params)
            assert answer.status_code == 404
            assert answer.json()["error"] == "unknown_function_type"


def statefun(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_line_shows_state_and_addresses_as_of_a_checkpoint(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    ingress = ("--ingress", recorded.rt.url)
    first, _, third = recorded.checkpoints
    status, out, _ = statefun(
        capsys, "state", f"{TALLY}/a000", "--checkpoint", str(first), *ingress
    )
    assert (status, out) == (0, f"count ({INT}): 6\n")
    status, out, _ = statefun(
        capsys, "state", f"{TALLY}/c000", "--checkpoint", str(first), "--json", *ingress
    )
    assert (status, json.loads(out)) == (0, {"state": {}, "checkpoint": first})
    status, out, _ = statefun(
        capsys, "state", f"{TALLY}/c000", "--checkpoint", str(first), *ingress
    )
    assert out == f"{TALLY}/c000 had no state in checkpoint {first}\n"

    status, out, err = statefun(capsys, "addresses", TALLY, "--limit", "3", *ingress)
    assert (status, out.splitlines()) == (0, recorded.live[:3])
    assert f"--after {recorded.live[2]}" in err  # how to ask the next page
    status, out, err = statefun(
        capsys, "addresses", TALLY, "--all", "--limit", "200", "--checkpoint", str(third), *ingress
    )
    assert (status, out.splitlines(), err) == (0, recorded.ids[third], "")
    status, out, _ = statefun(
        capsys, "addresses", TALLY, "--after", "a05", "--limit", "2", "--json", *ingress
    )
    assert json.loads(out) == {"addresses": ["a050", "a051"], "next": "a051", "checkpoint": None}
    status, out, _ = statefun(
        capsys, "addresses", TALLY, "--all", "--limit", "300", "--json", *ingress
    )
    assert json.loads(out) == {"addresses": recorded.live, "next": None, "checkpoint": None}

    status, _, err = statefun(
        capsys, "addresses", TALLY, "--checkpoint", str(recorded.dropped), *ingress
    )
    assert status == 1
    assert "404: checkpoint_not_retained" in err
    status, _, err = statefun(capsys, "addresses", "nope/fn", *ingress)
    assert status == 1
    assert "404: unknown_function_type" in err
    status, _, err = statefun(capsys, "addresses", "not-a-type", *ingress)
    assert status == 2
    assert "namespace/name" in err


@pytest.mark.parametrize(
    "args", [["addresses", TALLY, "--limit", "0"], ["state", f"{TALLY}/x", "--checkpoint", "x"]]
)
def test_the_command_line_refuses_bad_numbers(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 2


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_both_members_of_a_cluster_answer_as_of_and_list_every_partition(
    kafka_bootstrap: str,
) -> None:
    with (
        serve(make_test_functions({}).asgi_app()) as functions,
        two_members(
            f"{functions.url}/statefun",
            kafka_bootstrap,
            checkpoints=CheckpointConfig(interval=0.2, retain=1000),
        ) as (a, b, http_a, http_b),
    ):
        first = {f"t{i:03d}": i + 1 for i in range(40)}
        for i, (id_, n) in enumerate(first.items()):
            send(http_a if i % 2 else http_b, id_, n)
        wait_until(lambda: quiet(a, b), timeout=30)
        # The second checkpoint to commit from now on was taken after this point.
        checkpoint = after_checkpoint(http_a, after_checkpoint(http_a, last_checkpoint(http_a)))
        taken = {i: state(http_b, i)["state"] for i in ("t000", "t001", "t039")}
        # The state changes after the checkpoint: erased, added to, new addresses.
        second = {"t000": 0, "t001": 100, **{f"u{i:03d}": 1 for i in range(20)}}
        for id_, n in second.items():
            send(http_a, id_, n)
        wait_until(lambda: quiet(a, b), timeout=30)

        as_of = sorted(first)
        live = sorted((first.keys() | second.keys()) - {"t000"})
        for http in (http_a, http_b):
            # The other member may fold the manifest a moment later.
            wait_until(lambda http=http: every_page(http, 7, checkpoint=checkpoint)[0] == as_of)
            for id_, recorded in taken.items():
                assert state(http, id_, checkpoint=checkpoint) == {
                    "state": recorded,
                    "checkpoint": checkpoint,
                }
            assert every_page(http, 7) == (live, -(-len(live) // 7))
            assert every_page(http, 1000)[0] == live
        assert taken["t001"] == {"count": {"type": INT, "value": 2}}
        assert state(http_a, "t001")["state"]["count"]["value"] == 102
        assert taken["t000"] == {"count": {"type": INT, "value": 1}}
        assert state(http_b, "t000") == {"state": {}}
        missing = http_b.get(f"/v1/addresses/{TALLY}", params={"checkpoint": checkpoint + 1000})
        assert missing.status_code == 404
        retained = missing.json()["detail"].split("retained: ")[1]
        assert checkpoint in [int(c) for c in retained.split(", ")]


def last_checkpoint(http: httpx.Client) -> int:
    last = cluster_of(http)["last_checkpoint"]
    return 0 if last is None else int(last["id"])


def after_checkpoint(http: httpx.Client, checkpoint: int) -> int:
    """A checkpoint committed after ``checkpoint``."""
    wait_until(lambda: last_checkpoint(http) > checkpoint, timeout=30)
    return last_checkpoint(http)
