"""Request bodies in: parsed JSON becomes model objects (`parse_*`), with the service's defaults and refusals."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from .._autoscale import FormulaError, parse
from .._autoscale_runs import check_interval
from .._catalogue import catalogue
from .._dependencies import Dependencies, check_depends_on
from .._model import (
    Account,
    AppPackageRef,
    Job,
    Pool,
    ServiceError,
    StartTask,
    Task,
    check_id,
    invalid_property,
    missing_property,
)
from .._types import OutputFile, ResourceFile
from ._http import MAX_DURATION, parse_duration

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


def _default_user() -> dict[str, Any]:
    """The ``userIdentity`` the service fills in: the pool's non-admin auto user."""
    return {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}


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
    spec.setdefault("userIdentity", _default_user())
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
    from .._nodes import resize_timeout  # _nodes imports this package

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
        st_spec.setdefault("userIdentity", _default_user())
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


#: A job's preparation and release tasks, as their properties are named.
PREP = "jobPreparationTask"
RELEASE = "jobReleaseTask"

#: A job release task's's default and longest ``maxWallClockTime`` (the REST reference: "You may not specify a
#: timeout longer than 15 minutes").
RELEASE_MAX_WALL_CLOCK = 15 * 60


def _refuse_container(body: Mapping[str, Any], prop: str) -> None:
    if body.get("containerSettings"):
        raise invalid_property(
            f"{prop}.containerSettings",
            "(set)",
            "The aiobatch emulator does not run job preparation or release tasks in containers; leave "
            "containerSettings out (the task then runs as a process on the node) or test this on Azure Batch.",
        )


def _common(body: Mapping[str, Any], prop: str, default_id: str) -> dict[str, Any]:
    if not body.get("commandLine"):
        raise missing_property(f"{prop}.commandLine")
    task_id = body.get("id") or default_id
    try:
        check_id("task", task_id)
    except ServiceError as error:
        error.values = [(k, f"{prop}.id" if k == "PropertyName" else v) for k, v in error.values]
        raise
    parse_resource_files(body.get("resourceFiles"), f"{prop}.resourceFiles")
    out: dict[str, Any] = {"id": task_id, "commandLine": body["commandLine"]}
    for key in ("resourceFiles", "environmentSettings"):
        if body.get(key):
            out[key] = body[key]
    return out


def parse_job_tasks(spec: dict[str, Any]) -> None:
    """Check a job's ``jobPreparationTask`` and ``jobReleaseTask`` and fill in the service's defaults, in place.

    ``spec`` is the job's spec as `parse_job` made it; what is filled in is what the service answers (as
    recorded: ``tests/emulator/recordings``, ..._jobs_async_.json).

    Raises:
        ServiceError: 400 naming the property: a release task without a preparation task, one of them with
            ``containerSettings`` (not emulated), a release ``maxWallClockTime`` over 15 minutes, a bad id.
    """
    prep, release = spec.get(PREP), spec.get(RELEASE)
    if release and not prep:
        # guessed code; the REST reference: "A Job Release Task cannot be specified without also specifying a
        # Job Preparation Task for the Job."
        raise invalid_property(RELEASE, "(set)", "A job release task needs a job preparation task.")
    if prep:
        _refuse_container(prep, PREP)
        out = _common(prep, PREP, "jobpreparation")
        constraints = dict(prep.get("constraints") or {})
        constraints.setdefault("maxWallClockTime", MAX_DURATION)
        constraints.setdefault("retentionTime", "P7D")
        constraints.setdefault("maxTaskRetryCount", 0)
        parse_duration(constraints["maxWallClockTime"], f"{PREP}.constraints.maxWallClockTime")
        retries = constraints["maxTaskRetryCount"]
        if not -1 <= retries <= 100:
            raise invalid_property(
                f"{PREP}.constraints.maxTaskRetryCount", retries, "The value must be an integer between -1 and 100."
            )
        out["constraints"] = constraints
        out["userIdentity"] = prep.get("userIdentity") or _default_user()
        out["waitForSuccess"] = prep.get("waitForSuccess") is not False
        out["rerunOnNodeRebootAfterSuccess"] = prep.get("rerunOnNodeRebootAfterSuccess") is not False
        spec[PREP] = out
    else:
        spec.pop(PREP, None)
    if release:
        _refuse_container(release, RELEASE)
        out = _common(release, RELEASE, "jobrelease")
        if out["id"].lower() == spec[PREP]["id"].lower():
            # guessed code: the ids of a job's tasks are unique, these two included.
            raise invalid_property(f"{RELEASE}.id", out["id"], "The job release task's id is the preparation task's.")
        limit = parse_duration(release.get("maxWallClockTime") or "PT15M", f"{RELEASE}.maxWallClockTime")
        if limit is None or limit > RELEASE_MAX_WALL_CLOCK:
            raise invalid_property(
                f"{RELEASE}.maxWallClockTime",
                release.get("maxWallClockTime"),
                "A job release task may not run longer than 15 minutes (PT15M).",
            )
        out["maxWallClockTime"] = release.get("maxWallClockTime") or "PT15M"
        out["retentionTime"] = release.get("retentionTime") or "P7D"
        parse_duration(out["retentionTime"], f"{RELEASE}.retentionTime")
        out["userIdentity"] = release.get("userIdentity") or _default_user()
        spec[RELEASE] = out
    else:
        spec.pop(RELEASE, None)


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
