"""Account-wide resources: applications, supported images, node counts."""

from __future__ import annotations

import logging

from aiohttp import web

from .. import _wire as wire
from .._catalogue import catalogue
from .._model import ServiceError
from ._common import (
    account_of,
    answer_list,
)

log = logging.getLogger("aiobatch.emulator")


async def list_applications(request: web.Request) -> web.Response:
    """GET /applications."""
    apps = sorted(account_of(request).applications.values(), key=lambda a: a.id.lower())
    return answer_list(
        request,
        "applications",
        "listapplicationsummariesresponses",
        apps,
        lambda a: wire.render_application(a.id, a.versions, a.display_name),
    )


async def list_supported_images(request: web.Request) -> web.Response:
    """GET /supportedimages: the images of the catalogue (`_catalogue`), whatever ``strict_catalogue`` says."""
    return answer_list(
        request,
        "supportedimages",
        "accountlistsupportedimagesresponses",
        list(catalogue().images),
        wire.render_supported_image,
    )


async def get_application(request: web.Request) -> web.Response:
    """GET /applications/{applicationId}."""
    app = account_of(request).applications.get(request.match_info["app"].lower())
    if app is None:
        raise ServiceError(404, "ApplicationNotFound", "The specified application does not exist.")
    body = wire.metadata(account_of(request).url, "getapplicationsummaryresponse/@Element")
    body.update(wire.render_application(app.id, app.versions, app.display_name))
    return wire.json_response(body)


async def node_counts(request: web.Request) -> web.Response:
    """GET /nodecounts."""
    pools = sorted(account_of(request).pools.values(), key=lambda p: p.id.lower())
    legacy = wire.is_legacy_api(wire.api_version_of(request))
    return answer_list(
        request, "poolnodecounts", "poolnodecounts", pools, lambda p: wire.render_node_counts(p, legacy=legacy)
    )
