"""Job schedules: their model, their wire shapes and the timer that creates their jobs on the emulator's clock.

A schedule creates jobs from its ``jobSpecification`` with ids ``<scheduleId>:job-<n>`` (n from 1), as the service
names them, at ``doNotRunUntil`` (or at once), then every ``recurrenceInterval``. As the REST API documents it:

- at most one job of a schedule is active at a time: a recurrence that comes while the last job is still active
  waits for it to end, and is lost if it cannot start within ``startWindow`` (then the next recurrence is due);
- no job is created after ``doNotRunAfter``; the schedule completes once that time is past and it has no active
  job; a schedule without a recurrence completes once its one job has ended (or its window was missed);
- a disabled schedule creates no jobs (its active job goes on); enabling it again runs a recurrence still in its
  window;
- terminating a schedule terminates its active job; deleting it deletes all its jobs, then the schedule.

Times are the scheduler's (`Scheduler.now`), waits go through `Scheduler.real_seconds`, so a faster clock speeds
schedules like everything else. The timer is a heap of (due time, schedule): a poll looks at the top only, so its
cost does not grow with the number of schedules; a change to a schedule pushes a new entry and makes the old one
stale (a version number), instead of searching the heap.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _wire as wire
from ._clock import wait_event
from ._model import Entity, Job, ServiceError, check_id, invalid_property

if TYPE_CHECKING:
    from ._scheduler import Scheduler

log = logging.getLogger("aiobatch.emulator")

#: The shortest ``recurrenceInterval`` and ``startWindow`` the service accepts (its REST reference: "The minimum
#: value is 1 minute. If you specify a lower value, the Batch service rejects the schedule with an error").
MIN_INTERVAL = dt.timedelta(minutes=1)

#: The longest real wait of the timer between two looks: a clock that another setting speeds up is followed
#: within this, even when no schedule changed.
MAX_POLL = 1.0

#: Commits a parsed job: its auto pool, the scheduler, the account's records (`_handlers.jobs.start_job`).
StartJob = Callable[[Job, "dict[str, Any] | None"], None]


@dataclass(frozen=True)
class ScheduleConfig:
    """A schedule's ``schedule``: when its jobs are due."""

    do_not_run_until: dt.datetime | None = None
    do_not_run_after: dt.datetime | None = None
    start_window: dt.timedelta | None = None
    recurrence_interval: dt.timedelta | None = None


@dataclass(eq=False)
class JobSchedule(Entity):
    """A job schedule: its configuration, the job specification and the jobs it created."""

    config: ScheduleConfig = field(default_factory=ScheduleConfig)
    #: The ``jobSpecification`` as the service answers it (defaults filled in).
    job_spec: dict[str, Any] = field(default_factory=dict)
    #: When the next job is due (None: no more jobs will be created).
    next_run_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    #: How many jobs it has created (the n of the next job id is one more).
    job_count: int = 0
    #: The lower-cased id of its job that is not completed, if any.
    active_job: str | None = None
    #: Its most recent job's id.
    recent_job: str | None = None
    #: Ids of every job it created, oldest first (some may since be deleted).
    jobs: list[str] = field(default_factory=list)
    #: The due time of its last created job (the next recurrence counts from it).
    last_due: dt.datetime | None = None
    #: Incremented by every change to when it is due: heap entries of older versions are stale.
    version: int = 0


# -- parsing and rendering ------------------------------------------------------------------------------------


