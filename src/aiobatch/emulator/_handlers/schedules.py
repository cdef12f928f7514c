"""Job schedules: create, get, list, exists, update, replace, disable, enable, terminate, delete, and their jobs."""

from __future__ import annotations

import functools
from collections.abc import Callable

from aiohttp import web

from .. import _wire as wire
from .._schedules import JobSchedule, JobSchedules
from .._validate import body_of
from ._common import (
    ACCOUNT_KEY,
    SCHEDULER_KEY,
    SCHEDULES_KEY,
    account_of,
    answer_list,
    check_conditions,
    request_url,
)
from .jobs import render_job, start_job


def install(app: web.Application) -> None:
    """Give the app its account's job schedules, their timer running while the app does."""
    account, scheduler = app[ACCOUNT_KEY], app[SCHEDULER_KEY]
    schedules = JobSchedules(scheduler, functools.partial(start_job, account, scheduler))
    app[SCHEDULES_KEY] = schedules

    async def start(app: web.Application) -> None:
        schedules.start()

    async def stop(app: web.Application) -> None:
        await schedules.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)


def _schedules(request: web.Request) -> JobSchedules:
    return request.app[SCHEDULES_KEY]


def _schedule(request: web.Request) -> JobSchedule:
    return _schedules(request).require(request.match_info["schedule"])


async def create_job_schedule(request: web.Request) -> web.Response:
    """POST /jobschedules."""
    account = account_of(request)
    schedule = _schedules(request).create(body_of(request))
    location = f"{account.url}/jobschedules/{schedule.id}"
    return wire.empty_response(201, headers=wire.entity_headers(schedule), location=location)


async def list_job_schedules(request: web.Request) -> web.Response:
    """GET /jobschedules."""
    url = account_of(request).url
    return answer_list(
        request, "jobschedules", "jobschedules", _schedules(request).all(), lambda s: wire.render_schedule(url, s)
    )


async def get_job_schedule(request: web.Request) -> web.Response:
    """GET (and HEAD: exists) /jobschedules/{jobScheduleId}."""
    account = account_of(request)
    schedule = _schedule(request)
    if check_conditions(request, schedule):
        return wire.empty_response(304, headers=wire.entity_headers(schedule))
    body = wire.metadata(account.url, "jobschedules/@Element")
    body.update(wire.select(wire.render_schedule(account.url, schedule), wire.parse_select(request)))
    return wire.json_response(body, headers=wire.entity_headers(schedule))


async def update_job_schedule(request: web.Request) -> web.Response:
    """PATCH (update) and PUT (replace) /jobschedules/{jobScheduleId}."""
    replace = request.method == "PUT"
    return _act(request, lambda s, schedule: s.update(schedule, body_of(request), replace=replace), 200)


async def disable_job_schedule(request: web.Request) -> web.Response:
    """POST /jobschedules/{jobScheduleId}/disable."""
    return _act(request, lambda s, schedule: s.disable(schedule), 204)


async def enable_job_schedule(request: web.Request) -> web.Response:
    """POST /jobschedules/{jobScheduleId}/enable."""
    return _act(request, lambda s, schedule: s.enable(schedule), 204)


async def terminate_job_schedule(request: web.Request) -> web.Response:
    """POST /jobschedules/{jobScheduleId}/terminate: 202, ``terminating`` until its active job has ended."""
    return _act(request, lambda s, schedule: s.terminate(schedule), 202)


def _act(request: web.Request, action: Callable[[JobSchedules, JobSchedule], object], status: int) -> web.Response:
    """Check the request's conditions on the schedule, apply ``action``, answer ``status`` with its headers."""
    account = account_of(request)
    schedule = _schedule(request)
    check_conditions(request, schedule)
    action(_schedules(request), schedule)
    return wire.empty_response(
        status, headers=wire.entity_headers(schedule), data_service_id=request_url(account, request)
    )


async def delete_job_schedule(request: web.Request) -> web.Response:
    """DELETE /jobschedules/{jobScheduleId}: 202, ``deleting`` until its jobs are gone."""
    schedule = _schedule(request)
    check_conditions(request, schedule)
    _schedules(request).delete(schedule)
    return wire.empty_response(202)


async def list_jobs_from_schedule(request: web.Request) -> web.Response:
    """GET /jobschedules/{jobScheduleId}/jobs: the jobs it created that still exist."""
    account = account_of(request)
    schedules = _schedules(request)
    schedule = schedules.require(request.match_info["schedule"])
    jobs = sorted(schedules.jobs_of(schedule), key=lambda j: j.id.lower())
    return answer_list(request, "jobs", "jobs", jobs, lambda j: render_job(account, j))
