"""``$filter`` and ``$select`` on list operations, through the real SDK's ``filter=`` / ``select=`` keywords.

What a filter may name is the service's table ("OData filters in Batch"): those properties work, anything else is
the service's 400 so that code tested against the emulator cannot come to rely on a filter Azure refuses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineResponse

from _support import poll_until
from aiobatch.emulator import Emulator

pytestmark = pytest.mark.anyio

UBUNTU = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


class Bodies:
    """The JSON bodies of list answers the client received (a ``raw_response_hook``)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        http = response.http_response
        if (
            response.http_request.method == "GET"
            and http.status_code == 200
            and "json" in http.headers.get("Content-Type", "")
        ):
            body = http.json()
            self.items = body.get("value", [body])


@pytest.fixture
def bodies() -> Bodies:
    return Bodies()


@pytest.fixture
async def batch(batch_emulator: Emulator, bodies: Bodies) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential, raw_response_hook=bodies) as client:
        yield client


async def until(probe: Any, within: float = 10.0) -> Any:
    return await poll_until(probe, within)


@pytest.fixture
async def finished_job(batch: BatchClient) -> dt.datetime:
    """Pool ``p`` (one node, a start task), job ``j`` with three completed tasks; returns a time before them."""
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    start = m.BatchStartTask(command_line="/bin/sh -c 'exit 0'", wait_for_success=True)
    await batch.create_pool(
        m.BatchPoolCreateOptions(
            id="p",
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=UBUNTU,
            target_dedicated_nodes=1,
            task_slots_per_node=3,
            start_task=start,
        )
    )
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    tasks = [
        m.BatchTaskCreateOptions(id="t-ok-1", command_line="/bin/sh -c 'echo one'"),
        m.BatchTaskCreateOptions(id="t-ok-2", command_line="/bin/sh -c 'echo two'"),
        m.BatchTaskCreateOptions(id="t-bad", command_line="/bin/sh -c 'exit 3'"),
    ]
    await batch.create_task_collection("j", m.BatchTaskGroup(task_values=tasks))

    async def all_done() -> bool:
        return len([t async for t in batch.list_tasks("j", filter="state eq 'completed'")]) == 3

    await until(all_done)
    return before


async def task_ids(batch: BatchClient, expression: str) -> list[str]:
    return sorted([t.id async for t in batch.list_tasks("j", filter=expression)])


def odata_literal(when: dt.datetime) -> str:
    return f"datetime'{when.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}'"


