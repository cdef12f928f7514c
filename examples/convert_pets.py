#!/usr/bin/env python3
"""Convert pet videos to animated GIFs on Azure Batch (or on the local emulator).

    python examples/convert_pets.py --input videos/ --output gifs/

Every MP4 in --input is uploaded to Blob Storage, converted by one Batch task (ffmpeg from an application
package, on a pool of 3 nodes by default), and its GIF downloaded to --output (NAME.mp4 -> NAME.gif). A summary
table follows; the job, pool and containers this run created are deleted unless --keep is given. Re-running
converts only the videos without a GIF in --output. Ctrl-C stops cleanly and deletes what the run created.

The pool is created for this run. If a pool with --pool-id already exists, the run stops (exit status 2) unless
--reuse-pool is given; a reused pool must reference the ffmpeg application package (checked before any task is
added) and is left as it is afterwards.

Where Batch and Storage are comes from the environment, as for aiobatch.Client.from_env:
AZURE_BATCH_ENDPOINT, AZURE_BATCH_ACCOUNT_NAME, AZURE_BATCH_ACCOUNT_KEY (no key: Entra ID), and
AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL. `nox -s demo` sets them for a local emulator.

Exit status: 0 when every video has its GIF, 1 when some failed, 2 for a usage or setup error (a missing
setting, an existing pool without --reuse-pool, Batch or Storage unreachable), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from azure.core.exceptions import ServiceRequestError

import aiobatch
from aiobatch.demo import gifs
from aiobatch.demo.progress import auto_reporter

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert every MP4 in a folder to an animated GIF with Azure Batch.",
        epilog="Services come from AZURE_BATCH_* and AZURE_STORAGE_* variables (see aiobatch.Client.from_env).",
    )
    parser.add_argument("--input", required=True, type=Path, help="folder of .mp4 videos")
    parser.add_argument("--output", required=True, type=Path, help="folder for the GIFs (created if missing)")
    gif = parser.add_argument_group("GIF")
    gif.add_argument("--fps", type=float, default=12.0, help="GIF frame rate (default: %(default)s)")
    gif.add_argument("--width", type=int, default=480, help="GIF width in pixels (default: %(default)s)")
    pool = parser.add_argument_group("pool")
    pool.add_argument("--pool-id", default="convert-pets", help="pool id (default: %(default)s)")
    pool.add_argument("--vm-size", default="standard_d2s_v3", help="VM size (default: %(default)s)")
    pool.add_argument("--nodes", type=int, default=3, help="dedicated nodes (default: %(default)s)")
    pool.add_argument("--spot-nodes", type=int, default=0, help="spot nodes, cheaper, may be preempted (default: 0)")
    pool.add_argument("--slots-per-node", type=int, default=2, help="conversions at once per node (default: 2)")
    pool.add_argument("--os", choices=("linux", "windows"), default="linux", help="node OS (default: linux)")
    pool.add_argument("--pool-timeout", type=float, default=1800.0, help="seconds to wait for a node (default: 1800)")
    pool.add_argument(
        "--reuse-pool",
        action="store_true",
        help="run on the existing pool --pool-id as it is, if there is one: it must have the ffmpeg application "
        "package, and it is not deleted (default: an existing pool with that id is an error)",
    )
    app = parser.add_argument_group("application package")
    app.add_argument("--app-id", default="ffmpeg", help="application id of the ffmpeg package (default: ffmpeg)")
    app.add_argument(
        "--app-version",
        default="default",
        help="package version (default: the application's default version)",
    )
    storage = parser.add_argument_group("storage and job")
    storage.add_argument("--input-container", default=gifs.DEFAULT_INPUT_CONTAINER, help="(default: %(default)s)")
    storage.add_argument("--output-container", default=gifs.DEFAULT_OUTPUT_CONTAINER, help="(default: %(default)s)")
    storage.add_argument("--job-id", help="job id (default: gifs-<run id>)")
    storage.add_argument("--task-retries", type=int, default=0, help="retries of a failed conversion (default: 0)")
    run = parser.add_argument_group("run")
    run.add_argument("--keep", action="store_true", help="keep the job, pool and containers (default: delete)")
    run.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    run.add_argument("-v", "--verbose", action="store_true", help="log aiobatch's steps (INFO)")
    return parser.parse_args(argv)


async def convert(args: argparse.Namespace) -> int:
    version = None if args.app_version in (None, "default") else args.app_version
    app = aiobatch.AppPackageRef(args.app_id, version)
    pool = gifs.gif_pool_spec(
        args.pool_id,
        app=app,
        os=args.os,
        vm_size=args.vm_size,
        dedicated_nodes=args.nodes,
        spot_nodes=args.spot_nodes,
        task_slots_per_node=args.slots_per_node,
    )
    videos = gifs.find_videos(args.input)
    others = sorted(p.name for p in args.input.iterdir() if p.is_file() and p not in videos)
    found = f"found only {', '.join(others[:5])}{', ...' if len(others) > 5 else ''}" if others else "it is empty"
    if not videos:
        print(
            f"error: no .mp4 files in {args.input} ({found}). Only .mp4 videos are converted: point --input at "
            "the folder that holds them.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if others:
        ignored = gifs.plural(len(others), "file")
        verb = "is" if len(others) == 1 else "are"
        print(f"note: ignoring {ignored} that {verb} not .mp4: {', '.join(others[:5])}", flush=True)
    reporter = auto_reporter(sys.stdout, plain=True if args.plain else None)
    try:
        async with aiobatch.Client.from_env(cleanup=not args.keep) as client:
            report = await gifs.convert_videos(
                client,
                videos,
                args.output,
                pool=pool,
                settings=gifs.GifSettings(fps=args.fps, width=args.width),
                job_id=args.job_id,
                input_container=args.input_container,
                output_container=args.output_container,
                reuse_pool=args.reuse_pool,
                pool_timeout=args.pool_timeout,
                task_retries=args.task_retries,
                reporter=reporter,
            )
            if not args.keep:
                print(f"deleting what run {client.run_id} created", flush=True)
    finally:
        reporter.close()
    if args.keep:
        print(f"kept job {report.job_id}, pool {report.pool_id} and the containers (--keep)")
    return 0 if report.ok else EXIT_FAILED


async def main(args: argparse.Namespace) -> int:
    # Ctrl-C cancels the run; the client deletes what it created (shielded), then we exit with 130.
    # A second Ctrl-C during that cleanup abandons it.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        print("\ninterrupted: stopping and deleting what this run created (Ctrl-C again to abandon)", flush=True)
        loop.remove_signal_handler(signal.SIGINT)
        assert task is not None
        task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt does the job
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await convert(args)
    except asyncio.CancelledError:
        if interrupted:
            print("stopped" + ("" if args.keep else "; what this run created was deleted"), flush=True)
            return EXIT_INTERRUPTED
        raise


def unreachable(exc: BaseException) -> bool:
    """Whether *exc* means no connection could be made at all (refused, no such host), as opposed to a failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ServiceRequestError, ConnectionRefusedError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def setup_error(exc: aiobatch.AiobatchError, args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The one-line message for an error that means the setup is wrong (exit status 2); None for other errors."""
    if isinstance(exc, aiobatch.ConfigurationError):
        if exc.setting == "reuse_pool" and "already exists" in exc.message:
            return (
                f"pool {args.pool_id!r} already exists and this run did not create it. Pass --reuse-pool to run "
                "on it as it is (it must have the ffmpeg application package; it is not deleted afterwards), or "
                "choose another --pool-id."
            )
        if exc.setting == "reuse_pool":
            return exc.message.replace("choose another pool id", "choose another --pool-id").replace(
                "Run without reusing it", "Run without --reuse-pool"
            )
        return exc.message
    if isinstance(exc, aiobatch.ServiceUnavailableError) and unreachable(exc):
        try:
            settings = aiobatch.Settings.from_env(environ)
        except aiobatch.ConfigurationError:
            return None
        if exc.service == "storage":
            endpoint, variables = (
                settings.storage.blob_endpoint,
                "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL",
            )
            what = "Blob Storage"
        else:
            endpoint, variables, what = settings.batch.endpoint, "AZURE_BATCH_ENDPOINT", "Batch"
        return (
            f"cannot reach {what} at {endpoint} (no connection could be made). Check {variables} and the network; "
            "for a local emulator and Azurite, start them first (see docs/emulator.md) or run `nox -s demo`."
        )
    return None


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(aiobatch.RedactingFilter())
    try:
        return asyncio.run(main(args))
    except KeyboardInterrupt:
        print("\nabandoned", file=sys.stderr)
        return EXIT_INTERRUPTED
    except aiobatch.AiobatchError as exc:
        message = setup_error(exc, args, os.environ)
        print(f"error: {message or exc}", file=sys.stderr)
        return EXIT_USAGE if message is not None else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(run())
