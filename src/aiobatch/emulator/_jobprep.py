"""Job preparation and release tasks: run on a node before a job's first task there, and when the job ends.

As the REST API documents them (``BatchJobPreparationTask``, ``BatchJobReleaseTask``):

- the preparation task runs on a node before the first task of the job that the node runs; with
  ``waitForSuccess`` (the default) that task waits (``preparing``) until it succeeds; it is retried up to its
  ``constraints.maxTaskRetryCount``; when it still fails, the node runs no task of that job (the task goes back to
  the queue for another node) until the node is reimaged; the node stays usable for other jobs. Without
  ``waitForSuccess`` tasks run at once beside it, whatever it does;
- it runs again after a reboot when ``rerunOnNodeRebootAfterSuccess`` (default true) or if it had not completed,
  and always after a reimage (`JobPrep.node_rebooted`, called by whoever reboots or reimages a node);
- the release task runs, when the job is terminated, completes or is deleted, on every node where the
  preparation task ran, for at most its ``maxWallClockTime`` (15 minutes by default and at most);
- ``GET /jobs/{job}/jobpreparationandreleasetaskstatus`` lists, per node, how both went.

Both run as processes through `_runner.run_task`, in ``workitems/<job>/job-1/<task id>`` on the node, with their
job's ``commonEnvironmentSettings`` under their own settings. Tasks of the job get ``AZ_BATCH_JOB_PREP_DIR`` and
``AZ_BATCH_JOB_PREP_WORKING_DIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _wire as wire
from ._model import Job, Node, Pool, ServiceError, Task, utcnow
from ._runner import run_task
from ._types import FailureInfo, TaskOutcome, TaskRun
from ._wire import PREP, RELEASE

if TYPE_CHECKING:
    from ._scheduler import Scheduler

log = logging.getLogger("aiobatch.emulator")


def check_task_id(job: Job, task_id: str) -> None:
    """The service's 409 for a task whose id is the job's preparation or release task's.

    Raises:
        ServiceError: 409 ``TaskIdSameAsJobPreparationTask`` / ``TaskIdSameAsJobReleaseTask`` (the codes the REST
            reference names).
    """
    for key, code in ((PREP, "TaskIdSameAsJobPreparationTask"), (RELEASE, "TaskIdSameAsJobReleaseTask")):
        special = job.spec.get(key)
        if special and special["id"].lower() == task_id.lower():
            which = "preparation" if key == PREP else "release"
            raise ServiceError(409, code, f"The task id is the same as the job's {which} task's id.")


# -- what runs on the nodes --------------------------------------------------------------------------------------


@dataclass
class Attempt:
    """How the preparation or the release task went on one node (its execution info)."""

    task_root: str
    start_time: dt.datetime
    state: str = "running"
    end_time: dt.datetime | None = None
    exit_code: int | None = None
    failure: FailureInfo | None = None
    retry_count: int = 0
    last_retry_time: dt.datetime | None = None

    def finish(self, outcome: TaskOutcome) -> None:
        """Record how an attempt ended."""
        self.state, self.end_time = "completed", outcome.end_time
        self.start_time, self.exit_code, self.failure = outcome.start_time, outcome.exit_code, outcome.failure_info

    @property
    def succeeded(self) -> bool:
        """Completed with no failure."""
        return self.state == "completed" and self.failure is None


@dataclass(eq=False)
class NodePrep:
    """A job's preparation (and release) on one node."""

    pool_id: str
    node: Node
    prep: Attempt | None = None
    release: Attempt | None = None
    #: The preparation under way.
    runner: asyncio.Task[bool] | None = None
    #: The preparation must run again before the job's next task here (after a reboot).
    rerun: bool = False


