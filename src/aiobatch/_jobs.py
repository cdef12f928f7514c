"""Jobs: idempotent creation (on a pool or an auto-pool), completion actions and termination.

A job aiobatch creates carries the run id in its metadata, like its pools (see `aiobatch._run`). Creating a
job whose id is taken is fine when the job is this run's (a retried create whose answer was lost, or a re-run
of the same run); a job with that id that this run did not create is a conflict unless the caller asks to
reuse it.

``onAllTasksComplete``. A job told to terminate when all its tasks are complete terminates at once while it
has no tasks -- the service's rule, not a bug. So a job is always created with ``noaction``; the action the
caller wants is applied by `set_on_all_tasks_complete` once the tasks are in (the client does it at the end of
`submit_tasks`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

from azure.batch import models
from azure.batch.aio import BatchClient
from azure.batch.models._models import BatchJobTerminateOptions

from ._entities import create_or_read, reader
from ._errors import ConfigurationError, ConflictError, NotFoundError
from ._retry import RetryPolicy, call
from ._run import not_ours, run_id_of, tagged
from ._specs import PoolSpec, check_id, to_pool_specification

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "JobOptions",
    "JobRef",
    "OnAllTasksComplete",
    "OnTaskFailure",
    "create_job",
    "set_on_all_tasks_complete",
    "terminate_job",
]

logger = logging.getLogger("aiobatch")

OnAllTasksComplete = Literal["noaction", "terminatejob"]
OnTaskFailure = Literal["noaction", "performexitoptionsjobaction"]


@dataclass(frozen=True)
class JobRef:
    """A job `create_job` made sure of, and whose it is.

    Attributes:
        id: the job id.
        pool_id: the pool it runs on (for an auto-pool, the id the service gave it, once known).
        created: this call's create took effect (also when its answer was lost and the retry saw ``JobExists``).
        owned: the job carries this run's id, so this run may delete it; ``False`` for an adopted job.
        auto_pool: the job's pool is an auto-pool, deleted by the service with the job.
        on_all_tasks_complete: the action to apply once the tasks are submitted.
    """

    id: str
    pool_id: str | None
    created: bool
    owned: bool
    auto_pool: bool = False
    on_all_tasks_complete: OnAllTasksComplete = "noaction"


def _auto_pool_info(spec: PoolSpec, run_id: str) -> models.BatchPoolInfo:
    pool = to_pool_specification(dataclasses.replace(spec, metadata=tagged(spec.metadata, run_id)))
    return models.BatchPoolInfo(
        auto_pool_specification=models.BatchAutoPoolSpecification(
            auto_pool_id_prefix=spec.id[:20],
            pool_lifetime_option="job",
            keep_alive=False,
            pool=pool,
        )
    )


class JobOptions(TypedDict, total=False):
    """What a job is created with besides its id; every key is optional (see `create_job` for the defaults).

    Attributes:
        pool_id: the pool to run on.
        auto_pool: the spec of an auto-pool; its id (up to 20 characters) is the auto-pool id's prefix.
        on_all_tasks_complete: ``"terminatejob"`` to end the job when all its tasks are done (default
            ``"noaction"``); applied after submission (see the module docstring), never at creation.
        on_task_failure: ``"performexitoptionsjobaction"`` to apply tasks' exit options on failure (default
            ``"noaction"``).
        max_task_retry_count: the job's default for tasks' retries.
        max_wall_clock_time: seconds the whole job may run.
        priority: -1000 to 1000.
        display_name: a human-readable name.
        metadata: more name/value pairs for the job.
        reuse_existing: accept a job with this id that this run did not create (it is never deleted by it);
            default ``False``.
        deletion_timeout: seconds to wait for a job with this id that is being deleted to go (default 300).
    """

    pool_id: str | None
    auto_pool: PoolSpec | None
    on_all_tasks_complete: OnAllTasksComplete
    on_task_failure: OnTaskFailure
    max_task_retry_count: int | None
    max_wall_clock_time: float | None
    priority: int | None
    display_name: str | None
    metadata: Mapping[str, str] | None
    reuse_existing: bool
    deletion_timeout: float


def _check_options(options: Mapping[str, object]) -> None:
    """Refuse a keyword that is not a `JobOptions` key (type checkers catch it; this is for everyone else)."""
    for name in options:
        if name not in JobOptions.__optional_keys__:
            raise TypeError(f"create_job() got an unexpected keyword argument {name!r}")


async def create_job(
    batch: BatchClient,
    job_id: str,
    *,
    run_id: str,
    policy: RetryPolicy | None = None,
    **options: Unpack[JobOptions],
) -> JobRef:
    """Create a job unless this run's job with that id exists; never take over another's silently.

    A job with the id that is being deleted (anyone's: it is going away) is waited for, up to
    *deletion_timeout*, and the job is then created anew.

    Give exactly one of *pool_id* (an existing pool) and *auto_pool* (a pool the service creates for this job
    and deletes with it: ``poolLifetimeOption=job``, so a client that dies leaves no pool behind once the job
    ends or is deleted).

    Args:
        batch: the Batch client.
        job_id: the job id.
        run_id: this run's id, recorded in the job's (and auto-pool's) metadata.
        policy: the retry policy for each request.
        **options: the job's options (see `JobOptions`).

    Returns:
        The job's id, pool and ownership.

    Raises:
        ConfigurationError: neither or both of *pool_id* and *auto_pool*, or an invalid id.
        ConflictError: the id belongs to a job this run did not create, or one still being deleted after
            *deletion_timeout*.
        NotFoundError: the pool does not exist (some services say so only when tasks are scheduled).
    """
    _check_options(options)
    pool_id = options.get("pool_id")
    auto_pool = options.get("auto_pool")
    on_all_tasks_complete = options.get("on_all_tasks_complete", "noaction")
    max_task_retry_count = options.get("max_task_retry_count")
    max_wall_clock_time = options.get("max_wall_clock_time")
    check_id("job", job_id)
    if (pool_id is None) == (auto_pool is None):
        raise ConfigurationError(
            f"job {job_id!r} needs exactly one of pool_id= (an existing pool) or auto_pool= (a PoolSpec for a "
            "pool that lives as long as the job).",
            setting="pool_id",
        )
    if on_all_tasks_complete not in ("noaction", "terminatejob"):
        raise ConfigurationError(
            f"on_all_tasks_complete must be 'noaction' or 'terminatejob', not {on_all_tasks_complete!r}.",
            setting="on_all_tasks_complete",
        )
    if pool_id is not None:
        check_id("pool", pool_id)
    pool_info = models.BatchPoolInfo(pool_id=pool_id) if auto_pool is None else _auto_pool_info(auto_pool, run_id)
    constraints = None
    if max_task_retry_count is not None or max_wall_clock_time is not None:
        constraints = models.BatchJobConstraints(
            max_task_retry_count=max_task_retry_count,
            max_wall_clock_time=None if max_wall_clock_time is None else dt.timedelta(seconds=max_wall_clock_time),
        )
    meta = tagged(dict(options.get("metadata") or {}), run_id)
    model = models.BatchJobCreateOptions(
        id=job_id,
        display_name=options.get("display_name"),
        priority=options.get("priority"),
        constraints=constraints,
        pool_info=pool_info,
        all_tasks_complete_mode="noaction",
        task_failure_mode=options.get("on_task_failure", "noaction"),
        metadata=[models.BatchMetadataItem(name=k, value=v) for k, v in meta.items()],
    )
    found = await create_or_read(
        lambda: batch.create_job(model),
        reader(batch, "job", job_id, ["id", "state", "metadata"]),
        "job",
        job_id,
        policy=policy,
        deletion_timeout=options.get("deletion_timeout", 300.0),
    )
    created = owned = True
    if found.existing is None:
        logger.info("created job %r", job_id)
    else:
        owner = run_id_of(found.existing.metadata)
        if owner == run_id:
            created = found.attempts > 1  # a retried create finding our tag: the first attempt took effect
            logger.info("job %r is this run's (%s)", job_id, "created" if created else "exists")
        elif options.get("reuse_existing", False):
            created = owned = False
            logger.info("reusing existing job %r (not created by this run; it will not be deleted by it)", job_id)
        else:
            raise not_ours(
                "job",
                job_id,
                owner,
                run_id,
                "Choose another job id, delete the old job, or pass reuse_existing=True to add tasks to it.",
                code="JobExists",
            )
    actual_pool = pool_id
    if auto_pool is not None:
        job = await call(
            lambda: batch.get_job(job_id, select=["id", "executionInfo"]),
            policy=policy,
            resource="job",
            resource_id=job_id,
        )
        actual_pool = job.execution_info.pool_id if job.execution_info else None
    return JobRef(
        id=job_id,
        pool_id=actual_pool,
        created=created,
        owned=owned,
        auto_pool=auto_pool is not None,
        on_all_tasks_complete=on_all_tasks_complete,
    )


async def set_on_all_tasks_complete(
    batch: BatchClient,
    job_id: str,
    action: OnAllTasksComplete,
    *,
    policy: RetryPolicy | None = None,
) -> None:
    """Set what the service does when all of a job's tasks are complete (a PATCH of the job).

    Call it after the tasks are submitted: with ``"terminatejob"``, a job whose tasks are all complete
    terminates at once -- including one with no tasks yet. A job that has already completed is left alone.

    Args:
        batch: the Batch client.
        job_id: the job.
        action: ``"noaction"`` or ``"terminatejob"``.
        policy: the retry policy.

    Raises:
        NotFoundError: the job does not exist.
    """
    update = models.BatchJobUpdateOptions(all_tasks_complete_mode=action)
    try:
        await call(
            lambda: batch.update_job(job_id, update),
            policy=policy,
            resource="job",
            resource_id=job_id,
            action="update",
        )
    except ConflictError as exc:
        if exc.code not in ("JobCompleted", "JobBeingTerminated"):
            raise
        return
    logger.info("job %r: on all tasks complete -> %s", job_id, action)


async def terminate_job(
    batch: BatchClient, job_id: str, *, reason: str = "UserTerminate", policy: RetryPolicy | None = None
) -> bool:
    """Terminate a job: its running tasks are stopped and no more are scheduled; it stays listed.

    Args:
        batch: the Batch client.
        job_id: the job.
        reason: the termination reason recorded on the job (the service's default is ``UserTerminate``).
        policy: the retry policy.

    Returns:
        ``True`` if this call terminated it, ``False`` if it was already completed, terminating or gone.
    """
    try:
        await call(
            # azure-batch 15.1 cannot build this request without a non-empty body (it sends content-type None).
            lambda: batch.begin_terminate_job(job_id, BatchJobTerminateOptions(termination_reason=reason)),
            policy=policy,
            resource="job",
            resource_id=job_id,
            action="terminate",
        )
    except NotFoundError:
        return False
    except ConflictError as exc:
        if exc.code in ("JobCompleted", "JobBeingTerminated", "JobBeingDeleted"):
            return False
        raise
    logger.info("terminated job %r", job_id)
    return True
