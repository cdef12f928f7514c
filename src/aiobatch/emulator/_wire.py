"""The wire format: the only module that knows JSON shapes, defaults, OData errors, paging links and headers.

Request bodies come in as parsed JSON and leave as model objects (`parse_*`); model objects leave as JSON
(`render_*`) in the shapes, field order and defaults the real service answers with (see
``shared/reference/recordings``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from . import _clock
from ._autoscale import AutoScaleRun, FormulaError, parse
from ._autoscale_runs import check_interval
from ._catalogue import catalogue
from ._dependencies import Dependencies, check_depends_on
from ._model import (
    Account,
    AppPackageRef,
    Job,
    Node,
    Pool,
    ResizeError,
    ServiceError,
    StartTask,
    Task,
    check_id,
    invalid_property,
    missing_property,
)
from ._types import FailureInfo, OutputFile, ResourceFile

#: The api-version the 15.x SDK sends (the 14.x SDK sends 2024-02-01.19.0).
CURRENT_API_VERSION = "2025-06-01"
#: Every api-version the emulator answers: the service's published versions from 2022-01-01.15.0 to the current
#: one. Any other value, however well-formed (``2099-01-01.99.0``), is the service's 400
#: InvalidQueryParameterValue naming api-version (as the service answered a version that did not exist yet:
#: Azure/azure-sdk-for-python#19224); it is never answered as if it were today's.
API_VERSIONS = frozenset(
    {
        "2022-01-01.15.0",
        "2022-10-01.16.0",
        "2023-05-01.17.0",
        "2023-11-01.18.0",
        "2024-02-01.19.0",
        "2024-07-01.20.0",
        CURRENT_API_VERSION,
    }
)

JSON_CONTENT_TYPE = "application/json; odata=minimalmetadata"
MAX_DURATION = "P10675199DT2H48M5.4775807S"
#: addtaskcollection limits.
MAX_TASKS_PER_COLLECTION = 100
MAX_COLLECTION_BODY_BYTES = 1024 * 1024
MAX_PAGE_SIZE = 1000

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


# -- scalars -------------------------------------------------------------------------------------------------


def timestamp(value: dt.datetime) -> str:
    """A datetime as the service writes it: ISO 8601, UTC, 7 fractional digits, ``Z``."""
    value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond * 10:07d}Z"


def http_date(value: dt.datetime) -> str:
    """A datetime as an RFC 1123 header value."""
    return format_datetime(value.astimezone(dt.timezone.utc), usegmt=True)


def parse_duration(value: object, prop: str) -> float | None:
    """An ISO 8601 duration in seconds; ``None`` for the service's "unlimited" value."""
    if value is None or value == MAX_DURATION:
        return None
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match or value in ("P", "PT"):
        raise invalid_property(prop, value, "The value is not a valid ISO 8601 duration.")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def format_duration(value: dt.timedelta) -> str:
    """A duration as the service writes it back: ISO 8601, zero parts left out (``PT6M``, ``P7D``, ``PT1M30.5S``)."""
    micros = value // dt.timedelta(microseconds=1)
    days, micros = divmod(micros, 86_400_000_000)
    hours, micros = divmod(micros, 3_600_000_000)
    minutes, micros = divmod(micros, 60_000_000)
    seconds, micros = divmod(micros, 1_000_000)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n)
    if seconds or micros:
        time += f"{seconds}.{micros:06d}".rstrip("0").rstrip(".") + "S"
    text = "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return text if text != "P" else "PT0S"


def api_version_of(request: web.Request) -> str:
    """The request's api-version, checked against the versions the emulator speaks.

    Raises:
        ServiceError: 400 ``MissingRequiredQueryParameter`` / ``InvalidQueryParameterValue``.
    """
    version = request.query.get("api-version")
    if not version:
        raise ServiceError(
            400,
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified.",
            [("QueryParameterName", "api-version")],
        )
    if version not in API_VERSIONS:
        raise ServiceError(
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
            [
                ("QueryParameterName", "api-version"),
                ("QueryParameterValue", version),
                (
                    "Reason",
                    f"The api-versions the emulator speaks are {', '.join(sorted(API_VERSIONS))}.",
                ),
            ],
        )
    return version


def is_legacy_api(version: str) -> bool:
    """Whether the client speaks an api-version from before 2024-07-01.20.0 (the 14.x SDK's 2024-02-01.19.0).

    Those versions know no node deallocation, so their node counts have no ``deallocated``/``deallocating``.
    Their enum values are spelled as today's: the specification of every accepted version gives addtaskcollection
    statuses as ``success``/``clienterror``/``servererror`` (``clientError`` is only the x-ms-enum *name*).
    """
    return version[:10] < "2024-07-01"


# -- responses -----------------------------------------------------------------------------------------------


def base_headers(request_id: str | None = None) -> dict[str, str]:
    """Headers on every answer."""
    return {
        "DataServiceVersion": "3.0",
        "request-id": request_id or str(uuid.uuid4()),
        "Date": http_date(dt.datetime.now(dt.timezone.utc)),
        "X-Content-Type-Options": "nosniff",
    }


def echoed_headers(request: web.Request) -> dict[str, str]:
    """``client-request-id`` back to a client that asked for it with ``return-client-request-id: true``."""
    client_id = request.headers.get("client-request-id")
    if client_id and request.headers.get("return-client-request-id", "").lower() == "true":
        return {"client-request-id": client_id}
    return {}


def entity_headers(entity: Pool | Job | Task) -> dict[str, str]:
    """ETag and Last-Modified of a pool, job or task."""
    return {"ETag": entity.etag, "Last-Modified": http_date(entity.last_modified)}


