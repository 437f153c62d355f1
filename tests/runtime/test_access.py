"""Who may use the ingress (``runtime.access``): every route of the app asked with no
token, an unknown one and a token of each role, against a table of who may use it
written here; function patterns; the Origin refusal; the tokens file and its reload;
the loopback-only default; the Host refusal without tokens (DNS rebinding); the members'
replies route. In process, on two members of
one cluster (``test_peers.two_members``): ``b`` owns every partition and serves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import module_for, running_runtime
from test_peers import INT, INT_TYPE, appended, two_members

from runtime import access as access_module
from runtime.access import ROUTES, AccessControl, InsecureBind, TokensFileError, check_bind
from runtime.cluster.peers import DEMAND_PATH, REPLIES_PATH
from runtime.config import AccessConfig

pytestmark = pytest.mark.timeout(60)

TOKENS = {
    "client": "client-token-0123456789",
    "reader": "reader-token-0123456789",
    "admin": "admin-token-01234567890",
    "member": "member-token-0123456789",
    "monitor": "monitor-token-012345678",
}
SCOPED = "scoped-token-0123456789"
"""A client token reaching ``test/tally`` only."""
ELSEWHERE = "elsewhere-token-012345678"
"""A client token reaching ``shop/*`` only."""

# Every route, by its template: a request to it, and the roles that may use it (None:
# anyone, with or without a token).
SEND, READ, ADMIN = {"client", "admin"}, {"reader", "admin"}, {"admin"}
TABLE: dict[str, tuple[str, str, set[str] | None]] = {
    "/health": ("GET", "/health", None),
    "/ready": ("GET", "/ready", None),
    "/ui/login": ("GET", "/ui/login", None),
    "/v1/messages/{namespace}/{type_}/{id_:path}": ("POST", "/v1/messages/test/tally/m", SEND),
    "/v1/messages": ("POST", "/v1/messages", SEND),
    "/v1/call/{namespace}/{type_}/{id_:path}": ("POST", "/v1/call/test/tally/x", SEND),
    "/v1/state/{namespace}/{type_}/{id_:path}": ("GET", "/v1/state/test/tally/x", READ),
    "/v1/addresses/{namespace}/{type_}": ("GET", "/v1/addresses/test/tally", READ),
    "/v1/egress/{namespace}/{name}": ("GET", "/v1/egress/test/out", READ),
    "/v1/dead-letters": ("GET", "/v1/dead-letters", ADMIN),
    "/v1/admin/dead-letters/{offset}/replay": ("POST", "/v1/admin/dead-letters/9/replay", ADMIN),
    "/v1/admin/dead-letters/{offset}/discard": ("POST", "/v1/admin/dead-letters/9/discard", ADMIN),
    "/v1/admin/functions": ("GET", "/v1/admin/functions", ADMIN),
    "/v1/admin/functions/{namespace}/{type_}/pause": (
        "POST",
        "/v1/admin/functions/test/idle/pause",
        ADMIN,
    ),
    "/v1/admin/functions/{namespace}/{type_}/resume": (
        "POST",
        "/v1/admin/functions/test/idle/resume",
        ADMIN,
    ),
    "/v1/checkpoints": ("GET", "/v1/checkpoints", ADMIN),
    "/v1/cluster": ("GET", "/v1/cluster", ADMIN),
    "/metrics": ("GET", "/metrics", {"admin", "monitor"}),
    "/openapi.json": ("GET", "/openapi.json", ADMIN),
    "/ui": ("GET", "/ui", ADMIN),
    "/ui/checkpoints": ("GET", "/ui/checkpoints", ADMIN),
    "/ui/dead-letters": ("GET", "/ui/dead-letters", ADMIN),
    "/ui/state": ("GET", "/ui/state", ADMIN),
    "/ui/static": ("GET", "/ui/static/console.css", ADMIN),
    REPLIES_PATH: ("POST", REPLIES_PATH, {"member"}),
    DEMAND_PATH: ("POST", DEMAND_PATH, {"member"}),
}


def write_tokens(path: Path, entries: Iterable[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump(list(entries)))
    return path


def tokens_file(path: Path) -> Path:
    entries: list[dict[str, Any]] = [{"token": t, "role": r} for r, t in TOKENS.items()]
    entries += [
        {"token": SCOPED, "role": "client", "functions": ["test/tally"]},
        {"token": ELSEWHERE, "role": "client", "functions": ["shop/*"]},
    ]
    return write_tokens(path, entries)


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"authorization": f"Bearer {token}"}


def expected(allowed: set[str] | None, who: str, method: str, path: str) -> str:
    """``pass`` (any status but 401/403), or the status the access layer answers."""
    if allowed is None or who in allowed:
        return "pass"
    if who == "nobody":
        return "303" if method == "GET" and path.startswith("/ui") else "401"
    return "401" if who == "stranger" else "403"


def test_every_route_is_in_the_route_table() -> None:
    """A route added without its entry fails here (it would need an admin, silently)."""

    async def scenario() -> set[str]:
        async with two_members() as cluster:
            app = cluster.b.ingress_app
            served = {r.path for r in app.state.routes}
            assert served >= {path for r in app.routes if (path := getattr(r, "path", None))}
            return served

    assert asyncio.run(scenario()) == set(ROUTES) == set(TABLE)


def test_every_route_with_no_token_a_wrong_one_and_each_role(tmp_path: Path) -> None:
    access = AccessConfig(tokens_file=tokens_file(tmp_path / "tokens.yaml"))
    callers = {"nobody": None, "stranger": "not-a-known-token-at-all", **TOKENS}

    async def scenario() -> list[str]:
        wrong = []
        async with two_members(access=access) as cluster, cluster.client("b") as b:
            for method, path, allowed in TABLE.values():
                for who, token in callers.items():
                    response = await b.request(
                        method,
                        path,
                        content="1",
                        headers={**INT, **bearer(token)},
                        params={**INT_TYPE, "timeout": "5"},
                    )
                    status = response.status_code
                    got = str(status) if status in (303, 401, 403) else "pass"
                    if got != expected(allowed, who, method, path):
                        wrong.append(f"{who} {method} {path}: {status} {response.text[:80]}")
                    if status in (401, 403):
                        body = response.json()
                        assert set(body) == {"error", "detail"}
                        assert token is None or token not in response.text
        return wrong

    assert asyncio.run(scenario()) == []


def test_a_token_reaches_only_the_function_types_of_its_patterns(tmp_path: Path) -> None:
    access = AccessConfig(tokens_file=tokens_file(tmp_path / "tokens.yaml"))

    async def scenario() -> None:
        async with two_members(access=access) as cluster, cluster.client("b") as b:
            for path in ("/v1/messages/test/tally/x", "/v1/call/test/tally/x"):
                outside = await b.post(path, content="1", headers={**INT, **bearer(ELSEWHERE)})
                assert outside.status_code == 403
                assert "test/tally" in outside.json()["detail"]
            before = await appended(cluster.log)
            other = await b.post(
                "/v1/messages/test/idle/x", content="1", headers=bearer(SCOPED), params=INT_TYPE
            )
            assert other.status_code == 403
            assert await appended(cluster.log) == before  # nothing appended
            sent = await b.post(
                "/v1/messages/test/tally/x",
                content="1",
                headers={**INT, **bearer(SCOPED)},
                params=INT_TYPE,
            )
            assert sent.status_code == 202, sent.text

    asyncio.run(scenario())


def test_a_foreign_origin_is_refused_and_appends_nothing(tmp_path: Path) -> None:
    """A foreign page's text/plain POST needs no preflight: the Origin header stops it,
    with or without tokens; the ingress's own origin and the allowed ones pass."""
    for access in (
        AccessConfig(allow_origins=("https://app.example",)),
        AccessConfig(
            tokens_file=tokens_file(tmp_path / "tokens.yaml"),
            allow_origins=("https://app.example",),
        ),
    ):

        async def scenario(access: AccessConfig = access) -> None:
            async with two_members(access=access) as cluster, cluster.client("b") as b:
                plain = {"content-type": "text/plain", **bearer(TOKENS["client"])}
                before = await appended(cluster.log)
                foreign = await b.post(
                    "/v1/messages/test/tally/x",
                    content="1",
                    headers={**plain, "origin": "https://evil.example"},
                )
                assert foreign.status_code == 403
                assert foreign.json()["error"] == "origin_refused"
                assert await appended(cluster.log) == before
                for origin in ("https://app.example", "http://b"):  # allowed; its own
                    taken = await b.post(
                        "/v1/messages/test/tally/x",
                        content="1",
                        headers={**plain, "origin": origin},
                    )
                    assert taken.status_code == 202, (origin, taken.text)

        asyncio.run(scenario())


def test_ready_tells_only_an_admin_why(tmp_path: Path) -> None:
    access = AccessConfig(tokens_file=tokens_file(tmp_path / "tokens.yaml"))

    async def scenario() -> None:
        async with two_members(access=access) as cluster, cluster.client("b") as b:
            assert (await b.get("/ready")).json() == {"ready": True}
            assert (await b.get("/ready", headers=bearer(TOKENS["client"]))).json() == {
                "ready": True
            }
            detailed = (await b.get("/ready", headers=bearer(TOKENS["admin"]))).json()
            assert {"reasons", "functions", "generation"} <= set(detailed)

    asyncio.run(scenario())


def test_a_call_through_another_member_keeps_its_token_and_the_reply_comes_back(
    tmp_path: Path,
) -> None:
    """``a`` forwards nothing for a call without a key: it appends, ``b`` processes, and
    the reply comes back to ``a`` on the replies route with the member token."""
    access = AccessConfig(tokens_file=tokens_file(tmp_path / "tokens.yaml"))

    async def scenario() -> None:
        async with two_members(access=access) as cluster, cluster.client("a") as a:
            called = await a.post(
                "/v1/call/test/tally/x",
                content="5",
                headers={**INT, **bearer(TOKENS["client"])},
                params=INT_TYPE,
            )
            assert called.status_code == 200, called.text
            keyed = await a.post(
                "/v1/call/test/tally/y",
                content="5",
                headers={**INT, **bearer(TOKENS["reader"]), "idempotency-key": "k1"},
                params=INT_TYPE,
            )
            assert keyed.status_code == 403  # refused before forwarding
            for token, status in ((None, 401), (TOKENS["admin"], 403)):
                forged = await a.post(REPLIES_PATH, content=b"", headers=bearer(token))
                assert forged.status_code == status

    asyncio.run(scenario())


def test_a_reload_takes_the_new_tokens_and_a_bad_file_keeps_the_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_tokens(tmp_path / "tokens.yaml", [{"token": "a" * 20, "role": "admin"}])
    access = AccessControl(AccessConfig(tokens_file=path))
    assert access.tokens is not None
    assert access.tokens.grant_of("a" * 20) is not None
    write_tokens(path, [{"token": "b" * 20, "role": "reader", "functions": ["x/*"]}])
    assert access.reload()
    assert access.tokens.grant_of("a" * 20) is None
    grant = access.tokens.grant_of("b" * 20)
    assert grant is not None
    assert (grant.role, grant.functions) == ("reader", ("x/*",))
    path.write_text("- {token: short, role: admin}\n")
    with caplog.at_level(logging.ERROR, "runtime.access"):
        assert not access.reload()
    assert "16+ characters" in caplog.text
    assert "token: short" not in caplog.text
    assert access.tokens.grant_of("b" * 20) is not None  # still in force


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "non-empty YAML list"),
        ("- {token: aaaaaaaaaaaaaaaaaaaa, role: root}", "role must be one of"),
        ("- {token: aaaaaaaaaaaaaaaaaaaa, role: admin, functions: []}", "functions must be"),
        ("- {token: aaaaaaaaaaaaaaaaaaaa, role: admin, extra: 1}", "unknown keys"),
        ("- {token: aaaaaaaaaaaaaaaaaaaa, role: admin}\n" * 2, "lists a token twice"),
    ],
)
def test_a_bad_tokens_file_is_refused_with_the_reason(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(TokensFileError, match=problem):
        AccessControl(AccessConfig(tokens_file=path))


def test_a_cluster_member_needs_a_member_token(tmp_path: Path) -> None:
    path = write_tokens(tmp_path / "tokens.yaml", [{"token": "a" * 20, "role": "admin"}])
    with pytest.raises(TokensFileError, match="role member"):
        AccessControl(AccessConfig(tokens_file=path), member=True)


def test_without_tokens_the_ingress_binds_loopback_only_unless_insecure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        check_bind(host, AccessConfig())
    with pytest.raises(InsecureBind, match="--insecure"):
        check_bind("0.0.0.0", AccessConfig())
    check_bind("0.0.0.0", AccessConfig(tokens_file=tmp_path / "tokens.yaml"))
    with caplog.at_level(logging.WARNING, "runtime.access"):
        check_bind("0.0.0.0", AccessConfig(insecure=True))
    assert "INSECURE" in caplog.text


def test_without_tokens_a_host_not_the_ingress_own_is_refused_and_appends_nothing() -> None:
    """DNS rebinding: a page at evil.example, made to resolve to 127.0.0.1, is its own
    origin to the browser; its requests still say ``Host: evil.example``."""
    access = AccessConfig(allow_origins=("https://app.example:8443",))

    async def scenario() -> None:
        async with two_members(access=access) as cluster, cluster.client("b") as b:
            before = await appended(cluster.log)
            for host in (
                "evil.example",
                "evil.example:80",
                "localhost.evil.example",
                "127.0.0.1.evil.example",
            ):
                refused = await b.post(
                    "/v1/messages/test/tally/x",
                    content="1",
                    headers={
                        "content-type": "text/plain",
                        "host": host,
                        "origin": f"http://{host}",
                    },
                )
                assert refused.status_code == 403, host
                assert refused.json()["error"] == "host_refused"
                assert host in refused.json()["detail"]
            assert (await b.get("/health", headers={"host": "evil.example"})).status_code == 403
            assert await appended(cluster.log) == before
            # loopback as written, this member's own name and an allowed origin's host
            for host in (
                "127.0.0.1:8090",
                "127.3.2.1",
                "localhost:1",
                "LOCALHOST.",
                "[::1]:8090",
                "b",
                "app.example",
            ):
                taken = await b.post(
                    "/v1/messages/test/tally/x",
                    content="1",
                    headers={"content-type": "text/plain", "host": host},
                )
                assert taken.status_code == 202, (host, taken.text)

    asyncio.run(scenario())


def test_with_tokens_any_host_is_served_to_a_token(tmp_path: Path) -> None:
    """A rebinding page has no token; a deployment with tokens is reached by names the
    runtime cannot know (Compose's service names and container ids)."""
    access = AccessConfig(tokens_file=tokens_file(tmp_path / "tokens.yaml"))

    async def scenario() -> None:
        async with two_members(access=access) as cluster, cluster.client("b") as b:
            headers = {"host": "runtime:8090", **bearer(TOKENS["reader"])}
            assert (await b.get("/v1/state/test/tally/x", headers=headers)).status_code == 200
            anonymous = await b.get("/v1/state/test/tally/x", headers={"host": "evil.example"})
            assert anonymous.status_code == 401

    asyncio.run(scenario())


def test_a_served_ingress_refuses_a_foreign_host_and_serves_its_own() -> None:
    """Over a socket, as ``statefun run`` serves: the Host header as a browser sends it."""
    module = module_for("http://127.0.0.1:9/statefun", functions="test/*")
    with running_runtime(module) as rt, httpx.Client(base_url=rt.url, timeout=10) as http:
        rebound = http.get("/v1/state/test/tally/x", headers={"host": "evil.example:80"})
        assert rebound.status_code == 403
        assert rebound.json()["error"] == "host_refused"
        own = http.get("/v1/state/test/tally/x")  # Host: 127.0.0.1:PORT
        assert own.status_code == 200, own.text
        assert own.request.headers["host"] == f"127.0.0.1:{rt.port}"


def test_the_bound_host_is_allowed_but_not_every_interface() -> None:
    named = AccessControl(AccessConfig(), ingress_host="10.1.2.3")
    assert named.hosts == {"10.1.2.3"}
    assert AccessControl(AccessConfig(), ingress_host="0.0.0.0").hosts == frozenset()
    assert AccessControl(AccessConfig(), ingress_host="::").hosts == frozenset()


def test_hosts_allowed_for_good_are_kept_within_a_bound_and_refused_ones_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access_module, "_HOSTS_KEPT", 2)
    access = AccessControl(AccessConfig(), ingress_host="10.1.2.3")
    rule = ROUTES["/v1/messages/{namespace}/{type_}/{id_:path}"]

    def refused(host: str) -> int | None:
        scope = {
            "method": "POST",
            "path": "/v1/messages/a/b/c",
            "headers": [(b"host", host.encode())],
        }
        answer = access.refusal(scope, rule, {})
        return None if answer is None else answer.status_code

    for _ in range(2):
        assert refused("evil.example") == 403
        assert refused("127.0.0.1:1") is None
        assert refused("10.1.2.3:8090") is None
        assert refused("localhost") is None  # allowed, past the bound: not kept
    assert access._hosts_allowed == {"127.0.0.1:1", "10.1.2.3:8090"}
