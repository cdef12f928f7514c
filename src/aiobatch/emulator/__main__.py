"""``python -m aiobatch.emulator``: run the Batch emulator until interrupted.

The account key comes, first found first, from ``--account-key`` (visible to every user of the machine in
``ps``: kept for compatibility), ``--account-key-file`` (its first line), the ``AIOBATCH_EMULATOR_ACCOUNT_KEY``
environment variable, or else the well-known development key. The variable is the emulator's own, not
``AZURE_BATCH_ACCOUNT_KEY``: a developer who exported a real account's key for the client must not have the
emulator quietly adopt it. A key other than the development key is never printed.

``--cert PATH --key PATH`` (PEM, as Azurite takes them) serve HTTPS; ``--auth entra`` (or ``sharedkey,entra``)
then accepts Entra ID bearer tokens for Batch's audience. Shared Key alone is the default.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import (
    AUTH_MODES,
    BATCH_AUDIENCE,
    DEFAULT_ACCOUNT_KEY,
    DEFAULT_ACCOUNT_NAME,
    Emulator,
    FaultPlan,
    Quotas,
    Simulation,
    Timings,
    check_auth_modes,
    check_pass_env,
    server_ssl_context,
)
from ._clock import check_speed
from ._containers import resolve_runtime
from ._faults import ALL_KINDS
from ._scheduler import MIN_ALLOCATION_DELAY

#: The environment variable the account key may come from (kept out of ``ps``, unlike ``--account-key``).
ACCOUNT_KEY_ENV = "AIOBATCH_EMULATOR_ACCOUNT_KEY"
#: How much of a key file is read: one line of a key, never a whole device or log by mistake.
_KEY_FILE_LIMIT = 4096


class AccountKeyError(ValueError):
    """The account key could not be had from where the user pointed; the message says why and what to do."""


def _checked_key(key: str, source: str) -> str:
    if not key:
        raise AccountKeyError(f"{source}: the key is empty; give the account's base64 key")
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        # The text itself is never echoed: it may be a real secret with a typo.
        raise AccountKeyError(
            f"{source}: the key is not base64 (a Batch account key is base64 text, like the one the Azure portal shows)"
        ) from None
    return key


def _read_key_file(path: Path) -> str:
    """The first line of *path*, stripped; read with a bound, so ``/dev/stdin`` or a pipe works too."""
    source = f"--account-key-file {path}"
    fix = f"write the base64 key on its first line, readable only by you (umask 077; cat > {path})"
    try:
        with open(path, "rb") as f:
            raw = f.readline(_KEY_FILE_LIMIT)
    except FileNotFoundError:
        raise AccountKeyError(f"{source}: no such file; {fix}") from None
    except IsADirectoryError:
        raise AccountKeyError(f"{source}: is a folder, not a file; {fix}") from None
    except OSError as exc:
        raise AccountKeyError(f"{source}: cannot read it ({exc.strerror or exc}); {fix}") from None
    try:
        line = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise AccountKeyError(f"{source}: the first line is not base64 text; {fix}") from None
    if not line:
        raise AccountKeyError(f"{source}: the first line is empty; {fix}")
    return _checked_key(line, source)


def account_key(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The account key and where it came from, first found first.

    ``--account-key``, then ``--account-key-file``, then ``AIOBATCH_EMULATOR_ACCOUNT_KEY``, then the development
    key. Giving both flags is an error rather than a silent choice: one of them is a mistake.

    Raises:
        AccountKeyError: both flags were given, or the key found is empty, unreadable or not base64.
    """
    env = os.environ if environ is None else environ
    if args.account_key is not None and args.account_key_file is not None:
        raise AccountKeyError("give --account-key or --account-key-file, not both (prefer the file: it is not in ps)")
    if args.account_key is not None:
        return _checked_key(args.account_key.strip(), "--account-key"), "--account-key"
    if args.account_key_file is not None:
        return _read_key_file(args.account_key_file), "--account-key-file"
    if ACCOUNT_KEY_ENV in env:
        return _checked_key(env[ACCOUNT_KEY_ENV].strip(), ACCOUNT_KEY_ENV), ACCOUNT_KEY_ENV
    return DEFAULT_ACCOUNT_KEY, "default"


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


def _clock_speed(text: str) -> float:
    """An argparse ``type`` for ``--clock-speed``: a number more than 0."""
    try:
        return check_speed(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number more than 0 (emulated seconds per real second, e.g. 60), not {text!r}"
        ) from None