def json_response(
    body: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An answer with a JSON body in the service's content type."""
    all_headers = base_headers()
    all_headers.update(headers or {})
    all_headers["Content-Type"] = JSON_CONTENT_TYPE
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


def empty_response(
    status: int,
    *,
    headers: Mapping[str, str] | None = None,
    location: str | None = None,
    data_service_id: str | None = None,
) -> web.Response:
    """An answer with no body (creates, deletes, updates, actions).

    As recorded from the service: a create answers with ``Location`` and ``DataServiceId`` (the new entity's
    URL); an update or an action answers with ``DataServiceId`` only (the URL the request went to, e.g.
    ``.../pools/{id}/resize``); a delete with neither.
    """
    all_headers = base_headers()
    all_headers.update(headers or {})
    if location:
        all_headers["Location"] = location
    if data_service_id or location:
        all_headers["DataServiceId"] = data_service_id or location or ""
    return web.Response(status=status, headers=all_headers)


def error_response(account_url: str, error: ServiceError, request_id: str | None = None) -> web.Response:
    """The OData error body the service sends, with Content-Length (not chunked)."""
    request_id = request_id or str(uuid.uuid4())
    now = timestamp(_clock.now())
    body: dict[str, Any] = {
        "odata.metadata": f"{account_url}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
        "code": error.code,
        "message": {"lang": "en-US", "value": f"{error.message}\nRequestId:{request_id}\nTime:{now}"},
    }
    if error.values:
        body["values"] = [{"key": k, "value": v} for k, v in error.values]
    headers = base_headers(request_id)
    headers.update(error.headers)
    headers["Content-Type"] = JSON_CONTENT_TYPE
    return web.Response(status=error.status, body=json.dumps(body).encode(), headers=headers)


def metadata(account_url: str, fragment: str) -> dict[str, Any]:
    """The ``odata.metadata`` member that opens every JSON answer."""
    return {"odata.metadata": f"{account_url}/$metadata#{fragment}"}


def list_page(
    request: web.Request, account_url: str, fragment: str, items: list[dict[str, Any]], next_skip: int | None
) -> web.Response:
    """One page of a list, with an absolute ``odata.nextLink`` when more remain."""
    body = metadata(account_url, fragment)
    body["value"] = items
    if next_skip is not None:
        query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
        query["$skiptoken"] = str(next_skip)
        encoded = "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in query.items())
        body["odata.nextLink"] = f"{account_url}{request.path}?{encoded}"
    return json_response(body)


def page_bounds(request: web.Request, total: int) -> tuple[int, int, int | None]:
    """(start, stop, next start or None) for ``maxresults`` and ``$skiptoken``.

    Raises:
        ServiceError: 400 ``InvalidQueryParameterValue`` for a bad ``maxresults`` or skip token.
    """
    start, size = page_request(request)
    stop = min(total, start + size)
    return start, stop, stop if stop < total else None


def page_request(request: web.Request) -> tuple[int, int]:
    """(start, page size) asked for by ``$skiptoken`` and ``maxresults``.

    Raises:
        ServiceError: 400 ``InvalidQueryParameterValue`` for a bad ``maxresults`` or skip token.
    """
    raw_max = request.query.get("maxresults")
    size = MAX_PAGE_SIZE
    if raw_max is not None:
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if not (raw_max.isascii() and raw_max.isdigit()) or not 1 <= int(raw_max) <= MAX_PAGE_SIZE:
            raise bad_query("maxresults", raw_max, f"maxresults must be between 1 and {MAX_PAGE_SIZE}.")
        size = int(raw_max)
    token = request.query.get("$skiptoken", "0")
    if not (token.isascii() and token.isdigit()):
        raise bad_query("$skiptoken", token, "The skip token is not one this service issued.")
    return int(token), size


def bad_query(name: str, value: str, reason: str) -> ServiceError:
    """The service's 400 ``InvalidQueryParameterValue``."""
    return ServiceError(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        [("QueryParameterName", name), ("QueryParameterValue", value), ("Reason", reason)],
    )


def select(item: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """Apply ``$select`` (top-level properties; ``odata.metadata`` is kept)."""
    if not fields:
        return item
    return {k: v for k, v in item.items() if k in fields or k == "odata.metadata"}


def parse_select(request: web.Request) -> list[str] | None:
    """The ``$select`` list, or None."""
    raw = request.query.get("$select")
    return [part.strip() for part in raw.split(",") if part.strip()] if raw else None


# -- parsing request bodies ------------------------------------------------------------------------------------
#
# Bodies reach these functions checked against the API's types by `_validate` (a property is absent, null or of
# its type; required ones are there); what is left here are the rules of values: ranges, one source of several,
# what the emulator does not simulate.


def _int(body: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not lo <= value <= hi:
        raise invalid_property(name, value, f"The value must be an integer between {lo} and {hi}.")
    return int(value)


def _environment(items: list[dict[str, Any]] | None) -> dict[str, str]:
    return {item["name"]: item.get("value") or "" for item in items or []}


def parse_resource_files(items: list[dict[str, Any]] | None, prop: str = "resourceFiles") -> tuple[ResourceFile, ...]:
    """``resourceFiles`` into `ResourceFile` values, with the service's one-source rule checked."""
    files = []
    for item in items or []:
        sources = [k for k in ("httpUrl", "storageContainerUrl", "autoStorageContainerName") if item.get(k)]
        if len(sources) != 1:
            raise invalid_property(
                prop,
                ",".join(sources) or "(none)",
                "Exactly one of httpUrl, storageContainerUrl and autoStorageContainerName must be given.",
            )
        if item.get("httpUrl") and not item.get("filePath"):
            raise missing_property(f"{prop}.filePath")
        files.append(
            ResourceFile(
                http_url=item.get("httpUrl"),
                storage_container_url=item.get("storageContainerUrl"),
                auto_storage_container_name=item.get("autoStorageContainerName"),
                blob_prefix=item.get("blobPrefix"),
                file_path=item.get("filePath"),
                file_mode=item.get("fileMode"),
            )
        )
    return tuple(files)


def parse_output_files(items: list[dict[str, Any]] | None) -> tuple[OutputFile, ...]:
    """``outputFiles`` into `OutputFile` values."""
    files = []
    for item in items or []:
        pattern = item["filePattern"]
        container = item["destination"].get("container") or {}
        condition = item["uploadOptions"]["uploadCondition"]
        if not pattern:
            raise missing_property("outputFiles.filePattern")
        if not container.get("containerUrl"):
            raise missing_property("outputFiles.destination.container.containerUrl")
        headers = tuple((h["name"], h.get("value") or "") for h in container.get("uploadHeaders") or [])
        files.append(
            OutputFile(
                file_pattern=pattern,
                container_url=container["containerUrl"],
                path=container.get("path"),
                upload_condition=condition.lower(),
                upload_headers=headers,
            )
        )
    return tuple(files)


def _filled_task_defaults(body: dict[str, Any], job: Job) -> dict[str, Any]:
    spec = dict(body)
    spec.setdefault("userIdentity", {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}})
    constraints = dict(spec.get("constraints") or {})
    constraints.setdefault("maxWallClockTime", MAX_DURATION)
    constraints.setdefault("retentionTime", "P7D")
    constraints.setdefault("maxTaskRetryCount", job.max_task_retry_count)
    spec["constraints"] = constraints
    spec.setdefault("requiredSlots", 1)
    return spec


def _image_is_windows(vm_config: Mapping[str, Any]) -> bool:
    image = vm_config.get("imageReference") or {}
    text = " ".join(str(v) for v in (vm_config.get("nodeAgentSKUId"), *image.values()) if v).lower()
    return "windows" in text


def check_catalogue(vm_size: str, vm_config: Mapping[str, Any], prefix: str = "") -> None:
    """Refuse a VM size or image the catalogue does not hold, as the service refuses one it does not offer.

    Raises:
        ServiceError: 400 ``InvalidPropertyValue`` naming ``vmSize``, ``virtualMachineConfiguration.imageReference``
            (or its ``virtualMachineImageId``) or ``virtualMachineConfiguration.nodeAgentSKUId``.
    """
    entries = catalogue()
    if vm_size.lower() not in entries.sizes:
        raise invalid_property(
            prefix + "vmSize",
            vm_size,
            "The VM size is not one Azure Batch offers (the emulator's catalogue lists them, e.g. standard_d2s_v3). "
            "For a size it does not list, start the emulator with strict_catalogue=False (--any-vm-size).",
        )
    reference = vm_config.get("imageReference") or {}
    if reference.get("virtualMachineImageId") or reference.get("sharedGalleryImageId"):
        raise _custom_image(prefix, reference)
    image = entries.image(reference)
    if image is None:
        shown = "/".join(str(reference.get(part)) for part in ("publisher", "offer", "sku"))
        raise invalid_property(
            prefix + "virtualMachineConfiguration.imageReference",
            shown,
            "The image is not one Azure Batch supports (GET /supportedimages lists them). For another image, start "
            "the emulator with strict_catalogue=False (--any-vm-size).",
        )
    agent = str(vm_config.get("nodeAgentSKUId") or "")
    if agent.lower() != image["nodeAgentSKUId"].lower():
        raise invalid_property(
            prefix + "virtualMachineConfiguration.nodeAgentSKUId",
            agent,
            f"The image's node agent is '{image['nodeAgentSKUId']}'.",
        )


def _custom_image(prefix: str, reference: Mapping[str, Any]) -> ServiceError:
    name = "virtualMachineImageId" if reference.get("virtualMachineImageId") else "sharedGalleryImageId"
    return invalid_property(
        f"{prefix}virtualMachineConfiguration.imageReference.{name}",
        reference[name],
        "The emulator cannot check a custom image; start it with strict_catalogue=False (--any-vm-size) to accept "
        "one as a Linux image.",
    )


def parse_pool(account: Account, body: dict[str, Any], *, prop_prefix: str = "") -> Pool:
    """A pool create body into a new `Pool` (not yet in the account).

    Raises:
        ServiceError: a 400 naming the first invalid property.
    """
    pool_id = check_id("pool", body.get("id"))
    vm_size = body["vmSize"]
    if not vm_size:
        raise missing_property(prop_prefix + "vmSize")
    if body.get("cloudServiceConfiguration"):
        raise invalid_property(
            "cloudServiceConfiguration",
            "(set)",
            "Cloud service pools are retired; use virtualMachineConfiguration.",
        )
    vm_config = body.get("virtualMachineConfiguration")
    if vm_config is None:
        raise missing_property(prop_prefix + "virtualMachineConfiguration")
    if not vm_config.get("nodeAgentSKUId"):
        raise missing_property(prop_prefix + "virtualMachineConfiguration.nodeAgentSKUId")
    if not vm_config.get("imageReference"):
        raise missing_property(prop_prefix + "virtualMachineConfiguration.imageReference")
    if account.strict_catalogue:
        check_catalogue(vm_size, vm_config, prop_prefix)
    if _image_is_windows(vm_config):
        raise invalid_property(
            "virtualMachineConfiguration.imageReference",
            vm_config.get("nodeAgentSKUId"),
            "The aiobatch emulator runs tasks as local Linux processes and cannot run a Windows image; "
            "use a Linux image (for example Canonical ubuntu with nodeAgentSKUId 'batch.node.ubuntu 22.04').",
        )
    autoscale = parse_autoscale_settings(body, prop_prefix)
    slots = _int(body, "taskSlotsPerNode", 1, 1, 256)
    dedicated = _int(body, "targetDedicatedNodes", 0, 0, 10_000)
    low_priority = _int(body, "targetLowPriorityNodes", 0, 0, 10_000)
    fill = ((body.get("taskSchedulingPolicy") or {}).get("nodeFillType") or "spread").lower()
    start_task = None
    if body.get("startTask"):
        st = body["startTask"]
        if not st.get("commandLine"):
            raise missing_property("startTask.commandLine")
        start_task = StartTask(
            command_line=st["commandLine"],
            resource_files=parse_resource_files(st.get("resourceFiles"), "startTask.resourceFiles"),
            environment=_environment(st.get("environmentSettings")),
            max_task_retry_count=_int(st, "maxTaskRetryCount", 0, -1, 100),
            wait_for_success=st.get("waitForSuccess") is not False,
        )
    apps = account.resolve_app_packages(body.get("applicationPackageReferences") or [], "pool")
    from ._nodes import resize_timeout  # _nodes imports this module

    resize_timeout(body.get("resizeTimeout"))  # the service's 400 below its 5-minute minimum

    spec = dict(body)
    image = dict(vm_config["imageReference"])
    image.setdefault("version", "latest")
    spec["virtualMachineConfiguration"] = {**vm_config, "imageReference": image}
    spec.setdefault("resizeTimeout", "PT15M")
    spec["taskSlotsPerNode"] = slots
    spec["taskSchedulingPolicy"] = {
        "nodeFillType": fill.capitalize(),
        "jobDefaultOrder": (body.get("taskSchedulingPolicy") or {}).get("jobDefaultOrder") or "none",
    }
    spec.setdefault("enableAutoScale", False)
    spec.setdefault("enableInterNodeCommunication", False)
    if start_task is not None:
        st_spec = dict(body["startTask"])
        st_spec.setdefault("userIdentity", {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}})
        st_spec.setdefault("maxTaskRetryCount", 0)
        st_spec.setdefault("waitForSuccess", True)
        spec["startTask"] = st_spec
    return Pool(
        id=pool_id,
        state="active",
        spec=spec,
        vm_size=vm_size,
        task_slots_per_node=slots,
        node_fill_type=fill,
        start_task=start_task,
        app_packages=apps,
        target_dedicated=dedicated,
        target_low_priority=low_priority,
        autoscale_request=autoscale,
    )


def autoscale_error(error: FormulaError) -> ServiceError:
    """The service's answer to a formula or interval it refuses (the one place `FormulaError` becomes an answer)."""
    return ServiceError(error.status, error.code, error.message, list(error.values))


def _autoscale_settings_error(prop: str, value: object, reason: str) -> ServiceError:
    # Guessed code: the REST reference says only that these combinations are not allowed; the service's error
    # table lists InvalidAutoScalingSettings ("The specified auto-scaling settings are not valid.") for them.
    return ServiceError(
        400,
        "InvalidAutoScalingSettings",
        "The specified auto-scaling settings are not valid.",
        [("PropertyName", prop), ("PropertyValue", str(value)), ("Reason", reason)],
    )


def parse_interval(value: object, prop: str) -> dt.timedelta:
    """An ``autoScaleEvaluationInterval``, checked against the service's 5 minutes to 168 hours.

    Raises:
        ServiceError: 400 ``InvalidPropertyValue``: not a duration, or out of range.
    """
    seconds = parse_duration(value, prop)
    # The service's "unlimited" duration is a valid duration, and far above 168 hours.
    interval = dt.timedelta.max if seconds is None else dt.timedelta(seconds=seconds)
    try:
        return check_interval(interval)
    except FormulaError as error:
        raise autoscale_error(error) from None


def parse_formula(value: object, prop: str) -> str:
    """An ``autoScaleFormula`` the service would accept (it parses; at most 8192 characters).

    Raises:
        ServiceError: ``MissingRequiredProperty``, ``AutoScalingFormulaSyntaxError`` or ``AutoScaleFormulaTooLong``.
    """
    if not isinstance(value, str) or not value.strip():
        raise missing_property(prop)
    try:
        parse(value)
    except FormulaError as error:
        raise autoscale_error(error) from None
    return value


def parse_autoscale_settings(body: Mapping[str, Any], prop_prefix: str = "") -> tuple[str, dt.timedelta | None] | None:
    """A pool create body's autoscale settings: ``(formula, interval)`` with ``enableAutoScale``, else None.

    The REST reference's rules: ``autoScaleFormula`` must not be given unless ``enableAutoScale`` is true and is
    required when it is; the target node counts must not be given when it is.  Emulator's reading: an
    ``autoScaleEvaluationInterval`` without ``enableAutoScale`` is refused too (it could not take effect).

    Raises:
        ServiceError: a 400 naming the property.
    """
    if body.get("enableAutoScale") is not True:
        for name in ("autoScaleFormula", "autoScaleEvaluationInterval"):
            if body.get(name) is not None:
                raise _autoscale_settings_error(
                    prop_prefix + name, body[name], f"{name} may only be given with enableAutoScale set to true."
                )
        return None
    for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if body.get(name) is not None:
            raise _autoscale_settings_error(
                prop_prefix + name,
                body[name],
                f"{name} must not be given with enableAutoScale set to true: the formula sets the target.",
            )
    formula = parse_formula(body.get("autoScaleFormula"), prop_prefix + "autoScaleFormula")
    interval = body.get("autoScaleEvaluationInterval")
    return formula, None if interval is None else parse_interval(interval, prop_prefix + "autoScaleEvaluationInterval")


def render_autoscale_run(run: AutoScaleRun) -> dict[str, Any]:
    """An ``autoScaleRun``: the pool's last evaluation, or the answer of ``evaluateautoscale``."""
    out: dict[str, Any] = {"timestamp": timestamp(run.timestamp), "results": run.results}
    if run.error is not None:
        out["error"] = {
            "code": run.error.code,
            "message": run.error.message,
            "values": [{"name": k, "value": v} for k, v in run.error.values],
        }
    return out


def parse_job(account: Account, body: dict[str, Any]) -> tuple[Job, dict[str, Any] | None]:
    """A job create body into a new `Job`, and the auto-pool spec to create for it, if any.

    Raises:
        ServiceError: a 400 naming the first invalid property.
    """
    job_id = check_id("job", body.get("id"))
    pool_info = body["poolInfo"]
    if not (pool_info.get("poolId") or pool_info.get("autoPoolSpecification")):
        raise missing_property("poolInfo")
    if pool_info.get("poolId") and pool_info.get("autoPoolSpecification"):
        raise invalid_property("poolInfo", "poolId,autoPoolSpecification", "Specify poolId or autoPoolSpecification.")
    if body.get("jobManagerTask"):
        raise invalid_property(
            "jobManagerTask",
            "(set)",
            "The aiobatch emulator does not run job manager tasks.",
        )
    on_all = _enum(body, "onAllTasksComplete", ("noaction", "terminatejob"))
    on_failure = _enum(body, "onTaskFailure", ("noaction", "performexitoptionsjobaction"))
    constraints = dict(body.get("constraints") or {})
    constraints.setdefault("maxWallClockTime", MAX_DURATION)
    constraints.setdefault("maxTaskRetryCount", 0)
    max_retry = _int(constraints, "maxTaskRetryCount", 0, -1, 100)
    parse_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")

    spec = dict(body)
    spec["constraints"] = constraints
    spec.setdefault("priority", 0)
    spec.setdefault("maxParallelTasks", -1)
    spec.setdefault("usesTaskDependencies", False)
    spec.setdefault("allowTaskPreemption", False)
    spec["onAllTasksComplete"], spec["onTaskFailure"] = on_all, on_failure
    job = Job(
        id=job_id,
        state="active",
        spec=spec,
        on_all_tasks_complete=on_all,
        on_task_failure=on_failure,
        priority=_int(spec, "priority", 0, -1000, 1000),
        max_task_retry_count=max_retry,
        max_parallel_tasks=_int(spec, "maxParallelTasks", -1, -1, 100_000),
        pool_id=pool_info.get("poolId"),
        environment=_environment(body.get("commonEnvironmentSettings")),
        dependencies=Dependencies() if spec["usesTaskDependencies"] else None,
    )
    auto = pool_info.get("autoPoolSpecification")
    if auto is None:
        return job, None
    lifetime = auto["poolLifetimeOption"].lower()
    if auto.get("pool") is None:
        raise missing_property("poolInfo.autoPoolSpecification.pool")
    job.auto_pool = True
    job.auto_pool_lifetime = lifetime
    return job, auto


def auto_pool_spec_for_render(pool: Pool, auto: Mapping[str, Any]) -> dict[str, Any]:
    """The job's ``autoPoolSpecification`` as the service fills it in."""
    pool_spec = {k: v for k, v in pool.spec.items() if k != "id"}
    pool_spec.setdefault("targetDedicatedNodes", 0)
    pool_spec.setdefault("targetLowPriorityNodes", 0)
    ordered = {"taskSlotsPerNode": pool_spec.pop("taskSlotsPerNode")}
    ordered.update(pool_spec)
    return {
        "poolLifetimeOption": auto.get("poolLifetimeOption", "job"),
        **({"autoPoolIdPrefix": auto["autoPoolIdPrefix"]} if auto.get("autoPoolIdPrefix") else {}),
        "keepAlive": bool(auto.get("keepAlive", False)),
        "pool": ordered,
    }


def _enum(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    """An enumeration's value, lower-cased, or its default (the first of ``allowed``)."""
    value = body.get(name) or allowed[0]
    if value.lower() not in allowed:  # a value of the API the emulator does not act on
        raise invalid_property(name, value, f"The aiobatch emulator supports: {', '.join(allowed)}.")
    return str(value.lower())


def parse_job_update(job: Job, body: Mapping[str, Any], *, replace: bool) -> None:
    """Apply a job PATCH (``replace=False``) or PUT (``replace=True``) body, all of it or (on a 400) none of it.

    Raises:
        ServiceError: 400 for an invalid property, including ``onAllTasksComplete`` going from ``terminatejob``
            back to ``noaction`` (which the service refuses; for a PUT, leaving it out means ``noaction``).
    """
    on_all = on_failure = priority = max_parallel = constraints = None
    if "onAllTasksComplete" in body or replace:
        on_all = _enum(body, "onAllTasksComplete", ("noaction", "terminatejob"))
        if job.on_all_tasks_complete == "terminatejob" and on_all == "noaction":
            raise invalid_property(
                "onAllTasksComplete",
                body.get("onAllTasksComplete") or "noaction",
                "A job's completion behavior may not be changed from terminatejob to noaction.",
            )
    if "onTaskFailure" in body or replace:
        on_failure = _enum(body, "onTaskFailure", ("noaction", "performexitoptionsjobaction"))
    if "priority" in body or replace:
        priority = _int(body, "priority", 0, -1000, 1000)
    if "maxParallelTasks" in body or replace:
        max_parallel = _int(body, "maxParallelTasks", -1, -1, 100_000)
    if "constraints" in body or replace:
        constraints = dict(body.get("constraints") or {})
        constraints.setdefault("maxWallClockTime", MAX_DURATION)
        constraints.setdefault("maxTaskRetryCount", 0)
        max_retry = _int(constraints, "maxTaskRetryCount", 0, -1, 100)
        parse_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime")

    if on_all is not None:
        job.on_all_tasks_complete = job.spec["onAllTasksComplete"] = on_all
    if on_failure is not None:
        job.on_task_failure = job.spec["onTaskFailure"] = on_failure
    if priority is not None:
        job.priority = job.spec["priority"] = priority
    if max_parallel is not None:
        job.max_parallel_tasks = job.spec["maxParallelTasks"] = max_parallel
    if constraints is not None:
        job.max_task_retry_count = max_retry
        job.spec["constraints"] = constraints
    if "metadata" in body or replace:
        if body.get("metadata"):
            job.spec["metadata"] = body["metadata"]
        else:
            job.spec.pop("metadata", None)
    if (body.get("poolInfo") or {}).get("poolId"):
        job.pool_id = body["poolInfo"]["poolId"]
        job.spec["poolInfo"] = {"poolId": job.pool_id}


def parse_task(account: Account, job: Job, body: dict[str, Any]) -> Task:
    """A task create body into a new `Task` of ``job`` (not yet added).

    Raises:
        ServiceError: a 400 naming the first invalid property.
    """
    task_id = check_id("task", body.get("id"))
    command = body["commandLine"]
    if not command.strip():
        raise missing_property("commandLine")
    if body.get("multiInstanceSettings"):
        raise invalid_property("multiInstanceSettings", "(set)", "The aiobatch emulator does not run MPI tasks.")
    check_depends_on(body.get("dependsOn"), bool(job.spec.get("usesTaskDependencies")))
    if job.on_task_failure == "noaction":
        _refuse_job_actions(body.get("exitConditions"))
    spec = _filled_task_defaults(body, job)
    constraints = spec["constraints"]
    parse_duration(constraints.get("retentionTime"), "constraints.retentionTime")  # honoured by `_retention`
    return Task(
        id=task_id,
        state="active",
        spec=spec,
        job_key=job.id.lower(),
        command_line=command,
        resource_files=parse_resource_files(body.get("resourceFiles")),
        output_files=parse_output_files(body.get("outputFiles")),
        environment=_environment(body.get("environmentSettings")),
        app_packages=account.resolve_app_packages(body.get("applicationPackageReferences") or [], "task"),
        max_wall_clock_time=parse_duration(constraints.get("maxWallClockTime"), "constraints.maxWallClockTime"),
        max_task_retry_count=_int(constraints, "maxTaskRetryCount", 0, -1, 100),
        required_slots=_int(spec, "requiredSlots", 1, 1, 256),
    )


def _refuse_job_actions(conditions: Mapping[str, Any] | None) -> None:
    """The service's 400 for a task exit option with a job action while its job's ``onTaskFailure`` is noaction.

    As the API documents ``ExitOptions.jobAction``: "If the Job's onTaskFailed property is noaction, then
    specifying this property returns an error and the add Task request fails with an invalid property value
    error". A ``jobAction`` of ``none`` asks for nothing and passes.
    """
    if not conditions:
        return
    options: list[tuple[str, Any]] = [
        (f"exitConditions.{name}", conditions.get(name))
        for name in ("default", "preProcessingError", "fileUploadError")
    ]
    for name in ("exitCodes", "exitCodeRanges"):
        for index, mapping in enumerate(conditions.get(name) or []):
            options.append((f"exitConditions.{name}[{index}].exitOptions", mapping.get("exitOptions")))
    for path, option in options:
        action = (option or {}).get("jobAction")
        if action is not None and action.lower() != "none":
            raise invalid_property(
                f"{path}.jobAction",
                action,
                "To enable exit conditions with a job action, set onTaskFailure on the job to "
                "performexitoptionsjobaction.",
            )


# -- rendering ---------------------------------------------------------------------------------------------------


def _failure(info: FailureInfo) -> dict[str, Any]:
    body: dict[str, Any] = {"category": info.category, "code": info.code, "message": info.message}
    if info.details:
        body["details"] = [{"name": k, "value": v} for k, v in info.details]
    return body


def _state_fields(entity: Pool | Job | Task, *, previous: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "state": entity.state,
        "stateTransitionTime": timestamp(entity.state_transition_time),
    }
    if not previous:
        return out
    if entity.previous_state is not None and entity.previous_state_transition_time is not None:
        out["previousState"] = entity.previous_state
        out["previousStateTransitionTime"] = timestamp(entity.previous_state_transition_time)
    return out


def render_pool(account: Account, pool: Pool) -> dict[str, Any]:
    """A pool as GET /pools/{id} answers (without ``odata.metadata``)."""
    spec = pool.spec
    out: dict[str, Any] = {"id": pool.id}
    if spec.get("displayName"):
        out["displayName"] = spec["displayName"]
    out.update(
        {
            "url": f"{account.url}/pools/{pool.id}",
            "eTag": pool.etag,
            "lastModified": timestamp(pool.last_modified),
            "creationTime": timestamp(pool.creation_time),
            # A pool has no previousState in the service's answers (a deleting pool was recorded without one).
            **_state_fields(pool, previous=False),
            "allocationState": pool.allocation_state,
            "allocationStateTransitionTime": timestamp(pool.allocation_state_transition_time),
            "vmSize": pool.vm_size.lower(),
            "resizeTimeout": spec["resizeTimeout"],
            "currentDedicatedNodes": pool.current(True),
            "targetDedicatedNodes": pool.target_dedicated,
            "currentLowPriorityNodes": pool.current(False),
            "targetLowPriorityNodes": pool.target_low_priority,
        }
    )
    if pool.resize_errors:
        out["resizeErrors"] = [
            {
                "code": e.code,
                "message": e.message,
                **({"values": [{"name": k, "value": v} for k, v in e.values]} if e.values else {}),
            }
            for e in pool.resize_errors
        ]
    autoscale = pool.autoscale
    out["enableAutoScale"] = autoscale is not None
    if autoscale is not None:
        out["autoScaleFormula"] = autoscale.formula
        out["autoScaleEvaluationInterval"] = format_duration(autoscale.interval)
        if autoscale.last_run is not None:
            out["autoScaleRun"] = render_autoscale_run(autoscale.last_run)
    out["enableInterNodeCommunication"] = spec["enableInterNodeCommunication"]
    for key in (
        "startTask",
        "applicationPackageReferences",
        "metadata",
        "userAccounts",
        "networkConfiguration",
        "upgradePolicy",
    ):
        if spec.get(key):
            out[key] = spec[key]
    out["taskSlotsPerNode"] = pool.task_slots_per_node
    out["taskSchedulingPolicy"] = spec["taskSchedulingPolicy"]
    out["virtualMachineConfiguration"] = spec["virtualMachineConfiguration"]
    return out


def render_node(account: Account, pool: Pool, node: Node) -> dict[str, Any]:
    """A compute node as GET /pools/{pool}/nodes/{node} answers."""
    out: dict[str, Any] = {
        "id": node.id,
        "url": f"{account.url}/pools/{pool.id}/nodes/{node.id}",
        "state": node.state,
        "schedulingState": node.scheduling_state,
        "stateTransitionTime": timestamp(node.state_transition_time),
    }
    if node.last_boot_time:
        out["lastBootTime"] = timestamp(node.last_boot_time)
    out.update(
        {
            "allocationTime": timestamp(node.allocation_time),
            "ipAddress": node.ip_address,
            "affinityId": f"TVM:{node.id}",
            "vmSize": pool.vm_size.lower(),
            "totalTasksRun": node.total_tasks_run,
            "totalTasksSucceeded": node.total_tasks_succeeded,
            "runningTasksCount": len(node.running),
            "runningTaskSlotsCount": node.running_slots,
            "isDedicated": node.is_dedicated,
        }
    )
    if pool.start_task is not None:
        out["startTask"] = pool.spec["startTask"]
    if node.start_task_info is not None:
        info = dict(node.start_task_info)
        if node.start_task_failure is not None:
            info["failureInfo"] = _failure(node.start_task_failure)
        out["startTaskInfo"] = info
    recent = []
    for job_id, task_id in node.recent_tasks:
        job = account.jobs.get(job_id.lower())
        task = job.tasks.get(task_id.lower()) if job else None
        if task is not None:
            recent.append(
                {
                    "taskUrl": f"{account.url}/jobs/{job_id}/tasks/{task_id}",
                    "jobId": job_id,
                    "taskId": task_id,
                    "taskState": task.state,
                    "executionInfo": _execution_info(task),
                }
            )
    if recent:
        out["recentTasks"] = recent
    if node.errors:
        out["errors"] = node.errors
    if node.last_boot_time:
        out["nodeAgentInfo"] = {"lastUpdateTime": timestamp(node.last_boot_time), "version": "1.12.39"}
    image = dict(pool.spec["virtualMachineConfiguration"]["imageReference"])
    image["exactVersion"] = image.get("version", "latest")
    out["virtualMachineInfo"] = {"imageReference": image}
    return out


_NODE_COUNT_STATES = (
    "creating",
    "deallocated",
    "deallocating",
    "idle",
    "leavingPool",
    "offline",
    "preempted",
    "rebooting",
    "reimaging",
    "running",
    "starting",
    "startTaskFailed",
    "unusable",
    "unknown",
    "upgradingOS",
    "waitingForStartTask",
)


#: Node states that api-versions before 2024-07-01.20.0 do not count.
_NEWER_NODE_COUNT_STATES = frozenset({"deallocated", "deallocating"})


def render_node_counts(pool: Pool, *, legacy: bool = False) -> dict[str, Any]:
    """One entry of GET /nodecounts (``legacy``: for an api-version before 2024-07-01.20.0)."""
    states = [s for s in _NODE_COUNT_STATES if not (legacy and s in _NEWER_NODE_COUNT_STATES)]

    def counts(dedicated: bool) -> dict[str, int]:
        out = dict.fromkeys(states, 0)
        by_lower = {s.lower(): s for s in states}
        for node in pool.nodes.values():
            if node.is_dedicated == dedicated:
                out[by_lower.get(node.state, "unknown")] += 1
        out["total"] = sum(out.values())
        return out

    return {"poolId": pool.id, "dedicated": counts(True), "lowPriority": counts(False)}


def render_job(account: Account, job: Job, auto_pool: Mapping[str, Any] | None) -> dict[str, Any]:
    """A job as GET /jobs/{id} answers."""
    spec = job.spec
    out: dict[str, Any] = {"id": job.id}
    if spec.get("displayName"):
        out["displayName"] = spec["displayName"]
    out.update(
        {
            "url": f"{account.url}/jobs/{job.id}",
            "eTag": job.etag,
            "lastModified": timestamp(job.last_modified),
            "creationTime": timestamp(job.creation_time),
            **_state_fields(job),
            "priority": job.priority,
            "maxParallelTasks": job.max_parallel_tasks,
            "usesTaskDependencies": spec["usesTaskDependencies"],
            "allowTaskPreemption": spec["allowTaskPreemption"],
            "constraints": spec["constraints"],
        }
    )
    for key in ("jobPreparationTask", "jobReleaseTask"):  # as `_jobprep.parse_job_tasks` filled them in
        if spec.get(key):
            out[key] = spec[key]
    if spec.get("commonEnvironmentSettings"):
        out["commonEnvironmentSettings"] = spec["commonEnvironmentSettings"]
    if spec.get("networkConfiguration"):
        out["networkConfiguration"] = spec["networkConfiguration"]
    out["poolInfo"] = {"autoPoolSpecification": auto_pool} if auto_pool is not None else {"poolId": job.pool_id}
    info: dict[str, Any] = {"startTime": timestamp(job.start_time)}
    if job.end_time:
        info["endTime"] = timestamp(job.end_time)
    if job.pool_id:
        info["poolId"] = job.pool_id
    if job.terminate_reason:
        info["terminateReason"] = job.terminate_reason
    out["executionInfo"] = info
    out["onAllTasksComplete"] = job.on_all_tasks_complete
    out["onTaskFailure"] = job.on_task_failure
    if spec.get("metadata"):
        out["metadata"] = spec["metadata"]
    return out


def _execution_info(task: Task) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if task.start_time:
        info["startTime"] = timestamp(task.start_time)
    if task.end_time:
        info["endTime"] = timestamp(task.end_time)
    if task.exit_code is not None:
        info["exitCode"] = task.exit_code
    if task.failure_info is not None:
        info["failureInfo"] = _failure(task.failure_info)
    if task.result:
        info["result"] = task.result
    info["retryCount"] = task.retry_count
    if task.last_retry_time:
        info["lastRetryTime"] = timestamp(task.last_retry_time)
    info["requeueCount"] = task.requeue_count
    if task.last_requeue_time:
        info["lastRequeueTime"] = timestamp(task.last_requeue_time)
    return info


class TaskFilterView(Mapping[str, Any]):
    """The properties a task list's ``$filter`` may name, read from the task when asked, not rendered.

    A filtered listing tests every task of the job; rendering each (ten timestamps formatted, then parsed back
    by the filter) made a listing of a 10,000-task job cost ~0.3 s. Values are what `render_task` would give,
    with times as datetimes (the filter compares them as such) and absent properties as None.
    """

    __slots__ = ("_task",)
    _KEYS = ("id", "state", "stateTransitionTime", "creationTime", "lastModified", "executionInfo")

    def __init__(self, task: Task) -> None:
        self._task = task

    def __getitem__(self, key: str) -> Any:
        task = self._task
        if key == "state":
            return task.state
        if key == "stateTransitionTime":
            return task.state_transition_time
        if key == "id":
            return task.id
        if key == "creationTime":
            return task.creation_time
        if key == "lastModified":
            return task.last_modified
        if key == "executionInfo":
            info = {
                "startTime": task.start_time,
                "endTime": task.end_time,
                "exitCode": task.exit_code,
                "result": task.result or None,
            }
            return {k: v for k, v in info.items() if v is not None}
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)


def render_task(account: Account, job: Job, task: Task) -> dict[str, Any]:
    """A task as GET /jobs/{job}/tasks/{task} answers."""
    spec = task.spec
    out: dict[str, Any] = {"id": task.id}
    if spec.get("displayName"):
        out["displayName"] = spec["displayName"]
    out.update(
        {
            "url": f"{account.url}/jobs/{job.id}/tasks/{task.id}",
            "eTag": task.etag,
            "creationTime": timestamp(task.creation_time),
            "lastModified": timestamp(task.last_modified),
            **_state_fields(task),
            "commandLine": task.command_line,
        }
    )
    for key in (
        "resourceFiles",
        "outputFiles",
        "environmentSettings",
        "applicationPackageReferences",
        "exitConditions",
        "affinityInfo",
        "dependsOn",
    ):
        if spec.get(key):
            out[key] = spec[key]
    out["userIdentity"] = spec["userIdentity"]
    out["constraints"] = spec["constraints"]
    out["requiredSlots"] = task.required_slots
    out["executionInfo"] = _execution_info(task)
    if task.node_info is not None:
        pool_id, node_id, root = task.node_info
        node_url = f"{account.url}/pools/{pool_id}/nodes/{node_id}"
        out["nodeInfo"] = {
            "affinityId": f"TVM:{node_id}",
            "nodeUrl": node_url,
            "poolId": pool_id,
            "nodeId": node_id,
            "taskRootDirectory": root,
            "taskRootDirectoryUrl": f"{node_url}/files/{root}",
        }
    return out


def render_task_add_result(
    task_id: str,
    status: str,
    *,
    account_url: str,
    job_id: str,
    task: Task | None = None,
    error: ServiceError | None = None,
) -> dict[str, Any]:
    """One entry of an addtaskcollection answer; ``status`` is ``success``, ``clienterror`` or ``servererror``."""
    out: dict[str, Any] = {"status": status, "taskId": task_id}
    if task is not None:
        out["eTag"] = task.etag
        out["lastModified"] = timestamp(task.last_modified)
        out["location"] = f"{account_url}/jobs/{job_id}/tasks/{task.id}"
    if error is not None:
        now = timestamp(_clock.now())
        err: dict[str, Any] = {
            "code": error.code,
            "message": {"lang": "en-US", "value": f"{error.message}\nRequestId:{uuid.uuid4()}\nTime:{now}"},
        }
        if error.values:
            err["values"] = [{"key": k, "value": v} for k, v in error.values]
        out["error"] = err
    return out


def render_task_counts(job: Job) -> dict[str, Any]:
    """GET /jobs/{id}/taskcounts."""
    return {"taskCounts": job.counts(), "taskSlotCounts": job.slot_counts()}


def render_application(app_id: str, versions: Iterable[str], display_name: str | None) -> dict[str, Any]:
    """An application summary."""
    out: dict[str, Any] = {"id": app_id}
    if display_name:
        out["displayName"] = display_name
    out["versions"] = sorted(versions)
    return out


def render_supported_image(image: Mapping[str, Any]) -> dict[str, Any]:
    """An entry of GET /supportedimages, from the catalogue's (already in the wire's shape)."""
    return dict(image)


def render_resize_error(error: ResizeError) -> dict[str, Any]:
    """A resize error (exposed for tests that compare shapes)."""
    return {
        "code": error.code,
        "message": error.message,
        "values": [{"name": k, "value": v} for k, v in error.values],
    }


def render_file(account: Account, base_url: str, name: str, stat: Any | None) -> dict[str, Any]:
    """A task or node file list entry; directories carry no properties."""
    out: dict[str, Any] = {
        "name": name,
        "url": f"{base_url}/files/{quote(name)}",
        "isDirectory": stat is None,
    }
    if stat is not None:
        created = dt.datetime.fromtimestamp(stat.st_ctime, dt.timezone.utc)
        modified = dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc)
        out["properties"] = {
            "creationTime": timestamp(created),
            "lastModified": timestamp(modified),
            "contentLength": str(stat.st_size),
            "contentType": "text/plain" if name.endswith(".txt") else "application/octet-stream",
        }
    return out


