"""Tasks: add (one or a collection), read, replace, delete, terminate, reactivate and list subtasks."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import overload

from aiohttp import web

from .. import _job_control as job_control
from .. import _wire as wire
from .._faults import COLLECTION_FAULTS, CollectionFaults
from .._jobprep import check_task_id
from .._model import Account, Job, ServiceError, Task, invalid_property
from .._support import check_task
from .._validate import body_of
from ._common import (
    FAULTS_KEY,
    account_of,
    answer_list,
    check_conditions,
    request_url,
    scheduler_of,
)

log = logging.getLogger("aiobatch.emulator")


def _job_accepting_tasks(account: Account, job_id: str) -> Job:
    job = account.get_job(job_id)
    if job.state == "completed":
        raise ServiceError(409, "JobCompleted", "The specified job is already in a completed state.")
    if job.state == "terminating":
        raise ServiceError(409, "JobBeingTerminated", "The specified job is being terminated.")
    if job.state == "deleting":
        raise ServiceError(
            409, "JobBeingDeleted", "The specified job has been marked for deletion and is being reclaimed."
        )
    return job


def _warn_if_never_runs(account: Account, job: Job, task: Task) -> None:
    """Log a task that needs more slots than a node of its job's pool has: it is accepted and never runs.

    That is the service's behaviour, kept on purpose: "The Batch Service doesn't currently validate this conflict
    when you submit tasks because a job may not have a pool bound at submission time, or it could be changed to a
    different pool" (Run tasks concurrently, learn.microsoft.com/azure/batch/batch-parallel-node-tasks). The
    emulator answers as Azure does and says why in its log.
    """
    # Only a diagnostic: whatever the job holds (a test plants a broken pool id), adding the task must go on.
    pool = account.pools.get(job.pool_id.lower()) if isinstance(job.pool_id, str) else None
    if pool is not None and task.required_slots > pool.task_slots_per_node:
        log.warning(
            "task %s/%s requires %d slots but pool %s has %d per node: it stays active until the job's pool changes",
            job.id,
            task.id,
            task.required_slots,
            pool.id,
            pool.task_slots_per_node,
        )


def _task_exists() -> ServiceError:
    return ServiceError(409, "TaskExists", "The specified task already exists.")


async def create_task(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/tasks."""
    account = account_of(request)
    job = _job_accepting_tasks(account, request.match_info["job"])
    task = wire.parse_task(account, job, body_of(request))
    check_task_id(job, task.id)
    if task.id.lower() in job.tasks:
        raise _task_exists()
    job.add_task(task)
    account.record_create("task", f"{job.id}/{task.id}")
    _warn_if_never_runs(account, job, task)
    scheduler_of(request).kick()
    return wire.empty_response(
        201, headers=wire.entity_headers(task), location=f"{account.url}/jobs/{job.id}/tasks/{task.id}"
    )


