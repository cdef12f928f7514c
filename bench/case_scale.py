"""Emulator scale: 100,000 tasks in one job: add and list throughput, and the emulator's resident memory.

Tasks are added with aiobatch's ``submit_tasks`` in five equal parts (so a slowdown as the job grows shows),
then listed back with the SDK, 1,000 a page: all of them (``$select=id,state``), and through a ``$filter`` that
matches them all (every page then tests every task). The job's pool does not exist, so nothing runs.
"""

from __future__ import annotations

from pathlib import Path

from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch import BatchSettings, Client, StorageSettings, TaskSpec

from ._harness import CaseResult, EmulatorProcess, MiB, fmt, log, stopwatch

PARTS = 5


async def _list(batch: BatchClient, job: str, filter_: str | None) -> tuple[int, int, float]:
    count = pages = 0
    with stopwatch() as elapsed:
        async for page in batch.list_tasks(job, filter=filter_, select=["id", "state"], max_results=1000).by_page():
            pages += 1
            count += len([t async for t in page])
    return count, pages, elapsed()


async def run(work: Path, *, tasks: int) -> CaseResult:
    """Add *tasks* tasks to one job, list them back, and read the emulator's memory."""
    with EmulatorProcess(work / "emulator") as emu:
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
    per_task = (rss_added - rss0) / tasks
    rows = [
        [f"add {tasks:,} tasks (aiobatch `submit_tasks`, 5 parts)", f"{fmt(add_rate)} tasks/s", ""],
        ["  rate per part, as the job grows", " / ".join(fmt(r) for r in rates) + " tasks/s", ""],
        [f"list all ({pages} pages of 1,000, `$select=id,state`)", f"{fmt(tasks / list_s)} tasks/s", f"{list_s:.1f} s"],
        [
            f"list all through `$filter=state eq 'active'` ({fpages} pages)",
            f"{fmt(tasks / flist_s)} tasks/s",
            f"{flist_s:.1f} s",
        ],
        ["emulator resident memory: idle", f"{rss0 / MiB:,.0f} MiB", ""],
        [f"  with {tasks:,} tasks (peak)", f"{rss_added / MiB:,.0f} MiB ({peak / MiB:,.0f} MiB)", ""],
        ["  per task", f"{per_task / 1024:,.1f} KiB", ""],
    ]
    return CaseResult(
        case="scale",
        title=f"Emulator scale: {tasks:,} tasks in one job",
        headers=["Measure", "value", "time"],
        rows=rows,
        notes=["No target: this shows where the emulator's limits are. The emulator runs in its own process."],
        params={"tasks": tasks},
        raw={
            "add_tasks_per_s": add_rate,
            "part_rates": rates,
            "list_tasks_per_s": tasks / list_s,
            "filtered_list_tasks_per_s": tasks / flist_s,
            "rss_idle": rss0,
            "rss_with_tasks": rss_added,
            "rss_peak": peak,
        },
    )