def app_package_env(ref: AppPackageRef, path: str) -> dict[str, str]:
    """``AZ_BATCH_APP_PACKAGE_*`` variables for one package on a Linux node.

    As the service documents it for Linux: ``.``, ``-`` and ``#`` become ``_`` and the case of the application
    id is kept (``AZ_BATCH_APP_PACKAGE_ffmpeg_9_0_2``); Linux variables are case-sensitive, so an upper-cased
    name would not be found by a command line written for the real service (see ``aiobatch.app_package_dir``).
    """

    def norm(text: str) -> str:
        return re.sub(r"[.\-#]", "_", text)

    env = {f"AZ_BATCH_APP_PACKAGE_{norm(ref.application_id)}_{norm(ref.version)}": path}
    if ref.default:
        env[f"AZ_BATCH_APP_PACKAGE_{norm(ref.application_id)}"] = path
    return env


def task_user(user_identity: object) -> tuple[str, str]:
    """``AZ_BATCH_TASK_USER`` and ``AZ_BATCH_TASK_USER_IDENTITY`` for a task's ``userIdentity``.

    The pool's non-admin auto user (the default) is ``_azbatch`` with identity ``PoolNonAdmin``, as tasks on real
    Linux nodes print them. Another auto user's identity follows the same pattern (scope, then elevation, e.g.
    ``TaskAdmin``) and keeps the name ``_azbatch``: the emulator creates no accounts per scope. A named user
    account is its name. Whatever this says, every task runs as the emulator's own operating-system user.
    """
    if isinstance(user_identity, dict):
        name = user_identity.get("username")
        if isinstance(name, str) and name:
            return name, name
        auto = user_identity.get("autoUser")
        if isinstance(auto, dict):
            scope = "Task" if str(auto.get("scope") or "pool").lower() == "task" else "Pool"
            elevation = "Admin" if str(auto.get("elevationLevel") or "nonadmin").lower() == "admin" else "NonAdmin"
            return "_azbatch", scope + elevation
    return "_azbatch", "PoolNonAdmin"
