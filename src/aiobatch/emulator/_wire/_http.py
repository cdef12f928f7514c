"""The wire's scalars and answers: timestamps, durations, api-versions, headers, JSON and OData errors, paging.

`error_body` is the one place an OData error is built; `error_response` answers with it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from .. import _clock
from .._model import (
    Entity,
    ServiceError,
    invalid_property,
)

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


def entity_headers(entity: Entity) -> dict[str, str]:
    """ETag and Last-Modified of a pool, job, task or job schedule."""
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


def error_body(error: ServiceError, request_id: str, account_url: str | None = None) -> dict[str, Any]:
    """The service's OData error: ``code``, ``message`` (with request id and time) and ``values``.

    With ``account_url`` it opens with ``odata.metadata``, as a whole error answer does; without, it is the
    ``error`` member of an addtaskcollection entry.
    """
    now = timestamp(_clock.now())
    body: dict[str, Any] = {}
    if account_url is not None:
        body.update(metadata(account_url, "Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"))
    body["code"] = error.code
    body["message"] = {"lang": "en-US", "value": f"{error.message}\nRequestId:{request_id}\nTime:{now}"}
    if error.values:
        body["values"] = [{"key": k, "value": v} for k, v in error.values]
    return body


def error_response(account_url: str, error: ServiceError, request_id: str | None = None) -> web.Response:
    """The OData error answer the service sends, with Content-Length (not chunked)."""
    request_id = request_id or str(uuid.uuid4())
    body = error_body(error, request_id, account_url)
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
