"""What happens to a job beyond running its tasks: exit options, disable and enable, its wall clock, reactivation.

- When a task completes, `task_completed` applies its exit options (`_exit_options`): ``dependencyAction``
  releases the tasks that depend on it (`_dependencies`), and, when the job's ``onTaskFailure`` is
  ``performexitoptionsjobaction`` and the task failed (has a ``failureInfo``, as the API defines failure), its
  ``jobAction`` disables the job (with ``disableTasks`` requeue) or terminates it (``terminateReason``
  ``TaskFailed``).
- `disable_job` and `enable_job`: ``active`` -> ``disabling`` -> ``disabled`` -> ``enabling`` -> ``active``; no task
  of a job that is not active is dispatched. ``disableTasks``: ``requeue`` stops the running tasks and queues them
  again (``requeueCount`` grows), ``terminate`` completes them as terminated, ``wait`` lets them finish (the job is
  ``disabling`` until they have).
- `arm_wall_clock`: a job's ``constraints.maxWallClockTime``, counted from its creation, terminates it with
  ``terminateReason`` ``MaxWallClockTimeExpiry`` (running tasks are ended, as by a terminate).
- `reactivate_task`: a failed task goes back to ``active`` with its retry count reset.

The scheduler calls `task_completed`; handlers call the rest. Time passes on the scheduler's clock
(`Scheduler.now`, `Scheduler.real_seconds`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ._exit_options import exit_options
from ._model import Job, Task, requeue_task
from ._types import TaskOutcome
from ._wire import parse_duration

if TYPE_CHECKING:  # the scheduler calls task_completed: it imports this module
    from ._scheduler import Scheduler

log = logging.getLogger("aiobatch.emulator")

#: The job states in which the job still runs (its wall clock counts, an exit option's action applies).
_LIVE = frozenset({"active", "disabling", "disabled", "enabling"})


# -- completions -------------------------------------------------------------------------------------------------


def task_completed(scheduler: Scheduler, job: Job, task: Task, outcome: TaskOutcome) -> None:
    """Apply the exit options of a task whose attempt has completed it (not one the user terminated)."""
    options = exit_options(task.spec.get("exitConditions"), outcome.exit_code, outcome.failure_info)
    if options.dependency_action == "satisfy" and job.dependencies is not None:
        release(scheduler, job, job.dependencies.satisfy(task.id.lower()))
    if outcome.failure_info is not None and job.on_task_failure == "performexitoptionsjobaction" and job.state in _LIVE:
        if options.job_action == "terminate":
            log.info("job %s: task %s failed; its exit options terminate the job", job.id, task.id)
            scheduler.terminate_job(job, "TaskFailed")
        elif options.job_action == "disable" and job.state == "active":
            log.info("job %s: task %s failed; its exit options disable the job", job.id, task.id)
            disable_job(scheduler, job, "requeue")


def release(scheduler: Scheduler, job: Job, keys: list[str]) -> None:
    """Queue the tasks whose dependencies are now satisfied."""
    for key in keys:
        task = job.tasks.get(key)
        if task is not None and task.state == "active" and task.runner is None:
            job.queue.append(key)
    if keys:
        scheduler.kick()


# -- disable and enable ------------------------------------------------------------------------------------------


def disable_job(scheduler: Scheduler, job: Job, disable_tasks: str) -> None:
    """Start disabling an active job; its running tasks are requeued, terminated or waited for.

    A job already disabling or disabled is left as it is (the service accepts the request).
    """
    if job.state != "active":
        return
    job.set_state("disabling")
    job.touch()
    running = [t for t in job.tasks.values() if t.runner is not None]
    scheduler.spawn(_disable(scheduler, job, running, disable_tasks.lower()), f"disable-{job.id}")


async def _disable(scheduler: Scheduler, job: Job, running: list[Task], disable_tasks: str) -> None:
    if disable_tasks == "terminate":
        await scheduler.end_running(job, running)
    else:
        runners = [t.runner for t in running if t.runner is not None]
        if disable_tasks == "requeue":
            for runner in runners:
                runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        if disable_tasks == "requeue":
            for task in running:
                if task.state == "running":
                    requeue_task(job, task)
    if job.state == "disabling":
        job.set_state("disabled")
        log.info("job %s disabled (%s)", job.id, disable_tasks)


def enable_job(scheduler: Scheduler, job: Job) -> None:
    """Enable a disabled (or disabling) job: it goes ``enabling``, then ``active``, and its tasks run again.

    An active or enabling job is left as it is.
    """
    if job.state not in ("disabling", "disabled"):
        return
    job.set_state("enabling")
    job.touch()
    scheduler.spawn(_enable(scheduler, job), f"enable-{job.id}")


async def _enable(scheduler: Scheduler, job: Job) -> None:
    await asyncio.sleep(0)  # the request is answered while the job is still enabling, as on Azure
    if job.state == "enabling":
        job.set_state("active")
        log.info("job %s enabled", job.id)
        scheduler.kick()
        scheduler.check_job_complete(job)


# -- the job's wall clock ----------------------------------------------------------------------------------------


def arm_wall_clock(scheduler: Scheduler, job: Job) -> None:
    """(Re)start the timer of the job's ``constraints.maxWallClockTime`` (none when it is unlimited)."""
    stop_wall_clock(job)
    limit = parse_duration((job.spec.get("constraints") or {}).get("maxWallClockTime"), "constraints.maxWallClockTime")
    if limit is None or job.state not in _LIVE:
        return
    job.wall_clock = scheduler.spawn(_expire(scheduler, job, limit), f"wall-clock-{job.id}")


def stop_wall_clock(job: Job) -> None:
    """Stop the job's wall-clock timer (the job is ending, or its limit changes)."""
    timer, job.wall_clock = job.wall_clock, None
    if timer is not None and timer is not asyncio.current_task():
        timer.cancel()


async def _expire(scheduler: Scheduler, job: Job, limit: float) -> None:
    elapsed = (scheduler.now() - job.creation_time).total_seconds()
    await asyncio.sleep(scheduler.real_seconds(max(0.0, limit - elapsed)))
    if job.state in _LIVE:
        log.info("job %s exceeded its maximum wall clock time", job.id)
        scheduler.terminate_job(job, "MaxWallClockTimeExpiry")


# -- tasks -------------------------------------------------------------------------------------------------------


def reactivate_task(scheduler: Scheduler, job: Job, task: Task) -> None:
    """Make a failed task active again: retry count reset, exit code and failure forgotten.

    The caller checked that the task is completed and failed and that its job accepts it.
    """
    task.retry_count = 0
    task.last_retry_time = None
    task.exit_code = task.result = task.failure_info = None
    task.start_time = task.end_time = None
    task.set_state("active")
    task.touch()
    job.completed_count -= 1
    key = task.id.lower()
    if job.dependencies is None or not job.dependencies.add(key, task.spec.get("dependsOn")):
        job.queue.append(key)
    scheduler.kick()


__all__ = [
    "arm_wall_clock",
    "disable_job",
    "enable_job",
    "reactivate_task",
    "release",
    "stop_wall_clock",
    "task_completed",
]
