"""The aiohttp application: the one route table, the middlewares, and the answer to operations not emulated.

Handlers (`_handlers`, one module per resource) read the request, change the model (through the scheduler where
things must happen over time) and answer through `_wire`.  Errors are `ServiceError`s, rendered by one middleware
as the service's OData body.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import _taskfiles as taskfiles
from . import _wire as wire
from ._auth import auth_middleware
from ._faults import Faults, fault_middleware
from ._handlers import account as account_api
from ._handlers import files, jobs, nodes, pools, schedules, tasks
from ._handlers._common import ACCOUNT_KEY, FAULTS_KEY, FILE_WORKERS_KEY, SCHEDULER_KEY, Handler
from ._model import Account, ServiceError, check_id
from ._scheduler import Scheduler
from ._validate import validation_middleware

log = logging.getLogger("aiobatch.emulator")

# -- operations the emulator does not perform ---------------------------------------------------------------

#: Every operation of the 2025-06-01 API that the emulator does not perform: (method, route, the SDK's method).
#: Each answers `_not_emulated`'s error, never a 404 (which the SDK raises as ``ResourceNotFoundError``, telling
#: a caller of ``begin_reboot_node`` that the *node* does not exist). tests/emulator/test_operations.py parses the
#: installed SDK's request builders, so an operation a new SDK adds fails a test until it is listed here or served.
NOT_EMULATED: tuple[tuple[str, str, str], ...] = (
    ("GET", "/poolusagemetrics", "list_pool_usage_metrics"),
    ("POST", "/pools/{pool}/removenodes", "begin_remove_nodes"),
    ("POST", "/jobs/{job}/disable", "begin_disable_job"),
    ("POST", "/jobs/{job}/enable", "begin_enable_job"),
    ("PUT", "/jobs/{job}/tasks/{task}", "replace_task"),
    ("GET", "/jobs/{job}/tasks/{task}/subtasksinfo", "list_subtasks"),
    ("POST", "/jobs/{job}/tasks/{task}/reactivate", "reactivate_task"),
    ("POST", "/pools/{pool}/nodes/{node}/users", "create_node_user"),
    ("PUT", "/pools/{pool}/nodes/{node}/users/{user}", "replace_node_user"),
    ("DELETE", "/pools/{pool}/nodes/{node}/users/{user}", "delete_node_user"),
    ("POST", "/pools/{pool}/nodes/{node}/reboot", "begin_reboot_node"),
    ("POST", "/pools/{pool}/nodes/{node}/reimage", "begin_reimage_node"),
    ("POST", "/pools/{pool}/nodes/{node}/start", "begin_start_node"),
    ("POST", "/pools/{pool}/nodes/{node}/deallocate", "begin_deallocate_node"),
    ("POST", "/pools/{pool}/nodes/{node}/disablescheduling", "disable_node_scheduling"),
    ("POST", "/pools/{pool}/nodes/{node}/enablescheduling", "enable_node_scheduling"),
    ("GET", "/pools/{pool}/nodes/{node}/remoteloginsettings", "get_node_remote_login_settings"),
    ("POST", "/pools/{pool}/nodes/{node}/uploadbatchservicelogs", "upload_node_logs"),
    ("GET", "/pools/{pool}/nodes/{node}/extensions", "list_node_extensions"),
    ("GET", "/pools/{pool}/nodes/{node}/extensions/{extension}", "get_node_extension"),
    ("GET", "/pools/{pool}/nodes/{node}/files", "list_node_files"),
    ("GET", "/pools/{pool}/nodes/{node}/files/{path:.+}", "download_node_file"),
    ("HEAD", "/pools/{pool}/nodes/{node}/files/{path:.+}", "get_node_file_properties"),
    ("DELETE", "/pools/{pool}/nodes/{node}/files/{path:.+}", "delete_node_file"),
)

#: The not-emulated answer's status and code. 501 Not Implemented, because that is what it is: the request may be
#: perfectly valid (a 4xx would blame the caller), and it is final for every client in the chain -- azure-core's
#: RetryPolicy retries only 408, 429, 500, 502, 503 and 504 (and no answer here carries Retry-After, which it
#: would honour), and aiobatch's `_retry` treats 501 as final. The SDK has no exception mapped to 501, so it
#: raises a plain ``HttpResponseError`` whose ``error.code`` is this code, not a ``ResourceNotFoundError``.
NOT_EMULATED_STATUS = 501
NOT_EMULATED_CODE = "OperationNotEmulated"


def _not_emulated(method: str, path: str, operation: str) -> Handler:
    """A handler answering that the emulator does not perform ``operation`` (the SDK method's name) at ``path``.

    It looks nothing up: whatever the ids in the route, the caller learns first that the operation is not
    emulated. A body has already been checked by the validation layer (a malformed one is the 400 Azure would
    give), so only a well-formed request gets this answer.
    """
    shown = path.replace(":.+", "")

    async def handler(request: web.Request) -> web.Response:
        raise ServiceError(
            NOT_EMULATED_STATUS,
            NOT_EMULATED_CODE,
            f"The aiobatch emulator does not emulate the operation {operation} ({method} {shown})."
            " Test code that uses it against an Azure Batch account; docs/emulator.md, 'Operations and what the"
            " emulator refuses', lists what is emulated.",
            [("OperationName", operation)],
        )

    return handler


# -- the application --------------------------------------------------------------------------------


def _error_middleware(account: Account) -> Middleware:
    # The account's URL is read per request: it is known only once the server is bound, after the app is built.
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            wire.api_version_of(request)
            response = await handler(request)
        except ServiceError as error:
            response = wire.error_response(account.url, error)
        except web.HTTPNotFound:
            response = wire.error_response(
                account.url, ServiceError(404, "ResourceNotFound", "The specified resource does not exist.")
            )
        except web.HTTPMethodNotAllowed:
            response = wire.error_response(
                account.url,
                ServiceError(405, "UnsupportedHttpVerb", "The resource doesn't support the specified HTTP verb."),
            )
        except web.HTTPException as http_error:  # aiohttp's own refusals (a body over the size limit, ...)
            response = wire.error_response(
                account.url, ServiceError(http_error.status, http_error.reason.replace(" ", ""), http_error.reason)
            )
        except Exception:
            # A bug, not a refusal: logged with its traceback, answered as the service answers its own failures,
            # so that the client sees a Batch error (and may retry) instead of a dropped connection.
            log.exception("unexpected error in %s %s", request.method, request.path)
            response = wire.error_response(
                account.url,
                ServiceError(500, "InternalServerError", "The server encountered an internal error. Please retry."),
            )
        if not response.prepared:  # a streamed file answer set its headers itself
            response.headers.update(wire.echoed_headers(request))
        return response

    return middleware


async def _close_file_workers(app: web.Application) -> None:
    app[FILE_WORKERS_KEY].close()


def build_app(
    account: Account,
    scheduler: Scheduler,
    account_key: str,
    faults: Faults,
    auth_modes: Iterable[str] = ("sharedkey",),
) -> web.Application:
    """The emulator's aiohttp application for one account.

    Middlewares, outermost first: errors rendered as OData bodies, authentication by ``auth_modes`` (Shared Key,
    Entra ID bearer tokens; so a request that does not authenticate changes nothing), injected faults (only
    authenticated requests are eligible), then the validation layer (a body of the wrong types is refused before
    any handler sees it).
    """
    app = web.Application(
        middlewares=[
            _error_middleware(account),
            auth_middleware(
                account.name, account_key, lambda request, error: wire.error_response(account.url, error), auth_modes
            ),
            fault_middleware(faults),
            validation_middleware(),
        ],
        client_max_size=4 * 1024 * 1024,
    )
    app[ACCOUNT_KEY] = account
    app[SCHEDULER_KEY] = scheduler
    app[FAULTS_KEY] = faults
    app[FILE_WORKERS_KEY] = taskfiles.FileWorkers()
    app.on_cleanup.append(_close_file_workers)
    r = app.router
    r.add_get("/applications", account_api.list_applications)
    r.add_get("/applications/{app}", account_api.get_application)
    r.add_get("/nodecounts", account_api.node_counts)
    r.add_post("/pools", pools.create_pool)
    r.add_get("/pools", pools.list_pools)
    r.add_route("HEAD", "/pools/{pool}", pools.get_pool)
    r.add_get("/pools/{pool}", pools.get_pool, allow_head=False)
    r.add_delete("/pools/{pool}", pools.delete_pool)
    r.add_patch("/pools/{pool}", pools.patch_pool)
    r.add_post("/pools/{pool}/resize", pools.resize_pool)
    r.add_post("/pools/{pool}/stopresize", pools.stop_resize_pool)
    r.add_post("/pools/{pool}/updateproperties", pools.replace_pool_properties)
    r.add_post("/pools/{pool}/enableautoscale", pools.enable_pool_autoscale)
    r.add_post("/pools/{pool}/disableautoscale", pools.disable_pool_autoscale)
    r.add_post("/pools/{pool}/evaluateautoscale", pools.evaluate_pool_autoscale)
    r.add_get("/pools/{pool}/nodes", nodes.list_nodes)
    r.add_get("/pools/{pool}/nodes/{node}", nodes.get_node)
    r.add_post("/jobs", jobs.create_job)
    r.add_get("/jobs", jobs.list_jobs)
    r.add_get("/jobs/{job}", jobs.get_job)
    r.add_patch("/jobs/{job}", jobs.update_job)
    r.add_put("/jobs/{job}", jobs.update_job)
    r.add_delete("/jobs/{job}", jobs.delete_job)
    r.add_post("/jobs/{job}/terminate", jobs.terminate_job)
    r.add_get("/jobs/{job}/taskcounts", jobs.task_counts)
    r.add_get("/jobs/{job}/jobpreparationandreleasetaskstatus", jobs.list_preparation_and_release_status)
    r.add_post("/jobs/{job}/tasks", tasks.create_task)
    r.add_get("/jobs/{job}/tasks", tasks.list_tasks)
    r.add_post("/jobs/{job}/addtaskcollection", tasks.add_task_collection)
    r.add_get("/jobs/{job}/tasks/{task}", tasks.get_task)
    r.add_delete("/jobs/{job}/tasks/{task}", tasks.delete_task)
    r.add_post("/jobs/{job}/tasks/{task}/terminate", tasks.terminate_task)
    r.add_get("/jobs/{job}/tasks/{task}/files", files.list_task_files)
    r.add_get("/jobs/{job}/tasks/{task}/files/{path:.+}", files.get_task_file)
    r.add_delete("/jobs/{job}/tasks/{task}/files/{path:.+}", files.delete_task_file)
    r.add_get("/supportedimages", account_api.list_supported_images)
    schedules.install(app)
    r.add_post("/jobschedules", schedules.create_job_schedule)
    r.add_get("/jobschedules", schedules.list_job_schedules)
    r.add_route("HEAD", "/jobschedules/{schedule}", schedules.get_job_schedule)
    r.add_get("/jobschedules/{schedule}", schedules.get_job_schedule, allow_head=False)
    r.add_patch("/jobschedules/{schedule}", schedules.update_job_schedule)
    r.add_put("/jobschedules/{schedule}", schedules.update_job_schedule)
    r.add_delete("/jobschedules/{schedule}", schedules.delete_job_schedule)
    r.add_post("/jobschedules/{schedule}/disable", schedules.disable_job_schedule)
    r.add_post("/jobschedules/{schedule}/enable", schedules.enable_job_schedule)
    r.add_post("/jobschedules/{schedule}/terminate", schedules.terminate_job_schedule)
    r.add_get("/jobschedules/{schedule}/jobs", schedules.list_jobs_from_schedule)
    # Every other operation of the API answers, with the not-emulated error (a table, not a handler each).
    for method, path, operation in NOT_EMULATED:
        r.add_route(method, path, _not_emulated(method, path, operation))
    return app


__all__ = ["build_app", "check_id"]
