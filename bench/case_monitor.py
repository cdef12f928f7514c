"""Monitoring: 10,000 tasks completing over time, watched by aiobatch and by a loop that gets each task.

Round by round, each watcher watches its own job of *tasks* tasks (which of the two goes first alternates);
the table shows the medians of the rounds, and the ranges of the measures the targets judge.

Each watcher runs in its own process (``python -m bench.case_monitor``), so its peak memory is its own: the
parent starts it, waits until it is ready, submits the tasks, then tells it to go. The watcher writes, per
task, the wall-clock time its completion was seen, and the requests it sent. The parent then reads each task's
``executionInfo.endTime`` and reports the delay from a task's end to its event.

- aiobatch: ``Client.watch_tasks`` (task counts each poll; a filtered, selected listing when they moved);
- the loop: every poll interval, ``get_task`` for each task not yet seen complete.

The emulator runs the tasks (``/bin/true``) as local processes on a pool of a few nodes; completions come at
the emulator's pace (a few hundred a second here).
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

from aiobatch import BatchSettings, Client, PoolSpec, StorageSettings, TaskSpec
from aiobatch._specs import to_pool_model

from ._harness import ROOT, CaseResult, EmulatorProcess, Series, Target, fmt, log, median, percentile, vm_hwm

NODES, SLOTS = 4, 4


def _client(endpoint: str, name: str, key: str) -> Client:
    return Client(
        BatchSettings(endpoint, account_name=name, account_key=key),
        StorageSettings(connection_string="UseDevelopmentStorage=true"),
    )


async def _watch_aiobatch(args: argparse.Namespace, seen: dict[str, float]) -> int:
    async with _client(args.endpoint, args.account, args.key) as client:
        watch = client.watch_tasks(args.job, expected=args.expected, poll_interval=args.poll)
        _ready_then_go()
        async for event in watch:
            seen[event.task_id] = time.time()
        return watch.requests


async def _watch_loop(args: argparse.Namespace, seen: dict[str, float]) -> int:
    from azure.core.credentials import AzureNamedKeyCredential

    requests = 0
    async with BatchClient(args.endpoint, AzureNamedKeyCredential(args.account, args.key)) as batch:
        _ready_then_go()
        pending = [f"task-{i:05d}" for i in range(args.expected)]
        while pending:
            still = []
            for task_id in pending:
                requests += 1
                task = await batch.get_task(args.job, task_id)
                if str(task.state).lower().endswith("completed"):
                    seen[task_id] = time.time()
                else:
                    still.append(task_id)
            pending = still
            if pending:
                await asyncio.sleep(args.poll)
    return requests


def _ready_then_go() -> None:
    print("ready", flush=True)
    sys.stdin.readline()  # the parent has submitted the tasks


def _watcher_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("variant", "endpoint", "account", "key", "job", "out"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args(argv)
    seen: dict[str, float] = {}
    watch = _watch_aiobatch if args.variant == "aiobatch" else _watch_loop
    rss0 = psutil.Process().memory_info().rss
    started = time.time()
    requests = asyncio.run(watch(args, seen))
    result = {
        "requests": requests,
        "seen": seen,
        "started": started,
        "peak_rss_delta": vm_hwm(os.getpid()) - rss0,
    }
    Path(args.out).write_text(json.dumps(result))


async def _pool_ready(batch: BatchClient, pool_id: str) -> None:
    while True:
        nodes = [n async for n in batch.list_nodes(pool_id)]
        if len(nodes) == NODES and all(str(n.state).lower().endswith("idle") for n in nodes):
            return
        await asyncio.sleep(0.2)


async def _one(
    emu: EmulatorProcess, batch: BatchClient, work: Path, variant: str, tasks: int, poll: float, round_: int
) -> dict[str, Any]:
    job = f"watch-{variant}-{round_}"
    out = work / f"{job}.json"
    await batch.create_job(m.BatchJobCreateOptions(id=job, pool_info=m.BatchPoolInfo(pool_id="monitor")))
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.case_monitor", "--variant", variant, "--endpoint", emu.endpoint,
        "--account", emu.account_name, "--key", emu.account_key, "--job", job, "--out", str(out),
        "--expected", str(tasks), "--poll", str(poll),
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert watcher.stdin is not None and watcher.stdout is not None
    assert (await watcher.stdout.readline()).strip() == b"ready"
    async with _client(emu.endpoint, emu.account_name, emu.account_key) as client:
        specs = [TaskSpec(id=f"task-{i:05d}", command_line="/bin/true") for i in range(tasks)]
        submitted = time.time()
        (await client.submit_tasks(job, specs, final=False)).raise_for_failures()
    watcher.stdin.write(b"go\n")
    await watcher.stdin.drain()
    log(f"  monitor {variant}: {tasks:,} tasks submitted, watching")
    assert await watcher.wait() == 0, f"the {variant} watcher failed"
    result = json.loads(out.read_text())
    ends: dict[str, float] = {}
    async for task in batch.list_tasks(job, select=["id", "executionInfo"], max_results=1000):
        assert task.execution_info is not None and task.execution_info.end_time is not None
        ends[task.id] = task.execution_info.end_time.timestamp()
    seen: dict[str, float] = result["seen"]
    assert len(seen) == tasks == len(ends), (variant, len(seen), len(ends))
    delays = [seen[t] - ends[t] for t in ends]
    await batch.begin_delete_job(job)  # the next round's job starts with an emulator that holds no finished tasks
    return {
        "requests": result["requests"],
        "requests_per_task": result["requests"] / tasks,
        "delay_median": median(delays),
        "delay_p95": percentile(delays, 95),
        "delay_max": max(delays),
        "peak_rss_delta_mib": result["peak_rss_delta"] / 2**20,
        "duration": max(ends.values()) - submitted,
        "completions_per_s": tasks / (max(ends.values()) - min(ends.values())),
    }


async def run(work: Path, *, tasks: int, rounds: int, poll: float) -> CaseResult:
    """Watch *tasks* tasks complete with aiobatch and with the get-each-task loop, in each of *rounds* rounds."""
    variants = ("aiobatch", "loop")
    per_round: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with EmulatorProcess(work / "emulator") as emu:
        async with BatchClient(emu.endpoint, emu.credential) as batch:
            spec = PoolSpec(
                id="monitor",
                vm_size="standard_d4s_v3",
                image_publisher="canonical",
                image_offer="ubuntu-24_04-lts",
                image_sku="server",
                node_agent_sku_id="batch.node.ubuntu 24.04",
                dedicated_nodes=NODES,
                task_slots_per_node=SLOTS,
            )
            await batch.create_pool(to_pool_model(spec))
            await _pool_ready(batch, "monitor")
            for r in range(rounds):
                log(f"monitor round {r + 1}/{rounds}")
                for variant in variants if r % 2 == 0 else variants[::-1]:
                    per_round[variant].append(await _one(emu, batch, work, variant, tasks, poll, r))
                    log(f"  monitor {variant}: {per_round[variant][-1]}")

    def series(variant: str, key: str) -> Series:
        return Series("", [x[key] for x in per_round[variant]])

    names = {"aiobatch": "aiobatch `watch_tasks`", "loop": "loop of `get_task` per pending task"}
    rows = []
    for k in variants:
        per_task, p95 = series(k, "requests_per_task"), series(k, "delay_p95")
        delay = (series(k, "delay_median").median, p95.median, series(k, "delay_max").median)
        rows.append(
            [
                names[k],
                fmt(series(k, "requests").median),
                fmt(per_task.median, 4),
                per_task.spread(4),
                " / ".join(f"{d:.2f}" for d in delay),
                p95.spread(2),
                fmt(series(k, "peak_rss_delta_mib").median, 1),
                fmt(series(k, "completions_per_s").median),
            ]
        )
    per_task, p95 = series("aiobatch", "requests_per_task"), series("aiobatch", "delay_p95")
    delay_median, delay_max = series("aiobatch", "delay_median").median, series("aiobatch", "delay_max").median
    ranges = f"; rounds {per_task.spread(4)}" if rounds > 1 else ""
    targets = [
        Target(
            "Monitoring: requests per completed task",
            "≤ 0.05",
            f"{per_task.median:.4f}{ranges}",
            per_task.median <= 0.05,
        ),
        Target(
            "Monitoring: delay from a task's end to its event",
            f"p95 ≤ {poll:g} s (one poll interval)",
            f"p95 {p95.median:.2f} s{f' (rounds {p95.spread(2)})' if rounds > 1 else ''}; "
            f"median {delay_median:.2f} s, max {delay_max:.2f} s",
            p95.median <= poll,
        ),
    ]
    requests = {k: series(k, "requests").median for k in variants}
    notes = [
        f"{tasks:,} tasks (`/bin/true`) on {NODES} nodes x {SLOTS} slots of the emulator, per watcher per round; "
        f"{rounds} round(s), the watchers alternating which goes first; poll interval {poll:g} s for both. Delay: "
        "event time minus the task's `executionInfo.endTime` (same clock); the table shows the medians of the "
        "rounds' median, p95 and max delay, and the range of the rounds' p95, which the target judges.",
        f"The loop sent {requests['loop'] / max(requests['aiobatch'], 1):,.0f}x the requests; its delay is the time "
        "one sweep over the pending tasks takes.",
        "Peak memory: the watcher process's peak resident memory over its resident memory before watching.",
    ]
    return CaseResult(
        case="monitor",
        title=f"Monitoring {tasks:,} tasks completing",
        headers=[
            "Watcher",
            "requests",
            "requests / task",
            "range",
            "delay s (median / p95 / max)",
            "p95 range",
            "peak MiB",
            "tasks/s",
        ],
        rows=rows,
        targets=targets,
        notes=notes,
        params={"tasks": tasks, "rounds": rounds, "poll": poll, "nodes": NODES, "slots": SLOTS},
        raw={"rounds": per_round},
    )


if __name__ == "__main__":
    _watcher_main(sys.argv[1:])
