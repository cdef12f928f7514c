"""Submission: 10,000 tasks to the emulator, five ways, interleaved round by round.

- aiobatch: ``Client.submit_tasks`` (chunks of 100, exactly-once bookkeeping, *concurrency* in flight);
- one ``create_task`` per task, awaited in a loop (what the Batch tutorials do);
- the SDK's ``create_tasks``, sequential (its default) and with ``max_concurrency``;
- the ceiling: bare aiohttp POSTs of ``addtaskcollection`` bodies, Shared Key signed by hand, same concurrency.

Every variant starts from the same list of task ids and builds what it sends inside the timed region. The job's
pool does not exist, so tasks stay queued: this measures submission, not task processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable

import aiohttp
from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch import BatchSettings, Client, StorageSettings, TaskSpec, resource_file

from ._harness import CaseResult, EmulatorProcess, Series, Target, fmt, log, paired_ratio, stopwatch
from ._sharedkey import API_VERSION, JSON_TYPE, SharedKeySigner

# Resource file URLs look like the SAS URLs the pipeline sends; the pool never runs them.
_URL = "http://127.0.0.1:10000/devstoreaccount1/inputs/{name}?se=2030-01-01T00%3A00%3A00Z&sp=r&sv=2024-08-04&sr=b&sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D"


def _command(task_id: str) -> str:
    return f"/bin/sh -c 'echo {task_id}'"


def _specs(ids: list[str]) -> list[TaskSpec]:
    return [
        TaskSpec(
            id=i, command_line=_command(i), resource_files=[resource_file(_URL.format(name=f"{i}.mp4"), f"{i}.mp4")]
        )
        for i in ids
    ]


def _models(ids: list[str]) -> list[m.BatchTaskCreateOptions]:
    return [
        m.BatchTaskCreateOptions(
            id=i,
            command_line=_command(i),
            resource_files=[m.ResourceFile(http_url=_URL.format(name=f"{i}.mp4"), file_path=f"{i}.mp4")],
        )
        for i in ids
    ]


def _bodies(ids: list[str]) -> list[bytes]:
    tasks = [
        {
            "id": i,
            "commandLine": _command(i),
            "resourceFiles": [{"httpUrl": _URL.format(name=f"{i}.mp4"), "filePath": f"{i}.mp4"}],
        }
        for i in ids
    ]
    return [json.dumps({"value": tasks[k : k + 100]}).encode() for k in range(0, len(tasks), 100)]


async def _aiobatch(emu: EmulatorProcess, job: str, ids: list[str], concurrency: int) -> None:
    settings = BatchSettings(emu.endpoint, account_name=emu.account_name, account_key=emu.account_key)
    async with Client(settings, StorageSettings(connection_string="UseDevelopmentStorage=true")) as client:
        result = await client.submit_tasks(job, _specs(ids), concurrency=concurrency)
    assert result.ok and len(result.added) == len(ids), result.failed


async def _one_by_one(batch: BatchClient, job: str, ids: list[str]) -> None:
    for task in _models(ids):
        await batch.create_task(job, task)


async def _sdk_create_tasks(batch: BatchClient, job: str, ids: list[str], concurrency: int | None) -> None:
    result = await batch.create_tasks(job, _models(ids), max_concurrency=concurrency)
    assert len(result.result_values or []) == len(ids)


async def _bare(emu: EmulatorProcess, job: str, ids: list[str], concurrency: int) -> None:
    signer = SharedKeySigner(emu.account_name, emu.account_key)
    url = f"{emu.endpoint}/jobs/{job}/addtaskcollection?api-version={API_VERSION}"
    bodies = iter(_bodies(ids))
    added = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal added
        for body in bodies:
            headers = signer.headers("POST", url, body=body, content_type=JSON_TYPE)
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json(content_type=None)
                assert response.status == 200, answer
                added += sum(1 for r in answer["value"] if r["status"] == "success")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    assert added == len(ids)


async def run(
    emu: EmulatorProcess, *, tasks: int, rounds: int, slow_rounds: int, concurrency: int, slow_tasks: int
) -> CaseResult:
    """Submit *tasks* tasks per variant per round; rates in tasks/s.

    aiobatch and the ceiling run in all *rounds*; the other variants in the first *slow_rounds*. One call per
    task sends the first *slow_tasks* of them (all of them in the full run; fewer in a quick one).
    """
    ids = [f"task-{i:05d}" for i in range(tasks)]
    slow_ids = ids[:slow_tasks]
    names = {
        "aiobatch": f"aiobatch `submit_tasks` (concurrency {concurrency})",
        "one_by_one": "one `create_task` per task",
        "sdk": "SDK `create_tasks` (default)",
        "sdk_concurrent": f"SDK `create_tasks` (max_concurrency={concurrency})",
        "bare": f"bare HTTP addtaskcollection ({concurrency} in flight)",
    }
    rates = {key: Series("tasks/s") for key in names}
    cpu = {key: Series("emulator CPU s per 1,000 tasks") for key in names}
    client_cpu = {key: Series("client CPU s per 1,000 tasks") for key in names}
    async with BatchClient(emu.endpoint, emu.credential) as batch:

        async def timed(key: str, job: str, n: int, work: Awaitable[None]) -> None:
            # *work* is a coroutine not yet started: it runs once the job exists.
            await batch.create_job(m.BatchJobCreateOptions(id=job, pool_info=m.BatchPoolInfo(pool_id="nowhere")))
            cpu0, mine0 = emu.cpu_seconds(), time.process_time()
            with stopwatch() as elapsed:
                await work
            rates[key].values.append(n / elapsed())
            cpu[key].values.append((emu.cpu_seconds() - cpu0) / n * 1000)
            client_cpu[key].values.append((time.process_time() - mine0) / n * 1000)
            counts = await batch.get_job_task_counts(job)
            assert counts.task_counts.active == n, (key, counts.task_counts)
            await batch.begin_delete_job(job)
            log(f"  submit {key}: {rates[key].values[-1]:,.0f} tasks/s")

        for r in range(rounds):
            log(f"submit round {r + 1}/{rounds}")
            # aiobatch and the ceiling back to back in every round (their ratio is the target); the slower
            # variants in the first rounds only, alternating which of the pair goes first.
            pair = [("aiobatch", _aiobatch), ("bare", _bare)]
            for key, fn in pair if r % 2 == 0 else pair[::-1]:
                job = f"{key}-{r}"
                await timed(key, job, tasks, fn(emu, job, ids, concurrency))
            if r >= slow_rounds:
                continue
            job = f"sdk-{r}"
            await timed("sdk", job, tasks, _sdk_create_tasks(batch, job, ids, None))
            job = f"sdkc-{r}"
            await timed("sdk_concurrent", job, tasks, _sdk_create_tasks(batch, job, ids, concurrency))
            job = f"single-{r}"
            await timed("one_by_one", job, slow_tasks, _one_by_one(batch, job, slow_ids))

    vs_bare = paired_ratio(rates["aiobatch"].values, rates["bare"].values)
    vs_single = paired_ratio(rates["aiobatch"].values[:slow_rounds], rates["one_by_one"].values)
    rows = []
    for key, name in names.items():
        rows.append(
            [
                name,
                fmt(rates[key].median),
                rates[key].spread(),
                fmt(paired_ratio(rates["aiobatch"].values[: len(rates[key].values)], rates[key].values), 2) + "x"
                if key != "aiobatch"
                else "—",
                fmt(client_cpu[key].median, 3),
                fmt(cpu[key].median, 3),
            ]
        )
    targets = [
        Target("Submission: aiobatch vs bare HTTP ceiling", "≥ 0.90x", f"{vs_bare:.2f}x", vs_bare >= 0.9),
        Target("Submission: aiobatch vs one call per task", "≥ 10x", f"{vs_single:.1f}x", vs_single >= 10),
    ]
    if slow_tasks < tasks:
        single = f"; one call per task sends only the first {slow_tasks:,} (a quick run: its rate is per task)"
    else:
        single = ", one call per task included"
    notes = [
        f"{tasks:,} tasks per variant per round{single}; aiobatch and the ceiling in {rounds} rounds, back to back, "
        f"the others in the first {slow_rounds}.",
        "Each task has a command line and one resource file (a SAS-shaped URL); the job's pool does not exist, so "
        "tasks stay queued. The emulator runs in its own process.",
        "“aiobatch x” is aiobatch's rate over that variant's, the median of per-round ratios. Each variant builds "
        "what it sends inside the timed region: `TaskSpec`s, SDK models, or plain dicts for the ceiling.",
        "Client and emulator share the machine's 2 cores, so client CPU per task limits throughput as much as the "
        "emulator's does; CPU times are medians too.",
    ]
    return CaseResult(
        case="submit",
        title=f"Submission of {tasks:,} tasks to the emulator",
        headers=["Variant", "tasks/s (median)", "range", "aiobatch x", "client CPU ms/task", "emulator CPU ms/task"],
        rows=rows,
        targets=targets,
        notes=notes,
        params={
            "tasks": tasks,
            "rounds": rounds,
            "slow_rounds": slow_rounds,
            "concurrency": concurrency,
            "slow_tasks": slow_tasks,
        },
        raw={
            key: {
                "tasks_per_s": rates[key].values,
                "client_cpu_s_per_1000": client_cpu[key].values,
                "emulator_cpu_s_per_1000": cpu[key].values,
            }
            for key in names
        },
    )
