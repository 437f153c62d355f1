"""Who may do what at the ingress: tokens, their roles, and the route table.

Every request to the ingress's app passes :class:`AccessControl` (one ASGI middleware)
before it reaches a route:

0. **Host**, without a tokens file only. A request whose ``Host`` header names neither
   loopback (``localhost``, ``127.0.0.0/8``, ``[::1]``, as written: never looked up in
   DNS), nor the ingress's ``--ingress-host``, nor the host of this member's URL, nor
   the host of an ``--allow-origin`` is refused ``403 host_refused``. This stops DNS
   rebinding: a page whose own domain is made to resolve to 127.0.0.1 is the ingress's
   "own origin" to the browser, but its requests name that domain in ``Host``. With
   tokens the check is left out: such a page has no token (nor the console's cookie,
   which belongs to the ingress's real name), and a deployment with tokens is reached
   by names the runtime cannot know (container ids, service names, load balancers).
1. **Origin.** A request carrying an ``Origin`` header is refused ``403
   origin_refused`` unless that origin is the ingress's own (the console's pages) or in
   the allow-list (``statefun run --allow-origin``). A foreign page's ``text/plain`` POST
   needs no CORS preflight; this is what stops it.
2. **Token.** With a tokens file (``statefun run --tokens FILE``), each route needs what
   :data:`ROUTES` says, in one table: ``/health``, ``/ready`` and the console's login
   page are open; sending needs :attr:`Role.CLIENT`'s right, reading state, addresses
   and egresses :attr:`Role.READER`'s, ``/metrics`` :attr:`Role.MONITOR`'s (a
   Prometheus gets no more), the rest :attr:`Role.ADMIN`'s; the members' internal
   route takes only a :attr:`Role.MEMBER` token. A request without a token or
   with an unknown one is answered ``401``, a token without the right or outside its
   ``functions`` patterns ``403``, both JSON ``{"error", "detail"}``; a token is never
   logged nor echoed. Without a tokens file every route is open (the runtime then binds
   loopback only unless ``--insecure``: :func:`check_bind`).

The token is the ``Authorization: Bearer`` header, or the console's cookie
(:data:`COOKIE`, set by ``POST /ui/login``: HttpOnly, SameSite=Strict). Tokens are kept
as SHA-256 digests and compared in constant time; the file is read again on SIGHUP
(:meth:`AccessControl.reload`), and a bad file then keeps the tokens in force. The
member token is also kept as it is: a member sends it with the replies it delivers.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.cluster.peers import DEMAND_PATH, REPLIES_PATH
from runtime.config import AccessConfig
from runtime.errors import ConfigurationError

log = logging.getLogger(__name__)

COOKIE = "statefun_token"
"""The console's cookie: the token given at ``/ui/login``."""
LOGIN_PATH = "/ui/login"
GRANT_SCOPE_KEY = "statefun.grant"
"""Where the middleware leaves the caller's :class:`Grant` in the ASGI scope."""


class Role(enum.StrEnum):
    CLIENT = "client"
    """Sends and calls (``POST /v1/messages``, ``POST /v1/call``)."""
    READER = "reader"
    """Reads state, addresses and egresses; sends nothing."""
    ADMIN = "admin"
    """Everything a person may do: send, read, operate, the console, metrics, OpenAPI."""
    MONITOR = "monitor"
    """Scrapes ``/metrics`` (Prometheus); nothing else."""
    MEMBER = "member"
    """Another member of the application delivering a reply; nothing else."""


class Need(enum.Enum):
    """What a route asks of the caller."""

    OPEN = "anyone"
    SEND = "send messages"
    READ = "read state, addresses and egresses"
    ADMIN = "use the admin routes"
    METRICS = "read the metrics"
    MEMBER = "deliver replies between members"


RIGHTS: Mapping[Role, frozenset[Need]] = {
    Role.CLIENT: frozenset({Need.SEND}),
    Role.READER: frozenset({Need.READ}),
    Role.ADMIN: frozenset({Need.SEND, Need.READ, Need.ADMIN, Need.METRICS}),
    Role.MONITOR: frozenset({Need.METRICS}),
    Role.MEMBER: frozenset({Need.MEMBER}),
}
"""The roles do not nest but for the admin: a reader cannot send, a client cannot read."""


@dataclass(frozen=True, slots=True)
class Rule:
    need: Need
    typed: bool = False
    """The route names a function type (its ``namespace`` and ``type_`` path
    parameters), which a token's ``functions`` patterns must match."""


