"""The ``aiobatch`` command: ``aiobatch emulator ...`` and friends; arguments in, library calls out."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

USAGE = """usage: aiobatch <command> [options]

commands:
  emulator    run the local Azure Batch emulator (aiobatch emulator --help)
  cleanup     delete what a run left behind, found by its run id (aiobatch cleanup --help)
  local       the Batch emulator and Azurite for your own code, or around a command (aiobatch local --help)
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
    if command == "local":
        return local_main(rest)
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

    from ._client import Client
    from ._errors import AiobatchError, ConfigurationError
    from ._run import check_run_id

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


LOCAL_HELP = """\
Start the Batch emulator and Azurite (Blob Storage) on loopback for your own code; stop both on the way out.

Without a command: print the AZURE_* variables that aiobatch.Client.from_env reads as `export` lines on stdout
(status lines go to stderr) -- paste them into another shell, or give --env-file PATH and source that file
(`set -a; . PATH; set +a`) -- then run until Ctrl-C or SIGTERM.

With `-- COMMAND [ARGS...]`: run the command with those variables set (the rest of the environment kept), stop
both services when it ends, and exit with its status (128 + the signal's number if a signal ended it). SIGTERM,
SIGHUP, and SIGINT not sent by the terminal (which sends Ctrl-C to the command itself) are passed on to the
command; a second signal kills it.

Either way nothing is left running: the emulator's task processes and Azurite stop with it, and (on Linux) what
the command left running in the background is ended too (SIGTERM, then SIGKILL). Nothing is built
unless asked: application packages come from --apps DIR (DIR/<application id>/<version>.zip); --with-ffmpeg
adds the demo's ffmpeg package (built from the pip-installed binary, ~80 MB, once per folder).
"""


def local_main(argv: Sequence[str]) -> int:
    """``aiobatch local [options] [-- COMMAND [ARGS...]]``: the local services, for a shell or around a command.

    Exit status: the command's (128 + N when signal N ended it); without a command 0 once stopped by a signal;
    1 when the services could not start; 2 for bad arguments.
    """
    args = list(argv)
    command: list[str] | None = None
    if "--" in args:
        at = args.index("--")
        args, command = args[:at], args[at + 1 :]
    parser = argparse.ArgumentParser(
        prog="aiobatch local",
        usage="%(prog)s [options] [-- COMMAND [ARGS...]]",
        description=LOCAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--apps", type=Path, metavar="DIR", help="application packages: DIR/<id>/<version>.zip")
    parser.add_argument(
        "--with-ffmpeg",
        action="store_true",
        help="build the ffmpeg application package (the GIF demo's) into --apps DIR, or a temporary folder",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="also write the variables to PATH as a dotenv file (NAME=value lines, readable by you only)",
    )
    parser.add_argument("--workdir", type=Path, metavar="DIR", help="where the emulator keeps node directories")
    parser.add_argument("-v", "--verbose", action="store_true", help="log pool, job and task transitions")
    options = parser.parse_args(args)
    if command is not None and not command:
        parser.error("no command after --")
    if options.apps is not None and not options.apps.is_dir():
        parser.error(f"--apps {options.apps}: no such folder (it should hold <application id>/<version>.zip)")
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr
    )

    import anyio

    try:
        return anyio.run(_run_local, options, command)
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 128 + signal.SIGINT


