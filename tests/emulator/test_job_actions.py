"""Issue 16, item 2: exit conditions and job actions, a job's wall clock, disable/enable, task reactivate/replace.

Every test drives the unmodified ``azure.batch.aio.BatchClient`` against the emulator, with short real commands.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from aiobatch.emulator import Emulator
from aiobatch.emulator._exit_options import exit_options
from aiobatch.emulator._types import FailureInfo

from .test_contract_aio import download, finished, pool_options, ready_pool, sh, wait_for

pytestmark = pytest.mark.anyio

PERFORM = m.BatchTaskFailureMode.PERFORM_EXIT_OPTIONS_JOB_ACTION

#: azure-batch 15.1 sends no Content-Type (and fails) for a terminate without non-empty options; the options
#: model is not exported, so a mapping stands in for it.
TERMINATE: Any = {"terminateReason": "UserTerminate"}


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


async def make_job(batch: BatchClient, job_id: str = "j", *, pool: bool = True, **extra: Any) -> None:
    if pool:
        await ready_pool(batch, "p", task_slots_per_node=4)
    await batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id="p"), **extra))


async def job_state(batch: BatchClient, job_id: str, state: m.BatchJobState, within: float = 10.0) -> m.BatchJob:
    async def reached() -> m.BatchJob | None:
        job = await batch.get_job(job_id)
        return job if job.state == state else None

    return await wait_for(reached, within=within, what=f"job {job_id} {state}")


async def task_state(batch: BatchClient, job_id: str, task_id: str, state: m.BatchTaskState) -> m.BatchTask:
    async def reached() -> m.BatchTask | None:
        task = await batch.get_task(job_id, task_id)
        return task if task.state == state else None

    return await wait_for(reached, what=f"task {task_id} {state}")


async def refused(call: Any, status: int, code: str) -> None:
    with pytest.raises(HttpResponseError) as caught:
        await call
    assert caught.value.status_code == status, caught.value
    assert caught.value.error is not None and caught.value.error.code == code, caught.value


def on_exit_code(code: int, action: str) -> m.ExitConditions:
    return m.ExitConditions(exit_codes=[m.ExitCodeMapping(code=code, exit_options=m.ExitOptions(job_action=action))])


# --- exit conditions and onTaskFailure ----------------------------------------------------------------------


async def test_a_failed_task_terminates_its_job_by_default_when_the_job_performs_exit_options(
    batch: BatchClient,
) -> None:
    """jobAction defaults to terminate for every exit condition but exit code 0."""
    await make_job(batch, task_failure_mode=PERFORM)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="ok", command_line="true"))
    await finished(batch, "j", "ok")
    assert (await batch.get_job("j")).state == m.BatchJobState.ACTIVE
    await batch.create_task("j", m.BatchTaskCreateOptions(id="bad", command_line=sh("exit 3")))
    job = await job_state(batch, "j", m.BatchJobState.COMPLETED)
    assert job.execution_info is not None and job.execution_info.termination_reason == "TaskFailed"


async def test_with_on_task_failure_noaction_a_failure_leaves_the_job_alone(batch: BatchClient) -> None:
    await make_job(batch)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="bad", command_line=sh("exit 3")))
    await finished(batch, "j", "bad")
    await anyio.sleep(0.1)
    assert (await batch.get_job("j")).state == m.BatchJobState.ACTIVE


async def test_exit_codes_and_ranges_choose_the_job_action(batch: BatchClient) -> None:
    await make_job(batch, task_failure_mode=PERFORM)
    conditions = m.ExitConditions(
        exit_codes=[m.ExitCodeMapping(code=3, exit_options=m.ExitOptions(job_action="none"))],
        exit_code_ranges=[m.ExitCodeRangeMapping(start=4, end=9, exit_options=m.ExitOptions(job_action="disable"))],
        default=m.ExitOptions(job_action="terminate"),
    )
    await batch.create_task(
        "j", m.BatchTaskCreateOptions(id="three", command_line=sh("exit 3"), exit_conditions=conditions)
    )
    three = await finished(batch, "j", "three")
    assert three.exit_conditions is not None and three.exit_conditions.exit_code_ranges  # rendered back
    assert (await batch.get_job("j")).state == m.BatchJobState.ACTIVE
    await batch.create_task(
        "j", m.BatchTaskCreateOptions(id="five", command_line=sh("exit 5"), exit_conditions=conditions)
    )
    await job_state(batch, "j", m.BatchJobState.DISABLED)
    await (await batch.begin_enable_job("j", polling_interval=0)).result()
    await batch.create_task(
        "j", m.BatchTaskCreateOptions(id="ten", command_line=sh("exit 10"), exit_conditions=conditions)
    )
    job = await job_state(batch, "j", m.BatchJobState.COMPLETED)
    assert job.execution_info is not None and job.execution_info.termination_reason == "TaskFailed"


async def test_a_pre_processing_error_takes_its_own_options(batch: BatchClient) -> None:
    await make_job(batch, task_failure_mode=PERFORM)
    conditions = m.ExitConditions(
        pre_processing_error=m.ExitOptions(job_action="terminate"), default=m.ExitOptions(job_action="none")
    )
    await batch.create_task(
        "j", m.BatchTaskCreateOptions(id="exit", command_line=sh("exit 2"), exit_conditions=conditions)
    )
    await finished(batch, "j", "exit")
    assert (await batch.get_job("j")).state == m.BatchJobState.ACTIVE
    missing = m.BatchTaskCreateOptions(id="missing", command_line="/no/such/program", exit_conditions=conditions)
    await batch.create_task("j", missing)
    task = await finished(batch, "j", "missing")
    assert task.execution_info is not None and task.execution_info.failure_info is not None
    assert task.execution_info.failure_info.code == "CommandProgramNotFound"
    job = await job_state(batch, "j", m.BatchJobState.COMPLETED)
    assert job.execution_info is not None and job.execution_info.termination_reason == "TaskFailed"


async def test_a_file_upload_error_takes_its_own_options(batch: BatchClient, batch_emulator: Emulator) -> None:
    await make_job(batch, task_failure_mode=PERFORM)
    conditions = m.ExitConditions(
        file_upload_error=m.ExitOptions(job_action="disable"), default=m.ExitOptions(job_action="none")
    )
    upload = m.OutputFile(
        file_pattern="out.txt",
        destination=m.OutputFileDestination(
            container=m.OutputFileBlobContainerDestination(container_url=f"{batch_emulator.endpoint}/nowhere?sv=1")
        ),
        upload_options=m.OutputFileUploadConfiguration(upload_condition="taskcompletion"),
    )
    spec = m.BatchTaskCreateOptions(
        id="up", command_line=sh("echo x > out.txt"), output_files=[upload], exit_conditions=conditions
    )
    await batch.create_task("j", spec)
    task = await finished(batch, "j", "up")
    assert task.execution_info is not None and task.execution_info.failure_info is not None
    assert task.execution_info.failure_info.code.startswith("FileUpload"), task.execution_info.failure_info
    await job_state(batch, "j", m.BatchJobState.DISABLED)


def test_the_options_chosen_for_each_way_a_task_ends() -> None:
    conditions = {
        "exitCodes": [{"code": 0, "exitOptions": {"dependencyAction": "block"}}, {"code": 2, "exitOptions": {}}],
        "fileUploadError": {"jobAction": "disable"},
    }
    exited = FailureInfo("usererror", "FailureExitCode", "")
    upload = FailureInfo("usererror", "FileUploadContainerNotFound", "")
    assert exit_options(None, 0, None) == exit_options({}, 0, None)
    assert (exit_options(None, 0, None).job_action, exit_options(None, 0, None).dependency_action) == (
        "none",
        "satisfy",
    )
    assert exit_options(conditions, 0, None).dependency_action == "block"
    assert exit_options(conditions, 2, exited).job_action == "terminate"  # listed, jobAction left out: the default
    assert exit_options(conditions, 0, upload).dependency_action == "block"  # the listed exit code takes precedence
    assert exit_options(conditions, 1, upload).job_action == "disable"
    ended = FailureInfo("servererror", "TaskEnded", "")
    assert exit_options(conditions, None, ended) == exit_options({}, 1, exited)  # no preProcessingError: default


async def test_all_tasks_complete_terminates_the_job_with_its_reason(batch: BatchClient) -> None:
    await make_job(batch)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true"))
    await batch.update_job("j", m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    job = await job_state(batch, "j", m.BatchJobState.COMPLETED)
    assert job.execution_info is not None and job.execution_info.termination_reason == "AllTasksComplete"


# --- the job's wall clock ---------------------------------------------------------------------------------------


async def test_a_job_past_its_max_wall_clock_time_is_terminated_with_its_running_tasks(batch: BatchClient) -> None:
    limit = m.BatchJobConstraints(max_wall_clock_time=dt.timedelta(seconds=1))
    await make_job(batch, constraints=limit)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="long", command_line="sleep 30"))
    await task_state(batch, "j", "long", m.BatchTaskState.RUNNING)
    job = await job_state(batch, "j", m.BatchJobState.COMPLETED, within=5)
    assert job.execution_info is not None and job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    task = await batch.get_task("j", "long")
    assert task.state == m.BatchTaskState.COMPLETED
    assert task.execution_info is not None and task.execution_info.result == m.BatchTaskExecutionResult.FAILURE


async def test_a_wall_clock_set_by_an_update_counts_from_the_jobs_creation(batch: BatchClient) -> None:
    await make_job(batch, pool=False)
    await anyio.sleep(1.0)
    limit = m.BatchJobConstraints(max_wall_clock_time=dt.timedelta(seconds=1))
    await batch.update_job("j", m.BatchJobUpdateOptions(constraints=limit))  # already past: ends at once
    job = await job_state(batch, "j", m.BatchJobState.COMPLETED, within=3)
    assert job.execution_info is not None and job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    assert job.execution_info.end_time is not None
    # Counted from the update, it would have ended 2 s after the creation.
    assert job.execution_info.end_time - job.creation_time < dt.timedelta(seconds=1.6)  # type: ignore[operator]


# --- disable and enable -----------------------------------------------------------------------------------------


async def test_disable_requeue_stops_running_tasks_and_enable_runs_them_again(batch: BatchClient) -> None:
    await make_job(batch)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="sleep 30"))
    await task_state(batch, "j", "t", m.BatchTaskState.RUNNING)
    poller = await batch.begin_disable_job("j", m.BatchJobDisableOptions(disable_tasks="requeue"), polling_interval=0)
    await poller.result()
    job = await batch.get_job("j")
    assert job.state == m.BatchJobState.DISABLED and job.previous_state == m.BatchJobState.DISABLING
    task = await batch.get_task("j", "t")
    assert task.state == m.BatchTaskState.ACTIVE
    assert task.execution_info is not None and task.execution_info.requeue_count == 1
    await batch.create_task("j", m.BatchTaskCreateOptions(id="new", command_line="true"))  # accepted, not run
    await anyio.sleep(0.2)
    assert (await batch.get_task("j", "new")).state == m.BatchTaskState.ACTIVE
    await (await batch.begin_enable_job("j", polling_interval=0)).result()
    assert (await batch.get_job("j")).state == m.BatchJobState.ACTIVE
    await finished(batch, "j", "new")
    await task_state(batch, "j", "t", m.BatchTaskState.RUNNING)
    await batch.begin_terminate_job("j", TERMINATE)


async def test_disable_terminate_completes_running_tasks_as_terminated(batch: BatchClient) -> None:
    await make_job(batch)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="sleep 30"))
    await task_state(batch, "j", "t", m.BatchTaskState.RUNNING)
    await (
        await batch.begin_disable_job("j", m.BatchJobDisableOptions(disable_tasks="terminate"), polling_interval=0)
    ).result()
    task = await batch.get_task("j", "t")
    assert task.state == m.BatchTaskState.COMPLETED
    assert task.execution_info is not None and task.execution_info.failure_info is not None
    assert task.execution_info.failure_info.code == "TaskEnded"
    # Disabling a disabled job is accepted; disabling a completed one is the service's 409.
    await (
        await batch.begin_disable_job("j", m.BatchJobDisableOptions(disable_tasks="wait"), polling_interval=0)
    ).result()
    await batch.begin_terminate_job("j", TERMINATE)
    await job_state(batch, "j", m.BatchJobState.COMPLETED)
    await refused(batch.begin_disable_job("j", m.BatchJobDisableOptions(disable_tasks="wait")), 409, "JobCompleted")
    await refused(batch.begin_enable_job("j"), 409, "JobCompleted")


async def test_disable_wait_lets_running_tasks_finish(batch: BatchClient) -> None:
    await make_job(batch)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="sleep 1"))
    await task_state(batch, "j", "t", m.BatchTaskState.RUNNING)
    await batch.begin_disable_job("j", m.BatchJobDisableOptions(disable_tasks="wait"), polling_interval=0)
    assert (await batch.get_job("j")).state == m.BatchJobState.DISABLING
    await job_state(batch, "j", m.BatchJobState.DISABLED)
    task = await batch.get_task("j", "t")
    assert task.execution_info is not None and task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS


async def test_a_disable_body_without_disable_tasks_is_the_services_400(batch: BatchClient) -> None:
    await make_job(batch, pool=False)
    await refused(batch.begin_disable_job("j", m.BatchJobDisableOptions()), 400, "MissingRequiredProperty")


# --- reactivate, replace, subtasks ----------------------------------------------------------------------------


async def test_reactivate_runs_a_failed_task_again_with_its_retry_count_reset(batch: BatchClient) -> None:
    await make_job(batch)
    # Counts its attempts in its working directory (which outlives an attempt), and always fails.
    counting = sh("echo x >> attempts; sleep 0.3; exit 3")
    retry_once = m.BatchTaskConstraints(max_task_retry_count=1)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=counting, constraints=retry_once))
    failed = await finished(batch, "j", "t")
    assert failed.execution_info is not None and failed.execution_info.retry_count == 1
    await batch.reactivate_task("j", "t")
    back = await batch.get_task("j", "t")
    assert back.state != m.BatchTaskState.COMPLETED
    assert back.execution_info is not None and back.execution_info.exit_code is None
    assert back.execution_info.failure_info is None
    again = await finished(batch, "j", "t")
    assert again.execution_info is not None and again.execution_info.retry_count == 1
    # Two attempts, then two more: the retry count started again from 0.
    assert (await download(batch, "j", "t", "wd/attempts")).count(b"x") == 4
    # Fails on its first run, succeeds on the next.
    flaky = sh("test -f marker && exit 0; touch marker; exit 3")
    await batch.create_task("j", m.BatchTaskCreateOptions(id="flaky", command_line=flaky))
    await finished(batch, "j", "flaky")
    await batch.reactivate_task("j", "flaky")
    good = await finished(batch, "j", "flaky")
    assert good.execution_info is not None and good.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
    await refused(batch.reactivate_task("j", "flaky"), 409, "TaskSucceeded")


async def test_reactivate_refuses_a_task_not_completed(batch: BatchClient) -> None:
    await make_job(batch, pool=False)  # no pool: the task stays active
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true"))
    await refused(batch.reactivate_task("j", "t"), 409, "TaskNotCompleted")
    await refused(batch.reactivate_task("j", "nope"), 404, "TaskNotFound")


async def test_replace_task_changes_its_constraints_only(batch: BatchClient) -> None:
    await make_job(batch, pool=False)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true"))
    constraints = m.BatchTaskConstraints(max_task_retry_count=3, max_wall_clock_time=dt.timedelta(minutes=5))
    await batch.replace_task("j", "t", m.BatchTask(constraints=constraints))
    task = await batch.get_task("j", "t")
    assert task.constraints is not None
    assert task.constraints.max_task_retry_count == 3
    assert task.constraints.max_wall_clock_time == dt.timedelta(minutes=5)
    assert task.constraints.retention_time == dt.timedelta(days=7)
    assert task.command_line == "true"
    bad = m.BatchTask(constraints=m.BatchTaskConstraints(max_task_retry_count=101))
    await refused(batch.replace_task("j", "t", bad), 400, "InvalidPropertyValue")
    await batch.terminate_task("j", "t")
    await refused(batch.replace_task("j", "t", m.BatchTask(constraints=constraints)), 409, "TaskCompleted")


async def test_a_replaced_retry_count_applies_to_the_next_attempts(batch: BatchClient) -> None:
    await make_job(batch)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=sh("sleep 0.3; exit 1")))
    await task_state(batch, "j", "t", m.BatchTaskState.RUNNING)
    await batch.replace_task("j", "t", m.BatchTask(constraints=m.BatchTaskConstraints(max_task_retry_count=1)))
    task = await finished(batch, "j", "t")
    assert task.execution_info is not None and task.execution_info.retry_count == 1


async def test_an_ordinary_task_has_no_subtasks(batch: BatchClient) -> None:
    await make_job(batch, pool=False)
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true"))
    assert [s async for s in batch.list_subtasks("j", "t")] == []
    with pytest.raises(HttpResponseError) as caught:
        async for _ in batch.list_subtasks("j", "nope"):
            pass
    assert caught.value.status_code == 404


async def test_replacing_a_task_with_null_constraints_keeps_their_defaults(batch: BatchClient) -> None:
    """A null maxTaskRetryCount in a replace body was a 500 (found by the hostile-input fuzz): null is 'not given'."""
    await batch.create_pool(pool_options("p", nodes=0))
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true"))
    body = {"constraints": {"maxTaskRetryCount": None, "maxWallClockTime": None}}
    answer = await batch.send_request(HttpRequest("PUT", "/jobs/j/tasks/t?api-version=2025-06-01", json=body))
    assert answer.status_code == 200, answer.text()
    constraints = (await batch.get_task("j", "t")).constraints
    assert constraints is not None and constraints.max_task_retry_count == 0
