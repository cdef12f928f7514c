"""Contract tests for the synchronous ``azure.batch.BatchClient`` (15.1): a smaller tour than the aio suite.

The emulator runs on the test's event loop, so each scenario runs the blocking client in a worker thread
(``anyio.to_thread.run_sync``) and the loop stays free to answer it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from aiobatch.emulator import Emulator

pytestmark = pytest.mark.anyio

T = TypeVar("T")

UBUNTU = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


async def in_thread(emu: Emulator, scenario: Callable[[BatchClient], T]) -> T:
    def run() -> T:
        with BatchClient(emu.endpoint, emu.credential) as batch:
            return scenario(batch)

    return await anyio.to_thread.run_sync(run)


def poll(probe: Callable[[], Any], what: str, limit: float = 10.0) -> Any:
    deadline = time.monotonic() + limit
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def ready_pool(batch: BatchClient, pool_id: str, nodes: int = 1) -> None:
    batch.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=UBUNTU,
            target_dedicated_nodes=nodes,
            task_slots_per_node=2,
        )
    )
    poll(
        lambda: (
            batch.get_pool(pool_id).allocation_state == m.AllocationState.STEADY
            and [n.state for n in batch.list_nodes(pool_id)] == [m.BatchNodeState.IDLE] * nodes
        ),
        f"pool {pool_id} ready",
    )


async def test_sync_pool_job_tasks_files_and_deletion(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        ready_pool(batch, "p")
        assert batch.pool_exists("p") is True
        assert [p.id for p in batch.list_pools()] == ["p"]
        node = next(iter(batch.list_nodes("p")))
        assert batch.get_node("p", node.id).state == m.BatchNodeState.IDLE
        assert [c.pool_id for c in batch.list_pool_node_counts()] == ["p"]

        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        tasks = [m.BatchTaskCreateOptions(id=f"t{i}", command_line=f"/bin/sh -c 'echo task {i}'") for i in range(7)]
        result = batch.create_task_collection("j", m.BatchTaskGroup(task_values=tasks))
        assert sorted(r.status for r in result.result_values or []) == [m.BatchTaskAddStatus.SUCCESS] * 7

        poll(lambda: batch.get_job_task_counts("j").task_counts.completed == 7, "tasks completed")
        counts = batch.get_job_task_counts("j").task_counts
        assert (counts.succeeded, counts.failed, counts.active) == (7, 0, 0)
        pages = [[t.id for t in page] for page in batch.list_tasks("j", max_results=3).by_page()]
        assert pages == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"]]
        done = list(batch.list_tasks("j", filter="executionInfo/result eq 'success'", select=["id", "executionInfo"]))
        assert len(done) == 7 and all(t.execution_info is not None and t.execution_info.exit_code == 0 for t in done)

        task = batch.get_task("j", "t3")
        assert task.state == m.BatchTaskState.COMPLETED and task.node_info is not None
        assert {f.name for f in batch.list_task_files("j", "t3")} >= {"stdout.txt", "stderr.txt", "wd"}
        assert b"".join(batch.download_task_file("j", "t3", "stdout.txt")) == b"task 3\n"
        assert batch.get_task_file_properties("j", "t3", "stdout.txt").content_length == len(b"task 3\n")

        batch.update_job("j", m.BatchJobUpdateOptions(priority=100))
        assert batch.get_job("j").priority == 100
        batch.delete_task("j", "t6")
        with pytest.raises(ResourceNotFoundError):
            batch.get_task("j", "t6")

        options: Any = {"terminateReason": "UserTerminate"}  # 15.1.0 needs non-empty options here
        batch.begin_terminate_job("j", options, polling_interval=0.1).result()
        job = batch.get_job("j")
        assert job.state == m.BatchJobState.COMPLETED
        assert job.execution_info is not None and job.execution_info.termination_reason == "UserTerminate"
        batch.begin_delete_job("j", polling_interval=0.1).result()
        with pytest.raises(ResourceNotFoundError):
            batch.get_job("j")

        batch.begin_resize_pool("p", m.BatchPoolResizeOptions(target_dedicated_nodes=2), polling_interval=0.1).result()
        assert batch.get_pool("p").current_dedicated_nodes == 2
        batch.begin_delete_pool("p", polling_interval=0.1).result()
        with pytest.raises(ResourceNotFoundError) as gone:
            batch.get_pool("p")
        assert gone.value.error is not None and gone.value.error.code == "PoolNotFound"

    await in_thread(batch_emulator, scenario)
    assert batch_emulator.account is not None and not batch_emulator.account.pools


async def test_sync_errors_and_applications(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        with pytest.raises(ResourceNotFoundError) as pool_missing:
            batch.get_pool("nope")
        assert pool_missing.value.error is not None and pool_missing.value.error.code == "PoolNotFound"

        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        with pytest.raises(ResourceExistsError) as job_exists:
            batch.create_job(m.BatchJobCreateOptions(id="J", pool_info=m.BatchPoolInfo(pool_id="p")))
        assert job_exists.value.error is not None and job_exists.value.error.code == "JobExists"

        batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        with pytest.raises(ResourceExistsError) as task_exists:
            batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        assert task_exists.value.error is not None and task_exists.value.error.code == "TaskExists"
        with pytest.raises(ResourceNotFoundError) as task_missing:
            batch.get_task("j", "nope")
        assert task_missing.value.error is not None and task_missing.value.error.code == "TaskNotFound"

        with pytest.raises(HttpResponseError) as invalid:
            batch.create_pool(
                m.BatchPoolCreateOptions(
                    id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU, target_dedicated_nodes=-1
                )
            )
        assert invalid.value.status_code == 400
        details = {d.code: d.message for d in invalid.value.error.details} if invalid.value.error else {}
        assert details["PropertyName"] == "targetDedicatedNodes" and details["PropertyValue"] == "-1"

        assert list(batch.list_applications()) == []
        with pytest.raises(ResourceNotFoundError):
            batch.get_application("nope")

    await in_thread(batch_emulator, scenario)
