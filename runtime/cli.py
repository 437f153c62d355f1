"""The ``statefun`` command: run the runtime, send messages, call functions.

``statefun run --module module.yaml`` runs the runtime on the embedded log;
``statefun send ADDRESS VALUE`` and ``statefun call ADDRESS VALUE`` talk to a running
runtime's ingress, ``statefun status`` shows its application's members, ``statefun
state`` an address's state (live, or as of a retained checkpoint), ``statefun
addresses`` the addresses of a function type that hold state, ``statefun egress``
the records of an embedded egress, and ``statefun keys new DIR`` makes a key pair for
signed function calls. Every command talking to the ingress sends ``--token`` (or
``$STATEFUN_TOKEN``) as a Bearer token.
Errors are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from runtime.checkpoints.coordinator import CheckpointConfig
from runtime.config import (
    DEFAULT_CALL_TIMEOUT,
    AccessConfig,
    ClusterConfig,
    RuntimeConfig,
    WorkerConfig,
    default_of,
)
from runtime.log_formats import LogFormat, formatter
from statefun.address import Address, TypeName
from statefun.errors import InvalidNameError, ModuleSpecError
from statefun.kafka_properties import security_settings_file
from statefun.module_spec import load_module_spec
from statefun.signing import write_key_pair

if TYPE_CHECKING:
    from runtime.app import RuntimeBase

DISTRIBUTION = "pystatefun"
"""The package ``statefun --version`` reports the version of."""

EGRESS_PAGE = 1000
"""Records ``statefun egress`` asks the ingress for at a time."""

ADDRESSES_PAGE = 100
"""Ids ``statefun addresses`` asks the ingress for at a time, by default."""

FOLLOW_WAIT = 10.0
"""Seconds each read of ``statefun egress --follow`` asks the ingress to wait for a new
record (a long poll: the record is printed as soon as the ingress has it)."""

DEFAULT_INGRESS = f"http://{default_of(RuntimeConfig, 'ingress_host')}:{default_of(RuntimeConfig, 'ingress_port')}"


class CliError(Exception):
    """A problem to report in one line and exit with ``status``."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statefun",
        description="Stateful functions runtime: run it, send messages, call functions.",
    )
    parser.add_argument("--version", action="version", version=f"statefun {version(DISTRIBUTION)}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the runtime",
        description="Run the runtime: its log (embedded, or Kafka with --kafka), the worker "
        "and the HTTP ingress.",
    )
    run.add_argument(
        "--module",
        required=True,
        type=Path,
        metavar="FILE",
        help="module spec (StateFun module.yaml format)",
    )
    run.add_argument(
        "--kafka",
        default=os.environ.get("STATEFUN_KAFKA") or None,
        metavar="BOOTSTRAP",
        help="keep the log in this Kafka cluster instead of the embedded log "
        "(default: $STATEFUN_KAFKA)",
    )
    run.add_argument(
        "--kafka-config",
        type=Path,
        default=os.environ.get("STATEFUN_KAFKA_CONFIG") or None,
        metavar="FILE",
        help="with --kafka: the Kafka client's security settings (security.protocol, sasl.*, "
        "ssl.*) as a Java .properties file, as Kafka's tools take them (default: "
        "$STATEFUN_KAFKA_CONFIG)",
    )
    run.add_argument(
        "--alone",
        action="store_true",
        help="with --kafka: run as the application's only process, with its own checkpoint "
        "store under --data-dir, instead of joining application APP_ID as one of its "
        "processes (members share the partitions and take one global checkpoint, kept in "
        "Kafka)",
    )
    run.add_argument(
        "--member-url",
        metavar="URL",
        help="with --kafka: the URL the other members reach this process's ingress at "
        "(default: http://INGRESS_HOST:INGRESS_PORT, the host name if it binds 0.0.0.0)",
    )
    run.add_argument(
        "--session-timeout",
        type=_seconds,
        default=default_of(ClusterConfig, "session_timeout"),
        metavar="SECONDS",
        help="with --kafka: how long a member may go silent before the others take its "
        "partitions over (default: %(default)g)",
    )
    run.add_argument(
        "--app-id",
        default=os.environ.get("STATEFUN_APP_ID", runtime_default("app_id")),
        metavar="ID",
        help="names the runtime's topics and consumer group, so applications can share a "
        f"Kafka cluster (default: $STATEFUN_APP_ID or {runtime_default('app_id')})",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path("statefun-data"),
        metavar="DIR",
        help="data directory: the embedded log (unless --kafka) and, by default, the "
        "checkpoints of a process alone (default: ./statefun-data)",
    )
    run.add_argument(
        "--ingress-host",
        default=runtime_default("ingress_host"),
        metavar="HOST",
        help="address the ingress listens on (default: %(default)s); another than "
        "loopback needs --tokens or --insecure",
    )
    run.add_argument(
        "--tokens",
        type=Path,
        default=os.environ.get("STATEFUN_TOKENS_FILE") or None,
        metavar="FILE",
        help="YAML list of {token, role: client|reader|admin|monitor|member, functions} the "
        "ingress asks for (re-read on SIGHUP; docs/security.md; default: "
        "$STATEFUN_TOKENS_FILE; none: every route open, on loopback only)",
    )
    run.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin (https://app.example) whose requests are taken besides "
        "the ingress's own (repeatable); requests from any other origin are refused; "
        "without --tokens its host is also one a request's Host may name",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="let the ingress listen on a non-loopback address without --tokens",
    )
    run.add_argument(
        "--ingress-port",
        type=int,
        default=runtime_default("ingress_port"),
        metavar="PORT",
        help="port the ingress listens on (default: %(default)s)",
    )
    run.add_argument(
        "--partitions",
        type=int,
        default=runtime_default("messages_partitions"),
        metavar="N",
        help="partitions of the messages topic, fixed when it is created (default: %(default)s)",
    )
    run.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=default_of(WorkerConfig, "max_message_bytes"),
        metavar="BYTES",
        help="largest message: an ingress body or a message a function sends "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--max-state-bytes",
        type=_positive_int,
        default=default_of(WorkerConfig, "max_state_bytes"),
        metavar="BYTES",
        help="largest value of one state; a result writing more is refused (default: %(default)s)",
    )
    run.add_argument(
        "--storm-rate",
        type=_seconds,
        default=default_of(WorkerConfig, "storm_rate"),
        metavar="N",
        help="messages/s from functions to one function type above which a warning is "
        "logged, at most once a minute per type; 0 turns it off (default: %(default)g)",
    )
    run.add_argument(
        "--checkpoint-dir",
        type=Path,
        metavar="DIR",
        help="the checkpoint store of a process alone (the embedded log, or --kafka with "
        "--alone; default: DATA_DIR/checkpoints); the members of an application keep "
        "their checkpoints in Kafka",
    )
    run.add_argument(
        "--checkpoint-interval",
        type=_seconds,
        default=default_of(CheckpointConfig, "interval"),
        metavar="SECONDS",
        help="the most time between global checkpoints; 0 turns them off (default: %(default)g)",
    )
    run.add_argument(
        "--checkpoint-on-demand",
        action=argparse.BooleanOptionalAction,
        default=default_of(CheckpointConfig, "on_demand"),
        help="start the next checkpoint as soon as the one before is done while a "
        "committed reply or an exactly-once egress record waits for it (default: on)",
    )
    run.add_argument(
        "--checkpoint-retain",
        type=int,
        default=default_of(CheckpointConfig, "retain"),
        metavar="K",
        help="completed checkpoints to keep (default: %(default)s)",
    )
    run.add_argument(
        "--idempotency-retention",
        type=_seconds,
        default=runtime_default("idempotency_retention"),
        metavar="SECONDS",
        help="how long the answer to a request with an Idempotency-Key is kept "
        "(default: %(default)g)",
    )
    run.add_argument(
        "--start-over",
        action="store_true",
        help="start the log over with an empty checkpoint store (its checkpoints are lost): "
        "replay what came from outside (HTTP ingress records, the Kafka ingress topics from "
        "their retained start) and skip every record the runtime produced before",
    )
    run.add_argument(
        "--egress-retention",
        type=_seconds,
        metavar="SECONDS",
        help="how long the embedded egress topics and the dead-letter topic keep a record; "
        "with --kafka, their retention.ms when the runtime creates them; 0 keeps every "
        "record (default: 7 days)",
    )
    run.add_argument(
        "--messages-retention",
        type=_seconds,
        metavar="SECONDS",
        help="with --kafka, the retention.ms of the messages topic when the runtime creates "
        "it; 0 keeps every record (default: 30 days). Kafka cannot know which records a "
        "checkpoint needs: make it longer than any backlog or outage to recover from. The "
        "embedded log drops what no retained checkpoint needs",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="what the runtime logs to stderr: debug; info (the start-up summary, each "
        "generation begun, how far a long restore got every 5 s); warning (failures it "
        "works around: a failing function, a stalled log); error; critical (default: "
        "%(default)s; the Kafka client logs below warning only at debug)",
    )
    run.add_argument(
        "--log-format",
        type=LogFormat,
        default=LogFormat.TEXT,
        choices=list(LogFormat),
        help="text, or json: one JSON object per line with time, level, logger, message "
        "and exception (default: %(default)s)",
    )

    checkpoints = commands.add_parser(
        "checkpoints",
        help="list the completed checkpoints and the current generation",
        description="List the completed checkpoints (id, time, size, duration), the current "
        "generation and the recent rollbacks of a running runtime.",
    )
    _ingress_flag(checkpoints)
    checkpoints.add_argument("--json", action="store_true", help="print the answer as JSON")

    status = commands.add_parser(
        "status",
        help="show the application's members and the partitions each owns",
        description="Show the members of the application (id, URL, the partitions each "
        "owns), the coordinator, the generation and the last completed checkpoint, as the "
        "runtime at --ingress sees them.",
    )
    status.add_argument("--json", action="store_true", help="print the answer as JSON")
    _ingress_flag(status)

    functions = commands.add_parser(
        "functions",
        help="list the function types that are failing, unavailable or paused",
        description="List the function types that are failing, unavailable or paused, with "
        "their held addresses, dead letters and last error.",
    )
    functions.add_argument("--json", action="store_true", help="print the answer as JSON")
    for name, text in (
        ("pause", "stop sending messages of a function type; they wait in the log"),
        ("resume", "send the messages of a paused function type again"),
    ):
        sub = commands.add_parser(name, help=text, description=text.capitalize() + ".")
        sub.add_argument("function_type", metavar="NS/TYPE", help="the function type")
        _ingress_flag(sub)
    _ingress_flag(functions)

    dead = commands.add_parser(
        "dead-letters",
        help="list, replay or discard dead letters",
        description="List the dead letters (messages and records the runtime gave up on, with "
        "the reason), replay one (append its message again) or discard it.",
    )
    dead.add_argument("action", nargs="?", choices=["list", "replay", "discard"], default="list")
    dead.add_argument(
        "offset", nargs="?", type=int, metavar="OFFSET", help="for replay and discard"
    )
    dead.add_argument(
        "--from", dest="from_", type=int, default=0, metavar="N", help="list from offset N"
    )
    dead.add_argument("--limit", type=int, default=100, metavar="N")
    dead.add_argument("--json", action="store_true", help="print the answer as JSON")
    _ingress_flag(dead)
    state = commands.add_parser(
        "state",
        help="show an address's state",
        description="Show the state of an address: each value with its type.",
    )
    state.add_argument("address", metavar="ADDRESS", help="namespace/type/id")
    _checkpoint_flag(state, "the state exactly as the retained checkpoint N holds it")
    state.add_argument("--json", action="store_true", help="print the answer as JSON")
    _ingress_flag(state)

    addresses = commands.add_parser(
        "addresses",
        help="list the addresses of a function type that hold state",
        description="List the ids of a function type's addresses that hold state, one a "
        "line, in codepoint order, a page at a time (the next page's --after is printed "
        "on stderr) or every page with --all.",
    )
    addresses.add_argument("function_type", metavar="NS/TYPE", help="the function type")
    addresses.add_argument("--after", metavar="ID", help="list the ids after ID")
    addresses.add_argument(
        "--limit",
        type=_positive_int,
        default=ADDRESSES_PAGE,
        metavar="N",
        help="ids per page, at most 1000 (default: %(default)s)",
    )
    _checkpoint_flag(addresses, "the addresses that held state in the retained checkpoint N")
    addresses.add_argument("--all", action="store_true", help="walk every page")
    addresses.add_argument(
        "--json", action="store_true", help="print the answer as JSON (with --all: one page of all)"
    )
    _ingress_flag(addresses)

    egress = commands.add_parser(
        "egress",
        help="read the records of an embedded egress",
        description="Print the records of an egress the runtime keeps (an embedded "
        "egress), one a line: its offset and its value.",
    )
    egress.add_argument("egress", metavar="NS/NAME", help="the egress id")
    egress.add_argument(
        "--from", dest="from_", type=_offset, default=0, metavar="N", help="from offset N"
    )
    egress.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="print at most N records (default: 100, with --follow no limit)",
    )
    egress.add_argument(
        "--follow",
        action="store_true",
        help="keep printing new records as they come, until interrupted (Ctrl-C, SIGINT) "
        "or terminated (SIGTERM): either ends it with status 0",
    )
    egress.add_argument(
        "--json", action="store_true", help="print each record as a JSON object on its line"
    )
    _ingress_flag(egress)

    for name, text in (
        ("send", "send a message to a function and return once it is durable"),
        ("call", "send a message to a function and print its reply"),
    ):
        sub = commands.add_parser(name, help=text, description=text.capitalize() + ".")
        sub.add_argument("address", metavar="ADDRESS", help="namespace/type/id")
        sub.add_argument(
            "value", metavar="VALUE", help="the message: a string, or JSON when --type is given"
        )
        sub.add_argument(
            "--type",
            metavar="T",
            help="typename of the value (e.g. io.statefun.types/int or a JSON type)",
        )
        _ingress_flag(sub)
        if name == "call":
            sub.add_argument(
                "--timeout",
                type=float,
                default=DEFAULT_CALL_TIMEOUT,
                metavar="SECONDS",
                help="how long to wait for the reply (default: %(default)g)",
            )
            sub.add_argument(
                "--json",
                action="store_true",
                help="print the whole answer as JSON instead of the value",
            )

    keys = commands.add_parser(
        "keys",
        help="make a key pair for signed function calls",
        description="Make an Ed25519 key pair for signed function calls in DIR: the private "
        "key (mode 0600) for the module spec's signing.keyFile, the public key for the "
        "endpoints' asgi_app(verify_key=...). Existing files are never overwritten.",
    )
    keys.add_argument("action", choices=["new"])
    keys.add_argument("directory", metavar="DIR", type=Path, help="where to write the key files")
    return parser


