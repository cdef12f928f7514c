"""Contract tests of job schedules: the unmodified ``azure.batch.aio.BatchClient`` against the emulator.

The service's shortest ``recurrenceInterval`` and ``startWindow`` is a minute, and the emulator refuses less as the
service does. So that these tests take seconds, their emulator's clock runs `SPEED` times faster than the wall
clock: the scheduler's ``now`` and ``real_seconds`` are replaced, the two places every duration of the emulator
passes through (the stand-in for the emulator's clock option). A minute's recurrence is then one real second.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse

from aiobatch.emulator import Emulator
from aiobatch.local import TEST_TIMINGS

from .test_contract_aio import wait_for

pytestmark = pytest.mark.anyio

T = TypeVar("T")

#: How much faster than the wall clock the emulated service's time runs in these tests.
SPEED = 60.0
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(workdir=tmp_path / "emulator", timings=TEST_TIMINGS, clock_speed=SPEED) as emu:
        yield emu


class Paths:
    """The request paths the client sent (a ``raw_response_hook``), as it wrote them."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        self.seen.append(response.http_request.url)


@pytest.fixture
def paths() -> Paths:
    return Paths()


@pytest.fixture
async def batch(emulator: Emulator, paths: Paths) -> AsyncIterator[BatchClient]:
    async with BatchClient(emulator.endpoint, emulator.credential, raw_response_hook=paths) as client:
        yield client


def now(emulator: Emulator) -> dt.datetime:
    """The emulated service's time."""
    assert emulator._scheduler is not None
    return emulator._scheduler.now()


def spec(**extra: Any) -> m.BatchJobSpecification:
    return m.BatchJobSpecification(pool_info=m.BatchPoolInfo(pool_id="pool"), **extra)


def options(
    schedule_id: str, schedule: m.BatchJobScheduleConfiguration, **extra: Any
) -> m.BatchJobScheduleCreateOptions:
    return m.BatchJobScheduleCreateOptions(id=schedule_id, schedule=schedule, job_specification=spec(), **extra)


async def job_ids(batch: BatchClient, schedule_id: str) -> list[str]:
    return [job.id async for job in batch.list_jobs_from_schedule(schedule_id)]


async def has_jobs(batch: BatchClient, schedule_id: str, count: int) -> list[str] | None:
    ids = await job_ids(batch, schedule_id)
    return ids if len(ids) >= count else None


async def schedule_state(batch: BatchClient, schedule_id: str, state: str) -> m.BatchJobSchedule | None:
    schedule = await batch.get_job_schedule(schedule_id)
    return schedule if schedule.state == state else None


async def schedule_exists(batch: BatchClient, schedule_id: str) -> bool:
    """``job_schedule_exists``; azure-batch 15.1.0's error policy raises on the HEAD's 404 instead of False."""
    try:
        return await batch.job_schedule_exists(schedule_id)
    except ResourceNotFoundError as exc:
        assert exc.status_code == 404
        return False


async def terminate_job(batch: BatchClient, job_id: str) -> None:
    # Without options the SDK fails before sending (its content-type header is None).
    options: Any = {"terminateReason": "UserTerminate"}
    await (await batch.begin_terminate_job(job_id, options, polling_interval=0.05)).result()


def code_of(exc: HttpResponseError) -> str | None:
    return exc.error.code if exc.error is not None else None


def details_of(exc: HttpResponseError) -> dict[str, str]:
    return {d.code: d.message for d in (exc.error.details if exc.error is not None else [])}


# --- the operations -------------------------------------------------------------------------------------------


