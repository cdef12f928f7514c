"""The ``aiobatch`` command: ``aiobatch emulator ...`` and friends; arguments in, library calls out."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

USAGE = """usage: aiobatch <command> [options]

commands:
  emulator    run the local Azure Batch emulator (aiobatch emulator --help)
  cleanup     delete what a run left behind, found by its run id (aiobatch cleanup --help)
"""

CLEANUP_HELP = """\
Delete every Batch job and pool and every storage container tagged with a run id: what a client that died
(killed, crashed, its machine lost) left behind. Nothing without exactly that run id is touched. The run id is in
the client's log ("aiobatch client open (run ...)") and in the metadata of what it created.

Settings come from the environment, as for Client.from_env: AZURE_BATCH_ENDPOINT, AZURE_BATCH_ACCOUNT_NAME,
AZURE_BATCH_ACCOUNT_KEY (or Entra ID without a key), and AZURE_STORAGE_CONNECTION_STRING or
AZURE_STORAGE_ACCOUNT_URL.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "emulator":
        from .emulator.__main__ import main as emulator_main

        return emulator_main(rest, prog="aiobatch emulator")
    if command == "cleanup":
        return cleanup_main(rest)
    print(f"aiobatch: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def cleanup_main(argv: Sequence[str]) -> int:
    """``aiobatch cleanup --run-id ID [--dry-run]``: sweep a run (see `aiobatch.Client.sweep_run`).

    Prints one line per resource found (``job <id>``, ``pool <id>``, ``container <name>``), then what was done.
    Exit status: 0 when the run is swept (or, with ``--dry-run``, listed), 1 when something could not be
    deleted, 2 for bad arguments or settings.
    """
    parser = argparse.ArgumentParser(
        prog="aiobatch cleanup", description=CLEANUP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-id", required=True, help="the run whose resources to delete")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    parser.add_argument(
        "--no-wait", dest="wait", action="store_false", help="return once deletions are accepted, not done"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for deletions to finish (default 600)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    options = parser.parse_args(list(argv))
    logging.basicConfig(level=logging.INFO if options.verbose else logging.WARNING, format="%(message)s")

    import anyio

    from ._cleanup import check_run_id
    from ._client import Client
    from ._errors import AiobatchError, ConfigurationError

    try:
        check_run_id(options.run_id)
        client = Client.from_env()
    except ConfigurationError as exc:
        print(f"aiobatch cleanup: {exc}", file=sys.stderr)
        return 2

    async def sweep() -> int:
        async with client:
            report = await client.sweep_run(
                options.run_id, dry_run=options.dry_run, wait=options.wait, timeout=options.timeout
            )
        for line in report.found.lines():
            print(line)
        found = report.found
        if found.empty:
            dry = " (dry run)" if report.dry_run else ""
            print(f"run {options.run_id}: nothing tagged with this run id; nothing to delete{dry}")
        elif report.dry_run:
            print(f"run {options.run_id}: would delete {found.summary()} (dry run: nothing deleted)")
        else:
            print(f"run {options.run_id}: deleted {found.summary()} in {report.elapsed:.1f} s")
        return 0

    try:
        return anyio.run(sweep)
    except ConfigurationError as exc:
        print(f"aiobatch cleanup: {exc}", file=sys.stderr)
        return 2
    except AiobatchError as exc:
        print(f"aiobatch cleanup: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aiobatch cleanup: interrupted; run it again to finish", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