def runtime_default(name: str) -> Any:
    """The default of a :class:`RuntimeConfig` field, for an option and its help."""
    return default_of(RuntimeConfig, name)


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    """The configuration ``statefun run``'s arguments describe."""
    try:
        module = load_module_spec(args.module)
    except ModuleSpecError as e:
        raise CliError(f"invalid module spec: {e}", status=2) from None
    if not module.endpoints:
        raise CliError(f"{args.module} declares no function endpoint", status=2)
    cluster = bool(args.kafka) and not args.alone
    if cluster and args.start_over:
        raise CliError(
            "--start-over rebuilds a process's own checkpoint store: with --kafka, use it "
            "with --alone",
            status=2,
        )
    return RuntimeConfig(
        module=module,
        module_file=args.module,
        data_dir=None if args.kafka else args.data_dir,
        kafka=args.kafka,
        kafka_security=kafka_security(args.kafka_config, args.kafka),
        app_id=args.app_id,
        ingress_host=args.ingress_host,
        ingress_port=args.ingress_port,
        access=AccessConfig(
            tokens_file=args.tokens,
            allow_origins=tuple(args.allow_origin),
            insecure=args.insecure,
        ),
        messages_partitions=args.partitions,
        worker=WorkerConfig(
            max_message_bytes=args.max_message_bytes,
            max_state_bytes=args.max_state_bytes,
            storm_rate=args.storm_rate,
        ),
        checkpoint_dir=checkpoint_dir(args),
        idempotency_retention=args.idempotency_retention,
        start_over=args.start_over,
        **_given(args, "egress_retention", "messages_retention"),
        checkpoints=CheckpointConfig(
            interval=args.checkpoint_interval,
            on_demand=args.checkpoint_on_demand,
            retain=max(1, args.checkpoint_retain),
        ),
        cluster=ClusterConfig(
            enabled=cluster,
            url=args.member_url,
            session_timeout=args.session_timeout,
            heartbeat_interval=min(
                default_of(ClusterConfig, "heartbeat_interval"), args.session_timeout / 4
            ),
        ),
    )


