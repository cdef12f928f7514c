"""Jobs: create, read, update, delete, terminate, disable, enable and task counts."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web

from .. import _job_control as job_control
from .. import _wire as wire
from .._model import Account, Job, ServiceError
from .._scheduler import Scheduler
from .._validate import body_of
from ._common import (
    account_of,
    answer_list,
    check_conditions,
    request_url,
    scheduler_of,
    schedules_of,
)

log = logging.getLogger("aiobatch.emulator")


async def create_job(request: web.Request) -> web.Response:
    """POST /jobs (with poolInfo.poolId or an autoPoolSpecification)."""
    account = account_of(request)
    job, auto = wire.parse_job(account, body_of(request))
    wire.parse_job_tasks(job.spec)
    existing = account.jobs.get(job.id.lower())
    if existing is not None:
        if existing.state == "deleting":
            raise ServiceError(
                409,
                "JobBeingDeleted",
                "The specified job has been marked for deletion and is being reclaimed.",
            )
        raise ServiceError(409, "JobExists", "The specified job already exists.")
    schedules = schedules_of(request)
    if schedules is not None and schedules.get(job.id) is not None:
        # Jobs and job schedules share one namespace in an account (the service's error table). # guessed status
        raise ServiceError(409, "JobScheduleWithSameIdExists", "A job schedule with the same id already exists.")
    start_job(account, scheduler_of(request), job, auto)
    # /jobs/job-1 whatever the id: the service answers so (tests/emulator/recordings, ..._jobs_async_.json: the
    # creates of batch_job1_ and batch_job2_ both answered DataServiceId .../jobs/job-1; Location is sanitized there).
    return wire.empty_response(201, headers=wire.entity_headers(job), location=f"{account.url}/jobs/job-1")


def start_job(account: Account, scheduler: Scheduler, job: Job, auto: dict[str, Any] | None) -> None:
    """Commit a parsed job: create its auto pool (if it has one) and hand it to the scheduler.

    The one path every new job takes, whether a client posted it or a job schedule created it.

    Raises:
        ServiceError: 400 for an auto-pool specification the service refuses (nothing is committed then).
    """
    if auto is not None:
        prefix = auto.get("autoPoolIdPrefix")
        pool_id = f"{prefix}_{uuid.uuid4()}" if prefix else str(uuid.uuid4()).upper()
        pool = wire.parse_pool(account, {**auto["pool"], "id": pool_id}, prop_prefix="autoPoolSpecification.pool.")
        pool.auto_pool_job = job.id
        job.pool_id = pool.id
        job.spec["poolInfo"] = {"autoPoolSpecification": wire.auto_pool_spec_for_render(pool, auto)}
        scheduler.add_pool(pool)
    scheduler.add_job(job)
    account.record_create("job", job.id)
    log.info("job %s created on pool %s", job.id, job.pool_id)


def render_job(account: Account, job: Job) -> dict[str, Any]:
    """A job as GET /jobs/{jobId} answers (its auto pool's specification as the service fills it in)."""
    auto = (job.spec.get("poolInfo") or {}).get("autoPoolSpecification") if job.auto_pool else None
    return wire.render_job(account, job, auto)


async def list_jobs(request: web.Request) -> web.Response:
    """GET /jobs."""
    account = account_of(request)
    jobs = sorted(account.jobs.values(), key=lambda j: j.id.lower())
    return answer_list(request, "jobs", "jobs", jobs, lambda j: render_job(account, j))


async def get_job(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}."""
    account = account_of(request)
    job = account.get_job(request.match_info["job"])
    if check_conditions(request, job):
        return wire.empty_response(304, headers=wire.entity_headers(job))
    body = wire.metadata(account.url, "jobs/@Element")
    body.update(wire.select(render_job(account, job), wire.parse_select(request)))
    return wire.json_response(body, headers=wire.entity_headers(job))


async def update_job(request: web.Request) -> web.Response:
    """PATCH (update) and PUT (replace) /jobs/{jobId}."""
    account = account_of(request)
    job = account.get_job(request.match_info["job"])
    check_conditions(request, job)
    if job.state in ("completed", "terminating", "deleting"):
        raise ServiceError(
            409,
            "JobCompleted"
            if job.state == "completed"
            else "JobBeingTerminated"
            if job.state == "terminating"
            else "JobBeingDeleted",
            f"The specified job is {job.state}.",
        )
    body = body_of(request)
    replace = request.method == "PUT"
    wire.parse_job_update(job, body, replace=replace)
    job.touch()
    scheduler = scheduler_of(request)
    if replace or "constraints" in body:
        job_control.arm_wall_clock(scheduler, job)  # a new maxWallClockTime, still counted from the job's creation
    scheduler.check_job_complete(job)
    return wire.empty_response(200, headers=wire.entity_headers(job), data_service_id=request_url(account, request))


async def delete_job(request: web.Request) -> web.Response:
    """DELETE /jobs/{jobId}: 202, then ``deleting`` until it is gone; running tasks are killed."""
    job = account_of(request).get_job(request.match_info["job"])
    check_conditions(request, job)
    if job.state != "deleting":
        scheduler_of(request).delete_job(job)
        account_of(request).record_delete("job", job.id)
    return wire.empty_response(202)


async def terminate_job(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/terminate."""
    account = account_of(request)
    job = account.get_job(request.match_info["job"])
    check_conditions(request, job)
    body = body_of(request)
    if job.state == "completed":
        raise ServiceError(409, "JobCompleted", "The specified job is already in a completed state.")
    if job.state == "deleting":
        raise ServiceError(
            409, "JobBeingDeleted", "The specified job has been marked for deletion and is being reclaimed."
        )
    scheduler_of(request).terminate_job(job, str(body.get("terminateReason") or "UserTerminate"))
    job.touch()
    return wire.empty_response(202, headers=wire.entity_headers(job), data_service_id=request_url(account, request))


async def task_counts(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/taskcounts."""
    job = account_of(request).get_job(request.match_info["job"])
    return wire.json_response(wire.render_task_counts(job))


def _refuse_unless_live(job: Job) -> None:
    """The 409 of a disable or enable of a job that has ended or is ending."""
    if job.state == "completed":
        raise ServiceError(409, "JobCompleted", "The specified job is already in a completed state.")
    if job.state == "terminating":
        raise ServiceError(409, "JobBeingTerminated", "The specified job is being terminated.")
    if job.state == "deleting":
        raise ServiceError(
            409, "JobBeingDeleted", "The specified job has been marked for deletion and is being reclaimed."
        )


async def disable_job(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/disable: 202; the job is ``disabling`` until its running tasks are dealt with."""
    account = account_of(request)
    job = account.get_job(request.match_info["job"])
    check_conditions(request, job)
    _refuse_unless_live(job)
    if job.state == "enabling":  # guessed: the service's code for this state is not recorded
        raise ServiceError(
            409,
            "OperationInvalidForCurrentState",
            "The specified operation is not valid for the current state of the resource.",
            [("Reason", "The job is being enabled.")],
        )
    # The validation layer checked the body against BatchJobDisableOptions: disableTasks is one of its values.
    job_control.disable_job(scheduler_of(request), job, body_of(request)["disableTasks"])
    return wire.empty_response(202, headers=wire.entity_headers(job), data_service_id=request_url(account, request))


async def enable_job(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/enable: 202; the job is ``enabling``, then ``active``. An active job stays so."""
    account = account_of(request)
    job = account.get_job(request.match_info["job"])
    check_conditions(request, job)
    _refuse_unless_live(job)
    job_control.enable_job(scheduler_of(request), job)  # guessed: enabling an active job is accepted, changes nothing
    return wire.empty_response(202, headers=wire.entity_headers(job), data_service_id=request_url(account, request))


async def list_preparation_and_release_status(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/jobpreparationandreleasetaskstatus: per node, how both tasks went."""
    account = account_of(request)
    job = account.get_job(request.match_info["job"])
    statuses = scheduler_of(request).jobprep.statuses(job)
    operation, fragment = "jobpreparationandreleasetaskstatus", "jobpreparationandreleasetaskstatuslist"
    return answer_list(
        request, operation, fragment, statuses, lambda entry: wire.render_prep_status(account.url, entry)
    )
