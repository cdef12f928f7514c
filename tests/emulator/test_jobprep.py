"""Contract tests of job preparation and release tasks: the unmodified ``azure.batch.aio.BatchClient``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from aiobatch.emulator import Emulator

from .test_contract_aio import wait_for

pytestmark = pytest.mark.anyio

T = TypeVar("T")

UBUNTU = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


async def ready_pool(batch: BatchClient, pool_id: str, nodes: int) -> None:
    await batch.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id, vm_size="Standard_D2s_v3", virtual_machine_configuration=UBUNTU, target_dedicated_nodes=nodes
        )
    )

    async def ready() -> bool:
        states = [n.state async for n in batch.list_nodes(pool_id)]
        return len(states) == nodes and all(s == m.BatchNodeState.IDLE for s in states)

    await wait_for(ready, what=f"pool {pool_id}")


RECORDED_JOBS = Path(__file__).parent / "recordings" / "test_batch.pyTestBatchtest_batch_jobs_async_.json"


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key of a JSON object, recursively, as dotted paths (lists' items merged)."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in ({prefix + k} | key_paths(v, prefix + k + "."))}
    if isinstance(value, list):
        return {p for item in value for p in key_paths(item, prefix)}
    return set()


def sh(script: str) -> str:
    return f"/bin/sh -c '{script}'"


async def finished(batch: BatchClient, job_id: str, task_id: str) -> m.BatchTask:
    async def done() -> m.BatchTask | None:
        task = await batch.get_task(job_id, task_id)
        return task if task.state == m.BatchTaskState.COMPLETED else None

    return await wait_for(done, what=f"task {task_id}")


async def download(batch: BatchClient, job_id: str, task_id: str, path: str) -> bytes:
    return b"".join([chunk async for chunk in await batch.download_task_file(job_id, task_id, path)])


async def statuses(batch: BatchClient, job_id: str) -> list[m.BatchJobPreparationAndReleaseTaskStatus]:
    return [s async for s in batch.list_job_preparation_and_release_task_status(job_id)]


async def terminate(batch: BatchClient, job_id: str) -> None:
    options: Any = {"terminateReason": "UserTerminate"}  # without options the SDK fails before sending
    await (await batch.begin_terminate_job(job_id, options, polling_interval=0.05)).result()


def code_of(exc: HttpResponseError) -> str | None:
    return exc.error.code if exc.error is not None else None


def details_of(exc: HttpResponseError) -> dict[str, str]:
    return {d.code: d.message for d in (exc.error.details if exc.error is not None else [])}


async def test_preparation_runs_before_the_tasks_on_each_node_and_release_when_the_job_ends(
    batch: BatchClient,
) -> None:
    await ready_pool(batch, "pool", 2)
    prep = m.BatchJobPreparationTask(
        command_line=sh('echo "$AZ_BATCH_TASK_ID" > prepared; echo prep >> "$AZ_BATCH_NODE_SHARED_DIR/log"'),
        environment_settings=[m.EnvironmentSetting(name="WHO", value="prep")],
    )
    release = m.BatchJobReleaseTask(command_line=sh('echo release >> "$AZ_BATCH_NODE_SHARED_DIR/log"'))
    await batch.create_job(
        m.BatchJobCreateOptions(
            id="job",
            pool_info=m.BatchPoolInfo(pool_id="pool"),
            job_preparation_task=prep,
            job_release_task=release,
        )
    )
    job = await batch.get_job("job")
    # The service's defaults, as recorded.
    assert job.job_preparation_task is not None and job.job_preparation_task.id == "jobpreparation"
    assert job.job_preparation_task.wait_for_success is True
    assert job.job_preparation_task.rerun_on_node_reboot_after_success is True
    assert job.job_preparation_task.constraints is not None
    assert job.job_preparation_task.constraints.max_task_retry_count == 0
    assert job.job_release_task is not None and job.job_release_task.id == "jobrelease"
    assert job.job_release_task.max_wall_clock_time is not None
    assert job.job_release_task.max_wall_clock_time.total_seconds() == 15 * 60
    assert await statuses(batch, "job") == []  # nothing ran yet
    # The same properties as the service answers (recordings/..._jobs_async_.json, GET of a job with both).
    real = next(
        e["ResponseBody"]
        for e in json.loads(RECORDED_JOBS.read_text(encoding="utf-8"))["Entries"]
        if e["RequestMethod"] == "GET" and e["RequestUri"].split("?")[0].endswith("/jobs/batch_job1_")
    )
    emulated = job.as_dict()
    for key in ("jobPreparationTask", "jobReleaseTask"):
        given = {"environmentSettings", "environmentSettings.name", "environmentSettings.value"}  # in this test only
        assert key_paths(emulated[key]) - given == key_paths(real[key]), key

    # Each task reads what the preparation task left in its own working directory (AZ_BATCH_JOB_PREP_WORKING_DIR).
    read = sh('cat "$AZ_BATCH_JOB_PREP_WORKING_DIR/prepared"; cat "$AZ_BATCH_NODE_SHARED_DIR/log"')
    await batch.create_tasks("job", [m.BatchTaskCreateOptions(id=f"t{i}", command_line=read) for i in range(4)])
    for i in range(4):
        task = await finished(batch, "job", f"t{i}")
        assert task.execution_info is not None and task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
        assert await download(batch, "job", f"t{i}", "stdout.txt") == b"jobpreparation\nprep\n"
    listed = await statuses(batch, "job")
    assert len(listed) == 2 and {s.pool_id for s in listed} == {"pool"}  # both nodes ran tasks (spread)
    for status in listed:
        info = status.job_preparation_task_execution_info
        assert info is not None and info.state == m.BatchJobPreparationTaskState.COMPLETED
        assert info.exit_code == 0 and info.result == m.BatchTaskExecutionResult.SUCCESS and info.retry_count == 0
        assert info.task_root_directory == "workitems/job/job-1/jobpreparation"
        assert status.job_release_task_execution_info is None

    await terminate(batch, "job")
    assert (await batch.get_job("job")).state == m.BatchJobState.COMPLETED
    for status in await statuses(batch, "job"):
        released = status.job_release_task_execution_info
        assert released is not None and released.state == m.BatchJobReleaseTaskState.COMPLETED
        assert released.exit_code == 0 and released.result == m.BatchTaskExecutionResult.SUCCESS


async def test_a_failed_preparation_keeps_the_jobs_tasks_off_the_node(batch: BatchClient) -> None:
    await ready_pool(batch, "pool", 1)
    prep = m.BatchJobPreparationTask(
        command_line=sh("exit 3"), constraints=m.BatchTaskConstraints(max_task_retry_count=1)
    )
    await batch.create_job(
        m.BatchJobCreateOptions(id="bad", pool_info=m.BatchPoolInfo(pool_id="pool"), job_preparation_task=prep)
    )
    await batch.create_task("bad", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))

    async def failed() -> list[m.BatchJobPreparationAndReleaseTaskStatus] | None:
        listed = await statuses(batch, "bad")
        info = listed[0].job_preparation_task_execution_info if listed else None
        return listed if info is not None and info.state == m.BatchJobPreparationTaskState.COMPLETED else None

    [status] = await wait_for(failed, what="the preparation task failed")
    info = status.job_preparation_task_execution_info
    assert info is not None and info.exit_code == 3 and info.retry_count == 1
    assert info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.failure_info is not None and info.failure_info.code == "FailureExitCode"
    await anyio.sleep(0.3)
    task = await batch.get_task("bad", "t")
    assert task.state == m.BatchTaskState.ACTIVE  # never runs on that node

    # The node stays usable for other jobs.
    await batch.create_job(m.BatchJobCreateOptions(id="good", pool_info=m.BatchPoolInfo(pool_id="pool")))
    await batch.create_task("good", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    assert (await finished(batch, "good", "t")).execution_info.result == m.BatchTaskExecutionResult.SUCCESS  # type: ignore[union-attr]

    # Without waitForSuccess, tasks run whatever the preparation task does.
    lax = m.BatchJobPreparationTask(command_line=sh("exit 3"), wait_for_success=False)
    await batch.create_job(
        m.BatchJobCreateOptions(id="lax", pool_info=m.BatchPoolInfo(pool_id="pool"), job_preparation_task=lax)
    )
    await batch.create_task("lax", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    assert (await finished(batch, "lax", "t")).execution_info.result == m.BatchTaskExecutionResult.SUCCESS  # type: ignore[union-attr]


async def test_a_reboot_reruns_the_preparation_task(batch: BatchClient, batch_emulator: Emulator) -> None:
    """The hook the node operations call: after a reboot (rerunOnNodeRebootAfterSuccess) or a reimage."""
    await ready_pool(batch, "pool", 1)
    count = sh('echo x >> "$AZ_BATCH_NODE_SHARED_DIR/preps"')
    await batch.create_job(
        m.BatchJobCreateOptions(
            id="job",
            pool_info=m.BatchPoolInfo(pool_id="pool"),
            job_preparation_task=m.BatchJobPreparationTask(command_line=count),
        )
    )
    read = sh('wc -l < "$AZ_BATCH_NODE_SHARED_DIR/preps"')
    await batch.create_task("job", m.BatchTaskCreateOptions(id="t1", command_line=read))
    await finished(batch, "job", "t1")
    await batch.create_task("job", m.BatchTaskCreateOptions(id="t2", command_line=read))
    await finished(batch, "job", "t2")
    assert (await download(batch, "job", "t2", "stdout.txt")).strip() == b"1"  # once per node

    assert batch_emulator.account is not None and batch_emulator._scheduler is not None
    node = next(iter(batch_emulator.account.pools["pool"].nodes.values()))
    batch_emulator._scheduler.jobprep.node_rebooted(node, reimaged=False)
    await batch.create_task("job", m.BatchTaskCreateOptions(id="t3", command_line=read))
    await finished(batch, "job", "t3")
    assert (await download(batch, "job", "t3", "stdout.txt")).strip() == b"2"


async def test_what_is_refused(batch: BatchClient) -> None:
    pool = m.BatchPoolInfo(pool_id="pool")
    prep = m.BatchJobPreparationTask(id="setup", command_line="/bin/true")
    await batch.create_job(m.BatchJobCreateOptions(id="job", pool_info=pool, job_preparation_task=prep))
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_task("job", m.BatchTaskCreateOptions(id="SETUP", command_line="/bin/true"))
    assert caught.value.status_code == 409 and code_of(caught.value) == "TaskIdSameAsJobPreparationTask"

    container = m.BatchJobPreparationTask(
        command_line="/bin/true", container_settings=m.BatchTaskContainerSettings(image_name="ubuntu")
    )
    release_alone = m.BatchJobReleaseTask(command_line="/bin/true")
    too_long = m.BatchJobReleaseTask(command_line="/bin/true", max_wall_clock_time=dt.timedelta(minutes=20))
    manager = m.BatchJobManagerTask(id="jm", command_line="/bin/true")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"job_preparation_task": container}, "jobPreparationTask.containerSettings"),
        ({"job_release_task": release_alone}, "jobReleaseTask"),
        ({"job_preparation_task": prep, "job_release_task": too_long}, "jobReleaseTask.maxWallClockTime"),
        ({"job_manager_task": manager}, "jobManagerTask"),
    ]
    for index, (extra, prop) in enumerate(cases):
        with pytest.raises(HttpResponseError) as caught:
            await batch.create_job(m.BatchJobCreateOptions(id=f"refused{index}", pool_info=pool, **extra))
        assert caught.value.status_code == 400, prop
        assert details_of(caught.value)["PropertyName"] == prop
    assert [j.id async for j in batch.list_jobs()] == ["job"]


async def test_the_preparation_and_release_directories_go_when_their_retention_ends(tmp_path: Path) -> None:
    """retentionTime of both tasks is honoured on the emulator's clock: their directories leave the node."""
    async with (
        Emulator(workdir=tmp_path / "emulator", clock_speed=60) as emulator,
        BatchClient(emulator.endpoint, emulator.credential) as batch,
    ):
        await ready_pool(batch, "pool", 1)
        retained = dt.timedelta(minutes=5)  # 5 s of real time at 60x: longer than the task after it takes
        await batch.create_job(
            m.BatchJobCreateOptions(
                id="job",
                pool_info=m.BatchPoolInfo(pool_id="pool"),
                job_preparation_task=m.BatchJobPreparationTask(
                    command_line=sh("echo prepared > out"), constraints=m.BatchTaskConstraints(retention_time=retained)
                ),
                job_release_task=m.BatchJobReleaseTask(
                    id="rel", command_line=sh("echo released > out"), retention_time=dt.timedelta(days=1)
                ),
            )
        )
        await batch.create_task("job", m.BatchTaskCreateOptions(id="t", command_line="true"))
        await finished(batch, "job", "t")
        (node,) = [str(n.id) async for n in batch.list_nodes("pool")]

        async def names() -> set[str]:
            listed = batch.list_node_files("pool", node, recursive=True)
            return {str(f.name) async for f in listed}

        prep_file = "workitems/job/job-1/jobpreparation/wd/out"
        assert prep_file in await names(), " ".join(sorted(await names()))
        await terminate(batch, "job")  # the release task runs; its day of retention is not over in the test

        async def prep_gone() -> bool:
            return prep_file not in await names()

        await wait_for(prep_gone, within=20, what="the preparation directory's retention (5 minutes at 60x)")
        assert "workitems/job/job-1/rel/wd/out" in await names()