def kafka_security(path: Path | None, kafka: str | None) -> dict[str, Any]:
    """kafka-python's security settings of ``--kafka-config`` (``statefun.kafka_properties``)."""
    if path is None:
        return {}
    if not kafka:
        raise CliError("--kafka-config applies to the Kafka cluster of --kafka", status=2)
    try:
        return security_settings_file(path)
    except ValueError as e:
        raise CliError(f"--kafka-config {e}", status=2) from None


def _configure_logging(level: str, log_format: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if level != "debug":
        # kafka-python says at INFO what it does at every connection: dozens of lines;
        # librdkafka (the log's producer) says at INFO what its errors say again.
        logging.getLogger("kafka").setLevel(logging.WARNING)
        logging.getLogger("runtime.log.kafka_appender").setLevel(logging.WARNING)


def run(
    args: argparse.Namespace,
    open_runtime: Callable[[RuntimeConfig], Awaitable[RuntimeBase]] | None = None,
) -> int:
    """``statefun run``; ``open_runtime`` replaces ``Runtime.open`` (a launcher that
    wraps the log or the store, as ``verifier.faulty_runtime`` does)."""
    # Imported here: the server stack takes a second to import, which send and call skip.
    from runtime.errors import ConfigurationError, LogError, StoreError
    from runtime.launch import open_runtime as open_default

    _configure_logging(args.log_level, args.log_format)
    config = runtime_config(args)
    opener = open_runtime or open_default

    async def main() -> None:
        runtime = await opener(config)
        _tune_gc()
        if not await runtime.serve():
            # A client that could not be closed in time (one of a stalled broker) keeps
            # threads that would hold the exit for as long as they wait: end now, as
            # SIGTERM asked. What matters is durable already, in the log and the store.
            logging.shutdown()
            os._exit(0)

    try:
        _run_loop(main())
    except (LogError, ConfigurationError, StoreError) as e:
        raise CliError(str(e)) from None
    return 0


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options among ``names`` given on the command line (the others keep the
    runtime's defaults, defined once in the runtime)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """The checkpoint store: ``--checkpoint-dir``, or a folder under ``--data-dir`` in
    every mode (with ``--kafka`` too, so starting from another folder finds it)."""
    given: Path | None = args.checkpoint_dir
    return given if given is not None else args.data_dir / "checkpoints"


GC_THRESHOLDS = (10_000, 20, 100)
"""The collector's thresholds in a running runtime (Python's defaults: 700, 10, 10)."""


def _tune_gc() -> None:
    """Collect less often. A runtime allocates many short-lived objects per message and
    keeps a large long-lived heap (state, tables, outbox); with the default thresholds
    the collector took ~16% of its CPU in ``python -m bench --mode call`` (measured with
    ``gc.callbacks``). These cut the runtime's CPU per message by 10-20% and its p99 by
    a third there (bench/README.md). What exists at startup (modules, the spec) is
    frozen out of collections."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (uvicorn[standard] brings it): ~7% less CPU."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _address_path(text: str) -> str:
    """``namespace/type/id`` as the path of an ingress route, each part escaped (an id
    may contain ``/``)."""
    try:
        address = Address.parse(text)
    except InvalidNameError as e:
        raise CliError(str(e), status=2) from None
    return "/".join(quote(p, safe="") for p in (address.namespace, address.type, address.id))


def _post(args: argparse.Namespace, kind: str) -> httpx.Response:
    path = _address_path(args.address)
    if args.type is None:
        headers = {"content-type": "text/plain; charset=utf-8"}
        params = {}
    else:
        try:
            json.loads(args.value)
        except ValueError:
            raise CliError(
                f"VALUE must be JSON when --type is given (quote a string: '\"{args.value}\"')",
                status=2,
            ) from None
        headers = {"content-type": "application/json"}
        params = {"type": args.type}
    timeout = 10.0
    if kind == "call":
        params["timeout"] = str(args.timeout)
        timeout = args.timeout + 10.0
    return _answer(
        args,
        "POST",
        f"/v1/{kind}/{path}",
        content=args.value.encode(),
        headers=headers,
        params=params,
        timeout=timeout,
    )


def _ingress_flag(parser: argparse.ArgumentParser) -> None:
    """The options of a command talking to the ingress: where, and with which token."""
    parser.add_argument(
        "--ingress",
        default=os.environ.get("STATEFUN_INGRESS", DEFAULT_INGRESS),
        metavar="URL",
        help=f"ingress URL (default: $STATEFUN_INGRESS or {DEFAULT_INGRESS})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("STATEFUN_TOKEN") or None,
        metavar="TOKEN",
        help="the Bearer token to send, when the runtime has a tokens file "
        "(default: $STATEFUN_TOKEN)",
    )


def _checkpoint_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--checkpoint",
        type=_positive_int,
        metavar="N",
        help=f"{what} (statefun checkpoints lists them)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _offset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _checkpoints(args: argparse.Namespace) -> int:
    answer = _request(args, "GET", "/v1/checkpoints")
    if args.json:
        print(json.dumps(answer))
        return 0
    print(f"generation {answer['generation']}, epoch {answer['epoch']}")
    rows = [("checkpoint", "time", "generation", "addresses", "bytes", "duration ms")]
    rows += [
        (
            str(c["id"]),
            c["time"],
            str(c["generation"]),
            str(c["addresses"]),
            str(c["size_bytes"]),
            str(c["duration_ms"]),
        )
        for c in answer["checkpoints"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    for r in answer["rollbacks"][-5:]:
        print(
            f"rollback: generation {r['generation']} to checkpoint {r['rolled_back_to']} "
            f"at {r['time']}: {r['reason']}"
        )
    return 0


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "none"


def _status(args: argparse.Namespace) -> int:
    answer = _request(args, "GET", "/v1/cluster")
    if args.json:
        print(json.dumps(answer))
        return 0
    last = answer["last_checkpoint"]
    print(
        f"{answer['mode']} mode, generation {answer['generation']}, last checkpoint "
        + (
            "none"
            if last is None
            else f"{last['id']} (generation {last['generation']}, {last['time']})"
        )
    )
    print(f"coordinator {answer['coordinator'] or 'unknown'}")
    rows = [("member", "url", "partitions")]
    rows += [
        (
            m["id"] + (" (this one)" if m["me"] else ""),
            m["url"] or "?",
            _ranges(m["partitions"]),
        )
        for m in answer["members"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
    if answer["unowned"]:
        print(f"owned by nobody now: {_ranges(answer['unowned'])}")
    return 0


def _request(args: argparse.Namespace, method: str, path: str, **params: Any) -> Any:
    """The JSON answer of the ingress to ``method path``; a CliError for anything else.
    A ``wait`` parameter (a long poll) holds the answer back that much longer."""
    timeout = 10 + float(params.get("wait", 0))
    return _answer(args, method, path, params=params or None, timeout=timeout).json()


def _answer(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    **request: Any,
) -> httpx.Response:
    """The ingress's answer to ``method path``, sent with ``--token``; a CliError for an
    error answer (its JSON error and detail) or none."""
    headers = dict(headers or {})
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    url = f"{args.ingress.rstrip('/')}{path}"
    try:
        response = httpx.request(method, url, headers=headers, **request)
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach the ingress at {args.ingress}: {e}") from None
    if response.status_code >= 400:
        try:
            body = response.json()
            detail = f"{body.get('error')}: {body.get('detail')}"
        except ValueError:
            detail = response.text[:300]
        raise CliError(f"the ingress answered {response.status_code}: {detail}")
    return response


def _function_type_path(text: str) -> str:
    try:
        function_type = TypeName.parse(text)
    except InvalidNameError as e:
        raise CliError(str(e), status=2) from None
    return f"{quote(function_type.namespace, safe='')}/{quote(function_type.name, safe='')}"


def _pause(args: argparse.Namespace) -> int:
    path = _function_type_path(args.function_type)
    answer = _request(args, "POST", f"/v1/admin/functions/{path}/{args.command}")
    print(f"{answer['function_type']}: {'paused' if answer['paused'] else 'resumed'}")
    return 0


def _functions(args: argparse.Namespace) -> int:
    answer = _request(args, "GET", "/v1/admin/functions")
    if args.json:
        print(json.dumps(answer))
        return 0
    if not answer["functions"]:
        print("every function type is healthy")
    for f in answer["functions"]:
        state = "paused" if f["paused"] else "unavailable" if f["unavailable"] else "ok"
        if f["failing_addresses"] and state == "ok":
            state = "failing"
        line = f"{f['function_type']}: {state}, {f['failing_addresses']} addresses held, "
        line += f"{f['dead_lettered']} dead letters"
        if f["last_error"]:
            line += f"; last error: {f['last_error']}"
        print(line)
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    if args.action != "list":
        if args.offset is None:
            raise CliError(
                f"dead-letters {args.action} needs the OFFSET of a dead letter", status=2
            )
        answer = _request(args, "POST", f"/v1/admin/dead-letters/{args.offset}/{args.action}")
        if args.json:
            print(json.dumps(answer))
        elif args.action == "replay":
            print(f"dead letter {args.offset} replayed: {answer['partition']}@{answer['offset']}")
        else:
            print(f"dead letter {args.offset} discarded")
        return 0
    answer = _request(args, "GET", "/v1/dead-letters", **{"from": args.from_, "limit": args.limit})
    if args.json:
        print(json.dumps(answer))
        return 0
    for d in answer["records"]:
        what = d["target"] or d["egress"] or "a record"
        message = d["message"]
        shown = json.dumps(message["value"]) if message else f"key={d['key']} value={d['value']}"
        print(f"{d['offset']} [{d['status']}] {d['time']} to {what}: {shown}")
        print(f"    {d['reason']}")
    return 0


def _shown(value: dict[str, Any]) -> str:
    """A value as the ingress gives it (``{"type", "value"[, "encoding"]}``), for people:
    a string as it is, anything else as JSON, opaque bytes as base64 saying so."""
    if value.get("encoding") == "base64":
        return f"{value['value']} (base64 of {value['type']})"
    if isinstance(value["value"], str):
        return str(value["value"])
    return json.dumps(value["value"])


def _as_of(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.checkpoint is None else {"checkpoint": args.checkpoint}


def _state(args: argparse.Namespace) -> int:
    answer = _request(args, "GET", f"/v1/state/{_address_path(args.address)}", **_as_of(args))
    if args.json:
        print(json.dumps(answer))
        return 0
    if not answer["state"]:
        if args.checkpoint is None:
            print(f"{args.address} has no state")
        else:
            print(f"{args.address} had no state in checkpoint {args.checkpoint}")
    for name, value in sorted(answer["state"].items()):
        print(f"{name} ({value['type']}): {_shown(value)}")
    return 0


def _addresses(args: argparse.Namespace) -> int:
    path = f"/v1/addresses/{_function_type_path(args.function_type)}"
    after: str | None = args.after
    every: list[str] = []
    while True:
        page = {"limit": args.limit, **_as_of(args), **({"after": after} if after else {})}
        answer = _request(args, "GET", path, **page)
        after = answer["next"]
        if args.json and args.all:
            every += answer["addresses"]
        elif args.json:
            print(json.dumps(answer))
        else:
            for id_ in answer["addresses"]:
                print(id_)
        if after is None:
            break
        if not args.all:
            print(f"more: ask with --after {after}", file=sys.stderr)
            break
    if args.json and args.all:
        print(json.dumps({"addresses": every, "next": None, "checkpoint": args.checkpoint}))
    return 0


def _egress(args: argparse.Namespace) -> int:
    path = f"/v1/egress/{_function_type_path(args.egress)}"
    limit: int | None = args.limit if args.limit is not None or args.follow else 100
    position: int = args.from_
    wait = 0.0  # until a page comes short: then --follow waits for what comes next
    if args.follow:
        for ending in (signal.SIGINT, signal.SIGTERM):
            signal.signal(ending, _end_following)
    while limit is None or limit > 0:
        page = min(limit or EGRESS_PAGE, EGRESS_PAGE)
        answer = _request(args, "GET", path, **{"from": position, "limit": page, "wait": wait})
        for record in answer["records"]:
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                print(f"{record['offset']} {_shown(record)}", flush=True)
        position = answer["next"]
        if limit is not None:
            limit -= len(answer["records"])
        if len(answer["records"]) < page:
            if not args.follow:
                break
            wait = FOLLOW_WAIT
    return 0


def _end_following(signum: int, frame: object) -> None:
    """How ``--follow`` ends, on SIGINT or SIGTERM: what was printed is the output, not an
    error. Installed rather than inherited, as a shell without job control starts its
    background commands with SIGINT ignored. The process exits here, without unwinding:
    every record was printed with a flush, and an exception raised wherever the signal
    lands (inside the HTTP client's locks) could leave the exit waiting on a lock."""
    os._exit(0)


def _send(args: argparse.Namespace) -> int:
    print(json.dumps(_post(args, "messages").json()))
    return 0


def _call(args: argparse.Namespace) -> int:
    answer = _post(args, "call").json()
    if args.json:
        print(json.dumps(answer))
    elif isinstance(answer.get("value"), str) and answer.get("encoding") != "base64":
        print(answer["value"])
    else:
        print(json.dumps(answer["value"]))
    return 0


def _keys(args: argparse.Namespace) -> int:
    try:
        private, public = write_key_pair(args.directory)
    except OSError as e:
        raise CliError(f"cannot write the key pair: {e}") from None
    print(f"private key (for the module spec's signing.keyFile): {private}")
    print(f"public key (for the endpoints' asgi_app(verify_key=...)): {public}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "run": run,
        "send": _send,
        "call": _call,
        "checkpoints": _checkpoints,
        "status": _status,
        "functions": _functions,
        "pause": _pause,
        "resume": _pause,
        "dead-letters": _dead_letters,
        "state": _state,
        "addresses": _addresses,
        "egress": _egress,
        "keys": _keys,
    }
    try:
        return handlers[args.command](args)
    except CliError as e:
        print(f"statefun: error: {e}", file=sys.stderr)
        return e.status


if __name__ == "__main__":
    sys.exit(main())
