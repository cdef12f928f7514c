"""What every handler needs: the app's keys, the account and scheduler of a request, conditional headers, lists."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from aiohttp import web

from .. import _taskfiles as taskfiles
from .. import _wire as wire
from .._faults import Faults
from .._model import Account, Entity, ServiceError
from .._odata import parse_filter
from .._scheduler import Scheduler
from .._schedules import JobSchedules

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACCOUNT_KEY: web.AppKey[Account] = web.AppKey("account", Account)
SCHEDULER_KEY: web.AppKey[Scheduler] = web.AppKey("scheduler", Scheduler)
FAULTS_KEY: web.AppKey[Faults] = web.AppKey("faults", Faults)
SCHEDULES_KEY: web.AppKey[JobSchedules] = web.AppKey("job_schedules", JobSchedules)
FILE_WORKERS_KEY: web.AppKey[taskfiles.FileWorkers] = web.AppKey("file_workers", taskfiles.FileWorkers)


def account_of(request: web.Request) -> Account:
    """The account the request is for."""
    return request.app[ACCOUNT_KEY]


def scheduler_of(request: web.Request) -> Scheduler:
    """The scheduler that runs the request's account."""
    return request.app[SCHEDULER_KEY]


def schedules_of(request: web.Request) -> JobSchedules | None:
    """The account's job schedules (None in an app built without them)."""
    return request.app.get(SCHEDULES_KEY)


def request_url(account: Account, request: web.Request) -> str:
    """The URL a request went to, without its query (the ``DataServiceId`` of updates and actions)."""
    return f"{account.url}{request.path}"


def check_conditions(request: web.Request, entity: Entity) -> bool:
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
    if_match = etag_header(request, "If-Match")
    unmodified_since = http_date_header(request, "If-Unmodified-Since")
    if (if_match and if_match != "*" and if_match != entity.etag) or (
        unmodified_since is not None and modified > unmodified_since
    ):
        raise condition_not_met()
    if_none = etag_header(request, "If-None-Match")
    none_matches = bool(if_none) and (if_none == "*" or if_none == entity.etag)
    modified_since = http_date_header(request, "If-Modified-Since")
    not_modified = modified_since is not None and modified <= modified_since
    if read:
        return none_matches or (not_modified and not if_none)  # If-None-Match, when sent, decides alone (HTTP)
    if none_matches or not_modified:
        raise condition_not_met()
    return False


def etag_header(request: web.Request, name: str) -> str | None:
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


def condition_not_met() -> ServiceError:
    """The 412 of a conditional header that does not hold."""
    return ServiceError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")


def http_date_header(request: web.Request, name: str) -> dt.datetime | None:
    """A header holding an HTTP date, as an aware datetime; None when absent or not a date."""
    raw = request.headers.get(name)
    if not raw:
        return None
    try:
        value = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def answer_list(
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
    return wire.list_page(request, account_of(request).url, fragment, [wire.select(i, fields) for i in page], next_skip)


def file_workers(request: web.Request) -> taskfiles.FileWorkers:
    """The bounded threads every file operation runs on."""
    return request.app[FILE_WORKERS_KEY]
