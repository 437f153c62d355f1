"""The HTTP ingress: the runtime's API for clients.

``POST /v1/messages/{namespace}/{type}/{id}`` appends a message and answers 202 once
it is durable; ``POST /v1/call/...`` also waits for the reply (both served by the fast
path, ``runtime.fast_path``, in front of FastAPI; the FastAPI routes here document them
and run the same code); ``POST /v1/messages`` appends a batch (``runtime.ingress_batch``); ``GET /v1/state/...``
shows an address's state (``?checkpoint=N``: as the retained checkpoint N holds it);
``GET /v1/addresses/{namespace}/{type}`` pages the ids of a function type's addresses
that hold state (live, or as of ``?checkpoint=N``); ``GET /v1/egress/{namespace}/{name}``
reads an embedded egress; ``GET /health`` says the process serves, ``GET /ready``
whether it can take and process messages; ``GET /v1/cluster`` shows the members of the
application (one, ``local``, for a process alone); ``/ui`` is the web console
(``runtime.console``). Every request passes ``runtime.access`` first (origins, tokens,
roles: the route table is there). Every error is JSON ``{"error": code, "detail": message}`` (see
``runtime.ingress_errors``), and a rejected request leaves nothing in the log.

In a cluster (``runtime.peers`` set) every member serves any request. A POST with an
``Idempotency-Key`` and a state read are forwarded to the member owning the target's
partition, which checks keys and holds the state; the answer is passed on as it came.
A live listing of addresses asks every member for its page (each lists its own
partitions) and merges them. State and addresses as of a checkpoint are answered by
the member asked, from the checkpoints in Kafka (``runtime.cluster.as_of``).
A POST without a key (a batch's included) is served here: its messages are appended
to their targets' partitions, and a call's reply comes back here (``POST /v1/internal/replies``, from
the member that produced it; see ``runtime.cluster.peers``). While nobody owns the
partition, or when a forwarded request reaches a member that does not own it either
(the cluster is changing; never forwarded twice), the answer is 503 with
``Retry-After``.

An address is read from the raw path: the namespace and the type are one segment each,
the id is the rest of the path (it may contain ``/``). A namespace or type that decodes
to contain ``/``, and a segment that is or decodes to ``.`` or ``..``, are refused
(400): an address must mean the same to every client and proxy, whatever they
normalize.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from runtime import console, ingress_errors, ingress_openapi
from runtime.access import GRANT_SCOPE_KEY, AccessMiddleware, sees_details
from runtime.cluster.peers import (
    DEMAND_PATH,
    FORWARDED_HEADER,
    REPLIES_PATH,
    PeerRequest,
    PeerResponse,
    decode_reply,
)
from runtime.config import DEFAULT_CALL_TIMEOUT, MAX_CALL_TIMEOUT
from runtime.dead_letters import DISCARDED, PARKED, REPLAYED, DeadLetter
from runtime.errors import (
    BadInput,
    CheckpointNotRetained,
    IdempotencyConflict,
    PeerUnreachable,
    ShuttingDown,
)
from runtime.fast_path import FastPath, IngressApp, fast_route
from runtime.http_values import value_from_http, value_to_json
from runtime.idempotency import KeyedRequest, check_key, fingerprint
from runtime.ingress_batch import MAX_BATCH_BYTES, read_batch
from runtime.ingress_openapi import ADDRESSED, BATCH, CALL, GUARDED, SEND, errors
from runtime.ingress_request import IngressRequest, JSONResponse, Rejected, error, retry_later
from runtime.metrics import IngressMetrics
from runtime.replies import reply_within
from runtime.reports import checkpoints_report, dead_letters_report, functions_report
from runtime.routing import INGRESS_CALLER_TYPE
from runtime.state import AddressPage, merge_pages
from statefun.address import Address, TypeName
from statefun.errors import InvalidNameError
from statefun.values import TypedValue

if TYPE_CHECKING:
    from runtime.app import RuntimeBase

REPLAYED_HEADER = "Idempotent-Replayed"
"""Set on the answer to a retried request (a known Idempotency-Key): nothing was appended."""
CONSISTENCY_HEADER = "X-Statefun-Consistency"
"""Says whether a /v1/call reply comes from committed work or may be rolled back."""
MAX_EGRESS_WAIT = 60.0
"""The longest ``GET /v1/egress/...?wait=`` may wait for a record, in seconds."""

FORWARD_TIMEOUT = 30.0
"""Seconds a member waits for the owner's answer to a forwarded request other than a call."""
FORWARD_MARGIN = 5.0
"""Seconds a member waits for the owner's answer to a forwarded call beyond its timeout."""
MESSAGES_ROUTE = "/v1/messages/{namespace}/{type_}/{id_:path}"
BATCH_ROUTE = "/v1/messages"
CALL_ROUTE = "/v1/call/{namespace}/{type_}/{id_:path}"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A POST that passed every check: its target, its message, its idempotency key."""

    target: Address
    value: TypedValue
    key: str | None
    fingerprint: bytes


def _address(namespace: str, type_: str, id_: str) -> Address:
    try:
        return Address(namespace, type_, id_)
    except InvalidNameError as e:
        raise Rejected(error(400, "bad_address", str(e))) from None


def _path_address(request: IngressRequest) -> Address:
    """The address of a ``/v1/<route>/{namespace}/{type}/{id}`` request, from its raw path."""
    segments = request.raw_path.decode("latin-1").split("/")[3:]  # after "", "v1", the route
    try:
        namespace, type_, *id_segments = (unquote(s, errors="strict") for s in segments)
    except UnicodeDecodeError:
        raise Rejected(error(400, "bad_address", "the path is not UTF-8")) from None
    except ValueError:  # too few segments
        raise Rejected(
            error(400, "bad_address", "the path names no namespace/type/id address")
        ) from None
    id_ = "/".join(id_segments)
    for segment in (namespace, type_, *id_.split("/")):
        if segment in (".", ".."):
            raise Rejected(
                error(400, "bad_address", f"the path segment {segment!r} names no address")
            )
    for part, text in (("namespace", namespace), ("function type name", type_)):
        if "/" in text:
            raise Rejected(error(400, "bad_address", f"the {part} {text!r} contains '/'"))
    return _address(namespace, type_, id_)


def _consistency(raw: str | None) -> bool:
    """Whether the call asks for a committed reply (``?consistency=committed``)."""
    if raw in (None, "uncommitted"):
        return False
    if raw == "committed":
        return True
    raise Rejected(
        error(400, "bad_request", f"consistency must be committed or uncommitted, not {raw!r}")
    )


def _timeout(raw: str | None) -> float:
    if raw is None:
        return DEFAULT_CALL_TIMEOUT
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= MAX_CALL_TIMEOUT:
        raise Rejected(
            error(
                400,
                "bad_request",
                f"timeout must be seconds in (0, {MAX_CALL_TIMEOUT:g}], not {raw!r}",
            )
        )
    return timeout


def _batch_answer(
    positions: Sequence[tuple[int, int] | None], *, replayed: bool = False
) -> JSONResponse:
    """202 with each message's partition and offset (null where a restore lost it)."""
    return JSONResponse(
        {
            "messages": [
                None if p is None else {"partition": p[0], "offset": p[1]} for p in positions
            ]
        },
        status_code=202,
        headers={REPLAYED_HEADER: "true"} if replayed else None,
    )