class JobPrep:
    """The preparation and release tasks of every job of an account, on the scheduler's nodes."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: Lower-cased job id -> (the job, node id -> its preparation there); dropped when the job is deleted.
        self._jobs: dict[str, tuple[Job, dict[str, NodePrep]]] = {}

    async def stop(self) -> None:
        """Stop every preparation task under way (the emulator stops)."""
        runners = [
            e.runner
            for _, nodes in self._jobs.values()
            for e in nodes.values()
            if e.runner is not None and not e.runner.done()
        ]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    def _nodes(self, job: Job) -> dict[str, NodePrep]:
        held = self._jobs.get(job.id.lower())
        return held[1] if held is not None and held[0] is job else {}

    # -- hooks of the scheduler -------------------------------------------------------------------------------

    def eligible_everywhere(self, job: Job) -> bool:
        """Whether every node may take ``job``'s tasks, as far as preparation goes (no node needs asking)."""
        spec = job.spec.get(PREP)
        return not spec or not spec["waitForSuccess"] or not self._nodes(job)

    def eligible(self, job: Job, node: Node) -> bool:
        """Whether ``node`` may take tasks of ``job``: not where its waited-for preparation task failed."""
        spec = job.spec.get(PREP)
        if not spec or not spec["waitForSuccess"]:
            return True
        entry = self._nodes(job).get(node.id)
        return (
            entry is None
            or entry.rerun
            or entry.prep is None
            or entry.prep.state != "completed"
            or (entry.prep.succeeded)
        )

    async def ready(self, job: Job, pool: Pool, node: Node, task: Task) -> bool:
        """Before ``task`` runs on ``node``: run the job's preparation task there if it has not run.

        Returns False when the task may not run on the node (the preparation task failed there and the task
        must wait for it); the task is then ``preparing`` while it waits.
        """
        spec = job.spec.get(PREP)
        if not spec:
            return True
        key = job.id.lower()
        if key not in self._jobs or self._jobs[key][0] is not job:
            self._jobs[key] = (job, {})
        nodes = self._jobs[key][1]
        entry = nodes.get(node.id)
        if entry is None or entry.node is not node:
            entry = nodes[node.id] = NodePrep(pool.id, node)
        if entry.prep is None or entry.rerun:
            entry.rerun = False
            entry.runner = asyncio.create_task(self._prepare(job, pool, entry), name=f"jobprep-{job.id}")
        if not spec["waitForSuccess"]:
            return True
        if entry.runner is not None and not entry.runner.done():
            runner = entry.runner
            task.set_state("preparing")
            try:
                # Not `await runner`: a preparation stopped under the task (a reboot) must not look like the
                # task's own cancellation; the task then goes back to the queue.
                await asyncio.wait({runner})
                return not runner.cancelled() and runner.result()
            finally:
                task.set_state("running")  # what the scheduler requeues or ends, however the wait ends
        return entry.prep is not None and entry.prep.succeeded

    def environment(self, job: Job, node: Node) -> dict[str, str]:
        """``AZ_BATCH_JOB_PREP_DIR`` and ``AZ_BATCH_JOB_PREP_WORKING_DIR`` for a task of ``job`` on ``node``."""
        spec = job.spec.get(PREP)
        if not spec:
            return {}
        prep_dir = node.root / "workitems" / job.id / "job-1" / spec["id"]
        return {"AZ_BATCH_JOB_PREP_DIR": str(prep_dir), "AZ_BATCH_JOB_PREP_WORKING_DIR": str(prep_dir / "wd")}

    async def release(self, job: Job) -> None:
        """The job ends: stop preparations under way, then run the release task on every node that prepared."""
        nodes = self._nodes(job)
        if job.state == "deleting":
            self._jobs.pop(job.id.lower(), None)
        if not nodes:
            return
        runners = [e.runner for e in nodes.values() if e.runner is not None and not e.runner.done()]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        spec = job.spec.get(RELEASE)
        if not spec:
            return
        await asyncio.gather(
            *(self._release_on(job, entry, spec) for entry in nodes.values() if entry.prep is not None),
            return_exceptions=True,
        )

    def node_rebooted(self, node: Node, reimaged: bool) -> None:
        """A node rebooted (or was reimaged): its preparation tasks run again before their jobs' next task.

        After a reboot, a preparation task runs again if its ``rerunOnNodeRebootAfterSuccess`` is true or it had
        not completed successfully (a failed one keeps the node out of its job: only a reimage clears that).
        After a reimage every preparation task runs again, and the node is eligible for every job again.
        """
        for job, nodes in list(self._jobs.values()):
            entry = nodes.get(node.id)
            if entry is None or entry.prep is None:
                continue
            if entry.runner is not None and not entry.runner.done():
                entry.runner.cancel()
            prep = entry.prep
            failed = prep.state == "completed" and not prep.succeeded
            if reimaged:
                del nodes[node.id]
            elif not failed and (job.spec[PREP]["rerunOnNodeRebootAfterSuccess"] or not prep.succeeded):
                entry.rerun = True

    # -- the status listing -----------------------------------------------------------------------------------

    def statuses(self, job: Job) -> list[NodePrep]:
        """The nodes where the job's preparation task ran (``jobpreparationandreleasetaskstatus``)."""
        return [entry for entry in self._nodes(job).values() if entry.prep is not None]

    # -- running them -----------------------------------------------------------------------------------------

    def _run_of(self, job: Job, pool: Pool, node: Node, spec: Mapping[str, Any], limit: float | None) -> TaskRun:
        user, identity = wire.task_user(spec.get("userIdentity"))
        return TaskRun(
            account_name=self.scheduler.account.name,
            account_url=self.scheduler.account.url,
            pool_id=pool.id,
            node_id=node.id,
            node_root=node.root,
            task_id=spec["id"],
            job_id=job.id,
            command_line=spec["commandLine"],
            task_dir=node.root / "workitems" / job.id / "job-1" / spec["id"],
            resource_files=wire.parse_resource_files(spec.get("resourceFiles")),
            environment={e["name"]: e.get("value") or "" for e in spec.get("environmentSettings") or []},
            job_environment=dict(job.environment),
            passed_environment=self.scheduler.passed_environment,
            task_user=user,
            task_user_identity=identity,
            node_is_dedicated=node.is_dedicated,
            max_wall_clock_time=None if limit is None else self.scheduler.real_seconds(limit),
        )

    async def _prepare(self, job: Job, pool: Pool, entry: NodePrep) -> bool:
        spec = job.spec[PREP]
        root = f"workitems/{job.id}/job-1/{spec['id']}"
        limit = wire.parse_duration(spec["constraints"]["maxWallClockTime"], "maxWallClockTime")
        max_retries = spec["constraints"]["maxTaskRetryCount"]
        attempt = entry.prep = Attempt(root, utcnow())
        try:
            while True:
                run = self._run_of(job, pool, entry.node, spec, limit)
                run.retry_count = attempt.retry_count
                run.app_package_environment = await self.scheduler._app_package_environment(pool.app_packages)
                outcome = await run_task(run, self.scheduler._session())
                attempt.finish(outcome)
                if outcome.failure_info is None or not (max_retries == -1 or attempt.retry_count < max_retries):
                    break
                attempt.retry_count += 1
                attempt.last_retry_time = utcnow()
                attempt.state, attempt.end_time = "running", None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("emulator: the preparation task of job %r failed to run", job.id)
            now = utcnow()
            failure = FailureInfo("servererror", "NodeError", "The aiobatch emulator failed; see its log.")
            attempt.finish(TaskOutcome(attempt.start_time, now, None, failure))
        finally:
            self.scheduler.kick()
        log.info("job %s: preparation task on node %s: %s", job.id, entry.node.id[:16], attempt.state)
        self._retain(entry, attempt, spec["constraints"]["retentionTime"], lambda: entry.prep is attempt)
        return attempt.succeeded

    def _retain(self, entry: NodePrep, attempt: Attempt, retention: str, still_current: Callable[[], bool]) -> None:
        """Delete the attempt's directory on the node once its ``retentionTime`` has passed, as for a task."""
        if attempt.end_time is None:
            return
        seconds = wire.parse_duration(retention, "retentionTime")
        if seconds is not None:
            directory = entry.node.root / attempt.task_root
            self.scheduler.retention.add_directory(directory, attempt.end_time, seconds, still_current)

    async def _release_on(self, job: Job, entry: NodePrep, spec: Mapping[str, Any]) -> None:
        pool = self.scheduler.account.pools.get(entry.pool_id.lower())
        if pool is None or pool.nodes.get(entry.node.id) is not entry.node:
            return  # the node left the pool: nothing to release on
        limit = wire.parse_duration(spec["maxWallClockTime"], "maxWallClockTime")
        entry.release = Attempt(f"workitems/{job.id}/job-1/{spec['id']}", utcnow())
        with contextlib.suppress(OSError):
            outcome = await run_task(self._run_of(job, pool, entry.node, spec, limit), self.scheduler._session())
            entry.release.finish(outcome)
        if entry.release.state != "completed":
            now = utcnow()
            failure = FailureInfo("servererror", "NodeError", "The node could not run the job release task.")
            entry.release.finish(TaskOutcome(entry.release.start_time, now, None, failure))
        release = entry.release
        self._retain(entry, release, spec["retentionTime"], lambda: entry.release is release)


__all__ = ["JobPrep", "check_task_id"]
