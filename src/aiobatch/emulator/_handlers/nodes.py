"""Compute nodes of a pool: read, reboot, reimage, deallocate, start, scheduling, users, files, logs, extensions."""

from __future__ import annotations

import datetime as dt
import logging
import re
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import _files as transfer
from .. import _taskfiles as taskfiles
from .. import _wire as wire
from .._model import Node, NodeUser, Pool, ServiceError, invalid_property, utcnow
from .._nodes import deallocation_option, node_state_error
from .._validate import body_of
from ._common import (
    account_of,
    answer_list,
    file_workers,
    request_url,
    scheduler_of,
)
from .files import serve_file

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


def _node(request: web.Request) -> tuple[Pool, Node]:
    return account_of(request).get_node(request.match_info["pool"], request.match_info["node"])


def _done(request: web.Request, status: int) -> web.Response:
    return wire.empty_response(status, data_service_id=request_url(account_of(request), request))


# -- reboot, reimage, deallocate, start -------------------------------------------------------------------------


async def reboot_node(request: web.Request) -> web.Response:
    """POST .../nodes/{nodeId}/reboot: 202; ``nodeRebootOption`` says what becomes of running tasks."""
    pool, node = _node(request)
    option = deallocation_option(body_of(request).get("nodeRebootOption"))
    scheduler_of(request).nodes.reboot(pool, node, option, reimage=False)
    return _done(request, 202)


async def reimage_node(request: web.Request) -> web.Response:
    """POST .../nodes/{nodeId}/reimage: 202; the node's disk is wiped and it boots again."""
    pool, node = _node(request)
    option = deallocation_option(body_of(request).get("nodeReimageOption"))
    scheduler_of(request).nodes.reboot(pool, node, option, reimage=True)
    return _done(request, 202)


async def deallocate_node(request: web.Request) -> web.Response:
    """POST .../nodes/{nodeId}/deallocate: 202; ``deallocating``, then ``deallocated``."""
    pool, node = _node(request)
    option = deallocation_option(body_of(request).get("nodeDeallocateOption"))
    scheduler_of(request).nodes.deallocate(pool, node, option)
    return _done(request, 202)


async def start_node(request: web.Request) -> web.Response:
    """POST .../nodes/{nodeId}/start: 202; a deallocated node boots again."""
    pool, node = _node(request)
    scheduler_of(request).nodes.start(pool, node)
    return _done(request, 202)


async def disable_node_scheduling(request: web.Request) -> web.Response:
    """POST .../nodes/{nodeId}/disablescheduling: 200 once running tasks are requeued or terminated."""
    _, node = _node(request)
    option = deallocation_option(body_of(request).get("nodeDisableSchedulingOption"))
    await scheduler_of(request).nodes.disable_scheduling(node, option)
    return _done(request, 200)


async def enable_node_scheduling(request: web.Request) -> web.Response:
    """POST .../nodes/{nodeId}/enablescheduling: 200."""
    _, node = _node(request)
    scheduler_of(request).nodes.enable_scheduling(node)
    return _done(request, 200)


# -- users and remote login -----------------------------------------------------------------------------------

#: A node user's name: what a Linux account name may be (the service documents no rule; this one is guessed).
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")

#: A user's ``expiryTime`` when none is given: a day from now (the REST documentation's default).
_DEFAULT_EXPIRY = dt.timedelta(days=1)


def parse_datetime(value: str) -> dt.datetime:
    """An ISO 8601 date and time as the validation layer let it through (7 fractional digits at most), aware."""
    text = value.strip().upper().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


def _user_fields(body: dict[str, Any], user: NodeUser | None, name: str) -> NodeUser:
    expiry = body.get("expiryTime")
    return NodeUser(
        name=name,
        is_admin=user.is_admin if user is not None else bool(body.get("isAdmin", False)),
        expiry_time=parse_datetime(expiry) if expiry is not None else utcnow() + _DEFAULT_EXPIRY,
        has_password=bool(body.get("password")),
        has_ssh_public_key=bool(body.get("sshPublicKey")),
    )


def _ready_for_users(node: Node) -> None:
    # "You can add a user Account to a Compute Node only when it is in the idle or running state."
    if node.state not in ("idle", "running"):
        raise node_state_error(node, "user")


async def create_node_user(request: web.Request) -> web.Response:
    """POST .../nodes/{nodeId}/users: 201. Only the fact that a password or key was given is kept."""
    account = account_of(request)
    pool, node = _node(request)
    body = body_of(request)
    name = body["name"]
    if not _USER_NAME.match(name):
        raise invalid_property(
            "name", name, "A user name is 1 to 32 letters, digits, '_', '.' or '-', not starting with a digit."
        )  # guessed: the service's exact rule and reason
    _ready_for_users(node)
    if name.lower() in node.users:
        raise ServiceError(409, "NodeUserExists", "The specified node user already exists.")
    node.users[name.lower()] = _user_fields(body, None, name)
    node.log(f"user created: {name}")
    log.info("node %s of pool %s: user %s created", node.id[:16], pool.id, name)
    return wire.empty_response(201, location=f"{account.url}/pools/{pool.id}/nodes/{node.id}/users/{name}")


def _user(request: web.Request) -> tuple[Node, NodeUser]:
    _, node = _node(request)
    user = node.users.get(request.match_info["user"].lower())
    if user is None:
        raise ServiceError(404, "NodeUserNotFound", "The specified node user does not exist.")
    return node, user


async def replace_node_user(request: web.Request) -> web.Response:
    """PUT .../nodes/{nodeId}/users/{userName}: 200; password, key and expiry are replaced (absent: removed)."""
    node, user = _user(request)
    _ready_for_users(node)
    node.users[user.name.lower()] = _user_fields(body_of(request), user, user.name)
    node.log(f"user updated: {user.name}")
    return _done(request, 200)


