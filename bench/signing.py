"""The signing benchmark: ``python -m bench.signing`` from the repository root.

Owns the measurement of what signed function calls (``statefun.signing``) cost, in
process, in two tables:

* **primitives**: microseconds to sign a request (``RequestSigner.headers``, what the
  runtime's function client adds to each request) and to verify one
  (``SignatureVerifier.check``, what a verifying SDK app adds), against the body's size
  (256 B to 1 MiB); beside them HMAC-SHA256 over the same bytes, the alternative design
  (the best of 5 runs each).
* **calls**: a whole call of the runtime's ``FunctionClient`` to our SDK's app through
  ``httpx.ASGITransport`` (both sides in this process, so the figure holds the client's,
  the app's and the function's work), one batch of one invocation of a no-op function,
  unsigned and signed-and-verified: microseconds per call, the best of 5 runs of
  ``--calls`` calls, alternating which goes first; and the difference.

Every call must answer one ``InvocationResult``, and a signed call to the verifying app
must pass (an unsigned one to it is refused); anything else prints FAILED and exits
with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import sys
import time
from collections.abc import Callable
from functools import partial

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._support import format_table
from runtime.errors import CallFailed
from runtime.function_client import FunctionClient
from runtime.progress import steps
from sdk import Context, Message, StatefulFunctions
from statefun.address import Address
from statefun.module_spec import FunctionTypePattern, HttpEndpoint
from statefun.protocol import FunctionRequest, Invocation, InvocationBatch, InvocationResult
from statefun.signing import RequestSigner, SignatureVerifier
from statefun.values import IntType, to_typed_value

SIZES = (256, 4096, 65536, 1 << 20)
RUNS = 5
URL = "http://functions/statefun"


def best_us(operation: Callable[[], object], repeat: int) -> float:
    """Microseconds per ``operation``, the best of :data:`RUNS` runs of ``repeat``."""
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        for _ in range(repeat):
            operation()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e6


def primitives() -> list[list[str]]:
    key = Ed25519PrivateKey.generate()
    signer, verifier = RequestSigner(key), SignatureVerifier(key.public_key())
    secret = bytes(32)
    rows = []
    for size in SIZES:
        body = bytes(size)
        headers = dict(signer.headers("POST", body))
        repeat = max(20, 2000 * 256 // size)
        sign = best_us(partial(signer.headers, "POST", body), repeat)
        verify = best_us(partial(verifier.check, "POST", headers, body), repeat)
        mac = best_us(partial(hmac.digest, secret, body, "sha256"), repeat)
        rows.append([f"{size:,}", f"{sign:.1f}", f"{verify:.1f}", f"{mac:.1f}"])
    return rows


def functions_app(verify: Ed25519PrivateKey | None) -> httpx.ASGITransport:
    functions = StatefulFunctions()

    @functions.bind("bench/noop")
    def noop(context: Context, message: Message) -> None:
        pass

    key = None if verify is None else verify.public_key()
    return httpx.ASGITransport(functions.asgi_app(verify_key=key))


def client(key: Ed25519PrivateKey | None, app_key: Ed25519PrivateKey | None) -> FunctionClient:
    endpoint = HttpEndpoint(
        FunctionTypePattern.parse("bench/*"), URL, protocol="native", signing_key=key
    )
    return FunctionClient(endpoint, max_connections=1, transport=functions_app(app_key))


REQUEST = FunctionRequest(
    [
        InvocationBatch(
            Address("bench", "noop", "a"), {}, [Invocation(None, to_typed_value(IntType, 1))]
        )
    ]
)


async def call_us(function_client: FunctionClient, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        response = await function_client.invoke(URL, REQUEST)
        if not isinstance(response.outcomes[0], InvocationResult):
            print(f"FAILED: {response.outcomes[0]}")
            sys.exit(1)
    return (time.perf_counter() - started) / calls * 1e6


async def calls(count: int) -> list[list[str]]:
    key = Ed25519PrivateKey.generate()
    unsigned, signed = client(None, None), client(key, key)
    refused = client(None, key)
    try:
        try:
            await refused.invoke(URL, REQUEST)
            print("FAILED: the verifying app served an unsigned call")
            sys.exit(1)
        except CallFailed:
            pass
        best = {"unsigned": float("inf"), "signed": float("inf")}
        for run in range(RUNS):
            order = [("unsigned", unsigned), ("signed", signed)]
            for name, function_client in order if run % 2 == 0 else order[::-1]:
                best[name] = min(best[name], await call_us(function_client, count))
    finally:
        for c in (unsigned, signed, refused):
            await c.close()
    return [
        ["unsigned", f"{best['unsigned']:.0f}", ""],
        [
            "signed and verified",
            f"{best['signed']:.0f}",
            f"{best['signed'] - best['unsigned']:+.0f}",
        ],
    ]


def main(count: int) -> None:
    say = steps("bench.signing")
    say(f"primitives: {len(SIZES)} body sizes, best of {RUNS} runs")
    print(format_table(["body bytes", "sign µs", "verify µs", "hmac-sha256 µs"], primitives()))
    say(f"calls: {count} calls each, unsigned and signed, best of {RUNS} runs")
    print()
    print(format_table(["call", "µs per call", "difference"], asyncio.run(calls(count))))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--calls", type=int, default=2000, help="calls per run (default 2000)")
    main(parser.parse_args().calls)