def _datetime(value: object, prop: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        # More than 6 fractional digits (the service writes 7): Python's parser takes at most 6.
        text = str(value)
        head, _, tail = text.partition(".")
        digits = "".join(itertools.takewhile(str.isdigit, tail))
        try:
            parsed = dt.datetime.fromisoformat(head + "." + digits[:6] + tail[len(digits) :].replace("Z", "+00:00"))
        except ValueError:
            raise invalid_property(prop, value, "The value must be an ISO 8601 date and time.") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


def _interval(body: Mapping[str, Any], name: str) -> dt.timedelta | None:
    seconds = wire.parse_duration(body.get(name), f"schedule.{name}")
    if seconds is None:
        return None
    interval = dt.timedelta(seconds=seconds)
    if interval < MIN_INTERVAL:
        # guessed code: the REST reference says only "rejects the schedule with an error ... 400 (Bad Request)".
        raise invalid_property(f"schedule.{name}", body[name], "The minimum value is 1 minute (PT1M).")
    return interval


def parse_config(body: Mapping[str, Any] | None) -> ScheduleConfig:
    """A ``schedule`` object (None or empty: one job, at once).

    Raises:
        ServiceError: 400 ``InvalidPropertyValue`` naming the property (an interval under a minute).
    """
    body = body or {}
    return ScheduleConfig(
        do_not_run_until=_datetime(body.get("doNotRunUntil"), "schedule.doNotRunUntil"),
        do_not_run_after=_datetime(body.get("doNotRunAfter"), "schedule.doNotRunAfter"),
        start_window=_interval(body, "startWindow"),
        recurrence_interval=_interval(body, "recurrenceInterval"),
    )


def _prefixed(error: ServiceError, prefix: str) -> ServiceError:
    """``error`` with the property it names moved under ``prefix`` (``jobSpecification.poolInfo``)."""
    error.values = [(k, f"{prefix}{v}" if k == "PropertyName" else v) for k, v in error.values]
    return error


def parse_job_spec(scheduler: Scheduler, spec: Mapping[str, Any], job_id: str) -> tuple[Job, dict[str, Any] | None]:
    """A job of id ``job_id`` from a ``jobSpecification``, checked as a job create body (not yet committed).

    Raises:
        ServiceError: a 400 naming the property under ``jobSpecification.``.
    """
    try:
        # wire.parse_job checks a client's job id; a schedule's job ids hold a ':' no client may use.
        job, auto = wire.parse_job(scheduler.account, {**spec, "id": "schedule-job"})
        wire.parse_job_tasks(job.spec)
    except ServiceError as error:
        raise _prefixed(error, "jobSpecification.") from None
    job.id = job_id
    job.spec.pop("id", None)
    return job, auto


# -- the schedules of an account and their timer ----------------------------------------------------------------


class JobSchedules:
    """The job schedules of one account, and the timer that creates their jobs.

    Args:
        scheduler: The account's scheduler: its clock, and the jobs' end (`Scheduler.job_end_listeners`).
        start_job: Commits a job the way a client's POST /jobs does.
    """

    def __init__(self, scheduler: Scheduler, start_job: StartJob) -> None:
        self.scheduler = scheduler
        self._start_job = start_job
        self._schedules: dict[str, JobSchedule] = {}
        #: (due, sequence, schedule key, version): the sequence keeps ties in push order without comparing keys.
        self._heap: list[tuple[dt.datetime, int, str, int]] = []
        self._sequence = itertools.count()
        #: Lower-cased job id -> the key of the schedule that created it (for the jobs still in the account).
        self._owner: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        scheduler.job_end_listeners.append(self._job_ended)

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer (on the running loop)."""
        if self._timer is None:
            self._timer = asyncio.create_task(self._run(), name="emulator-job-schedules")

    async def stop(self) -> None:
        """Stop the timer and any deletion under way."""
        tasks = [t for t in (self._timer, *self._background) if t is not None]
        self._timer = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reads ------------------------------------------------------------------------------------------------

    def get(self, schedule_id: str) -> JobSchedule | None:
        """The schedule with this id (case-insensitive), or None."""
        return self._schedules.get(schedule_id.lower())

    def require(self, schedule_id: str) -> JobSchedule:
        """The schedule with this id, or the service's 404 ``JobScheduleNotFound``."""
        schedule = self.get(schedule_id)
        if schedule is None:
            raise ServiceError(404, "JobScheduleNotFound", "The specified job schedule does not exist.")
        return schedule

    def all(self) -> list[JobSchedule]:
        """Every schedule, in list order (by id, case-insensitively)."""
        return [self._schedules[k] for k in sorted(self._schedules)]

    def jobs_of(self, schedule: JobSchedule) -> list[Job]:
        """The jobs the schedule created that still exist, oldest first."""
        jobs = self.scheduler.account.jobs
        return [job for job in (jobs.get(j.lower()) for j in schedule.jobs) if job is not None]

    # -- writes -----------------------------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> JobSchedule:
        """POST /jobschedules: check the body, add the schedule and arm its timer.

        Raises:
            ServiceError: 400 for an invalid body; 409 ``JobScheduleExists`` / ``JobScheduleBeingDeleted`` /
                ``JobWithSameIdExists`` (a job has the id: jobs and schedules share a namespace).
        """
        schedule_id = check_id("job schedule", body.get("id"))
        config = parse_config(body.get("schedule"))
        job_spec = self._checked_job_spec(body["jobSpecification"])
        existing = self.get(schedule_id)
        if existing is not None:
            if existing.state == "deleting":
                raise ServiceError(
                    409,
                    "JobScheduleBeingDeleted",
                    "The specified job schedule has been marked for deletion and is being reclaimed.",
                )
            raise ServiceError(409, "JobScheduleExists", "The specified job schedule already exists.")
        if schedule_id.lower() in self.scheduler.account.jobs:
            # guessed status and message; the code is the service's (its error table).
            raise ServiceError(409, "JobWithSameIdExists", "A job with the same id as the job schedule exists.")
        now = self.scheduler.now()
        spec = {k: v for k, v in body.items() if k != "jobSpecification"}
        spec.setdefault("schedule", {})
        schedule = JobSchedule(
            id=schedule_id, state="active", spec=spec, creation_time=now, config=config, job_spec=job_spec
        )
        schedule.next_run_time = config.do_not_run_until or now
        self._schedules[schedule_id.lower()] = schedule
        self.scheduler.account.record_create("jobschedule", schedule_id)
        log.info("job schedule %s created", schedule_id)
        self._evaluate(schedule)
        return schedule

    def update(self, schedule: JobSchedule, body: Mapping[str, Any], *, replace: bool) -> None:
        """PATCH (``replace=False``) or PUT a schedule: all of the body or (on a 400) none of it.

        Changes apply to the jobs created after the update; its active job keeps the specification it had.
        A new ``schedule`` counts the next job from the last one's due time (or from now).

        Raises:
            ServiceError: 400 for an invalid body; 409 for a schedule completed, terminating or deleting.
        """
        self.check_changeable(schedule)
        config = parse_config(body.get("schedule")) if "schedule" in body or replace else None
        job_spec = self._checked_job_spec(body["jobSpecification"]) if body.get("jobSpecification") else None
        if job_spec is not None:
            schedule.job_spec = job_spec
        if config is not None:
            schedule.config = config
            schedule.spec["schedule"] = dict(body.get("schedule") or {})
            schedule.next_run_time = self._first_run(schedule)
        if "metadata" in body or replace:
            if body.get("metadata"):
                schedule.spec["metadata"] = body["metadata"]
            else:
                schedule.spec.pop("metadata", None)
        schedule.touch()
        self._evaluate(schedule)

    def disable(self, schedule: JobSchedule) -> None:
        """Disable: no job is created until it is enabled; its active job goes on."""
        self.check_changeable(schedule)
        schedule.set_state("disabled")
        schedule.touch()

    def enable(self, schedule: JobSchedule) -> None:
        """Enable a disabled schedule; a recurrence still in its start window runs."""
        self.check_changeable(schedule)
        if schedule.state == "disabled":
            schedule.set_state("active")
            schedule.touch()
            self._evaluate(schedule)

    def terminate(self, schedule: JobSchedule) -> None:
        """Terminate: no more jobs; its active job is terminated; ``completed`` once that job has ended.

        Raises:
            ServiceError: 409 for a schedule being deleted (a completed or terminating one is left as it is).
        """
        if schedule.state == "deleting":
            raise _being_deleted()
        if schedule.state in ("completed", "terminating"):
            return
        schedule.set_state("terminating")
        schedule.touch()
        schedule.next_run_time = None
        schedule.version += 1
        job = self._active_job(schedule)
        if job is None:
            self._spawn(self._complete_later(schedule), f"terminate-schedule-{schedule.id}")
        else:
            self.scheduler.terminate_job(job, "UserTerminate")

    def delete(self, schedule: JobSchedule) -> None:
        """Delete: the schedule goes ``deleting``, its jobs are deleted, then it is gone."""
        if schedule.state == "deleting":
            return
        schedule.set_state("deleting")
        schedule.next_run_time = None
        schedule.version += 1
        self.scheduler.account.record_delete("jobschedule", schedule.id)
        for job in self.jobs_of(schedule):
            if job.state != "deleting":
                self.scheduler.delete_job(job)
        self._forget_if_jobs_gone(schedule)  # else the end of its last job does

    def check_changeable(self, schedule: JobSchedule) -> None:
        """The service's 409 for a change to a schedule that is completed, terminating or being deleted."""
        if schedule.state == "completed":
            raise ServiceError(409, "JobScheduleCompleted", "The specified job schedule is already completed.")
        if schedule.state == "terminating":
            raise ServiceError(409, "JobScheduleBeingTerminated", "The specified job schedule is being terminated.")
        if schedule.state == "deleting":
            raise _being_deleted()

    # -- the timer --------------------------------------------------------------------------------------------

    def _checked_job_spec(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The job specification with the service's defaults, checked as a job create body would be."""
        job, _ = parse_job_spec(self.scheduler, spec, "schedule-job")
        return {k: v for k, v in job.spec.items() if k != "id"}

    def _first_run(self, schedule: JobSchedule) -> dt.datetime:
        config = schedule.config
        if config.do_not_run_until is not None:
            return config.do_not_run_until
        if config.recurrence_interval is not None and schedule.last_due is not None:
            return schedule.last_due + config.recurrence_interval
        return self.scheduler.now()

    def _push(self, schedule: JobSchedule, due: dt.datetime) -> None:
        schedule.version += 1
        heapq.heappush(self._heap, (due, next(self._sequence), schedule.id.lower(), schedule.version))
        if len(self._heap) > 2 * len(self._schedules) + 64:
            # Mostly stale entries (schedules changed often): drop them, at a cost shared by as many pushes.
            live = self._schedules
            self._heap = [e for e in self._heap if e[2] in live and live[e[2]].version == e[3]]
            heapq.heapify(self._heap)
        self._wake.set()

    def _active_job(self, schedule: JobSchedule) -> Job | None:
        if schedule.active_job is None:
            return None
        job = self.scheduler.account.jobs.get(schedule.active_job)
        if job is None or job.state == "completed":
            schedule.active_job = None
            return None
        return job

    def _evaluate(self, schedule: JobSchedule) -> None:
        """Create the schedule's job if one is due, complete it if it is done, else arm its timer."""
        if schedule.state not in ("active", "disabled"):
            return
        now = self.scheduler.now()
        config = schedule.config
        after = config.do_not_run_after
        if self._active_job(schedule) is not None:
            return  # the job's end evaluates it again
        while True:
            due = schedule.next_run_time
            if due is None or (after is not None and due > after):
                # No job will be created any more: done now, or once doNotRunAfter is past.
                if due is None or now >= after:  # type: ignore[operator]  # after is set when due is not None
                    self._complete(schedule)
                else:
                    self._push(schedule, after)  # type: ignore[arg-type]
                return
            if now < due:
                self._push(schedule, due)
                return
            window = config.start_window
            missed = window is not None and now > due + window
            if schedule.state == "disabled" and config.recurrence_interval is None:
                return  # enable evaluates it again (in its window, it still runs)
            if missed or schedule.state == "disabled":
                schedule.next_run_time = self._next_after(schedule, due, now)
                continue
            self._create_job(schedule, due)
            return

    def _next_after(self, schedule: JobSchedule, due: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        """The first recurrence after ``due`` that is not lost at ``now`` (None without a recurrence).

        An active schedule loses the recurrences whose start window has passed; a disabled one every recurrence
        that came while it was disabled.
        """
        interval = schedule.config.recurrence_interval
        if interval is None:
            return None
        window = schedule.config.start_window
        lost_before = now - window if window is not None and schedule.state == "active" else now
        following = due + interval
        if following <= lost_before:
            following += interval * ((lost_before - following) // interval + 1)
        return following

    def _create_job(self, schedule: JobSchedule, due: dt.datetime) -> None:
        schedule.job_count += 1
        job_id = f"{schedule.id}:job-{schedule.job_count}"
        job, auto = parse_job_spec(self.scheduler, schedule.job_spec, job_id)
        now = self.scheduler.now()
        interval = schedule.config.recurrence_interval
        schedule.last_due = due
        schedule.next_run_time = None if interval is None else due + interval
        try:
            self._start_job(job, auto)
        except ServiceError as error:
            # The specification was checked when it was set; an auto pool the account refuses now (its
            # catalogue) is the one way here. The recurrence is lost, as a job the service cannot create.
            log.warning("job schedule %s could not create job %s: %s", schedule.id, job_id, error)
            self._evaluate(schedule)
            return
        schedule.jobs.append(job.id)
        schedule.recent_job = job.id
        schedule.active_job = job.id.lower()
        self._owner[job.id.lower()] = schedule.id.lower()
        schedule.version += 1
        log.info("job schedule %s created job %s (due %s, at %s)", schedule.id, job.id, due, now)

    def _job_ended(self, job: Job) -> None:
        """`Scheduler.job_end_listeners`: a job completed or was deleted."""
        key = self._owner.get(job.id.lower())
        if key is None:
            return
        if job.state == "deleting" or job.id.lower() not in self.scheduler.account.jobs:
            self._owner.pop(job.id.lower(), None)
        schedule = self._schedules.get(key)
        if schedule is None:
            return
        if schedule.state == "deleting":
            if job.id.lower() not in self.scheduler.account.jobs:
                self._forget_if_jobs_gone(schedule)
            return
        if schedule.active_job != job.id.lower():
            return
        schedule.active_job = None
        if schedule.state == "terminating":
            self._complete(schedule)
        else:
            self._evaluate(schedule)

    def _complete(self, schedule: JobSchedule) -> None:
        schedule.next_run_time = None
        schedule.version += 1
        # The service reports the state before termination (active), not terminating, as previousState (as jobs).
        terminating = schedule.state == "terminating"
        before, since = schedule.previous_state, schedule.previous_state_transition_time
        schedule.set_state("completed")
        if terminating:
            schedule.previous_state, schedule.previous_state_transition_time = before, since
        schedule.end_time = self.scheduler.now()
        log.info("job schedule %s completed", schedule.id)

    async def _complete_later(self, schedule: JobSchedule) -> None:
        await asyncio.sleep(self.scheduler.timings.deletion_delay)
        if schedule.state == "terminating":
            self._complete(schedule)

    def _forget_if_jobs_gone(self, schedule: JobSchedule) -> None:
        jobs = self.scheduler.account.jobs
        if not any(j.lower() in jobs for j in schedule.jobs):
            self._spawn(self._forget(schedule), f"delete-schedule-{schedule.id}")

    async def _forget(self, schedule: JobSchedule) -> None:
        await asyncio.sleep(self.scheduler.timings.deletion_delay)
        if self._schedules.get(schedule.id.lower()) is schedule:
            del self._schedules[schedule.id.lower()]
        for job_id in schedule.jobs:
            self._owner.pop(job_id.lower(), None)
        log.info("job schedule %s deleted", schedule.id)

    def tick(self) -> None:
        """Evaluate every schedule that is due (the top of the heap only: flat cost when nothing is)."""
        now = self.scheduler.now()
        while self._heap and self._heap[0][0] <= now:
            _, _, key, version = heapq.heappop(self._heap)
            schedule = self._schedules.get(key)
            if schedule is None or schedule.version != version:
                continue  # stale: the schedule changed (or went) since this entry was pushed
            try:
                self._evaluate(schedule)
            except Exception:
                log.exception("emulator: the timer of job schedule %r failed", schedule.id)

    async def _run(self) -> None:
        while True:
            self.tick()
            wait = MAX_POLL
            if self._heap:
                ahead = (self._heap[0][0] - self.scheduler.now()).total_seconds()
                wait = max(0.0, min(MAX_POLL, self.scheduler.real_seconds(ahead)))
            self._wake.clear()
            await wait_event(self._wake, wait)

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _being_deleted() -> ServiceError:
    return ServiceError(
        409,
        "JobScheduleBeingDeleted",
        "The specified job schedule has been marked for deletion and is being reclaimed.",
    )


__all__ = ["MIN_INTERVAL", "JobSchedule", "JobSchedules", "ScheduleConfig", "parse_config"]
