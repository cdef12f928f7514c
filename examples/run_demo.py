#!/usr/bin/env python3
"""The one-command demo (`nox -s demo`): convert_pets.py against a local Batch emulator and Azurite.

    python examples/run_demo.py                                  # sample videos
    python examples/run_demo.py --input DIR --output DIR         # your own videos

It starts the emulator and Azurite, builds and registers the ffmpeg application package from the pip-installed
binary, runs convert_pets.py on the videos, checks that every GIF decodes and has the right size, stops
everything and checks that no pool, job, container or process is left. Arguments after `--` go to
convert_pets.py (e.g. `-- --keep --fps 8`).

The ffmpeg application package (~80 MB, built once) and the sample videos are cached in build/demo/ of this
checkout (--cache-dir), never beside --output, which may be a folder of your own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio

from aiobatch.demo.gifs import plural
from aiobatch.demo.run import run_demo

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / "build" / "demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, help="folder of .mp4 videos (default: sample videos)")
    parser.add_argument("--output", type=Path, default=Path("build/demo/gifs"), help="GIF folder (%(default)s)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=CACHE,
        help="where the ffmpeg application package (apps/) and the sample videos (videos/) are kept between "
        "runs, never beside --output (default: %(default)s)",
    )
    parser.add_argument("--width", type=int, default=480, help="GIF width (default: %(default)s)")
    parser.add_argument("script_args", nargs="*", help="more arguments for convert_pets.py (after --)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        result = anyio.run(
            lambda: run_demo(
                HERE / "convert_pets.py",
                input_dir=args.input,
                output_dir=args.output.resolve(),
                cache_dir=args.cache_dir.resolve(),
                script_args=args.script_args,
                width=args.width,
            )
        )
    except KeyboardInterrupt:  # before or after the script ran; the services were stopped on the way out
        print("demo interrupted; the emulator and Azurite were stopped", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    for problem in result.problems:
        print(f"demo: {problem}", file=sys.stderr)
    if result.ok:
        print(
            f"demo OK in {elapsed:.0f} s: {plural(len(result.gifs), 'GIF')} decoded in {args.output.resolve()}; "
            "no pool, job, container or process left behind"
        )
        return 0
    print(f"demo FAILED (convert_pets.py exit status {result.exit_code}) after {elapsed:.0f} s", file=sys.stderr)
    return result.exit_code or 1


if __name__ == "__main__":
    sys.exit(main())
