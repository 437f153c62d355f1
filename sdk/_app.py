"""The HTTP face of an endpoint: a FastAPI app over ``RequestReplyHandler``.

Routes:

* ``POST {path}`` - a native-protocol request (Content-Type ``CONTENT_TYPE``), answered
  200 with the encoded ``FunctionResponse``; another content type is 415 and bytes that
  are not a native request are 400, both with a JSON body ``{"error", "detail"}``;
* ``GET {path}`` - ``{"protocols": ["native/1"], "functions": [...]}``, so the runtime
  can check what the endpoint speaks and serves;
* ``GET /health`` - ``{"status": "ok", "functions": [...]}``.

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

__all__ = ["HEALTH_PATH", "PROTOCOLS", "create_app"]

HEALTH_PATH = "/health"
PROTOCOLS = [f"native/{PROTOCOL_VERSION}"]


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def create_app(functions: StatefulFunctions, path: str = "/statefun") -> FastAPI:
    """A FastAPI app serving ``functions`` at ``path``."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"the path must start with '/', got {path!r}")
    if path == HEALTH_PATH:
        raise ValueError(f"the path {HEALTH_PATH} is taken by the health check")
    handler = RequestReplyHandler(functions)
    # No OpenAPI pages: the one POST route takes raw protocol bytes, which they cannot describe.
    app = FastAPI(title="stateful functions", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post(path)
    async def invoke(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != CONTENT_TYPE:
            return _error(
                415,
                "unsupported_media_type",
                f"expected Content-Type {CONTENT_TYPE}, got {content_type or 'none'}",
            )
        try:
            body = await handler.handle_async(await request.body())
        except ProtocolError as e:
            return _error(400, "invalid_request", str(e))
        return Response(body, media_type=CONTENT_TYPE)

    @app.get(path)
    async def describe() -> JSONResponse:
        return JSONResponse({"protocols": PROTOCOLS, "functions": functions.typenames})

    @app.get(HEALTH_PATH)
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "functions": functions.typenames})

    return app
