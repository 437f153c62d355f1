"""``python -m runtime.cli`` with experimental changes, for ``python -m bench``'s
``--runtime-loop uvloop`` and ``--function-client aiohttp``.

``python -m bench._runtime_variant [--loop uvloop] [--function-client aiohttp] -- ARGS``
runs ``runtime.cli`` with ARGS after applying the changes; with neither option it is
the real command. They exist to measure what a change to the runtime would buy:

* ``--loop uvloop``: ``statefun run`` runs on asyncio's default loop (``asyncio.run``
  in runtime/cli.py); this installs uvloop's policy first.
* ``--function-client aiohttp``: replaces ``runtime.worker.FunctionClient`` (httpx on
  the ``httpx-aiohttp`` transport) with :class:`AiohttpFunctionClient`, the same calls
  on an ``aiohttp.ClientSession`` without httpx. It relies on the worker's import of
  that name and on ``FunctionClient``'s constructor, so it may need updating when
  those change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import aiohttp

from runtime import worker
from runtime.function_client import CallFailed
from statefun import native_codec
from statefun.errors import ProtocolError
from statefun.module_spec import HttpEndpoint
from statefun.protocol import FunctionRequest, FunctionResponse


class AiohttpFunctionClient:
    """``runtime.function_client.FunctionClient`` on aiohttp directly; same checks."""

    def __init__(self, endpoint: HttpEndpoint, *, max_connections: int, transport: object = None):
        t = endpoint.timeouts
        self._timeout = aiohttp.ClientTimeout(
            connect=t.call, sock_connect=t.connect, sock_read=t.read
        )
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def invoke(self, url: str, request: FunctionRequest) -> FunctionResponse:
        if self._session is None:  # created on the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=self._timeout,
                headers={
                    "content-type": native_codec.CONTENT_TYPE,
                    "accept": native_codec.CONTENT_TYPE,
                },
            )
        body = native_codec.encode_request(request)
        try:
            async with self._session.post(url, data=body) as answer:
                content = await answer.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CallFailed(f"POST {url} failed: {type(e).__name__}: {e}") from None
        if answer.status != 200:
            raise CallFailed(f"POST {url} answered {answer.status}: {content[:500]!r}")
        content_type = answer.headers.get("content-type", "").split(";")[0].strip()
        if content_type != native_codec.CONTENT_TYPE:
            raise CallFailed(
                f"POST {url} answered with content type {content_type!r}", protocol_violation=True
            )
        try:
            response = native_codec.decode_response(content)
        except ProtocolError as e:
            raise CallFailed(f"POST {url}: {e}", protocol_violation=True) from None
        if len(response.outcomes) != len(request.batches):
            raise CallFailed(
                f"POST {url} answered {len(response.outcomes)} outcomes "
                f"for {len(request.batches)} batches",
                protocol_violation=True,
            )
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._runtime_variant")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--function-client", choices=["httpx", "aiohttp"], default="httpx")
    parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then runtime.cli's")
    args = parser.parse_args(argv)
    cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.function_client == "aiohttp":
        setattr(worker, "FunctionClient", AiohttpFunctionClient)  # noqa: B010 (a patch)
    from runtime.cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