async def test_task_filters_from_the_service_table(batch: BatchClient, finished_job: dt.datetime) -> None:
    assert await task_ids(batch, "state eq 'completed'") == ["t-bad", "t-ok-1", "t-ok-2"]
    assert await task_ids(batch, "state eq 'active'") == []
    assert await task_ids(batch, "executionInfo/exitCode ne 0") == ["t-bad"]
    assert await task_ids(batch, "executionInfo/exitCode gt 2 and executionInfo/exitCode le 3") == ["t-bad"]
    assert await task_ids(batch, "executionInfo/result eq 'failure'") == ["t-bad"]
    assert await task_ids(batch, "executionInfo/result eq 'success'") == ["t-ok-1", "t-ok-2"]
    assert await task_ids(batch, "startswith(id,'t-ok')") == ["t-ok-1", "t-ok-2"]
    assert await task_ids(batch, "id eq 't-bad' or id eq 't-ok-1'") == ["t-bad", "t-ok-1"]
    assert await task_ids(batch, "(id eq 't-bad' or id eq 't-ok-1') and executionInfo/exitCode eq 0") == ["t-ok-1"]
    assert await task_ids(batch, "id ge 't-ok'") == ["t-ok-1", "t-ok-2"]
    watermark = odata_literal(finished_job)
    assert await task_ids(batch, f"state eq 'completed' and stateTransitionTime ge {watermark}") == [
        "t-bad",
        "t-ok-1",
        "t-ok-2",
    ]
    future = odata_literal(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    assert await task_ids(batch, f"executionInfo/endTime gt {future}") == []
    assert await task_ids(batch, f"creationTime lt {future} and lastModified lt {future}") == [
        "t-bad",
        "t-ok-1",
        "t-ok-2",
    ]


async def test_select_returns_only_the_named_properties(
    batch: BatchClient, bodies: Bodies, finished_job: dt.datetime
) -> None:
    listed = [t async for t in batch.list_tasks("j", filter="state eq 'completed'", select=["id", "executionInfo"])]
    assert {t.id for t in listed} == {"t-bad", "t-ok-1", "t-ok-2"}
    assert all(t.execution_info is not None and t.command_line is None for t in listed)
    assert {frozenset(item) for item in bodies.items} == {frozenset({"id", "executionInfo"})}

    task = await batch.get_task("j", "t-bad", select=["id", "state"])
    assert task.id == "t-bad" and task.state == m.BatchTaskState.COMPLETED and task.execution_info is None
    assert set(bodies.items[0]) == {"odata.metadata", "id", "state"}

    pools = [p async for p in batch.list_pools(select=["id", "allocationState"])]
    assert [p.id for p in pools] == ["p"] and pools[0].vm_size is None
    job = await batch.get_job("j", select=["id", "executionInfo"])
    assert job.execution_info is not None and job.execution_info.pool_id == "p" and job.priority is None


async def test_filters_on_pools_jobs_nodes_counts_and_files(batch: BatchClient, finished_job: dt.datetime) -> None:
    await batch.create_pool(
        m.BatchPoolCreateOptions(id="other", vm_size="Standard_F4s_v2", virtual_machine_configuration=UBUNTU)
    )
    await batch.create_job(m.BatchJobCreateOptions(id="k", pool_info=m.BatchPoolInfo(pool_id="other")))

    async def pools(expression: str) -> list[str]:
        return sorted([p.id async for p in batch.list_pools(filter=expression)])

    assert await pools("state eq 'active'") == ["other", "p"]
    assert await pools("vmSize eq 'standard_f4s_v2'") == ["other"]
    assert await pools("startswith(id,'ot')") == ["other"]
    assert await pools("enableAutoScale eq false and id ne 'other'") == ["p"]

    async def jobs(expression: str) -> list[str]:
        return sorted([j.id async for j in batch.list_jobs(filter=expression)])

    assert await jobs("executionInfo/poolId eq 'other'") == ["k"]
    assert await jobs("state eq 'active' and startswith(id,'j')") == ["j"]

    async def nodes(expression: str) -> int:
        return len([n async for n in batch.list_nodes("p", filter=expression)])

    assert await nodes("state eq 'idle' or state eq 'running'") == 1
    assert await nodes("state eq 'starttaskfailed'") == 0
    assert await nodes("startTaskInfo/exitCode eq 0 and startTaskInfo/result eq 'success'") == 1

    counts = [c async for c in batch.list_pool_node_counts(filter="poolId eq 'p'")]
    assert [c.pool_id for c in counts] == ["p"]

    files = sorted([f.name async for f in batch.list_task_files("j", "t-ok-1", filter="startswith(name,'std')")])
    assert files == ["stderr.txt", "stdout.txt"]


async def test_a_filter_survives_paging(batch: BatchClient, finished_job: dt.datetime) -> None:
    pages = [
        [t.id async for t in page]
        async for page in batch.list_tasks("j", filter="startswith(id,'t-ok')", max_results=1).by_page()
    ]
    assert pages == [["t-ok-1"], ["t-ok-2"]]


@pytest.mark.parametrize(
    ("operation", "expression"),
    [
        ("tasks", "executionInfo/retryCount eq 0"),  # not in the service's table
        ("tasks", "commandLine eq 'x'"),
        ("tasks", "state gt 'active'"),  # state takes eq/ne only
        ("tasks", "startswith(state,'a')"),  # startswith is for ids
        ("tasks", "state eq"),  # malformed
        ("tasks", "state eq 'active' and"),
        ("tasks", "state eq 'active')"),
        ("jobs", "priority eq 0"),
        ("pools", "targetDedicatedNodes gt 1"),
        ("nodes", "schedulingState eq 'enabled'"),
        ("nodes", "startTaskInfo/state ne 'completed'"),  # startTaskInfo/state takes eq only
        ("counts", "poolId ne 'p'"),
        ("files", "name eq 'stdout.txt'"),  # names take startswith only
    ],
)
async def test_an_unsupported_filter_is_the_service_400(batch: BatchClient, operation: str, expression: str) -> None:
    nodes = 1 if operation == "files" else 0  # task files exist once the task has run on a node
    await batch.create_pool(
        m.BatchPoolCreateOptions(
            id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU, target_dedicated_nodes=nodes
        )
    )
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    listing = {
        "tasks": lambda: batch.list_tasks("j", filter=expression),
        "jobs": lambda: batch.list_jobs(filter=expression),
        "pools": lambda: batch.list_pools(filter=expression),
        "nodes": lambda: batch.list_nodes("p", filter=expression),
        "counts": lambda: batch.list_pool_node_counts(filter=expression),
        "files": lambda: batch.list_task_files("j", "t", filter=expression),
    }[operation]
    if operation == "files":
        await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))

        async def ran() -> bool:
            return (await batch.get_task("j", "t")).state == m.BatchTaskState.COMPLETED

        await until(ran)
    with pytest.raises(HttpResponseError) as caught:
        [item async for item in listing()]
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == "InvalidQueryParameterValue"
    details = {d.code: d.message for d in caught.value.error.details}
    assert details["QueryParameterName"] == "$filter"
    assert details["QueryParameterValue"] == expression
    assert details["Reason"]
