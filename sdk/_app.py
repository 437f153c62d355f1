"""The HTTP face of an endpoint: a FastAPI app over ``RequestReplyHandler``.

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
    app = FastAPI(title="stateful functions", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post(path)
    async def invoke(request: Request) -> Response:
        body = await request.body()
        refused = _refused(verifier, request, body)
        if refused is not None:
            return refused
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != CONTENT_TYPE:
            return _error(
                415,
                "unsupported_media_type",
                f"expected Content-Type {CONTENT_TYPE}, got {content_type or 'none'}",
            )
        try:
            answer = await handler.handle_async(body)
        except ProtocolError as e:
            return _error(400, "invalid_request", str(e))
        return Response(answer, media_type=CONTENT_TYPE)

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
