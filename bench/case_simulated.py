"""At Azure's scale, simulated: the client through N tasks on M simulated nodes (issue 14).

The emulator runs as its own process with ``--simulate-tasks`` (each task takes a modelled duration, drawn
seeded from a lognormal distribution, instead of starting a process) and a fast ``--clock-speed``, on a pool of M
nodes.  The client, as a user would run it:

1. submits N tasks with ``Client.submit_tasks`` (measured: tasks per second);
2. watches them complete with ``Client.watch_tasks`` in its own process (``python -m bench.case_simulated
   --watch``), which counts events without keeping them (measured: requests per completed task, the watcher's
   peak memory above its start);
3. deletes the job and waits until it is gone (measured: cleanup time).

The emulator's resident memory is read after the submission and at the end (peak).  Each measure is compared
with the same run at 10,000 tasks: the cost per task must not grow with the scale.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch import BatchSettings, Client, StorageSettings, TaskSpec

from ._harness import CaseResult, EmulatorProcess, MiB, Target, fmt, log, stopwatch, vm_hwm

#: Task durations in seconds of the service's time: lognormal around e^4.0 (55 s), as short batch tasks run.
DURATION = "lognormal:4.0,0.5"
#: How much faster than real time the emulated clock runs: a 55-second task takes about 0.1 real seconds.
CLOCK_SPEED = 500
#: The base scale every measure is compared with.
BASE_TASKS = 10_000


def _client(endpoint: str, name: str, key: str) -> Client:
    return Client(
        BatchSettings(endpoint, account_name=name, account_key=key),
        StorageSettings(connection_string="UseDevelopmentStorage=true"),
    )


# -- the watcher process --------------------------------------------------------------------------------------------


async def _watch(args: argparse.Namespace) -> dict[str, Any]:
    events = failed = 0
    async with _client(args.endpoint, args.account, args.key) as client:
        watch = client.watch_tasks(args.job, expected=args.expected, poll_interval=args.poll)
        print("ready", flush=True)
        sys.stdin.readline()  # the parent has started submitting
        async for event in watch:
            events += 1
            failed += event.exit_code not in (0, None)
        return {"events": events, "failed": failed, "requests": watch.requests}


def _watcher_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("endpoint", "account", "key", "job", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args(argv)
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    result = asyncio.run(_watch(args))
    result["seconds"] = time.perf_counter() - t0
    result["peak_rss_delta"] = vm_hwm(os.getpid()) - rss0
    Path(args.out).write_text(json.dumps(result))


# -- one scale ------------------------------------------------------------------------------------------------------


async def _pool_ready(batch: BatchClient, pool_id: str, nodes: int) -> float:
    with stopwatch() as elapsed:
        while True:
            pool = await batch.get_pool(pool_id)
            if str(pool.allocation_state).lower().endswith("steady") and pool.current_dedicated_nodes == nodes:
                counts = [c async for c in batch.list_pool_node_counts()]
                idle = sum(c.dedicated.idle for c in counts if c.pool_id == pool_id and c.dedicated)
                if idle == nodes:
                    return elapsed()
            await asyncio.sleep(0.5)


async def scale(work: Path, *, tasks: int, nodes: int, poll: float = 1.0) -> dict[str, Any]:
    """One run: N tasks on M simulated nodes, on a fresh emulator."""
    with EmulatorProcess(
        work,
        allocation_delay=60,
        node_start_delay=30,
        extra_args=["--simulate-tasks", f"duration={DURATION};seed=7", "--clock-speed", str(CLOCK_SPEED)],
    ) as emu:
        rss0 = emu.rss()
        async with (
            BatchClient(emu.endpoint, emu.credential) as batch,
            _client(emu.endpoint, emu.account_name, emu.account_key) as client,
        ):
            await batch.create_pool(
                m.BatchPoolCreateOptions(
                    id="sim",
                    vm_size="standard_d2s_v3",
                    virtual_machine_configuration=m.VirtualMachineConfiguration(
                        image_reference=m.BatchVmImageReference(
                            publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
                        ),
                        node_agent_sku_id="batch.node.ubuntu 22.04",
                    ),
                    target_dedicated_nodes=nodes,
                )
            )
            ready_s = await _pool_ready(batch, "sim", nodes)
            log(f"  simulated: {nodes:,} nodes idle after {ready_s:.1f} s")
            rss_pool = emu.rss()
            await client.create_job("sim", pool_id="sim")
            out = work / "watch.json"
            watcher = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.case_simulated",
                "--watch",
                "--endpoint",
                emu.endpoint,
                "--account",
                emu.account_name,
                "--key",
                emu.account_key,
                "--job",
                "sim",
                "--expected",
                str(tasks),
                "--poll",
                str(poll),
                "--out",
                str(out),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert watcher.stdin is not None and watcher.stdout is not None
            assert (await watcher.stdout.readline()).strip() == b"ready"
            watcher.stdin.write(b"go\n")
            await watcher.stdin.drain()
            with stopwatch() as to_done:
                specs = (TaskSpec(id=f"t{i:07d}", command_line="simulated") for i in range(tasks))
                with stopwatch() as submitting:
                    result = await client.submit_tasks("sim", specs)
                assert result.ok and len(result.added) == tasks, result
                submit_s = submitting()
                rss_submitted = emu.rss()
                log(f"  simulated: {tasks:,} tasks submitted in {submit_s:.1f} s ({tasks / submit_s:,.0f} tasks/s)")
                await watcher.wait()
                done_s = to_done()
            watched = json.loads(out.read_text())
            assert watched["events"] == tasks, watched
            log(
                f"  simulated: watched {watched['events']:,} completions in {done_s:.1f} s, "
                f"{watched['requests']:,} requests, watcher +{watched['peak_rss_delta'] / MiB:.0f} MiB"
            )
            with stopwatch() as cleaning:
                await client.delete_job("sim", wait=True)
            cleanup_s = cleaning()
            log(f"  simulated: job deleted in {cleanup_s:.1f} s")
        peak = emu.peak_rss()
    return {
        "tasks": tasks,
        "nodes": nodes,
        "pool_ready_s": ready_s,
        "submit_s": submit_s,
        "submit_tasks_per_s": tasks / submit_s,
        "done_s": done_s,
        "completed_tasks_per_s": tasks / done_s,
        "watch_requests": watched["requests"],
        "requests_per_task": watched["requests"] / tasks,
        "watcher_peak_rss_delta": watched["peak_rss_delta"],
        "failed": watched["failed"],
        "emulator_rss_idle": rss0,
        "emulator_rss_pool": rss_pool,
        "emulator_rss_submitted": rss_submitted,
        "emulator_rss_peak": peak,
        "emulator_bytes_per_task": (rss_submitted - rss_pool) / tasks,
        "cleanup_s": cleanup_s,
        "cleanup_us_per_task": cleanup_s / tasks * 1e6,
    }


async def run(work: Path, *, tasks: int = 1_000_000, nodes: int = 5_000, base: int = BASE_TASKS) -> CaseResult:
    """The run at ``base`` tasks, then at ``tasks``, both on ``nodes`` nodes; each measure against the base's."""
    log(f"simulated: {base:,} tasks on {nodes:,} nodes (the base)")
    small = await scale(work / "base", tasks=base, nodes=nodes)
    log(f"simulated: {tasks:,} tasks on {nodes:,} nodes")
    big = await scale(work / "scale", tasks=tasks, nodes=nodes)

    def row(label: str, key: str, unit: str, digits: int = 0, scale_: float = 1.0) -> list[str]:
        a, b = small[key] / scale_, big[key] / scale_
        return [label, f"{fmt(a, digits)} {unit}", f"{fmt(b, digits)} {unit}", f"{b / a:.2f}x" if a else "—"]

    rows = [
        row("submission rate", "submit_tasks_per_s", "tasks/s"),
        row("completion rate (submit to last event)", "completed_tasks_per_s", "tasks/s"),
        row("watch requests per completed task", "requests_per_task", "", 4),
        row("watcher peak memory above its start", "watcher_peak_rss_delta", "MiB", 1, MiB),
        row("emulator memory per task (after submission)", "emulator_bytes_per_task", "KiB", 2, 1024),
        row("emulator peak memory", "emulator_rss_peak", "MiB", 0, MiB),
        row("cleanup (delete the job, wait until gone) per task", "cleanup_us_per_task", "us", 1),
    ]
    per_task_flat = big["requests_per_task"] <= small["requests_per_task"] * 1.1
    memory_flat = big["emulator_bytes_per_task"] <= small["emulator_bytes_per_task"] * 1.25
    rate_flat = big["submit_tasks_per_s"] >= small["submit_tasks_per_s"] * 0.8
    return CaseResult(
        case="simulated",
        title=f"At Azure's scale, simulated: {tasks:,} tasks on {nodes:,} nodes",
        headers=["Measure", f"{base:,} tasks", f"{tasks:,} tasks", "ratio"],
        rows=rows,
        targets=[
            Target(
                "cost per task flat in the scale",
                "requests/task <= 1.1x, emulator memory/task <= 1.25x, submission rate >= 0.8x the base's",
                f"{big['requests_per_task'] / small['requests_per_task']:.2f}x, "
                f"{big['emulator_bytes_per_task'] / small['emulator_bytes_per_task']:.2f}x, "
                f"{big['submit_tasks_per_s'] / small['submit_tasks_per_s']:.2f}x",
                per_task_flat and memory_flat and rate_flat,
            )
        ],
        notes=[
            f"Emulator with --simulate-tasks 'duration={DURATION};seed=7' (about 55 s a task on the service's clock) "
            f"and --clock-speed {CLOCK_SPEED}; one round per scale on a fresh emulator. The watcher is aiobatch's "
            "watch_tasks in its own process, counting events without keeping them."
        ],
        params={"tasks": tasks, "nodes": nodes, "base": base, "clock_speed": CLOCK_SPEED, "duration": DURATION},
        raw={"base": small, "scale": big},
    )


def main(argv: list[str]) -> None:
    """``python -m bench.case_simulated [--tasks N] [--nodes M] [--base B] [--quick]``, or the watcher."""
    if argv[:1] == ["--watch"]:
        _watcher_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.case_simulated")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=5_000)
    parser.add_argument("--base", type=int, default=BASE_TASKS)
    parser.add_argument("--quick", action="store_true", help="100,000 tasks on 1,000 nodes against 10,000")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-simulated"))
    args = parser.parse_args(argv)
    tasks, nodes = (100_000, 1_000) if args.quick else (args.tasks, args.nodes)
    result = asyncio.run(run(args.workdir, tasks=tasks, nodes=nodes, base=args.base))
    print(" | ".join(result.headers))
    for row in result.rows:
        print(" | ".join(row))
    for target in result.targets:
        print(target)
    print(json.dumps(result.raw, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
