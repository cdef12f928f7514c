"""Emulator scale: 100,000 tasks in one job: add and list throughput, and the emulator's resident memory.

Each round starts a fresh emulator; the table shows the medians of the rounds and their ranges.

Tasks are added with aiobatch's ``submit_tasks`` in five equal parts (so a slowdown as the job grows shows),
then listed back with the SDK, 1,000 a page: all of them (``$select=id,state``), and through a ``$filter`` that
matches them all (every page then tests every task). The job's pool does not exist, so nothing runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch import BatchSettings, Client, StorageSettings, TaskSpec

from ._harness import CaseResult, EmulatorProcess, MiB, Series, fmt, log, median, stopwatch

PARTS = 5


async def _list(batch: BatchClient, job: str, filter_: str | None) -> tuple[int, int, float]:
    count = pages = 0
    with stopwatch() as elapsed:
        async for page in batch.list_tasks(job, filter=filter_, select=["id", "state"], max_results=1000).by_page():
            pages += 1
            count += len([t async for t in page])
    return count, pages, elapsed()


async def _round(work: Path, tasks: int) -> dict[str, Any]:
    """One round on a fresh emulator: add *tasks* tasks to one job, list them back, read the emulator's memory."""
    with EmulatorProcess(work) as emu:
        rss0 = emu.rss()
        settings = BatchSettings(emu.endpoint, account_name=emu.account_name, account_key=emu.account_key)
        async with (
            BatchClient(emu.endpoint, emu.credential) as batch,
            Client(settings, StorageSettings(connection_string="UseDevelopmentStorage=true")) as client,
        ):
            await batch.create_job(m.BatchJobCreateOptions(id="big", pool_info=m.BatchPoolInfo(pool_id="nowhere")))
            part = tasks // PARTS
            rates = []
            with stopwatch() as total:
                for p in range(PARTS):
                    specs = [
                        TaskSpec(id=f"task-{i:06d}", command_line=f"/bin/sh -c 'echo {i}'")
                        for i in range(p * part, (p + 1) * part)
                    ]
                    with stopwatch() as elapsed:
                        result = await client.submit_tasks("big", specs, final=False)
                    assert result.ok and len(result.added) == part
                    rates.append(part / elapsed())
                    log(f"  scale: {(p + 1) * part:,} tasks in the job ({rates[-1]:,.0f} tasks/s for this part)")
            add_rate = tasks / total()
            rss_added = emu.rss()
            counts = await batch.get_job_task_counts("big")
            assert counts.task_counts.active == tasks
            listed, pages, list_s = await _list(batch, "big", None)
            assert listed == tasks
            log(f"  scale: listed {listed:,} tasks in {pages} pages, {list_s:.1f} s")
            flisted, fpages, flist_s = await _list(batch, "big", "state eq 'active'")
            assert flisted == tasks
            log(f"  scale: listed {flisted:,} tasks through a filter, {flist_s:.1f} s")
        peak = emu.peak_rss()
    return {
        "add_tasks_per_s": add_rate,
        "part_rates": rates,
        "pages": pages,
        "filtered_pages": fpages,
        "list_seconds": list_s,
        "list_tasks_per_s": tasks / list_s,
        "filtered_list_seconds": flist_s,
        "filtered_list_tasks_per_s": tasks / flist_s,
        "rss_idle": rss0,
        "rss_with_tasks": rss_added,
        "rss_peak": peak,
        "rss_per_task": (rss_added - rss0) / tasks,
    }


async def run(work: Path, *, tasks: int, rounds: int) -> CaseResult:
    """Add *tasks* tasks to one job, list them back, and read the emulator's memory; *rounds* times, each fresh."""
    per_round = []
    for r in range(rounds):
        log(f"scale round {r + 1}/{rounds}")
        per_round.append(await _round(work / f"emulator-{r}", tasks))

    def series(key: str, scale: float = 1.0) -> Series:
        return Series("", [x[key] / scale for x in per_round])

    def cell(key: str, unit: str, scale: float = 1.0, digits: int = 0) -> list[str]:
        values = series(key, scale)
        return [f"{fmt(values.median, digits)} {unit}", values.spread(digits)]

    part_rates = [median([x["part_rates"][p] for x in per_round]) for p in range(PARTS)]
    pages, fpages = per_round[0]["pages"], per_round[0]["filtered_pages"]
    rows = [
        [f"add {tasks:,} tasks (aiobatch `submit_tasks`, 5 parts)", *cell("add_tasks_per_s", "tasks/s"), ""],
        ["  rate per part, as the job grows", " / ".join(fmt(r) for r in part_rates) + " tasks/s", "", ""],
        [
            f"list all ({pages} pages of 1,000, `$select=id,state`)",
            *cell("list_tasks_per_s", "tasks/s"),
            f"{series('list_seconds').median:.1f} s",
        ],
        [
            f"list all through `$filter=state eq 'active'` ({fpages} pages)",
            *cell("filtered_list_tasks_per_s", "tasks/s"),
            f"{series('filtered_list_seconds').median:.1f} s",
        ],
        ["emulator resident memory: idle", *cell("rss_idle", "MiB", MiB), ""],
        [
            f"  with {tasks:,} tasks (peak)",
            f"{series('rss_with_tasks', MiB).median:,.0f} MiB ({series('rss_peak', MiB).median:,.0f} MiB)",
            series("rss_with_tasks", MiB).spread(),
            "",
        ],
        ["  per task", *cell("rss_per_task", "KiB", 1024, 1), ""],
    ]
    return CaseResult(
        case="scale",
        title=f"Emulator scale: {tasks:,} tasks in one job",
        headers=["Measure", "value (median)", "range", "time"],
        rows=rows,
        notes=[
            "No target: this shows where the emulator's limits are. The emulator runs in its own process, a fresh "
            f"one each round; {rounds} round(s), medians and ranges (the rate per part: medians)."
        ],
        params={"tasks": tasks, "rounds": rounds},
        raw={"rounds": per_round},
    )
