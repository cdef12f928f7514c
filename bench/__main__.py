"""``python -m bench``: run the benchmark cases, write ``bench/results/*.json`` and the markdown table.

    python -m bench                 # every case, full size (about 7 minutes on 2 cores)
    python -m bench --quick         # smaller sizes, fewer rounds (under 2 minutes)
    python -m bench --only submit,monitor
    python -m bench --render        # rewrite the tables from bench/results/*.json

A case that fails is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from . import case_e2e, case_monitor, case_scale, case_submit, case_upload
from ._harness import CASE_ORDER, ROOT, CaseResult, MiB, log, machine_info, source_version, write_case, write_tables


@dataclass(frozen=True)
class Sizes:
    """How big each case runs."""

    small_files: int
    large_files: int
    large_size: int
    upload_rounds: int
    latency_rounds: int
    submit_tasks: int
    submit_rounds: int
    submit_slow_rounds: int
    submit_slow_tasks: int
    monitor_tasks: int
    videos: int
    video_seconds: float
    e2e_rounds: int
    scale_tasks: int


FULL = Sizes(1000, 4, 256 * MiB, 3, 2, 10_000, 11, 2, 2_000, 10_000, 24, 12.0, 2, 100_000)
QUICK = Sizes(300, 2, 64 * MiB, 1, 1, 10_000, 3, 1, 1_000, 3_000, 24, 6.0, 1, 20_000)


def _cases(work: Path, sizes: Sizes) -> dict[str, Callable[[], Awaitable[CaseResult]]]:
    return {
        "upload": lambda: case_upload.run(
            work / "upload",
            small=sizes.small_files,
            large=sizes.large_files,
            large_size=sizes.large_size,
            rounds=sizes.upload_rounds,
            latency_rounds=sizes.latency_rounds,
            concurrency=8,
            rtt=0.02,
        ),
        "submit": lambda: _with_emulator(work / "submit", sizes),
        "monitor": lambda: case_monitor.run(work / "monitor", tasks=sizes.monitor_tasks, poll=1.0),
        "e2e": lambda: case_e2e.run(
            work / "e2e", videos=sizes.videos, seconds=sizes.video_seconds, rounds=sizes.e2e_rounds
        ),
        "scale": lambda: case_scale.run(work / "scale", tasks=sizes.scale_tasks),
    }


async def _with_emulator(work: Path, sizes: Sizes) -> CaseResult:
    from ._harness import EmulatorProcess

    with EmulatorProcess(work) as emu:
        return await case_submit.run(
            emu,
            tasks=sizes.submit_tasks,
            rounds=sizes.submit_rounds,
            slow_rounds=sizes.submit_slow_rounds,
            concurrency=4,
            slow_tasks=sizes.submit_slow_tasks,
        )


async def main(argv: list[str]) -> int:
    """Run the chosen cases one after another; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds")
    parser.add_argument("--only", default=",".join(CASE_ORDER), help=f"cases to run, of {', '.join(CASE_ORDER)}")
    parser.add_argument("--workdir", type=Path, help="where inputs and services' files go (default: a temp dir)")
    parser.add_argument("--render", action="store_true", help="only rewrite the tables from bench/results/*.json")
    args = parser.parse_args(argv)
    if args.render:
        print(write_tables())
        return 0
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CASE_ORDER))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASE_ORDER)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="aiobatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # `python -m bench.case_monitor` runs from the root
    cases = _cases(work, QUICK if args.quick else FULL)
    failed: list[str] = []
    started = time.perf_counter()
    version = source_version()  # once: the code is imported now, whatever lands in the tree meanwhile
    try:
        for name in [c for c in CASE_ORDER if c in chosen]:
            run = {**machine_info(version), "quick": args.quick}
            log(f"== {name} (load average {run['load_average'][0]})")
            t0 = time.perf_counter()
            try:
                result = await cases[name]()
            except Exception:
                traceback.print_exc()
                failed.append(name)
                log(f"== {name} FAILED; its earlier results are kept")
                continue
            result.seconds = time.perf_counter() - t0
            run["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            write_case(result, run)
            log(f"== {name} done in {result.seconds:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(write_tables())
    log(f"all done in {time.perf_counter() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