async def add_task_collection(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/addtaskcollection: up to 100 tasks, one result each."""
    account = account_of(request)
    job = _job_accepting_tasks(account, request.match_info["job"])
    body = body_of(request)
    tasks = body["value"]  # a list of objects: the layer has checked the body against BatchTaskGroup
    if not tasks:
        raise invalid_property("value", "(empty)", "The task collection must hold between 1 and 100 tasks.")
    if len(tasks) > wire.MAX_TASKS_PER_COLLECTION:
        raise invalid_property(
            "value",
            len(tasks),
            f"The task collection must hold at most {wire.MAX_TASKS_PER_COLLECTION} tasks.",
        )
    results = []
    added = False
    faults = request.app[FAULTS_KEY]
    # Injected faults: commit only part of the chunk and time out, or fail some tasks with a server error.
    injected = COLLECTION_FAULTS.get() or CollectionFaults()
    partial = injected.commit_fraction
    commit_limit = len(tasks) if partial is None else int(partial * len(tasks))
    task_error_rate = injected.task_error_rate
    for index, item in enumerate(tasks):
        if index >= commit_limit:
            break
        task_id = item["id"]
        try:
            check_task(request, item)
            task = wire.parse_task(account, job, item)
            check_task_id(job, task.id)
            if task.id.lower() in job.tasks:
                raise _task_exists()
        except ServiceError as error:
            results.append(
                wire.render_task_add_result(task_id, "clienterror", account_url=account.url, job_id=job.id, error=error)
            )
            continue
        if task_error_rate and faults.rng.random() < task_error_rate:
            faults.ledger.record("task-error")
            busy = ServiceError(500, "ServerBusy", "The server is currently unable to add this task.")
            results.append(
                wire.render_task_add_result(task.id, "servererror", account_url=account.url, job_id=job.id, error=busy)
            )
            continue
        job.add_task(task)
        account.record_create("task", f"{job.id}/{task.id}")
        _warn_if_never_runs(account, job, task)
        added = True
        results.append(
            wire.render_task_add_result(task.id, "success", account_url=account.url, job_id=job.id, task=task)
        )
    if added:
        scheduler_of(request).kick()
    if partial is not None:
        raise ServiceError(500, "OperationTimedOut", "The operation timed out before it completed.")
    return wire.json_response({"value": results})


async def list_tasks(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/tasks."""
    account = account_of(request)
    job = account.get_job(request.match_info["job"])
    keys = job.sorted_task_keys()
    return answer_list(
        request,
        "tasks",
        "tasks",
        _Lookup(keys, job.tasks),
        lambda t: wire.render_task(account, job, t),
        wire.TaskFilterView,
    )


class _Lookup(Sequence[Task]):
    """The tasks of *keys*, looked up as they are read: a page of a 100,000-task job touches 1,000 of them."""

    def __init__(self, keys: list[str], tasks: Mapping[str, Task]) -> None:
        self._keys, self._tasks = keys, tasks

    @overload
    def __getitem__(self, index: int) -> Task: ...
    @overload
    def __getitem__(self, index: slice) -> list[Task]: ...
    def __getitem__(self, index: int | slice) -> Task | list[Task]:
        if isinstance(index, slice):
            return [self._tasks[k] for k in self._keys[index]]
        return self._tasks[self._keys[index]]

    def __iter__(self) -> Iterator[Task]:
        tasks = self._tasks
        return (tasks[k] for k in self._keys)

    def __len__(self) -> int:
        return len(self._keys)


async def get_task(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/tasks/{taskId}."""
    account = account_of(request)
    job, task = account.get_task(request.match_info["job"], request.match_info["task"])
    if check_conditions(request, task):
        return wire.empty_response(304, headers=wire.entity_headers(task))
    body = wire.metadata(account.url, "tasks/@Element")
    body.update(wire.select(wire.render_task(account, job, task), wire.parse_select(request)))
    return wire.json_response(body, headers=wire.entity_headers(task))


async def delete_task(request: web.Request) -> web.Response:
    """DELETE /jobs/{jobId}/tasks/{taskId}."""
    job, task = account_of(request).get_task(request.match_info["job"], request.match_info["task"])
    check_conditions(request, task)
    await scheduler_of(request).delete_task(job, task)
    account_of(request).record_delete("task", f"{job.id}/{task.id}")
    return wire.empty_response(200)


async def terminate_task(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/tasks/{taskId}/terminate."""
    account = account_of(request)
    job, task = account.get_task(request.match_info["job"], request.match_info["task"])
    check_conditions(request, task)
    await scheduler_of(request).terminate_task(job, task)
    task.touch()
    return wire.empty_response(204, headers=wire.entity_headers(task), data_service_id=request_url(account, request))


async def replace_task(request: web.Request) -> web.Response:
    """PUT /jobs/{jobId}/tasks/{taskId}: the task's ``constraints``, the one property a task update changes.

    Constraints left out get their defaults, as on create; the new ones apply from the task's next attempt.
    Other properties of the body (a ``BatchTask``, mostly read-only) are not updatable and are ignored, as the
    service ignores them.
    """
    account = account_of(request)
    job, task = account.get_task(request.match_info["job"], request.match_info["task"])
    check_conditions(request, task)
    if task.state == "completed":  # guessed: the service's code is not recorded; TaskCompleted is its documented one
        raise ServiceError(409, "TaskCompleted", "The specified task is already in a completed state.")
    # A null is a constraint not given (the validation layer lets optional properties be null).
    constraints = {k: v for k, v in (body_of(request).get("constraints") or {}).items() if v is not None}
    constraints.setdefault("maxWallClockTime", wire.MAX_DURATION)
    constraints.setdefault("retentionTime", "P7D")
    constraints.setdefault("maxTaskRetryCount", job.max_task_retry_count)
    retries = constraints["maxTaskRetryCount"]
    if not -1 <= retries <= 100:
        raise invalid_property(
            "constraints.maxTaskRetryCount", retries, "The value must be an integer between -1 and 100."
        )
    wall_clock = wire.parse_duration(constraints["maxWallClockTime"], "constraints.maxWallClockTime")
    wire.parse_duration(constraints["retentionTime"], "constraints.retentionTime")
    task.max_wall_clock_time, task.max_task_retry_count = wall_clock, retries
    task.spec["constraints"] = constraints
    task.touch()
    return wire.empty_response(200, headers=wire.entity_headers(task), data_service_id=request_url(account, request))


async def reactivate_task(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/tasks/{taskId}/reactivate: a failed task runs again, its retry count reset to 0."""
    account = account_of(request)
    job, task = account.get_task(request.match_info["job"], request.match_info["task"])
    check_conditions(request, task)
    _job_accepting_tasks(account, job.id)  # 409 for a job completed, terminating or deleting
    if task.state != "completed":
        raise ServiceError(
            409,
            "TaskNotCompleted",
            "The specified task is not in a completed state, and the requested operation can be performed only on "
            "completed tasks.",
        )
    if task.result != "failure":
        raise ServiceError(
            409,
            "TaskSucceeded",
            "The specified task has already completed successfully, and the requested operation cannot be "
            "performed on successful tasks.",
        )
    job_control.reactivate_task(scheduler_of(request), job, task)
    return wire.empty_response(204, headers=wire.entity_headers(task), data_service_id=request_url(account, request))


async def list_subtasks(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/tasks/{taskId}/subtasksinfo: empty, as for every task that is not multi-instance."""
    account = account_of(request)
    account.get_task(request.match_info["job"], request.match_info["task"])
    return wire.list_page(request, account.url, "subtaskinfo", [], None)