async def delete_node_user(request: web.Request) -> web.Response:
    """DELETE .../nodes/{nodeId}/users/{userName}: 200."""
    node, user = _user(request)
    _ready_for_users(node)
    del node.users[user.name.lower()]
    node.log(f"user deleted: {user.name}")
    return wire.empty_response(200)


#: The first port a node's remote login answers on; node i of a pool gets this plus i (as a load balancer's
#: inbound NAT pool numbers them). Nothing listens there: the emulator's nodes are directories, not machines.
REMOTE_LOGIN_BASE_PORT = 50000


async def get_remote_login_settings(request: web.Request) -> web.Response:
    """GET .../nodes/{nodeId}/remoteloginsettings: ``127.0.0.1`` and the node's port."""
    account = account_of(request)
    pool, node = _node(request)
    index = sorted(pool.nodes).index(node.id)
    return wire.json_response(wire.render_remote_login(account.url, "127.0.0.1", REMOTE_LOGIN_BASE_PORT + index))


# -- service logs ---------------------------------------------------------------------------------------------


async def upload_service_logs(request: web.Request) -> web.Response:
    """POST .../nodes/{nodeId}/uploadbatchservicelogs: the node's log lines written as a blob to the container.

    The service uploads its agent's log files; the emulator's node has one: the lines the emulator logged about
    it (state changes, users, operations) from ``startTime`` to ``endTime``, as ``<virtualDirectoryName>/`` +
    `_nodes.SERVICE_LOG_NAME`. Unlike the service, the upload is done before the answer, so a container the emulator
    cannot write to is a 400 naming ``containerUrl``.
    """
    account = account_of(request)
    scheduler = scheduler_of(request)
    pool, node = _node(request)
    body = body_of(request)
    if body.get("identityReference") is not None:
        raise invalid_property(
            "identityReference",
            "(set)",
            "The aiobatch emulator does not support managed identities; give a containerUrl with a SAS instead.",
        )
    container = body["containerUrl"]
    if not container.lower().startswith(("http://", "https://")):
        raise invalid_property("containerUrl", transfer.mask_sas(container), "The value must be a container URL.")
    start = parse_datetime(body["startTime"])
    end = parse_datetime(body["endTime"]) if body.get("endTime") else None
    try:
        directory, count = await scheduler.nodes.upload_service_logs(pool, node, container, start, end)
    except transfer.TransferError as error:
        raise invalid_property(
            "containerUrl", transfer.mask_sas(container), f"The logs could not be written: {error.reason}"
        ) from None  # guessed: the service uploads later and reports nothing here
    return wire.json_response(wire.render_service_logs_upload(account.url, directory, count))


# -- extensions -----------------------------------------------------------------------------------------------


def _extensions(pool: Pool) -> list[dict[str, Any]]:
    return list((pool.spec.get("virtualMachineConfiguration") or {}).get("extensions") or [])


async def list_node_extensions(request: web.Request) -> web.Response:
    """GET .../nodes/{nodeId}/extensions: the pool's ``virtualMachineConfiguration.extensions``."""
    pool, _ = _node(request)
    return answer_list(request, "extensions", "extensions", _extensions(pool), wire.render_node_extension)


async def get_node_extension(request: web.Request) -> web.Response:
    """GET .../nodes/{nodeId}/extensions/{extensionName}."""
    account = account_of(request)
    pool, _ = _node(request)
    name = request.match_info["extension"]
    for extension in _extensions(pool):
        if extension.get("name") == name:
            body = wire.metadata(account.url, "extensions/@Element")
            body.update(wire.select(wire.render_node_extension(extension), wire.parse_select(request)))
            return wire.json_response(body)
    # guessed: the service's code for an extension the node does not have
    raise ServiceError(404, "NodeExtensionNotFound", "The specified node extension does not exist.")


# -- files ----------------------------------------------------------------------------------------------------


async def _node_root(request: web.Request) -> tuple[Pool, Node, Path]:
    """The node and its directory (``startup``, ``shared``, ``workitems``, ``applications``)."""
    pool, node = _node(request)
    if not await file_workers(request).run(taskfiles.is_task_dir, node.root):
        raise node_state_error(node, "files")
    return pool, node, node.root


async def list_node_files(request: web.Request) -> web.Response:
    """GET .../nodes/{nodeId}/files (``recursive`` lists the whole tree), over the task files' rules."""
    account = account_of(request)
    pool, node, root = await _node_root(request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    entries = await file_workers(request).run(partial(taskfiles.list_files, root, recursive=recursive))
    base = f"{account.url}/pools/{pool.id}/nodes/{node.id}"
    return answer_list(request, "files", "files", entries, lambda e: wire.render_file(account, base, e[0], e[1]))


async def get_node_file(request: web.Request) -> web.StreamResponse:
    """GET and HEAD .../nodes/{nodeId}/files/{filePath}: regular files and directories inside the node only."""
    account = account_of(request)
    pool, node, root = await _node_root(request)
    rel = request.match_info["path"]
    url = f"{account.url}/pools/{pool.id}/nodes/{node.id}/files/{rel}"
    return await serve_file(request, root, rel, url, f"node {node.id[:16]}")


async def delete_node_file(request: web.Request) -> web.Response:
    """DELETE .../nodes/{nodeId}/files/{filePath}: 200; a directory needs ``recursive=true`` unless empty."""
    _, _, root = await _node_root(request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    await file_workers(request).run(partial(taskfiles.delete, root, request.match_info["path"], recursive=recursive))
    return wire.empty_response(200)