def _timings(text: str) -> Timings:
    """An argparse ``type`` for ``--timings``: a profile name."""
    try:
        return Timings.named(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _simulation(text: str) -> Simulation:
    """An argparse ``type`` for ``--simulate-tasks``."""
    try:
        return Simulation.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    """An argparse ``type`` for a probability."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _auth_modes(text: str) -> tuple[str, ...]:
    """An argparse ``type`` for ``--auth``: comma-separated modes."""
    try:
        return check_auth_modes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("auth: ")) from None


def build_parser(prog: str = "python -m aiobatch.emulator") -> argparse.ArgumentParser:
    """The emulator's command-line options."""
    parser = argparse.ArgumentParser(prog=prog, description="A local Azure Batch service for development and tests.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--account-name", default=DEFAULT_ACCOUNT_NAME, help="Batch account name")
    key = parser.add_argument_group(
        "account key",
        f"First found: --account-key, --account-key-file, ${ACCOUNT_KEY_ENV}, else the well-known development "
        "key. Prefer the file or the variable: a key on the command line is visible to every user in ps.",
    )
    key.add_argument(
        "--account-key-file",
        type=Path,
        metavar="PATH",
        help="read the base64 account key from the first line of PATH (/dev/stdin works)",
    )
    key.add_argument(
        "--account-key",
        metavar="KEY",
        help="base64 account key; visible in ps to every user of the machine: kept for compatibility, prefer "
        f"--account-key-file or ${ACCOUNT_KEY_ENV}",
    )
    tls = parser.add_argument_group(
        "HTTPS and Entra ID",
        "Serve HTTPS with a PEM certificate and key (clients must trust the certificate), and accept Entra ID "
        f"bearer tokens for {BATCH_AUDIENCE} with --auth entra. Tokens are checked for form, audience and "
        "lifetime, not signature; role assignments are not simulated.",
    )
    tls.add_argument("--cert", type=Path, metavar="PATH", help="TLS certificate (PEM): serve https://")
    tls.add_argument(
        "--key", type=Path, metavar="PATH", help="the TLS certificate's private key (PEM); not the account key"
    )
    tls.add_argument(
        "--node-ca-file",
        type=Path,
        metavar="PATH",
        help="PEM certificates nodes trust (besides the system's) for resource and output files over HTTPS, "
        "e.g. a self-signed Azurite's",
    )
    tls.add_argument(
        "--auth",
        type=_auth_modes,
        default=("sharedkey",),
        metavar="MODES",
        help=f"how clients may authenticate, comma-separated from {','.join(AUTH_MODES)}; entra needs --cert and "
        "--key (default: sharedkey)",
    )
    parser.add_argument("--apps", type=Path, help="application packages: DIR/<application id>/<version>.zip")
    parser.add_argument("--workdir", type=Path, help="where node directories live (default: a temporary folder)")
    parser.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="give tasks this variable of the emulator's environment, repeatable (default: none; a task gets a "
        "node's environment, never the emulator's)",
    )
    parser.add_argument(
        "--timings",
        type=_timings,
        default=Timings.fast(),
        metavar="PROFILE",
        help=f"how long allocation, boot, dispatch and deletion take: {' or '.join(Timings.NAMES)} (about as long "
        "as on Azure: pools in ~2 minutes) (default: fast)",
    )
    parser.add_argument(
        "--allocation-delay",
        type=_seconds(MIN_ALLOCATION_DELAY),
        default=None,
        help=f"seconds before a pool's nodes exist; never instant, at least {MIN_ALLOCATION_DELAY} "
        f"(default: the profile's, {Timings.allocation_delay} for fast)",
    )
    parser.add_argument(
        "--node-start-delay",
        type=_seconds(0.0),
        default=None,
        help=f"seconds a node takes to boot, 0 or more (default: the profile's, {Timings.node_start_delay} for fast)",
    )
    parser.add_argument(
        "--clock-speed",
        type=_clock_speed,
        default=1.0,
        metavar="N",
        help="run the emulated service's clock N times faster than real time (more than 0): timestamps advance "
        "N x faster and every duration (retention, wall-clock limits, autoscale intervals, the timings) takes "
        "1/N of its real time (default: 1)",
    )
    parser.add_argument(
        "--simulate-tasks",
        type=_simulation,
        default=None,
        metavar="MODEL",
        help="simulate tasks instead of running processes: 'duration=KIND:PARAMS;fail=RATE;exit=CODE;seed=N' "
        "(KIND fixed:S, uniform:LOW,HIGH, lognormal:MU,SIGMA, exponential:MEAN; '' for no time and success); a "
        "task's AZ_SIM_DURATION and AZ_SIM_EXIT environment settings override the draws",
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
    parser.add_argument(
        "--any-vm-size",
        action="store_true",
        help="accept any VM size and image (custom images, sizes the catalogue does not list); by default a pool "
        "must use a size and a supported image of the emulator's catalogue, as on Azure",
    )
    parser.add_argument(
        "--container-runtime",
        metavar="RUNTIME",
        help="run tasks' containerSettings through this container runtime (docker, podman or a path); without it "
        "container tasks and pools are refused",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log pool, job and task transitions")
    return parser


def _chosen_timings(args: argparse.Namespace) -> Timings:
    """The ``--timings`` profile with ``--allocation-delay`` and ``--node-start-delay`` applied over it."""
    timings: Timings = args.timings
    if args.allocation_delay is not None:
        timings = dataclasses.replace(timings, allocation_delay=args.allocation_delay)
    if args.node_start_delay is not None:
        timings = dataclasses.replace(timings, node_start_delay=args.node_start_delay)
    return timings


async def serve(
    args: argparse.Namespace, faults: FaultPlan | None, key: str = DEFAULT_ACCOUNT_KEY, key_source: str = "default"
) -> None:
    """Run until cancelled, printing one line with the endpoint once listening."""
    emulator = Emulator(
        faults=faults,
        host=args.host,
        port=args.port,
        account_name=args.account_name,
        account_key=key,
        pass_env=args.pass_env,
        apps_dir=args.apps,
        workdir=args.workdir,
        timings=_chosen_timings(args),
        clock_speed=args.clock_speed,
        simulate_tasks=args.simulate_tasks,
        quotas=Quotas(dedicated_cores=args.dedicated_core_quota, low_priority_cores=args.spot_core_quota),
        strict_catalogue=not args.any_vm_size,
        ssl_cert=args.cert,
        ssl_key=args.key,
        node_ca_file=args.node_ca_file,
        auth=args.auth,
        container_runtime=args.container_runtime,
    )
    async with emulator:
        # Only the development key is ever printed: it is public. Any other key is the user's secret.
        key_note = "the well-known dev key" if key == DEFAULT_ACCOUNT_KEY else f"the key you gave, from {key_source}"
        if "sharedkey" not in emulator.auth:
            key_note = "Shared Key off"
        if "entra" in emulator.auth:
            key_note += f"; Entra ID bearer tokens for {BATCH_AUDIENCE}"
        print(
            f"aiobatch emulator listening on {emulator.endpoint} (account {emulator.account_name}, {key_note})",
            flush=True,
        )
        if key == DEFAULT_ACCOUNT_KEY and "sharedkey" in emulator.auth:
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
    try:
        key, key_source = account_key(args)
    except AccountKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        check_pass_env(args.pass_env)
    except ValueError as exc:
        # NAME=VALUE is refused on purpose: a value on the command line shows in ps, and a value every task
        # needs belongs in the job's commonEnvironmentSettings.
        print(
            f"error: --pass-env {exc.args[0].removeprefix('pass_env: ')}; export the variable and give its name, "
            "or set it for every task of a job with commonEnvironmentSettings",
            file=sys.stderr,
        )
        return 2
    if (args.cert is None) != (args.key is None):
        print("error: --cert and --key go together: give both to serve HTTPS, or neither", file=sys.stderr)
        return 2
    if "entra" in args.auth and args.cert is None:
        print(
            "error: --auth entra needs HTTPS: give --cert and --key (PEM); bearer tokens are never accepted over "
            "plain HTTP",
            file=sys.stderr,
        )
        return 2
    if args.cert is not None:
        try:
            server_ssl_context(args.cert, args.key)  # refuse a bad pair now, with exit 2, not a traceback later
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.container_runtime is not None:
        try:
            resolve_runtime(args.container_runtime)
        except ValueError as exc:
            print(f"error: --container-runtime: {exc}", file=sys.stderr)
            return 2
    if args.node_ca_file is not None and not args.node_ca_file.is_file():
        print(f"error: --node-ca-file {args.node_ca_file}: no such file (give PEM certificates)", file=sys.stderr)
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
        asyncio.run(serve(args, faults, key, key_source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
