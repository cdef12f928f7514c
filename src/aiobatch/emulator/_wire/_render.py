"""Model objects out: JSON in the shapes, field order and defaults the real service answers with (`render_*`).

See ``shared/reference/recordings``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .._autoscale import AutoScaleRun
from .._model import (
    Account,
    Entity,
    Job,
    Node,
    Pool,
    ResizeError,
    ServiceError,
    StartTaskAttempt,
    Task,
)
from .._types import FailureInfo
from ._http import error_body, format_duration, metadata, timestamp

if TYPE_CHECKING:
    from .._jobprep import Attempt, NodePrep
    from .._schedules import JobSchedule


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


def _failure(info: FailureInfo) -> dict[str, Any]:
    body: dict[str, Any] = {"category": info.category, "code": info.code, "message": info.message}
    if info.details:
        body["details"] = [{"name": k, "value": v} for k, v in info.details]
    return body


def _given(spec: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """The spec's properties among ``keys`` that are set (not absent, null or empty), in ``keys``' order."""
    return {key: spec[key] for key in keys if spec.get(key)}


def _state_fields(entity: Entity, *, previous: bool = True) -> dict[str, Any]:
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


def _head(entity: Entity, url: str, *, previous: bool = True) -> dict[str, Any]:
    """The properties a pool, job and job schedule open with, in the service's order."""
    out: dict[str, Any] = {"id": entity.id}
    if entity.spec.get("displayName"):
        out["displayName"] = entity.spec["displayName"]
    out.update(
        {
            "url": url,
            "eTag": entity.etag,
            "lastModified": timestamp(entity.last_modified),
            "creationTime": timestamp(entity.creation_time),
            **_state_fields(entity, previous=previous),
        }
    )
    return out


