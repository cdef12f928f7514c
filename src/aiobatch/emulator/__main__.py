"""``python -m aiobatch.emulator``: run the Batch emulator until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import DEFAULT_ACCOUNT_KEY, DEFAULT_ACCOUNT_NAME, Emulator, FaultPlan, Quotas, Timings
from ._faults import ALL_KINDS
from ._scheduler import MIN_ALLOCATION_DELAY


def _seconds(minimum: float) -> Callable[[str], float]:
    """An argparse ``type`` for seconds no fewer than ``minimum`` (argparse names the flag in its error)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} seconds, not {text}")
        return value

    return parse


def _rate(text: str) -> float:
    """An argparse ``type`` for a probability."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def build_parser(prog: str = "python -m aiobatch.emulator") -> argparse.ArgumentParser:
    """The emulator's command-line options."""
    parser = argparse.ArgumentParser(prog=prog, description="A local Azure Batch service for development and tests.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--account-name", default=DEFAULT_ACCOUNT_NAME, help="Batch account name")
    parser.add_argument(
        "--account-key",
        default=DEFAULT_ACCOUNT_KEY,
        help="base64 account key (default: the well-known dev key)",
    )
    parser.add_argument("--apps", type=Path, help="application packages: DIR/<application id>/<version>.zip")
    parser.add_argument("--workdir", type=Path, help="where node directories live (default: a temporary folder)")
    parser.add_argument(
        "--allocation-delay",
        type=_seconds(MIN_ALLOCATION_DELAY),
        default=Timings.allocation_delay,
        help=f"seconds before a pool's nodes exist; never instant, at least {MIN_ALLOCATION_DELAY} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--node-start-delay",
        type=_seconds(0.0),
        default=Timings.node_start_delay,
        help="seconds a node takes to boot, 0 or more (default: %(default)s)",
    )
    parser.add_argument("--dedicated-core-quota", type=int, help="dedicated vCPU quota (default: unlimited)")
    parser.add_argument("--spot-core-quota", type=int, help="spot/low-priority vCPU quota (default: unlimited)")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="inject a fault with this probability, repeatable (kinds: " + ", ".join(ALL_KINDS) + ")",
    )
    parser.add_argument("--fault-seed", type=int, help="seed for injected faults (default: random, printed)")
    parser.add_argument(
        "--fault-retry-after",
        type=_seconds(0.0),
        default=FaultPlan.retry_after,
        metavar="SECONDS",
        help="Retry-After sent with injected 429 and 503 answers, in whole seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-latency",
        type=_seconds(0.0),
        default=FaultPlan.latency,
        metavar="SECONDS",
        help="delay added by the latency fault (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-task-error-rate",
        type=_rate,
        default=FaultPlan.task_error_rate,
        metavar="RATE",
        help="task-error: the probability of each task in a chosen addtaskcollection failing (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-operation",
        action="append",
        default=[],
        metavar="TEXT",
        help='only requests whose "METHOD /path" contains TEXT are eligible, repeatable, e.g. "POST /jobs" '
        "(default: all)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log pool, job and task transitions")
    return parser


async def serve(args: argparse.Namespace, faults: FaultPlan | None) -> None:
    """Run until cancelled, printing one line with the endpoint once listening."""
    emulator = Emulator(
        faults=faults,
        host=args.host,
        port=args.port,
        account_name=args.account_name,
        account_key=args.account_key,
        apps_dir=args.apps,
        workdir=args.workdir,
        timings=Timings(allocation_delay=args.allocation_delay, node_start_delay=args.node_start_delay),
        quotas=Quotas(dedicated_cores=args.dedicated_core_quota, low_priority_cores=args.spot_core_quota),
    )
    async with emulator:
        key_note = "the well-known dev key" if args.account_key == DEFAULT_ACCOUNT_KEY else "the key you gave"
        print(
            f"aiobatch emulator listening on {emulator.endpoint} (account {emulator.account_name}, {key_note})",
            flush=True,
        )
        if args.account_key == DEFAULT_ACCOUNT_KEY:
            print(f"account key: {DEFAULT_ACCOUNT_KEY}", flush=True)
        if faults is not None:
            rates = ", ".join(f"{k}={v}" for k, v in faults.rates.items())
            print(f"injecting faults {rates} (seed {faults.seed})", flush=True)
        # SIGINT and SIGTERM both stop the emulator cleanly: running tasks killed, the temporary folder removed.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    if faults is not None:
        print(f"aiobatch emulator stopped: {emulator.ledger.summary()}", flush=True)


def main(argv: Sequence[str] | None = None, prog: str = "python -m aiobatch.emulator") -> int:
    """Parse arguments and serve until Ctrl-C."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    if args.apps is not None and not args.apps.is_dir():
        print(
            f"error: --apps {args.apps}: no such folder (it should hold <application id>/<version>.zip)",
            file=sys.stderr,
        )
        return 2
    tuned = [
        flag
        for flag, value, default in (
            ("--fault-retry-after", args.fault_retry_after, FaultPlan.retry_after),
            ("--fault-latency", args.fault_latency, FaultPlan.latency),
            ("--fault-task-error-rate", args.fault_task_error_rate, FaultPlan.task_error_rate),
            ("--fault-operation", args.fault_operation, []),
        )
        if value != default
    ]
    if tuned and not args.fault:
        print(f"error: {', '.join(tuned)} tune(s) injected faults: give --fault KIND=RATE too", file=sys.stderr)
        return 2
    faults = None
    if args.fault:
        seed = args.fault_seed if args.fault_seed is not None else random.randrange(2**31)
        try:
            faults = FaultPlan.parse(
                args.fault,
                seed=seed,
                retry_after=args.fault_retry_after,
                latency=args.fault_latency,
                task_error_rate=args.fault_task_error_rate,
                operations=tuple(args.fault_operation),
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args, faults))
    return 0


if __name__ == "__main__":
    sys.exit(main())
