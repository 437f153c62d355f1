"""``statefun run`` with a full disk that can be switched on from outside.

    python -m verifier.faulty_runtime --fault-file /tmp/full [statefun run's options]

Takes every option of ``statefun run``, plus where the fault comes from: while the
file given to ``--fault-file`` exists, both the log's appends and the checkpoint
store's writes fail as on a full disk; ``--log-fault-file`` and ``--store-fault-file``
fail only one of them. The files are checked every 100 ms; each switch is logged (a
``verifier.injection`` warning line). See ``verifier.injection``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from runtime import cli
from runtime.app import Runtime, RuntimeConfig, open_log, open_store
from verifier.injection import FaultSwitch, FaultyLog, fail_store_writes, follow_file


def _own_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verifier.faulty_runtime",
        description="statefun run, with a full disk injected while a file exists "
        "(every other option is statefun run's)",
    )
    for flag, what in (
        ("--fault-file", "the log and the checkpoint store"),
        ("--log-fault-file", "the log"),
        ("--store-fault-file", "the checkpoint store"),
    ):
        parser.add_argument(
            flag, type=Path, metavar="PATH", help=f"while PATH exists, {what} find the disk full"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    own, rest = _own_options().parse_known_args(argv)
    args = cli._parser().parse_args(["run", *rest])
    log_switch = FaultSwitch("disk full under the log")
    store_switch = FaultSwitch("disk full under the checkpoint store")
    watched = [
        (path, switches)
        for path, switches in (
            (own.fault_file, [log_switch, store_switch]),
            (own.log_fault_file, [log_switch]),
            (own.store_fault_file, [store_switch]),
        )
        if path is not None
    ]
    watchers: list[asyncio.Task[None]] = []

    async def open_faulty(config: RuntimeConfig) -> Runtime:
        for path, switches in watched:
            watchers.append(asyncio.create_task(follow_file(switches, path)))
        log = FaultyLog(await open_log(config), log_switch)
        try:
            store = fail_store_writes(await open_store(config), store_switch)
        except BaseException:
            await log.close()
            raise
        return await Runtime.open(config, log=log, store=store)

    try:
        return cli.run(args, open_faulty)
    except cli.CliError as e:
        print(f"faulty_runtime: error: {e}", file=sys.stderr)
        return e.status


if __name__ == "__main__":
    sys.exit(main())
