"""``python -m verifier.faults``: the fault suite; exit status 0 if no row failed.

python -m verifier.faults                          # every fault, one by one, on both logs
python -m verifier.faults --short                  # the short form (CI)
python -m verifier.faults --log kafka --only broker-stall poisons
python -m verifier.faults --list                   # the faults
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from verifier.faults.scenarios import ALL, LONG_ORDER, SHORT_ORDER
from verifier.faults.suite import LOAD_CONCURRENCY, LOAD_RATE, SuiteConfig, run_suite


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verifier.faults",
        description="Inject each fault while a steady load runs on healthy addresses; "
        "measure their throughput during the fault against before it, the time until "
        "the poison is parked or service resumes, /ready, and an exact count at the end.",
    )
    parser.add_argument("--log", choices=["embedded", "kafka", "both"], default="both")
    parser.add_argument(
        "--short",
        action="store_true",
        help="the short form (CI): shorter windows, the poisons and the storms each in one row",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="FAULT", choices=sorted(ALL), help="run only these faults"
    )
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=LOAD_CONCURRENCY,
        help=f"POSTs in flight of the steady load (default {LOAD_CONCURRENCY})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=LOAD_RATE,
        metavar="PER_SECOND",
        help=f"messages per second the steady load offers at most (default {LOAD_RATE:g}; "
        "0: a closed loop, as fast as the ingress answers)",
    )
    parser.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT",
        help="a running broker for the Kafka log (default: a Tansu broker started for the "
        "run; broker-stall needs that one)",
    )
    parser.add_argument("--work-dir", type=Path, help="keep logs and data here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir of a passing run")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name, fault in ALL.items():
            forms = [
                f for f, order in (("long", LONG_ORDER), ("short", SHORT_ORDER)) if name in order
            ]
            logs = "/".join(fault.logs)
            print(f"{name:24} {logs:15} {'+'.join(forms) or '-':11} {fault.summary}")
        return 0
    config = SuiteConfig(
        logs=("embedded", "kafka") if args.log == "both" else (args.log,),
        short=args.short,
        only=tuple(args.only or ()),
        concurrency=args.concurrency,
        rate=args.rate or None,
        work_dir=args.work_dir,
        keep=args.keep,
        kafka_bootstrap=args.kafka_bootstrap,
    )

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = asyncio.run(run_suite(config, None if args.quiet else echo))
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
