"""10,000 tasks added to one job in chunks of 100 and listed back through paging, with the real SDK."""

from __future__ import annotations

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch.emulator import Emulator

pytestmark = pytest.mark.anyio

TOTAL = 10_000


async def test_ten_thousand_tasks_in_chunks_and_paged_back(batch_emulator: Emulator) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        # The pool does not exist yet, so the tasks stay active: this measures the service, not the processes.
        await batch.create_job(m.BatchJobCreateOptions(id="big", pool_info=m.BatchPoolInfo(pool_id="later")))
        statuses: list[str] = []
        for start in range(0, TOTAL, 100):
            chunk = [
                m.BatchTaskCreateOptions(id=f"task-{i:05d}", command_line="/bin/true")
                for i in range(start, start + 100)
            ]
            result = await batch.create_task_collection("big", m.BatchTaskGroup(task_values=chunk))
            statuses.extend(r.status.lower() for r in result.result_values or [])
        assert len(statuses) == TOTAL and set(statuses) == {"success"}

        pages = 0
        seen: list[str] = []
        async for page in batch.list_tasks("big", max_results=1000, select=["id", "state"]).by_page():
            pages += 1
            seen.extend([t.id async for t in page])
        assert pages == TOTAL // 1000
        assert seen == [f"task-{i:05d}" for i in range(TOTAL)], "paging lost, doubled or reordered tasks"

        counts = await batch.get_job_task_counts("big")
        assert counts.task_counts.active == TOTAL

        # One more chunk with an id that differs only in case is refused per task, not added.
        again = await batch.create_task_collection(
            "big", m.BatchTaskGroup(task_values=[m.BatchTaskCreateOptions(id="TASK-00042", command_line="/bin/true")])
        )
        result = (again.result_values or [])[0]
        assert result.status.lower() == "clienterror"
        assert result.error is not None and result.error.code == "TaskExists"
    assert batch_emulator.account is not None
    assert len(batch_emulator.account.jobs["big"].tasks) == TOTAL
