"""A task list's $filter tested on TaskFilterView selects exactly what it selects on the rendered task."""

from __future__ import annotations

import datetime as dt

import pytest

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
