"""The HTTP face of an endpoint: a FastAPI app over ``RequestReplyHandler``.

The invocation route (``POST {path}``), the one the runtime calls all the time, is served
before FastAPI's routing, straight from ASGI (the app's ``__call__``): FastAPI's
middleware and routing layers cost about as much CPU per request as running a batch of
the functions. The other routes are FastAPI's.

Routes:

* ``POST {path}`` - a native-protocol request (Content-Type ``CONTENT_TYPE``), answered
  200 with the encoded ``FunctionResponse``; another content type is 415 and bytes that
  are not a native request are 400, both with a JSON body ``{"error", "detail"}``;
* ``GET {path}`` - ``{"protocols": ["native/1"], "functions": [...]}``, so the runtime
  can check what the endpoint speaks and serves;
* ``GET /health`` - ``{"status": "ok", "functions": [...]}``.

Signed calls: given a verifier (``asgi_app(verify_key=...)``), ``POST`` and ``GET {path}``
serve only requests signed by the runtime within the replay window and answer any other
401 ``{"error": "missing_signature" | "bad_signature" | "stale_signature", "detail"}``,
before reading anything else of the request. ``/health`` stays open: it lists only the
function types.

Function lists are sorted and read per request, so functions registered after the app
was built are listed and served.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from sdk._function import StatefulFunctions
from sdk._handler import RequestReplyHandler
from statefun.errors import ProtocolError
from statefun.native_codec import CONTENT_TYPE, PROTOCOL_VERSION
from statefun.signing import DEFAULT_REPLAY_WINDOW, PublicKeys, SignatureError, SignatureVerifier

__all__ = ["HEALTH_PATH", "PROTOCOLS", "create_app"]

HEALTH_PATH = "/health"
PROTOCOLS = [f"native/{PROTOCOL_VERSION}"]


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _refused(verifier: SignatureVerifier | None, request: Request, body: bytes) -> Response | None:
    """The 401 answer to a request ``verifier`` refuses, None to serve it."""
    if verifier is None:
        return None
    try:
        verifier.check(request.method, request.headers, body)
    except SignatureError as e:
        return _error(401, e.code, e.detail)
    return None


_Answer = tuple[int, bytes, bytes]
"""An answer's status, content type and body."""


def _error_answer(status: int, error: str, detail: str) -> _Answer:
    """:func:`_error` as the invocation route sends it."""
    return status, b"application/json", bytes(_error(status, error, detail).body)


class _Invocations:
    """``POST {path}``, served from ASGI: the body read whole, the signature checked
    before anything else of the request, then the content type, then the handler."""

    def __init__(
        self, path: str, handler: RequestReplyHandler, verifier: SignatureVerifier | None
    ) -> None:
        self.path = path
        self._handler = handler
        self._verifier = verifier

    def serves(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under root (Starlette's convention)
            path = path[len(root) :]
        return path == self.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # nobody to answer
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        status, content_type, content = await self._answer(scope, b"".join(parts))
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(content))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _answer(self, scope: Scope, body: bytes) -> _Answer:
        if self._verifier is not None:
            try:
                self._verifier.check("POST", _headers(scope), body)
            except SignatureError as e:
                return _error_answer(401, e.code, e.detail)
        content_type = _header(scope, b"content-type") or ""
        if content_type.split(";", 1)[0].strip().lower() != CONTENT_TYPE:
            return _error_answer(
                415,
                "unsupported_media_type",
                f"expected Content-Type {CONTENT_TYPE}, got {content_type or 'none'}",
            )
        try:
            answer = await self._handler.handle_async(body)
        except ProtocolError as e:
            return _error_answer(400, "invalid_request", str(e))
        return 200, _CONTENT_TYPE, answer


_CONTENT_TYPE = CONTENT_TYPE.encode()


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (ASGI servers send names lower-cased)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


class _FunctionsApp(FastAPI):
    """FastAPI, with the invocation route served in front of it."""

    invocations: _Invocations | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        invocations = self.invocations
        if invocations is not None and invocations.serves(scope):
            await invocations(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    functions: StatefulFunctions,
    path: str = "/statefun",
    *,
    verify_key: PublicKeys | None = None,
    replay_window: float = DEFAULT_REPLAY_WINDOW,
) -> FastAPI:
    """A FastAPI app serving ``functions`` at ``path``; with ``verify_key``, only to
    requests signed by its private key."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"the path must start with '/', got {path!r}")
    if path == HEALTH_PATH:
        raise ValueError(f"the path {HEALTH_PATH} is taken by the health check")
    verifier = None if verify_key is None else SignatureVerifier(verify_key, window=replay_window)
    handler = RequestReplyHandler(functions)
    # No OpenAPI pages: the one POST route takes raw protocol bytes, which they cannot describe.
    app = _FunctionsApp(title="stateful functions", openapi_url=None, docs_url=None, redoc_url=None)
    app.invocations = _Invocations(path, handler, verifier)

    @app.get(path)
    async def describe(request: Request) -> Response:
        refused = _refused(verifier, request, b"")
        if refused is not None:
            return refused
        return JSONResponse({"protocols": PROTOCOLS, "functions": functions.typenames})

    @app.get(HEALTH_PATH)
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "functions": functions.typenames})

    return app