async def _run_local(options: argparse.Namespace, command: list[str] | None) -> int:
    import anyio
    import anyio.abc
    import anyio.to_thread

    from ._errors import AiobatchError
    from .local import CONFLICTING_VARIABLES, LocalBatch

    def say(line: str) -> None:
        print(f"aiobatch local: {line}", file=sys.stderr, flush=True)

    local = LocalBatch(apps_dir=options.apps, workdir=options.workdir, ffmpeg=options.with_ffmpeg)
    _adopt_orphans()
    received: list[int] = []
    process: anyio.abc.Process | None = None
    status = 0

    async def run() -> int:
        nonlocal process
        say(
            "starting the Batch emulator and Azurite" + (", building the ffmpeg package" if options.with_ffmpeg else "")
        )
        try:
            await local.start()
        except AiobatchError as exc:
            say(f"could not start: {exc}")
            return 1
        try:
            environ = local.environ
            assert local.azurite is not None
            say(f"Batch emulator on {environ['AZURE_BATCH_ENDPOINT']}, Azurite on {local.azurite.blob_endpoint}")
            if local.apps_dir is not None:
                say(f"application packages from {local.apps_dir}")
            if options.env_file is not None:
                _write_env_file(options.env_file, environ)
                say(f"wrote the variables to {options.env_file}")
            if command is None:
                for name in CONFLICTING_VARIABLES:
                    if name in os.environ:
                        print(f"unset {name}", flush=True)
                for name, value in environ.items():
                    print(f"export {name}={shlex.quote(value)}", flush=True)
                say("running until Ctrl-C")
                await anyio.sleep_forever()
                return 0
            env = {k: v for k, v in os.environ.items() if k not in CONFLICTING_VARIABLES}
            try:
                process = await anyio.open_process(
                    command, env={**env, **environ}, stdin=None, stdout=None, stderr=None
                )
            except OSError as exc:
                say(f"cannot run {command[0]!r}: {exc.strerror or exc}")
                return 126 if isinstance(exc, PermissionError) else 127  # as a shell reports it
            code = await process.wait()
            return 128 - code if code < 0 else code  # -N: ended by signal N; a shell says 128 + N
        finally:
            if process is not None and process.returncode is None:  # cancelled while it was starting
                with anyio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
            say("stopping")
            await local.stop()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_end_leftovers, say)

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, *_HANGUP) as signals:
        async with anyio.create_task_group() as group:

            async def listen() -> None:
                async for signum in signals:
                    received.append(signum)
                    if process is None or process.returncode is not None:
                        group.cancel_scope.cancel()  # no command to hand it to: stop (starting, or serving a shell)
                    elif len(received) > 1:
                        say(f"{signal.Signals(signum).name} again: killing the command")
                        process.kill()
                    elif signum != signal.SIGINT or not _terminal_sends_sigint_to(os.getpgrp()):
                        process.send_signal(signum)

            group.start_soon(listen)
            try:
                status = await run()
            finally:
                group.cancel_scope.cancel()  # stop listening
    if command is not None and process is None and received:
        return 128 + received[0]  # stopped before the command started
    return status


def _adopt_orphans() -> bool:
    """On Linux, become the parent of orphaned descendants (``PR_SET_CHILD_SUBREAPER``); tell whether it worked.

    A command that leaves something running in the background (``sh -c 'server & ...'``, a killed shell's
    children) would leave it to init; as their subreaper, `_end_leftovers` can still find and end it.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # 36: PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _end_leftovers(say: Callable[[str], None], *, grace: float = 5.0) -> None:
    """End what still runs below this process once the services have stopped: SIGTERM, then SIGKILL (blocking)."""
    import time

    from ._processes import child_processes

    left = [pid for pid, _ in child_processes()]
    if left:
        say(f"ending {len(left)} process(es) left running: {', '.join(map(str, left))}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while {pid for pid, _ in child_processes()} & set(left) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, _ in child_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # Reap the orphans adopted meanwhile (ours alone now: the command and the services were waited for already).
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


#: SIGHUP where the platform has it: a closed terminal is passed on to the command like SIGTERM.
_HANGUP = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()


def _terminal_sends_sigint_to(group: int) -> bool:
    """Whether *group* is the foreground process group of our terminal: Ctrl-C there reaches every member."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == group:
                return True
        except OSError:
            continue
    return False


def _write_env_file(path: Path, environ: dict[str, str]) -> None:
    """Write NAME=value lines (values shell-quoted where needed), readable and writable by the owner only."""
    text = "".join(f"{name}={shlex.quote(value)}\n" for name, value in environ.items())
    # Created 0600 (it holds account keys, development ones though they are); an existing file is narrowed first.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
