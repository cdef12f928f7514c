"""A task list's $filter tested on TaskFilterView selects what it selects on the rendered task, page by page."""

from __future__ import annotations

import datetime as dt

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch.emulator import Emulator
from aiobatch.emulator import _wire as wire
from aiobatch.emulator._model import Account, FailureInfo, Task
from aiobatch.emulator._odata import parse_filter


def _tasks() -> tuple[Account, list[Task]]:
    account = Account(name="acct", url="http://127.0.0.1:1")
    job, _ = wire.parse_job(account, {"id": "job", "poolInfo": {"poolId": "pool"}})
    base = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)
    tasks = []
    for i in range(12):
        task = wire.parse_task(account, job, {"id": f"Task-{i:02d}", "commandLine": "true"})
        task.creation_time = base + dt.timedelta(seconds=i)
        task.last_modified = task.creation_time + dt.timedelta(milliseconds=1)
        if i % 3:
            task.set_state("running")
            task.start_time = base + dt.timedelta(seconds=i, microseconds=7)
        if i % 3 == 2:
            task.set_state("completed")
            task.end_time = base + dt.timedelta(seconds=i + 1)
            task.exit_code = i % 2
            task.result = "success" if i % 2 == 0 else "failure"
            task.failure_info = None if i % 2 == 0 else FailureInfo("usererror", "FailureExitCode", "exit")
        task.state_transition_time = base + dt.timedelta(seconds=i * 2, microseconds=i)
        tasks.append(task)
    account.jobs["job"] = job
    return account, tasks


FILTERS = [
    "state eq 'completed'",
    "state ne 'active'",
    "state eq 'Completed' and stateTransitionTime ge datetime'2026-01-02T03:04:15.123456Z'",
    "stateTransitionTime gt datetime'2026-01-02T03:04:15.1234600Z'",
    "stateTransitionTime le datetime'2026-01-02T03:04:09.1234590Z' or id eq 'task-11'",
    "startswith(id, 'TASK-0') and not (state eq 'running')",
    "executionInfo/exitCode eq 1",
    "executionInfo/exitCode ne 1",
    "executionInfo/result eq 'success'",
    "executionInfo/endTime lt datetime'2026-01-02T03:04:12Z'",
    "executionInfo/startTime ne datetime'2026-01-02T03:04:06.123463Z'",
    "executionInfo/startTime eq datetime'2026-01-02T03:04:06.123463Z'",
    "creationTime ge datetime'2026-01-02T03:04:10.123456Z'",
    "lastModifiedTime lt datetime'2026-01-02T03:04:07.124456Z'",
    "lastModified eq datetime'2026-01-02T03:04:07.124456Z'",
]


@pytest.mark.parametrize("expression", FILTERS)
def test_the_view_selects_what_the_rendering_selects(expression: str) -> None:
    account, tasks = _tasks()
    job = account.jobs["job"]
    predicate = parse_filter(expression, "tasks")
    assert predicate is not None
    rendered = [t.id for t in tasks if predicate(wire.render_task(account, job, t))]
    viewed = [t.id for t in tasks if predicate(wire.TaskFilterView(t))]
    assert viewed == rendered


@pytest.mark.anyio
async def test_paging_through_a_filtered_list_returns_each_match_once(batch_emulator: Emulator) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_job(m.BatchJobCreateOptions(id="job", pool_info=m.BatchPoolInfo(pool_id="nowhere")))
        for start in range(0, 2500, 100):
            chunk = [m.BatchTaskCreateOptions(id=f"t{i:04d}", command_line="true") for i in range(start, start + 100)]
            await batch.create_task_collection("job", m.BatchTaskGroup(task_values=chunk))
        for expression, expected in (
            ("state eq 'active'", [f"t{i:04d}" for i in range(2500)]),
            ("startswith(id, 't1') or id eq 't2499'", [f"t{i:04d}" for i in range(1000, 2000)] + ["t2499"]),
            ("startswith(id, 't00')", [f"t{i:04d}" for i in range(100)]),
            ("state eq 'completed'", []),
        ):
            for size in (7, 1000):
                pages = batch.list_tasks("job", filter=expression, select=["id"], max_results=size).by_page()
                seen = [[t.id async for t in page] async for page in pages]
                assert [i for page in seen for i in page] == expected, (expression, size)
                assert all(len(page) == size for page in seen[:-1])