def _passed_on(answer: PeerResponse) -> Response:
    """Another member's answer, as it came."""
    response = Response(answer.body, status_code=answer.status)
    for name, value in answer.headers:
        response.headers.append(name, value)
    return response


def _state_json(values: Mapping[str, TypedValue]) -> dict[str, Any]:
    return {name: value_to_json(v) for name, v in values.items()}


def create_ingress_app(runtime: RuntimeBase) -> IngressApp:
    app = IngressApp(title="statefun runtime ingress", docs_url=None, redoc_url=None)
    ingress_errors.install(app, runtime)
    ingress_openapi.install(app)
    served: list[BaseRoute] = []
    """Every route, for the access layer: filled once they are all added, below."""
    app.add_middleware(AccessMiddleware, access=runtime.access, routes=served)
    app.add_middleware(IngressMetrics, metrics=runtime.metrics)
    peers = runtime.peers

    @app.exception_handler(Rejected)
    async def rejected(_: Request, exc: Rejected) -> Response:
        return exc.response

    @app.exception_handler(CheckpointNotRetained)
    async def not_retained(_: Request, exc: CheckpointNotRetained) -> JSONResponse:
        return error(404, "checkpoint_not_retained", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error(400, "bad_request", problems)

    async def accept(request: IngressRequest) -> Accepted:
        """The target and the message of a POST, or a rejection; nothing is appended here."""
        key = request.header(b"idempotency-key")
        if key is not None and (problem := check_key(key)) is not None:
            raise Rejected(error(400, "bad_idempotency_key", problem))
        target = _path_address(request)
        if (refused := await runtime.refuses(target.function_type)) is not None:
            raise Rejected(error(404, "unknown_function_type", refused))
        body = await request.body(runtime.config.worker.max_message_bytes)
        content_type = request.header(b"content-type")
        try:
            value = value_from_http(body, content_type, request.query("type"))
        except BadInput as e:
            raise Rejected(error(e.status, e.error, e.detail)) from None
        print_ = b""
        if key is not None:
            # The query decoded and encoded again: a proxy (or a member forwarding the
            # request) may encode it otherwise, and a retry must still match.
            query = urlencode(request.query_items())
            print_ = fingerprint(request.url_path, query, content_type, body)
        return Accepted(target, value, key, print_)

    async def owners_answer(
        request: IngressRequest, target: Address, within: float, body: bytes | None = None
    ) -> Response | None:
        """In a cluster, the answer of the member owning ``target``'s partition if that is
        another member (the request forwarded there, its answer awaited ``within``
        seconds); None to serve the request here. ``body``: the request's, if read."""
        if peers is None:
            return None
        view = peers.view
        owner = view.owner(runtime.partition_of(target))
        if owner == view.me:
            return None
        if owner is None:
            raise Rejected(
                retry_later(
                    "no_owner",
                    f"no member owns the partition of {target} now (the cluster is changing)",
                )
            )
        sender = request.header(FORWARDED_HEADER.lower().encode())
        if sender is not None:
            raise Rejected(
                retry_later(
                    "not_owner",
                    f"{sender} forwarded this request here, but {owner} owns the partition "
                    f"of {target} (the cluster is changing)",
                )
            )
        if body is None:
            body = b""
            if request.method == "POST":
                body = await request.body(runtime.config.worker.max_message_bytes)
        forwarded = PeerRequest(
            request.method,
            request.raw_path,
            request.query_string,
            request.header_items(),
            body,
            within,
        )
        try:
            answer = await peers.forward(owner, forwarded)
        except PeerUnreachable as e:
            raise Rejected(retry_later("owner_unreachable", str(e))) from None
        return _passed_on(answer)

    async def keyed_elsewhere(request: IngressRequest, within: float) -> Response | None:
        """The owner's answer to a POST with an Idempotency-Key, if another member owns
        its target's partition: keys are checked there."""
        key = request.header(b"idempotency-key")
        if peers is None or key is None:
            return None
        if (problem := check_key(key)) is not None:
            raise Rejected(error(400, "bad_idempotency_key", problem))
        return await owners_answer(request, _path_address(request), within)

    async def keyed(accepted: Accepted) -> KeyedRequest | None:
        """The request's Idempotency-Key, with the answer of an earlier request with it."""
        if accepted.key is None:
            return None
        return await begin_key(accepted.key, accepted.fingerprint, accepted.target)

    async def begin_key(
        key: str, print_: bytes, target: Address, others: Sequence[Address] = ()
    ) -> KeyedRequest:
        """The key claimed for a request to ``target`` (a batch's first; ``others``: the
        rest), or the answer of an earlier request with it; 503 while ``target``'s
        partition is restored here, 422 if the key was used for another request."""
        if runtime.restoring(target):
            raise Rejected(
                retry_later(
                    "restoring",
                    f"the partition of {target} is being restored here, with its "
                    "idempotency keys; try again",
                )
            )
        try:
            return await runtime.idempotency.begin(key, print_, target, others)
        except IdempotencyConflict as e:
            raise Rejected(error(422, "idempotency_key_reused", str(e))) from None

    async def append(
        accepted: Accepted, key: KeyedRequest | None, caller: Address | None
    ) -> tuple[int, int]:
        """Append the message; with a key, remember the answer (or that nothing happened)."""
        if key is None:
            return await runtime.append_message(accepted.target, caller, accepted.value)
        appending = runtime.append_message(accepted.target, caller, accepted.value, key.headers)
        return await runtime.idempotency.append(key, appending, caller)

    # The two POST routes are served by the fast path (``runtime.fast_path``) before
    # FastAPI sees them; the routes below document them and serve them the same way
    # (``app.documented``). Both read the request as an IngressRequest.

    async def send_message(request: IngressRequest) -> Response:
        """``POST /v1/messages/{namespace}/{type_}/{id_}``."""
        if (forwarded := await keyed_elsewhere(request, FORWARD_TIMEOUT)) is not None:
            return forwarded
        accepted = await accept(request)
        key = await keyed(accepted)
        if key is not None and (before := key.earlier) is not None:
            return JSONResponse(
                {"partition": before.partition, "offset": before.offset},
                status_code=202,
                headers={REPLAYED_HEADER: "true"},
            )
        partition, offset = await append(accepted, key, None)
        return JSONResponse({"partition": partition, "offset": offset}, status_code=202)

    async def call_address(request: IngressRequest) -> Response:
        """``POST /v1/call/{namespace}/{type_}/{id_}``."""
        timeout = _timeout(request.query("timeout"))
        committed = _consistency(request.query("consistency"))
        consistency = {CONSISTENCY_HEADER: "committed" if committed else "uncommitted"}
        if (forwarded := await keyed_elsewhere(request, timeout + FORWARD_MARGIN)) is not None:
            return forwarded
        accepted = await accept(request)
        key = await keyed(accepted)
        before = None if key is None else key.earlier
        if (
            key is not None
            and (replayed := await runtime.idempotency.retry_reply(key, committed=committed))
            is not None
        ):
            return JSONResponse(
                value_to_json(replayed), headers={**consistency, REPLAYED_HEADER: "true"}
            )
        try:
            if key is None:
                caller, reply = runtime.replies.new_caller(committed=committed)
            else:
                caller, reply = runtime.idempotency.wait_for_reply(key, committed=committed)
        except ShuttingDown:
            if key is not None:
                runtime.idempotency.abandoned(key)
            return error(503, "shutting_down", "the runtime is stopping; nothing was accepted")
        try:
            if before is None:
                partition, offset = await append(accepted, key, caller)
            else:
                partition, offset = before.partition, before.offset
            try:
                answer = await reply_within(reply, timeout)
            except TimeoutError:
                return error(
                    504,
                    "timeout",
                    f"no reply within {timeout:g} s; the message was accepted and will be processed",
                    partition=partition,
                    offset=offset,
                )
            except ShuttingDown:
                return error(
                    503,
                    "shutting_down",
                    "the runtime is stopping; the message was accepted and will be processed",
                    partition=partition,
                    offset=offset,
                )
        finally:
            runtime.replies.forget(caller, reply)
        headers = consistency if before is None else {**consistency, REPLAYED_HEADER: "true"}
        return JSONResponse(value_to_json(answer), headers=headers)

    @app.post(
        MESSAGES_ROUTE,
        status_code=202,
        responses=errors(400, *GUARDED, 404, 413, 415, 422, 503),
        openapi_extra=SEND,
    )
    async def post_message(request: Request) -> Response:
        """Append a message for the address; 202 once it is durable. Query: ``type``.
        Header ``Idempotency-Key``: a retry returns the first answer, appending nothing."""
        return await send_message(IngressRequest(request.scope, request.receive))

    @app.post(
        CALL_ROUTE,
        responses=errors(400, *GUARDED, 404, 413, 415, 422, 503, 504),
        openapi_extra=CALL,
    )
    async def call(request: Request) -> Response:
        """Send a message and answer with the first message sent to the call's caller
        address. Query: ``type``, ``timeout`` (seconds, default 30, at most 300),
        ``consistency`` (``uncommitted``, the default: answer at once; ``committed``:
        only once the work that produced the reply is in a completed checkpoint).
        Header ``Idempotency-Key``: a retry gets the first call's reply, appending nothing."""
        return await call_address(IngressRequest(request.scope, request.receive))

    @app.post(
        BATCH_ROUTE,
        status_code=202,
        responses=errors(400, *GUARDED, 404, 413, 415, 422, 503),
        openapi_extra=BATCH,
    )
    async def post_messages(request: Request) -> Response:
        """Append many messages: ``{"messages": [{"address": "ns/type/id", "value": V,
        "type": T, "encoding": "base64"}, ...]}``, at most 10,000 and 16 MiB. Without
        ``type``, ``value`` is a string; with it, a JSON value of that type; with
        ``"encoding": "base64"``, the base64 of its raw bytes. Every message is checked
        before any is appended: a bad one refuses the whole batch, its index named
        (``messages[3]: ...``). 202 once all are durable, with each one's partition and
        offset, in order. Header ``Idempotency-Key``: for the whole batch; a retry
        returns the first answer, appending nothing."""
        incoming = IngressRequest(request.scope, request.receive)
        key = incoming.header(b"idempotency-key")
        if key is not None and (problem := check_key(key)) is not None:
            raise Rejected(error(400, "bad_idempotency_key", problem))
        body = await incoming.body(MAX_BATCH_BYTES)
        content_type = incoming.header(b"content-type")
        grant = request.scope.get(GRANT_SCOPE_KEY) if runtime.access.tokens else None
        messages = await read_batch(
            body, content_type, grant, runtime.refuses, runtime.config.worker.max_message_bytes
        )
        first = messages[0][0]
        if key is None:
            positions = await runtime.append_messages([(t, v, ()) for t, v in messages])
            return _batch_answer(positions)
        # The key is kept where the first message's is: there a retry finds it.
        if (forwarded := await owners_answer(incoming, first, FORWARD_TIMEOUT, body)) is not None:
            return forwarded
        query = urlencode(incoming.query_items())
        print_ = fingerprint(incoming.url_path, query, content_type, body)
        keyed = await begin_key(key, print_, first, [t for t, _ in messages[1:]])
        if (before := keyed.earlier) is not None:
            kept = before.positions or ((before.partition, before.offset),)
            return _batch_answer(kept, replayed=True)
        count = len(messages)
        appending = runtime.append_messages(
            [(t, v, keyed.batch_headers(i, count)) for i, (t, v) in enumerate(messages)]
        )
        positions = await runtime.idempotency.append_batch(keyed, appending)
        return _batch_answer(positions)

    @app.get(
        "/v1/state/{namespace}/{type_}/{id_:path}",
        responses=errors(400, *GUARDED, 404, 503),
        openapi_extra=ADDRESSED,
    )
    async def state(request: Request, checkpoint: int | None = Query(None, ge=1)) -> Response:
        """The address's state: live, from the member owning it; or as of the retained
        ``checkpoint``, from any member."""
        incoming = IngressRequest(request.scope, request.receive)
        address = _path_address(incoming)
        _function_type(address.namespace, address.type)
        if checkpoint is not None:
            as_of = await runtime.state_as_of(address, checkpoint)
            return JSONResponse({"state": _state_json(as_of), "checkpoint": checkpoint})
        if (forwarded := await owners_answer(incoming, address, FORWARD_TIMEOUT)) is not None:
            return forwarded
        values = runtime.state_of(address)
        if values is None:
            return retry_later(
                "restoring", f"the partition of {address} is being restored here; try again"
            )
        return JSONResponse({"state": _state_json(values)})

    @app.get("/v1/addresses/{namespace}/{type_}", responses=errors(400, *GUARDED, 404, 503))
    async def addresses(
        request: Request,
        namespace: str,
        type_: str,
        after: str | None = Query(None, min_length=1),
        limit: int = Query(100, ge=1, le=1000),
        checkpoint: int | None = Query(None, ge=1),
    ) -> Response:
        """The ids of the function type's addresses that hold state, in codepoint order,
        strictly after ``after``, at most ``limit``: live (in a cluster, every member's
        merged), or as of the retained ``checkpoint``. ``next``: the ``after`` of the next
        page, null on the last."""
        function_type = _function_type(namespace, type_)
        local = peers is None or FORWARDED_HEADER in request.headers
        if checkpoint is not None:
            page = await runtime.addresses_as_of(function_type, after, limit, checkpoint)
        elif local:
            page = own_page(function_type, after, limit)
        else:
            page = await everyones_page(
                IngressRequest(request.scope, request.receive), function_type, after, limit
            )
        body: dict[str, Any] = {"addresses": page.ids, "next": page.next, "checkpoint": checkpoint}
        if local and checkpoint is None and peers is not None:
            body["partitions"] = list(runtime.owned)  # what a merging member checks
        return JSONResponse(body)

    def own_page(function_type: TypeName, after: str | None, limit: int) -> AddressPage:
        """A live page of the partitions this process holds; 503 while it restores them."""
        page = runtime.addresses(function_type, after, limit)
        if page is None:
            raise Rejected(
                retry_later("restoring", "this member's partitions are being restored; try again")
            )
        return page

    async def everyones_page(
        request: IngressRequest, function_type: TypeName, after: str | None, limit: int
    ) -> AddressPage:
        """A live page merged from every member's page of its own partitions; 503 unless
        the members' partitions are every partition, once (the cluster is changing)."""
        assert peers is not None
        view = peers.view
        forwarded = PeerRequest(
            "GET",
            request.raw_path,
            request.query_string,
            request.header_items(),
            b"",
            FORWARD_TIMEOUT,
        )

        async def members_page(member: str) -> tuple[AddressPage, list[int]]:
            if member == view.me:
                return own_page(function_type, after, limit), list(runtime.owned)
            try:
                answer = await peers.forward(member, forwarded)
            except PeerUnreachable as e:
                raise Rejected(retry_later("member_unreachable", str(e))) from None
            if answer.status != 200:
                raise Rejected(_passed_on(answer))
            body = json.loads(answer.body)
            return AddressPage(body["addresses"], body["next"] is not None), body["partitions"]

        answers = await asyncio.gather(*(members_page(m) for m in view.members()))
        covered = sorted(p for _, partitions in answers for p in partitions)
        if covered != list(range(runtime.config.messages_partitions)):
            raise Rejected(
                retry_later(
                    "cluster_changing",
                    "the members' partitions changed while they were asked; try again",
                )
            )
        return merge_pages((page for page, _ in answers), limit)

    @app.get("/v1/egress/{namespace}/{name}", responses=errors(400, *GUARDED, 404, 503))
    async def egress(
        namespace: str,
        name: str,
        from_: int = Query(0, alias="from", ge=0),
        limit: int = Query(100, ge=1, le=10_000),
        wait: float = Query(
            0.0,
            ge=0,
            le=MAX_EGRESS_WAIT,
            description="seconds to wait for a record when none is at or past `from` yet "
            "(a long poll: the answer comes as soon as one is)",
        ),
    ) -> JSONResponse:
        try:
            egress_id = TypeName.parse(f"{namespace}/{name}")
        except InvalidNameError as e:
            return error(400, "bad_egress", str(e))
        if not runtime.egresses.readable(egress_id):
            return error(
                404,
                "unknown_egress",
                f"no egress {egress_id} kept by the runtime is declared in the module spec "
                "(a Kafka egress is read from its Kafka topic)",
            )
        records = await runtime.egresses.read(egress_id, from_, limit, wait)
        return JSONResponse(
            {
                "records": [{"offset": o, "id": i, **value_to_json(v)} for o, i, v in records],
                "next": records[-1][0] + 1 if records else from_,
            }
        )

    @app.get("/v1/dead-letters", responses=errors(400, *GUARDED, 503))
    async def dead_letters(
        from_: int = Query(0, alias="from", ge=0), limit: int = Query(100, ge=1, le=10_000)
    ) -> JSONResponse:
        return JSONResponse(await dead_letters_report(runtime, from_, limit))

    @app.post(
        "/v1/admin/dead-letters/{offset}/replay",
        status_code=202,
        responses=errors(400, *GUARDED, 404, 409, 503),
    )
    async def replay_dead_letter(offset: int, request: Request) -> Response:
        """Append the parked message to the messages log again (once, however often asked:
        in a cluster, the member owning its target's partition holds that key)."""
        letter = await _dead_letter(offset)
        if (
            letter.target is not None
            and (
                forwarded := await owners_answer(
                    IngressRequest(request.scope, request.receive), letter.target, FORWARD_TIMEOUT
                )
            )
            is not None
        ):
            return forwarded
        status = (await runtime.records.dead_letter_marks([offset])).get(offset, PARKED)
        if status == DISCARDED:
            return error(409, "discarded", f"dead letter {offset} was discarded")
        if not letter.replayable:
            return error(
                409,
                "not_replayable",
                f"dead letter {offset} is not a message to a function address ({letter.kind}); "
                "it cannot be sent again",
            )
        partition, appended, again = await runtime.replay_dead_letter(letter)
        return JSONResponse(
            {"partition": partition, "offset": appended},
            status_code=202,
            headers={REPLAYED_HEADER: "true"} if again else None,
        )

    @app.post(
        "/v1/admin/dead-letters/{offset}/discard", responses=errors(400, *GUARDED, 404, 409, 503)
    )
    async def discard_dead_letter(offset: int) -> JSONResponse:
        await _dead_letter(offset)
        status = (await runtime.records.dead_letter_marks([offset])).get(offset, PARKED)
        if status == REPLAYED:
            return error(409, "replayed", f"dead letter {offset} was replayed already")
        await runtime.records.mark_dead_letter(offset, DISCARDED)
        return JSONResponse({"offset": offset, "status": DISCARDED})

    async def _dead_letter(offset: int) -> DeadLetter:
        letter = await runtime.dead_letters.get(
            offset, runtime.clock.skip if runtime.clock else None
        )
        if letter is None:
            raise Rejected(error(404, "not_found", f"there is no dead letter at offset {offset}"))
        return letter

    @app.get("/v1/admin/functions", responses=errors(*GUARDED))
    async def functions() -> JSONResponse:
        """The function types that are failing, unavailable or paused."""
        return JSONResponse({"functions": functions_report(runtime)})

    @app.post(
        "/v1/admin/functions/{namespace}/{type_}/pause", responses=errors(400, *GUARDED, 404, 503)
    )
    async def pause(namespace: str, type_: str) -> JSONResponse:
        function_type = _function_type(namespace, type_)
        await runtime.pause(function_type)
        return JSONResponse({"function_type": str(function_type), "paused": True})

    @app.post(
        "/v1/admin/functions/{namespace}/{type_}/resume", responses=errors(400, *GUARDED, 404, 503)
    )
    async def resume(namespace: str, type_: str) -> JSONResponse:
        function_type = _function_type(namespace, type_)
        await runtime.resume(function_type)
        return JSONResponse({"function_type": str(function_type), "paused": False})

    def _function_type(namespace: str, type_: str) -> TypeName:
        try:
            function_type = TypeName(namespace, type_)
        except InvalidNameError as e:
            raise Rejected(error(400, "bad_function_type", str(e))) from None
        if runtime.module.endpoint_for(function_type) is None:
            raise Rejected(
                error(
                    404,
                    "unknown_function_type",
                    f"no endpoint in the module spec serves {function_type}",
                )
            )
        return function_type

    @app.get("/v1/checkpoints", responses=errors(*GUARDED, 503))
    async def checkpoints() -> JSONResponse:
        """The completed checkpoints kept and the last rollbacks, with their causes."""
        return JSONResponse(await checkpoints_report(runtime))

    @app.get("/v1/cluster", responses=errors(*GUARDED))
    async def cluster() -> JSONResponse:
        """The members, the partitions each owns, the coordinator, the generation and the
        last completed checkpoint (see ``runtime.cluster.status``)."""
        return JSONResponse(runtime.cluster_status())

    if peers is not None:

        @app.post(REPLIES_PATH, status_code=204, responses=errors(400, *GUARDED, 413))
        async def deliver_reply(request: Request) -> Response:
            """A reply another member produced for a call waiting here."""
            incoming = IngressRequest(request.scope, request.receive)
            body = await incoming.body(2 * runtime.config.worker.max_message_bytes)
            try:
                address, value, tag = decode_reply(body)
            except BadInput as e:
                return error(e.status, e.error, e.detail)
            if address.function_type != INGRESS_CALLER_TYPE:
                return error(400, "bad_reply", f"{address} is not a caller address")
            runtime.replies.deliver(address, value, tag)
            return Response(status_code=204)

        @app.post(DEMAND_PATH, status_code=204, responses=errors(*GUARDED))
        async def demand_checkpoint() -> Response:
            """A member's work waits for a commit: start the next checkpoint soon."""
            runtime.checkpoint_demanded()
            return Response(status_code=204)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"description": "The text exposition.", "content": {"text/plain": {}}},
            **errors(*GUARDED),
        },
    )
    async def metrics() -> Response:
        """The Prometheus text exposition of this process's metrics (``runtime.metrics``)."""
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", responses=errors(403))
    async def health() -> JSONResponse:
        """Liveness: the process serves requests."""
        return JSONResponse({"status": "ok"})

    @app.get(
        "/ready",
        responses={
            **errors(403),
            503: {"description": 'Not ready: {"ready": false} (with reasons for an admin).'},
        },
    )
    async def ready(request: Request) -> JSONResponse:
        """Readiness: 503 with the reasons while this process cannot take and process
        messages. Degraded function types are listed, but never make it 503: one bad
        function must not take the whole ingress out of a load balancer. With tokens,
        only an admin's request is told more than ``{"ready": bool}``."""
        reasons = runtime.health.problems()
        status = 503 if reasons else 200
        if not sees_details(request.scope, runtime.access):
            return JSONResponse({"ready": not reasons}, status_code=status)
        last = runtime.last_checkpoint
        body = {
            "ready": not reasons,
            "reasons": reasons,
            "functions": functions_report(runtime),
            "generation": runtime.clock.generation if runtime.clock else None,
            "checkpoint": last.checkpoint if last else None,
        }
        return JSONResponse(body, status_code=status)

    console_routes = console.install(app, runtime)
    served += [r for r in app.router.routes if isinstance(getattr(r, "path", None), str)]
    served += console_routes
    app.state.routes = served
    documented = {r.path: r for r in app.router.routes if isinstance(r, APIRoute)}
    app.fast_path = FastPath(
        [
            fast_route(MESSAGES_ROUTE, documented[MESSAGES_ROUTE].path_regex, send_message),
            fast_route(CALL_ROUTE, documented[CALL_ROUTE].path_regex, call_address),
        ],
        runtime.access,
        runtime.metrics,
        runtime,
    )
    return app