async def test_create_get_list_exists_update_and_replace(batch: BatchClient, emulator: Emulator) -> None:
    until = now(emulator) + dt.timedelta(hours=1)
    await batch.create_job_schedule(
        options(
            "nightly",
            m.BatchJobScheduleConfiguration(do_not_run_until=until, recurrence_interval=dt.timedelta(hours=24)),
            display_name="Nightly",
            metadata=[m.BatchMetadataItem(name="team", value="render")],
        )
    )
    got = await batch.get_job_schedule("nightly")
    assert got.id == "nightly" and got.display_name == "Nightly" and got.state == m.BatchJobScheduleState.ACTIVE
    assert got.url.endswith("/jobschedules/nightly") and got.etag
    assert got.schedule is not None and got.schedule.recurrence_interval == dt.timedelta(hours=24)
    assert got.execution_info.next_run_time is not None
    assert abs(got.execution_info.next_run_time - until) < dt.timedelta(milliseconds=1)
    assert got.execution_info.recent_job is None
    # The job specification comes back with the service's defaults filled in.
    assert got.job_specification.priority == 0 and got.job_specification.max_parallel_tasks == -1
    assert got.job_specification.pool_info.pool_id == "pool"
    assert got.metadata is not None and got.metadata[0].value == "render"

    assert await batch.job_schedule_exists("nightly") is True
    assert await batch.job_schedule_exists("NIGHTLY") is True  # ids are case-insensitive
    assert await schedule_exists(batch, "weekly") is False
    assert [s.id async for s in batch.list_job_schedules()] == ["nightly"]
    assert [s.id async for s in batch.list_job_schedules(filter="state eq 'active'")] == ["nightly"]
    assert [s.id async for s in batch.list_job_schedules(filter="state eq 'disabled'")] == []

    # PATCH changes what it names; a stale ETag is the service's 412.
    await batch.update_job_schedule(
        "nightly", m.BatchJobScheduleUpdateOptions(metadata=[m.BatchMetadataItem(name="team", value="audio")])
    )
    updated = await batch.get_job_schedule("nightly")
    assert updated.etag != got.etag and updated.metadata is not None and updated.metadata[0].value == "audio"
    assert updated.schedule is not None and updated.schedule.recurrence_interval == dt.timedelta(hours=24)
    with pytest.raises(ResourceModifiedError):
        await batch.update_job_schedule(
            "nightly",
            m.BatchJobScheduleUpdateOptions(metadata=[]),
            etag=got.etag,
            match_condition=MatchConditions.IfNotModified,
        )

    # PUT replaces all: what it leaves out goes back to its default (no metadata).
    replaced = await batch.get_job_schedule("nightly")
    replaced.schedule = m.BatchJobScheduleConfiguration(do_not_run_until=until, recurrence_interval=MINUTE * 90)
    replaced.metadata = None
    await batch.replace_job_schedule("nightly", replaced)
    after = await batch.get_job_schedule("nightly")
    assert after.schedule is not None and after.schedule.recurrence_interval == MINUTE * 90
    assert not after.metadata

    with pytest.raises(ResourceNotFoundError) as missing:
        await batch.get_job_schedule("weekly")
    assert code_of(missing.value) == "JobScheduleNotFound"


