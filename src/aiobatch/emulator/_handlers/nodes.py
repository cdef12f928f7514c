"""Compute nodes of a pool."""

from __future__ import annotations

import logging

from aiohttp import web

from .. import _wire as wire
from ._common import (
    account_of,
    answer_list,
)

log = logging.getLogger("aiobatch.emulator")


async def list_nodes(request: web.Request) -> web.Response:
    """GET /pools/{poolId}/nodes."""
    account = account_of(request)
    pool = account.get_pool(request.match_info["pool"])
    nodes = sorted(pool.nodes.values(), key=lambda n: n.id)
    return answer_list(request, "nodes", "nodes", nodes, lambda n: wire.render_node(account, pool, n))


async def get_node(request: web.Request) -> web.Response:
    """GET /pools/{poolId}/nodes/{nodeId}."""
    account = account_of(request)
    pool, node = account.get_node(request.match_info["pool"], request.match_info["node"])
    body = wire.metadata(account.url, "nodes/@Element")
    body.update(wire.select(wire.render_node(account, pool, node), wire.parse_select(request)))
    return wire.json_response(body)