ROUTES: Mapping[str, Rule] = {
    "/health": Rule(Need.OPEN),
    "/ready": Rule(Need.OPEN),
    LOGIN_PATH: Rule(Need.OPEN),
    "/v1/messages/{namespace}/{type_}/{id_:path}": Rule(Need.SEND, typed=True),
    "/v1/messages": Rule(Need.SEND),  # each message's type is checked by the route
    "/v1/call/{namespace}/{type_}/{id_:path}": Rule(Need.SEND, typed=True),
    "/v1/state/{namespace}/{type_}/{id_:path}": Rule(Need.READ, typed=True),
    "/v1/addresses/{namespace}/{type_}": Rule(Need.READ, typed=True),
    "/v1/egress/{namespace}/{name}": Rule(Need.READ),
    "/v1/dead-letters": Rule(Need.ADMIN),
    "/v1/admin/dead-letters/{offset}/replay": Rule(Need.ADMIN),
    "/v1/admin/dead-letters/{offset}/discard": Rule(Need.ADMIN),
    "/v1/admin/functions": Rule(Need.ADMIN),
    "/v1/admin/functions/{namespace}/{type_}/pause": Rule(Need.ADMIN, typed=True),
    "/v1/admin/functions/{namespace}/{type_}/resume": Rule(Need.ADMIN, typed=True),
    "/v1/checkpoints": Rule(Need.ADMIN),
    "/v1/cluster": Rule(Need.ADMIN),
    "/metrics": Rule(Need.METRICS),
    "/openapi.json": Rule(Need.ADMIN),
    "/ui": Rule(Need.ADMIN),
    "/ui/checkpoints": Rule(Need.ADMIN),
    "/ui/dead-letters": Rule(Need.ADMIN),
    "/ui/state": Rule(Need.ADMIN),
    "/ui/static": Rule(Need.ADMIN),
    REPLIES_PATH: Rule(Need.MEMBER),
    DEMAND_PATH: Rule(Need.MEMBER),
}
"""Every route of the ingress's app, by its path template, with what it needs. A path
no route matches needs :attr:`Need.ADMIN` (so only an admin learns it is not there)."""
UNMATCHED = Rule(Need.ADMIN)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows."""

    role: Role
    functions: tuple[str, ...] | None = None
    """Shell-style patterns over ``namespace/type`` (``shop/*``); None: every type."""

    def allows(self, need: Need) -> bool:
        return need in RIGHTS[self.role]

    def reaches(self, function_type: str) -> bool:
        return self.functions is None or any(
            fnmatch.fnmatchcase(function_type, p) for p in self.functions
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The tokens of one tokens file, as SHA-256 digests with their grants."""

    def __init__(self, grants: Iterable[tuple[str, Grant]]) -> None:
        self._grants = [(_digest(token), grant) for token, grant in grants]
        self.member_token = next(
            (token for token, grant in grants if grant.role is Role.MEMBER), None
        )
        """The first member token, sent with the replies this member delivers."""

    def __len__(self) -> int:
        return len(self._grants)

    def grant_of(self, token: str) -> Grant | None:
        """The grant of ``token``; every digest is compared, in constant time each."""
        presented = _digest(token)
        found = None
        for digest, grant in self._grants:
            if hmac.compare_digest(presented, digest) and found is None:
                found = grant
        return found


class TokensFileError(ConfigurationError):
    """The tokens file cannot be read or says something other than a list of tokens."""


MIN_TOKEN_LENGTH = 16


def load_tokens(path: Path) -> TokenTable:
    """The tokens of ``path``: a YAML list of ``{token, role, functions}``."""
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TokensFileError(f"cannot read the tokens file {path}: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise TokensFileError(f"the tokens file {path} must be a non-empty YAML list")
    grants: list[tuple[str, Grant]] = []
    for n, entry in enumerate(entries, 1):
        grants.append((*_entry(entry, f"{path}: entry {n}"),))
    if len({_digest(t) for t, _ in grants}) != len(grants):
        raise TokensFileError(f"the tokens file {path} lists a token twice")
    return TokenTable(grants)


def _entry(entry: Any, where: str) -> tuple[str, Grant]:
    if not isinstance(entry, dict):
        raise TokensFileError(f"{where} must be a mapping with token and role")
    unknown = set(entry) - {"token", "role", "functions"}
    if unknown:
        raise TokensFileError(f"{where} has unknown keys {sorted(unknown)}")
    token = entry.get("token")
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise TokensFileError(f"{where}: token must be a string of {MIN_TOKEN_LENGTH}+ characters")
    try:
        role = Role(str(entry.get("role")))
    except ValueError:
        raise TokensFileError(
            f"{where}: role must be one of {', '.join(Role)}, not {entry.get('role')!r}"
        ) from None
    functions = entry.get("functions")
    if functions is not None and (
        not isinstance(functions, list)
        or not functions
        or not all(isinstance(p, str) and p for p in functions)
    ):
        raise TokensFileError(f"{where}: functions must be a non-empty list of patterns")
    return token, Grant(role, None if functions is None else tuple(functions))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) names this machine's loopback only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _unspecified(name: str) -> bool:
    """``0.0.0.0`` or ``::``: every interface, no host a request can name."""
    try:
        return ipaddress.ip_address(name).is_unspecified
    except ValueError:
        return False


class InsecureBind(ConfigurationError):
    """A non-loopback ingress without tokens and without ``--insecure``."""


def check_bind(host: str, config: AccessConfig) -> None:
    """Refuse to serve everyone on the network with no token asked; warn when told to."""
    if config.tokens_file is not None or is_loopback(host):
        return
    if not config.insecure:
        raise InsecureBind(
            f"the ingress would listen on {host} with no token asked of anyone: give "
            "--tokens FILE, bind 127.0.0.1, or say --insecure (docs/security.md)"
        )
    log.warning(
        "INSECURE: the ingress listens on %s with no tokens: anyone who reaches it may "
        "send, read state and operate the runtime (--insecure)",
        host,
    )


def host_name(authority: str) -> str:
    """The host of a ``Host`` header or a bind address (``[::1]:8090``, ``a.example:80``,
    ``::1``), without its port, lower case, without a final dot."""
    if authority.startswith("["):
        name = authority[1:].partition("]")[0]
    elif authority.count(":") == 1:
        name = authority.partition(":")[0]
    else:
        name = authority  # no port, or a bare IPv6 address
    return name.rstrip(".").lower()


@functools.lru_cache(maxsize=256)
def names_loopback(name: str) -> bool:
    """Whether host ``name`` is loopback as written (``localhost`` or a loopback
    address): resolving it would ask the very DNS a rebinding attack controls. Cached:
    every request without tokens asks, mostly about the same few names."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _refusal(status: int, error: str, detail: str) -> Response:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


_READ_HEADERS = frozenset((b"host", b"origin", b"authorization", b"cookie"))
_HOSTS_KEPT = 256


def _read_headers(scope: Scope) -> dict[bytes, str]:
    """The first of each header the access layer reads (lower-case name: Latin-1 value),
    in one pass over the request's headers."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _READ_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found


def _bearer(headers: Mapping[bytes, str]) -> str | None:
    """The request's token: its Bearer credentials, or else the console's cookie."""
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else ""
    cookie = headers.get(b"cookie")
    if cookie is not None:
        morsel = SimpleCookie(cookie).get(COOKIE)
        if morsel is not None:
            return morsel.value
    return None


class AccessControl:
    """The ingress's tokens and allowed origins (see the module's docstring)."""

    def __init__(
        self,
        config: AccessConfig,
        *,
        member: bool = False,
        ingress_host: str = "127.0.0.1",
        member_url: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``member``: this process is a member of a cluster, which needs a member token;
        ``ingress_host``: the address the ingress binds; ``member_url``: the URL the other
        members reach it at, once known (the hosts a request may name, with loopback)."""
        self.config = config
        self.member = member
        self.tokens = None if config.tokens_file is None else self._load(config.tokens_file)
        self.origins = frozenset(o.rstrip("/") for o in config.allow_origins)
        hosts = {host_name(urlsplit(o).netloc) for o in self.origins}
        bound = host_name(ingress_host)
        if bound and not _unspecified(bound):
            hosts.add(bound)
        self.hosts = frozenset(hosts)
        self._hosts_allowed: set[str] = set()
        """``Host`` headers allowed as loopback or one of :attr:`hosts`."""
        self.member_url = member_url

    def _load(self, path: Path) -> TokenTable:
        tokens = load_tokens(path)
        if self.member and tokens.member_token is None:
            raise TokensFileError(
                f"the tokens file {path} has no token with role member, which the members "
                "of a cluster send each other"
            )
        return tokens

    def reload(self) -> bool:
        """Read the tokens file again (SIGHUP); a bad file keeps the tokens in force."""
        if self.config.tokens_file is None:
            log.info("no tokens file to reload")
            return False
        try:
            self.tokens = self._load(self.config.tokens_file)
        except TokensFileError as e:
            log.error("tokens not reloaded, the previous ones stay in force: %s", e)
            return False
        log.info("reloaded %d tokens from %s", len(self.tokens), self.config.tokens_file)
        return True

    @property
    def member_token(self) -> str | None:
        return None if self.tokens is None else self.tokens.member_token

    def refusal(self, scope: Scope, rule: Rule, params: Mapping[str, Any]) -> Response | None:
        """Why the request may not pass (an answer to send), or None to let it in; the
        caller's grant is left in the scope."""
        headers = _read_headers(scope)
        host = headers.get(b"host")  # none at all: not a browser, which always sends it
        if self.tokens is None and host is not None and not self._host_allowed(host):
            return _refusal(
                403,
                "host_refused",
                f"requests for host {host} are refused: without tokens the ingress answers "
                "only requests naming loopback, its --ingress-host or an --allow-origin host",
            )
        origin = headers.get(b"origin")
        if origin is not None and not self._origin_allowed(origin, scope, host):
            return _refusal(403, "origin_refused", f"requests from origin {origin} are refused")
        tokens = self.tokens
        if tokens is None:
            return None
        token = _bearer(headers)
        grant = tokens.grant_of(token) if token else None
        if grant is not None:
            scope[GRANT_SCOPE_KEY] = grant
        if rule.need is Need.OPEN:
            return None
        if not token:
            if scope["method"] == "GET" and scope["path"].startswith("/ui"):
                return RedirectResponse(LOGIN_PATH, status_code=303)
            return _refusal(401, "unauthenticated", "this route needs a Bearer token")
        if grant is None:
            return _refusal(401, "unauthenticated", "the token is not known")
        if not grant.allows(rule.need):
            return _refusal(403, "forbidden", f"a {grant.role} token may not {rule.need.value}")
        if rule.typed:
            # The path's parameters, decoded: a namespace or type holding an encoded '/'
            # reads otherwise here than in the route, which refuses it (400) anyway.
            function_type = f"{params.get('namespace')}/{params.get('type_')}"
            if not grant.reaches(function_type):
                return _refusal(
                    403, "forbidden", f"this token does not reach function type {function_type}"
                )
        return None

    def _host_allowed(self, host: str) -> bool:
        if host in self._hosts_allowed:
            return True
        name = host_name(host)
        if names_loopback(name) or name in self.hosts:
            # Allowed for good: kept (a few, asked about by every request).
            if len(self._hosts_allowed) < _HOSTS_KEPT:
                self._hosts_allowed.add(host)
            return True
        url = self.member_url()  # known only once the member has joined: asked each time
        return url is not None and name == host_name(urlsplit(url).netloc)

    def _origin_allowed(self, origin: str, scope: Scope, host: str | None) -> bool:
        own = f"{scope.get('scheme', 'http')}://{host or ''}"
        return origin.rstrip("/") in self.origins or origin == own


def sees_details(scope: Scope, access: AccessControl) -> bool:
    """Whether the caller may see the runtime's internals (function URLs, error bodies):
    everyone without tokens, an admin with them."""
    grant: Grant | None = scope.get(GRANT_SCOPE_KEY)
    return access.tokens is None or (grant is not None and grant.role is Role.ADMIN)


def route_for(
    routes: Iterable[BaseRoute], scope: Scope
) -> tuple[BaseRoute | None, Rule, Mapping[str, Any]]:
    """The route ``scope`` goes to (None: none), its rule and its path parameters."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            path: str = getattr(route, "path", "")
            return route, ROUTES.get(path, UNMATCHED), child.get("path_params", {})
    return None, UNMATCHED, {}


def rule_for(routes: Iterable[BaseRoute], scope: Scope) -> tuple[Rule, Mapping[str, Any]]:
    """The rule of the route ``scope`` goes to, with that route's path parameters."""
    _, rule, params = route_for(routes, scope)
    return rule, params


class AccessMiddleware:
    """The ASGI middleware checking every request against :class:`AccessControl`."""

    def __init__(self, app: ASGIApp, access: AccessControl, routes: Sequence[BaseRoute]) -> None:
        """``routes``: every route of the app (each with its path template)."""
        self.app = app
        self.access = access
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route, rule, params = route_for(self.routes, scope)
            refused = self.access.refusal(scope, rule, params)
            if refused is not None:
                if route is not None:
                    scope["route"] = route  # the metrics count it by its route's template
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)
