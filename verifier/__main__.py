"""``python -m verifier``: one verification run; exit status 0 if it passed, 1 if not.

python -m verifier                                   # 10,000 commands, 100 addresses
python -m verifier --log kafka                       # the same on Kafka (Tansu)
python -m verifier --commands 100000 --addresses 1000  # the long run
python -m verifier --quick                           # 2,000 commands, 40 addresses
python -m verifier --log kafka --processes 3         # a cluster of 3 runtime processes
python -m verifier --log kafka --processes 3 --short # the same, the CI test's size
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from verifier.run import VerifierConfig, run

QUICK = {"commands": 2_000, "addresses": 40}
SHORT = {"commands": 5_000, "addresses": 50}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verifier",
        description="Send random command trees through the runtime while killing it, "
        "failing its function endpoint and restarting its function server; check that no "
        "address is ever over-counted and that every address ends equal to the oracle.",
    )
    parser.add_argument(
        "--commands",
        type=int,
        help="command messages delivered to functions, in all (default 10000; --quick 2000)",
    )
    parser.add_argument(
        "--addresses", type=int, help="addresses of verify/counter (default 100; --quick 40)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the trees and the faults")
    parser.add_argument("--log", choices=["embedded", "kafka"], default="embedded")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="runtime processes of the application (default 1); above 1, a cluster on "
        "Kafka (statefun run --kafka): the load goes to every process in turn, with "
        "Idempotency-Keys and retries through another process, and the kills are of a "
        "worker and of the coordinator, with a process joining and one leaving on SIGTERM",
    )
    parser.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT",
        help="a running broker for --log kafka (default: $STATEFUN_TEST_KAFKA, or start Tansu)",
    )
    parser.add_argument(
        "--kills",
        type=int,
        help="kill -9 of the runtime, each followed by a restart (default: 3, or one per "
        "10000 commands if that is more); of a cluster: of a worker and of the coordinator "
        "in turn (default 2, or one per 10000 commands)",
    )
    parser.add_argument(
        "--no-cancel-wait",
        action="store_true",
        help="do not wait at the end until every cancelled send is due (30 s after the "
        "last tree with one was sent)",
    )
    parser.add_argument(
        "--hot-kills",
        action="store_true",
        help="every other kill with ingress requests in flight (their outcome is then "
        "read from the state; a message answered 202 must never be lost)",
    )
    parser.add_argument(
        "--function-restarts",
        type=int,
        default=1,
        help="times the function server is killed and restarted (default 1)",
    )
    parser.add_argument("--no-spells", action="store_true", help="no endpoint 500/timeout spells")
    parser.add_argument(
        "--failure-policy",
        choices=["dead-letter", "retry", "fail"],
        help="the functions' failure policy (default: the runtime's, dead-letter); fail makes "
        "long endpoint spells roll the whole runtime back",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        metavar="SECONDS",
        help="with --processes: the runtime's --session-timeout, how long a killed member "
        "goes unnoticed (default: the runtime's; --short: 2)",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="the runtime's --checkpoint-interval (default 1)",
    )
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=6.0,
        metavar="SECONDS",
        help="the endpoint's call budget (module.yaml timeouts.call, default 6)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="the endpoint's read timeout (default 2)",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="commands sent but not yet seen applied, at most (default: 1500, or 3 per "
        "address if that is more)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="ingress requests in flight (default 8)"
    )
    parser.add_argument(
        "--final-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long the end waits for every address to equal the oracle (default 300)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep logs and data here (default: a temporary dir)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary work dir of a passing run"
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--quick", action="store_true", help="a short smoke run: 2000 commands, 40 addresses"
    )
    sizes.add_argument(
        "--short",
        action="store_true",
        help="the cluster test's size: 5000 commands, 50 addresses, no waiting for "
        "cancelled sends at the end, a cluster's --session-timeout 2",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.add_argument(
        "--runtime-command",
        metavar="COMMAND",
        help="run the runtime with this command instead of 'python -m runtime.cli' (it gets "
        "'run' and the flags), e.g. a script that patches the runtime to try a fix",
    )
    parser.add_argument(
        "--sabotage",
        choices=["overcount", "lose", "egress-twice", "egress-stale"],
        help="break the functions on purpose, to see the verifier catch it",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    defaults = (
        QUICK if args.quick else SHORT if args.short else {"commands": 10_000, "addresses": 100}
    )
    if (args.kills is not None and args.kills < 0) or args.function_restarts < 0:
        parser.error("--kills and --function-restarts must not be negative")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.processes > 1 and args.log != "kafka":
        parser.error("--processes above 1 needs --log kafka: the processes share Kafka")
    config = VerifierConfig(
        commands=args.commands or defaults["commands"],
        addresses=args.addresses or defaults["addresses"],
        seed=args.seed,
        log=args.log,
        kills=args.kills,
        hot_kills=args.hot_kills,
        cancel_wait=not (args.no_cancel_wait or args.short),
        function_restarts=args.function_restarts,
        spells=not args.no_spells,
        checkpoint_interval=args.checkpoint_interval,
        kafka_bootstrap=args.kafka_bootstrap,
        work_dir=args.work_dir,
        keep=args.keep,
        window=args.window,
        concurrency=args.concurrency,
        final_timeout=args.final_timeout,
        call_timeout=args.call_timeout,
        failure_policy=args.failure_policy,
        read_timeout=args.read_timeout,
        sabotage=args.sabotage,
        runtime_command=tuple(shlex.split(args.runtime_command or "")),
        processes=args.processes,
        session_timeout=args.session_timeout or (2.0 if args.short else None),
    )

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run(config, None if args.quiet else echo)
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
