"""``python -m bench``: run the benchmark cases, write ``bench/results/*.json`` and the markdown table.

    python -m bench                 # every case, full size, 3 rounds or more (about 11 minutes on 2 cores)
    python -m bench --quick         # smaller sizes, fewer rounds (under 2 minutes), into build/bench-quick/
    python -m bench --only submit,monitor
    python -m bench --render        # rewrite the tables from bench/results/*.json

A ``--quick`` pass writes its JSON and ``results.md`` under ``build/bench-quick/`` and leaves the full run's
results (``bench/results/``, the table in ``docs/benchmarks.md``) as they are.

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

from . import (
    case_e2e,
    case_fanout,
    case_monitor,
    case_scale,
    case_scheduler,
    case_simulated,
    case_submit,
    case_upload,
)
from ._harness import (
    CASE_ORDER,
    QUICK_RESULTS_DIR,
    RESULTS_DIR,
    ROOT,
    CaseResult,
    MiB,
    log,
    machine_info,
    source_version,
    write_case,
    write_tables,
)


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
    monitor_rounds: int
    videos: int
    video_seconds: float
    e2e_rounds: int
    scale_tasks: int
    scale_rounds: int
    fanout_inputs: int
    fanout_rounds: int
    scheduler_tasks: int = 10_000
    scheduler_polls: int = 500
    scheduler_rounds: int = 3
    #: Simulated tasks and nodes (issue 14: 1,000,000 on 5,000), each measure against the run at 10,000 tasks.
    simulated_tasks: int = 1_000_000
    simulated_nodes: int = 5_000


# The full run: every variant of every case in at least 3 rounds. Per round on 2 cores (from the rounds of a full
# run): upload 36 s on loopback + 35 s through the relay; submit 18 s while the slow variants run (one call per
# task is 15 s of it), 1 s after; monitor 35 s a watcher; end to end 57 s; scale 10 s. In all: 215 + 62 + 210
# + 172 + 30 s, about 11.5 minutes on a quiet machine. The fan-out case adds about 150 s a round (both variants,
# 1,000 tasks each, measured under a load average of 5): 7.5 minutes more. Quick runs it at full size, once.
FULL = Sizes(1000, 4, 256 * MiB, 3, 3, 10_000, 11, 3, 10_000, 10_000, 3, 24, 12.0, 3, 100_000, 3, 1000, 3)
# Quick: one round of each, smaller; one call per task sends 1,000 tasks (the notes say so).
QUICK = Sizes(
    300, 2, 64 * MiB, 1, 1, 10_000, 3, 1, 1_000, 3_000, 1, 24, 6.0, 1, 20_000, 1, 1000, 1,
    scheduler_polls=200, scheduler_rounds=1, simulated_tasks=100_000, simulated_nodes=1_000,
)  # fmt: skip


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
        "monitor": lambda: case_monitor.run(
            work / "monitor", tasks=sizes.monitor_tasks, rounds=sizes.monitor_rounds, poll=1.0
        ),
        "e2e": lambda: case_e2e.run(
            work / "e2e", videos=sizes.videos, seconds=sizes.video_seconds, rounds=sizes.e2e_rounds
        ),
        "scale": lambda: case_scale.run(work / "scale", tasks=sizes.scale_tasks, rounds=sizes.scale_rounds),
        "fanout": lambda: case_fanout.run(work / "fanout", inputs=sizes.fanout_inputs, rounds=sizes.fanout_rounds),
        "scheduler": lambda: case_scheduler.run(
            work / "scheduler",
            tasks=sizes.scheduler_tasks,
            polls=sizes.scheduler_polls,
            rounds=sizes.scheduler_rounds,
        ),
        "simulated": lambda: case_simulated.run(
            work / "simulated", tasks=sizes.simulated_tasks, nodes=sizes.simulated_nodes
        ),
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
    parser.add_argument(
        "--results",
        type=Path,
        help="where the JSON and results.md go (default: bench/results, or build/bench-quick with --quick); "
        "the docs' table follows bench/results only",
    )
    parser.add_argument("--render", action="store_true", help="only rewrite the tables from the results' JSON")
    args = parser.parse_args(argv)
    results_dir = (args.results or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)).resolve()
    if args.render:
        print(write_tables(results_dir))
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
            write_case(result, run, results_dir)
            log(f"== {name} done in {result.seconds:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(write_tables(results_dir))
    if results_dir != RESULTS_DIR.resolve():
        log(f"results in {results_dir}; bench/results/ and the docs' table are unchanged")
    log(f"all done in {time.perf_counter() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
