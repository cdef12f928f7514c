"""The ``aiobatch`` command: ``aiobatch emulator ...`` and friends; arguments in, library calls out."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: aiobatch <command> [options]

commands:
  emulator    run the local Azure Batch emulator (aiobatch emulator --help)
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
    print(f"aiobatch: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