async def test_a_schedule_creates_a_job_at_once_named_after_it(batch: BatchClient, paths: Paths) -> None:
    await batch.create_job_schedule(options("once", m.BatchJobScheduleConfiguration()))
    ids = await wait_for(lambda: has_jobs(batch, "once", 1), what="the schedule's job")
    assert ids == ["once:job-1"]
    # The SDK writes the ':' as %3A in the path, and signs that path: the emulator checks the same form.
    job = await batch.get_job("once:job-1")
    assert any("/jobs/once%3Ajob-1" in url for url in paths.seen)
    assert job.pool_info.pool_id == "pool" and job.state == m.BatchJobState.ACTIVE
    await batch.create_task("once:job-1", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    assert [t.id async for t in batch.list_tasks("once:job-1")] == ["t"]
    schedule = await batch.get_job_schedule("once")
    assert schedule.execution_info.recent_job is not None
    assert schedule.execution_info.recent_job.id == "once:job-1"
    assert schedule.execution_info.recent_job.url.endswith("/jobs/once:job-1")
    assert schedule.execution_info.next_run_time is None  # no recurrence: no more jobs

    # Without a recurrence the schedule completes once its one job has ended.
    await terminate_job(batch, "once:job-1")
    completed = await wait_for(lambda: schedule_state(batch, "once", "completed"), what="the schedule completed")
    assert completed.execution_info.end_time is not None
    assert await job_ids(batch, "once") == ["once:job-1"]


async def test_recurrence_waits_for_the_active_job(batch: BatchClient, emulator: Emulator) -> None:
    """One active job at a time: the next recurrence waits for the last job to end, then runs (no window)."""
    created = now(emulator)
    await batch.create_job_schedule(options("every", m.BatchJobScheduleConfiguration(recurrence_interval=MINUTE)))
    await wait_for(lambda: has_jobs(batch, "every", 1), what="job 1")
    schedule = await batch.get_job_schedule("every")
    assert schedule.execution_info.next_run_time is not None
    assert MINUTE - dt.timedelta(seconds=5) < schedule.execution_info.next_run_time - created < MINUTE * 1.5
    await anyio.sleep(2.5)  # more than two recurrences (a minute each) pass while job 1 is active
    assert await job_ids(batch, "every") == ["every:job-1"]

    await terminate_job(batch, "every:job-1")
    ids = await wait_for(lambda: has_jobs(batch, "every", 2), what="job 2")
    assert ids == ["every:job-1", "every:job-2"]
    # And then at the next recurrence, as job 2 ends in time.
    await terminate_job(batch, "every:job-2")
    await wait_for(lambda: has_jobs(batch, "every", 3), what="job 3")


async def test_a_job_that_ends_after_its_start_window_loses_that_recurrence(
    batch: BatchClient, emulator: Emulator
) -> None:
    config = m.BatchJobScheduleConfiguration(recurrence_interval=MINUTE * 2, start_window=MINUTE)
    await batch.create_job_schedule(options("windowed", config))
    await wait_for(lambda: has_jobs(batch, "windowed", 1), what="job 1")
    first = await batch.get_job_schedule("windowed")
    assert first.execution_info.next_run_time is not None
    due = first.execution_info.next_run_time

    async def window_passed() -> bool:
        return now(emulator) > due + MINUTE + dt.timedelta(seconds=10)

    await wait_for(window_passed, what="the start window of recurrence 2")
    await terminate_job(batch, "windowed:job-1")
    # Recurrence 2's window has passed: the next job is recurrence 3's, due two minutes after recurrence 2.
    later = await wait_for(lambda: schedule_state(batch, "windowed", "active"), what="the schedule's next run")
    assert later.execution_info.next_run_time == due + MINUTE * 2
    assert await job_ids(batch, "windowed") == ["windowed:job-1"]
    await wait_for(lambda: has_jobs(batch, "windowed", 2), what="job 2 at recurrence 3")


async def test_a_missed_start_window_creates_no_job_and_completes_the_schedule(
    batch: BatchClient, emulator: Emulator
) -> None:
    config = m.BatchJobScheduleConfiguration(
        do_not_run_until=now(emulator) - dt.timedelta(minutes=10), start_window=MINUTE
    )
    await batch.create_job_schedule(options("late", config))
    await wait_for(lambda: schedule_state(batch, "late", "completed"), what="the schedule completed")
    assert await job_ids(batch, "late") == []


async def test_do_not_run_until_and_after(batch: BatchClient, emulator: Emulator) -> None:
    until = now(emulator) + MINUTE * 2
    config = m.BatchJobScheduleConfiguration(
        do_not_run_until=until, do_not_run_after=until + dt.timedelta(seconds=30), recurrence_interval=MINUTE
    )
    await batch.create_job_schedule(options("window", config))
    assert await job_ids(batch, "window") == []
    await wait_for(lambda: has_jobs(batch, "window", 1), what="the job at doNotRunUntil")
    assert now(emulator) >= until
    # The recurrence after doNotRunAfter never comes; the schedule completes once the job has ended.
    await anyio.sleep(1.5)
    assert (await batch.get_job_schedule("window")).state == m.BatchJobScheduleState.ACTIVE
    await terminate_job(batch, "window:job-1")
    await wait_for(lambda: schedule_state(batch, "window", "completed"), what="the schedule completed")
    assert await job_ids(batch, "window") == ["window:job-1"]


async def test_disable_enable_terminate_and_delete(batch: BatchClient, emulator: Emulator) -> None:
    until = now(emulator) + MINUTE
    config = m.BatchJobScheduleConfiguration(do_not_run_until=until, recurrence_interval=MINUTE * 60)
    await batch.create_job_schedule(options("ops", config))
    await batch.disable_job_schedule("ops")
    disabled = await batch.get_job_schedule("ops")
    assert disabled.state == m.BatchJobScheduleState.DISABLED
    assert disabled.previous_state == m.BatchJobScheduleState.ACTIVE

    async def past_due() -> bool:
        return now(emulator) > until + dt.timedelta(seconds=10)

    await wait_for(past_due, what="the first run time")
    assert await job_ids(batch, "ops") == []  # disabled: no job
    await batch.enable_job_schedule("ops")
    assert (await batch.get_job_schedule("ops")).state == m.BatchJobScheduleState.ACTIVE
    # The run missed while disabled is lost (a recurring schedule): the next is an hour on.
    await anyio.sleep(0.5)
    assert await job_ids(batch, "ops") == []

    # Terminate: its active job is terminated too, then the schedule is completed.
    await batch.create_job_schedule(options("term", m.BatchJobScheduleConfiguration()))
    await wait_for(lambda: has_jobs(batch, "term", 1), what="job 1")
    await (await batch.begin_terminate_job_schedule("term", polling_interval=0.05)).result()
    term = await batch.get_job_schedule("term")
    assert term.state == m.BatchJobScheduleState.COMPLETED
    assert (await batch.get_job("term:job-1")).state == m.BatchJobState.COMPLETED
    with pytest.raises(HttpResponseError) as caught:
        await batch.disable_job_schedule("term")
    assert caught.value.status_code == 409 and code_of(caught.value) == "JobScheduleCompleted"

    # Delete: the schedule and all its jobs go.
    await (await batch.begin_delete_job_schedule("term", polling_interval=0.05)).result()
    assert await schedule_exists(batch, "term") is False
    with pytest.raises(ResourceNotFoundError):
        await batch.get_job("term:job-1")
    await (await batch.begin_delete_job_schedule("ops", polling_interval=0.05)).result()
    assert [s.id async for s in batch.list_job_schedules()] == []


async def test_what_the_service_refuses(batch: BatchClient, emulator: Emulator) -> None:
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_job_schedule(
            options("fast", m.BatchJobScheduleConfiguration(recurrence_interval=dt.timedelta(seconds=30)))
        )
    assert caught.value.status_code == 400 and code_of(caught.value) == "InvalidPropertyValue"
    assert details_of(caught.value)["PropertyName"] == "schedule.recurrenceInterval"
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_job_schedule(
            options("narrow", m.BatchJobScheduleConfiguration(start_window=dt.timedelta(seconds=59)))
        )
    assert details_of(caught.value)["PropertyName"] == "schedule.startWindow"
    manager = m.BatchJobScheduleCreateOptions(
        id="managed",
        schedule=m.BatchJobScheduleConfiguration(),
        job_specification=spec(job_manager_task=m.BatchJobManagerTask(id="jm", command_line="/bin/true")),
    )
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_job_schedule(manager)
    assert caught.value.status_code == 400
    assert details_of(caught.value)["PropertyName"] == "jobSpecification.jobManagerTask"
    assert [s.id async for s in batch.list_job_schedules()] == []  # nothing was created

    config = m.BatchJobScheduleConfiguration(do_not_run_until=now(emulator) + dt.timedelta(days=1))
    await batch.create_job_schedule(options("dup", config))
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_job_schedule(options("DUP", config))
    assert caught.value.status_code == 409 and code_of(caught.value) == "JobScheduleExists"
    # Jobs and schedules share their ids.
    await batch.create_job(m.BatchJobCreateOptions(id="shared", pool_info=m.BatchPoolInfo(pool_id="pool")))
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_job_schedule(options("shared", config))
    assert caught.value.status_code == 409 and code_of(caught.value) == "JobWithSameIdExists"
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_job(m.BatchJobCreateOptions(id="dup", pool_info=m.BatchPoolInfo(pool_id="pool")))
    assert caught.value.status_code == 409 and code_of(caught.value) == "JobScheduleWithSameIdExists"


async def test_the_timer_looks_only_at_the_top_of_its_heap(
    batch: BatchClient, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll's cost does not grow with the number of schedules: nothing due, nothing evaluated."""
    from aiobatch.emulator._handlers._common import SCHEDULES_KEY

    later = now(emulator) + dt.timedelta(days=1)
    for i in range(100):
        await batch.create_job_schedule(options(f"s{i}", m.BatchJobScheduleConfiguration(do_not_run_until=later)))
    assert emulator._runner is not None
    schedules = emulator._runner.app[SCHEDULES_KEY]
    evaluated: list[str] = []
    real = schedules._evaluate

    def counting(schedule: Any) -> None:
        evaluated.append(schedule.id)
        real(schedule)

    monkeypatch.setattr(schedules, "_evaluate", counting)
    for _ in range(50):
        schedules.tick()
    assert evaluated == []
    assert len(schedules._heap) == 100
