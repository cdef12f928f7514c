"""Task files: list, read (with ranges) and delete, through `_taskfiles`' safety rules."""

from __future__ import annotations

import datetime as dt
import logging
import mimetypes
import re
from functools import partial
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from .. import _taskfiles as taskfiles
from .. import _wire as wire
from .._model import ServiceError, Task
from .._retention import files_cleaned_up
from ._common import (
    account_of,
    answer_list,
    file_workers,
)

log = logging.getLogger("aiobatch.emulator")


async def _task_dir(request: web.Request) -> tuple[Task, Path]:
    """The task the route names and its directory, or the service's 409 when it has no files to show."""
    _, task = account_of(request).get_task(request.match_info["job"], request.match_info["task"])
    if task.files_expired:
        raise files_cleaned_up()
    if (
        task.task_dir is None
        or task.node_info is None
        or not await file_workers(request).run(taskfiles.is_task_dir, task.task_dir)
    ):
        raise ServiceError(
            409,
            "TaskNotStarted" if task.state == "active" else "TaskFilesUnavailable",
            "The files of the specified task are not available: it has not run on a node yet."
            if task.state == "active"
            else "The files of the specified task are no longer available.",
        )
    return task, task.task_dir


async def list_task_files(request: web.Request) -> web.Response:
    """GET /jobs/{jobId}/tasks/{taskId}/files (``recursive`` lists the whole tree; links as `_taskfiles` says)."""
    account = account_of(request)
    task, root = await _task_dir(request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    entries = await file_workers(request).run(partial(taskfiles.list_files, root, recursive=recursive))
    base = f"{account.url}/jobs/{request.match_info['job']}/tasks/{task.id}"
    return answer_list(request, "files", "files", entries, lambda e: wire.render_file(account, base, e[0], e[1]))


async def get_task_file(request: web.Request) -> web.StreamResponse:
    """GET and HEAD /jobs/{jobId}/tasks/{taskId}/files/{filePath}: regular files and directories only."""
    account = account_of(request)
    task, root = await _task_dir(request)
    rel = request.match_info["path"]
    url = f"{account.url}/jobs/{request.match_info['job']}/tasks/{task.id}/files/{rel}"
    return await serve_file(request, root, rel, url, f"task {task.id}")


async def serve_file(request: web.Request, root: Path, rel: str, url: str, owner: str) -> web.StreamResponse:
    """Answer a GET or HEAD of the file *rel* below *root* (a task's or a node's directory), as `_taskfiles` allows.

    Args:
        request: the GET or HEAD (``ocp-range`` honoured on a GET).
        root: the directory the file must lie in.
        rel: the file's path relative to it, as the route names it.
        url: the file's URL (``ocp-batch-file-url``).
        owner: who the file belongs to, for the log ("task t1").
    """
    workers = file_workers(request)
    opened = await workers.run(
        partial(taskfiles.open_file, root, rel, for_body=request.method != "HEAD"), discard=taskfiles.close
    )
    try:
        stat = opened.stat
        headers = wire.base_headers()
        headers.update(wire.echoed_headers(request))
        headers.update(
            {
                "Last-Modified": wire.http_date(_mtime(stat.st_mtime)),
                "ocp-creation-time": wire.http_date(_mtime(stat.st_ctime)),
                "ocp-batch-file-isdirectory": str(opened.is_dir),
                "ocp-batch-file-url": quote(url, safe=""),
                "Content-Type": "text/plain"
                if rel.endswith(".txt")
                else mimetypes.guess_type(rel)[0] or "application/octet-stream",
            }
        )
        if opened.fd is None:  # HEAD, or a directory
            headers["Content-Length"] = str(0 if opened.is_dir else stat.st_size)
            return web.Response(status=200, headers=headers)
        start, stop = _byte_range(request.headers.get("ocp-range"), stat.st_size)
        # Streamed (chunked) as the service sends it; aiohttp's FileResponse would add an ETag and Accept-Ranges
        # that the service's file answers do not carry.
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        offset = start
        try:
            while offset < stop and (
                chunk := await workers.run(taskfiles.read, opened.fd, offset, min(_FILE_CHUNK, stop - offset))
            ):
                offset += len(chunk)
                await response.write(chunk)
        except (ServiceError, OSError) as error:
            # The status line is out: all that is left is to cut the answer short, which the client sees.
            log.warning("%s: reading %s failed half-way: %s", owner, rel, error)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        taskfiles.close(opened)


_FILE_CHUNK = 256 * 1024
# At most 18 digits a side: Python refuses to convert a string of more than 4,300 digits (a 500), and no file is
# that large anyway.
_OCP_RANGE = re.compile(r"^bytes=(\d{1,18})-(\d{0,18})$")


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """``ocp-range: bytes=start-end`` (end inclusive, may be left out) as ``(start, stop)``; the whole file if absent.

    The service answers a range with 200 and those bytes (its specification lists no 206).
    """
    if not header:
        return 0, size
    match = _OCP_RANGE.match(header.strip())
    if match is None or (match.group(2) and int(match.group(2)) < int(match.group(1))):
        raise ServiceError(
            400,
            "InvalidHeaderValue",
            "The value for one of the HTTP headers is not in the correct format.",
            [("HeaderName", "ocp-range"), ("HeaderValue", header)],
        )
    start = min(int(match.group(1)), size)
    stop = size if not match.group(2) else min(int(match.group(2)) + 1, size)
    return start, stop


async def delete_task_file(request: web.Request) -> web.Response:
    """DELETE /jobs/{jobId}/tasks/{taskId}/files/{filePath}: 200; a directory needs ``recursive=true`` unless empty.

    A link is removed itself, never its target (see `_taskfiles`).
    """
    _, root = await _task_dir(request)
    recursive = request.query.get("recursive", "false").lower() == "true"
    await file_workers(request).run(partial(taskfiles.delete, root, request.match_info["path"], recursive=recursive))
    return wire.empty_response(200)


def _mtime(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
