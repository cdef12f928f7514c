"""The aiohttp application: routes to handlers.

Handlers read the request, change the model (through the scheduler where things must happen over time) and
answer through `_wire`.  Errors are `ServiceError`s, rendered by one middleware as the service's OData body.
"""

from __future__ import annotations

import datetime as dt
import logging
import mimetypes
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any, overload
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import _taskfiles as taskfiles
from . import _wire as wire
from ._auth import auth_middleware
from ._autoscale import FormulaError
from ._catalogue import catalogue
from ._faults import COLLECTION_FAULTS, CollectionFaults, Faults, fault_middleware
from ._model import Account, Job, Pool, ServiceError, Task, check_id, invalid_property
from ._odata import parse_filter
from ._scheduler import Scheduler
from ._validate import body_of, validation_middleware

log = logging.getLogger("aiobatch.emulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACCOUNT_KEY: web.AppKey[Account] = web.AppKey("account", Account)
SCHEDULER_KEY: web.AppKey[Scheduler] = web.AppKey("scheduler", Scheduler)
FAULTS_KEY: web.AppKey[Faults] = web.AppKey("faults", Faults)
FILE_WORKERS_KEY: web.AppKey[taskfiles.FileWorkers] = web.AppKey("file_workers", taskfiles.FileWorkers)


def _account(request: web.Request) -> Account:
    return request.app[ACCOUNT_KEY]


def _scheduler(request: web.Request) -> Scheduler:
    return request.app[SCHEDULER_KEY]


def _request_url(account: Account, request: web.Request) -> str:
    """The URL a request went to, without its query (the ``DataServiceId`` of updates and actions)."""
    return f"{account.url}{request.path}"


def _check_conditions(request: web.Request, entity: Pool | Job | Task) -> bool:
    """The request's conditional headers against the entity; True when a GET or HEAD should answer 304.

    As the REST API documents them for pools, jobs and tasks: ``If-Match`` / ``If-None-Match`` compare the ETag,
    ``If-Modified-Since`` / ``If-Unmodified-Since`` the last-modified time. A condition not met fails a write
    (and an ``If-Match`` or ``If-Unmodified-Since`` a read) with 412 ConditionNotMet; a read whose
    ``If-None-Match`` matches or whose entity was not modified since ``If-Modified-Since`` is a 304. HTTP dates
    have whole seconds, so the entity's time is compared truncated to the second (what its ``Last-Modified``
    header said); a date that does not parse is ignored, as HTTP says.
    """
    read = request.method in ("GET", "HEAD")
    modified = entity.last_modified.replace(microsecond=0)
    if_match = _etag_header(request, "If-Match")
    unmodified_since = _http_date_header(request, "If-Unmodified-Since")
    if (if_match and if_match != "*" and if_match != entity.etag) or (
        unmodified_since is not None and modified > unmodified_since
    ):
        raise _condition_not_met()
    if_none = _etag_header(request, "If-None-Match")
    none_matches = bool(if_none) and (if_none == "*" or if_none == entity.etag)
    modified_since = _http_date_header(request, "If-Modified-Since")
    not_modified = modified_since is not None and modified <= modified_since
    if read:
        return none_matches or (not_modified and not if_none)  # If-None-Match, when sent, decides alone (HTTP)
    if none_matches or not_modified:
        raise _condition_not_met()
    return False


def _etag_header(request: web.Request, name: str) -> str | None:
    """An ETag header's value without the quotes (and weak prefix) HTTP puts around it.

    The service's ETags go out bare (``ETag: 0x8DE...``, as recorded); the 15.x SDK sends them back quoted
    (``If-Match: "0x8DE..."``, azure-core's ``quote_etag``), the 14.x SDK bare. Both name the same version.
    """
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = raw.strip().removeprefix("W/")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value


def _condition_not_met() -> ServiceError:
    return ServiceError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")


def _http_date_header(request: web.Request, name: str) -> dt.datetime | None:
    """A header holding an HTTP date, as an aware datetime; None when absent or not a date."""
    raw = request.headers.get(name)
    if not raw:
        return None
    try:
        value = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _list(
    request: web.Request,
    operation: str,
    fragment: str,
    items: Sequence[Any],
    render: Callable[[Any], dict[str, Any]],
    view: Callable[[Any], Mapping[str, Any]] | None = None,
) -> web.Response:
    """Filter, page and select a list, rendering only the page's items.

    The filter tests *view* of each item when given (a cheap mapping of the filterable properties), else its
    rendering; either way only the page's items are rendered for the answer. With a view, the skip token is
    the position in *items* where the next page's scan starts, so paging through a filtered list tests each
    item about once, not once per page.
    """
    predicate = parse_filter(request.query.get("$filter"), operation)
    fields = wire.parse_select(request)
    if predicate is not None:
        if view is not None:
            position, size = wire.page_request(request)
            matched: list[Any] = []
            next_skip: int | None = None
            while position < len(items):
                item = items[position]
                if predicate(view(item)):
                    if len(matched) == size:
                        next_skip = position  # another match: the next page starts here
                        break
                    matched.append(item)
                position += 1
            page = [render(i) for i in matched]
        else:
            rendered = [r for r in (render(i) for i in items) if predicate(r)]
            start, stop, next_skip = wire.page_bounds(request, len(rendered))
            page = rendered[start:stop]
    else:
        start, stop, next_skip = wire.page_bounds(request, len(items))
        page = [render(i) for i in items[start:stop]]
    return wire.list_page(request, _account(request).url, fragment, [wire.select(i, fields) for i in page], next_skip)


# -- applications -------------------------------------------------------------------------------------------------


async def list_applications(request: web.Request) -> web.Response:
    """GET /applications."""
    apps = sorted(_account(request).applications.values(), key=lambda a: a.id.lower())
    return _list(
        request,
        "applications",
        "listapplicationsummariesresponses",
        apps,
        lambda a: wire.render_application(a.id, a.versions, a.display_name),
    )


async def list_supported_images(request: web.Request) -> web.Response:
    """GET /supportedimages: the images of the catalogue (`_catalogue`), whatever ``strict_catalogue`` says."""
    return _list(
        request,
        "supportedimages",
        "accountlistsupportedimagesresponses",
        list(catalogue().images),
        wire.render_supported_image,
    )


async def get_application(request: web.Request) -> web.Response:
    """GET /applications/{applicationId}."""
    app = _account(request).applications.get(request.match_info["app"].lower())
    if app is None:
        raise ServiceError(404, "ApplicationNotFound", "The specified application does not exist.")
    body = wire.metadata(_account(request).url, "getapplicationsummaryresponse/@Element")
    body.update(wire.render_application(app.id, app.versions, app.display_name))
    return wire.json_response(body)


# -- pools ----------------------------------------------------------------------------------------------------------


async def create_pool(request: web.Request) -> web.Response:
    """POST /pools."""
    account = _account(request)
    pool = wire.parse_pool(account, body_of(request))
    existing = account.pools.get(pool.id.lower())
    if existing is not None:
        if existing.state == "deleting":
            raise _pool_being_deleted()
        raise ServiceError(409, "PoolExists", "The specified pool already exists.")
    _scheduler(request).add_pool(pool)
    account.record_create("pool", pool.id)
    log.info("pool %s created (%d dedicated, %d spot)", pool.id, pool.target_dedicated, pool.target_low_priority)
    return wire.empty_response(201, headers=wire.entity_headers(pool), location=f"{account.url}/pools/{pool.id}")


async def list_pools(request: web.Request) -> web.Response:
    """GET /pools."""
    account = _account(request)
    pools = sorted(account.pools.values(), key=lambda p: p.id.lower())
    return _list(request, "pools", "pools", pools, lambda p: wire.render_pool(account, p))


async def get_pool(request: web.Request) -> web.Response:
    """GET and HEAD /pools/{poolId}."""
    account = _account(request)
    pool = account.get_pool(request.match_info["pool"])
    if _check_conditions(request, pool):
        return wire.empty_response(304, headers=wire.entity_headers(pool))
    if request.method == "HEAD":
        return wire.empty_response(200, headers=wire.entity_headers(pool))
    body = wire.metadata(account.url, "pools/@Element")
    body.update(wire.select(wire.render_pool(account, pool), wire.parse_select(request)))
    return wire.json_response(body, headers=wire.entity_headers(pool))


def _pool_being_deleted() -> ServiceError:
    return ServiceError(
        409, "PoolBeingDeleted", "The specified pool has been marked for deletion and is being reclaimed."
    )


def _live_pool(request: web.Request) -> Pool:
    """The request's pool, refused with PoolBeingDeleted when it is being deleted.

    The service documents it for pools: an Update, Patch or Delete of a pool in the deleting state fails with
    409 PoolBeingDeleted.
    """
    pool = _account(request).get_pool(request.match_info["pool"])
    _check_conditions(request, pool)
    if pool.state == "deleting":
        raise _pool_being_deleted()
    return pool


async def delete_pool(request: web.Request) -> web.Response:
    """DELETE /pools/{poolId}: 202, then the pool is ``deleting`` until it is gone."""
    pool = _live_pool(request)
    _scheduler(request).delete_pool(pool)
    pool.touch()  # as recorded: a deleting pool answers with a new ETag and Last-Modified
    _account(request).record_delete("pool", pool.id)
    return wire.empty_response(202)


async def patch_pool(request: web.Request) -> web.Response:
    """PATCH /pools/{poolId}: what is sent; the shape of the pool (vmSize, taskSlotsPerNode, ...) only while empty."""
    account = _account(request)
    pool = _live_pool(request)
    _update_pool(account, pool, body_of(request), replace=False)
    return wire.empty_response(200, headers=wire.entity_headers(pool), data_service_id=_request_url(account, request))


async def replace_pool_properties(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/updateproperties: 204; what the body leaves out is removed (start task included)."""
    account = _account(request)
    pool = _live_pool(request)
    # The layer has checked that applicationPackageReferences and metadata (both required) are lists.
    _update_pool(account, pool, body_of(request), replace=True)
    return wire.empty_response(204, headers=wire.entity_headers(pool), data_service_id=_request_url(account, request))


#: Pool properties a PATCH may change only while the pool has no nodes (the 2025-06-01 API: "This field can be
#: updated only when the pool is empty").
_EMPTY_POOL_PROPERTIES = (
    "displayName",
    "vmSize",
    "enableInterNodeCommunication",
    "virtualMachineConfiguration",
    "taskSlotsPerNode",
    "taskSchedulingPolicy",
    "networkConfiguration",
    "userAccounts",
    "mountConfiguration",
    "upgradePolicy",
)


def _reshaped_pool(account: Account, pool: Pool, body: dict[str, Any]) -> tuple[Pool, list[str]] | None:
    """The pool as a PATCH of its empty-pool-only properties would make it (checked as a create), or None.

    Raises:
        ServiceError: 409 OperationInvalidForCurrentState when the pool has nodes; a create's 400 for a value
            the pool could not have been created with.
    """
    names = [name for name in _EMPTY_POOL_PROPERTIES if body.get(name) is not None]
    if not names:
        return None
    if pool.nodes:
        raise ServiceError(
            409,
            "OperationInvalidForCurrentState",
            "The specified operation is not valid for the current state of the resource: "
            f"{', '.join(names)} can be updated only when the pool has no nodes (resize it to 0 first).",
            [("PropertyName", names[0])],
        )
    changes = {name: body[name] for name in names}
    return wire.parse_pool(account, {**pool.spec, **changes, "id": pool.id}), names


def _update_pool(account: Account, pool: Pool, body: dict[str, Any], *, replace: bool) -> None:
    # Validate everything before changing anything: a refused update leaves the pool as it was.
    reshaped = None if replace else _reshaped_pool(account, pool, body)
    refs = body.get("applicationPackageReferences") or []
    apps = account.resolve_app_packages(refs, "pool") if "applicationPackageReferences" in body else None
    probe = None
    if body.get("startTask"):
        probe = wire.parse_pool(account, {**pool.spec, "id": pool.id, "startTask": body["startTask"]})
    if "metadata" in body or replace:
        if body.get("metadata"):
            pool.spec["metadata"] = body["metadata"]
        else:
            pool.spec.pop("metadata", None)
    if apps is not None or replace:
        pool.app_packages = apps or ()
        if refs:
            pool.spec["applicationPackageReferences"] = refs
        else:
            pool.spec.pop("applicationPackageReferences", None)
    if probe is not None:
        pool.start_task = probe.start_task
        pool.spec["startTask"] = probe.spec.get("startTask")
    elif replace or ("startTask" in body and body["startTask"] is None):
        pool.start_task = None
        pool.spec.pop("startTask", None)
    if reshaped is not None:
        shaped, names = reshaped
        pool.vm_size, pool.task_slots_per_node = shaped.vm_size, shaped.task_slots_per_node
        pool.node_fill_type = shaped.node_fill_type
        pool.spec.update({name: shaped.spec[name] for name in names})
    pool.touch()


async def resize_pool(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/resize."""
    account = _account(request)
    pool = _live_pool(request)
    body = body_of(request)
    if pool.autoscale is not None:
        raise _autoscale_enabled()
    if pool.allocation_state != "steady":
        raise ServiceError(409, "PoolNotSteady", "The specified pool is not in a steady state.")
    dedicated = body.get("targetDedicatedNodes")
    dedicated = pool.target_dedicated if dedicated is None else dedicated
    low = body.get("targetLowPriorityNodes")
    low = pool.target_low_priority if low is None else low
    for name, value in (("targetDedicatedNodes", dedicated), ("targetLowPriorityNodes", low)):
        if not 0 <= value <= 10_000:
            raise invalid_property(name, value, "The value must be an integer between 0 and 10000.")
    _scheduler(request).resize_pool(pool, dedicated, low)
    pool.touch()
    return wire.empty_response(202, headers=wire.entity_headers(pool), data_service_id=_request_url(account, request))


# -- pool autoscale -------------------------------------------------------------------------------------------------
#
# The REST reference documents the 409s of resize (autoscale on) and enable (a resize under way) and the 503 for
# enabling twice within 30 seconds, but not every code: OperationNotValidOnPool and PoolBeingResized are taken from
# the service's error-code table, where their messages fit; the codes for these three cases are guesses.


def _autoscale_enabled() -> ServiceError:
    return ServiceError(
        409,
        "OperationNotValidOnPool",
        "The specified operation is not valid on the pool.",
        [("Reason", "The pool has autoscale enabled: its formula sets the targets. Disable autoscale to resize it.")],
    )


async def enable_pool_autoscale(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/enableautoscale: 200; the formula runs at once, then every evaluation interval."""
    account = _account(request)
    pool = _live_pool(request)
    body = body_of(request)
    formula = body.get("autoScaleFormula")
    if pool.autoscale is None or formula is not None:
        formula = wire.parse_formula(formula, "autoScaleFormula")
    raw_interval = body.get("autoScaleEvaluationInterval")
    interval = None if raw_interval is None else wire.parse_interval(raw_interval, "autoScaleEvaluationInterval")
    if pool.autoscale is None and pool.allocation_state != "steady":
        raise ServiceError(409, "PoolBeingResized", "The specified pool is being resized.")
    try:
        _scheduler(request).enable_autoscale(pool, formula, interval)
    except FormulaError as error:
        raise wire.autoscale_error(error) from None
    pool.touch()
    return wire.empty_response(200, headers=wire.entity_headers(pool), data_service_id=_request_url(account, request))


async def disable_pool_autoscale(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/disableautoscale: 200; the pool keeps the targets the formula last set."""
    account = _account(request)
    pool = _live_pool(request)
    _scheduler(request).disable_autoscale(pool)
    pool.touch()
    return wire.empty_response(200, headers=wire.entity_headers(pool), data_service_id=_request_url(account, request))


async def evaluate_pool_autoscale(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/evaluateautoscale: the ``autoScaleRun`` of a formula; nothing is applied or stored."""
    account = _account(request)
    pool = account.get_pool(request.match_info["pool"])
    if pool.autoscale is None:
        # "The Pool must have auto scaling enabled in order to evaluate a formula." (the code is a guess, above)
        raise ServiceError(
            409,
            "OperationNotValidOnPool",
            "The specified operation is not valid on the pool.",
            [("Reason", "The pool does not have autoscale enabled; enable it before evaluating a formula.")],
        )
    formula = wire.parse_formula(body_of(request).get("autoScaleFormula"), "autoScaleFormula")
    try:
        run = _scheduler(request).evaluate_autoscale(pool, formula)
    except FormulaError as error:
        raise wire.autoscale_error(error) from None
    body = wire.metadata(account.url, "Microsoft.Azure.Batch.Protocol.Entities.AutoScaleRun")
    body.update(wire.render_autoscale_run(run))
    return wire.json_response(body, headers={"DataServiceId": _request_url(account, request)})


async def stop_resize_pool(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/stopresize."""
    account = _account(request)
    pool = _live_pool(request)
    _scheduler(request).stop_resize(pool)
    pool.touch()
    return wire.empty_response(202, headers=wire.entity_headers(pool), data_service_id=_request_url(account, request))


async def node_counts(request: web.Request) -> web.Response:
    """GET /nodecounts."""
    pools = sorted(_account(request).pools.values(), key=lambda p: p.id.lower())
    legacy = wire.is_legacy_api(wire.api_version_of(request))
    return _list(
        request, "poolnodecounts", "poolnodecounts", pools, lambda p: wire.render_node_counts(p, legacy=legacy)
    )


async def list_nodes(request: web.Request) -> web.Response:
    """GET /pools/{poolId}/nodes."""
    account = _account(request)
    pool = account.get_pool(request.match_info["pool"])
    nodes = sorted(pool.nodes.values(), key=lambda n: n.id)
    return _list(request, "nodes", "nodes", nodes, lambda n: wire.render_node(account, pool, n))


async def get_node(request: web.Request) -> web.Response:
    """GET /pools/{poolId}/nodes/{nodeId}."""
    account = _account(request)
    pool, node = account.get_node(request.match_info["pool"], request.match_info["node"])
    body = wire.metadata(account.url, "nodes/@Element")
    body.update(wire.select(wire.render_node(account, pool, node), wire.parse_select(request)))
    return wire.json_response(body)


# -- jobs -------------------------------------------------------------------------------------------------------------


async def create_job(request: web.Request) -> web.Response:
    """POST /jobs (with poolInfo.poolId or an autoPoolSpecification)."""
    account = _account(request)
    job, auto = wire.parse_job(account, body_of(request))
    existing = account.jobs.get(job.id.lower())
    if existing is not None:
        if existing.state == "deleting":
            raise ServiceError(
                409,
                "JobBeingDeleted",
                "The specified job has been marked for deletion and is being reclaimed.",
            )
        raise ServiceError(409, "JobExists", "The specified job already exists.")
    scheduler = _scheduler(request)
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
    # /jobs/job-1 whatever the id: the service answers so (tests/emulator/recordings, ..._jobs_async_.json: the
    # creates of batch_job1_ and batch_job2_ both answered DataServiceId .../jobs/job-1; Location is sanitized there).
    return wire.empty_response(201, headers=wire.entity_headers(job), location=f"{account.url}/jobs/job-1")


def _render_job(account: Account, job: Job) -> dict[str, Any]:
    auto = (job.spec.get("poolInfo") or {}).get("autoPoolSpecification") if job.auto_pool else None
    return wire.render_job(account, job, auto)


async def list_jobs(request: web.Request) -> web.Response:
    """GET /jobs."""
    account = _account(request)
    jobs = sorted(account.jobs.values(), key=lambda j: j.id.lower())
    return _list(request, "jobs", "jobs", jobs, lambda j: _render_job(account, j))


async def get_job(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}."""
    account = _account(request)
    job = account.get_job(request.match_info["job"])
    if _check_conditions(request, job):
        return wire.empty_response(304, headers=wire.entity_headers(job))
    body = wire.metadata(account.url, "jobs/@Element")
    body.update(wire.select(_render_job(account, job), wire.parse_select(request)))
    return wire.json_response(body, headers=wire.entity_headers(job))


async def update_job(request: web.Request) -> web.Response:
    """PATCH (update) and PUT (replace) /jobs/{jobId}."""
    account = _account(request)
    job = account.get_job(request.match_info["job"])
    _check_conditions(request, job)
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
    wire.parse_job_update(job, body_of(request), replace=request.method == "PUT")
    job.touch()
    _scheduler(request).check_job_complete(job)
    return wire.empty_response(200, headers=wire.entity_headers(job), data_service_id=_request_url(account, request))


async def delete_job(request: web.Request) -> web.Response:
    """DELETE /jobs/{jobId}: 202, then ``deleting`` until it is gone; running tasks are killed."""
    job = _account(request).get_job(request.match_info["job"])
    _check_conditions(request, job)
    if job.state != "deleting":
        _scheduler(request).delete_job(job)
        _account(request).record_delete("job", job.id)
    return wire.empty_response(202)


async def terminate_job(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/terminate."""
    account = _account(request)
    job = account.get_job(request.match_info["job"])
    _check_conditions(request, job)
    body = body_of(request)
    if job.state == "completed":
        raise ServiceError(409, "JobCompleted", "The specified job is already in a completed state.")
    if job.state == "deleting":
        raise ServiceError(
            409, "JobBeingDeleted", "The specified job has been marked for deletion and is being reclaimed."
        )
    _scheduler(request).terminate_job(job, str(body.get("terminateReason") or "UserTerminate"))
    job.touch()
    return wire.empty_response(202, headers=wire.entity_headers(job), data_service_id=_request_url(account, request))


async def task_counts(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/taskcounts."""
    job = _account(request).get_job(request.match_info["job"])
    return wire.json_response(wire.render_task_counts(job))


# -- tasks ------------------------------------------------------------------------------------------------------------


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
    account = _account(request)
    job = _job_accepting_tasks(account, request.match_info["job"])
    task = wire.parse_task(account, job, body_of(request))
    if task.id.lower() in job.tasks:
        raise _task_exists()
    job.add_task(task)
    account.record_create("task", f"{job.id}/{task.id}")
    _warn_if_never_runs(account, job, task)
    _scheduler(request).kick()
    return wire.empty_response(
        201, headers=wire.entity_headers(task), location=f"{account.url}/jobs/{job.id}/tasks/{task.id}"
    )


async def add_task_collection(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/addtaskcollection: up to 100 tasks, one result each."""
    account = _account(request)
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
            task = wire.parse_task(account, job, item)
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
        _scheduler(request).kick()
    if partial is not None:
        raise ServiceError(500, "OperationTimedOut", "The operation timed out before it completed.")
    return wire.json_response({"value": results})


async def list_tasks(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/tasks."""
    account = _account(request)
    job = account.get_job(request.match_info["job"])
    keys = job.sorted_task_keys()
    return _list(
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
    account = _account(request)
    job, task = account.get_task(request.match_info["job"], request.match_info["task"])
    if _check_conditions(request, task):
        return wire.empty_response(304, headers=wire.entity_headers(task))
    body = wire.metadata(account.url, "tasks/@Element")
    body.update(wire.select(wire.render_task(account, job, task), wire.parse_select(request)))
    return wire.json_response(body, headers=wire.entity_headers(task))


async def delete_task(request: web.Request) -> web.Response:
    """DELETE /jobs/{jobId}/tasks/{taskId}."""
    job, task = _account(request).get_task(request.match_info["job"], request.match_info["task"])
    _check_conditions(request, task)
    await _scheduler(request).delete_task(job, task)
    _account(request).record_delete("task", f"{job.id}/{task.id}")
    return wire.empty_response(200)


async def terminate_task(request: web.Request) -> web.Response:
    """POST /jobs/{jobId}/tasks/{taskId}/terminate."""
    account = _account(request)
    job, task = account.get_task(request.match_info["job"], request.match_info["task"])
    _check_conditions(request, task)
    await _scheduler(request).terminate_task(job, task)
    task.touch()
    return wire.empty_response(204, headers=wire.entity_headers(task), data_service_id=_request_url(account, request))


async def _task_dir(request: web.Request) -> tuple[Task, Path]:
    """The task the route names and its directory, or the service's 409 when it has no files to show."""
    _, task = _account(request).get_task(request.match_info["job"], request.match_info["task"])
    if (
        task.task_dir is None
        or task.node_info is None
        or not await _file_workers(request).run(taskfiles.is_task_dir, task.task_dir)
    ):
        raise ServiceError(
            409,
            "TaskNotStarted" if task.state == "active" else "TaskFilesUnavailable",
            "The files of the specified task are not available: it has not run on a node yet."
            if task.state == "active"
            else "The files of the specified task are no longer available.",
        )
    return task, task.task_dir


def _file_workers(request: web.Request) -> taskfiles.FileWorkers:
    return request.app[FILE_WORKERS_KEY]


async def list_task_files(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/tasks/{taskId}/files (``recursive`` lists the whole tree; links as `_taskfiles` says)."""
    account = _account(request)
    task, root = await _task_dir(request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    entries = await _file_workers(request).run(partial(taskfiles.list_files, root, recursive=recursive))
    base = f"{account.url}/jobs/{request.match_info['job']}/tasks/{task.id}"
    return _list(request, "files", "files", entries, lambda e: wire.render_file(account, base, e[0], e[1]))


async def get_task_file(request: web.Request) -> web.StreamResponse:
    """GET and HEAD /jobs/{jobId}/tasks/{taskId}/files/{filePath}: regular files and directories only."""
    account = _account(request)
    task, root = await _task_dir(request)
    workers = _file_workers(request)
    rel = request.match_info["path"]
    opened = await workers.run(
        partial(taskfiles.open_file, root, rel, for_body=request.method != "HEAD"), discard=taskfiles.close
    )
    try:
        stat = opened.stat
        headers = wire.base_headers()
        headers.update(wire.echoed_headers(request))
        headers.update(
            {
                "Last-Modified": wire.http_date(_mtime(stat.st_mtime)),
                "ocp-creation-time": wire.http_date(_mtime(stat.st_ctime)),
                "ocp-batch-file-isdirectory": str(opened.is_dir),
                "ocp-batch-file-url": quote(
                    f"{account.url}/jobs/{request.match_info['job']}/tasks/{task.id}/files/{rel}", safe=""
                ),
                "Content-Type": "text/plain"
                if rel.endswith(".txt")
                else mimetypes.guess_type(rel)[0] or "application/octet-stream",
            }
        )
        if opened.fd is None:  # HEAD, or a directory
            headers["Content-Length"] = str(0 if opened.is_dir else stat.st_size)
            return web.Response(status=200, headers=headers)
        start, stop = _byte_range(request.headers.get("ocp-range"), stat.st_size)
        # Streamed (chunked) as the service sends it; aiohttp's FileResponse would add an ETag and Accept-Ranges
        # that the service's file answers do not carry.
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        offset = start
        try:
            while offset < stop and (
                chunk := await workers.run(taskfiles.read, opened.fd, offset, min(_FILE_CHUNK, stop - offset))
            ):
                offset += len(chunk)
                await response.write(chunk)
        except (ServiceError, OSError) as error:
            # The status line is out: all that is left is to cut the answer short, which the client sees.
            log.warning("task %s: reading %s failed half-way: %s", task.id, rel, error)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        taskfiles.close(opened)


_FILE_CHUNK = 256 * 1024
# At most 18 digits a side: Python refuses to convert a string of more than 4,300 digits (a 500), and no file is
# that large anyway.
_OCP_RANGE = re.compile(r"^bytes=(\d{1,18})-(\d{0,18})$")


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """``ocp-range: bytes=start-end`` (end inclusive, may be left out) as ``(start, stop)``; the whole file if absent.

    The service answers a range with 200 and those bytes (its specification lists no 206).
    """
    if not header:
        return 0, size
    match = _OCP_RANGE.match(header.strip())
    if match is None or (match.group(2) and int(match.group(2)) < int(match.group(1))):
        raise ServiceError(
            400,
            "InvalidHeaderValue",
            "The value for one of the HTTP headers is not in the correct format.",
            [("HeaderName", "ocp-range"), ("HeaderValue", header)],
        )
    start = min(int(match.group(1)), size)
    stop = size if not match.group(2) else min(int(match.group(2)) + 1, size)
    return start, stop


async def delete_task_file(request: web.Request) -> web.Response:
    """DELETE /jobs/{jobId}/tasks/{taskId}/files/{filePath}: 200; a directory needs ``recursive=true`` unless empty.

    A link is removed itself, never its target (see `_taskfiles`).
    """
    _, root = await _task_dir(request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    await _file_workers(request).run(partial(taskfiles.delete, root, request.match_info["path"], recursive=recursive))
    return wire.empty_response(200)


def _mtime(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


# -- operations the emulator does not perform ---------------------------------------------------------------

#: Every operation of the 2025-06-01 API that the emulator does not perform: (method, route, the SDK's method).
#: Each answers `_not_emulated`'s error, never a 404 (which the SDK raises as ``ResourceNotFoundError``, telling
#: a caller of ``begin_reboot_node`` that the *node* does not exist). tests/emulator/test_operations.py parses the
#: installed SDK's request builders, so an operation a new SDK adds fails a test until it is listed here or served.
NOT_EMULATED: tuple[tuple[str, str, str], ...] = (
    ("GET", "/poolusagemetrics", "list_pool_usage_metrics"),
    ("POST", "/pools/{pool}/removenodes", "begin_remove_nodes"),
    ("POST", "/jobs/{job}/disable", "begin_disable_job"),
    ("POST", "/jobs/{job}/enable", "begin_enable_job"),
    ("GET", "/jobs/{job}/jobpreparationandreleasetaskstatus", "list_job_preparation_and_release_task_status"),
    ("POST", "/jobschedules", "create_job_schedule"),
    ("GET", "/jobschedules", "list_job_schedules"),
    ("HEAD", "/jobschedules/{schedule}", "job_schedule_exists"),
    ("GET", "/jobschedules/{schedule}", "get_job_schedule"),
    ("PATCH", "/jobschedules/{schedule}", "update_job_schedule"),
    ("PUT", "/jobschedules/{schedule}", "replace_job_schedule"),
    ("DELETE", "/jobschedules/{schedule}", "begin_delete_job_schedule"),
    ("POST", "/jobschedules/{schedule}/disable", "disable_job_schedule"),
    ("POST", "/jobschedules/{schedule}/enable", "enable_job_schedule"),
    ("POST", "/jobschedules/{schedule}/terminate", "begin_terminate_job_schedule"),
    ("GET", "/jobschedules/{schedule}/jobs", "list_jobs_from_schedule"),
    ("PUT", "/jobs/{job}/tasks/{task}", "replace_task"),
    ("GET", "/jobs/{job}/tasks/{task}/subtasksinfo", "list_subtasks"),
    ("POST", "/jobs/{job}/tasks/{task}/reactivate", "reactivate_task"),
    ("POST", "/pools/{pool}/nodes/{node}/users", "create_node_user"),
    ("PUT", "/pools/{pool}/nodes/{node}/users/{user}", "replace_node_user"),
    ("DELETE", "/pools/{pool}/nodes/{node}/users/{user}", "delete_node_user"),
    ("POST", "/pools/{pool}/nodes/{node}/reboot", "begin_reboot_node"),
    ("POST", "/pools/{pool}/nodes/{node}/reimage", "begin_reimage_node"),
    ("POST", "/pools/{pool}/nodes/{node}/start", "begin_start_node"),
    ("POST", "/pools/{pool}/nodes/{node}/deallocate", "begin_deallocate_node"),
    ("POST", "/pools/{pool}/nodes/{node}/disablescheduling", "disable_node_scheduling"),
    ("POST", "/pools/{pool}/nodes/{node}/enablescheduling", "enable_node_scheduling"),
    ("GET", "/pools/{pool}/nodes/{node}/remoteloginsettings", "get_node_remote_login_settings"),
    ("POST", "/pools/{pool}/nodes/{node}/uploadbatchservicelogs", "upload_node_logs"),
    ("GET", "/pools/{pool}/nodes/{node}/extensions", "list_node_extensions"),
    ("GET", "/pools/{pool}/nodes/{node}/extensions/{extension}", "get_node_extension"),
    ("GET", "/pools/{pool}/nodes/{node}/files", "list_node_files"),
    ("GET", "/pools/{pool}/nodes/{node}/files/{path:.+}", "download_node_file"),
    ("HEAD", "/pools/{pool}/nodes/{node}/files/{path:.+}", "get_node_file_properties"),
    ("DELETE", "/pools/{pool}/nodes/{node}/files/{path:.+}", "delete_node_file"),
)

#: The not-emulated answer's status and code. 501 Not Implemented, because that is what it is: the request may be
#: perfectly valid (a 4xx would blame the caller), and it is final for every client in the chain -- azure-core's
#: RetryPolicy retries only 408, 429, 500, 502, 503 and 504 (and no answer here carries Retry-After, which it
#: would honour), and aiobatch's `_retry` treats 501 as final. The SDK has no exception mapped to 501, so it
#: raises a plain ``HttpResponseError`` whose ``error.code`` is this code, not a ``ResourceNotFoundError``.
NOT_EMULATED_STATUS = 501
NOT_EMULATED_CODE = "OperationNotEmulated"


def _not_emulated(method: str, path: str, operation: str) -> Handler:
    """A handler answering that the emulator does not perform ``operation`` (the SDK method's name) at ``path``.

    It looks nothing up: whatever the ids in the route, the caller learns first that the operation is not
    emulated. A body has already been checked by the validation layer (a malformed one is the 400 Azure would
    give), so only a well-formed request gets this answer.
    """
    shown = path.replace(":.+", "")

    async def handler(request: web.Request) -> web.Response:
        raise ServiceError(
            NOT_EMULATED_STATUS,
            NOT_EMULATED_CODE,
            f"The aiobatch emulator does not emulate the operation {operation} ({method} {shown})."
            " Test code that uses it against an Azure Batch account; docs/emulator.md, 'Operations and what the"
            " emulator refuses', lists what is emulated.",
            [("OperationName", operation)],
        )

    return handler


# -- the application --------------------------------------------------------------------------------


def _error_middleware(account: Account) -> Middleware:
    # The account's URL is read per request: it is known only once the server is bound, after the app is built.
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            wire.api_version_of(request)
            response = await handler(request)
        except ServiceError as error:
            response = wire.error_response(account.url, error)
        except web.HTTPNotFound:
            response = wire.error_response(
                account.url, ServiceError(404, "ResourceNotFound", "The specified resource does not exist.")
            )
        except web.HTTPMethodNotAllowed:
            response = wire.error_response(
                account.url,
                ServiceError(405, "UnsupportedHttpVerb", "The resource doesn't support the specified HTTP verb."),
            )
        except web.HTTPException as http_error:  # aiohttp's own refusals (a body over the size limit, ...)
            response = wire.error_response(
                account.url, ServiceError(http_error.status, http_error.reason.replace(" ", ""), http_error.reason)
            )
        except Exception:
            # A bug, not a refusal: logged with its traceback, answered as the service answers its own failures,
            # so that the client sees a Batch error (and may retry) instead of a dropped connection.
            log.exception("unexpected error in %s %s", request.method, request.path)
            response = wire.error_response(
                account.url,
                ServiceError(500, "InternalServerError", "The server encountered an internal error. Please retry."),
            )
        if not response.prepared:  # a streamed file answer set its headers itself
            response.headers.update(wire.echoed_headers(request))
        return response

    return middleware


async def _close_file_workers(app: web.Application) -> None:
    app[FILE_WORKERS_KEY].close()


def build_app(
    account: Account,
    scheduler: Scheduler,
    account_key: str,
    faults: Faults,
    auth_modes: Iterable[str] = ("sharedkey",),
) -> web.Application:
    """The emulator's aiohttp application for one account.

    Middlewares, outermost first: errors rendered as OData bodies, authentication by ``auth_modes`` (Shared Key,
    Entra ID bearer tokens; so a request that does not authenticate changes nothing), injected faults (only
    authenticated requests are eligible), then the validation layer (a body of the wrong types is refused before
    any handler sees it).
    """
    app = web.Application(
        middlewares=[
            _error_middleware(account),
            auth_middleware(
                account.name, account_key, lambda request, error: wire.error_response(account.url, error), auth_modes
            ),
            fault_middleware(faults),
            validation_middleware(),
        ],
        client_max_size=4 * 1024 * 1024,
    )
    app[ACCOUNT_KEY] = account
    app[SCHEDULER_KEY] = scheduler
    app[FAULTS_KEY] = faults
    app[FILE_WORKERS_KEY] = taskfiles.FileWorkers()
    app.on_cleanup.append(_close_file_workers)
    r = app.router
    r.add_get("/applications", list_applications)
    r.add_get("/applications/{app}", get_application)
    r.add_get("/nodecounts", node_counts)
    r.add_post("/pools", create_pool)
    r.add_get("/pools", list_pools)
    r.add_route("HEAD", "/pools/{pool}", get_pool)
    r.add_get("/pools/{pool}", get_pool, allow_head=False)
    r.add_delete("/pools/{pool}", delete_pool)
    r.add_patch("/pools/{pool}", patch_pool)
    r.add_post("/pools/{pool}/resize", resize_pool)
    r.add_post("/pools/{pool}/stopresize", stop_resize_pool)
    r.add_post("/pools/{pool}/updateproperties", replace_pool_properties)
    r.add_post("/pools/{pool}/enableautoscale", enable_pool_autoscale)
    r.add_post("/pools/{pool}/disableautoscale", disable_pool_autoscale)
    r.add_post("/pools/{pool}/evaluateautoscale", evaluate_pool_autoscale)
    r.add_get("/pools/{pool}/nodes", list_nodes)
    r.add_get("/pools/{pool}/nodes/{node}", get_node)
    r.add_post("/jobs", create_job)
    r.add_get("/jobs", list_jobs)
    r.add_get("/jobs/{job}", get_job)
    r.add_patch("/jobs/{job}", update_job)
    r.add_put("/jobs/{job}", update_job)
    r.add_delete("/jobs/{job}", delete_job)
    r.add_post("/jobs/{job}/terminate", terminate_job)
    r.add_get("/jobs/{job}/taskcounts", task_counts)
    r.add_post("/jobs/{job}/tasks", create_task)
    r.add_get("/jobs/{job}/tasks", list_tasks)
    r.add_post("/jobs/{job}/addtaskcollection", add_task_collection)
    r.add_get("/jobs/{job}/tasks/{task}", get_task)
    r.add_delete("/jobs/{job}/tasks/{task}", delete_task)
    r.add_post("/jobs/{job}/tasks/{task}/terminate", terminate_task)
    r.add_get("/jobs/{job}/tasks/{task}/files", list_task_files)
    r.add_get("/jobs/{job}/tasks/{task}/files/{path:.+}", get_task_file)
    r.add_delete("/jobs/{job}/tasks/{task}/files/{path:.+}", delete_task_file)
    r.add_get("/supportedimages", list_supported_images)
    # Every other operation of the API answers, with the not-emulated error (a table, not a handler each).
    for method, path, operation in NOT_EMULATED:
        r.add_route(method, path, _not_emulated(method, path, operation))
    return app


__all__ = ["build_app", "check_id"]