def render_pool(account: Account, pool: Pool) -> dict[str, Any]:
    """A pool as GET /pools/{id} answers (without ``odata.metadata``)."""
    spec = pool.spec
    # A pool has no previousState in the service's answers (a deleting pool was recorded without one).
    out = _head(pool, f"{account.url}/pools/{pool.id}", previous=False)
    out.update(
        {
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
    out.update(
        _given(
            spec,
            "startTask",
            "applicationPackageReferences",
            "metadata",
            "userAccounts",
            "networkConfiguration",
            "upgradePolicy",
        )
    )
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
        out["startTaskInfo"] = render_start_task_info(node.start_task_info, node.start_task_failure)
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


def render_start_task_info(attempt: StartTaskAttempt, failure: FailureInfo | None) -> dict[str, Any]:
    """A node's ``startTaskInfo``: its start task's latest attempt, with the last failure seen."""
    outcome = attempt.outcome
    if outcome is None:
        info: dict[str, Any] = {
            "state": "running",
            "startTime": timestamp(attempt.start_time),
            "retryCount": attempt.retry_count,
        }
    else:
        info = {
            "state": "completed",
            "startTime": timestamp(outcome.start_time),
            "endTime": timestamp(outcome.end_time),
        }
        if outcome.exit_code is not None:
            info["exitCode"] = outcome.exit_code
        info["result"] = outcome.result
        info["retryCount"] = attempt.retry_count
    if failure is not None:
        info["failureInfo"] = _failure(failure)
    return info


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
    out = _head(job, f"{account.url}/jobs/{job.id}")
    out.update(
        {
            "priority": job.priority,
            "maxParallelTasks": job.max_parallel_tasks,
            "usesTaskDependencies": spec["usesTaskDependencies"],
            "allowTaskPreemption": spec["allowTaskPreemption"],
            "constraints": spec["constraints"],
        }
    )
    # As `_parse.parse_job_tasks` filled them in.
    out.update(_given(spec, "jobPreparationTask", "jobReleaseTask"))
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
    out.update(
        _given(
            spec,
            "resourceFiles",
            "outputFiles",
            "environmentSettings",
            "applicationPackageReferences",
            "exitConditions",
            "affinityInfo",
            "dependsOn",
        )
    )
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
        out["error"] = error_body(error, str(uuid.uuid4()))
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


def render_node_extension(extension: Mapping[str, Any]) -> dict[str, Any]:
    """An entry of a node's extensions: the pool's extension, never its ``protectedSettings``."""
    shown = {k: v for k, v in extension.items() if k != "protectedSettings"}  # never echoed back
    return {
        "provisioningState": "Succeeded",
        "vmExtension": shown,
        "instanceView": {
            "name": extension.get("name"),
            "statuses": [
                {
                    "code": "ProvisioningState/succeeded",
                    "displayStatus": "Provisioning succeeded",
                    "level": "Info",
                    "message": "Accepted, not simulated: the aiobatch emulator installs no VM extension.",
                }
            ],
        },
    }


def render_prep_task_info(attempt: Attempt, node_url: str, *, retries: bool) -> dict[str, Any]:
    """``jobPreparationTaskExecutionInfo`` (``retries``) or ``jobReleaseTaskExecutionInfo``."""
    out: dict[str, Any] = {"startTime": timestamp(attempt.start_time)}
    if attempt.end_time is not None:
        out["endTime"] = timestamp(attempt.end_time)
    out["state"] = attempt.state
    out["taskRootDirectory"] = attempt.task_root
    out["taskRootDirectoryUrl"] = f"{node_url}/files/{attempt.task_root}"
    if attempt.exit_code is not None:
        out["exitCode"] = attempt.exit_code
    if attempt.failure is not None:
        out["failureInfo"] = _failure(attempt.failure)
    if retries:
        out["retryCount"] = attempt.retry_count
        if attempt.last_retry_time is not None:
            out["lastRetryTime"] = timestamp(attempt.last_retry_time)
    if attempt.state == "completed":
        out["result"] = "failure" if attempt.failure is not None else "success"
    return out


def render_prep_status(account_url: str, entry: NodePrep) -> dict[str, Any]:
    """An entry of ``jobpreparationandreleasetaskstatus``: how both tasks went on one node."""
    assert entry.prep is not None
    node_url = f"{account_url}/pools/{entry.pool_id}/nodes/{entry.node.id}"
    item: dict[str, Any] = {
        "poolId": entry.pool_id,
        "nodeId": entry.node.id,
        "nodeUrl": node_url,
        "jobPreparationTaskExecutionInfo": render_prep_task_info(entry.prep, node_url, retries=True),
    }
    if entry.release is not None:
        item["jobReleaseTaskExecutionInfo"] = render_prep_task_info(entry.release, node_url, retries=False)
    return item


def render_schedule(account_url: str, schedule: JobSchedule) -> dict[str, Any]:
    """A job schedule as GET /jobschedules/{id} answers (without ``odata.metadata``)."""
    spec = schedule.spec
    out = _head(schedule, f"{account_url}/jobschedules/{schedule.id}")
    out["schedule"] = dict(spec.get("schedule") or {})
    out["jobSpecification"] = schedule.job_spec
    info: dict[str, Any] = {}
    if schedule.next_run_time is not None and schedule.state in ("active", "disabled"):
        info["nextRunTime"] = timestamp(schedule.next_run_time)
    if schedule.recent_job is not None:
        info["recentJob"] = {"id": schedule.recent_job, "url": f"{account_url}/jobs/{schedule.recent_job}"}
    if schedule.end_time is not None:
        info["endTime"] = timestamp(schedule.end_time)
    out["executionInfo"] = info
    if spec.get("metadata"):
        out["metadata"] = spec["metadata"]
    return out


def render_remote_login(account_url: str, address: str, port: int) -> dict[str, Any]:
    """GET .../nodes/{nodeId}/remoteloginsettings."""
    body = metadata(account_url, "Microsoft.Azure.Batch.Protocol.Entities.ComputeNodeGetRemoteLoginSettingsResult")
    body.update({"remoteLoginIPAddress": address, "remoteLoginPort": port})
    return body


def render_service_logs_upload(account_url: str, directory: str, count: int) -> dict[str, Any]:
    """The answer of POST .../nodes/{nodeId}/uploadbatchservicelogs."""
    body = metadata(account_url, "Microsoft.Azure.Batch.Protocol.Entities.UploadBatchServiceLogsResult")
    body.update({"virtualDirectoryName": directory, "numberOfFilesUploaded": count})
    return body


def render_pool_usage(row: Mapping[str, Any]) -> dict[str, Any]:
    """An entry of GET /poolusagemetrics, from one of `_nodes.NodeOps.usage_metrics`' rows (times as datetimes)."""
    return {**row, "startTime": timestamp(row["startTime"]), "endTime": timestamp(row["endTime"])}


def render_pool_stats(pool_url: str, created: dt.datetime, now: dt.datetime) -> dict[str, Any]:
    """A pool's ``stats`` (``$expand=stats``): the period it covers, no usage or resource figures.

    ``usageStats`` and ``resourceStats`` are optional in the API and left out: the emulator measures neither
    the cores its nodes would bill nor their CPU, memory, disk or network use, and answers no figure it has not
    measured.
    """
    # The url's form is guessed (no recording holds a pool's stats): the pool's own, then /stats.
    return {"url": f"{pool_url}/stats", "startTime": timestamp(created), "lastUpdateTime": timestamp(now)}
