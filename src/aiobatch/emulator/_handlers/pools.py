"""Pools: create, read, update, delete, resize and autoscale."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from aiohttp import web

from .. import _wire as wire
from .._autoscale import FormulaError
from .._model import Account, Pool, ServiceError, invalid_property
from .._nodes import deallocation_option, resize_timeout
from .._support import expands_stats
from .._validate import body_of
from ._common import (
    account_of,
    answer_list,
    check_conditions,
    request_url,
    scheduler_of,
)
from .nodes import parse_datetime

log = logging.getLogger("aiobatch.emulator")


async def create_pool(request: web.Request) -> web.Response:
    """POST /pools."""
    account = account_of(request)
    pool = wire.parse_pool(account, body_of(request))
    existing = account.pools.get(pool.id.lower())
    if existing is not None:
        if existing.state == "deleting":
            raise _pool_being_deleted()
        raise ServiceError(409, "PoolExists", "The specified pool already exists.")
    scheduler_of(request).add_pool(pool)
    account.record_create("pool", pool.id)
    log.info("pool %s created (%d dedicated, %d spot)", pool.id, pool.target_dedicated, pool.target_low_priority)
    return wire.empty_response(201, headers=wire.entity_headers(pool), location=f"{account.url}/pools/{pool.id}")


async def list_pools(request: web.Request) -> web.Response:
    """GET /pools."""
    account = account_of(request)
    pools = sorted(account.pools.values(), key=lambda p: p.id.lower())
    return answer_list(request, "pools", "pools", pools, lambda p: _render_pool(request, account, p))


def _render_pool(request: web.Request, account: Account, pool: Pool) -> dict[str, Any]:
    """A pool as its GET answers, with its ``stats`` when ``$expand=stats`` asks for them."""
    out = wire.render_pool(account, pool)
    if expands_stats(request):
        out["stats"] = wire.render_pool_stats(out["url"], pool.creation_time, scheduler_of(request).now())
    return out


async def get_pool(request: web.Request) -> web.Response:
    """GET and HEAD /pools/{poolId}."""
    account = account_of(request)
    pool = account.get_pool(request.match_info["pool"])
    if check_conditions(request, pool):
        return wire.empty_response(304, headers=wire.entity_headers(pool))
    if request.method == "HEAD":
        return wire.empty_response(200, headers=wire.entity_headers(pool))
    body = wire.metadata(account.url, "pools/@Element")
    body.update(wire.select(_render_pool(request, account, pool), wire.parse_select(request)))
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
    pool = account_of(request).get_pool(request.match_info["pool"])
    check_conditions(request, pool)
    if pool.state == "deleting":
        raise _pool_being_deleted()
    return pool


async def delete_pool(request: web.Request) -> web.Response:
    """DELETE /pools/{poolId}: 202, then the pool is ``deleting`` until it is gone."""
    pool = _live_pool(request)
    scheduler_of(request).delete_pool(pool)
    pool.touch()  # as recorded: a deleting pool answers with a new ETag and Last-Modified
    account_of(request).record_delete("pool", pool.id)
    return wire.empty_response(202)


async def patch_pool(request: web.Request) -> web.Response:
    """PATCH /pools/{poolId}: what is sent; the shape of the pool (vmSize, taskSlotsPerNode, ...) only while empty."""
    account = account_of(request)
    pool = _live_pool(request)
    _update_pool(account, pool, body_of(request), replace=False)
    return wire.empty_response(200, headers=wire.entity_headers(pool), data_service_id=request_url(account, request))


async def replace_pool_properties(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/updateproperties: 204; what the body leaves out is removed (start task included)."""
    account = account_of(request)
    pool = _live_pool(request)
    # The layer has checked that applicationPackageReferences and metadata (both required) are lists.
    _update_pool(account, pool, body_of(request), replace=True)
    return wire.empty_response(204, headers=wire.entity_headers(pool), data_service_id=request_url(account, request))


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
    account = account_of(request)
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
    option = deallocation_option(body.get("nodeDeallocationOption"))
    timeout = resize_timeout(body.get("resizeTimeout"))
    scheduler_of(request).resize_pool(pool, dedicated, low, deallocation=option, timeout=timeout)
    if body.get("resizeTimeout") is not None:
        pool.spec["resizeTimeout"] = body["resizeTimeout"]
    pool.touch()
    return wire.empty_response(202, headers=wire.entity_headers(pool), data_service_id=request_url(account, request))


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
    account = account_of(request)
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
        scheduler_of(request).enable_autoscale(pool, formula, interval)
    except FormulaError as error:
        raise wire.autoscale_error(error) from None
    pool.touch()
    return wire.empty_response(200, headers=wire.entity_headers(pool), data_service_id=request_url(account, request))


async def disable_pool_autoscale(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/disableautoscale: 200; the pool keeps the targets the formula last set."""
    account = account_of(request)
    pool = _live_pool(request)
    scheduler_of(request).disable_autoscale(pool)
    pool.touch()
    return wire.empty_response(200, headers=wire.entity_headers(pool), data_service_id=request_url(account, request))


async def evaluate_pool_autoscale(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/evaluateautoscale: the ``autoScaleRun`` of a formula; nothing is applied or stored."""
    account = account_of(request)
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
        run = scheduler_of(request).evaluate_autoscale(pool, formula)
    except FormulaError as error:
        raise wire.autoscale_error(error) from None
    body = wire.metadata(account.url, "Microsoft.Azure.Batch.Protocol.Entities.AutoScaleRun")
    body.update(wire.render_autoscale_run(run))
    return wire.json_response(body, headers={"DataServiceId": request_url(account, request)})


async def stop_resize_pool(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/stopresize."""
    account = account_of(request)
    pool = _live_pool(request)
    scheduler_of(request).stop_resize(pool)
    pool.touch()
    return wire.empty_response(202, headers=wire.entity_headers(pool), data_service_id=request_url(account, request))


async def remove_nodes(request: web.Request) -> web.Response:
    """POST /pools/{poolId}/removenodes: 202; the pool is ``resizing`` until the nodes have left."""
    account = account_of(request)
    pool = _live_pool(request)
    body = body_of(request)
    option = deallocation_option(body.get("nodeDeallocationOption"))
    timeout = resize_timeout(body.get("resizeTimeout"))
    scheduler_of(request).nodes.remove_nodes(pool, list(body["nodeList"]), option, timeout)
    pool.touch()
    return wire.empty_response(202, headers=wire.entity_headers(pool), data_service_id=request_url(account, request))


def _query_time(request: web.Request, name: str) -> dt.datetime | None:
    # The SDK sends ``startTime`` and ``endtime``: query names are compared case-insensitively.
    for key, value in request.query.items():
        if key.lower() == name:
            try:
                return parse_datetime(value)
            except ValueError:
                raise wire.bad_query(key, value, "The value must be an ISO 8601 date and time.") from None
    return None


async def list_pool_usage_metrics(request: web.Request) -> web.Response:
    """GET /poolusagemetrics: core hours per pool and hour that is over, between ``startTime`` and ``endTime``."""
    start, end = _query_time(request, "starttime"), _query_time(request, "endtime")
    rows = scheduler_of(request).nodes.usage_metrics(start, end)
    return answer_list(request, "poolusagemetrics", "poolusagemetrics", rows, wire.render_pool_usage)
